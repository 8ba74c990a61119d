//! Sessions' own networks, for those with an egress policy: made before
//! the container, with the host's rules in place before it starts; set up
//! again on adoption; removed after the container. The rules themselves
//! are [`crate::sandbox::egress`]'s.
use std::collections::{HashMap, HashSet};

use bollard::models::{Ipam, IpamConfig, Network, NetworkCreateRequest};
use bollard::query_parameters::ListNetworksOptions;
use tracing::{info, warn};
use warren_proto::egress::{Egress, Ipv4Cidr};

use super::{DockerRuntime, LABEL_MANAGED, LABEL_NODE, LABEL_SESSION, RuntimeError};
use crate::sandbox::egress::{self, HostNet, Plan, SUBNET_PREFIX};

/// Subnets a create tries when other agents take them meanwhile.
const ALLOCATE_TRIES: usize = 8;
/// Docker's option naming a bridge network's Linux bridge.
const BRIDGE_NAME: &str = "com.docker.network.bridge.name";

/// One subnet allocation at a time in this process; agents in other
/// processes are caught by the engine's overlap check and a retry.
static ALLOCATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The name of a session's own network.
pub fn network_name(node: &str, session: &str) -> String {
    format!("warren-{node}-{session}-egress")
}

/// The Linux bridge of a Docker network and its IPv4 subnets.
fn host_net(n: &Network) -> Vec<HostNet> {
    let id = n.id.clone().unwrap_or_default();
    let bridge = crate::sandbox::firewall::bridge_name(&id, n.options.as_ref());
    subnets(n)
        .into_iter()
        .map(|subnet| HostNet {
            bridge: bridge.clone(),
            subnet,
        })
        .collect()
}

fn subnets(n: &Network) -> Vec<Ipv4Cidr> {
    n.ipam
        .as_ref()
        .and_then(|i| i.config.as_ref())
        .map(|c| {
            c.iter()
                .filter_map(|c| c.subnet.as_deref())
                .filter_map(|s| Ipv4Cidr::parse(s).ok())
                .collect()
        })
        .unwrap_or_default()
}

