//! Connections per client address on the HTTPS listener, capped before
//! the TLS handshake (as SSH caps its unauthenticated ones).
//!
//! A probe held 2,000 idle TLS connections from one address, about 52 KB
//! of the relay's memory each. Pingora's listener takes a callback after
//! accept and before TLS ([`PreTlsProcess`]); it counts the connection
//! against its address (IPv6: the /64) and refuses it past the cap, and a
//! guard on the connection's socket ([`Tracer`], dropped with the socket
//! whatever ends the connection) gives the slot back.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::GetSocketDigest;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::upstreams::peer::{Tracer, Tracing};

use crate::limits::address_key;

/// Open connections by address key.
type Counts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The cap: at most `max` open connections per address.
#[derive(Debug, Clone)]
pub struct PerAddress {
    max: usize,
    counts: Counts,
}

impl PerAddress {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            counts: Arc::default(),
        }
    }

    /// Takes a slot for `ip`; `None` when its address is at the cap.
    pub fn acquire(&self, ip: IpAddr) -> Option<Slot> {
        let key = address_key(ip);
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = c.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            key,
            counts: Some(self.counts.clone()),
        })
    }

    /// Connections open from `ip`'s address.
    pub fn open(&self, ip: IpAddr) -> usize {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.get(&address_key(ip)).copied().unwrap_or(0)
    }
}

/// One connection's slot, given back when it is dropped.
#[derive(Debug)]
pub struct Slot {
    key: IpAddr,
    /// `None` in clones: only the original gives the slot back.
    counts: Option<Counts>,
}

impl Slot {
    fn release(&self) {
        let Some(counts) = &self.counts else { return };
        let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = c.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&self.key);
            }
        }
    }
}

impl Tracing for Slot {
    fn on_connected(&self) {}

    fn on_disconnected(&self) {
        self.release();
    }

    fn boxed_clone(&self) -> Box<dyn Tracing> {
        Box::new(Slot {
            key: self.key,
            counts: None,
        })
    }
}

#[async_trait]
impl PreTlsProcess for PerAddress {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned())
            .and_then(|a| a.as_inet().map(|i| i.ip()));
        let Some(ip) = ip else { return Ok(()) };
        match self.acquire(ip) {
            Some(slot) => {
                stream.tracer = Some(Tracer(Box::new(slot)));
                Ok(())
            }
            None => pingora::Error::e_explain(
                pingora::ErrorType::AcceptError,
                "too many connections from this address",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_per_address_and_given_back_once() {
        let cap = PerAddress::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let b: IpAddr = "192.0.2.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let s1 = cap.acquire(a).expect("first");
        let s2 = cap.acquire(a).expect("second");
        assert!(cap.acquire(a).is_none(), "over the cap");
        assert!(cap.acquire(b).is_some(), "another address is served");
        // A clone gives nothing back; the original does, once.
        s1.boxed_clone().on_disconnected();
        assert_eq!(cap.open(a), 2);
        s1.on_disconnected();
        assert_eq!(cap.open(a), 1);
        assert!(cap.acquire(a).is_some());
        s2.on_disconnected();
        // IPv6 addresses count by their /64.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0u8; 16]));
        let cap = PerAddress::new(1);
        let _x = cap.acquire(v6("2001:db8::1")).expect("first");
        assert!(cap.acquire(v6("2001:db8::2")).is_none(), "same /64");
        assert!(cap.acquire(v6("2001:db8:0:1::1")).is_some());
    }
}
