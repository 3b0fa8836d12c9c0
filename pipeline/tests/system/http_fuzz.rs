//! Property tests of the HTTP request handling of both services (the cargo-fuzz stand-in for
//! request parsing; the command decoder's are in `state/tests/`): generated requests, mostly
//! near-valid ones with one thing wrong, go through each service's whole router (the shared
//! layers included), in process. Whatever comes in, the answer is one the API documents: never a
//! panic, never a 500, and every refusal is a problem+json body whose `status` is the HTTP status.
//!
//! Behind the routers, the real thing: a broker of the test's own, wagon-lits' command producer
//! sending to it, and dev-materiels' stream thread running on it, so the valid requests succeed
//! (a placement is accepted, a command decided over HTTP answers its update); the test counts
//! them and fails if too few got through.
//!
//! `HTTP_FUZZ_CASES` sets the number of requests per service (default 3,000).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use engine::metrics::{StreamMetrics, Topics};
use engine::runtime::direct::DirectHandle;
use engine::runtime::{StreamConfig, STUCK_CALL_AFTER};
use http_fallback::ServerConfig;
use prometheus_client::registry::Registry;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use state::{StoreOptions, ViewStore};
use tower::ServiceExt;
use wagon_lits::api::{self, Api};
use wagon_lits::{CommandProducer, CommandSender, WagonLitsMetrics};

use crate::support::TestEnv;

fn cases() -> u32 {
    std::env::var("HTTP_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3_000)
}

/// A request line and body: a valid shape with parts replaced by generated ones.
#[derive(Debug, Clone)]
struct Input {
    method: &'static str,
    path: String,
    idempotency_key: Option<String>,
    body: Vec<u8>,
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("ORD-1".to_string()),
        "[A-Za-z0-9._~-]{0,20}",
        "%[0-9A-F]{2}[a-z]{0,5}",
        Just("x".repeat(300)),
        Just("..".to_string()),
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number)),
        ".{0,40}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `valid` as it is (one time in four), or with one of `fields` removed or replaced by arbitrary
/// JSON.
fn one_field_changed(valid: serde_json::Value, fields: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    (prop::sample::select(fields), json_value(), 0..4u8).prop_map(move |(field, value, change)| {
        let mut body = valid.clone();
        if let Some(map) = body.as_object_mut() {
            match change {
                0 => {}
                1 => {
                    map.remove(field);
                }
                _ => {
                    map.insert(field.to_string(), value);
                }
            }
        }
        body.to_string().into_bytes()
    })
}

/// A valid order, as wagon-lits takes it, with one field removed, replaced or added.
fn order_body() -> impl Strategy<Value = Vec<u8>> {
    let order = serde_json::json!({
        "order_id": "ORD-FUZZ",
        "wagon_id": "WL-1",
        "requested_by": "agent",
        "lines": [{"sku": "BRAKE-PAD-UIC", "quantity": 2}],
    });
    one_field_changed(order, &["order_id", "wagon_id", "requested_by", "lines", "extra"])
}

/// A valid command envelope, as dev-materiels takes it, with one field removed, replaced or added.
fn envelope_body() -> impl Strategy<Value = Vec<u8>> {
    let envelope = serde_json::json!({
        "schema_version": 1,
        "command_id": "c-1",
        "issued_at_ms": 1,
        "order_id": "ORD-FUZZ",
        "command": {"type": "CancelOrder", "reason": "fuzz"},
    });
    one_field_changed(envelope, &["schema_version", "command_id", "issued_at_ms", "order_id", "command", "extra"])
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => order_body(),
        3 => envelope_body(),
        2 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..200),
        1 => Just(Vec::new()),
    ]
}

fn input(paths: &'static [&'static str]) -> impl Strategy<Value = Input> {
    (
        prop_oneof![6 => Just("POST"), 3 => Just("GET"), 1 => prop::sample::select(&["PUT", "DELETE", "PATCH"][..])],
        prop::sample::select(paths),
        segment(),
        prop::option::of(prop_oneof!["[a-z]{1,8}=[a-z0-9]{0,8}", ".{0,30}"]),
        prop::option::of(prop_oneof![Just("key-1".to_string()), ".{0,40}", Just("k".repeat(200))]),
        body(),
    )
        .prop_map(|(method, template, id, query, idempotency_key, body)| {
            let mut path = template.replace("{id}", &id);
            if let Some(q) = query {
                path = format!("{path}?{q}");
            }
            Input { method, path, idempotency_key, body }
        })
}

fn to_request(input: &Input) -> Option<axum::http::Request<Body>> {
    let mut builder = axum::http::Request::builder().method(input.method).uri(&input.path);
    if let Some(key) = &input.idempotency_key {
        builder = builder.header("idempotency-key", key.as_str());
    }
    // A path or header value the http crate itself refuses never reaches a service.
    builder.body(Body::from(input.body.clone())).ok()
}

