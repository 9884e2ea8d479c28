use store::{BlockingStore, IdempotencyRecord};

use crate::support::{provisioned, ACCT};

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

#[test]
fn first_writer_wins_and_records_expire() {
    let (_dir, store) = provisioned();
    assert!(store.put_idempotency(&record("k1", "h1", 1_000)).unwrap());
    assert!(!store.put_idempotency(&record("k1", "h2", 2_000)).unwrap());
    let got = store.get_idempotency(ACCT, "k1").unwrap().unwrap();
    assert_eq!(got, record("k1", "h1", 1_000));
    assert!(store
        .get_idempotency("acct_01h2xcejqtf2nbrexx3vqjhp50", "k1")
        .unwrap()
        .is_none());

    assert!(store.put_idempotency(&record("k2", "h", 5_000)).unwrap());
    assert_eq!(store.purge_idempotency(5_000).unwrap(), 1);
    assert!(store.get_idempotency(ACCT, "k1").unwrap().is_none());
    assert!(store.get_idempotency(ACCT, "k2").unwrap().is_some());
}
