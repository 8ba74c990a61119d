//! Share links on this node: the live ones per session, as control's watch
//! lists them, and what a terminal connection that came through one may
//! do. The relay names the link in headers only it sets; this agent then
//! refuses a link it does not know (after a short wait for the watch that
//! announces a new one), and cuts its connections when it leaves the list
//! or expires.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use warren_proto::share::ShareGrant;

/// Header names the relay sets on a share link's terminal stream.
pub const SHARE_HEADER: &str = "x-warren-share";
pub const ACCESS_HEADER: &str = "x-warren-access";
pub const VIEWER_HEADER: &str = "x-warren-viewer";

/// How long a connection naming an unknown link waits for the watch that
/// may bring it (a link used the moment it was made).
const NEW_LINK_WAIT: Duration = Duration::from_secs(3);

/// A terminal connection's caller as the relay described it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Caller {
    /// The share link it came through, if any.
    pub share: Option<String>,
    /// The link's label (shown to the others watching).
    pub name: Option<String>,
}

impl Caller {
    /// From the upgrade request's headers (set by the relay alone).
    pub fn from_headers(h: &tokio_tungstenite::tungstenite::http::HeaderMap) -> Caller {
        let get = |n: &str| {
            h.get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.len() <= 64)
                .map(str::to_string)
        };
        // A link header that is there but unusable is a link that opens
        // nothing, never "no link" (which would be the owner's shell).
        let share = h
            .get(SHARE_HEADER)
            .map(|_| get(SHARE_HEADER).unwrap_or_else(|| "invalid".into()));
        Caller {
            share,
            name: get(VIEWER_HEADER),
        }
    }
}

/// How long the list stays good without a watch answer: past it, links
/// are cut (a revocation control could not pass on must not go unheard).
const STALE_AFTER: Duration = Duration::from_secs(90);
/// Connections one share link may hold at once.
pub const MAX_CONNECTIONS_PER_LINK: usize = 8;

/// The live share links of this node's sessions.
#[derive(Debug)]
pub struct ShareBook {
    links: Mutex<HashMap<String, Vec<ShareGrant>>>,
    /// Bumped on every change: connections re-check their link.
    changed: watch::Sender<u64>,
    /// When control's watch last answered.
    fresh: Mutex<Option<std::time::Instant>>,
    /// Connections open per link.
    open: Mutex<HashMap<String, usize>>,
    /// When each link's join was last reported (audited at most every
    /// [`JOIN_REPORT_EVERY`]: a reconnecting holder is not a flood of rows).
    joins: Mutex<HashMap<String, std::time::Instant>>,
}

/// A link's joins are reported to control at most this often.
const JOIN_REPORT_EVERY: Duration = Duration::from_secs(600);

impl Default for ShareBook {
    fn default() -> Self {
        Self {
            links: Mutex::default(),
            changed: watch::channel(0).0,
            fresh: Mutex::default(),
            open: Mutex::default(),
            joins: Mutex::default(),
        }
    }
}

/// A connection counted against its link; dropping it frees the place.
pub struct LinkSeat {
    book: std::sync::Arc<ShareBook>,
    id: String,
}

