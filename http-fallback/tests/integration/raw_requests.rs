//! Property test of the server on raw bytes (the cargo-fuzz stand-in for HTTP request parsing):
//! valid requests with bytes flipped, inserted, deleted or cut, and plain noise, written to a real
//! socket. Whatever arrives, the server answers with a well-formed HTTP/1.1 status line (HTTP/1.0
//! to a request that says 1.0, as HTTP requires) that is never a 5xx, or closes the connection,
//! and it keeps serving: a valid request made after each generated one gets its 200.
//!
//! `RAW_FUZZ_CASES` sets the number of generated requests (default 1,000).

use std::time::Duration;

use axum::body::Bytes;
use axum::Router;
use http_fallback::{json, layered, serve, Client, Secret, ServerConfig};
use hyper::StatusCode;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const VALID: &[&[u8]] = &[
    b"POST /orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"order_id\":\"A1\"}",
    b"GET /orders/A1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
];

#[derive(Debug, Clone)]
enum Change {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Cut(usize),
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    let change = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Change::Flip(i, b)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..40)).prop_map(|(i, b)| Change::Insert(i, b)),
        (any::<usize>(), 1..20usize).prop_map(|(i, n)| Change::Delete(i, n)),
        any::<usize>().prop_map(Change::Cut),
    ];
    let mutated = (prop::sample::select(VALID), prop::collection::vec(change, 1..4)).prop_map(|(valid, changes)| {
        let mut bytes = valid.to_vec();
        for change in changes {
            let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
            match change {
                Change::Flip(i, b) => {
                    let i = at(i, bytes.len());
                    if let Some(byte) = bytes.get_mut(i) {
                        *byte ^= b | 1;
                    }
                }
                Change::Insert(i, b) => {
                    let i = at(i, bytes.len() + 1);
                    bytes.splice(i..i, b);
                }
                Change::Delete(i, n) => {
                    let i = at(i, bytes.len());
                    let end = (i + n).min(bytes.len());
                    bytes.drain(i..end);
                }
                Change::Cut(i) => bytes.truncate(at(i, bytes.len() + 1)),
            }
        }
        bytes
    });
    prop_oneof![8 => mutated, 1 => prop::collection::vec(any::<u8>(), 0..300)]
}

/// Echoes the body length on any path.
fn routes() -> Router {
    let echo =
        axum::routing::any(|body: Bytes| async move { json(StatusCode::OK, &serde_json::json!({"len": body.len()})) });
    Router::new().route("/", echo.clone()).route("/{*rest}", echo)
}

/// Writes `bytes`, closes the writing side, and reads the answer (empty if the server just
/// closed).
async fn exchange(port: u16, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect: {e}"))?;
    // The server may answer and close before everything is written: not a failure.
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await {
        Ok(_) => Ok(answer),
        Err(_) => Err("no answer and no close within 5 s".into()),
    }
}

#[test]
fn the_server_survives_any_bytes_and_answers_only_documented_statuses() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let config = ServerConfig {
        token: Some(Secret::new("t0ken").expect("secret")),
        max_body_bytes: 1024,
        header_read_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    let router = layered(routes(), &config);
    runtime.spawn(async move { serve(listener, router, &config, std::future::pending::<()>()).await });
    let client = Client::new(Some(Secret::new("t0ken").expect("secret")), Duration::from_secs(5));
    let health = format!("http://127.0.0.1:{port}/x");

    let cases = std::env::var("RAW_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<String, u32>::new());
    // A case the generator found (a flipped byte made the request HTTP/1.0, and the answer's
    // version followed; the check wanted 1.1 only), kept as a fixed one.
    let http_1_0 =
        b"POST /x HTTP/1.0\r\nHost: x\r\nAuthorization: BeareTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let answer = runtime.block_on(exchange(port, http_1_0)).expect("an answer");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.0 401 "), "{:?}", String::from_utf8_lossy(&answer));
    let result = runner.run(&request(), |bytes| {
        let answer = runtime.block_on(exchange(port, &bytes)).map_err(TestCaseError::fail)?;
        let text = String::from_utf8_lossy(&answer);
        let status = if answer.is_empty() {
            "closed".to_string()
        } else {
            prop_assert!(
                text.starts_with("HTTP/1.1 ") || text.starts_with("HTTP/1.0 "),
                "not an HTTP answer: {text:?}"
            );
            text.get(9..12).unwrap_or("???").to_string()
        };
        prop_assert!(!status.starts_with('5'), "{status} for {:?}", String::from_utf8_lossy(&bytes));
        if let Ok(mut s) = statuses.lock() {
            *s.entry(status).or_default() += 1;
        }
        let (ok, _) = runtime.block_on(client.get(&health)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(ok, StatusCode::OK, "the server stopped serving");
        Ok(())
    });
    eprintln!("raw requests: {cases} generated; answers: {:?}", statuses.into_inner().unwrap_or_default());
    if let Err(err) = result {
        panic!("{err}");
    }
}
