//! Rate limits in front of the API: per client address for what anyone can
//! try without a credential (failed logins, joins), and per tenant for what
//! costs the workers (session creates). Fixed one-minute windows in memory,
//! per replica; the map is bounded.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
const MAX_KEYS: usize = 100_000;

/// At most `limit` events per key per minute.
pub struct Limiter {
    limit: u32,
    seen: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Limiter {
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` is over its limit now (without counting).
    pub fn limited(&self, key: &str) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        matches!(seen.get(key), Some((since, n)) if since.elapsed() < WINDOW && *n >= self.limit)
    }

    /// Counts one event; false when it is over the limit.
    pub fn allow(&self, key: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_KEYS {
            seen.retain(|_, (since, _)| since.elapsed() < WINDOW);
            if seen.len() >= MAX_KEYS {
                // Still full of live keys: refuse new ones rather than grow.
                return seen.contains_key(key) && seen[key].1 < self.limit;
            }
        }
        let e = seen.entry(key.to_string()).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= WINDOW {
            *e = (Instant::now(), 0);
        }
        if e.1 >= self.limit {
            return false;
        }
        e.1 += 1;
        true
    }
}

/// At most `limit` things held at once per key (long-lived streams); a
/// [`Slot`] gives its place back when dropped, however its holder ends.
pub struct Slots {
    limit: usize,
    held: std::sync::Arc<Mutex<HashMap<String, usize>>>,
}

/// One place taken in [`Slots`].
pub struct Slot {
    key: String,
    held: std::sync::Arc<Mutex<HashMap<String, usize>>>,
}

impl Slots {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            held: Default::default(),
        }
    }

    /// A place for `key`, or `None` when it holds `limit` already.
    pub fn take(&self, key: &str) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(key.to_string()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot {
            key: key.to_string(),
            held: self.held.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// The key for a client address: IPv4 as is, IPv6 by its /64.
pub fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The address a request is counted against. Requests through a relay
/// (`api.<domain>`) arrive from the relay's address with the client's in
/// `X-Forwarded-For`, which the relay sets itself; that header is believed
/// only from loopback and private addresses (where relays run), never from
/// a public one (which could put anything there).
pub fn client_ip(peer: IpAddr, headers: &axum::http::HeaderMap) -> IpAddr {
    let trusted = match peer {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_private())
        }
    };
    if !trusted {
        return peer;
    }
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(peer)
}

/// The limits one control replica enforces.
pub struct Limits {
    /// Requests answered 401 per address: after this many, 429 until the
    /// window ends (guessing keys, credentials or tokens).
    pub auth_failures: Limiter,
    /// Join attempts per address.
    pub joins: Limiter,
    /// Session creates per tenant.
    pub creates: Limiter,
    /// Open `GET /v1/events` streams per tenant (each polls the database).
    pub event_streams: Slots,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            auth_failures: Limiter::new(30),
            joins: Limiter::new(20),
            creates: Limiter::new(600),
            event_streams: Slots::new(16),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key_and_keys_ipv6_by_64() {
        let l = Limiter::new(3);
        assert!(l.allow("a") && l.allow("a") && l.allow("a"));
        assert!(!l.allow("a"));
        assert!(l.limited("a"));
        assert!(l.allow("b"));
        let a = address_key("2001:db8:1:2::1".parse().unwrap());
        let b = address_key("2001:db8:1:2:ffff::9".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, address_key("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(address_key("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1");
    }

    #[test]
    fn slots_come_back_when_dropped() {
        let s = Slots::new(2);
        let (a, b) = (s.take("t"), s.take("t"));
        assert!(a.is_some() && b.is_some());
        assert!(s.take("t").is_none(), "a third is over the limit");
        assert!(s.take("u").is_some(), "another key has its own");
        drop(a);
        assert!(s.take("t").is_some());
    }

    #[test]
    fn forwarded_for_only_from_private_peers() {
        let mut h = axum::http::HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        let relay: IpAddr = "10.0.0.2".parse().unwrap();
        let public: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(
            client_ip(relay, &h),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(public, &h), public);
        assert_eq!(client_ip(relay, &axum::http::HeaderMap::new()), relay);
    }
}
