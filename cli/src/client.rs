//! The API client: finds the control URL and key from flags, then
//! `WARREN_CONTROL_URL` / `WARREN_API_KEY`, then `.warren/up.json`.
use anyhow::Context;
use serde_json::Value;

pub struct Client {
    pub base: String,
    key: String,
    http: reqwest::Client,
}

impl Client {
    pub fn resolve(
        url: Option<String>,
        key: Option<String>,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Client> {
        let up: Option<Value> = std::fs::read_to_string(data_dir.join("up.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let base = url
            .or_else(|| up.as_ref().and_then(|u| u["control_url"].as_str().map(String::from)))
            .context("no control URL: pass --control-url, set WARREN_CONTROL_URL, or run `warren up` here")?;
        let key = key
            .or_else(|| {
                up.as_ref()
                    .and_then(|u| u["admin_api_key"].as_str().map(String::from))
            })
            .context("no API key: pass --api-key, set WARREN_API_KEY, or run `warren up` here")?;
        Ok(Client {
            base: base.trim_end_matches('/').into(),
            key,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(180))
                .build()?,
        })
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let m = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut r = self
            .http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r
            .send()
            .await
            .with_context(|| format!("reaching the control plane at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let msg = v["error"]["message"].as_str().unwrap_or("no message");
            let code = v["error"]["code"].as_str().unwrap_or("error");
            anyhow::bail!("{code}: {msg} (HTTP {})", status.as_u16());
        }
        Ok(v)
    }
}
