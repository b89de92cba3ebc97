//! A 3-node JetStream cluster on 127.0.0.1, its routes through fault proxies.

use std::time::{Duration, Instant};

use crate::config::ClusterNode;
use crate::error::{HarnessError, HarnessErrorKind};
use crate::partition::RouteLinks;
use crate::proxy::FaultMode;
use crate::server::{free_ports, Backend, NatsServer};

const NODES: usize = 3;
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// Three JetStream nodes named `n1`, `n2`, `n3`, routed to each other on 127.0.0.1.
///
/// Each route connection goes through a [`crate::FaultProxy`] of its pair of
/// nodes, so a test can partition the cluster ([`NatsCluster::isolate`],
/// [`NatsCluster::partition`]) while clients stay connected to the nodes on
/// either side, then [`NatsCluster::heal`] it; [`NatsCluster::pause`] stops a
/// node's process instead. Clients connect to the nodes directly.
///
/// ```no_run
/// # async fn f() -> Result<(), jetevents_testcontainers::HarnessError> {
/// let mut cluster = jetevents_testcontainers::NatsCluster::start().await?;
/// // create an R3 stream "ORDERS" through cluster.urls() ...
/// let leader = cluster.stream_leader("ORDERS").await?;
/// cluster.kill(leader).await?;
/// let new_leader = cluster.wait_for_new_stream_leader("ORDERS", leader).await?;
/// assert_ne!(leader, new_leader);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
    links: RouteLinks,
}

impl NatsCluster {
    /// Starts a cluster on the backend from the environment and waits until it has
    /// a JetStream meta leader and every node is healthy.
    pub async fn start() -> Result<NatsCluster, HarnessError> {
        Self::start_with(Backend::from_env().await?).await
    }

