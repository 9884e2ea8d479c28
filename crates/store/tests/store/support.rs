//! Test helpers: a temporary directory removed on drop, and the SPEC §3 provisioning sample.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::Arc;

use store::{BlockingStore, Provisioning, SqliteStore, Store, StoreThreads};

pub const ACCT: &str = "acct_01h2xcejqtf2nbrexx3vqjhp41";
pub const USER: &str = "user_01h2xcejqtf2nbrexx3vqjhp42";
pub const REALM: &str = "dialbridge.test";

pub const SAMPLE: &str = r#"
[[accounts]]
id = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Acme"
region = "US"
api_keys = [{ key = "ak_test_1", secret = "sk_test_1" }]
webhook_secret = "whsec_test_1"
allowed_prefixes = ["+1"]

[[users]]
id = "user_01h2xcejqtf2nbrexx3vqjhp42"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Alice Agent"
extension = "1001"
agent_id = 42
devices = [{ username = "alice-desk", password = "s3cret-desk" },
           { username = "alice-soft", password = "s3cret-soft" }]

[[trunks]]
name = "carrier"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
address = "127.0.0.1:5080"
transport = "udp"
username = "acme"
password = "trunk-pass"

[[trunks]]
name = "shared"
address = "sip.carrier.example"
transport = "tcp"
emergency = true

[[numbers]]
number = "+14155551234"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
owner = "user_01h2xcejqtf2nbrexx3vqjhp42"
"#;

pub fn sample() -> Provisioning {
    toml::from_str(SAMPLE).unwrap()
}

/// A directory under the system temp dir, unique per test, deleted on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "dialbridge-store-test-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn db(&self) -> PathBuf {
        self.0.join("dialbridge.db")
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}", self.db().display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A store in a fresh temporary directory.
pub fn open_fresh() -> (TempDir, SqliteStore) {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.url()).unwrap();
    (dir, store)
}

/// A fresh store with the sample provisioned.
pub fn provisioned() -> (TempDir, SqliteStore) {
    let (dir, store) = open_fresh();
    store.apply_provisioning(&sample(), REALM).unwrap();
    (dir, store)
}

/// Every byte of the database file and its WAL, if any.
pub fn db_bytes(dir: &TempDir) -> Vec<u8> {
    let mut bytes = std::fs::read(dir.db()).unwrap();
    let wal = dir.path().join("dialbridge.db-wal");
    if let Ok(more) = std::fs::read(wal) {
        bytes.extend(more);
    }
    bytes
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Which database a test of `both!` runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

tokio::task_local! {
    static BACKEND: Backend;
}

/// Runs `test` with `backend` as the database of [`store_fresh`].
pub async fn on(backend: Backend, test: impl std::future::Future<Output = ()>) {
    BACKEND.scope(backend, test).await
}

/// What keeps a test's database alive (the SQLite file's directory).
pub struct Db {
    _dir: Option<TempDir>,
}

/// An empty store on the test's backend.
pub async fn store_fresh() -> (Db, Arc<dyn Store>) {
    match BACKEND.try_with(|b| *b).unwrap_or(Backend::Sqlite) {
        Backend::Sqlite => {
            let dir = TempDir::new();
            let store = StoreThreads::new(SqliteStore::open(&dir.url()).unwrap(), 2).unwrap();
            (Db { _dir: Some(dir) }, Arc::new(store))
        }
        Backend::Postgres => {
            let url = crate::pg::PgServer::get().fresh_database();
            let store = store::open(&url).await.unwrap();
            (Db { _dir: None }, store)
        }
    }
}

/// `n` stores on one database of the test's backend (as `n` nodes sharing it), the sample
/// provisioned.
pub async fn stores_on_one_database(n: usize) -> (Db, Vec<Arc<dyn Store>>) {
    let (db, url): (Db, String) = match BACKEND.try_with(|b| *b).unwrap_or(Backend::Sqlite) {
        Backend::Sqlite => {
            let dir = TempDir::new();
            let url = dir.url();
            (Db { _dir: Some(dir) }, url)
        }
        Backend::Postgres => (
            Db { _dir: None },
            crate::pg::PgServer::get().fresh_database(),
        ),
    };
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..n {
        let store: Arc<dyn Store> = if url.starts_with("sqlite:") {
            Arc::new(StoreThreads::new(SqliteStore::open(&url).unwrap(), 2).unwrap())
        } else {
            store::open(&url).await.unwrap()
        };
        stores.push(store);
    }
    stores[0]
        .apply_provisioning(&sample(), REALM)
        .await
        .unwrap();
    (db, stores)
}

/// A store on the test's backend with the sample provisioned.
pub async fn store_provisioned() -> (Db, Arc<dyn Store>) {
    let (db, store) = store_fresh().await;
    store.apply_provisioning(&sample(), REALM).await.unwrap();
    (db, store)
}
