//! Nodes sharing one database: leases, takeover of a lapsed node, calls by owner.

use store::{CallRecord, CallStatus, NodeLease, StoreError};

use crate::support::{store_provisioned, ACCT};

const T0: i64 = 1_700_000_000_000;

fn lease(node: &str, instance: &str, until_ms: i64) -> NodeLease {
    NodeLease {
        node_id: node.into(),
        instance: instance.into(),
        api_url: format!("http://{node}.example:8080"),
        until_ms,
    }
}

async fn a_node_id_is_held_by_one_process_at_a_time() {
    let (_db, store) = store_provisioned().await;
    store
        .acquire_node_lease(&lease("node-a", "run-1", T0 + 15_000), T0, None)
        .await
        .unwrap();
    // The same instance again (a repeated start-up step): fine.
    store
        .acquire_node_lease(&lease("node-a", "run-1", T0 + 15_000), T0, None)
        .await
        .unwrap();
    // A second process with the same id while the lease is live: refused.
    match store
        .acquire_node_lease(&lease("node-a", "run-2", T0 + 16_000), T0 + 1_000, None)
        .await
    {
        Err(StoreError::NodeIdInUse { id, until_ms }) => {
            assert_eq!(id, "node-a");
            assert_eq!(until_ms, T0 + 15_000);
        }
        other => panic!("expected NodeIdInUse, got {other:?}"),
    }
    // The holder renews: the lease moved on, so the value seen before is no longer stale.
    assert!(store
        .renew_node_lease(&lease("node-a", "run-1", T0 + 18_000))
        .await
        .unwrap());
    assert!(matches!(
        store
            .acquire_node_lease(
                &lease("node-a", "run-2", T0 + 19_000),
                T0 + 4_000,
                Some(T0 + 15_000)
            )
            .await,
        Err(StoreError::NodeIdInUse { .. })
    ));
    // Not renewed since it was seen (its holder crashed): a restart takes it.
    store
        .acquire_node_lease(
            &lease("node-a", "run-2", T0 + 20_000),
            T0 + 5_000,
            Some(T0 + 18_000),
        )
        .await
        .unwrap();
    assert!(!store
        .renew_node_lease(&lease("node-a", "run-1", T0 + 21_000))
        .await
        .unwrap());
    // A clean stop gives the id up at once.
    store.release_node_lease("node-a", "run-2").await.unwrap();
    store
        .acquire_node_lease(&lease("node-a", "run-3", T0 + 21_000), T0 + 6_000, None)
        .await
        .unwrap();
}

async fn a_lapsed_node_is_claimed_once() {
    let (_db, store) = store_provisioned().await;
    for (node, until) in [("node-a", T0 + 10_000), ("node-b", T0 + 30_000)] {
        store
            .acquire_node_lease(&lease(node, "run-1", until), T0, None)
            .await
            .unwrap();
    }
    assert!(store
        .claim_lapsed_nodes("node-b", T0 + 5_000)
        .await
        .unwrap()
        .is_empty());
    // Where a node is reached, as its lease says.
    assert_eq!(
        store.node_lease("node-b").await.unwrap(),
        Some(lease("node-b", "run-1", T0 + 30_000))
    );
    assert_eq!(store.node_lease("node-z").await.unwrap(), None);
    let claimed = store
        .claim_lapsed_nodes("node-b", T0 + 20_000)
        .await
        .unwrap();
    assert_eq!(claimed, vec![lease("node-a", "run-1", T0 + 10_000)]);
    // Claimed once, cluster-wide; a node never claims its own lease.
    assert!(store
        .claim_lapsed_nodes("node-c", T0 + 20_000)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .claim_lapsed_nodes("node-b", T0 + 40_000)
        .await
        .unwrap()
        .is_empty());
    // The dead node's lease is gone for it; when it starts again it takes its id back.
    assert!(!store
        .renew_node_lease(&lease("node-a", "run-1", T0 + 50_000))
        .await
        .unwrap());
    store
        .acquire_node_lease(&lease("node-a", "run-2", T0 + 60_000), T0 + 45_000, None)
        .await
        .unwrap();
    assert!(store
        .renew_node_lease(&lease("node-a", "run-2", T0 + 70_000))
        .await
        .unwrap());
}

async fn unfinished_calls_are_found_by_owner() {
    let (_db, store) = store_provisioned().await;
    let mut ids = Vec::new();
    for (n, node, status) in [
        (1, Some("node-a"), CallStatus::InProgress),
        (2, Some("node-b"), CallStatus::Ringing),
        (3, None, CallStatus::Queued),
        (4, Some("node-a"), CallStatus::Completed),
    ] {
        let mut c = CallRecord::new(
            format!("call_01h2xcejqtf2nbrexx3vq{n:06}"),
            ACCT.into(),
            "+14155550100".into(),
            T0 + n,
        );
        c.node_id = node.map(str::to_owned);
        c.status = status;
        store.insert_call(&c).await.unwrap();
        ids.push(c.id);
    }
    let of = |v: Vec<CallRecord>| v.into_iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(
        of(store.unfinished_calls_of("node-a", false).await.unwrap()),
        [ids[0].clone()]
    );
    assert_eq!(
        of(store.unfinished_calls_of("node-a", true).await.unwrap()),
        [ids[0].clone(), ids[2].clone()]
    );
    assert_eq!(
        of(store.unfinished_calls_of("node-b", false).await.unwrap()),
        [ids[1].clone()]
    );
    let got = store.get_call(ACCT, &ids[1]).await.unwrap().unwrap();
    assert_eq!(got.node_id.as_deref(), Some("node-b"));
}

both!(
    a_node_id_is_held_by_one_process_at_a_time,
    a_lapsed_node_is_claimed_once,
    unfinished_calls_are_found_by_owner,
);
