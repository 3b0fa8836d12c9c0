//! The wagon-lits API and dev-materiels' HTTP endpoint, on a real broker with both services as
//! processes: every answer matches `docs/openapi.json`, and bad input gets the right status, a
//! problem body, and changes nothing in the state or the topics.

use std::time::{Duration, Instant};

use crate::support::http::{Answer, Http, OpenApi, TOKEN};
use crate::support::{end_offsets, TestEnv};
use serde_json::{json, Value};

fn wait_status(api: &Http, order_id: &str, status: &str) -> Answer {
    let start = Instant::now();
    loop {
        let answer = api.get(&format!("/orders/{order_id}"));
        if answer.status == 200 && answer.body["status"] == status {
            return answer;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{order_id} never became {status}: {:?}", answer.body);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends each request of `testdata/bad-http/` and returns (file, expected status, raw answer).
fn send_bad_http_corpus(port: u16) -> Vec<(String, u16, String)> {
    use std::io::{Read, Write};
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/bad-http");
    let mut files: Vec<_> =
        std::fs::read_dir(dir).expect("testdata/bad-http").map(|e| e.expect("entry").path()).collect();
    files.sort();
    let mut out = Vec::new();
    for path in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "http")) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let status: u16 = name.split('-').nth(1).and_then(|s| s.parse().ok()).expect("NN-<status>-... file name");
        let text = std::fs::read_to_string(&path).expect("read").replace("{{TOKEN}}", TOKEN);
        let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let request_line = lines.next().expect("METHOD PATH");
        let mut request = format!("{request_line} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        let mut has_length = false;
        for header in lines {
            has_length |= header.to_ascii_lowercase().starts_with("content-length:");
            request.push_str(&format!("{header}\r\n"));
        }
        if !has_length {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(body);
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        stream.write_all(request.as_bytes()).expect("write");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        out.push((name, status, String::from_utf8_lossy(&answer).into_owned()));
    }
    assert!(out.len() >= 10, "the corpus is there");
    out
}

fn assert_problem(answer: &Answer, status: u16, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", String::from_utf8_lossy(&answer.raw));
    assert_eq!(answer.body["status"], status, "{what}: problem body {:?}", answer.body);
    assert!(answer.body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{what}: a problem says what is wrong");
}

#[test]
fn the_api_answers_as_documented_and_refuses_bad_input_without_side_effects() {
    let env = TestEnv::start("http", 2);
    // Two stream threads, one partition each: the interactive queries below reach the thread
    // that serves their order.
    let mut dev = env.spawn_dev_materiels_with(0, &[("STREAM_THREADS", "2")]);
    let mut wagon_lits = env.spawn_wagon_lits(0, 2_000);
    let api = Http::new(env.api_port, Some(TOKEN));
    let direct = Http::new(env.dev_port, Some(TOKEN));
    let openapi = OpenApi::load();
    api.wait_ok("/readyz", Duration::from_secs(60));
    direct.wait_ok("/readyz", Duration::from_secs(60));

    // The happy path, each answer checked against the document.
    let placed = api.post("/orders", json!({"order_id": "HTTP-1", "wagon_id": "WL-7", "requested_by": "agent", "lines": [{"sku": "BRAKE-PAD-UIC", "quantity": 4}]}).to_string());
    openapi.check("post", "/orders", &placed);
    assert_eq!(placed.status, 202);
    assert_eq!(placed.body["path"], "kafka");
    let generated = api.post(
        "/orders",
        json!({"wagon_id": "WL-7", "requested_by": "agent", "lines": [{"sku": "NOT-SOLD-HERE", "quantity": 1}]})
            .to_string(),
    );
    openapi.check("post", "/orders", &generated);
    let generated_id = generated.body["order_id"].as_str().expect("a generated id").to_string();
    openapi.check("get", "/orders/{order_id}", &wait_status(&api, &generated_id, "Rejected"));
    openapi.check("get", "/orders/{order_id}", &wait_status(&api, "HTTP-1", "Shipped"));
    let page = api.get("/orders?status=Shipped&limit=10");
    openapi.check("get", "/orders", &page);
    assert_eq!(page.body["orders"][0]["order_id"], "HTTP-1");
    let counts = api.get("/orders/counts");
    openapi.check("get", "/orders/counts", &counts);
    assert_eq!(counts.body["Shipped"], 1);
    assert_eq!(counts.body["Rejected"], 1);
    openapi.check("get", "/status", &api.get("/status"));
    openapi.check("get", "/healthz", &Http::new(env.api_port, None).get("/healthz"));

    // Bad input: nothing reaches Kafka, nothing changes in the view.
    let orders_before = end_offsets(&env.kafka, &env.topics.orders_topic);
    let counts_before = api.get("/orders/counts").body;
    let oversized =
        json!({"wagon_id": "W", "requested_by": "r", "lines": [], "pad": "x".repeat(100 * 1024)}).to_string();
    let cases: Vec<(&str, &str, Answer, u16)> = vec![
        ("post", "/orders", api.post("/orders", "{not json"), 400),
        (
            "post",
            "/orders",
            api.post("/orders", json!({"wagon_id": 5, "requested_by": "r", "lines": []}).to_string()),
            400,
        ),
        ("post", "/orders", api.post("/orders", json!({"wagon_id": "W", "requested_by": "r"}).to_string()), 400),
        (
            "post",
            "/orders",
            api.post(
                "/orders",
                json!({"wagon_id": "W", "requested_by": "r", "lines": [], "colour": "red"}).to_string(),
            ),
            400,
        ),
        ("post", "/orders", api.post("/orders", oversized), 413),
        (
            "post",
            "/orders",
            api.post("/orders", json!({"wagon_id": "", "requested_by": "r", "lines": []}).to_string()),
            422,
        ),
        (
            "post",
            "/orders",
            api.post(
                "/orders",
                json!({"order_id": "HTTP-1", "wagon_id": "W", "requested_by": "r", "lines": []}).to_string(),
            ),
            409,
        ),
        (
            "post",
            "/orders",
            Http::new(env.api_port, None)
                .post("/orders", json!({"wagon_id": "W", "requested_by": "r", "lines": []}).to_string()),
            401,
        ),
        (
            "post",
            "/orders",
            Http::new(env.api_port, Some("wrong-token"))
                .post("/orders", json!({"wagon_id": "W", "requested_by": "r", "lines": []}).to_string()),
            401,
        ),
        ("get", "/orders/{order_id}", api.get("/orders/NO-SUCH-ORDER"), 404),
        (
            "post",
            "/orders/{order_id}/cancel",
            api.post("/orders/NO-SUCH-ORDER/cancel", json!({"reason": "r"}).to_string()),
            404,
        ),
        ("post", "/orders/{order_id}/confirm-delivery", api.post("/orders/NO-SUCH-ORDER/confirm-delivery", ""), 404),
        (
            "post",
            "/orders/{order_id}/cancel",
            api.post("/orders/HTTP-1/cancel", json!({"reason": "too late"}).to_string()),
            409,
        ),
        (
            "post",
            "/orders/{order_id}/confirm-delivery",
            api.post(&format!("/orders/{generated_id}/confirm-delivery"), ""),
            409,
        ),
        ("post", "/orders/{order_id}/cancel", api.post("/orders/HTTP-1/cancel", "[1,2]"), 400),
        ("get", "/orders", api.get("/orders?status=Lost"), 400),
        ("get", "/orders", api.get("/orders?status=Shipped&limit=0"), 400),
    ];
    for (method, template, answer, status) in &cases {
        assert_problem(answer, *status, &format!("{method} {template}"));
        openapi.check(method, template, answer);
    }
    // dev-materiels' endpoint refuses the same way.
    assert_problem(&direct.post("/v1/commands", "{not json"), 400, "direct: malformed JSON");
    assert_problem(
        &direct.post("/v1/commands", json!({"schema_version": 1, "command_id": "x"}).to_string()),
        400,
        "direct: missing fields",
    );
    let v2 = json!({"schema_version": 2, "command_id": "x", "issued_at_ms": 1, "order_id": "HTTP-9", "command": {"type": "ConfirmDelivery"}});
    assert_problem(&direct.post("/v1/commands", v2.to_string()), 422, "direct: unsupported schema version");
    let empty_id = json!({"schema_version": 1, "command_id": " ", "issued_at_ms": 1, "order_id": "HTTP-9", "command": {"type": "ConfirmDelivery"}});
    assert_problem(&direct.post("/v1/commands", empty_id.to_string()), 422, "direct: empty command id");
    assert_problem(
        &Http::new(env.dev_port, Some("wrong")).post("/v1/commands", v2.to_string()),
        401,
        "direct: wrong token",
    );
    assert_problem(&direct.get("/v1/orders/NO-SUCH-ORDER"), 404, "direct: unknown order");
    assert_problem(&direct.post("/v1/commands", vec![b'x'; 100 * 1024]), 413, "direct: oversized body");

    // The corpus of bad requests in the repository, over raw TCP.
    for (name, status, answer) in send_bad_http_corpus(env.api_port) {
        assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{name}: expected {status}, got:\n{answer}");
        assert!(answer.contains("application/problem+json"), "{name}: not a problem document:\n{answer}");
    }

    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(end_offsets(&env.kafka, &env.topics.orders_topic), orders_before, "bad input reached `orders`");
    assert_eq!(api.get("/orders/counts").body, counts_before, "bad input changed the view");
    assert_eq!(direct.get("/v1/status").body["direct_commands"], 0, "bad input reached the state machine");

    // The last good command still goes through, and the interactive query sees it.
    let confirmed = api.post("/orders/HTTP-1/confirm-delivery", "");
    openapi.check("post", "/orders/{order_id}/confirm-delivery", &confirmed);
    wait_status(&api, "HTTP-1", "Delivered");
    let state = direct.get("/v1/orders/HTTP-1");
    assert_eq!(state.status, 200);
    assert_eq!(state.body["state"]["status"], "Delivered");
    assert_eq!(state.body["state"]["version"], 4);
    // Every partition's orders are answered, whichever thread serves them.
    let mut answered = std::collections::BTreeSet::new();
    for n in 0..8 {
        let id = format!("ROUTE-{n}");
        let order = json!({"order_id": id, "wagon_id": "WL-7", "requested_by": "agent", "lines": [{"sku": "NOT-SOLD-HERE", "quantity": 1}]});
        assert_eq!(api.post("/orders", order.to_string()).status, 202);
        wait_status(&api, &id, "Rejected");
        let state = direct.get(&format!("/v1/orders/{id}"));
        assert_eq!((state.status, &state.body["state"]["status"]), (200, &json!("Rejected")), "{}", state.body);
        answered.insert(state.body["partition"].as_i64().expect("the partition"));
    }
    assert_eq!(answered.len(), 2, "the orders asked for fell on partitions {answered:?} only");
    let log = dev.log_text();
    assert!(
        log.contains("stream_thread{thread=1}"),
        "the second stream thread did not run; log:\n{}",
        dev.log_tail(40)
    );

    wagon_lits.terminate();
    dev.terminate();
    let _: Value = Value::Null;
}
