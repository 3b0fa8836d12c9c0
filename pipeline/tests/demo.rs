//! The demo command ends with every order in the view: on the embedded cluster and on a real
//! broker.

mod support;

use std::process::Command;

fn run_demo(extra: &[&str]) -> String {
    let output =
        Command::new(env!("CARGO_BIN_EXE_demo")).args(["--quiet"]).args(extra).output().expect("running the demo");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed ({}):\n{stdout}\n{stderr}", output.status);
    stdout
}

#[test]
fn the_demo_ends_with_every_order_in_the_view() {
    let embedded = run_demo(&[]);
    eprintln!("{embedded}");
    assert!(embedded.contains("does NOT prove exactly-once"), "the embedded demo says what it does not prove");
    assert!(embedded.contains("Every one of the 10000 orders is in the wagon-lits view."));

    let env = support::TestEnv::start("demo", 4);
    let real = run_demo(&["--brokers", &env.kafka.brokers]);
    eprintln!("{real}");
    assert!(real.contains("Running on the Kafka cluster at"));
    assert!(real.contains("Every one of the 10000 orders is in the wagon-lits view."));
    assert!(real.contains("missing from the view"));
}
