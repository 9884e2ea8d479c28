//! This node among several sharing one database: its lease (heartbeat) in the store, and the
//! takeover of the calls of a node whose lease lapsed.
//!
//! - At start-up the node takes the lease of `[node] id`. When another process holds a live
//!   lease with that id, the node waits one heartbeat: a lease that was not renewed
//!   meanwhile belonged to a run that died (a crash, then a quick restart) and is taken; one
//!   that was renewed belongs to a running node, and this one refuses to start (two nodes
//!   with one id would end each other's calls).
//! - Every third of `node.lease_secs` the lease is renewed, and the lapsed leases of other
//!   nodes are claimed (each by one node, cluster-wide, in one statement): their live calls
//!   end `failed`, with a reason that names the node, and their final callbacks go out from
//!   here.
//! - A clean stop gives the lease up.

use std::sync::Arc;
use std::time::Duration;

use store::{NodeLease, Store, StoreError, TypeId};

use crate::config::NodeSettings;

/// When this node may take other nodes over: only after its own lease has been renewed
/// without a failure for a whole lease period. A node that could not reach the database
/// cannot tell a dead node from one that could not reach it either; once the database is
/// back, every live node renews within a third of a lease, so waiting one lease spares them.
#[derive(Debug)]
struct ClaimGate {
    lease: Duration,
    healthy_since: Option<tokio::time::Instant>,
}

impl ClaimGate {
    fn new(lease: Duration, now: tokio::time::Instant) -> ClaimGate {
        ClaimGate {
            lease,
            healthy_since: Some(now),
        }
    }

    fn renewed(&mut self, now: tokio::time::Instant) {
        self.healthy_since.get_or_insert(now);
    }

    fn failed(&mut self) {
        self.healthy_since = None;
    }

    fn may_claim(&self, now: tokio::time::Instant) -> bool {
        self.healthy_since
            .is_some_and(|since| now.duration_since(since) >= self.lease)
    }
}

/// The lease of this run of the node.
pub struct Lease {
    store: Arc<dyn Store>,
    node: NodeSettings,
    instance: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Lease {
    /// How often the lease is renewed and other nodes' leases are looked at.
    pub fn heartbeat(&self) -> Duration {
        self.node.lease / 3
    }

    fn at(&self, now: i64) -> NodeLease {
        NodeLease {
            node_id: self.node.id.clone(),
            instance: self.instance.clone(),
            api_url: self.node.api_url.clone(),
            until_ms: now + self.node.lease.as_millis() as i64,
        }
    }

    /// Takes the node's lease (see the module documentation).
    pub async fn acquire(store: Arc<dyn Store>, node: NodeSettings) -> Result<Lease, StoreError> {
        let lease = Lease {
            store,
            node,
            instance: TypeId::new("run").to_string(),
        };
        let now = now_ms();
        match lease
            .store
            .acquire_node_lease(&lease.at(now), now, None)
            .await
        {
            Ok(()) => {}
            Err(StoreError::NodeIdInUse { until_ms, .. }) => {
                tracing::warn!(node = %lease.node.id, "node.id holds a live lease; waiting one heartbeat to see whether its holder still runs");
                tokio::time::sleep(lease.heartbeat() + Duration::from_millis(500)).await;
                let now = now_ms();
                lease
                    .store
                    .acquire_node_lease(&lease.at(now), now, Some(until_ms))
                    .await?;
            }
            Err(e) => return Err(e),
        }
        tracing::info!(node = %lease.node.id, api_url = %lease.node.api_url, "node lease taken");
        Ok(lease)
    }

    /// Renews the lease and takes over lapsed nodes, every heartbeat, until aborted.
    pub async fn keep(self: Arc<Self>, takeover: api::Takeover) {
        let mut tick = tokio::time::interval(self.heartbeat());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Lost nodes claimed here whose calls are not ended yet (the store refused): tried
        // again at every heartbeat, since no other node will claim them.
        let mut pending: Vec<String> = Vec::new();
        let mut gate = ClaimGate::new(self.node.lease, tokio::time::Instant::now());
        loop {
            tick.tick().await;
            let now = now_ms();
            match self.store.renew_node_lease(&self.at(now)).await {
                Ok(true) => gate.renewed(tokio::time::Instant::now()),
                Ok(false) => {
                    gate.renewed(tokio::time::Instant::now());
                    tracing::error!(node = %self.node.id, "this node's lease was taken over (it was silent longer than node.lease_secs): its live calls may have been ended by another node");
                    // Take it back, so that this node is not taken over again and again.
                    if let Err(e) = self
                        .store
                        .acquire_node_lease(&self.at(now), now, None)
                        .await
                    {
                        tracing::error!(error = %e, "node lease not taken back");
                    }
                }
                Err(e) => {
                    gate.failed();
                    tracing::warn!(error = %e, "node lease not renewed");
                }
            }
            // After the database was out of reach, every node's lease may have lapsed
            // meanwhile: no node takes another over before all had a full lease to renew.
            if gate.may_claim(tokio::time::Instant::now()) {
                match self.store.claim_lapsed_nodes(&self.node.id, now).await {
                    Ok(lost) => pending.extend(lost.into_iter().map(|n| n.node_id)),
                    Err(e) => tracing::warn!(error = %e, "other nodes' leases not read"),
                }
            }
            let mut failed = Vec::new();
            for node in pending.drain(..) {
                match takeover.end_calls_of(&node).await {
                    Ok(count) => {
                        tracing::warn!(node = %node, calls = count, "node lost (lease lapsed): its live calls ended failed")
                    }
                    Err(e) => {
                        tracing::error!(node = %node, error = %e, "the calls of a lost node could not be ended yet");
                        failed.push(node);
                    }
                }
            }
            pending = failed;
        }
    }

    /// Gives the lease up (a clean stop).
    pub async fn release(&self) {
        if let Err(e) = self
            .store
            .release_node_lease(&self.node.id, &self.instance)
            .await
        {
            tracing::warn!(error = %e, "node lease not released");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_nodes_are_taken_over_only_after_a_whole_lease_of_renewals() {
        let t0 = tokio::time::Instant::now();
        let lease = Duration::from_secs(15);
        let mut g = ClaimGate::new(lease, t0);
        assert!(!g.may_claim(t0 + Duration::from_secs(5)), "just started");
        g.renewed(t0 + Duration::from_secs(5));
        assert!(g.may_claim(t0 + Duration::from_secs(15)));
        // The database was out of reach: every lease may have lapsed meanwhile.
        g.failed();
        assert!(!g.may_claim(t0 + Duration::from_secs(20)));
        g.renewed(t0 + Duration::from_secs(40));
        assert!(
            !g.may_claim(t0 + Duration::from_secs(50)),
            "others renew first"
        );
        g.renewed(t0 + Duration::from_secs(50));
        assert!(g.may_claim(t0 + Duration::from_secs(55)));
    }
}
