//! Prometheus metrics, served on the admin listener.
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    pub registry: Registry,
    pub connections: IntGauge,
    pub requests: IntCounterVec,
    pub streams_opened: IntCounter,
    pub streams_failed: IntCounterVec,
    pub bytes_relayed: IntCounterVec,
    pub jwt_verifications: IntCounter,
    pub jwt_cache_hits: IntCounter,
    pub tunnel_nodes: IntGauge,
    pub ssh_logins: IntCounterVec,
    pub ssh_channels: IntCounter,
}

impl Metrics {
    #[allow(clippy::expect_used)] // metric definitions are static; failing here is a programming error
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Metrics {
            connections: IntGauge::new(
                "warren_relay_open_upgrades",
                "WebSocket/upgrade connections open",
            )
            .expect("metric"),
            requests: IntCounterVec::new(
                Opts::new(
                    "warren_relay_requests_total",
                    "HTTP requests by route and status",
                ),
                &["route", "status"],
            )
            .expect("metric"),
            streams_opened: IntCounter::new(
                "warren_relay_tunnel_streams_opened_total",
                "tunnel streams opened to agents",
            )
            .expect("metric"),
            streams_failed: IntCounterVec::new(
                Opts::new(
                    "warren_relay_tunnel_streams_failed_total",
                    "tunnel streams that failed to open",
                ),
                &["reason"],
            )
            .expect("metric"),
            bytes_relayed: IntCounterVec::new(
                Opts::new("warren_relay_bytes_total", "body bytes relayed"),
                &["direction"],
            )
            .expect("metric"),
            jwt_verifications: IntCounter::new(
                "warren_relay_jwt_verifications_total",
                "JWT signature verifications",
            )
            .expect("metric"),
            jwt_cache_hits: IntCounter::new(
                "warren_relay_jwt_cache_hits_total",
                "tokens accepted from the verified-token cache",
            )
            .expect("metric"),
            tunnel_nodes: IntGauge::new(
                "warren_relay_tunnel_nodes",
                "nodes connected over the tunnel",
            )
            .expect("metric"),
            ssh_logins: IntCounterVec::new(
                Opts::new("warren_relay_ssh_logins_total", "SSH logins by outcome"),
                &["outcome"],
            )
            .expect("metric"),
            ssh_channels: IntCounter::new(
                "warren_relay_ssh_channels_total",
                "SSH shells, commands and subsystems bridged to sessions",
            )
            .expect("metric"),
            registry,
        };
        for c in [
            Box::new(m.connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.requests.clone()),
            Box::new(m.streams_opened.clone()),
            Box::new(m.streams_failed.clone()),
            Box::new(m.bytes_relayed.clone()),
            Box::new(m.jwt_verifications.clone()),
            Box::new(m.jwt_cache_hits.clone()),
            Box::new(m.tunnel_nodes.clone()),
            Box::new(m.ssh_logins.clone()),
            Box::new(m.ssh_channels.clone()),
        ] {
            m.registry.register(c).expect("register metric");
        }
        // Every known label from the start: a dashboard shows 0, not "no data".
        for reason in ["node_not_connected", "timeout", "rejected", "connection"] {
            m.streams_failed.with_label_values(&[reason]);
        }
        for outcome in ["ok", "refused"] {
            m.ssh_logins.with_label_values(&[outcome]);
        }
        for direction in ["to_client", "from_client"] {
            m.bytes_relayed.with_label_values(&[direction]);
        }
        m
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
