//! Kafka with SASL/SCRAM: the services log in with the right password, refuse to start with a
//! clear error (not a hang) with a wrong one, and never show the password.

use std::time::{Duration, Instant};

use crate::support::{now_ms, send_all, settled, TestEnv};
use kafka_harness::{ClusterConfig, ScramUser};
use pipeline::workload::{Mix, Workload};

const USER: &str = "dev-materiels";
const PASSWORD: &str = "s3cret-Passw0rd-4-tests";
const WRONG: &str = "not-the-password-9871";

#[test]
fn right_password_works_and_a_wrong_one_fails_fast_and_clearly() {
    let env = TestEnv::start_with(
        "scram",
        2,
        ClusterConfig {
            scram_users: vec![ScramUser { name: USER.into(), password: PASSWORD.into() }],
            ..ClusterConfig::default()
        },
    );
    let sasl = |password: &'static str| {
        vec![
            ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
            ("KAFKA_SASL_USERNAME", USER),
            ("KAFKA_SASL_PASSWORD", password),
        ]
    };

    // A wrong password: dev-materiels exits at once with a clear error.
    let started = Instant::now();
    let mut refused = env.spawn_dev_materiels_with(0, &sasl(WRONG));
    assert!(refused.wait_exit(Duration::from_secs(30)), "dev-materiels did not give up on a wrong password");
    let elapsed = started.elapsed();
    let log = refused.log_text();
    eprintln!("wrong password refused after {elapsed:?}: {}", log.lines().last().unwrap_or_default());
    assert!(log.contains("Kafka refused the credentials of user \"dev-materiels\""), "{log}");
    assert!(!log.contains(WRONG) && !log.contains(PASSWORD), "a password was logged:\n{log}");
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");

    // --help never shows the password from the environment.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_dev-materiels"))
        .arg("--help")
        .env("KAFKA_SASL_PASSWORD", PASSWORD)
        .env("RAIL_TOKEN", PASSWORD)
        .output()
        .expect("--help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("KAFKA_SASL_PASSWORD") && !help.contains(PASSWORD), "{help}");

    // The right password: orders flow as usual.
    let view = env.start_view("main");
    let mut dev = env.spawn_dev_materiels_with(1, &sasl(PASSWORD));
    let mut workload = Workload::new(2, "SCRAM", now_ms());
    let ids: Vec<String> = (0..200).map(|i| workload.order_id(i)).collect();
    send_all(&env.producer(), &workload.place_phase(200, Mix::CLEAN));
    assert!(
        view.wait_until(&ids, Duration::from_secs(120), settled).is_empty(),
        "orders were not processed:\n{}",
        dev.log_tail(40)
    );
    assert!(!dev.log_text().contains(PASSWORD), "the password was logged");
    dev.terminate();
}
