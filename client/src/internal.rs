//! Control's internal API (`/internal/v1/…`), which relays and agents call:
//! one control replica or several on one database, failover between them,
//! bearer auth, and control's private CA trusted besides the system's roots.
//! Bodies are `warren_proto::internal` types.
//!
//! Two ways to call, for the two callers:
//! - [`InternalClient::get`] / [`InternalClient::post`] / [`InternalClient::send`]
//!   fail over within the call (the relay: a lookup must not wait for the
//!   next try): the current replica first, then the others in turn while they
//!   cannot be reached or answer 502/503.
//! - [`InternalClient::current`] is one request to the replica in use; the
//!   caller decides whether the answer means "move on" ([`Replica::failed`])
//!   and tries again later (the agent's heartbeat and watch loops).
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Control closes connections idle for 10 s: pooled ones go first, so none
/// is reused as control closes it.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Splits `URL[,URL…]` (a `--control` list): trimmed, without a trailing
/// `/`, empty entries dropped.
pub fn split_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

/// A client builder for control: `connect` and `timeout` as given, and
/// [`POOL_IDLE_TIMEOUT`].
pub fn builder(connect: Duration, timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(connect)
        .timeout(timeout)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
}

/// `b` trusting `ca_pem` (control's private CA, a PEM bundle) besides the
/// system's roots. Fails only when `ca_pem` is not PEM.
pub fn trusting(
    mut b: reqwest::ClientBuilder,
    ca_pem: Option<&str>,
) -> Result<reqwest::ClientBuilder, reqwest::Error> {
    if let Some(pem) = ca_pem {
        for c in reqwest::Certificate::from_pem_bundle(pem.as_bytes())? {
            b = b.add_root_certificate(c);
        }
    }
    Ok(b)
}

/// The control replicas to talk to: one is in use while it answers; a
/// caller that sees it fail moves on to the next.
#[derive(Debug)]
pub struct Replicas {
    urls: Vec<String>,
    current: AtomicUsize,
}

impl Replicas {
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            current: Default::default(),
        }
    }

    /// Every replica's URL, in the order they are tried.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The replica to use now, and its index (for [`Replicas::failed`]).
    pub fn pick(&self) -> (usize, &str) {
        let i = self.current.load(Ordering::Relaxed) % self.urls.len().max(1);
        (i, self.urls.get(i).map(String::as_str).unwrap_or(""))
    }

    /// The replica at `index` did not answer: move on, unless another task
    /// already did.
    pub fn failed(&self, index: usize) {
        let next = (index + 1) % self.urls.len().max(1);
        let _ = self
            .current
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The replica at `index` answered: use it from now on.
    fn answered(&self, index: usize) {
        self.current.store(index, Ordering::Relaxed);
    }
}

/// Control's internal API on one replica or several, with the caller's
/// credential (the relay's secret, or an agent's `node:credential`).
#[derive(Debug)]
pub struct InternalClient {
    replicas: Replicas,
    bearer: Option<String>,
    http: reqwest::Client,
}

impl InternalClient {
    /// `http` is built with [`builder`] and [`trusting`]; `bearer` goes with
    /// every request (`None`: none, as for a join).
    pub fn new(urls: Vec<String>, bearer: Option<String>, http: reqwest::Client) -> Self {
        Self {
            replicas: Replicas::new(urls),
            bearer,
            http,
        }
    }

    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    /// One request to the replica in use, no failover within it.
    pub fn current(&self) -> Replica<'_> {
        let (index, url) = self.replicas.pick();
        Replica {
            index,
            url,
            client: self,
        }
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.bearer {
            Some(b) => r.bearer_auth(b),
            None => r,
        }
    }

    /// `GET {replica}{path}`, failing over as [`InternalClient::send`] does.
    pub async fn get(&self, path: &str) -> Result<reqwest::Response, reqwest::Error> {
        self.send(|c, base| c.get(format!("{base}{path}"))).await
    }

    /// `POST {replica}{path}` with `body` as JSON, failing over as
    /// [`InternalClient::send`] does.
    pub async fn post<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<reqwest::Response, reqwest::Error> {
        self.send(|c, base| c.post(format!("{base}{path}")).json(body))
            .await
    }

    /// Sends `req(http, base)` with the credential to the replica in use,
    /// then to the others in turn while they cannot be reached (a connect
    /// error or a timeout) or answer 502/503 (a replica without its
    /// database). The last replica's answer, or the last error; any other
    /// error at once. The replica that answered is used from then on.
    pub async fn send(
        &self,
        req: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let (start, _) = self.replicas.pick();
        let urls = self.replicas.urls();
        let n = urls.len();
        let mut last = None;
        for i in 0..n {
            let at = (start + i) % n;
            match self.auth(req(&self.http, &urls[at])).send().await {
                Ok(r) if i + 1 < n && matches!(r.status().as_u16(), 502 | 503) => {}
                Ok(r) => {
                    if at != start {
                        tracing::info!(control = %urls[at], "control replica changed");
                        self.replicas.answered(at);
                    }
                    return Ok(r);
                }
                Err(e) if e.is_connect() || e.is_timeout() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one replica was tried"))
    }
}

/// The replica in use for one request ([`InternalClient::current`]).
#[derive(Debug, Clone, Copy)]
pub struct Replica<'a> {
    pub index: usize,
    pub url: &'a str,
    client: &'a InternalClient,
}

