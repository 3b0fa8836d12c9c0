//! The server's guarantees, each against a real socket: auth, body limit, timeouts, problem
//! bodies, graceful shutdown.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::Uri;
use axum::routing::any;
use axum::Router;
use http_fallback::{json, layered, serve, Client, Secret, ServerConfig};
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Echoes the body length on any path; sleeps first when the path is /slow.
fn routes() -> Router {
    let echo = any(|uri: Uri, body: Bytes| async move {
        if uri.path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        json(StatusCode::OK, &serde_json::json!({"len": body.len()}))
    });
    Router::new().route("/", echo.clone()).route("/{*rest}", echo)
}

struct Running {
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(config: ServerConfig) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop, stopped) = oneshot::channel::<()>();
    let router = layered(routes(), &config);
    let done = tokio::spawn(async move {
        serve(listener, router, &config, async move {
            let _ = stopped.await;
        })
        .await
    });
    Running { port, stop: Some(stop), done }
}

fn config() -> ServerConfig {
    ServerConfig {
        token: Some(Secret::new("t0ken").expect("secret")),
        max_body_bytes: 1024,
        header_read_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    }
}

fn client(token: Option<&str>) -> Client {
    Client::new(token.map(|t| Secret::new(t).expect("secret")), Duration::from_secs(5))
}

fn problem_status(body: &[u8]) -> u64 {
    let value: serde_json::Value = serde_json::from_slice(body).expect("a problem body");
    assert!(value["detail"].as_str().is_some_and(|d| !d.is_empty()), "{value}");
    value["status"].as_u64().expect("status")
}

#[tokio::test]
async fn tokens_are_checked_except_on_public_paths() {
    let server = start(ServerConfig { request_timeout: Duration::from_secs(5), ..config() }).await;
    let url = format!("http://127.0.0.1:{}/x", server.port);
    let (status, body) = client(None).get(&url).await.expect("answer");
    assert_eq!((status, problem_status(&body)), (StatusCode::UNAUTHORIZED, 401));
    let (status, _) = client(Some("t0ke")).get(&url).await.expect("answer");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = client(Some("t0ken")).get(&url).await.expect("answer");
    assert_eq!(status, StatusCode::OK);
    let (status, _) = client(None).get(&format!("http://127.0.0.1:{}/healthz", server.port)).await.expect("answer");
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn bodies_past_the_limit_get_413_whatever_content_length_says() {
    let server = start(ServerConfig { request_timeout: Duration::from_secs(5), ..config() }).await;
    let url = format!("http://127.0.0.1:{}/x", server.port);
    let (status, body) = client(Some("t0ken")).post_json(&url, vec![b'a'; 2048]).await.expect("answer");
    assert_eq!((status, problem_status(&body)), (StatusCode::PAYLOAD_TOO_LARGE, 413));
    let (status, body) = client(Some("t0ken")).post_json(&url, vec![b'a'; 1024]).await.expect("answer");
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));

    // A Content-Length past the limit is refused at once, before the body (which here never
    // comes in full) is read.
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).await.expect("connect");
    stream
        .write_all(b"POST /x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\nContent-Length: 10000000\r\n\r\n{}")
        .await
        .expect("write");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut answer))
        .await
        .expect("an answer before the body is read")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    // A chunked body (no Content-Length) is cut off while it is read.
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).await.expect("connect");
    let chunk = "a".repeat(1000);
    let request = format!(
        "POST /x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).await.expect("read");
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
}

#[tokio::test]
async fn slow_handlers_get_503_and_slow_clients_are_dropped() {
    let server = start(config()).await;
    let (status, body) =
        client(Some("t0ken")).get(&format!("http://127.0.0.1:{}/slow", server.port)).await.expect("answer");
    assert_eq!((status, problem_status(&body)), (StatusCode::SERVICE_UNAVAILABLE, 503));

    // A client that never finishes its headers is disconnected after the header timeout.
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).await.expect("connect");
    stream.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("closed in time");
    assert!(started.elapsed() >= Duration::from_millis(400), "closed too early: {:?}", started.elapsed());
    let text = String::from_utf8_lossy(&buf[..read.unwrap_or(0)]).to_string();
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish() {
    let mut server = start(ServerConfig { request_timeout: Duration::from_secs(5), ..config() }).await;
    let url = format!("http://127.0.0.1:{}/slow", server.port);
    let in_flight = tokio::spawn(async move { client(Some("t0ken")).get(&url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = server.stop.take().expect("stop").send(());
    let (status, _) = in_flight.await.expect("task").expect("the request in flight got its answer");
    assert_eq!(status, StatusCode::OK);
    server.done.await.expect("server task").expect("server stopped cleanly");
    assert!(TcpStream::connect(("127.0.0.1", server.port)).await.is_err(), "no new connections after shutdown");
}
