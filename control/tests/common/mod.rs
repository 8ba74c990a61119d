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
use warren_client::Client;
use warren_config::{ControlConfig, Strategy, from_toml_str};
use warren_proto::api::SessionStatus;
use warren_proto::internal::{
    ErrorBody, ErrorDetail, HeartbeatRequest, JoinRequest, JoinResponse, NodeIsolation,
    ReportedState, SessionReport, WatchResponse,
};
use warren_proto::token::Claims;
use warren_testkit::{until, until_ok};

pub const ADMIN: &str = "wa_test_admin_key_0123456789abcdefghijklmnop";

/// How long tests wait on a condition, and how often they look.
pub const WAIT: Duration = Duration::from_secs(30);
pub const EVERY: Duration = Duration::from_millis(50);

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

    /// The typed public API, called with `key`.
    pub fn client(&self, key: &str) -> Client {
        Client::new(&self.url, key, Duration::from_secs(60)).unwrap()
    }

    /// A raw call (for what has no type in `warren_proto::api`, malformed
    /// input and exact statuses): `(status, JSON body or null)`.
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

    /// `GET /v1/nodes` as the operator: the nodes (no type in
    /// `warren_proto::api`: raw JSON).
    pub async fn listed_nodes(&self) -> Vec<Value> {
        let (s, mut v) = self.call("GET", "/v1/nodes", ADMIN, None).await;
        assert_eq!(s, 200, "{v}");
        match v["nodes"].take() {
            Value::Array(nodes) => nodes,
            other => panic!("no node list: {other}"),
        }
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
            .json(&JoinRequest {
                token: token.into(),
                node_id: node.into(),
                allocatable_mb: memory_mb,
            })
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        if status != 200 {
            return Err((status, r.json().await.unwrap_or(Value::Null)));
        }
        let JoinResponse { credential, .. } = r.json().await.unwrap();
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
                    let Ok(w) = r.json::<WatchResponse>().await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    index = w.index;
                    *reporter.running.lock().unwrap() =
                        w.sessions.into_iter().map(|s| s.id).collect();
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
        let sessions = {
            let (running, idle) = (self.running.lock().unwrap(), self.idle.lock().unwrap());
            running
                .iter()
                .map(|id| SessionReport {
                    id: id.clone(),
                    state: ReportedState::Running,
                    reason: String::new(),
                    idle_ms: Some(idle.get(id).copied().unwrap_or(0)),
                })
                .collect()
        };
        let _ = self
            .http
            .post(format!("{}/internal/v1/heartbeat", self.url))
            .bearer_auth(&self.auth)
            .json(&HeartbeatRequest {
                allocatable_mb: self.memory_mb,
                free_mb: self.memory_mb,
                isolation: NodeIsolation::default(),
                metrics_addr: None,
                sessions,
                disk: None,
                warm: Vec::new(),
            })
            .send()
            .await;
    }
}

/// The API's error shape (`{"error": {"code", "message"}}`) of a raw
/// answer; fails the test when the body is not that shape.
pub fn api_error(v: &Value) -> ErrorDetail {
    serde_json::from_value::<ErrorBody>(v.clone())
        .unwrap_or_else(|e| panic!("not the API's error shape ({e}): {v}"))
        .error
}

/// The status, code and message a typed call was refused with; fails the
/// test when it succeeded or failed otherwise.
pub fn refused<T: std::fmt::Debug>(r: warren_client::Result<T>) -> (u16, ErrorDetail) {
    match r {
        Err(warren_client::Error::Api {
            status,
            code,
            message,
        }) => (status, ErrorDetail { code, message }),
        other => panic!("expected the API to refuse, got {other:?}"),
    }
}

/// Waits until session `id` has status `want`; on time-out, says what it
/// had instead.
pub async fn until_status(client: &Client, what: &str, id: &str, want: SessionStatus) {
    until_ok(what, WAIT, EVERY, || async move {
        match client.session(id).await {
            Ok(s) if s.status == want => Ok(()),
            Ok(s) => Err(format!("session {id} is {}", s.status)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

/// The `scope` claim of a session token (its payload, unverified: control
/// signed it, relays check signatures).
pub fn scope_of(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice::<Claims>(&bytes).unwrap().scope
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
        until("ready nodes", WAIT, EVERY, || async {
            self.listed_nodes()
                .await
                .iter()
                .filter(|n| n["state"] == "ready")
                .count()
                == memory_mb.len()
        })
        .await;
        v
    }
}