impl Replica<'_> {
    /// `GET {url}{path}` with the credential.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .auth(self.client.http.get(format!("{}{path}", self.url)))
    }

    /// `POST {url}{path}` with the credential.
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .auth(self.client.http.post(format!("{}{path}", self.url)))
    }

    /// This replica did not answer: move on to the next, unless another
    /// task already did.
    pub fn failed(&self) {
        self.client.replicas.failed(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn urls_split_and_replicas_fail_over_in_turn() {
        assert_eq!(
            split_urls(" http://a:1/ ,http://b:2,,"),
            vec!["http://a:1", "http://b:2"]
        );
        assert!(split_urls(" , ").is_empty());
        let r = Replicas::new(split_urls("http://a:1,http://b:2"));
        let (i, u) = r.pick();
        assert_eq!((i, u), (0, "http://a:1"));
        // Two tasks see the same failure: the replica moves on once.
        r.failed(i);
        r.failed(i);
        assert_eq!(r.pick(), (1, "http://b:2"));
        r.failed(1);
        assert_eq!(r.pick(), (0, "http://a:1"));
        // No replica at all: nothing to pick, nothing to panic over.
        let none = Replicas::new(vec![]);
        assert_eq!(none.pick(), (0, ""));
        none.failed(0);
    }

    #[test]
    fn trusting_refuses_what_is_not_pem() {
        assert!(trusting(reqwest::Client::builder(), None).is_ok());
        let broken = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        assert!(trusting(reqwest::Client::builder(), Some(broken)).is_err());
    }

    /// A server answering every request with `status`, and the
    /// `Authorization` headers it saw.
    async fn answering(status: u16) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let auth = head
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: "))
                    .unwrap_or("")
                    .to_string();
                let _ = tx.send(auth);
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        (url, rx)
    }

    /// A URL nothing listens on.
    async fn closed() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", l.local_addr().unwrap())
    }

    fn client(urls: Vec<String>, bearer: Option<&str>) -> InternalClient {
        let http = trusting(
            builder(Duration::from_secs(2), Duration::from_secs(5)),
            None,
        )
        .unwrap()
        .build()
        .unwrap();
        InternalClient::new(urls, bearer.map(str::to_string), http)
    }

    #[tokio::test]
    async fn send_fails_over_past_unreachable_and_unavailable_replicas() {
        let down = closed().await;
        let (unavailable, _) = answering(503).await;
        let (up, mut seen) = answering(200).await;
        let c = client(vec![down, unavailable, up.clone()], Some("s3cret"));
        let r = c.get("/internal/v1/routes/x").await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(seen.recv().await.unwrap(), "Bearer s3cret");
        // The replica that answered is the one in use now.
        assert_eq!(c.current().url, up);
        let r = c
            .post("/internal/v1/ssh/audit", &serde_json::json!({}))
            .await;
        assert_eq!(r.unwrap().status(), 200);
    }

    #[tokio::test]
    async fn send_gives_the_last_replicas_answer_or_the_last_error() {
        // Only unavailable replicas: the last one's 503 is the answer (and
        // that replica the one in use, as any that answered).
        let (a, _) = answering(503).await;
        let (b, _) = answering(503).await;
        let c = client(vec![a, b], None);
        assert_eq!(c.get("/x").await.unwrap().status(), 503);
        assert_eq!(c.current().index, 1);
        // Only unreachable replicas: the last error.
        let c = client(vec![closed().await, closed().await], None);
        assert!(c.get("/x").await.unwrap_err().is_connect());
        // Other errors are not retried elsewhere; 4xx are answers.
        let (forbidden, _) = answering(403).await;
        let (up, _) = answering(200).await;
        let c = client(vec![forbidden, up], None);
        assert_eq!(c.get("/x").await.unwrap().status(), 403);
        assert_eq!(c.current().index, 0);
    }

    #[tokio::test]
    async fn current_is_one_request_and_moves_on_when_told() {
        let (a, mut seen) = answering(500).await;
        let (b, _) = answering(200).await;
        let c = client(vec![a.clone(), b.clone()], Some("n:c"));
        let at = c.current();
        assert_eq!((at.index, at.url), (0, a.as_str()));
        let r = at.post("/internal/v1/heartbeat").json(&()).send().await;
        assert_eq!(r.unwrap().status(), 500);
        assert_eq!(seen.recv().await.unwrap(), "Bearer n:c");
        at.failed();
        at.failed();
        assert_eq!(c.current().url, b);
        assert_eq!(
            c.current()
                .get("/internal/v1/watch")
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
}
