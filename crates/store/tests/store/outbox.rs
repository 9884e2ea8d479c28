use store::{BlockingStore, OutboxEntry, OutboxState, SqliteStore, StoreError};

use crate::support::{provisioned, store_provisioned, ACCT};

const T0: i64 = 1_700_000_000_000;

fn entry(call: &str, seq: i64, at: i64) -> OutboxEntry {
    OutboxEntry::new(
        format!("evt_{call}_{seq}"),
        call.into(),
        ACCT.into(),
        seq,
        "http://127.0.0.1:9/cb".into(),
        format!(r#"{{"call_id":"{call}","sequence":{seq}}}"#),
        at,
    )
}

fn ids(v: &[OutboxEntry]) -> Vec<&str> {
    v.iter().map(|e| e.event_id.as_str()).collect()
}

async fn one_call_delivers_in_order_others_are_not_blocked() {
    let (_db, store) = store_provisioned().await;
    for e in [
        entry("a", 1, T0),
        entry("a", 2, T0 + 1),
        entry("a", 3, T0 + 2),
        entry("b", 1, T0 + 1),
    ] {
        store.enqueue_callback(&e).await.unwrap();
    }
    let now = T0 + 10;
    assert_eq!(
        ids(&store.due_callbacks(now, 10).await.unwrap()),
        ["evt_a_1", "evt_b_1"]
    );
    assert_eq!(
        ids(&store.due_callbacks(now, 1).await.unwrap()),
        ["evt_a_1"]
    );
    // Nothing is due before its time.
    assert!(store.due_callbacks(T0 - 1, 10).await.unwrap().is_empty());

    assert!(store.callback_due("evt_a_1", now).await.unwrap());
    assert!(
        !store.callback_due("evt_a_1", T0 - 1).await.unwrap(),
        "not yet due"
    );
    store.mark_delivered("evt_a_1", 1).await.unwrap();
    assert!(
        !store.callback_due("evt_a_1", now).await.unwrap(),
        "delivered"
    );
    assert!(!store.callback_due("evt_nope", now).await.unwrap());
    assert_eq!(
        ids(&store.due_callbacks(now, 10).await.unwrap()),
        ["evt_a_2", "evt_b_1"]
    );

    // a/2 fails: rescheduled for later; a/3 must wait behind it.
    store
        .reschedule("evt_a_2", 1, now + 2_000, "connect refused")
        .await
        .unwrap();
    assert_eq!(
        ids(&store.due_callbacks(now, 10).await.unwrap()),
        ["evt_b_1"]
    );
    let retry = store.due_callbacks(now + 2_000, 10).await.unwrap();
    assert_eq!(ids(&retry), ["evt_b_1", "evt_a_2"]);
    assert_eq!(retry[1].attempts, 1);
    assert_eq!(retry[1].last_error.as_deref(), Some("connect refused"));

    // Giving up on a/2 lets a/3 go.
    store
        .abandon_callback("evt_a_2", 8, "timeout")
        .await
        .unwrap();
    assert_eq!(
        ids(&store.due_callbacks(now + 2_000, 10).await.unwrap()),
        ["evt_b_1", "evt_a_3"]
    );
    let all = store.callbacks_for_call("a").await.unwrap();
    let states: Vec<OutboxState> = all.iter().map(|e| e.state).collect();
    assert_eq!(
        states,
        [
            OutboxState::Delivered,
            OutboxState::Abandoned,
            OutboxState::Pending
        ]
    );
    assert_eq!(all[1].attempts, 8);
    assert_eq!(store.next_callback_seq("a").await.unwrap(), 4);
    assert_eq!(store.next_callback_seq("new").await.unwrap(), 1);
}

async fn finished_callbacks_cannot_be_rescheduled() {
    let (_db, store) = store_provisioned().await;
    store.enqueue_callback(&entry("a", 1, T0)).await.unwrap();
    store.mark_delivered("evt_a_1", 1).await.unwrap();
    assert!(matches!(
        store.reschedule("evt_a_1", 2, T0, "late").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.mark_delivered("evt_nope", 1).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(store
        .due_callbacks(T0 + 1_000_000, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn duplicates_are_refused() {
    let (_db, store) = store_provisioned().await;
    store.enqueue_callback(&entry("a", 1, T0)).await.unwrap();
    assert!(matches!(
        store.enqueue_callback(&entry("a", 1, T0)).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let mut same_seq = entry("a", 1, T0);
    same_seq.event_id = "evt_other".into();
    assert!(matches!(
        store.enqueue_callback(&same_seq).await,
        Err(StoreError::AlreadyExists { .. })
    ));
}

#[test]
fn pending_callbacks_survive_a_restart() {
    let (dir, store) = provisioned();
    store.enqueue_callback(&entry("a", 1, T0)).unwrap();
    store.enqueue_callback(&entry("a", 2, T0)).unwrap();
    store.reschedule("evt_a_1", 3, T0 + 500, "503").unwrap();
    drop(store);
    let store = SqliteStore::open(&dir.url()).unwrap();
    let due = store.due_callbacks(T0 + 500, 10).unwrap();
    assert_eq!(ids(&due), ["evt_a_1"]);
    assert_eq!(due[0].attempts, 3);
    assert_eq!(due[0].body, r#"{"call_id":"a","sequence":1}"#);
}

async fn due_order_is_by_next_attempt_time() {
    let (_db, store) = store_provisioned().await;
    store
        .enqueue_callback(&entry("late", 1, T0 + 30))
        .await
        .unwrap();
    store
        .enqueue_callback(&entry("early", 1, T0 + 10))
        .await
        .unwrap();
    store
        .enqueue_callback(&entry("mid", 1, T0 + 20))
        .await
        .unwrap();
    assert_eq!(
        ids(&store.due_callbacks(T0 + 30, 10).await.unwrap()),
        ["evt_early_1", "evt_mid_1", "evt_late_1"]
    );
}

async fn claims_are_held_by_one_node_in_order_and_lapse() {
    let (_db, store) = store_provisioned().await;
    for e in [entry("a", 1, T0), entry("a", 2, T0), entry("b", 1, T0 + 1)] {
        store.enqueue_callback(&e).await.unwrap();
    }
    let now = T0 + 10;
    assert_eq!(
        ids(&store
            .claim_callbacks("node-a", now, now + 1_000, 10)
            .await
            .unwrap()),
        ["evt_a_1", "evt_b_1"]
    );
    // Held: another node gets nothing, and a/2 waits behind a/1.
    assert!(store
        .claim_callbacks("node-b", now + 1, now + 1_000, 10)
        .await
        .unwrap()
        .is_empty());
    store.mark_delivered("evt_a_1", 1).await.unwrap();
    assert_eq!(
        ids(&store
            .claim_callbacks("node-b", now + 2, now + 5_000, 10)
            .await
            .unwrap()),
        ["evt_a_2"]
    );
    // node-a died holding b/1: its claim lapses at now + 1000 and b/1 is taken over, once.
    assert!(store
        .claim_callbacks("node-b", now + 999, now + 5_000, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(&store
            .claim_callbacks("node-b", now + 1_000, now + 5_000, 10)
            .await
            .unwrap()),
        ["evt_b_1"]
    );
    // A failed attempt gives the claim up: the retry is anyone's when it is due.
    store
        .reschedule("evt_a_2", 1, now + 2_000, "HTTP 503")
        .await
        .unwrap();
    assert!(store
        .claim_callbacks("node-c", now + 1_500, now + 5_000, 10)
        .await
        .unwrap()
        .is_empty());
    let retry = store
        .claim_callbacks("node-c", now + 2_000, now + 5_000, 10)
        .await
        .unwrap();
    assert_eq!(ids(&retry), ["evt_a_2"]);
    assert_eq!(retry[0].attempts, 1);
}

/// Eight claimers race over 40 calls of 3 callbacks each: every callback is claimed exactly
/// once, and a call's callbacks in sequence order.
async fn racing_claimers_take_each_callback_once_in_order() {
    let (_db, store) = store_provisioned().await;
    let mut total = 0;
    for c in 0..40 {
        for seq in 1..=3 {
            store
                .enqueue_callback(&entry(&format!("c{c}"), seq, T0))
                .await
                .unwrap();
            total += 1;
        }
    }
    let taken = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, i64)>::new()));
    let mut tasks = Vec::new();
    for n in 0..8 {
        let store = store.clone();
        let taken = taken.clone();
        tasks.push(tokio::spawn(async move {
            let node = format!("node-{n}");
            for _ in 0..2_000 {
                let got = store
                    .claim_callbacks(&node, T0 + 10, T0 + 60_000, 4)
                    .await
                    .unwrap();
                for e in &got {
                    taken.lock().unwrap().push((e.call_id.clone(), e.seq));
                    store.mark_delivered(&e.event_id, 1).await.unwrap();
                }
                if got.is_empty() && taken.lock().unwrap().len() == total {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let taken = taken.lock().unwrap().clone();
    assert_eq!(taken.len(), total, "each callback claimed once");
    let mut seen = std::collections::HashMap::<String, i64>::new();
    for (call, seq) in taken {
        let last = seen.entry(call.clone()).or_insert(0);
        assert_eq!(seq, *last + 1, "call {call}: sequence {seq} after {last}");
        *last = seq;
    }
}

both!(
    claims_are_held_by_one_node_in_order_and_lapse,
    racing_claimers_take_each_callback_once_in_order,
    one_call_delivers_in_order_others_are_not_blocked,
    finished_callbacks_cannot_be_rescheduled,
    duplicates_are_refused,
    due_order_is_by_next_attempt_time,
);
