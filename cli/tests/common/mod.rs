//! Shared by the CLI crate's end-to-end tests.
#![allow(clippy::unwrap_used)]

use serde_json::Value;

/// One control API call: its status and JSON body (`null` if none).
pub async fn call(
    base: &str,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let c = reqwest::Client::new();
    let mut r = c
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{base}{path}"),
        )
        .bearer_auth(key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}
