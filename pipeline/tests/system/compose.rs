//! `docker-compose.yml` and the `Dockerfile`, checked without a Docker engine (there is none on
//! the project's machines): the compose schema (`docker-compose config`), that every variable the
//! file sets is one the binaries read, that ports, topics and volumes agree with the code and with
//! each other; then the same two binaries run with the compose file's environment against a real
//! broker, end to end, and their `/metrics` are kept in `test-artifacts/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::http::{Http, TOKEN};
use crate::support::TestEnv;
use serde_json::Value;
use wire::TopicArgs;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The compose file as JSON (PyYAML reads it; `scripts/setup.sh` installs it with docker-compose).
fn compose() -> Value {
    let out = Command::new("python3")
        .args(["-c", "import sys, json, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"])
        .arg(repo().join("docker-compose.yml"))
        .output()
        .expect("running python3 (scripts/setup.sh installs it)");
    assert!(out.status.success(), "reading docker-compose.yml: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("docker-compose.yml as JSON")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"].get(name).unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string))).collect())
        .unwrap_or_default()
}

fn command(service: &Value) -> Vec<String> {
    service["command"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn binary(name: &str) -> &'static str {
    match name {
        "dev-materiels" => env!("CARGO_BIN_EXE_dev-materiels"),
        "wagon-lits" => env!("CARGO_BIN_EXE_wagon-lits"),
        other => panic!("the compose file runs {other}, not one of the project's binaries"),
    }
}

/// The environment variables a command line reads, from its `--help` (`[env: NAME=...]`), with
/// those of the binary's top level.
fn variables_read(command: &[String]) -> BTreeSet<String> {
    let bin = binary(&command[0]);
    let mut helps = vec![vec!["--help".to_string()]];
    if let Some(sub) = command.get(1) {
        helps.push(vec![sub.clone(), "--help".into()]);
    }
    let mut names = BTreeSet::new();
    for args in helps {
        let out = Command::new(bin).args(&args).output().expect("running --help");
        assert!(out.status.success(), "{bin} {args:?} failed");
        let text = String::from_utf8_lossy(&out.stdout);
        // `[env: NAME=...]`, which --help may wrap after the colon.
        for piece in text.split("[env:").skip(1) {
            let name: String = piece
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    // The log filter, read by tracing-subscriber (and named in --help's log-format line).
    names.insert("RUST_LOG".into());
    names
}

const RAIL_SERVICES: [&str; 4] = ["topics", "schemas", "dev-materiels", "wagon-lits"];

#[test]
fn the_compose_file_passes_the_compose_schema() {
    let out = Command::new("docker-compose")
        .args(["--file", "docker-compose.yml", "config", "--quiet"])
        .current_dir(repo())
        .output()
        .expect("running docker-compose (scripts/setup.sh installs it)");
    assert!(out.status.success(), "docker-compose config: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_variable_the_compose_file_sets_is_one_the_binaries_read() {
    let compose = compose();
    for name in RAIL_SERVICES.into_iter().chain(["connectors", "connect-supervisor"]) {
        let service = service(&compose, name);
        let read = variables_read(&command(service));
        for variable in environment(service).keys() {
            assert!(
                read.contains(variable),
                "service {name} sets {variable}, which {:?} does not read",
                command(service)
            );
        }
    }
}

/// The topic settings a service's environment gives, over the code's defaults.
fn topics_of(env: &BTreeMap<String, String>) -> (String, String, String, String, String) {
    let d = TopicArgs::default();
    let get = |k: &str, default: String| env.get(k).cloned().unwrap_or(default);
    (
        get("ORDERS_TOPIC", d.orders_topic),
        get("UPDATES_TOPIC", d.updates_topic),
        get("DLQ_TOPIC", d.dlq_topic),
        get("TOPIC_PARTITIONS", d.partitions.to_string()),
        get("TOPIC_REPLICATION_FACTOR", d.replication_factor.to_string()),
    )
}

fn port_of(listen: &str) -> &str {
    listen.rsplit(':').next().unwrap_or_default()
}

#[test]
fn ports_topics_and_volumes_agree_with_the_code_and_each_other() {
    let compose = compose();
    let kafka = environment(service(&compose, "kafka"));
    let advertised = &kafka["KAFKA_ADVERTISED_LISTENERS"];
    assert!(advertised.contains("://kafka:9092") && advertised.contains("://localhost:29092"), "{advertised}");
    assert!(service(&compose, "kafka")["ports"].to_string().contains("29092:29092"));
    assert!(service(&compose, "kafka")["healthcheck"].is_object(), "kafka has no health check");
    let ui = service(&compose, "kafka-ui");
    assert_eq!(environment(ui)["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"], "kafka:9092");
    // Kafka UI, the schemas and both services use the one registry, and the services write Avro.
    let registry = environment(ui)["KAFKA_CLUSTERS_0_SCHEMAREGISTRY"].clone();
    assert!(registry.starts_with("http://registry:8080/"), "{registry}");
    assert!(service(&compose, "registry")["image"]
        .as_str()
        .is_some_and(|i| i.starts_with("apicurio/apicurio-registry:")));
    assert_eq!(command(service(&compose, "schemas")), ["dev-materiels", "schemas", "apply"]);
    for name in ["schemas", "dev-materiels", "wagon-lits"] {
        assert_eq!(environment(service(&compose, name))["SCHEMA_REGISTRY_URL"], registry, "{name}");
    }
    for name in ["dev-materiels", "wagon-lits"] {
        assert_eq!(environment(service(&compose, name))["WIRE_FORMAT"], "avro", "{name}");
        assert_eq!(service(&compose, name)["depends_on"]["schemas"]["condition"], "service_completed_successfully");
    }
    assert!(ui["ports"].to_string().contains("8080:8080"));

    let mut topic_settings = BTreeSet::new();
    let mut application_ids = BTreeSet::new();
    for name in RAIL_SERVICES.into_iter().filter(|name| *name != "schemas") {
        let env = environment(service(&compose, name));
        assert_eq!(env["KAFKA_BROKERS"], "kafka:9092", "{name}");
        topic_settings.insert(topics_of(&env));
        if name != "wagon-lits" {
            application_ids.insert(env.get("APPLICATION_ID").cloned().unwrap_or_else(|| "dev-materiels".into()));
        }
    }
    assert_eq!(topic_settings.len(), 1, "the services disagree on topics: {topic_settings:?}");
    assert_eq!(application_ids.len(), 1, "topics and dev-materiels disagree on the changelog: {application_ids:?}");

    let dev = service(&compose, "dev-materiels");
    let wagon = service(&compose, "wagon-lits");
    let dev_port = port_of(&environment(dev)["HTTP_LISTEN"]).to_string();
    let api_port = port_of(&environment(wagon)["HTTP_LISTEN"]).to_string();
    assert_eq!(environment(wagon)["DEV_MATERIELS_URL"], format!("http://dev-materiels:{dev_port}"));
    assert_eq!(environment(dev)["CREATE_TOPICS"], "false", "the topics service creates the topics");
    for (service, port) in [(dev, &dev_port), (wagon, &api_port)] {
        assert!(service["ports"].to_string().contains(&format!("{port}:{port}")), "{port} not published");
        let check = service["healthcheck"]["test"].to_string();
        assert!(check.contains(&format!("127.0.0.1:{port}/readyz")), "health check {check}");
        let deps = &service["depends_on"];
        assert_eq!(deps["kafka"]["condition"], "service_healthy");
        assert_eq!(deps["topics"]["condition"], "service_completed_successfully");
        // The state directory is a named volume.
        let state_dir = &environment(service)["STATE_DIR"];
        let volumes = service["volumes"].to_string();
        assert!(volumes.contains(&format!(":{state_dir}")), "{state_dir} is not on a volume: {volumes}");
        // SIGTERM commits what is open: give it time.
        assert!(service["stop_grace_period"].is_string());
    }
    assert_eq!(command(service(&compose, "topics")), ["dev-materiels", "topics", "apply"]);
}

#[test]
fn the_dockerfile_builds_both_binaries_into_a_slim_non_root_image() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    let stages: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(stages.len() >= 2, "not a multi-stage build");
    let last = stages.last().map(|l| l.to_string()).unwrap_or_default();
    assert!(last.contains("-slim"), "the runtime stage is {last}");
    let runtime: Vec<&&str> = lines.iter().skip_while(|l| !l.starts_with(last.as_str())).collect();
    let user = runtime.iter().rev().find(|l| l.starts_with("USER ")).expect("the runtime stage sets USER");
    assert!(!user.contains("root") && !user.ends_with(" 0") && !user.contains(" 0:"), "{user}");
    for bin in ["dev-materiels", "wagon-lits"] {
        assert!(text.contains(&format!("--bin {bin}")), "{bin} is not built");
        assert!(repo().join(format!("pipeline/src/bin/{bin}.rs")).exists());
        assert!(runtime.iter().any(|l| l.starts_with("COPY") && l.contains(bin)), "{bin} is not in the image");
    }
    assert!(runtime.iter().any(|l| l.starts_with("VOLUME") && l.contains("/var/lib/rail")));
    // A small image: the binaries go in without their debug info (400 MB of it, each).
    assert!(text.contains("--strip-debug"), "the binaries are copied with their debug info");
    let compose = compose();
    for name in ["dev-materiels", "wagon-lits"] {
        let env = environment(service(&compose, name));
        assert!(env["STATE_DIR"].starts_with("/var/lib/rail/"), "{name}'s state is outside the image's volume");
        let port = port_of(&env["HTTP_LISTEN"]);
        assert!(runtime.iter().any(|l| l.starts_with("EXPOSE") && l.contains(port)), "port {port} not exposed");
    }
    assert!(repo().join(".dockerignore").exists());
}

/// A service's compose environment, pointed at the test's broker, directories and ports.
fn local_environment(
    env: &BTreeMap<String, String>,
    test: &TestEnv,
    ports: &BTreeMap<&str, u16>,
    token_file: &Path,
) -> BTreeMap<String, String> {
    let mut local = env.clone();
    local.insert("KAFKA_BROKERS".into(), test.kafka.brokers.clone());
    local.insert("RAIL_TOKEN_FILE".into(), token_file.display().to_string());
    local.insert("LOG_FORMAT".into(), "plain".into());
    if env.contains_key("SCHEMA_REGISTRY_URL") {
        local.insert("SCHEMA_REGISTRY_URL".into(), crate::support::schema_registry().url());
    }
    // `${NAME:-default}`, as compose reads it with NAME unset.
    for (variable, value) in env {
        if let Some(default) =
            value.strip_prefix("${").and_then(|v| v.strip_suffix('}')).and_then(|v| v.split_once(":-"))
        {
            local.insert(variable.clone(), default.1.to_string());
        }
    }
    if let Some(dir) = env.get("STATE_DIR") {
        let name = Path::new(dir).file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        local.insert("STATE_DIR".into(), test.dir.path().join(name).display().to_string());
    }
    for (variable, value) in env {
        for (service_port, local_port) in ports {
            if variable == "HTTP_LISTEN" && port_of(value) == *service_port {
                local.insert(variable.clone(), format!("127.0.0.1:{local_port}"));
            }
            if variable == "DEV_MATERIELS_URL" && value.ends_with(&format!(":{service_port}")) {
                local.insert(variable.clone(), format!("http://127.0.0.1:{local_port}"));
            }
        }
    }
    local
}

fn run_with(
    test: &TestEnv,
    command: &[String],
    env: &BTreeMap<String, String>,
    name: &str,
) -> crate::support::DevMateriels {
    let mut process = Command::new(binary(&command[0]));
    process.args(&command[1..]).env_clear().envs(env);
    test.spawn(process, name)
}

/// The value of one series of an OpenMetrics text, by name and a label fragment.
fn series(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .reduce(|a, b| a + b)
}

#[test]
fn the_services_run_end_to_end_with_the_compose_environment_and_show_their_metrics() {
    let compose = compose();
    let test = TestEnv::start("compose", 6);
    let token_file = test.dir.path().join("rail-token");
    std::fs::write(&token_file, TOKEN).expect("token file");
    let dev_port = kafka_harness::free_port().expect("port");
    let api_port = kafka_harness::free_port().expect("port");
    let service_port = |name: &str| port_of(&environment(service(&compose, name))["HTTP_LISTEN"]).to_string();
    let (dev_service_port, api_service_port) = (service_port("dev-materiels"), service_port("wagon-lits"));
    let ports: BTreeMap<&str, u16> =
        [(dev_service_port.as_str(), dev_port), (api_service_port.as_str(), api_port)].into_iter().collect();
    let env_of = |name: &str| local_environment(&environment(service(&compose, name)), &test, &ports, &token_file);

    // The one-shot topics service: creates what is missing, then a check finds nothing.
    let topics_command = command(service(&compose, "topics"));
    let mut topics = run_with(&test, &topics_command, &env_of("topics"), "topics-apply");
    assert!(topics.wait_exit(Duration::from_secs(60)), "topics apply did not finish");
    let applied = topics.log_text();
    assert!(applied.contains("dev-materiels-order-store-changelog"), "{applied}");
    let mut check_command = topics_command.clone();
    check_command[2] = "check".into();
    let check = Command::new(binary(&check_command[0]))
        .args(&check_command[1..])
        .env_clear()
        .envs(env_of("topics"))
        .output()
        .expect("topics check");
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "topics check after apply: {report}{}", String::from_utf8_lossy(&check.stderr));
    assert_eq!(report.lines().filter(|l| l.ends_with(": ok")).count(), 4, "{report}");

    // The one-shot schemas service: registers the Avro schemas; the services write Avro.
    let mut schemas = run_with(&test, &command(service(&compose, "schemas")), &env_of("schemas"), "schemas-apply");
    assert!(schemas.wait_exit(Duration::from_secs(60)), "schemas apply did not finish");
    let registered = schemas.log_text();
    assert!(registered.contains("orders-value: ok") && registered.contains("order-updates-value: ok"), "{registered}");

    let mut dev = run_with(&test, &command(service(&compose, "dev-materiels")), &env_of("dev-materiels"), "dev");
    let mut wagon = run_with(&test, &command(service(&compose, "wagon-lits")), &env_of("wagon-lits"), "wagon");
    let dev_http = Http::new(dev_port, Some(TOKEN));
    let api = Http::new(api_port, Some(TOKEN));
    dev_http.wait_ok("/readyz", Duration::from_secs(90));
    api.wait_ok("/readyz", Duration::from_secs(90));

    // Orders through the API, one command over dev-materiels' HTTP endpoint (the fallback path),
    // and one poison record on `orders`.
    let mut ids = Vec::new();
    for i in 0..20 {
        let body = serde_json::json!({
            "wagon_id": format!("WL-{i}"), "requested_by": "compose-test",
            "lines": [{"sku": "BRAKE-PAD-UIC", "quantity": 2}]
        });
        let answer = api.post("/orders", body.to_string());
        assert_eq!(answer.status, 202, "{:?}", answer.body);
        ids.push(answer.body["order_id"].as_str().expect("order_id").to_string());
    }
    // A traced request: the update on `order-updates` continues the caller's trace.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = serde_json::json!({
        "order_id": "COMPOSE-TRACED-1", "wagon_id": "WL-98", "requested_by": "compose-test",
        "lines": [{"sku": "BRAKE-PAD-UIC", "quantity": 1}]
    });
    let answer = api.post_with("/orders", traced.to_string(), &[("traceparent", parent)]);
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    ids.push("COMPOSE-TRACED-1".into());
    let direct = serde_json::json!({
        "schema_version": 1, "command_id": "compose-direct-1", "issued_at_ms": crate::support::now_ms(),
        "order_id": "COMPOSE-DIRECT-1",
        "command": {"type": "PlaceOrder", "wagon_id": "WL-99", "requested_by": "compose-test",
                    "lines": [{"sku": "BRAKE-PAD-UIC", "quantity": 1}]}
    });
    let answer = dev_http.post("/v1/commands", direct.to_string());
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    ids.push("COMPOSE-DIRECT-1".into());
    let producer = test.producer();
    let poison = producer.send_raw(Some(b"COMPOSE-POISON"), Some(b"{not json")).expect("poison record");
    futures::executor::block_on(poison).expect("future").expect("Kafka took the poison record");

    let start = Instant::now();
    for id in &ids {
        loop {
            let answer = api.get(&format!("/orders/{id}"));
            if answer.status == 200 && answer.body["status"] == "Shipped" {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(90), "{id} did not ship: {:?}", answer.body);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let traced_updates: Vec<crate::support::Record> = test
        .read_all(&test.topics.updates_topic)
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(b"COMPOSE-TRACED-1"))
        .collect();
    let first = traced_updates.first().expect("updates of the traced order");
    assert_eq!(first.value.as_deref().and_then(<[u8]>::first), Some(&0), "dev-materiels writes Avro in the stack");
    let traceparent = first.headers.get("traceparent").expect("a traceparent on the update");
    assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{traceparent}");
    assert!(!traceparent.contains("00f067aa0ba902b7"), "the update has a span of its own: {traceparent}");
    // The store sizes and lags are refreshed every 5 s.
    std::thread::sleep(Duration::from_secs(6));

    let artifacts = repo().join("test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("test-artifacts");
    let dev_metrics = String::from_utf8_lossy(&dev_http.get("/metrics").raw).to_string();
    let api_metrics = String::from_utf8_lossy(&api.get("/metrics").raw).to_string();
    std::fs::write(artifacts.join("metrics-dev-materiels.txt"), &dev_metrics).expect("artifact");
    std::fs::write(artifacts.join("metrics-wagon-lits.txt"), &api_metrics).expect("artifact");
    crate::support::print_path("metrics of dev-materiels", &artifacts.join("metrics-dev-materiels.txt"));
    crate::support::print_path("metrics of wagon-lits", &artifacts.join("metrics-wagon-lits.txt"));

    let positive = |text: &str, name: &str, labels: &str| {
        let value = series(text, name, labels);
        assert!(value.is_some_and(|v| v > 0.0), "{name}{{{labels}}} is {value:?} in:\n{text}");
    };
    let present = |text: &str, name: &str| {
        assert!(series(text, name, "").is_some(), "no {name} series in:\n{text}");
    };
    let d = &dev_metrics;
    positive(d, "rail_records_total", r#"topic="orders",direction="in""#);
    positive(d, "rail_records_total", r#"topic="order-updates",direction="out""#);
    positive(d, "rail_records_total", r#"topic="dev-materiels-order-store-changelog",direction="out""#);
    positive(d, "rail_records_total", r#"topic="orders.dlq",direction="out""#);
    present(d, "rail_consumer_lag");
    positive(d, "rail_transactions_total", r#"outcome="committed""#);
    positive(d, "rail_transaction_duration_seconds_count", r#"outcome="committed""#);
    positive(d, "rail_dead_letters_total", "");
    positive(d, "rail_commands_total", r#"path="kafka""#);
    positive(d, "rail_commands_total", r#"path="http""#);
    positive(d, "rail_outbox_published_total", "");
    positive(d, "rail_store_keys", r#"store="tasks""#);
    positive(d, "rail_store_bytes", r#"store="tasks""#);
    positive(d, "rail_active_tasks", "");
    present(d, "rail_partitions_restoring");
    present(d, "rail_restored_records_total");
    positive(d, "http_requests_total", r#"route="/v1/commands""#);
    positive(d, "http_request_duration_seconds_count", r#"route="/readyz""#);
    let a = &api_metrics;
    positive(a, "rail_records_total", r#"topic="order-updates",direction="in""#);
    positive(a, "rail_records_total", r#"topic="orders",direction="out""#);
    present(a, "rail_consumer_lag");
    positive(a, "rail_commands_total", r#"path="kafka""#);
    positive(a, "rail_breaker_state", r#"state="closed""#);
    positive(a, "rail_view_updates_total", r#"result="applied""#);
    positive(a, "rail_store_keys", r#"store="view""#);
    positive(a, "rail_store_bytes", r#"store="view""#);
    positive(a, "http_requests_total", r#"route="/orders",method="POST",status="202""#);
    positive(a, "http_request_duration_seconds_count", r#"route="/orders/{id}""#);

    wagon.terminate();
    dev.terminate();
}
