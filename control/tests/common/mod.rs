//! A control plane on 127.0.0.1:0 over SQLite (a temp file) or PostgreSQL
//! (`WARREN_TEST_POSTGRES_URL`, a server the test may create databases on;
//! required under CI), and fake agents that speak the internal API and run
//! every session at once (a fake runtime: scheduling, not Docker, is tested).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use warren_config::{ControlConfig, Strategy, from_toml_str};

pub const ADMIN: &str = "wa_test_admin_key_0123456789abcdefghijklmnop";

#[derive(Clone, Copy, Debug)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// The backends to run on: SQLite always, PostgreSQL when configured (and
/// under CI, where it must be).
pub fn backends() -> Vec<Db> {
    let mut v = vec![Db::Sqlite];
    match std::env::var("WARREN_TEST_POSTGRES_URL") {
        Ok(_) => v.push(Db::Postgres),
        Err(_) if std::env::var("CI").is_ok_and(|c| c == "true") => {
            panic!("WARREN_TEST_POSTGRES_URL must be set under CI")
        }
        Err(_) => eprintln!("SKIPPED PostgreSQL: WARREN_TEST_POSTGRES_URL is not set"),
    }
    v
}

fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh database URL for `db`.
pub async fn database(db: Db, name: &str) -> String {
    match db {
        Db::Sqlite => {
            let dir = std::env::temp_dir().join(unique(&format!("warren-control-{name}")));
            std::fs::create_dir_all(&dir).unwrap();
            format!("sqlite://{}", dir.join("warren.db").display())
        }
        Db::Postgres => {
            let base = std::env::var("WARREN_TEST_POSTGRES_URL").unwrap();
            let dbname = unique(&format!("warren_{name}"));
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(&base).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {dbname}")))
                .execute(&pool)
                .await
                .unwrap();
            let (prefix, _) = base.rsplit_once('/').unwrap();
            format!("{prefix}/{dbname}")
        }
    }
}

pub struct TestControl {
    pub url: String,
    pub running: warren_control::Running,
    pub stop: CancellationToken,
    pub http: reqwest::Client,
}

