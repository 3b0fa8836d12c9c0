//! The operations page (`/ops` on wagon-lits) in headless Chromium, driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, installed by `scripts/setup.sh`): sign in, check
//! what the page shows against the API and Kafka, replay a dead letter from it, read an order's
//! history. The screenshot is kept as `test-artifacts/ops-page.png`.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::http::{Http, TOKEN};
use crate::support::TestEnv;
use fantoccini::{Client, ClientBuilder, Locator};
use state::{Command as OrderCommand, CommandEnvelope, OrderLine, PlaceOrder};

/// chromedriver, stopped with the test.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_driver() -> (Driver, u16) {
    let port = kafka_harness::free_port().expect("port");
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver (scripts/setup.sh installs chromium-driver)");
    let driver = Driver(child);
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    (driver, port)
}

async fn browser(port: u16) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,2000"]
        }),
    );
    ClientBuilder::native()
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session with headless Chromium")
}

/// The text of the element `css`, waiting up to 10 s for it to appear (a click may have started
/// a navigation that has not finished).
async fn text(client: &Client, css: &str) -> String {
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .expect("text")
}

#[test]
fn the_operations_page_shows_what_the_api_and_kafka_hold_and_replays_a_dead_letter() {
    let env = TestEnv::start("ops", 3);
    let mut dev = env.spawn_dev_materiels(0);
    let mut wagon = env.spawn_wagon_lits(0, 2_000);
    let api = Http::new(env.api_port, Some(TOKEN));
    api.wait_ok("/readyz", Duration::from_secs(60));
    dev.wait_restored(env.topics.partitions, Duration::from_secs(60));

    // A few orders, and a dead letter: a valid command under a key that is not its order id.
    let mut ids = Vec::new();
    for i in 0..6 {
        let body = serde_json::json!({
            "wagon_id": format!("WL-{i}"), "requested_by": "ops-test",
            "lines": [{"sku": "BRAKE-PAD-UIC", "quantity": 1 + i}]
        });
        let answer = api.post("/orders", body.to_string());
        assert_eq!(answer.status, 202, "{:?}", answer.body);
        ids.push(answer.body["order_id"].as_str().expect("order_id").to_string());
    }
    let replayable = CommandEnvelope {
        schema_version: 1,
        command_id: "OPS-REPLAY-1:place".into(),
        issued_at_ms: crate::support::now_ms(),
        order_id: "OPS-REPLAY-1".into(),
        command: OrderCommand::PlaceOrder(PlaceOrder {
            wagon_id: "WL-7".into(),
            requested_by: "ops-test".into(),
            lines: vec![OrderLine { sku: "BRAKE-PAD-UIC".into(), quantity: 3 }],
        }),
    };
    let value = serde_json::to_vec(&replayable).expect("json");
    let producer = env.producer();
    let sent = producer.send_raw(Some(b"NOT-THE-ORDER-ID"), Some(&value)).expect("queue");
    futures::executor::block_on(sent).expect("future").expect("Kafka took it");

    // Wait until every order has shipped (nothing moves after that) and the dead letter is there.
    let start = Instant::now();
    loop {
        let shipped = ids.iter().all(|id| api.get(&format!("/orders/{id}")).body["status"] == "Shipped");
        let letters = env.read_all(&env.topics.dlq_topic);
        if shipped && letters.len() == 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "orders did not ship or no dead letter");
        std::thread::sleep(Duration::from_millis(300));
    }
    let letter = env.read_all(&env.topics.dlq_topic).remove(0);
    let counts: BTreeMap<String, u64> =
        serde_json::from_value(api.get("/orders/counts").body).expect("counts from the API");
    let status = api.get("/status").body;
    let orders_end: i64 = env.read_all(&env.topics.orders_topic).len() as i64;

    let (_driver, driver_port) = start_driver();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let client = browser(driver_port).await;
        let base = format!("http://127.0.0.1:{}", env.api_port);

        // Without the cookie, the page sends the browser to sign in.
        client.goto(&format!("{base}/ops")).await.expect("goto /ops");
        assert!(client.current_url().await.expect("url").path().ends_with("/ops/login"));
        client.find(Locator::Css("#token")).await.expect("token field").send_keys(TOKEN).await.expect("type");
        client.find(Locator::Css("#sign-in")).await.expect("button").click().await.expect("click");
        // The click returns once the event is dispatched, not when the navigation it starts has
        // ended (the clean-clone CI of da95b08 read `/ops/login` here once).
        let clicked = Instant::now();
        let mut path = client.current_url().await.expect("url").path().to_string();
        while path != "/ops" && clicked.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            path = client.current_url().await.expect("url").path().to_string();
        }
        assert_eq!(path, "/ops", "signed in, the browser is sent back to the page");

        // Orders by status: what the API counts.
        for (status, n) in &counts {
            let shown = text(&client, &format!("tr[data-status='{status}'] td.count")).await;
            assert_eq!(shown, n.to_string(), "orders {status}: page {shown}, API {n}");
        }
        // The path: what /status says.
        let path = text(&client, "#current-path").await;
        assert_eq!(status["path"], "kafka");
        assert_eq!(path, "Kafka");
        assert_eq!(text(&client, "#via-kafka").await, status["via_kafka"].to_string());
        // Topics: every partition of `orders`, and end offsets that add up to what it holds.
        let mut shown_end = 0i64;
        for p in 0..env.topics.partitions {
            let end = text(&client, &format!("tr[data-topic='orders'][data-partition='{p}'] td.end")).await;
            shown_end += end.parse::<i64>().expect("an offset");
        }
        // (End offsets count transaction markers too: at least the records read back.)
        assert!(shown_end >= orders_end, "end offsets {shown_end} < {orders_end} records");
        // dev-materiels' group has committed everything (but for a transaction marker), and so
        // has the view.
        for p in 0..env.topics.partitions {
            let lag = text(&client, &format!("tr[data-topic='orders'][data-partition='{p}'] td.group-lag")).await;
            assert!(lag.parse::<i64>().expect("a lag") <= 1, "dev-materiels' lag on orders/{p}: {lag}");
            let lag = text(&client, &format!("tr[data-topic='order-updates'][data-partition='{p}'] td.view-lag")).await;
            assert!(lag.parse::<i64>().expect("a lag") <= 1, "the view's lag on order-updates/{p}: {lag}");
        }
        let changelog = format!("tr[data-topic='{}'][data-partition='0']", env.changelog());
        assert!(client.find(Locator::Css(&changelog)).await.is_ok(), "the changelog is not listed");
        // The dead letter, with its reason.
        let kind = text(&client, "tr.dead-letter .kind").await;
        assert_eq!(kind, letter.headers["dlq.error.kind"]);
        let reason = text(&client, "tr.dead-letter .reason").await;
        assert_eq!(reason, letter.headers["dlq.error"]);

        let png = client.screenshot().await.expect("screenshot");
        let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-artifacts");
        std::fs::create_dir_all(&artifacts).expect("test-artifacts");
        std::fs::write(artifacts.join("ops-page.png"), &png).expect("screenshot file");
        crate::support::print_path("operations page screenshot", &artifacts.join("ops-page.png"));

        // Replay the dead letter from the page: it goes to `orders` under its order id.
        client
            .find(Locator::Css("tr.dead-letter button.replay"))
            .await
            .expect("replay button")
            .click()
            .await
            .expect("click");
        let result = text(&client, "#replay-result").await;
        assert!(result.contains("Replayed") && result.contains("OPS-REPLAY-1"), "{result}");

        // One order's history: the versions `order-updates` holds for it.
        client.goto(&format!("{base}/ops/orders/{}", ids[0])).await.expect("goto history");
        let rows = client.find_all(Locator::Css("#history td.version")).await.expect("history rows");
        let mut versions = Vec::new();
        for row in rows {
            versions.push(row.text().await.expect("text").parse::<u64>().expect("a version"));
        }
        let expected: Vec<u64> =
            env.updates().into_iter().filter(|u| u.order_id == ids[0]).map(|u| u.version).collect();
        assert_eq!(versions, expected, "history of {}", ids[0]);
        assert_eq!(text(&client, "#view-status").await, "Shipped (v3)");
        client.close().await.expect("closing the browser");
    });

    // The replayed order went through.
    let start = Instant::now();
    while api.get("/orders/OPS-REPLAY-1").status != 200 {
        assert!(start.elapsed() < Duration::from_secs(60), "the replayed order never reached the view");
        std::thread::sleep(Duration::from_millis(200));
    }
    wagon.terminate();
    dev.terminate();
}