impl DockerRuntime {
    /// Makes the session's own network and its rules; returns the
    /// network's name.
    pub(super) async fn create_egress_network(
        &self,
        session: &str,
        policy: &Egress,
    ) -> Result<String, RuntimeError> {
        let name = network_name(&self.node_id, session);
        // Left by a create that failed half-way.
        self.remove_egress_network(session).await;
        let pool = Ipv4Cidr::parse(&self.cfg.egress_pool).map_err(RuntimeError::Invalid)?;
        let _one = ALLOCATE.lock().await;
        let mut tried = HashSet::new();
        for _ in 0..ALLOCATE_TRIES {
            let mut used: Vec<Ipv4Cidr> = self
                .docker
                .list_networks(None::<ListNetworksOptions>)
                .await?
                .iter()
                .flat_map(subnets)
                .collect();
            used.extend(egress::host_subnets());
            let Some(subnet) = (0..)
                .map_while(|n| pool.subnet(SUBNET_PREFIX, n))
                .find(|s| !tried.contains(s) && !used.iter().any(|u| u.overlaps(s)))
            else {
                warn!(pool = %pool, "no free /{SUBNET_PREFIX} left in docker.egress_pool");
                return Err(RuntimeError::Egress(session.into()));
            };
            tried.insert(subnet);
            let bridge = egress::bridge_for(&subnet);
            let mut labels: HashMap<String, String> = self.labels.clone().into_iter().collect();
            labels.insert(LABEL_SESSION.into(), session.into());
            let req = NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                internal: Some(false),
                enable_ipv6: Some(false),
                ipam: Some(Ipam {
                    config: Some(vec![IpamConfig {
                        subnet: Some(subnet.to_string()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                options: Some(HashMap::from([
                    (BRIDGE_NAME.to_string(), bridge.clone()),
                    (
                        "com.docker.network.bridge.enable_icc".to_string(),
                        "false".to_string(),
                    ),
                    (
                        "com.docker.network.bridge.enable_ip_masquerade".to_string(),
                        "true".to_string(),
                    ),
                ])),
                labels: Some(labels),
                ..Default::default()
            };
            match self.docker.create_network(req).await {
                Ok(_) => {
                    if let Err(e) = self.egress_rules(session, &bridge, policy).await {
                        self.remove_egress_network(session).await;
                        return Err(e);
                    }
                    info!(%session, network = %name, %bridge, %subnet, egress = %policy.to_text(), "session network with egress");
                    return Ok(name);
                }
                // Most likely another agent took the subnet meanwhile.
                Err(e) => {
                    warn!(%session, %subnet, "creating the session's network: {e}; trying another subnet")
                }
            }
        }
        Err(RuntimeError::Egress(session.into()))
    }

    /// Writes the host rules of a session network's bridge for `policy`
    /// (again, on adoption: they are lost with a reboot).
    async fn egress_rules(
        &self,
        session: &str,
        bridge: &str,
        policy: &Egress,
    ) -> Result<(), RuntimeError> {
        let warren = self.warren_networks().await?;
        let mut skip: HashSet<String> = warren.iter().map(|n| n.bridge.clone()).collect();
        skip.insert(bridge.to_string());
        let bridges = egress::host_bridges(&skip);
        let (bridge, policy) = (bridge.to_string(), policy.clone());
        let applied = tokio::task::spawn_blocking(move || {
            egress::apply(&Plan {
                bridge: &bridge,
                egress: &policy,
                warren: &warren,
                bridges: &bridges,
            })
        })
        .await;
        match applied {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                warn!(%session, "cannot set the session's egress rules: {e:#}");
                Err(RuntimeError::Egress(session.into()))
            }
            Err(e) => {
                warn!(%session, "setting the session's egress rules: {e}");
                Err(RuntimeError::Egress(session.into()))
            }
        }
    }

    /// Every network Warren made on this worker (any agent's): the sessions
    /// networks and sessions' own.
    async fn warren_networks(&self) -> Result<Vec<HostNet>, RuntimeError> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_MANAGED}=true")])]);
        let nets = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await?;
        Ok(nets.iter().flat_map(host_net).collect())
    }

    /// Sets an adopted session's rules up again (its network is kept).
    pub(super) async fn restore_egress(
        &self,
        session: &str,
        policy: &Egress,
    ) -> Result<(), RuntimeError> {
        let name = network_name(&self.node_id, session);
        let net = self.docker.inspect_network(&name, None).await?;
        let bridge = crate::sandbox::firewall::bridge_name(
            net.id.as_deref().unwrap_or_default(),
            net.options.as_ref(),
        );
        if !bridge.starts_with(egress::BRIDGE_PREFIX) {
            warn!(%session, %bridge, "the session's network is not one the agent made");
            return Err(RuntimeError::Egress(session.into()));
        }
        self.egress_rules(session, &bridge, policy).await
    }

    /// Removes a session's own network and its rules, if it has them.
    pub(super) async fn remove_egress_network(&self, session: &str) {
        let name = network_name(&self.node_id, session);
        let Ok(net) = self.docker.inspect_network(&name, None).await else {
            return;
        };
        let bridge = crate::sandbox::firewall::bridge_name(
            net.id.as_deref().unwrap_or_default(),
            net.options.as_ref(),
        );
        if bridge.starts_with(egress::BRIDGE_PREFIX) {
            let b = bridge.clone();
            let _ = tokio::task::spawn_blocking(move || egress::remove(&b)).await;
        }
        if let Err(e) = self.docker.remove_network(&name).await {
            warn!(%session, network = %name, "cannot remove the session's network: {e}");
        }
    }

    /// After adoption: removes this node's session networks whose session
    /// was not adopted, and rules left for bridges that are gone.
    pub(super) async fn sweep_egress(&self, adopted: &HashSet<String>) {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_NODE}={}", self.node_id)],
        )]);
        let nets = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .unwrap_or_default();
        for n in nets {
            let Some(session) = n.labels.as_ref().and_then(|l| l.get(LABEL_SESSION)) else {
                continue;
            };
            if !adopted.contains(session) {
                info!(%session, "removing the network of a session that is gone");
                self.remove_egress_network(session).await;
            }
        }
        let stale = tokio::task::spawn_blocking(egress::sweep_stale)
            .await
            .unwrap_or(0);
        if stale > 0 {
            info!(
                chains = stale,
                "removed egress rules of bridges that are gone"
            );
        }
    }
}
