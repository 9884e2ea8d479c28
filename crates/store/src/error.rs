//! The store's error type.

use crate::provision::ConfigIssue;

/// Everything that can go wrong in the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `store.url` names a PostgreSQL database and was handed to the SQLite store (open it
    /// with [`crate::open`]).
    #[error("store.url {url:?} names PostgreSQL, not an SQLite database")]
    PostgresUnavailable { url: String },
    /// The PostgreSQL database of `store.url` cannot be reached (at start-up).
    #[error("store.url {url:?}: cannot reach PostgreSQL: {reason}")]
    PostgresUnreachable { url: String, reason: String },
    /// `store.url` has a scheme that no store implements.
    #[error("unsupported store URL scheme {scheme:?} (expected sqlite://PATH or sqlite::memory:)")]
    UnsupportedScheme { scheme: String },
    /// The database was written by a newer build with migrations this one does not know.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    /// The provisioning tables are inconsistent; each issue names its key.
    #[error("invalid provisioning: {}", ConfigIssue::join(.0))]
    InvalidProvisioning(Vec<ConfigIssue>),
    /// A value handed to a write method is malformed.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The row to update or delete does not exist, or a referenced row is missing.
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    /// An insert collides with an existing row (same id, username, extension, ...).
    #[error("{kind} {id:?} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    /// The provisioning tables are consistent on their own but clash with rows already in
    /// the store (e.g. an extension held by a user created through the API).
    #[error("provisioning conflicts with the store at {key}: {reason}")]
    ProvisioningConflict { key: String, reason: String },
    /// Another process holds a live lease with this node id (`[node] id` must be unique).
    #[error(
        "node.id {id:?} is in use by another running node (its lease holds until {}); give each node its own [node] id",
        utc_time(*until_ms)
    )]
    NodeIdInUse { id: String, until_ms: i64 },
    /// A thread panicked while holding the database connection.
    #[error("store connection lock poisoned")]
    Poisoned,
    /// The store's threads have stopped (the store is shutting down).
    #[error("the store has stopped")]
    Stopped,
    /// A store call panicked on its store thread; nothing of it was committed.
    #[error("a store call failed inside the store")]
    Crashed,
    /// The batch of writes this one was part of was refused as a whole (the first error
    /// there is `reason`); `unavailable` as [`StoreError::is_unavailable`] said of it.
    #[error("{reason}")]
    Batch { reason: String, unavailable: bool },
    /// The store's threads could not be started.
    #[error("cannot start the store's threads: {0}")]
    Threads(std::io::Error),
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL reported an error, or the connection to it failed.
    #[error("postgres: {}", postgres_detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had from the pool.
    #[error("postgres pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A JSON value could not be encoded.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl StoreError {
    /// What a write that was in the same refused batch as this error gets: its words, and
    /// whether the store is unavailable.
    pub fn for_batch(&self) -> StoreError {
        StoreError::Batch {
            reason: self.to_string(),
            unavailable: self.is_unavailable(),
        }
    }

    /// True when the database cannot take the request now but may later: disk full, I/O
    /// error, read-only or missing file, locked. The API answers these with `503
    /// store_unavailable` (not `500`), and the call event writer retries them.
    pub fn is_unavailable(&self) -> bool {
        use rusqlite::ErrorCode as C;
        match self {
            StoreError::Poisoned
            | StoreError::Stopped
            | StoreError::Pool(_)
            | StoreError::PostgresUnreachable { .. } => true,
            StoreError::Postgres(e) => postgres_unavailable(e),
            StoreError::Batch { unavailable, .. } => *unavailable,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                C::DiskFull
                    | C::SystemIoFailure
                    | C::CannotOpen
                    | C::ReadOnly
                    | C::DatabaseBusy
                    | C::DatabaseLocked
                    | C::FileLockingProtocolFailed
                    | C::OutOfMemory
                    | C::NotADatabase
                    | C::DatabaseCorrupt
            ),
            _ => false,
        }
    }

    /// True for a unique or primary-key violation reported by SQLite.
    pub(crate) fn is_unique_violation(err: &rusqlite::Error) -> bool {
        matches!(
            err,
            rusqlite::Error::SqliteFailure(e, _)
                if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        )
    }

    /// True for a foreign-key violation reported by SQLite.
    pub(crate) fn is_foreign_key_violation(err: &rusqlite::Error) -> bool {
        matches!(
            err,
            rusqlite::Error::SqliteFailure(e, _)
                if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY
        )
    }
}

/// Whether a PostgreSQL error says the database cannot take the request now (the connection
/// is gone, the server shuts down, is out of resources, or a transaction must be retried).
fn postgres_unavailable(e: &tokio_postgres::Error) -> bool {
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection is gone, or it failed on I/O (a time-out included);
        // not an error of the request itself (a value that cannot be converted).
        return e.is_closed()
            || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    };
    let class = &code.code()[..2.min(code.code().len())];
    // 08: connection exception; 53: insufficient resources; 57: operator intervention
    // (shutdown); 40: transaction rollback (serialization failure, deadlock).
    matches!(class, "08" | "53" | "57" | "40")
}

/// A PostgreSQL error with the server's own message (tokio-postgres says only `db error`
/// and keeps the message in its source).
fn postgres_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// `ms` since the Unix epoch as `2026-12-03T12:26:09Z` (UTC, whole seconds).
fn utc_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = crate::calendar::civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        t / 3600,
        t % 3600 / 60,
        t % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_id_in_use_says_until_when_in_utc_and_what_to_do() {
        let e = StoreError::NodeIdInUse {
            id: "node-a".into(),
            until_ms: 1_796_300_769_474,
        };
        assert_eq!(
            e.to_string(),
            "node.id \"node-a\" is in use by another running node (its lease holds until \
             2026-12-03T12:26:09Z); give each node its own [node] id"
        );
    }
}