impl Drop for TestControl {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn config(db_url: &str, strategy: Strategy) -> ControlConfig {
    let dir = std::env::temp_dir().join(unique("warren-control-data"));
    let mut c: ControlConfig = from_toml_str(&format!(
        r#"
listen = "127.0.0.1:0"
data_dir = "{}"
domain = "warren.localhost"
https_port = 8443
relay_secret = "test-relay-secret-0123456789"
admin_api_key = "{ADMIN}"
[scheduler]
heartbeat_timeout_secs = 3
node_lost_grace_secs = 3
[sessions]
image = "warren/session:mini"
memory_mb = 256
create_timeout_secs = 20
"#,
        dir.display()
    ))
    .unwrap();
    c.database_url = Some(warren_config::Secret::new(db_url));
    c.scheduler.strategy = strategy;
    c
}

impl TestControl {
    pub async fn start(cfg: ControlConfig) -> TestControl {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("warren=debug,info")
            .with_test_writer()
            .try_init();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let stop = CancellationToken::new();
        let running = warren_control::start(cfg, l, stop.clone()).await.unwrap();
        TestControl {
            url,
            running,
            stop,
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self
            .http
            .request(m, format!("{}{path}", self.url))
            .bearer_auth(key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn join_token(&self) -> String {
        let (s, v) = self
            .call("POST", "/v1/nodes/join-tokens", ADMIN, Some(json!({})))
            .await;
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// A tenant and one of its API keys.
    pub async fn tenant(
        &self,
        name: &str,
        max_sessions: i64,
        max_memory_mb: i64,
    ) -> (String, String) {
        let (s, t) = self.call("POST", "/v1/tenants", ADMIN, Some(json!({"name": name, "max_sessions": max_sessions, "max_memory_mb": max_memory_mb}))).await;
        assert_eq!(s, 201, "{t}");
        let id = t["id"].as_str().unwrap().to_string();
        let (s, k) = self
            .call("POST", &format!("/v1/tenants/{id}/api-keys"), ADMIN, None)
            .await;
        assert_eq!(s, 201, "{k}");
        (id, k["key"].as_str().unwrap().to_string())
    }
}

/// A fake agent: joins, heartbeats every 300 ms, watches, and reports every
/// desired session as running at once.
pub struct FakeAgent {
    pub node: String,
    pub credential: String,
    pub running: Arc<Mutex<BTreeSet<String>>>,
    /// Milliseconds of terminal idleness it reports, by session (default 0).
    pub idle_ms: Arc<Mutex<HashMap<String, i64>>>,
    pub alive: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeAgent {
    pub async fn join(
        ctl_url: &str,
        token: &str,
        node: &str,
        memory_mb: i64,
    ) -> Result<FakeAgent, (u16, Value)> {
        let http = reqwest::Client::new();
        let r = http
            .post(format!("{ctl_url}/internal/v1/join"))
            .json(&json!({"token": token, "node_id": node, "allocatable_mb": memory_mb}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if status != 200 {
            return Err((status, v));
        }
        let credential = v["credential"].as_str().unwrap().to_string();
        let a = FakeAgent {
            node: node.into(),
            credential: credential.clone(),
            running: Arc::new(Mutex::new(BTreeSet::new())),
            idle_ms: Arc::new(Mutex::new(HashMap::new())),
            alive: Arc::new(AtomicBool::new(true)),
            stop: CancellationToken::new(),
        };
        let reporter = Reporter {
            http: http.clone(),
            url: ctl_url.to_string(),
            auth: format!("{node}:{credential}"),
            running: a.running.clone(),
            idle: a.idle_ms.clone(),
            memory_mb,
        };
        // Heartbeats.
        {
            let (reporter, alive, stop) = (reporter.clone(), a.alive.clone(), a.stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    if alive.load(Ordering::Relaxed) {
                        reporter.heartbeat().await;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            });
        }
        // Watch: run what is desired at once, and say so.
        {
            let (alive, stop) = (a.alive.clone(), a.stop.clone());
            tokio::spawn(async move {
                let mut index = 0i64;
                while !stop.is_cancelled() {
                    if !alive.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    let watch = reporter
                        .http
                        .get(format!("{}/internal/v1/watch?index={index}", reporter.url))
                        .bearer_auth(&reporter.auth)
                        .send();
                    let r = tokio::select! {
                        _ = stop.cancelled() => return,
                        r = watch => r,
                    };
                    let Ok(r) = r else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let Ok(v) = r.json::<Value>().await else {
                        continue;
                    };
                    index = v["index"].as_i64().unwrap_or(0);
                    *reporter.running.lock().unwrap() = v["sessions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s["id"].as_str().unwrap().to_string())
                        .collect();
                    // A watch answered after the agent "died" must not
                    // bring its node back (the test then saw the node
                    // ready again and placed a session on it).
                    if alive.load(Ordering::Relaxed) {
                        reporter.heartbeat().await;
                    }
                }
            });
        }
        Ok(a)
    }
}

/// What a fake agent tells control: every session it runs is running.
#[derive(Clone)]
struct Reporter {
    http: reqwest::Client,
    url: String,
    auth: String,
    running: Arc<Mutex<BTreeSet<String>>>,
    idle: Arc<Mutex<HashMap<String, i64>>>,
    memory_mb: i64,
}

impl Reporter {
    async fn heartbeat(&self) {
        let reports: Vec<Value> = {
            let (running, idle) = (self.running.lock().unwrap(), self.idle.lock().unwrap());
            running
                .iter()
                .map(|id| json!({"id": id, "state": "running", "idle_ms": idle.get(id).copied().unwrap_or(0)}))
                .collect()
        };
        let _ = self
            .http
            .post(format!("{}/internal/v1/heartbeat", self.url))
            .bearer_auth(&self.auth)
            .json(&json!({"allocatable_mb": self.memory_mb, "free_mb": self.memory_mb, "sessions": reports}))
            .send()
            .await;
    }
}

/// Waits for `cond` with a deadline, checking every 50 ms.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl TestControl {
    /// Fake agents `<tag>-n0`, `<tag>-n1`, … offering `memory_mb` each, once
    /// all of them are ready.
    pub async fn nodes(&self, tag: &str, memory_mb: &[i64]) -> Vec<FakeAgent> {
        let mut v = Vec::new();
        for (i, mem) in memory_mb.iter().enumerate() {
            let t = self.join_token().await;
            v.push(
                FakeAgent::join(&self.url, &t, &format!("{tag}-n{i}"), *mem)
                    .await
                    .unwrap(),
            );
        }
        eventually("ready nodes", || async {
            let (_, n) = self.call("GET", "/v1/nodes", ADMIN, None).await;
            n["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["state"] == "ready")
                .count()
                == memory_mb.len()
        })
        .await;
        v
    }
}
