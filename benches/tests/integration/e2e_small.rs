//! The end-to-end bench at a small size, in the test suite: the three contenders run on a real
//! broker, and every order must come out exactly once in each. Timings are printed, not asserted.
//! (It uses the workspace's `dev-materiels`, `wagon-lits` and `passthrough` binaries, built beside
//! it by `cargo build --workspace`, and builds the Kafka Streams peer with Maven if needed.)

#[test]
fn the_end_to_end_bench_runs_and_every_contender_is_exactly_once() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_e2e"))
        .args(["--orders", "20000", "--rates", "2000", "--latency-seconds", "3", "--check"])
        .output()
        .expect("running the e2e bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}\n{stdout}");
    assert!(output.status.success(), "the e2e bench failed");
    for contender in ["rust", "passthrough", "streams"] {
        let row = stdout.lines().find(|l| l.starts_with(&format!("| {contender} "))).unwrap_or_else(|| {
            panic!("no row for {contender} in:\n{stdout}");
        });
        assert!(row.contains("missing 0 dup 0"), "{contender} is not exactly once: {row}");
    }
}
