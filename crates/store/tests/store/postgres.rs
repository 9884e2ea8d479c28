//! The PostgreSQL backend's own matters: migrations, several nodes opening one database, a
//! database that cannot be reached.

use store::postgres::MIGRATIONS;
use store::{PgStore, Store, StoreError};

use crate::pg::PgServer;
use crate::support::{sample, ACCT, REALM};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_database_is_migrated_once_and_reopened_as_it_is() {
    let url = PgServer::get().fresh_database();
    let a = PgStore::open(&url).await.unwrap();
    assert_eq!(a.schema_version().await.unwrap(), MIGRATIONS.len() as i64);
    a.apply_provisioning(&sample(), REALM).await.unwrap();
    // A second node on the same database: no migration again, the same pepper.
    let b = PgStore::open(&url).await.unwrap();
    assert_eq!(b.schema_version().await.unwrap(), MIGRATIONS.len() as i64);
    assert_eq!(
        b.account_by_api_secret("sk_test_1")
            .await
            .unwrap()
            .map(|a| a.id),
        Some(ACCT.to_owned())
    );
    let report = b.apply_provisioning(&sample(), REALM).await.unwrap();
    assert!(report.is_noop(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once() {
    let url = PgServer::get().fresh_database();
    let opens = (0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { PgStore::open(&url).await })
    });
    let mut peppers = Vec::new();
    for o in opens {
        let s = o.await.unwrap().unwrap();
        assert_eq!(s.schema_version().await.unwrap(), MIGRATIONS.len() as i64);
        s.apply_provisioning(&sample(), REALM).await.unwrap();
        peppers.push(
            s.account_by_api_secret("sk_test_1")
                .await
                .unwrap()
                .is_some(),
        );
    }
    assert!(peppers.iter().all(|p| *p));
}

#[tokio::test]
async fn an_unreachable_database_is_named_by_store_url_without_its_password() {
    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://dialbridge:pgpass@127.0.0.1:{port}/dialbridge");
    let err = store::open(&url).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::PostgresUnreachable { .. }),
        "{err:?}"
    );
    assert!(msg.starts_with("store.url "), "{msg}");
    assert!(msg.contains("cannot reach PostgreSQL"), "{msg}");
    assert!(!msg.contains("pgpass"), "{msg}");
    assert!(!format!("{err:?}").contains("pgpass"));
    assert!(err.is_unavailable());
}

#[tokio::test]
async fn a_malformed_postgres_url_names_store_url() {
    let err = store::open("postgres://u:pw@127.0.0.1:notaport/db")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                field: "store.url",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.to_string().contains(":pw@"), "{err}");
}

/// Nodes starting together apply the same configuration at the same moment: each succeeds
/// (one after another), none runs into the other's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_provision_once_each_without_conflict() {
    let url = PgServer::get().fresh_database();
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(std::sync::Arc::new(PgStore::open(&url).await.unwrap()));
    }
    let runs: Vec<_> = stores
        .iter()
        .map(|s| {
            let s = s.clone();
            tokio::spawn(async move { s.apply_provisioning(&sample(), REALM).await })
        })
        .collect();
    for r in runs {
        r.await.unwrap().unwrap();
    }
    assert_eq!(
        stores[0]
            .account_by_api_secret("sk_test_1")
            .await
            .unwrap()
            .map(|a| a.id),
        Some(ACCT.to_owned())
    );
}
