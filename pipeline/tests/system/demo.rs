//! The demo command ends with every order in the view and its own exactly-once check passing: on
//! the broker it starts by default, on a cluster it is given, and (with no check) on the mock
//! cluster.

use std::process::Command;

fn run_demo(extra: &[&str]) -> String {
    let output =
        Command::new(env!("CARGO_BIN_EXE_demo")).args(["--quiet"]).args(extra).output().expect("running the demo");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed ({}):\n{stdout}\n{stderr}", output.status);
    assert!(stderr.trim().is_empty(), "the demo printed log lines: {stderr}");
    stdout
}

const CHECKED: &str = "every order's versions 1..n, none repeated or skipped: yes (0 repeated, 0 skipped); every \
                       command id on at most one update: yes (0 on several); every order placed has its updates: yes";

#[test]
fn the_demo_starts_a_broker_and_proves_exactly_once() {
    let own = run_demo(&["--orders", "3000"]);
    eprintln!("{own}");
    assert!(own.contains("Starting a single-node Apache Kafka broker"), "{own}");
    assert!(own.contains("Every one of the 3000 orders is in the wagon-lits view."), "{own}");
    assert!(own.contains(CHECKED), "{own}");
}

#[test]
fn the_demo_runs_on_a_given_cluster_and_on_the_mock_one() {
    let env = crate::support::TestEnv::start("demo", 4);
    let real = run_demo(&["--brokers", &env.kafka.brokers]);
    eprintln!("{real}");
    assert!(real.contains("Running on the Kafka cluster at"));
    assert!(real.contains("Every one of the 10000 orders is in the wagon-lits view."));
    assert!(real.contains("missing from the view"));
    assert!(real.contains(CHECKED), "{real}");

    let mock = run_demo(&["--mock"]);
    eprintln!("{mock}");
    assert!(mock.contains("does NOT prove exactly-once"), "the mock demo says what it does not prove");
    assert!(mock.contains("Every one of the 10000 orders is in the wagon-lits view."));
}
