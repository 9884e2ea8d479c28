use store::{BlockingStore, SqliteStore};

use crate::support::{
    contains, db_bytes, provisioned, sample, store_provisioned, TempDir, ACCT, REALM,
};

const CLEAR_SECRETS: [&str; 3] = ["sk_test_1", "s3cret-desk", "s3cret-soft"];

#[test]
fn api_secrets_and_device_passwords_are_not_in_the_database_file() {
    let (dir, store) = provisioned();
    // While open: the main file and the WAL.
    let bytes = db_bytes(&dir);
    for secret in CLEAR_SECRETS {
        assert!(!contains(&bytes, secret), "{secret} found in the database");
    }
    // Sanity check of the scan itself: public values are there.
    assert!(contains(&bytes, "ak_test_1"));
    assert!(contains(&bytes, "alice-desk"));
    drop(store);
    // After close, checkpointed into the main file.
    let bytes = db_bytes(&dir);
    for secret in CLEAR_SECRETS {
        assert!(!contains(&bytes, secret), "{secret} found after close");
    }
    assert!(contains(&bytes, "ak_test_1"));
}

async fn debug_output_of_rows_is_redacted() {
    let (_db, store) = store_provisioned().await;
    let account = store.account(ACCT).await.unwrap().unwrap();
    let desk = store
        .device_by_username("alice-desk")
        .await
        .unwrap()
        .unwrap();
    let trunk = store.trunk("carrier").await.unwrap().unwrap();
    let dump = format!("{account:?} {desk:?} {trunk:?} {store:?}");
    for secret in [
        "whsec_test_1",
        "trunk-pass",
        desk.ha1_md5.expose(),
        desk.ha1_sha256.expose(),
    ] {
        assert!(!dump.contains(secret), "{secret} leaked in {dump}");
    }
    assert!(dump.contains("alice-desk"));
    // The values that must stay usable are there for those who ask.
    assert_eq!(account.webhook_secret.expose(), "whsec_test_1");
    assert_eq!(trunk.password.unwrap().expose(), "trunk-pass");
}

async fn device_keeps_the_digest_ha1_values() {
    let (_db, store) = store_provisioned().await;
    let desk = store
        .device_by_username("alice-desk")
        .await
        .unwrap()
        .unwrap();
    let md5 = format!(
        "{:x}",
        md5::compute(format!("alice-desk:{REALM}:s3cret-desk"))
    );
    assert_eq!(desk.ha1_md5.expose(), md5);
    assert_eq!(desk.ha1_sha256.expose().len(), 64);
    assert_eq!(desk.realm, REALM);
    assert!(store.device_by_username("nobody").await.unwrap().is_none());
}

async fn api_credentials_are_checked() {
    let (_db, store) = store_provisioned().await;
    assert_eq!(
        store
            .account_by_api_secret("sk_test_1")
            .await
            .unwrap()
            .unwrap()
            .id,
        ACCT
    );
    assert!(store
        .account_by_api_secret("sk_test_2")
        .await
        .unwrap()
        .is_none());
    assert!(store.account_by_api_secret("").await.unwrap().is_none());
    assert_eq!(
        store
            .account_by_key_pair("ak_test_1", "sk_test_1")
            .await
            .unwrap()
            .unwrap()
            .id,
        ACCT
    );
    assert!(store
        .account_by_key_pair("ak_test_1", "sk_test_X")
        .await
        .unwrap()
        .is_none());
    assert!(store
        .account_by_key_pair("ak_nope", "sk_test_1")
        .await
        .unwrap()
        .is_none());
    assert!(store
        .account_by_key_pair("ak_test_1", "")
        .await
        .unwrap()
        .is_none());
}

#[test]
fn each_database_has_its_own_pepper() {
    let (a_dir, a) = provisioned();
    let b_dir = TempDir::new();
    let b = SqliteStore::open(&b_dir.url()).unwrap();
    b.apply_provisioning(&sample(), REALM).unwrap();
    drop((a, b));
    let hash = |dir: &TempDir| -> String {
        rusqlite::Connection::open(dir.db())
            .unwrap()
            .query_row(
                "SELECT secret_hash FROM api_keys WHERE key = 'ak_test_1'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_ne!(hash(&a_dir), hash(&b_dir));
    assert_eq!(hash(&a_dir).len(), 64);
}

both!(
    debug_output_of_rows_is_redacted,
    device_keeps_the_digest_ha1_values,
    api_credentials_are_checked,
);
