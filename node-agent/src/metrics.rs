//! The agent's Prometheus metrics, served on its admin listener
//! (`[admin] listen`) at `/metrics`; the node record names the address
//! (`metrics_addr` in `GET /v1/nodes`).
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Metrics {
    pub registry: Registry,
    /// Sessions this node runs.
    pub sessions: IntGauge,
    /// Terminal WebSockets open.
    pub terminals_open: IntGauge,
    /// Terminal bytes by direction (`in`: keystrokes, `out`: output).
    pub terminal_bytes: IntCounterVec,
    /// Streams relays opened, by kind and outcome.
    pub streams: IntCounterVec,
    /// Relays this agent holds a tunnel to.
    pub relays_connected: IntGauge,
    /// Tunnel connections (re)established.
    pub tunnel_connects: IntCounter,
    /// Heartbeats by outcome (`ok`, `refused`, `unreachable`).
    pub heartbeats: IntCounterVec,
    /// Seconds since the last heartbeat control accepted.
    pub heartbeat_age_seconds: IntGauge,
    /// Moves to another control replica.
    pub control_failovers: IntCounter,
    /// Errors by kind.
    pub errors: IntCounterVec,
    /// Warm containers ready to be claimed, all pools together.
    pub pool_warm: IntGauge,
    /// Session starts by source (`warm`: claimed from a pool, `cold`).
    pub pool_claims: IntCounterVec,
}

impl Metrics {
    #[allow(clippy::expect_used)] // static definitions: failing is a programming error
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let m = Metrics {
            sessions: IntGauge::new("warren_agent_sessions", "sessions this node runs")
                .expect("metric"),
            terminals_open: IntGauge::new(
                "warren_agent_terminals_open",
                "terminal WebSockets open",
            )
            .expect("metric"),
            terminal_bytes: IntCounterVec::new(
                Opts::new(
                    "warren_agent_terminal_bytes_total",
                    "terminal bytes by direction",
                ),
                &["direction"],
            )
            .expect("metric"),
            streams: IntCounterVec::new(
                Opts::new(
                    "warren_agent_streams_total",
                    "streams relays opened, by kind and outcome",
                ),
                &["kind", "outcome"],
            )
            .expect("metric"),
            relays_connected: IntGauge::new(
                "warren_agent_relays_connected",
                "relays this agent holds a tunnel to",
            )
            .expect("metric"),
            tunnel_connects: IntCounter::new(
                "warren_agent_tunnel_connects_total",
                "tunnel connections established (first and re-connections)",
            )
            .expect("metric"),
            heartbeats: IntCounterVec::new(
                Opts::new("warren_agent_heartbeats_total", "heartbeats by outcome"),
                &["outcome"],
            )
            .expect("metric"),
            heartbeat_age_seconds: IntGauge::new(
                "warren_agent_heartbeat_age_seconds",
                "seconds since control last accepted a heartbeat",
            )
            .expect("metric"),
            control_failovers: IntCounter::new(
                "warren_agent_control_failovers_total",
                "moves to another control replica",
            )
            .expect("metric"),
            errors: IntCounterVec::new(
                Opts::new("warren_agent_errors_total", "errors by kind"),
                &["kind"],
            )
            .expect("metric"),
            pool_warm: IntGauge::new(
                "warren_agent_pool_warm",
                "warm containers ready to be claimed",
            )
            .expect("metric"),
            pool_claims: IntCounterVec::new(
                Opts::new(
                    "warren_agent_session_starts_total",
                    "session starts by source (warm: claimed from a pool; cold)",
                ),
                &["source"],
            )
            .expect("metric"),
            registry,
        };
        for c in [
            Box::new(m.sessions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.terminals_open.clone()),
            Box::new(m.terminal_bytes.clone()),
            Box::new(m.streams.clone()),
            Box::new(m.relays_connected.clone()),
            Box::new(m.tunnel_connects.clone()),
            Box::new(m.heartbeats.clone()),
            Box::new(m.heartbeat_age_seconds.clone()),
            Box::new(m.control_failovers.clone()),
            Box::new(m.errors.clone()),
            Box::new(m.pool_warm.clone()),
            Box::new(m.pool_claims.clone()),
        ] {
            m.registry.register(c).expect("register metric");
        }
        // Every known label from the start: a dashboard shows 0, not "no data".
        for source in ["warm", "cold"] {
            m.pool_claims.with_label_values(&[source]);
        }
        for kind in ["terminal", "create", "remove", "pool"] {
            m.errors.with_label_values(&[kind]);
        }
        for outcome in ["ok", "refused", "unreachable"] {
            m.heartbeats.with_label_values(&[outcome]);
        }
        for dir in ["in", "out"] {
            m.terminal_bytes.with_label_values(&[dir]);
        }
        Arc::new(m)
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until `shutdown`; returns the
/// bound address (for `:0`).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    tracker.spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(bound)
}
