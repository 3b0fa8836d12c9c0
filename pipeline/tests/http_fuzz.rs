//! Property tests of the HTTP request handling of both services (the cargo-fuzz stand-in for
//! request parsing; the command decoder's are in `state/tests/decoder.rs`): generated requests,
//! mostly near-valid ones with one thing wrong, go through the real handlers, in process. Whatever
//! comes in, the answer is one the API documents: never a panic, never a 500, and every refusal
//! is a problem+json body whose `status` is the HTTP status.
//!
//! No broker: wagon-lits' producer points at a closed port, so a request that gets as far as
//! sending answers 503 after its (short) delivery timeout, and dev-materiels' stream thread is
//! absent, so its commands answer 503 "stopping".
//!
//! `HTTP_FUZZ_CASES` sets the number of requests per handler (default 3,000).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_fallback::{Handler, Request};
use pipeline::kafka_config::KafkaArgs;
use pipeline::runtime::direct::DirectHandle;
use pipeline::runtime::StreamMetrics;
use pipeline::wagon_lits::api::{self, Api};
use pipeline::wagon_lits::{CommandProducer, CommandSender};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use state::{StoreOptions, ViewStore};

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

fn to_request(input: &Input) -> Option<Request> {
    let mut builder = hyper::Request::builder().method(input.method).uri(&input.path);
    if let Some(key) = &input.idempotency_key {
        builder = builder.header("idempotency-key", key.as_str());
    }
    // A path or header value hyper itself refuses never reaches a handler.
    builder.body(Bytes::from(input.body.clone())).ok()
}

/// Runs `cases` generated requests through `handler`; returns how many statuses of each kind.
fn fuzz(name: &str, handler: Handler, paths: &'static [&'static str], refused_known: &[u16]) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    let generated = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&input(paths), |input| {
        generated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(request) = to_request(&input) else { return Ok(()) };
        let response = runtime.block_on(handler(request));
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
                .block_on(http_body_util::BodyExt::collect(response.into_body()))
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .to_bytes();
            let problem: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| TestCaseError::fail(format!("not JSON: {e}")))?;
            prop_assert_eq!(problem["status"].as_u64(), Some(u64::from(status)));
            prop_assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
        }
        Ok(())
    });
    let statuses = statuses.into_inner().unwrap_or_default();
    eprintln!(
        "{name}: {} generated requests, {} valid enough for hyper to build; answers by status: {statuses:?}",
        generated.into_inner(),
        statuses.values().sum::<u32>()
    );
    if let Err(err) = result {
        panic!("{name}: {err}");
    }
}

#[test]
fn wagon_lits_api_answers_every_request_with_a_documented_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let view = Arc::new(ViewStore::open(&dir.path().join("view"), &StoreOptions::default()).expect("view"));
    // Nothing listens on port 9: every send fails fast, and there is no fallback.
    let kafka = KafkaArgs::new("127.0.0.1:9");
    let producer = CommandProducer::new(&kafka, "orders", Duration::from_millis(30)).expect("producer");
    let sender = Arc::new(CommandSender::new(producer, Duration::from_millis(30), None, Arc::clone(&view)));
    let registry = Arc::new(prometheus_client::registry::Registry::default());
    let handler = api::handler(Arc::new(Api { view, sender, registry, token: None, ops: None }));
    const PATHS: &[&str] = &[
        "/orders",
        "/orders/{id}",
        "/orders/{id}/cancel",
        "/orders/{id}/confirm-delivery",
        "/orders/counts",
        "/status",
        "/{id}",
    ];
    fuzz("wagon-lits API", handler, PATHS, &[400, 404, 405, 409, 413, 422, 503]);
}

#[test]
fn dev_materiels_endpoint_answers_every_request_with_a_documented_status() {
    let (direct, requests) = DirectHandle::channel();
    // No stream thread: commands that get that far answer 503.
    drop(requests);
    let registry = Arc::new(prometheus_client::registry::Registry::default());
    let handler = pipeline::dev_materiels::http::handler(direct, Arc::new(StreamMetrics::default()), registry);
    const PATHS: &[&str] = &["/v1/commands", "/v1/orders/{id}", "/v1/status", "/readyz", "/v1/{id}"];
    fuzz("dev-materiels endpoint", handler, PATHS, &[400, 404, 405, 413, 422, 503]);
}
