use store::sqlite::{Location, MIGRATIONS};
use store::{BlockingStore, CallWrite, SqliteStore, StoreError, TimelineEntry};

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

/// A version 12 database (one timeline row per entry, `calls_live` on an `IN` list) keeps
/// its calls' timelines through migrations 13-15, and a call's later batch adds to them in
/// time order.
#[test]
fn version_12_timelines_read_back_after_the_timeline_migrations() {
    let dir = TempDir::new();
    let call_id = "call_01h2xcejqtf2nbrexx3vq00001";
    {
        let conn = rusqlite::Connection::open(dir.db()).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL);",
        )
        .unwrap();
        for (v, sql) in MIGRATIONS[..12].iter().enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.execute("INSERT INTO schema_version VALUES (?1, 0)", [v as i64 + 1])
                .unwrap();
        }
        conn.execute(
            "INSERT INTO calls (id, account_id, status, dial_string, created_at_ms, metadata,
                                legs, stats)
             VALUES (?1, ?2, 'ringing', '+14155550100', 1000, '{}', '{}', '{}')",
            [call_id, ACCT],
        )
        .unwrap();
        for (at, kind) in [(1000, "api.request"), (1010, "sip"), (1005, "ringing")] {
            conn.execute(
                "INSERT INTO call_timeline (call_id, at_ms, kind, leg, detail)
                 VALUES (?1, ?2, ?3, NULL, '{\"old\":true}')",
                rusqlite::params![call_id, at, kind],
            )
            .unwrap();
        }
    }
    let store = SqliteStore::open(&dir.url()).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
    let entry = |at: i64, kind: &str| TimelineEntry {
        at_ms: at,
        kind: kind.into(),
        leg: None,
        detail: serde_json::json!({ "old": true }).into(),
    };
    store
        .write_call_batch(&[
            CallWrite::Timeline {
                call_id: call_id.into(),
                entry: entry(1007, "sip"),
            },
            CallWrite::Timeline {
                call_id: call_id.into(),
                entry: entry(1020, "ended"),
            },
        ])
        .unwrap();
    assert_eq!(
        store.timeline(call_id).unwrap(),
        vec![
            entry(1000, "api.request"),
            entry(1005, "ringing"),
            entry(1007, "sip"),
            entry(1010, "sip"),
            entry(1020, "ended"),
        ]
    );
    // The ringing call counts against the account's live calls through the new index.
    let limits = store::AccountLimits {
        calls_per_second: 100.0,
        burst: 100,
        max_concurrent: 1,
    };
    let mut next = store::CallRecord::new(
        "call_01h2xcejqtf2nbrexx3vq00002".into(),
        ACCT.into(),
        "+14155550100".into(),
        2000,
    );
    next.user_id = None;
    assert_eq!(
        store
            .admit_call(&[CallWrite::NewCall(next)], &limits, 2000)
            .unwrap(),
        store::Admission::Concurrency
    );
}

/// A version 17 database's calls keep their timelines through migration 18 (their rows
/// listed in each call's record), and the WAL that the migration's rewrite of every call row
/// grew is given back when the store opens.
#[test]
fn version_17_timelines_survive_migration_18_and_its_wal_is_given_back() {
    let dir = TempDir::new();
    let calls = 2_000;
    {
        let conn = rusqlite::Connection::open(dir.db()).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL);",
        )
        .unwrap();
        for (v, sql) in MIGRATIONS[..17].iter().enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.execute("INSERT INTO schema_version VALUES (?1, 0)", [v as i64 + 1])
                .unwrap();
        }
        let legs = format!("{{\"pad\":\"{}\"}}", "x".repeat(900));
        conn.execute_batch("BEGIN").unwrap();
        for i in 0..calls {
            let id = format!("call_{i:026}");
            conn.execute(
                "INSERT INTO calls (id, account_id, status, dial_string, created_at_ms, metadata,
                                    legs, stats)
                 VALUES (?1, ?2, 'completed', '+14155550100', ?3, '{}', ?4, '{}')",
                rusqlite::params![id, ACCT, i, legs],
            )
            .unwrap();
            // Two rows each, the second after another call's, as batches interleave them.
            for at in [i, i + calls] {
                conn.execute(
                    "INSERT INTO call_timeline (call_id, at_ms, kind, leg, detail)
                     VALUES (?1, ?2, 'sip', NULL, '{}')",
                    rusqlite::params![id, at],
                )
                .unwrap();
            }
        }
        conn.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
    }
    let store = SqliteStore::open(&dir.url()).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
    // The rewrite touched every call's page (about 2 MB here); what is left in the WAL is
    // what the store wrote after the migrations.
    let wal = std::fs::metadata(format!("{}-wal", dir.db().display()))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(wal < 256 * 1024, "WAL of {wal} bytes after opening");
    for i in [0, 1, calls / 2, calls - 1] {
        let id = format!("call_{i:026}");
        let at: Vec<i64> = store
            .timeline(&id)
            .unwrap()
            .iter()
            .map(|e| e.at_ms)
            .collect();
        assert_eq!(at, vec![i as i64, (i + calls) as i64], "{id}");
    }
}
