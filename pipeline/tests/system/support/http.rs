//! Calling the services over HTTP from tests, and checking answers against `docs/openapi.json`.

use std::time::{Duration, Instant};

use http_fallback::{Client, Secret};
use serde_json::Value;

pub const TOKEN: &str = "test-token-3f1b";

/// An HTTP answer: status, content type and JSON body (`Value::Null` if not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub raw: Vec<u8>,
}

/// A blocking HTTP client for tests.
pub struct Http {
    runtime: tokio::runtime::Runtime,
    client: Client,
    base: String,
}

impl Http {
    pub fn new(port: u16, token: Option<&str>) -> Http {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let secret = token.map(|t| Secret::new(t).expect("token"));
        Http { runtime, client: Client::new(secret, Duration::from_secs(30)), base: format!("http://127.0.0.1:{port}") }
    }

    fn answer(result: Result<(hyper::StatusCode, bytes::Bytes), http_fallback::ClientError>) -> Answer {
        let (status, body) = result.expect("an HTTP answer");
        Answer {
            status: status.as_u16(),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            raw: body.to_vec(),
        }
    }

    pub fn get(&self, path: &str) -> Answer {
        Self::answer(self.runtime.block_on(self.client.get(&format!("{}{path}", self.base))))
    }

    pub fn post(&self, path: &str, body: impl Into<Vec<u8>>) -> Answer {
        Self::answer(self.runtime.block_on(self.client.post_json(&format!("{}{path}", self.base), body.into())))
    }

    pub fn post_with(&self, path: &str, body: impl Into<Vec<u8>>, headers: &[(&str, &str)]) -> Answer {
        let url = format!("{}{path}", self.base);
        Self::answer(self.runtime.block_on(self.client.post_json_with(&url, body.into(), headers)))
    }

    /// [`Http::post_with`], with a connection that fails (a service down) as an error.
    pub fn try_post_with(
        &self,
        path: &str,
        body: impl Into<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let url = format!("{}{path}", self.base);
        match self.runtime.block_on(self.client.post_json_with(&url, body.into(), headers)) {
            Ok(answer) => Ok(Self::answer(Ok(answer))),
            Err(err) => Err(err.to_string()),
        }
    }

    /// Polls `path` until it answers 200.
    pub fn wait_ok(&self, path: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let ok = self
                .runtime
                .block_on(self.client.get(&format!("{}{path}", self.base)))
                .is_ok_and(|(s, _)| s.as_u16() == 200);
            if ok {
                return;
            }
            assert!(start.elapsed() < timeout, "{}{path} never answered 200", self.base);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Validates answers against the OpenAPI document.
pub struct OpenApi {
    doc: Value,
}

impl OpenApi {
    pub fn load() -> OpenApi {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let text = std::fs::read_to_string(path).expect("docs/openapi.json");
        OpenApi { doc: serde_json::from_str(&text).expect("openapi.json is JSON") }
    }

    /// Checks that `answer` is one the document lists for `method` on `template` (a path as in
    /// the document, e.g. `/orders/{order_id}`), and that its body matches the schema.
    pub fn check(&self, method: &str, template: &str, answer: &Answer) {
        let responses = &self.doc["paths"][template][method]["responses"];
        assert!(responses.is_object(), "{method} {template} is not in the OpenAPI document");
        let response = &responses[answer.status.to_string()];
        assert!(
            response.is_object(),
            "{method} {template} answered {} which the document does not list: {}",
            answer.status,
            String::from_utf8_lossy(&answer.raw)
        );
        let content = response["content"].as_object().expect("content");
        let (_, media) = content.iter().next().expect("a media type");
        let schema_ref = media["schema"]["$ref"].as_str().expect("a $ref schema");
        // Make a JSON Schema document of the components, pointing at the one schema.
        let defs = serde_json::to_string(&self.doc["components"]["schemas"])
            .expect("schemas")
            .replace("#/components/schemas/", "#/$defs/");
        let schema: Value = serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": serde_json::from_str::<Value>(&defs).expect("defs"),
            "$ref": schema_ref.replace("#/components/schemas/", "#/$defs/"),
        });
        let validator = jsonschema::validator_for(&schema).expect("a valid schema");
        let errors: Vec<String> =
            validator.iter_errors(&answer.body).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {}: body does not match {schema_ref}: {errors:?}\n{}",
            answer.status,
            answer.body
        );
    }
}
