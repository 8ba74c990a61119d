//! Per-client limits shared by the SSH server (failed logins) and the web
//! edge (token renewals): a fixed-window counter per client address key.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed authentications from one address within [`FAILURE_WINDOW`]
/// before every further attempt from it is refused unchecked.
pub const MAX_FAILURES: u32 = 20;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// The unit limits apply to: an IPv4 address, or an IPv6 /64 (one host
/// usually holds a whole /64, so single IPv6 addresses cost nothing).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(bits))
            }
        },
    }
}

/// Counts events (failed logins, token renewals) per client address key
/// within a fixed window.
pub struct FailureLimiter {
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    max: u32,
    window: Duration,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        Self::new(MAX_FAILURES, FAILURE_WINDOW)
    }
}

impl FailureLimiter {
    /// At most `max` events per address key in each `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            seen: Mutex::default(),
            max,
            window,
        }
    }

    /// Whether `ip` has used up its events for now.
    pub fn limited(&self, ip: IpAddr) -> bool {
        let ip = address_key(ip);
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        matches!(seen.get(&ip), Some((since, n)) if since.elapsed() < self.window && *n >= self.max)
    }

    /// Records an event; true when this one reached the limit.
    pub fn fail(&self, ip: IpAddr) -> bool {
        let ip = address_key(ip);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() > 100_000 {
            let window = self.window;
            seen.retain(|_, (since, _)| since.elapsed() < window);
        }
        let entry = seen.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        entry.1 == self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_key_ipv6_by_64_and_ipv4_by_address() {
        use std::net::{Ipv4Addr, Ipv6Addr};
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        assert_eq!(
            address_key(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped())),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_ne!(
            address_key(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            address_key(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)))
        );
        // 20 failures spread over one /64 count as one address.
        let l = FailureLimiter::default();
        let mut reached = false;
        for i in 0..MAX_FAILURES {
            let ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, i as u16 + 1));
            reached = l.fail(ip);
        }
        assert!(reached);
        assert!(l.limited(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 9, 9, 9, 9))));
        assert!(!l.limited(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1))));
    }

    #[test]
    fn failures_are_limited_per_address() {
        let l = FailureLimiter::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let b: IpAddr = "192.0.2.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        for i in 1..MAX_FAILURES {
            assert!(!l.fail(a), "limit reached early at {i}");
            assert!(!l.limited(a));
        }
        assert!(l.fail(a));
        assert!(l.limited(a));
        assert!(!l.limited(b), "another address is not affected");
    }
}
