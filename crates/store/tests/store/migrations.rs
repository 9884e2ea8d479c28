use store::sqlite::{Location, MIGRATIONS};
use store::{BlockingStore, SqliteStore, StoreError};

use crate::support::{open_fresh, sample, TempDir, ACCT, REALM};

#[test]
fn fresh_file_is_migrated_to_latest_in_wal_mode() {
    let (dir, store) = open_fresh();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
    assert!(dir.db().exists());
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN
             ('accounts','api_keys','users','devices','numbers','trunks','bindings','calls',
              'call_timeline','callback_outbox','idempotency','meta','schema_version')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 13);
}

#[test]
fn reopen_keeps_data_and_does_not_reapply_migrations() {
    let dir = TempDir::new();
    {
        let store = SqliteStore::open(&dir.url()).unwrap();
        store.apply_provisioning(&sample(), REALM).unwrap();
    }
    let store = SqliteStore::open(&dir.url()).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, MIGRATIONS.len() as i64);
    assert_eq!(store.account(ACCT).unwrap().unwrap().name, "Acme");
    // The pepper survived too: the stored secret hash still matches.
    assert!(store.account_by_api_secret("sk_test_1").unwrap().is_some());
}

#[test]
fn newer_schema_is_refused() {
    let dir = TempDir::new();
    drop(SqliteStore::open(&dir.url()).unwrap());
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    conn.execute(
        "INSERT INTO schema_version (version, applied_at_ms) VALUES (99, 0)",
        [],
    )
    .unwrap();
    drop(conn);
    match SqliteStore::open(&dir.url()) {
        Err(StoreError::SchemaTooNew { found, supported }) => {
            assert_eq!(found, 99);
            assert_eq!(supported, MIGRATIONS.len() as i64);
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[test]
fn url_forms() {
    assert_eq!(
        Location::parse("sqlite://dialbridge.db").unwrap(),
        Location::File("dialbridge.db".into())
    );
    assert_eq!(
        Location::parse("sqlite:///var/lib/db.sqlite").unwrap(),
        Location::File("/var/lib/db.sqlite".into())
    );
    assert_eq!(
        Location::parse("sqlite:relative.db").unwrap(),
        Location::File("relative.db".into())
    );
    assert_eq!(
        Location::parse("plain/path.db").unwrap(),
        Location::File("plain/path.db".into())
    );
    assert_eq!(
        Location::parse("sqlite::memory:").unwrap(),
        Location::Memory
    );
    assert!(matches!(
        Location::parse("sqlite://"),
        Err(StoreError::Invalid { .. })
    ));
    assert!(matches!(
        Location::parse("mysql://h/db"),
        Err(StoreError::UnsupportedScheme { scheme }) if scheme == "mysql"
    ));
}

#[test]
fn the_sqlite_store_refuses_a_postgres_url_without_leaking_the_password() {
    let err = SqliteStore::open("postgres://dialbridge:pgpass@db.example/dialbridge").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("names PostgreSQL"), "{msg}");
    assert!(!msg.contains("pgpass"), "{msg}");
    assert!(!format!("{err:?}").contains("pgpass"));
    assert!(matches!(
        SqliteStore::open("postgresql://h/db"),
        Err(StoreError::PostgresUnavailable { .. })
    ));
}

#[tokio::test]
async fn in_memory_store_works_through_the_trait_object() {
    let store = store::open("sqlite::memory:").await.unwrap();
    let report = store.apply_provisioning(&sample(), REALM).await.unwrap();
    assert_eq!(report.accounts.created, 1);
    assert!(store.account(ACCT).await.unwrap().is_some());
}

#[test]
fn version_1_accounts_get_the_default_dialing_permissions() {
    let dir = TempDir::new();
    {
        let conn = rusqlite::Connection::open(dir.db()).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL);
             INSERT INTO schema_version VALUES (1, 0);",
        )
        .unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute(
            "INSERT INTO accounts (id, name, region, webhook_secret, allowed_prefixes)
             VALUES (?1, 'Old', 'GB', 'whsec', '[\"+44\"]')",
            [ACCT],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&dir.url()).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
    let account = store.account(ACCT).unwrap().unwrap();
    assert_eq!(account.allowed_prefixes, ["+44"]);
    assert_eq!(account.allowed_countries, ["GB"]);
    assert_eq!(
        account.blocked_number_types,
        store::NumberType::DEFAULT_BLOCKED
    );
}