    /// Starts a cluster on `backend` (docker needs `JETEVENTS_DOCKER_NETWORK=host`).
    pub async fn start_with(backend: Backend) -> Result<NatsCluster, HarnessError> {
        if backend == Backend::External {
            return Err(HarnessError::new(
                HarnessErrorKind::Unsupported,
                "the external backend cannot start a cluster",
            ));
        }
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(backend).await {
                Ok(cluster) => return Ok(cluster),
                // Ports picked free may have been taken meanwhile: pick again.
                Err(err) if err.kind() == HarnessErrorKind::Start => last = Some(err),
                Err(err) => return Err(err),
            }
        }
        Err(last.unwrap_or_else(|| HarnessError::new(HarnessErrorKind::Start, "cluster")))
    }

    async fn start_once(backend: Backend) -> Result<NatsCluster, HarnessError> {
        let ports = free_ports(NODES * 3)?;
        let route_ports: Vec<u16> = (0..NODES).map(|i| ports[i * 3 + 2]).collect();
        let links = RouteLinks::start(&route_ports).await?;
        let builder = |i: usize| {
            NatsServer::builder()
                .backend(backend)
                .server_name(format!("n{}", i + 1))
                .cluster(
                    ClusterNode {
                        cluster_name: "jetevents".into(),
                        cluster_port: route_ports[i],
                        routes: links.routes_of(i),
                        advertise_port: links.advertised_port(),
                    },
                    ports[i * 3],
                    ports[i * 3 + 1],
                )
        };
        let (a, b, c) = tokio::join!(builder(0).start(), builder(1).start(), builder(2).start());
        let cluster = NatsCluster {
            nodes: vec![a?, b?, c?],
            links,
        };
        cluster.wait_for_cluster_ready().await?;
        Ok(cluster)
    }

    /// Client URLs of all nodes.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Number of nodes (3).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i` (0-based; its server name is `n{i+1}`). Panics when out of range,
    /// like slice indexing.
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// Node `i`, mutably.
    pub fn node_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }

    /// The node index for a server name `n1`..`n3`.
    fn index_of(&self, name: &str) -> Option<usize> {
        let n: usize = name.strip_prefix('n')?.parse().ok()?;
        (1..=self.nodes.len()).contains(&n).then(|| n - 1)
    }

    fn node_or_err(&mut self, i: usize) -> Result<&mut NatsServer, HarnessError> {
        let len = self.nodes.len();
        self.nodes.get_mut(i).ok_or_else(|| no_node(i, len))
    }

    /// Kills node `i` (SIGKILL / `docker kill`).
    pub async fn kill(&mut self, i: usize) -> Result<(), HarnessError> {
        self.node_or_err(i)?.kill().await
    }

    /// Restarts node `i` on its ports and store and waits until it is current.
    pub async fn restart(&mut self, i: usize) -> Result<(), HarnessError> {
        self.node_or_err(i)?.restart().await
    }

    /// Cuts node `i` off from the others (a 1/2 split): every route between
    /// it and them stops carrying traffic ([`FaultMode::Stall`], as a network
    /// that drops packets: nothing is reset, the nodes notice by their own
    /// timeouts, and TCP delivers what was held back once healed). Clients
    /// connected to any node stay connected.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), jetevents_testcontainers::HarnessError> {
    /// let cluster = jetevents_testcontainers::NatsCluster::start().await?;
    /// let leader = cluster.stream_leader("ORDERS").await?;
    /// cluster.isolate(leader)?;
    /// let others: Vec<usize> = (0..cluster.len()).filter(|i| *i != leader).collect();
    /// let new_leader = cluster.wait_for_stream_leader_among("ORDERS", &others).await?;
    /// cluster.heal();
    /// # let _ = new_leader; Ok(()) }
    /// ```
    pub fn isolate(&self, i: usize) -> Result<(), HarnessError> {
        let others: Vec<usize> = (0..self.nodes.len()).filter(|n| *n != i).collect();
        self.partition(&[&[i], &others])
    }

    /// Splits the cluster into `sides` (each node on exactly one side, e.g.
    /// `&[&[0], &[1, 2]]`): routes between sides stall ([`FaultMode::Stall`]),
    /// routes within a side carry traffic.
    pub fn partition(&self, sides: &[&[usize]]) -> Result<(), HarnessError> {
        self.partition_with(sides, FaultMode::Stall)
    }

    /// [`NatsCluster::partition`] with the routes between sides in `mode`:
    /// [`FaultMode::Close`] resets them at once (a network that refuses
    /// connections). [`FaultMode::Drop`] discards bytes in the middle of a
    /// TCP stream, which no real network does (the nodes read a corrupt
    /// stream once healed): use it to test that, not as a partition.
    pub fn partition_with(&self, sides: &[&[usize]], mode: FaultMode) -> Result<(), HarnessError> {
        self.links.split(self.nodes.len(), sides, mode)
    }

    /// Lets every route carry traffic again.
    pub fn heal(&self) {
        self.links.heal();
    }

    /// Open route connections between nodes `a` and `b` through their proxies.
    pub fn route_connections(&self, a: usize, b: usize) -> usize {
        self.links.connections_between(a, b)
    }

    /// Pauses node `i`'s process ([`NatsServer::pause`]: SIGSTOP / `docker pause`).
    pub async fn pause(&self, i: usize) -> Result<(), HarnessError> {
        self.node_ref(i)?.pause().await
    }

    /// Resumes node `i` ([`NatsServer::resume`]).
    pub async fn resume(&self, i: usize) -> Result<(), HarnessError> {
        self.node_ref(i)?.resume().await
    }

    fn node_ref(&self, i: usize) -> Result<&NatsServer, HarnessError> {
        self.nodes
            .get(i)
            .ok_or_else(|| no_node(i, self.nodes.len()))
    }

    async fn running(&self) -> Vec<usize> {
        let mut up = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.is_running().await {
                up.push(i);
            }
        }
        up
    }

    /// Waits until every running node answers `/healthz` with 200 and they agree on
    /// a JetStream meta leader.
    pub async fn wait_for_cluster_ready(&self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let mut last;
        loop {
            match self.cluster_ready().await {
                Ok(()) => return Ok(()),
                Err(err) => last = err.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::new(
                    HarnessErrorKind::NotReady,
                    format!("cluster not ready: {last}"),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn cluster_ready(&self) -> Result<(), HarnessError> {
        let mut leader: Option<String> = None;
        for i in self.running().await {
            let node = &self.nodes[i];
            node.monitor_json("/healthz").await?;
            let jsz = node.monitor_json("/jsz").await?;
            let this = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
            if this.is_empty() {
                return Err(HarnessError::new(
                    HarnessErrorKind::NotReady,
                    format!("n{} has no meta leader", i + 1),
                ));
            }
            match &leader {
                Some(l) if l != this => {
                    return Err(HarnessError::new(
                        HarnessErrorKind::NotReady,
                        "nodes disagree on the meta leader",
                    ))
                }
                _ => leader = Some(this.to_string()),
            }
        }
        Ok(())
    }

    /// The leader of `stream` as the first of the running nodes in `ask`
    /// that names one reports it.
    async fn reported_leader(
        &self,
        stream: &str,
        ask: &[usize],
    ) -> Result<Option<usize>, HarnessError> {
        for i in self.running().await {
            if !ask.contains(&i) {
                continue;
            }
            let jsz = self.nodes[i]
                .monitor_json("/jsz?accounts=true&streams=true")
                .await?;
            let accounts = jsz["account_details"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for account in accounts {
                let streams = account["stream_detail"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for s in streams {
                    if s["name"].as_str() == Some(stream) {
                        let leader = s["cluster"]["leader"].as_str().unwrap_or_default();
                        if let Some(idx) = self.index_of(leader) {
                            return Ok(Some(idx));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// The index of the node leading `stream`, read from the monitoring endpoint
    /// (`/jsz?accounts=true&streams=true`); waits up to 30 s for a running leader.
    pub async fn stream_leader(&self, stream: &str) -> Result<usize, HarnessError> {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.wait_leader(stream, &all).await
    }

    /// Waits until a running node other than `old` leads `stream`, and returns it.
    pub async fn wait_for_new_stream_leader(
        &self,
        stream: &str,
        old: usize,
    ) -> Result<usize, HarnessError> {
        let others: Vec<usize> = (0..self.nodes.len()).filter(|i| *i != old).collect();
        self.wait_leader(stream, &others).await
    }

    /// Waits until the nodes in `side` (e.g. the majority of a partition) agree
    /// that one of them leads `stream`, and returns it. Nodes outside `side`
    /// are not asked: an isolated old leader may still believe it leads.
    pub async fn wait_for_stream_leader_among(
        &self,
        stream: &str,
        side: &[usize],
    ) -> Result<usize, HarnessError> {
        self.wait_leader(stream, side).await
    }

    async fn wait_leader(&self, stream: &str, among: &[usize]) -> Result<usize, HarnessError> {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let mut last = String::from("no leader reported");
        loop {
            match self.reported_leader(stream, among).await {
                Ok(Some(i)) if among.contains(&i) && self.nodes[i].is_running().await => {
                    return Ok(i)
                }
                Ok(Some(i)) => last = format!("leader is still n{}", i + 1),
                Ok(None) => {}
                Err(err) => last = err.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::new(
                    HarnessErrorKind::Monitoring,
                    format!("stream {stream}: {last}"),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

fn no_node(i: usize, len: usize) -> HarnessError {
    HarnessError::new(
        HarnessErrorKind::Unsupported,
        format!("no node {i} in a cluster of {len}"),
    )
}
