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
        loop {
            tick.tick().await;
            let now = now_ms();
            match self.store.renew_node_lease(&self.at(now)).await {
                Ok(true) => {}
                Ok(false) => {
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
                Err(e) => tracing::warn!(error = %e, "node lease not renewed"),
            }
            match self.store.claim_lapsed_nodes(&self.node.id, now).await {
                Ok(lost) => pending.extend(lost.into_iter().map(|n| n.node_id)),
                Err(e) => tracing::warn!(error = %e, "other nodes' leases not read"),
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
