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

both!(first_writer_wins_and_records_expire,);
