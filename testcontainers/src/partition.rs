//! The network between the nodes of a [`crate::NatsCluster`]: every route
//! connection goes through a [`FaultProxy`] of its own pair of nodes, so a
//! test can cut the cluster into sides while each node keeps serving its
//! clients.
//!
//! Node `i` reaches node `j` only through the proxy of the link `i -> j`
//! (its configured routes are those proxies). nats-server also learns peers
//! from gossip and dials the address a peer advertises: every node
//! advertises the same sink, a proxy that closes whatever it accepts, so no
//! connection can bypass the links.

use std::net::{Ipv4Addr, SocketAddr};

use crate::error::{HarnessError, HarnessErrorKind};
use crate::proxy::{FaultMode, FaultProxy};

/// One direction of the route between two nodes: `from` dials `to` through `proxy`.
#[derive(Debug)]
struct Link {
    from: usize,
    to: usize,
    proxy: FaultProxy,
}

/// The proxies between every ordered pair of nodes, and the gossip sink.
#[derive(Debug)]
pub(crate) struct RouteLinks {
    links: Vec<Link>,
    sink: FaultProxy,
}

fn proxy_err(e: std::io::Error) -> HarnessError {
    HarnessError::with_source(HarnessErrorKind::Start, "route proxy", e)
}

impl RouteLinks {
    /// Proxies to each node's route port (`route_ports[i]` is node `i`'s).
    pub(crate) async fn start(route_ports: &[u16]) -> Result<Self, HarnessError> {
        let mut links = Vec::new();
        for (from, _) in route_ports.iter().enumerate() {
            for (to, port) in route_ports.iter().enumerate() {
                if from != to {
                    let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
                    let proxy = FaultProxy::start(upstream).await.map_err(proxy_err)?;
                    links.push(Link { from, to, proxy });
                }
            }
        }
        // Closes every connection at once: its upstream is never dialled.
        let sink = FaultProxy::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 9)))
            .await
            .map_err(proxy_err)?;
        sink.set_mode(FaultMode::Close);
        Ok(Self { links, sink })
    }

    /// The route ports node `node` dials: its links to every other node.
    pub(crate) fn routes_of(&self, node: usize) -> Vec<u16> {
        self.links
            .iter()
            .filter(|link| link.from == node)
            .map(|link| link.proxy.local_addr().port())
            .collect()
    }

    /// The port every node advertises to its peers (the sink).
    pub(crate) fn advertised_port(&self) -> u16 {
        self.sink.local_addr().port()
    }

    /// Puts every link between nodes of different `sides` in `mode` and every
    /// other link in [`FaultMode::Pass`]. Each node must be on exactly one side.
    pub(crate) fn split(
        &self,
        nodes: usize,
        sides: &[&[usize]],
        mode: FaultMode,
    ) -> Result<(), HarnessError> {
        let side_of = side_of_each(nodes, sides)?;
        for link in &self.links {
            let cut = side_of[link.from] != side_of[link.to];
            link.proxy
                .set_mode(if cut { mode } else { FaultMode::Pass });
        }
        Ok(())
    }

    /// Every link back to [`FaultMode::Pass`].
    pub(crate) fn heal(&self) {
        for link in &self.links {
            link.proxy.set_mode(FaultMode::Pass);
        }
    }

    /// Open route connections between `a` and `b`, both directions.
    pub(crate) fn connections_between(&self, a: usize, b: usize) -> usize {
        self.links
            .iter()
            .filter(|l| (l.from, l.to) == (a, b) || (l.from, l.to) == (b, a))
            .map(|l| l.proxy.connections())
            .sum()
    }
}

/// The side of each node, checking that `sides` covers `0..nodes` once.
fn side_of_each(nodes: usize, sides: &[&[usize]]) -> Result<Vec<usize>, HarnessError> {
    let mut side_of = vec![None; nodes];
    for (side, members) in sides.iter().enumerate() {
        for &node in *members {
            match side_of.get_mut(node) {
                Some(slot @ None) => *slot = Some(side),
                _ => return Err(bad_sides(nodes, sides)),
            }
        }
    }
    side_of
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad_sides(nodes, sides))
}

fn bad_sides(nodes: usize, sides: &[&[usize]]) -> HarnessError {
    HarnessError::new(
        HarnessErrorKind::Unsupported,
        format!("partition {sides:?}: each of the {nodes} nodes must be on exactly one side"),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::side_of_each;

    #[test]
    fn every_node_on_exactly_one_side() {
        assert_eq!(side_of_each(3, &[&[0], &[1, 2]]).unwrap(), vec![0, 1, 1]);
        assert_eq!(side_of_each(3, &[&[2, 0], &[1]]).unwrap(), vec![0, 1, 0]);
        assert!(side_of_each(3, &[&[0], &[1]]).is_err(), "node 2 on no side");
        assert!(
            side_of_each(3, &[&[0, 1], &[1, 2]]).is_err(),
            "node 1 twice"
        );
        assert!(side_of_each(3, &[&[0, 1, 2, 3]]).is_err(), "no node 3");
    }
}
