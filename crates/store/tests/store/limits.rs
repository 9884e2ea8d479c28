//! Per-account call limits: defaults, the file's values, changes through the store (the admin
//! API's path), and a database written before the limits existed.

use store::sqlite::MIGRATIONS;
use store::{AccountLimits, BlockingStore, SqliteStore, StoreError};

use crate::support::{open_fresh, provisioned, sample, store_provisioned, TempDir, ACCT, REALM};

fn limits(calls_per_second: f64, burst: u32, max_concurrent: u32) -> AccountLimits {
    AccountLimits {
        calls_per_second,
        burst,
        max_concurrent,
    }
}

#[test]
fn a_new_account_gets_the_defaults_or_the_files_values() {
    let (_dir, store) = provisioned();
    let acct = store.account(ACCT).unwrap().unwrap();
    assert_eq!(acct.limits, limits(5.0, 20, 100));

    let (_dir, store) = open_fresh();
    let mut prov = sample();
    prov.accounts[0].calls_per_second = Some(0.5);
    prov.accounts[0].max_concurrent = Some(3);
    store.apply_provisioning(&prov, REALM).unwrap();
    // Every way of reading the account carries them.
    let by_id = store.account(ACCT).unwrap().unwrap();
    let by_secret = store.account_by_api_secret("sk_test_1").unwrap().unwrap();
    let by_pair = store
        .account_by_key_pair("ak_test_1", "sk_test_1")
        .unwrap()
        .unwrap();
    let listed = store.list_accounts().unwrap().remove(0);
    for a in [by_id, by_secret, by_pair, listed] {
        assert_eq!(a.limits, limits(0.5, 20, 3));
    }
}

#[test]
fn a_change_through_the_store_survives_a_file_that_does_not_set_the_limit() {
    let (dir, store) = provisioned();
    assert!(store
        .set_account_limits(ACCT, &limits(50.0, 60, 500))
        .unwrap());
    drop(store);
    let store = SqliteStore::open(&dir.url()).unwrap();
    // The sample sets no limit: applying it again keeps the changed values.
    let report = store.apply_provisioning(&sample(), REALM).unwrap();
    assert!(report.is_noop(), "{report}");
    assert_eq!(
        store.account(ACCT).unwrap().unwrap().limits,
        limits(50.0, 60, 500)
    );
    // A limit the file sets wins at the next apply; the others stay.
    let mut prov = sample();
    prov.accounts[0].burst = Some(10);
    let report = store.apply_provisioning(&prov, REALM).unwrap();
    assert_eq!(report.accounts.updated, 1);
    assert_eq!(
        store.account(ACCT).unwrap().unwrap().limits,
        limits(50.0, 10, 500)
    );
    assert!(store.apply_provisioning(&prov, REALM).unwrap().is_noop());
}

async fn bad_values_and_unknown_accounts() {
    let (_db, store) = store_provisioned().await;
    match store.set_account_limits(ACCT, &limits(0.0, 1, 1)).await {
        Err(StoreError::Invalid { field, .. }) => assert_eq!(field, "calls_per_second"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    match store.set_account_limits(ACCT, &limits(1.0, 0, 1)).await {
        Err(StoreError::Invalid { field, .. }) => assert_eq!(field, "burst"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(
        store.account(ACCT).await.unwrap().unwrap().limits,
        AccountLimits::default()
    );
    assert!(!store
        .set_account_limits("acct_01h2xcejqtf2nbrexx3vqjhp99", &limits(1.0, 1, 1))
        .await
        .unwrap());
}

#[test]
fn accounts_of_a_database_from_before_the_limits_get_the_former_fixed_values() {
    let dir = TempDir::new();
    {
        // The schema as migration 1 left it, with one account.
        let conn = rusqlite::Connection::open(dir.db()).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY,
                                          applied_at_ms INTEGER NOT NULL);",
        )
        .unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute(
            "INSERT INTO schema_version (version, applied_at_ms) VALUES (1, 0)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO accounts (id, name, region, webhook_secret, allowed_prefixes)
             VALUES (?1, 'Acme', 'US', 'whsec', '[]')",
            [ACCT],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&dir.url()).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
    assert_eq!(
        store.account(ACCT).unwrap().unwrap().limits,
        limits(5.0, 20, 100)
    );
}

both!(bad_values_and_unknown_accounts,);
