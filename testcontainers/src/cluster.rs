//! A 3-node JetStream cluster on 127.0.0.1.

use std::time::{Duration, Instant};

use crate::config::ClusterNode;
use crate::error::{HarnessError, HarnessErrorKind};
use crate::server::{free_ports, Backend, NatsServer};

const NODES: usize = 3;
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// Three JetStream nodes named `n1`, `n2`, `n3`, routed to each other on 127.0.0.1.
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
        let builder = |i: usize| {
            NatsServer::builder()
                .backend(backend)
                .server_name(format!("n{}", i + 1))
                .cluster(
                    ClusterNode {
                        cluster_name: "jetevents".into(),
                        cluster_port: route_ports[i],
                        routes: route_ports.clone(),
                    },
                    ports[i * 3],
                    ports[i * 3 + 1],
                )
        };
        let (a, b, c) = tokio::join!(builder(0).start(), builder(1).start(), builder(2).start());
        let cluster = NatsCluster {
            nodes: vec![a?, b?, c?],
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
        self.nodes.get_mut(i).ok_or_else(|| {
            HarnessError::new(
                HarnessErrorKind::Unsupported,
                format!("no node {i} in a cluster of {len}"),
            )
        })
    }

    /// Kills node `i` (SIGKILL / `docker kill`).
    pub async fn kill(&mut self, i: usize) -> Result<(), HarnessError> {
        self.node_or_err(i)?.kill().await
    }

    /// Restarts node `i` on its ports and store and waits until it is current.
    pub async fn restart(&mut self, i: usize) -> Result<(), HarnessError> {
        self.node_or_err(i)?.restart().await
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

    /// The leader of `stream` as a running node reports it, once one does.
    async fn reported_leader(&self, stream: &str) -> Result<Option<usize>, HarnessError> {
        for i in self.running().await {
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
        self.wait_leader(stream, None).await
    }

    /// Waits until a running node other than `old` leads `stream`, and returns it.
    pub async fn wait_for_new_stream_leader(
        &self,
        stream: &str,
        old: usize,
    ) -> Result<usize, HarnessError> {
        self.wait_leader(stream, Some(old)).await
    }

    async fn wait_leader(&self, stream: &str, not: Option<usize>) -> Result<usize, HarnessError> {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let mut last = String::from("no leader reported");
        loop {
            match self.reported_leader(stream).await {
                Ok(Some(i)) if Some(i) != not && self.nodes[i].is_running().await => return Ok(i),
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
