//! The end-to-end bench at a small size, in the test suite: the three contenders run on a real
//! broker, with the whole state machine's traffic, and every order's updates must come out exactly
//! once and in version order in each. Timings are printed, not asserted.
//! (It uses the workspace's `dev-materiels`, `wagon-lits` and `passthrough` binaries, built beside
//! it by `cargo build --workspace`, and builds the Kafka Streams peer with Maven if needed.)

#[test]
fn the_end_to_end_bench_runs_and_every_contender_is_exactly_once() {
    let results = tempfile::tempdir().expect("a directory for the results");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_e2e"))
        .args(["--orders", "20000", "--rates", "2000", "--latency-seconds", "3", "--check"])
        .arg("--results-dir")
        .arg(results.path())
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
        assert!(row.contains("missing 0 dup 0 out-of-order 0"), "{contender} is not exactly once: {row}");
    }
    // The raw results were kept, with every contender in them.
    let kept: Vec<_> = std::fs::read_dir(results.path()).expect("the results directory").flatten().collect();
    assert_eq!(kept.len(), 1, "one results file per run");
    let raw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(kept[0].path()).expect("the results file")).expect("JSON results");
    let contenders: Vec<&str> =
        raw["outcomes"].as_array().expect("outcomes").iter().filter_map(|o| o["contender"].as_str()).collect();
    assert_eq!(contenders, ["rust", "passthrough", "streams"]);
}
