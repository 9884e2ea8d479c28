use store::IdempotencyRecord;

use crate::support::{store_provisioned, ACCT};

fn record(key: &str, hash: &str, at: i64) -> IdempotencyRecord {
    IdempotencyRecord {
        account_id: ACCT.into(),
        key: key.into(),
        request_hash: hash.into(),
        response_status: 202,
        response_body: format!(r#"{{"call_id":"call_{key}"}}"#),
        created_at_ms: at,
    }
}

async fn first_writer_wins_and_records_expire() {
    let (_db, store) = store_provisioned().await;
    assert!(store
        .put_idempotency(&record("k1", "h1", 1_000))
        .await
        .unwrap());
    assert!(!store
        .put_idempotency(&record("k1", "h2", 2_000))
        .await
        .unwrap());
    let got = store.get_idempotency(ACCT, "k1").await.unwrap().unwrap();
    assert_eq!(got, record("k1", "h1", 1_000));
    assert!(store
        .get_idempotency("acct_01h2xcejqtf2nbrexx3vqjhp50", "k1")
        .await
        .unwrap()
        .is_none());

    assert!(store
        .put_idempotency(&record("k2", "h", 5_000))
        .await
        .unwrap());
    assert_eq!(store.purge_idempotency(5_000).await.unwrap(), 1);
    assert!(store.get_idempotency(ACCT, "k1").await.unwrap().is_none());
    assert!(store.get_idempotency(ACCT, "k2").await.unwrap().is_some());
}

async fn a_reservation_is_completed_or_released() {
    let (_db, store) = store_provisioned().await;
    let mut reserved = record("k1", "h1", 1_000);
    reserved.response_status = 0;
    reserved.response_body = String::new();
    assert!(store.put_idempotency(&reserved).await.unwrap());
    // A second node sees the reservation, not a free key.
    assert!(!store.put_idempotency(&reserved).await.unwrap());
    assert_eq!(
        store
            .get_idempotency(ACCT, "k1")
            .await
            .unwrap()
            .unwrap()
            .response_status,
        0
    );
    store
        .complete_idempotency(&record("k1", "h1", 1_500))
        .await
        .unwrap();
    assert_eq!(
        store.get_idempotency(ACCT, "k1").await.unwrap().unwrap(),
        record("k1", "h1", 1_500)
    );
    // A completed record is not released.
    assert!(!store.release_idempotency(ACCT, "k1").await.unwrap());
    let mut other = reserved.clone();
    other.key = "k2".into();
    assert!(store.put_idempotency(&other).await.unwrap());
    assert!(store.release_idempotency(ACCT, "k2").await.unwrap());
    assert!(store.get_idempotency(ACCT, "k2").await.unwrap().is_none());
    assert!(matches!(
        store.complete_idempotency(&record("k3", "h", 1)).await,
        Err(store::StoreError::NotFound { .. })
    ));
}

both!(
    first_writer_wins_and_records_expire,
    a_reservation_is_completed_or_released,
);
