//! `--otlp-endpoint`: both services export their spans to an OpenTelemetry collector over
//! OTLP/HTTP, in the trace the API caller started. The collector here is a bare HTTP server that
//! keeps what it is sent; the test looks for the caller's trace id in the protobuf bodies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::http::{Http, TOKEN};
use crate::support::TestEnv;

/// What the collector was sent: (path, body) of each request.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Accepts OTLP/HTTP requests and keeps them.
fn collector() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().expect("clone");
                let mut reader = BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_string();
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    store.lock().expect("lock").push((path, body));
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if writer.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, received)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn both_services_export_their_spans_in_the_callers_trace() {
    let (port, received) = collector();
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = TestEnv::start("otel", 2);
    let otlp = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let mut dev = env.spawn_dev_materiels_with(0, &otlp);
    let mut wagon = env.spawn_wagon_lits_with(0, 2_000, &otlp);
    let api = Http::new(env.api_port, Some(TOKEN));
    api.wait_ok("/readyz", Duration::from_secs(60));
    dev.wait_restored(env.topics.partitions, Duration::from_secs(60));

    let parent = "00-5ca1ab1e0ddba11f00d5eed5dec0de42-00f067aa0ba902b7-01";
    let trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&"5ca1ab1e0ddba11f00d5eed5dec0de42"[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let body = r#"{"order_id":"OTEL-1","wagon_id":"WL-1","requested_by":"otel-test","lines":[{"sku":"BRAKE-PAD-UIC","quantity":2}]}"#;
    let answer = api.post_with("/orders", body, &[("traceparent", parent)]);
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    let start = Instant::now();
    while api.get("/orders/OTEL-1").body["status"] != "Shipped" {
        assert!(start.elapsed() < Duration::from_secs(60), "OTEL-1 did not ship");
        std::thread::sleep(Duration::from_millis(200));
    }
    // SIGTERM: both send their last spans before they exit.
    wagon.terminate();
    dev.terminate();

    let received = received.lock().expect("lock");
    let traces: Vec<&Vec<u8>> = received.iter().filter(|(path, _)| path == "/v1/traces").map(|(_, b)| b).collect();
    assert!(
        !traces.is_empty(),
        "the collector received no spans: {:?}",
        received.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for service in ["wagon-lits", "dev-materiels"] {
        assert!(
            traces.iter().any(|b| contains(b, service.as_bytes()) && contains(b, &trace_id)),
            "no span of {service} in the caller's trace among {} export(s)",
            traces.len()
        );
    }
    // dev-materiels' timers start traces of their own: its exports hold more spans than the
    // command's one decision.
    assert!(traces.iter().any(|b| contains(b, b"decide")));
}