impl Drop for LinkSeat {
    fn drop(&mut self) {
        let mut open = self.book.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.id);
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl ShareBook {
    /// Replaces every session's links with the watch's (sessions not named
    /// have none).
    pub fn replace(&self, all: HashMap<String, Vec<ShareGrant>>) {
        *self.fresh.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if *links != all {
            *links = all;
            drop(links);
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// A place for one more connection of link `id`; `None` at the cap.
    pub fn seat(self: &std::sync::Arc<Self>, id: &str) -> Option<LinkSeat> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(id.to_string()).or_default();
        if *n >= MAX_CONNECTIONS_PER_LINK {
            return None;
        }
        *n += 1;
        Some(LinkSeat {
            book: self.clone(),
            id: id.to_string(),
        })
    }

    /// Whether a join through link `id` is to be reported now.
    pub fn report_join(&self, id: &str) -> bool {
        let mut joins = self.joins.lock().unwrap_or_else(|p| p.into_inner());
        if joins.len() > 4096 {
            joins.retain(|_, t| t.elapsed() < JOIN_REPORT_EVERY);
        }
        match joins.get(id) {
            Some(t) if t.elapsed() < JOIN_REPORT_EVERY => false,
            _ => {
                joins.insert(id.to_string(), std::time::Instant::now());
                true
            }
        }
    }

    fn stale(&self) -> bool {
        self.fresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t.elapsed() > STALE_AFTER)
    }

    /// The live link `id` of `session`, unexpired, while the list is fresh.
    pub fn get(&self, session: &str, id: &str) -> Option<ShareGrant> {
        if self.stale() {
            return None;
        }
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links
            .get(session)?
            .iter()
            .find(|g| g.id == id && g.expires_at_ms > now_ms())
            .cloned()
    }

    /// [`Self::get`], waiting a little for a link not yet announced.
    pub async fn lookup(&self, session: &str, id: &str) -> Option<ShareGrant> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + NEW_LINK_WAIT;
        loop {
            rx.borrow_and_update();
            if let Some(g) = self.get(session, id) {
                return Some(g);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// Resolves when link `id` of `session` ends: revoked (gone from the
    /// watch) or expired. Never for a link that stays.
    pub async fn ended(&self, session: &str, id: &str) -> Ending {
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            let Some(g) = self.get(session, id) else {
                return Ending::Revoked;
            };
            let left = Duration::from_millis((g.expires_at_ms - now_ms()).max(0) as u64);
            // Looked at again at least every 10 s (the list may go stale).
            tokio::select! {
                _ = tokio::time::sleep(left) => return Ending::Expired,
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                r = rx.changed() => if r.is_err() {
                    return std::future::pending().await;
                },
            }
        }
    }
}

/// Why a share link's connection was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Revoked,
    Expired,
}

impl Ending {
    pub fn reason(self) -> &'static str {
        match self {
            Ending::Revoked => "this share link was revoked (or cannot be checked now)",
            Ending::Expired => "this share link expired",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_proto::share::ShareMode;

    fn grant(id: &str, in_ms: i64) -> ShareGrant {
        ShareGrant {
            id: id.into(),
            mode: ShareMode::Read,
            terminal: None,
            expires_at_ms: now_ms() + in_ms,
        }
    }

    #[tokio::test]
    async fn links_are_found_and_end_when_revoked_or_expired() {
        let book = std::sync::Arc::new(ShareBook::default());
        assert!(book.get("s1", "a").is_none());
        book.replace(HashMap::from([(
            "s1".into(),
            vec![grant("a", 60_000), grant("b", 50)],
        )]));
        assert!(book.get("s1", "a").is_some());
        assert!(book.get("s2", "a").is_none(), "another session's link");
        assert_eq!(book.ended("s1", "b").await, Ending::Expired);
        let b2 = book.clone();
        let cut = tokio::spawn(async move { b2.ended("s1", "a").await });
        book.replace(HashMap::new());
        assert_eq!(cut.await.unwrap(), Ending::Revoked);
    }

    #[tokio::test]
    async fn a_new_link_is_waited_for() {
        let book = std::sync::Arc::new(ShareBook::default());
        let b2 = book.clone();
        let found = tokio::spawn(async move { b2.lookup("s1", "n").await });
        tokio::task::yield_now().await;
        book.replace(HashMap::from([("s1".into(), vec![grant("n", 60_000)])]));
        assert!(found.await.unwrap().is_some());
    }

    #[test]
    fn headers_are_bounded() {
        let mut h = tokio_tungstenite::tungstenite::http::HeaderMap::new();
        h.insert(SHARE_HEADER, "abc".parse().unwrap());
        h.insert(VIEWER_HEADER, "x".repeat(65).parse().unwrap());
        let c = Caller::from_headers(&h);
        assert_eq!(c.share.as_deref(), Some("abc"));
        assert_eq!(c.name, None);
    }
}