/// Runs `cases` generated requests through `router` (with the layers both services get); returns
/// how many were answered 2xx.
fn fuzz(name: &str, router: Router, paths: &'static [&'static str], refused_known: &[u16]) -> u32 {
    let router = http_fallback::layered(router, &ServerConfig::default());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    let generated = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&input(paths), |input| {
        generated.fetch_add(1, Ordering::Relaxed);
        let Some(request) = to_request(&input) else { return Ok(()) };
        let response =
            runtime.block_on(router.clone().oneshot(request)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let status = response.status().as_u16();
        if let Ok(mut s) = statuses.lock() {
            *s.entry(status).or_default() += 1;
        }
        prop_assert!(status != 500, "500 for {input:?}");
        prop_assert!(status < 300 || refused_known.contains(&status), "undocumented {status} for {input:?}");
        if status >= 400 {
            let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
            prop_assert_eq!(content_type, "application/problem+json");
            let body = runtime
                .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let problem: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| TestCaseError::fail(format!("not JSON: {e}")))?;
            prop_assert_eq!(problem["status"].as_u64(), Some(u64::from(status)));
            prop_assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
        }
        Ok(())
    });
    let statuses = statuses.into_inner().unwrap_or_default();
    eprintln!(
        "{name}: {} generated requests, {} valid enough to build; answers by status: {statuses:?}",
        generated.into_inner(),
        statuses.values().sum::<u32>()
    );
    if let Err(err) = result {
        panic!("{name}: {err}");
    }
    statuses.iter().filter(|(status, _)| (200..300).contains(*status)).map(|(_, n)| n).sum()
}

/// At least this share of the generated requests must get through (their answers are 2xx).
fn enough(successes: u32) {
    let wanted = cases() / 100;
    assert!(
        successes >= wanted.max(1),
        "only {successes} requests succeeded of {}: the fuzzing stays at the door",
        cases()
    );
}

#[test]
fn wagon_lits_api_answers_every_request_with_a_documented_status() {
    let env = TestEnv::start("fuzz-api", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let view = Arc::new(ViewStore::open(&dir.path().join("view"), &StoreOptions::default()).expect("view"));
    let producer =
        CommandProducer::new(&env.kafka, &env.topics.orders_topic, Duration::from_secs(5)).expect("producer");
    let metrics = WagonLitsMetrics::unregistered();
    let sender =
        Arc::new(CommandSender::new(producer, Duration::from_secs(5), None, Arc::clone(&view), metrics.sender));
    let api =
        Api { view, sender, registry: Arc::new(Registry::default()), ops: None, schema_registry: None, failover: None };
    const PATHS: &[&str] = &[
        "/orders",
        "/orders",
        "/orders",
        "/orders/{id}",
        "/orders/{id}/cancel",
        "/orders/{id}/confirm-delivery",
        "/orders/counts",
        "/status",
        "/{id}",
    ];
    let successes = fuzz("wagon-lits API", api::router(Arc::new(api)), PATHS, &[400, 404, 405, 409, 413, 422, 503]);
    eprintln!("wagon-lits API: {successes} requests succeeded (orders placed on the broker, reads answered)");
    enough(successes);
}

#[test]
fn dev_materiels_endpoint_answers_every_request_with_a_documented_status() {
    let env = TestEnv::start("fuzz-dev", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut registry = Registry::default();
    let topics = Topics {
        orders: env.topics.orders_topic.clone(),
        updates: env.topics.updates_topic.clone(),
        changelog: env.changelog(),
        dlq: env.topics.dlq_topic.clone(),
    };
    let metrics = Arc::new(StreamMetrics::new(&mut registry, &topics));
    let config = StreamConfig {
        kafka: env.kafka.clone(),
        topics: env.topics.clone(),
        application_id: env.application_id.clone(),
        instance_id: "fuzz".into(),
        static_membership: false,
        state_dir: dir.path().to_path_buf(),
        commit_interval: Duration::from_millis(100),
        rules: crate::support::rules(),
        store: StoreOptions::default(),
        session_timeout: Duration::from_secs(6),
        transaction_timeout: Duration::from_secs(10),
        create_topics: true,
        standby: false,
        stuck_call_after: STUCK_CALL_AFTER,
        overlap_commits: false,
        replicated: false,
        // Two, so that the requests are routed to the thread that serves their partition.
        stream_threads: 2,
        codec: wire::Codec::json(),
    };
    let (direct, requests) = DirectHandle::channel();
    let shutdown = Arc::new(AtomicBool::new(false));
    let stream_thread = {
        let (shutdown, metrics) = (Arc::clone(&shutdown), Arc::clone(&metrics));
        std::thread::spawn(move || engine::runtime::run(config, shutdown, metrics, requests))
    };
    let started = Instant::now();
    while !metrics.is_ready() {
        assert!(started.elapsed() < Duration::from_secs(60), "the stream thread did not get its partitions");
        std::thread::sleep(Duration::from_millis(100));
    }
    const PATHS: &[&str] =
        &["/v1/commands", "/v1/commands", "/v1/commands", "/v1/orders/{id}", "/v1/status", "/readyz", "/v1/{id}"];
    let router = dev_materiels::http::router(direct, Arc::clone(&metrics), Arc::new(registry), None);
    let successes = fuzz("dev-materiels endpoint", router, PATHS, &[400, 404, 405, 413, 422, 503]);
    let decided = metrics.direct_commands.get();
    eprintln!("dev-materiels endpoint: {successes} requests succeeded, {decided} commands decided over HTTP");
    enough(successes);
    assert!(decided > 0, "no command was decided over HTTP");
    shutdown.store(true, Ordering::Relaxed);
    stream_thread.join().expect("stream thread").expect("the stream thread stopped cleanly");
}
