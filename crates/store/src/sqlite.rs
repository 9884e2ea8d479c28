//! [`SqliteStore`]: the store on an embedded SQLite database ([`BlockingStore`], run on the store threads of [`crate::StoreThreads`]).
//!
//! One connection behind a mutex, in WAL mode with `synchronous=NORMAL` (a power loss may lose
//! the last transactions but never corrupts the file), foreign keys on, and a busy timeout for
//! other processes (backups, `sqlite3` shells) that open the same file.
//!
//! # Migrations
//!
//! [`MIGRATIONS`] is an ordered list of SQL scripts; migration *n* (1-based) brings the schema
//! to version *n*. At open, every migration above the version recorded in `schema_version` is
//! applied, each in its own transaction together with its version row. A database whose
//! version is above the last migration (written by a newer build) is refused rather than
//! guessed at. Migrations are only ever appended, never edited.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::{Type, Value};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row, Transaction};

use crate::error::StoreError;
use crate::model::{
    Account, AccountLimits, Admission, AdmitRequest, ApiKey, Binding, CallFilter, CallRecord,
    CallStatus, CallWrite, Device, IdempotencyRecord, NodeLease, Number, OutboxEntry, OutboxState,
    PublishableKey, RateBucket, TimelineEntry, Transport, Trunk, TrunkRouting, UnixMs, UnixSecs,
    User,
};
use crate::provision::{
    Change, ConfigIssue, ProvisionReport, Provisioning, TrunkSpec, DEVICE_PREFIX,
};
use crate::secret::{api_secret_hash, constant_time_eq, ha1_md5, ha1_sha256, Secret};
use crate::typeid::TypeId;
use crate::BlockingStore;

/// The schema, one script per version.
pub const MIGRATIONS: &[&str] = &[
    // 1: everything of issue 3.
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

CREATE TABLE accounts (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    region           TEXT NOT NULL,
    webhook_secret   TEXT NOT NULL,
    allowed_prefixes TEXT NOT NULL            -- JSON array of strings
);

CREATE TABLE api_keys (
    key         TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL UNIQUE          -- hex HMAC-SHA256(meta.api_secret_pepper, secret)
);
CREATE INDEX api_keys_account ON api_keys(account_id);

CREATE TABLE users (
    id         TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    extension  TEXT,
    agent_id   INTEGER,
    UNIQUE (account_id, extension),
    UNIQUE (account_id, agent_id)
);

CREATE TABLE devices (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    username   TEXT NOT NULL UNIQUE,
    realm      TEXT NOT NULL,
    ha1_md5    TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL
);
CREATE INDEX devices_user ON devices(user_id);

CREATE TABLE numbers (
    number        TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    owner_user_id TEXT REFERENCES users(id) ON DELETE SET NULL
);
CREATE INDEX numbers_account ON numbers(account_id);

CREATE TABLE trunks (
    name        TEXT PRIMARY KEY,
    account_id  TEXT REFERENCES accounts(id) ON DELETE CASCADE,
    address     TEXT NOT NULL,
    transport   TEXT NOT NULL CHECK (transport IN ('udp', 'tcp')),
    username    TEXT,
    password    TEXT,
    emergency   INTEGER NOT NULL DEFAULT 0,
    dial_prefix TEXT,
    from_domain TEXT
);

CREATE TABLE bindings (
    device_username TEXT NOT NULL
        REFERENCES devices(username) ON DELETE CASCADE ON UPDATE CASCADE,
    contact    TEXT NOT NULL,
    source     TEXT NOT NULL,
    transport  TEXT NOT NULL,
    local      TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    q          REAL,
    call_id    TEXT NOT NULL,
    cseq       INTEGER NOT NULL,
    instance   TEXT,
    reg_id     INTEGER,
    user_agent TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (device_username, contact)
);
CREATE INDEX bindings_expiry ON bindings(expires_at);

CREATE TABLE calls (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL,
    user_id        TEXT,
    request_id     TEXT,
    status         TEXT NOT NULL,
    dial_string    TEXT NOT NULL,
    destination    TEXT,
    caller_id      TEXT,
    callback_url   TEXT,
    end_leg        TEXT,
    sip_code       INTEGER,
    created_at_ms  INTEGER NOT NULL,
    answered_at_ms INTEGER,
    ended_at_ms    INTEGER,
    metadata       TEXT NOT NULL,             -- JSON
    legs           TEXT NOT NULL,             -- JSON
    stats          TEXT NOT NULL              -- JSON
);
CREATE INDEX calls_log ON calls(account_id, created_at_ms DESC, id DESC);
CREATE INDEX calls_request ON calls(account_id, request_id) WHERE request_id IS NOT NULL;

CREATE TABLE call_timeline (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    at_ms   INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    leg     TEXT,
    detail  TEXT NOT NULL                     -- JSON
);
CREATE INDEX call_timeline_call ON call_timeline(call_id, at_ms, id);

CREATE TABLE callback_outbox (
    event_id           TEXT PRIMARY KEY,
    call_id            TEXT NOT NULL,
    account_id         TEXT NOT NULL,
    seq                INTEGER NOT NULL,
    url                TEXT NOT NULL,
    body               TEXT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'abandoned')),
    attempts           INTEGER NOT NULL,
    next_attempt_at_ms INTEGER NOT NULL,
    last_error         TEXT,
    created_at_ms      INTEGER NOT NULL,
    UNIQUE (call_id, seq)
);
CREATE INDEX callback_outbox_due ON callback_outbox(state, next_attempt_at_ms);
CREATE INDEX callback_outbox_call ON callback_outbox(call_id, state, seq);

CREATE TABLE idempotency (
    account_id      TEXT NOT NULL,
    key             TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    response_status INTEGER NOT NULL,
    response_body   TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (account_id, key)
);
CREATE INDEX idempotency_created ON idempotency(created_at_ms);
"#,
    // 2: per-account call limits (SPEC §9.1); existing accounts get the former fixed values.
    r#"
ALTER TABLE accounts ADD COLUMN calls_per_second REAL NOT NULL DEFAULT 5;
ALTER TABLE accounts ADD COLUMN burst INTEGER NOT NULL DEFAULT 20;
ALTER TABLE accounts ADD COLUMN max_concurrent INTEGER NOT NULL DEFAULT 100;
"#,
    // 3: dialing permissions by country and number type (issue 23). Existing accounts get
    // the defaults of a new one: their own region, the four costly types blocked.
    r#"
ALTER TABLE accounts ADD COLUMN allowed_countries TEXT NOT NULL DEFAULT '[]';  -- JSON array
ALTER TABLE accounts ADD COLUMN blocked_number_types TEXT NOT NULL
    DEFAULT '["premium_rate","shared_cost","personal_number","uan"]';          -- JSON array
UPDATE accounts SET allowed_countries = '["' || region || '"]';
"#,
    // 4: nodes sharing one database (issue 13): the node that owns each call, and the
    // nodes' leases.
    r#"
ALTER TABLE calls ADD COLUMN node_id TEXT;
CREATE INDEX calls_node ON calls(node_id, status);
CREATE TABLE nodes (
    node_id       TEXT PRIMARY KEY,
    instance      TEXT NOT NULL,
    api_url       TEXT NOT NULL,
    until_ms      INTEGER NOT NULL,
    taken_over_by TEXT
);
"#,
    // 5: trunk failover, health checks and limits (SPEC §9.8, issue 22); existing trunks get
    // the defaults.
    r#"
ALTER TABLE trunks ADD COLUMN priority INTEGER NOT NULL DEFAULT 10;
ALTER TABLE trunks ADD COLUMN invite_timeout_ms INTEGER NOT NULL DEFAULT 2000;
ALTER TABLE trunks ADD COLUMN failover_codes TEXT NOT NULL DEFAULT '408,500,502,503,504';
ALTER TABLE trunks ADD COLUMN options_interval_secs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE trunks ADD COLUMN down_after INTEGER NOT NULL DEFAULT 3;
ALTER TABLE trunks ADD COLUMN up_after INTEGER NOT NULL DEFAULT 2;
ALTER TABLE trunks ADD COLUMN max_calls INTEGER;
ALTER TABLE trunks ADD COLUMN calls_per_second INTEGER;
"#,
    // 6: the browser side (SPEC §9.3): publishable keys, and the platform an account is
    // connected to.
    r#"
ALTER TABLE accounts ADD COLUMN platform TEXT;
CREATE TABLE publishable_keys (
    key           TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    source        TEXT NOT NULL,                 -- 'config' | 'api'
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX publishable_keys_account ON publishable_keys(account_id);
"#,
    // 7: calls users ask for (SPEC §9.4, §9.7): the account's default callback URL for calls
    // not placed through the API, its confirm and record defaults; a call's direction and
    // its recording.
    r#"
ALTER TABLE accounts ADD COLUMN callback_url TEXT;
ALTER TABLE accounts ADD COLUMN confirm_calls INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN record_calls INTEGER NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN direction TEXT NOT NULL DEFAULT 'outbound';
ALTER TABLE calls ADD COLUMN recording TEXT NOT NULL DEFAULT 'null';   -- JSON
"#,
    // 8: secure trunks (SPEC §9.5): `tls` joins the transports, and `srtp` says how a trunk's
    // media is encrypted. SQLite cannot change a CHECK in place: the table is rebuilt.
    r#"
CREATE TABLE trunks_v8 (
    name        TEXT PRIMARY KEY,
    account_id  TEXT REFERENCES accounts(id) ON DELETE CASCADE,
    address     TEXT NOT NULL,
    transport   TEXT NOT NULL CHECK (transport IN ('udp', 'tcp', 'tls')),
    username    TEXT,
    password    TEXT,
    emergency   INTEGER NOT NULL DEFAULT 0,
    dial_prefix TEXT,
    from_domain TEXT,
    priority INTEGER NOT NULL DEFAULT 10,
    invite_timeout_ms INTEGER NOT NULL DEFAULT 2000,
    failover_codes TEXT NOT NULL DEFAULT '408,500,502,503,504',
    options_interval_secs INTEGER NOT NULL DEFAULT 0,
    down_after INTEGER NOT NULL DEFAULT 3,
    up_after INTEGER NOT NULL DEFAULT 2,
    max_calls INTEGER,
    calls_per_second INTEGER,
    srtp TEXT NOT NULL DEFAULT 'none' CHECK (srtp IN ('none', 'sdes'))
);
INSERT INTO trunks_v8 (name, account_id, address, transport, username, password, emergency,
    dial_prefix, from_domain, priority, invite_timeout_ms, failover_codes,
    options_interval_secs, down_after, up_after, max_calls, calls_per_second)
SELECT name, account_id, address, transport, username, password, emergency,
    dial_prefix, from_domain, priority, invite_timeout_ms, failover_codes,
    options_interval_secs, down_after, up_after, max_calls, calls_per_second
FROM trunks;
DROP TABLE trunks;
ALTER TABLE trunks_v8 RENAME TO trunks;
"#,
    // 9: callbacks claimed for delivery: the node holding a callback and until
    // when. One node uses an SQLite file, but the claim keeps the dispatcher's rules the
    // same on both backends.
    r#"
ALTER TABLE callback_outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE callback_outbox ADD COLUMN claimed_until_ms INTEGER;
"#,
    // 10: the RFC 3327 Path of a binding (a JSON array of the header values as received).
    r#"
ALTER TABLE bindings ADD COLUMN path TEXT NOT NULL DEFAULT '[]';
"#,
    // 11: an account's live calls found without reading its call history: the count that
    // admits a new call (`admit_call`) had scanned every call the account ever made. The
    // index's condition is [`LIVE_STATUSES`], spelled as the query spells it (since 14,
    // [`LIVE_CONDITION`]).
    r#"
CREATE INDEX calls_live ON calls(account_id) WHERE status IN ('queued', 'ringing', 'in-progress');
"#,
    // 12: each account's token bucket for its call rate (`calls_per_second`, `burst`), taken
    // in the same transaction as the call's admission, so the rate holds for every node
    // sharing the database. No row: the bucket is full.
    r#"
CREATE TABLE rate_buckets (
    account_id TEXT PRIMARY KEY,           -- as calls.account_id: no foreign key
    tokens     REAL NOT NULL,
    at_ms      INTEGER NOT NULL
);
"#,
    // 13: the timeline entries one batch of call events writes for one call share a row: the
    // first in the row's own columns, the others, in order, in `more` (a JSON array of
    // `{"at_ms", "kind", "leg", "detail"}`; NULL: none). See [`apply_writes_on`]. A row's
    // `at_ms` is its first entry's time only: SQL that filters on it misses the others.
    r#"
ALTER TABLE call_timeline ADD COLUMN more TEXT;
"#,
    // 14: `calls_live`'s condition as comparisons ([`LIVE_CONDITION`]): with `status IN`
    // a list of three, every insert and update of a call built a temporary b-tree for the
    // list, twice for an update (the old row and the new).
    r#"
DROP INDEX calls_live;
CREATE INDEX calls_live ON calls(account_id)
    WHERE (status = 'queued' OR status = 'ringing' OR status = 'in-progress');
"#,
    // 15: a call's timeline rows found by the call alone: they are read in the order written
    // (`id`, which every index entry ends with), and a row's `at_ms` is only its first
    // entry's, so the index had no use for it; its entries are smaller without it.
    r#"
DROP INDEX call_timeline_call;
CREATE INDEX call_timeline_call ON call_timeline(call_id);
"#,
    // 16: each account's live calls counted as they come and go, by triggers on `calls`, in
    // the same transactions: the admission reads one row instead of counting the account's
    // live calls (all of them, on every admission). `calls_live` had no other use. A
    // status is live as in [`LIVE_CONDITION`] (comparisons: an `IN` list would build a
    // temporary b-tree each time a trigger's condition is evaluated).
    r#"
CREATE TABLE live_calls (
    account_id TEXT PRIMARY KEY,           -- as calls.account_id: no foreign key
    n          INTEGER NOT NULL
);
INSERT INTO live_calls (account_id, n)
    SELECT account_id, COUNT(*) FROM calls
     WHERE (status = 'queued' OR status = 'ringing' OR status = 'in-progress')
     GROUP BY account_id;
CREATE TRIGGER live_calls_insert AFTER INSERT ON calls
    WHEN NEW.status = 'queued' OR NEW.status = 'ringing' OR NEW.status = 'in-progress'
BEGIN
    INSERT INTO live_calls (account_id, n) VALUES (NEW.account_id, 1)
        ON CONFLICT (account_id) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER live_calls_update AFTER UPDATE OF status ON calls
    WHEN (OLD.status = 'queued' OR OLD.status = 'ringing' OR OLD.status = 'in-progress')
      <> (NEW.status = 'queued' OR NEW.status = 'ringing' OR NEW.status = 'in-progress')
BEGIN
    INSERT INTO live_calls (account_id, n)
        VALUES (NEW.account_id,
                CASE WHEN NEW.status = 'queued' OR NEW.status = 'ringing'
                          OR NEW.status = 'in-progress' THEN 1 ELSE 0 END)
        ON CONFLICT (account_id) DO UPDATE SET n = n + CASE
            WHEN NEW.status = 'queued' OR NEW.status = 'ringing'
                 OR NEW.status = 'in-progress' THEN 1 ELSE -1 END;
END;
CREATE TRIGGER live_calls_delete AFTER DELETE ON calls
    WHEN OLD.status = 'queued' OR OLD.status = 'ringing' OR OLD.status = 'in-progress'
BEGIN
    UPDATE live_calls SET n = n - 1 WHERE account_id = OLD.account_id;
END;
DROP INDEX calls_live;
"#,
    // 17: fewer pages written per commit (a commit writes every page it touched to the WAL,
    // 4 KB each). `call_timeline` without AUTOINCREMENT: its rows are read in `id` order
    // within a call, and a new rowid is always above every existing one, so the order is
    // the same, without the `sqlite_sequence` page each insert had to write. `calls_log`
    // ascending: a new call's entry lands at the end of its account's run instead of the
    // front, where SQLite splits pages on nearly every insert; the call log reads it
    // backwards (`ORDER BY created_at_ms DESC, id DESC`) with no sort.
    r#"
CREATE TABLE call_timeline_17 (
    id      INTEGER PRIMARY KEY,
    call_id TEXT NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    at_ms   INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    leg     TEXT,
    detail  TEXT NOT NULL,                    -- JSON
    more    TEXT                              -- JSON (migration 13)
);
INSERT INTO call_timeline_17 (id, call_id, at_ms, kind, leg, detail, more)
    SELECT id, call_id, at_ms, kind, leg, detail, more FROM call_timeline ORDER BY id;
DROP TABLE call_timeline;
ALTER TABLE call_timeline_17 RENAME TO call_timeline;
CREATE INDEX call_timeline_call ON call_timeline(call_id);
DELETE FROM sqlite_sequence WHERE name = 'call_timeline';
DROP INDEX calls_log;
CREATE INDEX calls_log ON calls(account_id, created_at_ms, id);
"#,
    // 18: a call's timeline rows found through the call. `calls.timeline_rows` lists their
    // ids (comma-separated, in the order written), set by the statement that writes the
    // call's record in the same batch ([`apply_writes_on`]). The `call_timeline_call` index
    // it replaces put each new row's entry at its call's place among all calls' entries: a
    // page of its own for most calls in a batch, 23 % of the pages a batch's commit wrote
    // to the WAL (`docs/benchmarks.md`, "A call's timeline rows listed in its record").
    // Deleting a call (the server never does) finds its timeline rows by a scan, for the
    // foreign key's cascade.
    r#"
ALTER TABLE calls ADD COLUMN timeline_rows TEXT;
UPDATE calls SET timeline_rows =
    (SELECT group_concat(id, ',') FROM call_timeline t WHERE t.call_id = calls.id);
DROP INDEX call_timeline_call;
"#,
    // 19: `bindings_expiry` dropped. Every refresh moved its binding's entry in it (a
    // refresh sets `expires_at`: an index entry deleted, another inserted) and every new
    // contact added one, while it served only the sweep of expired bindings (once a minute)
    // and the count of bindings (at each metrics scrape), which now read the whole table: at
    // 20,000 bindings a refresh's write went from 3.7-5.8 to 2.4 µs, a new contact's from
    // 31-35 to 20-23 µs, and a sweep from 3 µs to about 1.5 ms (`store_bench`,
    // `docs/benchmarks.md`).
    r#"
DROP INDEX bindings_expiry;
"#,
    // 20: `calls_node` dropped. Its key held each call's status, so every status change (a
    // call is queued, rings, is answered and ends: three changes and the insert) moved the
    // call's entry from one status's run to another's, and the journal's commits wrote about
    // three of its pages each (`docs/benchmarks.md`), while on a store of this node alone it
    // served only the start-up's search for the calls a previous run left unfinished, which
    // now reads the table (about 0.06 s for 200,000 calls in the page cache). PostgreSQL,
    // where nodes take over each other's calls while running, keeps its index.
    r#"
DROP INDEX calls_node;
"#,
];

/// The statuses of a call not yet ended, as an SQL list: PostgreSQL's `calls_live` index
/// condition (`status IN (...)`) and its admission count. SQLite counts live calls in
/// `live_calls` since migration 16 ([`LIVE_CONDITION`]).
pub(crate) const LIVE_STATUSES: &str = "'queued', 'ringing', 'in-progress'";

/// A live status as SQL comparisons, as the `live_calls` triggers spell it (and the
/// `calls_live` index did, migrations 14-15); the tests check it against [`CallStatus`].
#[cfg(test)]
const LIVE_CONDITION: &str = "(status = 'queued' OR status = 'ringing' OR status = 'in-progress')";

/// The account's live calls at admission: one row, kept by the `live_calls` triggers.
const LIVE_COUNT: &str = "SELECT n FROM live_calls WHERE account_id = ?1";

const PEPPER_KEY: &str = "api_secret_pepper";
const PEPPER_LEN: usize = 32;

/// Where a `store.url` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A database file.
    File(PathBuf),
    /// A private in-memory database (tests, `demo`).
    Memory,
}

impl Location {
    /// Parses `sqlite://PATH`, `sqlite:PATH`, `sqlite::memory:`, `:memory:` or a plain path.
    pub fn parse(url: &str) -> Result<Location, StoreError> {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return Err(StoreError::PostgresUnavailable {
                url: redact_url(url),
            });
        }
        let rest = if let Some(rest) = url.strip_prefix("sqlite://") {
            rest
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            rest
        } else if let Some((scheme, _)) = url.split_once("://") {
            return Err(StoreError::UnsupportedScheme {
                scheme: scheme.to_owned(),
            });
        } else {
            url
        };
        match rest {
            ":memory:" => Ok(Location::Memory),
            "" => Err(StoreError::Invalid {
                field: "store.url",
                reason: "no database path".to_owned(),
            }),
            path => Ok(Location::File(PathBuf::from(path))),
        }
    }
}

/// `postgres://user:password@host/db` with the password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The SQLite implementation of [`BlockingStore`].
pub struct SqliteStore {
    conn: Mutex<Connection>,
    location: Location,
    pepper: Vec<u8>,
    /// Binding refreshes not yet written, by device, then contact (see
    /// [`crate::Store::refresh_binding`]); reads of bindings see them.
    refreshes: Mutex<Refreshes>,
}

/// The refreshes waiting in memory: by device (aHash: one lookup on every refresh's path),
/// then by contact in a short list (a device has one or a few contacts: a search of the list
/// costs less than a table of its own).
type Refreshes = HashMap<String, Vec<(String, Refresh)>, ahash::RandomState>;

/// The refresh waiting for `contact` among a device's.
fn refresh_of<'a>(of_device: &'a [(String, Refresh)], contact: &str) -> Option<&'a Refresh> {
    of_device
        .iter()
        .find_map(|(c, f)| (c == contact).then_some(f))
}

/// What a refresh changes of a binding (the contract of [`crate::Store::refresh_binding`]),
/// kept until it is written: the rest of the binding is as its row holds it.
#[derive(Debug, Clone)]
struct Refresh {
    expires_at: UnixSecs,
    call_id: String,
    cseq: u32,
    source: String,
    updated_at: UnixSecs,
}

impl Refresh {
    fn of(b: &Binding) -> Refresh {
        Refresh {
            expires_at: b.expires_at,
            call_id: b.call_id.clone(),
            cseq: b.cseq,
            source: b.source.clone(),
            updated_at: b.updated_at,
        }
    }

    /// `row` as this refresh leaves it.
    fn apply(&self, row: &mut Binding) {
        row.expires_at = self.expires_at;
        row.call_id.clone_from(&self.call_id);
        row.cseq = self.cseq;
        row.source.clone_from(&self.source);
        row.updated_at = self.updated_at;
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Err(e) = self.flush_refreshes() {
            tracing::warn!(error = %e, "binding refreshes not written at close");
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database named by `url` (see [`Location::parse`]) and
    /// runs pending migrations.
    pub fn open(url: &str) -> Result<SqliteStore, StoreError> {
        let location = Location::parse(url)?;
        let conn = match &location {
            Location::File(path) => Connection::open(path)?,
            Location::Memory => Connection::open_in_memory()?,
        };
        SqliteStore::init(conn, location)
    }

    /// Opens the database file at `path`.
    pub fn open_path(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::init(Connection::open(path)?, Location::File(path.to_owned()))
    }

    /// A fresh in-memory database.
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        SqliteStore::init(Connection::open_in_memory()?, Location::Memory)
    }

    fn init(mut conn: Connection, location: Location) -> Result<SqliteStore, StoreError> {
        conn.busy_timeout(Duration::from_secs(5))?;
        // Every statement of the call and registration paths stays prepared.
        conn.set_prepared_statement_cache_capacity(128);
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if matches!(location, Location::File(_)) && !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(journal_mode = %mode, "SQLite did not switch to WAL mode");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        let pepper = load_or_create_pepper(&mut conn)?;
        tracing::info!(?location, version = MIGRATIONS.len(), "store opened");
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            location,
            pepper,
            refreshes: Mutex::new(Refreshes::default()),
        })
    }

    /// Forgets the refreshes waiting in memory of `device` (of its `contact` only, when
    /// given): a write or a removal of those bindings supersedes them.
    fn forget_refresh(&self, device: &str, contact: Option<&str>) {
        if let Ok(mut r) = self.refreshes.lock() {
            match (contact, r.get_mut(device)) {
                (_, None) => {}
                (None, Some(_)) => {
                    r.remove(device);
                }
                (Some(c), Some(of_device)) => {
                    of_device.retain(|(other, _)| other != c);
                    if of_device.is_empty() {
                        r.remove(device);
                    }
                }
            }
        }
    }

    /// `rows` read from the database (expired ones too) with the refreshes waiting in
    /// memory laid over them, then those unexpired at `now`: a row with a waiting refresh is
    /// shown refreshed, also when its row had expired in the database in the instant
    /// before its flush.
    fn with_refreshes(&self, mut rows: Vec<Binding>, now: UnixSecs) -> Vec<Binding> {
        if let Ok(r) = self.refreshes.lock() {
            if !r.is_empty() {
                for row in rows.iter_mut() {
                    if let Some(f) = r
                        .get(&row.device_username)
                        .and_then(|of_device| refresh_of(of_device, &row.contact))
                    {
                        f.apply(row);
                    }
                }
            }
        }
        rows.retain(|b| b.expires_at > now);
        rows
    }

    /// Where this store lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        let conn = self.conn()?;
        current_version(&conn)
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    fn secret_hash(&self, secret: &str) -> String {
        api_secret_hash(&self.pepper, secret)
    }
}

fn current_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version       INTEGER PRIMARY KEY,
             applied_at_ms INTEGER NOT NULL
         );",
    )?;
    let found = current_version(conn)?;
    let supported = MIGRATIONS.len() as i64;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    let mut applied = 0;
    for (version, sql) in (1i64..).zip(MIGRATIONS.iter()).skip(found as usize) {
        tracing::info!(version, "applying store migration");
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        exec(
            &tx,
            "INSERT INTO schema_version (version, applied_at_ms) VALUES (?1, ?2)",
            params![version, wall_clock_ms()],
        )?;
        tx.commit()?;
        tracing::info!(version, "store migration applied");
        applied += 1;
    }
    if applied > 0 {
        // A migration that rewrites a table (17 the timeline, 18 every call's row) leaves a
        // WAL as large as that table; it is given back now rather than kept at that size.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    Ok(())
}

fn load_or_create_pepper(conn: &mut Connection) -> Result<Vec<u8>, StoreError> {
    let existing: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [PEPPER_KEY], |r| {
            r.get(0)
        })
        .optional()?;
    if let Some(pepper) = existing {
        return Ok(pepper);
    }
    let pepper: [u8; PEPPER_LEN] = rand::random();
    exec(
        conn,
        "INSERT INTO meta (key, value) VALUES (?1, ?2)",
        params![PEPPER_KEY, pepper.as_slice()],
    )?;
    Ok(pepper.to_vec())
}

/// Wall-clock time for bookkeeping columns (`applied_at_ms`), never for protocol decisions.
pub(crate) fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// ----- row mapping ------------------------------------------------------------------------

fn conversion_error(
    idx: usize,
    err: impl std::error::Error + Send + Sync + 'static,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(err))
}

fn json_col<T: serde::de::DeserializeOwned>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text).map_err(|e| conversion_error(idx, e))
}

const ACCOUNT_COLS: &str = "id, name, region, webhook_secret, allowed_prefixes, \
     allowed_countries, blocked_number_types, calls_per_second, burst, max_concurrent, platform, \
     callback_url, confirm_calls, record_calls";

fn account_from_row(row: &Row<'_>) -> rusqlite::Result<Account> {
    let prefixes: String = row.get(4)?;
    let countries: String = row.get(5)?;
    let blocked: String = row.get(6)?;
    Ok(Account {
        id: row.get(0)?,
        name: row.get(1)?,
        region: row.get(2)?,
        webhook_secret: Secret::new(row.get::<_, String>(3)?),
        allowed_prefixes: serde_json::from_str(&prefixes).map_err(|e| conversion_error(4, e))?,
        allowed_countries: serde_json::from_str(&countries).map_err(|e| conversion_error(5, e))?,
        blocked_number_types: serde_json::from_str(&blocked).map_err(|e| conversion_error(6, e))?,
        limits: AccountLimits {
            calls_per_second: row.get(7)?,
            burst: row.get(8)?,
            max_concurrent: row.get(9)?,
        },
        platform: row.get(10)?,
        callback_url: row.get(11)?,
        confirm_calls: row.get(12)?,
        record_calls: row.get(13)?,
    })
}

const PK_COLS: &str = "key, account_id, source, created_at_ms";

fn publishable_key_from_row(row: &Row<'_>) -> rusqlite::Result<PublishableKey> {
    Ok(PublishableKey {
        key: row.get(0)?,
        account_id: row.get(1)?,
        source: row.get(2)?,
        created_at_ms: row.get(3)?,
    })
}

const USER_COLS: &str = "id, account_id, name, extension, agent_id";

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        account_id: row.get(1)?,
        name: row.get(2)?,
        extension: row.get(3)?,
        agent_id: row.get(4)?,
    })
}

const DEVICE_COLS: &str = "id, user_id, username, realm, ha1_md5, ha1_sha256";

fn device_from_row(row: &Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        id: row.get(0)?,
        user_id: row.get(1)?,
        username: row.get(2)?,
        realm: row.get(3)?,
        ha1_md5: Secret::new(row.get::<_, String>(4)?),
        ha1_sha256: Secret::new(row.get::<_, String>(5)?),
    })
}

const NUMBER_COLS: &str = "number, account_id, owner_user_id";

fn number_from_row(row: &Row<'_>) -> rusqlite::Result<Number> {
    Ok(Number {
        number: row.get(0)?,
        account_id: row.get(1)?,
        owner_user_id: row.get(2)?,
    })
}

const TRUNK_COLS: &str =
    "name, account_id, address, transport, username, password, emergency, dial_prefix, from_domain, \
     priority, invite_timeout_ms, failover_codes, options_interval_secs, down_after, up_after, \
     max_calls, calls_per_second, srtp";

fn trunk_from_row(row: &Row<'_>) -> rusqlite::Result<Trunk> {
    let transport: String = row.get(3)?;
    Ok(Trunk {
        name: row.get(0)?,
        account_id: row.get(1)?,
        address: row.get(2)?,
        transport: transport.parse().map_err(|e| conversion_error(3, e))?,
        username: row.get(4)?,
        password: row.get::<_, Option<String>>(5)?.map(Secret::new),
        emergency: row.get(6)?,
        dial_prefix: row.get(7)?,
        from_domain: row.get(8)?,
        routing: TrunkRouting {
            priority: row.get(9)?,
            invite_timeout_ms: row.get(10)?,
            failover_codes: {
                let text: String = row.get(11)?;
                TrunkRouting::parse_failover_codes(&text)
                    .ok_or_else(|| conversion_error(11, UnknownFailoverCodes(text)))?
            },
            options_interval_secs: row.get(12)?,
            down_after: row.get(13)?,
            up_after: row.get(14)?,
            max_calls: row.get(15)?,
            calls_per_second: row.get(16)?,
        },
        srtp: {
            let text: String = row.get(17)?;
            text.parse().map_err(|e| conversion_error(17, e))?
        },
    })
}

/// A stored `failover_codes` that is not a list of SIP status codes.
#[derive(Debug, thiserror::Error)]
#[error("failover_codes {0:?} is not a list of SIP status codes")]
struct UnknownFailoverCodes(String);

const BINDING_COLS: &str = "b.device_username, d.user_id, b.contact, b.source, b.transport, \
     b.local, b.expires_at, b.q, b.call_id, b.cseq, b.instance, b.reg_id, b.user_agent, \
     b.updated_at, b.path";

/// A binding's Path as stored (a JSON array); an unreadable one is no Path.
pub(crate) fn path_from_json(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

pub(crate) fn path_to_json(path: &[String]) -> String {
    serde_json::to_string(path).unwrap_or_else(|_| "[]".to_owned())
}

fn binding_from_row(row: &Row<'_>) -> rusqlite::Result<Binding> {
    Ok(Binding {
        device_username: row.get(0)?,
        user_id: row.get(1)?,
        contact: row.get(2)?,
        source: row.get(3)?,
        transport: row.get(4)?,
        local: row.get(5)?,
        expires_at: row.get(6)?,
        q: row.get::<_, Option<f64>>(7)?.map(|q| q as f32),
        call_id: row.get(8)?,
        cseq: row.get(9)?,
        instance: row.get(10)?,
        reg_id: row.get(11)?,
        user_agent: row.get(12)?,
        updated_at: row.get(13)?,
        path: path_from_json(&row.get::<_, String>(14)?),
    })
}

const CALL_COLS: &str = "id, account_id, user_id, request_id, status, dial_string, destination, \
     caller_id, callback_url, end_leg, sip_code, created_at_ms, answered_at_ms, ended_at_ms, \
     metadata, legs, stats, node_id, direction, recording";

fn call_from_row(row: &Row<'_>) -> rusqlite::Result<CallRecord> {
    let status: String = row.get(4)?;
    Ok(CallRecord {
        id: row.get(0)?,
        account_id: row.get(1)?,
        user_id: row.get(2)?,
        request_id: row.get(3)?,
        status: status
            .parse::<CallStatus>()
            .map_err(|e| conversion_error(4, e))?,
        dial_string: row.get(5)?,
        destination: row.get(6)?,
        caller_id: row.get(7)?,
        callback_url: row.get(8)?,
        end_leg: row.get(9)?,
        sip_code: row.get(10)?,
        created_at_ms: row.get(11)?,
        answered_at_ms: row.get(12)?,
        ended_at_ms: row.get(13)?,
        metadata: json_col(row, 14)?,
        legs: json_col(row, 15)?,
        stats: json_col(row, 16)?,
        node_id: row.get(17)?,
        direction: row.get(18)?,
        recording: json_col(row, 19)?,
    })
}

const OUTBOX_COLS: &str = "event_id, call_id, account_id, seq, url, body, state, attempts, \
     next_attempt_at_ms, last_error, created_at_ms";

#[derive(Debug, thiserror::Error)]
#[error("unknown outbox state {0:?}")]
struct UnknownOutboxState(String);

fn outbox_from_row(row: &Row<'_>) -> rusqlite::Result<OutboxEntry> {
    let state: String = row.get(6)?;
    Ok(OutboxEntry {
        event_id: row.get(0)?,
        call_id: row.get(1)?,
        account_id: row.get(2)?,
        seq: row.get(3)?,
        url: row.get(4)?,
        body: row.get(5)?,
        state: OutboxState::from_sql(&state)
            .ok_or_else(|| conversion_error(6, UnknownOutboxState(state.clone())))?,
        attempts: row.get(7)?,
        next_attempt_at_ms: row.get(8)?,
        last_error: row.get(9)?,
        created_at_ms: row.get(10)?,
    })
}

fn idempotency_from_row(row: &Row<'_>) -> rusqlite::Result<IdempotencyRecord> {
    Ok(IdempotencyRecord {
        account_id: row.get(0)?,
        key: row.get(1)?,
        request_hash: row.get(2)?,
        response_status: row.get(3)?,
        response_body: row.get(4)?,
        created_at_ms: row.get(5)?,
    })
}

/// Maps a constraint violation of an insert to a typed error.
fn insert_error(err: rusqlite::Error, kind: &'static str, id: &str) -> StoreError {
    if StoreError::is_unique_violation(&err) {
        StoreError::AlreadyExists {
            kind,
            id: id.to_owned(),
        }
    } else if StoreError::is_foreign_key_violation(&err) {
        StoreError::NotFound {
            kind: "referenced row",
            id: id.to_owned(),
        }
    } else {
        StoreError::Sqlite(err)
    }
}

pub(crate) fn not_found(kind: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        id: id.to_owned(),
    }
}

pub(crate) fn validate_account(account: &Account) -> Result<(), StoreError> {
    let invalid = |field: &'static str, reason: String| StoreError::Invalid { field, reason };
    if account.name.trim().is_empty() {
        return Err(invalid("account.name", "must not be empty".to_owned()));
    }
    if !crate::provision::is_iso3166_alpha2(&account.region) {
        return Err(invalid(
            "account.region",
            format!("{:?} is not an ISO 3166-1 alpha-2 code", account.region),
        ));
    }
    if let Some(c) = account
        .allowed_countries
        .iter()
        .find(|c| !crate::provision::is_iso3166_alpha2(c))
    {
        return Err(invalid(
            "account.allowed_countries",
            format!("{c:?} is not an ISO 3166-1 alpha-2 code"),
        ));
    }
    if let Some(p) = account
        .allowed_prefixes
        .iter()
        .find(|p| !crate::e164::is_e164_prefix(p))
    {
        return Err(invalid(
            "account.allowed_prefixes",
            format!("{p:?} is not an E.164 prefix (\"+\" then up to 15 digits)"),
        ));
    }
    Ok(())
}

pub(crate) fn validate_user(user: &User) -> Result<(), StoreError> {
    TypeId::parse_with_prefix(&user.id, crate::provision::USER_PREFIX).map_err(|e| {
        StoreError::Invalid {
            field: "user.id",
            reason: e.to_string(),
        }
    })?;
    if user.name.trim().is_empty() {
        return Err(StoreError::Invalid {
            field: "user.name",
            reason: "must not be empty".to_owned(),
        });
    }
    if let Some(ext) = &user.extension {
        if !crate::provision::is_extension(ext) {
            return Err(StoreError::Invalid {
                field: "user.extension",
                reason: format!("extension {ext:?} must be 1 to 15 digits"),
            });
        }
    }
    if let Some(agent) = user.agent_id {
        if agent <= 0 {
            return Err(StoreError::Invalid {
                field: "user.agent_id",
                reason: format!("agent_id {agent} must be a positive integer"),
            });
        }
    }
    Ok(())
}

pub(crate) fn validate_trunk(trunk: &Trunk) -> Result<(), StoreError> {
    let spec = TrunkSpec {
        name: trunk.name.clone(),
        account: None,
        address: trunk.address.clone(),
        transport: trunk.transport.as_str().to_owned(),
        srtp: Some(trunk.srtp.as_str().to_owned()),
        username: trunk.username.clone(),
        password: trunk.password.clone(),
        emergency: trunk.emergency,
        dial_prefix: trunk.dial_prefix.clone(),
        from_domain: trunk.from_domain.clone(),
        priority: Some(trunk.routing.priority),
        invite_timeout_ms: Some(trunk.routing.invite_timeout_ms),
        failover_codes: Some(trunk.routing.failover_codes.clone()),
        options_interval_secs: Some(trunk.routing.options_interval_secs),
        down_after: Some(trunk.routing.down_after),
        up_after: Some(trunk.routing.up_after),
        max_calls: trunk.routing.max_calls,
        calls_per_second: trunk.routing.calls_per_second,
    };
    let prov = Provisioning {
        trunks: vec![spec],
        ..Provisioning::default()
    };
    prov.validate().map_err(|issues| StoreError::Invalid {
        field: "trunk",
        reason: ConfigIssue::join(&issues).replace("trunks[0].", ""),
    })
}

// ----- cursor -------------------------------------------------------------------------------

pub(crate) fn encode_cursor(created_at_ms: UnixMs, id: &str) -> String {
    hex::encode(format!("{created_at_ms}.{id}"))
}

pub(crate) fn decode_cursor(cursor: &str) -> Result<(UnixMs, String), StoreError> {
    let invalid = || StoreError::Invalid {
        field: "cursor",
        reason: "not a cursor returned by this API".to_owned(),
    };
    let bytes = hex::decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (ms, id) = text.split_once('.').ok_or_else(invalid)?;
    Ok((ms.parse().map_err(|_| invalid())?, id.to_owned()))
}

// ----- provisioning -------------------------------------------------------------------------

/// Writes an account's call limits; `Ok(false)` when there is no such account.
fn write_account_limits(
    conn: &Connection,
    account_id: &str,
    limits: &AccountLimits,
) -> Result<bool, StoreError> {
    if let Some((field, reason)) = limits.problems().into_iter().next() {
        return Err(StoreError::Invalid { field, reason });
    }
    let n = exec(
        conn,
        "UPDATE accounts SET calls_per_second = ?2, burst = ?3, max_concurrent = ?4
         WHERE id = ?1",
        params![
            account_id,
            limits.calls_per_second,
            limits.burst,
            limits.max_concurrent
        ],
    )?;
    Ok(n > 0)
}

fn conflict(key: String, err: rusqlite::Error, what: &str) -> StoreError {
    if StoreError::is_unique_violation(&err) {
        StoreError::ProvisioningConflict {
            key,
            reason: format!("{what} is already taken by a row in the store"),
        }
    } else {
        StoreError::Sqlite(err)
    }
}

impl SqliteStore {
    fn provision_accounts(
        &self,
        tx: &Transaction<'_>,
        prov: &Provisioning,
        report: &mut ProvisionReport,
    ) -> Result<(), StoreError> {
        for (i, a) in prov.accounts.iter().enumerate() {
            let prefixes = serde_json::to_string(&a.allowed_prefixes)?;
            let existing = tx
                .query_row(
                    &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE id = ?1"),
                    [&a.id],
                    account_from_row,
                )
                .optional()?;
            // Permissions the file sets are applied at every start; those it leaves out take
            // their default on a new account and keep what the store holds (the admin API may
            // have changed them) on an existing one — as the call limits do.
            let allowed_countries = match (&a.allowed_countries, &existing) {
                (None, Some(old)) => old.allowed_countries.clone(),
                _ => a.allowed_countries(),
            };
            let blocked_number_types = match (&a.blocked_number_types, &existing) {
                (None, Some(old)) => old.blocked_number_types.clone(),
                _ => a.blocked_number_types(),
            };
            let countries = serde_json::to_string(&allowed_countries)?;
            let blocked = serde_json::to_string(&blocked_number_types)?;
            let limits = a.limits_over(existing.as_ref().map(|old| old.limits).unwrap_or_default());
            let change = match existing {
                None => {
                    exec(
                        tx,
                        "INSERT INTO accounts (id, name, region, webhook_secret, allowed_prefixes,
                             allowed_countries, blocked_number_types, platform, callback_url,
                             confirm_calls, record_calls)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                        params![
                            a.id,
                            a.name,
                            a.region,
                            a.webhook_secret.expose(),
                            prefixes,
                            countries,
                            blocked,
                            a.platform,
                            a.callback_url,
                            a.confirm_calls,
                            a.record_calls
                        ],
                    )?;
                    write_account_limits(tx, &a.id, &limits)?;
                    Change::Created
                }
                Some(old)
                    if old.name == a.name
                        && old.region == a.region
                        && old.webhook_secret == a.webhook_secret
                        && old.allowed_prefixes == a.allowed_prefixes
                        && old.allowed_countries == allowed_countries
                        && old.blocked_number_types == blocked_number_types
                        && old.limits == limits
                        && old.platform == a.platform
                        && old.callback_url == a.callback_url
                        && old.confirm_calls == a.confirm_calls
                        && old.record_calls == a.record_calls =>
                {
                    Change::Unchanged
                }
                Some(_) => {
                    exec(
                        tx,
                        "UPDATE accounts SET name = ?2, region = ?3, webhook_secret = ?4,
                             allowed_prefixes = ?5, allowed_countries = ?6,
                             blocked_number_types = ?7, platform = ?8, callback_url = ?9,
                             confirm_calls = ?10, record_calls = ?11 WHERE id = ?1",
                        params![
                            a.id,
                            a.name,
                            a.region,
                            a.webhook_secret.expose(),
                            prefixes,
                            countries,
                            blocked,
                            a.platform,
                            a.callback_url,
                            a.confirm_calls,
                            a.record_calls
                        ],
                    )?;
                    write_account_limits(tx, &a.id, &limits)?;
                    Change::Updated
                }
            };
            log_change(change, "account", &a.id);
            report.accounts.record(change);

            let mut listed = HashSet::new();
            for (j, k) in a.api_keys.iter().enumerate() {
                listed.insert(k.key.as_str());
                let hash = self.secret_hash(k.secret.expose());
                let existing: Option<(String, String)> = tx
                    .query_row(
                        "SELECT account_id, secret_hash FROM api_keys WHERE key = ?1",
                        [&k.key],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let key_path = format!("accounts[{i}].api_keys[{j}]");
                let change = match existing {
                    None => {
                        exec(
                            tx,
                            "INSERT INTO api_keys (key, account_id, secret_hash)
                             VALUES (?1, ?2, ?3)",
                            params![k.key, a.id, hash],
                        )
                        .map_err(|e| conflict(key_path, e, "API secret"))?;
                        Change::Created
                    }
                    Some((acct, h)) if acct == a.id && h == hash => Change::Unchanged,
                    Some(_) => {
                        exec(
                            tx,
                            "UPDATE api_keys SET account_id = ?2, secret_hash = ?3 WHERE key = ?1",
                            params![k.key, a.id, hash],
                        )
                        .map_err(|e| conflict(key_path, e, "API secret"))?;
                        Change::Updated
                    }
                };
                log_change(change, "api key", &k.key);
                report.api_keys.record(change);
            }
            let stale: Vec<String> = {
                let mut stmt = tx.prepare("SELECT key FROM api_keys WHERE account_id = ?1")?;
                let keys = stmt
                    .query_map([&a.id], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                keys.into_iter()
                    .filter(|k| !listed.contains(k.as_str()))
                    .collect()
            };
            for key in stale {
                exec(tx, "DELETE FROM api_keys WHERE key = ?1", [&key])?;
                tracing::info!(key = %key, account = %a.id, "api key revoked by provisioning");
                report.api_keys.removed += 1;
            }
            Self::provision_publishable_keys(tx, i, a)?;
        }
        Ok(())
    }

    /// The publishable keys of one `[[accounts]]` entry: listed ones are created (or moved to
    /// this account), those the file used to list and no longer does are removed; keys made
    /// through the admin API are left alone.
    fn provision_publishable_keys(
        tx: &Transaction<'_>,
        i: usize,
        a: &crate::provision::AccountSpec,
    ) -> Result<(), StoreError> {
        let now = wall_clock_ms();
        for (j, k) in a.publishable_keys.iter().enumerate() {
            let existing: Option<String> = tx
                .query_row(
                    "SELECT account_id FROM publishable_keys WHERE key = ?1",
                    [k],
                    |r| r.get(0),
                )
                .optional()?;
            match existing {
                Some(acct) if acct == a.id => {}
                Some(_) => {
                    exec(
                        tx,
                        "UPDATE publishable_keys SET account_id = ?2, source = 'config' WHERE key = ?1",
                        params![k, a.id],
                    )
                    .map_err(|e| conflict(format!("accounts[{i}].publishable_keys[{j}]"), e, "publishable key"))?;
                }
                None => {
                    exec(
                        tx,
                        "INSERT INTO publishable_keys (key, account_id, source, created_at_ms)
                         VALUES (?1, ?2, 'config', ?3)",
                        params![k, a.id, now],
                    )
                    .map_err(|e| {
                        conflict(
                            format!("accounts[{i}].publishable_keys[{j}]"),
                            e,
                            "publishable key",
                        )
                    })?;
                    log_change(Change::Created, "publishable key", k);
                }
            }
        }
        let stale: Vec<String> = {
            let mut stmt = tx.prepare(
                "SELECT key FROM publishable_keys WHERE account_id = ?1 AND source = 'config'",
            )?;
            let keys = stmt
                .query_map([&a.id], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            keys.into_iter()
                .filter(|k| !a.publishable_keys.contains(k))
                .collect()
        };
        for key in stale {
            exec(tx, "DELETE FROM publishable_keys WHERE key = ?1", [&key])?;
            tracing::info!(key = %key, account = %a.id, "publishable key removed by provisioning");
        }
        Ok(())
    }

    fn provision_users(
        tx: &Transaction<'_>,
        prov: &Provisioning,
        realm: &str,
        report: &mut ProvisionReport,
    ) -> Result<(), StoreError> {
        for (i, u) in prov.users.iter().enumerate() {
            let key_path = format!("users[{i}]");
            let existing = tx
                .query_row(
                    &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
                    [&u.id],
                    user_from_row,
                )
                .optional()?;
            let change = match existing {
                None => {
                    exec(
                        tx,
                        "INSERT INTO users (id, account_id, name, extension, agent_id)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![u.id, u.account, u.name, u.extension, u.agent_id],
                    )
                    .map_err(|e| conflict(key_path.clone(), e, "extension or agent_id"))?;
                    Change::Created
                }
                Some(old)
                    if old.account_id == u.account
                        && old.name == u.name
                        && old.extension == u.extension
                        && old.agent_id == u.agent_id =>
                {
                    Change::Unchanged
                }
                Some(_) => {
                    exec(
                        tx,
                        "UPDATE users SET account_id = ?2, name = ?3, extension = ?4,
                             agent_id = ?5 WHERE id = ?1",
                        params![u.id, u.account, u.name, u.extension, u.agent_id],
                    )
                    .map_err(|e| conflict(key_path.clone(), e, "extension or agent_id"))?;
                    Change::Updated
                }
            };
            log_change(change, "user", &u.id);
            report.users.record(change);

            for d in &u.devices {
                let md5 = ha1_md5(&d.username, realm, &d.password);
                let sha = ha1_sha256(&d.username, realm, &d.password);
                let existing = tx
                    .query_row(
                        &format!("SELECT {DEVICE_COLS} FROM devices WHERE username = ?1"),
                        [&d.username],
                        device_from_row,
                    )
                    .optional()?;
                let change = match existing {
                    None => {
                        let id = TypeId::new(DEVICE_PREFIX).to_string();
                        exec(tx,
                            "INSERT INTO devices (id, user_id, username, realm, ha1_md5, ha1_sha256)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                            params![id, u.id, d.username, realm, md5.expose(), sha.expose()],
                        )?;
                        Change::Created
                    }
                    Some(old)
                        if old.user_id == u.id
                            && old.realm == realm
                            && old.ha1_md5 == md5
                            && old.ha1_sha256 == sha =>
                    {
                        Change::Unchanged
                    }
                    Some(_) => {
                        exec(
                            tx,
                            "UPDATE devices SET user_id = ?2, realm = ?3, ha1_md5 = ?4,
                                 ha1_sha256 = ?5 WHERE username = ?1",
                            params![d.username, u.id, realm, md5.expose(), sha.expose()],
                        )?;
                        Change::Updated
                    }
                };
                log_change(change, "device", &d.username);
                report.devices.record(change);
            }
        }
        Ok(())
    }

    fn provision_trunks(
        tx: &Transaction<'_>,
        prov: &Provisioning,
        report: &mut ProvisionReport,
    ) -> Result<(), StoreError> {
        for (i, t) in prov.trunks.iter().enumerate() {
            let transport: Transport =
                t.transport
                    .parse()
                    .map_err(|e: crate::model::UnknownTransport| {
                        StoreError::InvalidProvisioning(vec![ConfigIssue {
                            key: format!("trunks[{i}].transport"),
                            reason: e.to_string(),
                        }])
                    })?;
            let wanted = Trunk {
                name: t.name.clone(),
                account_id: t.account.clone(),
                address: t.address.clone(),
                transport,
                username: t.username.clone(),
                password: t.password.clone(),
                emergency: t.emergency,
                dial_prefix: t.dial_prefix.clone(),
                from_domain: t.from_domain.clone(),
                routing: t.routing(),
                srtp: t.srtp(),
            };
            let existing = tx
                .query_row(
                    &format!("SELECT {TRUNK_COLS} FROM trunks WHERE name = ?1"),
                    [&t.name],
                    trunk_from_row,
                )
                .optional()?;
            let change = match existing {
                None => {
                    insert_trunk(tx, &wanted)?;
                    Change::Created
                }
                Some(old) if old == wanted => Change::Unchanged,
                Some(_) => {
                    update_trunk_row(tx, &wanted)?;
                    Change::Updated
                }
            };
            log_change(change, "trunk", &t.name);
            report.trunks.record(change);
        }
        Ok(())
    }

    fn provision_numbers(
        tx: &Transaction<'_>,
        prov: &Provisioning,
        report: &mut ProvisionReport,
    ) -> Result<(), StoreError> {
        for n in &prov.numbers {
            let existing = tx
                .query_row(
                    &format!("SELECT {NUMBER_COLS} FROM numbers WHERE number = ?1"),
                    [&n.number],
                    number_from_row,
                )
                .optional()?;
            let change = match existing {
                None => {
                    exec(
                        tx,
                        "INSERT INTO numbers (number, account_id, owner_user_id)
                         VALUES (?1, ?2, ?3)",
                        params![n.number, n.account, n.owner],
                    )?;
                    Change::Created
                }
                Some(old) if old.account_id == n.account && old.owner_user_id == n.owner => {
                    Change::Unchanged
                }
                Some(_) => {
                    exec(
                        tx,
                        "UPDATE numbers SET account_id = ?2, owner_user_id = ?3 WHERE number = ?1",
                        params![n.number, n.account, n.owner],
                    )?;
                    Change::Updated
                }
            };
            log_change(change, "number", &n.number);
            report.numbers.record(change);
        }
        Ok(())
    }
}

pub(crate) fn log_change(change: Change, kind: &str, id: &str) {
    match change {
        Change::Created => tracing::info!(kind, id, "provisioned: created"),
        Change::Updated => tracing::info!(kind, id, "provisioned: updated"),
        Change::Unchanged => tracing::debug!(kind, id, "provisioned: unchanged"),
    }
}

fn insert_trunk(conn: &Connection, t: &Trunk) -> Result<(), StoreError> {
    exec(
        conn,
        &format!(
            "INSERT INTO trunks ({TRUNK_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
             ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
        ),
        params![
            t.name,
            t.account_id,
            t.address,
            t.transport.as_str(),
            t.username,
            t.password.as_ref().map(Secret::expose),
            t.emergency,
            t.dial_prefix,
            t.from_domain,
            t.routing.priority,
            t.routing.invite_timeout_ms,
            t.routing.failover_codes_text(),
            t.routing.options_interval_secs,
            t.routing.down_after,
            t.routing.up_after,
            t.routing.max_calls,
            t.routing.calls_per_second,
            t.srtp.as_str()
        ],
    )
    .map_err(|e| insert_error(e, "trunk", &t.name))?;
    Ok(())
}

fn update_trunk_row(conn: &Connection, t: &Trunk) -> Result<usize, StoreError> {
    exec(
        conn,
        "UPDATE trunks SET account_id = ?2, address = ?3, transport = ?4, username = ?5,
             password = ?6, emergency = ?7, dial_prefix = ?8, from_domain = ?9,
             priority = ?10, invite_timeout_ms = ?11, failover_codes = ?12,
             options_interval_secs = ?13, down_after = ?14, up_after = ?15, max_calls = ?16,
             calls_per_second = ?17, srtp = ?18
         WHERE name = ?1",
        params![
            t.name,
            t.account_id,
            t.address,
            t.transport.as_str(),
            t.username,
            t.password.as_ref().map(Secret::expose),
            t.emergency,
            t.dial_prefix,
            t.from_domain,
            t.routing.priority,
            t.routing.invite_timeout_ms,
            t.routing.failover_codes_text(),
            t.routing.options_interval_secs,
            t.routing.down_after,
            t.routing.up_after,
            t.routing.max_calls,
            t.routing.calls_per_second,
            t.srtp.as_str()
        ],
    )
    .map_err(|e| insert_error(e, "trunk", &t.name))
}

/// A number's owner must be a user of the number's account.
fn check_owner(conn: &Connection, number: &Number) -> Result<(), StoreError> {
    let Some(owner) = &number.owner_user_id else {
        return Ok(());
    };
    let account: Option<String> = query_one(
        conn,
        "SELECT account_id FROM users WHERE id = ?1",
        [owner],
        |r| r.get(0),
    )?;
    match account {
        None => Err(not_found("user", owner)),
        Some(a) if a == number.account_id => Ok(()),
        Some(a) => Err(StoreError::Invalid {
            field: "number.owner",
            reason: format!(
                "user {owner:?} belongs to account {a:?}, not {:?}",
                number.account_id
            ),
        }),
    }
}

/// A binding's columns in the order of the statements that write it (`?1` … `?13`:
/// device, contact, source, transport, local, expires_at, q, call_id, cseq, instance, reg_id,
/// user_agent, updated_at).
fn binding_params(b: &Binding) -> [&dyn rusqlite::ToSql; 13] {
    [
        &b.device_username,
        &b.contact,
        &b.source,
        &b.transport,
        &b.local,
        &b.expires_at,
        &b.q,
        &b.call_id,
        &b.cseq,
        &b.instance,
        &b.reg_id,
        &b.user_agent,
        &b.updated_at,
    ]
}

/// Runs one statement through the connection's statement cache (parsed once, not per call).
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// A new or changed contact's write: the whole binding, inserted or replacing its row.
const UPSERT_BINDING: &str = "INSERT INTO bindings (device_username, contact, source, transport,
     local, expires_at, q, call_id, cseq, instance, reg_id, user_agent, updated_at, path)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
 ON CONFLICT (device_username, contact) DO UPDATE SET
     source = excluded.source, transport = excluded.transport,
     local = excluded.local, expires_at = excluded.expires_at, q = excluded.q,
     call_id = excluded.call_id, cseq = excluded.cseq,
     instance = excluded.instance, reg_id = excluded.reg_id,
     user_agent = excluded.user_agent, updated_at = excluded.updated_at,
     path = excluded.path";

/// Inserts or replaces a binding on `conn` (inside the caller's transaction, if any).
fn upsert_binding_on(conn: &Connection, b: &Binding) -> Result<(), StoreError> {
    let path = path_to_json(&b.path);
    exec(
        conn,
        UPSERT_BINDING,
        rusqlite::params_from_iter(
            binding_params(b)
                .into_iter()
                .chain([&path as &dyn rusqlite::ToSql]),
        ),
    )
    .map_err(|e| {
        if StoreError::is_foreign_key_violation(&e) {
            not_found("device", &b.device_username)
        } else {
            StoreError::Sqlite(e)
        }
    })?;
    Ok(())
}

fn query_list<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, map)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn query_one<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Option<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    Ok(stmt.query_row(params, map).optional()?)
}

/// A waiting refresh's write ([`BlockingStore::flush_refreshes`]): what a refresh may change
/// (expiry, Call-ID, CSeq, source, time), none of it held by an index (migration 19).
const REFRESH_UPDATE: &str = "UPDATE bindings SET expires_at = ?3, call_id = ?4, cseq = ?5,
     source = ?6, updated_at = ?7
 WHERE device_username = ?1 AND contact = ?2";

impl BlockingStore for SqliteStore {
    fn apply_provisioning(
        &self,
        prov: &Provisioning,
        realm: &str,
    ) -> Result<ProvisionReport, StoreError> {
        prov.validate().map_err(StoreError::InvalidProvisioning)?;
        if realm.is_empty() {
            return Err(StoreError::Invalid {
                field: "realm",
                reason: "must not be empty".to_owned(),
            });
        }
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let mut report = ProvisionReport::default();
        self.provision_accounts(&tx, prov, &mut report)?;
        SqliteStore::provision_users(&tx, prov, realm, &mut report)?;
        SqliteStore::provision_trunks(&tx, prov, &mut report)?;
        SqliteStore::provision_numbers(&tx, prov, &mut report)?;
        tx.commit()?;
        tracing::info!(%report, "provisioning applied");
        Ok(report)
    }

    // ----- accounts -----------------------------------------------------------------------

    fn account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        let conn = self.conn()?;
        query_one(
            &conn,
            &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE id = ?1"),
            [id],
            account_from_row,
        )
    }

    fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        let conn = self.conn()?;
        query_list(
            &conn,
            &format!("SELECT {ACCOUNT_COLS} FROM accounts ORDER BY id"),
            [],
            account_from_row,
        )
    }

    fn account_by_api_secret(&self, secret: &str) -> Result<Option<Account>, StoreError> {
        if secret.is_empty() {
            return Ok(None);
        }
        let hash = self.secret_hash(secret);
        let conn = self.conn()?;
        query_one(
            &conn,
            &format!(
                "SELECT {ACCOUNT_COLS} FROM accounts
                 WHERE id = (SELECT account_id FROM api_keys WHERE secret_hash = ?1)"
            ),
            [hash],
            account_from_row,
        )
    }

    fn account_by_key_pair(&self, key: &str, secret: &str) -> Result<Option<Account>, StoreError> {
        let hash = self.secret_hash(secret);
        let conn = self.conn()?;
        let stored: Option<(String, String)> = query_one(
            &conn,
            "SELECT account_id, secret_hash FROM api_keys WHERE key = ?1",
            [key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let Some((account_id, stored_hash)) = stored else {
            return Ok(None);
        };
        if secret.is_empty() || !constant_time_eq(stored_hash.as_bytes(), hash.as_bytes()) {
            return Ok(None);
        }
        query_one(
            &conn,
            &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE id = ?1"),
            [account_id],
            account_from_row,
        )
    }

    fn api_keys_for_account(&self, account_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let conn = self.conn()?;
        query_list(
            &conn,
            "SELECT key, account_id FROM api_keys WHERE account_id = ?1 ORDER BY key",
            [account_id],
            |r| {
                Ok(ApiKey {
                    key: r.get(0)?,
                    account_id: r.get(1)?,
                })
            },
        )
    }

    fn set_account_limits(
        &self,
        account_id: &str,
        limits: &AccountLimits,
    ) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        write_account_limits(&conn, account_id, limits)
    }

    fn account_by_publishable_key(&self, key: &str) -> Result<Option<Account>, StoreError> {
        let conn = self.conn()?;
        query_one(
            &conn,
            &format!(
                "SELECT {ACCOUNT_COLS} FROM accounts
                 WHERE id = (SELECT account_id FROM publishable_keys WHERE key = ?1)"
            ),
            [key],
            account_from_row,
        )
    }

    fn publishable_keys_for_account(
        &self,
        account_id: &str,
    ) -> Result<Vec<PublishableKey>, StoreError> {
        let conn = self.conn()?;
        query_list(
            &conn,
            &format!(
                "SELECT {PK_COLS} FROM publishable_keys WHERE account_id = ?1
                 ORDER BY created_at_ms, key"
            ),
            [account_id],
            publishable_key_from_row,
        )
    }

    fn create_publishable_key(&self, key: &PublishableKey) -> Result<(), StoreError> {
        crate::provision::check_publishable_key(&key.key).map_err(|reason| {
            StoreError::Invalid {
                field: "key",
                reason,
            }
        })?;
        let conn = self.conn()?;
        exec(
            &conn,
            &format!("INSERT INTO publishable_keys ({PK_COLS}) VALUES (?1, ?2, ?3, ?4)"),
            params![key.key, key.account_id, key.source, key.created_at_ms],
        )
        .map_err(|e| {
            if StoreError::is_foreign_key_violation(&e) {
                not_found("account", &key.account_id)
            } else {
                insert_error(e, "publishable key", &key.key)
            }
        })?;
        Ok(())
    }

    fn delete_publishable_key(&self, account_id: &str, key: &str) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        let n = exec(
            &conn,
            "DELETE FROM publishable_keys WHERE account_id = ?1 AND key = ?2",
            params![account_id, key],
        )?;
        Ok(n > 0)
    }

    fn update_account(&self, account: &Account) -> Result<(), StoreError> {
        validate_account(account)?;
        let conn = self.conn()?;
        let n = exec(
            &conn,
            "UPDATE accounts SET name = ?2, region = ?3, allowed_prefixes = ?4,
                 allowed_countries = ?5, blocked_number_types = ?6 WHERE id = ?1",
            params![
                account.id,
                account.name,
                account.region,
                serde_json::to_string(&account.allowed_prefixes)?,
                serde_json::to_string(&account.allowed_countries)?,
                serde_json::to_string(&account.blocked_number_types)?,
            ],
        )?;
        if n == 0 {
            return Err(not_found("account", &account.id));
        }
        Ok(())
    }

    // ----- users --------------------------------------------------------------------------

    fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let conn = self.conn()?;
        query_one(
            &conn,
            &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
            [id],
            user_from_row,
        )
    }

    fn user_by_extension(
        &self,
        account_id: &str,
        extension: &str,
    ) -> Result<Option<User>, StoreError> {
        let conn = self.conn()?;
        query_one(
            &conn,
            &format!("SELECT {USER_COLS} FROM users WHERE account_id = ?1 AND extension = ?2"),
            [account_id, extension],
            user_from_row,
        )
    }

    fn user_by_agent_id(
        &self,
        account_id: &str,
        agent_id: i64,
    ) -> Result<Option<User>, StoreError> {
        let conn = self.conn()?;
        query_one(
            &conn,
            &format!("SELECT {USER_COLS} FROM users WHERE account_id = ?1 AND agent_id = ?2"),
            params![account_id, agent_id],
            user_from_row,
        )
    }

    fn users_for_account(&self, account_id: &str) -> Result<Vec<User>, StoreError> {
        let conn = self.conn()?;
        query_list(
            &conn,
            &format!("SELECT {USER_COLS} FROM users WHERE account_id = ?1 ORDER BY id"),
            [account_id],
            user_from_row,
        )
    }

    fn create_user(&self, user: &User) -> Result<(), StoreError> {
        validate_user(user)?;
        let conn = self.conn()?;
        exec(
            &conn,
            &format!("INSERT INTO users ({USER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
            params![
                user.id,
                user.account_id,
                user.name,
                user.extension,
                user.agent_id
            ],
        )
        .map_err(|e| {
            if StoreError::is_foreign_key_violation(&e) {
                not_found("account", &user.account_id)
            } else {
                insert_error(e, "user (id, extension or agent_id)", &user.id)
            }
        })?;
        Ok(())
    }

    fn update_user(&self, user: &User) -> Result<(), StoreError> {
        validate_user(user)?;
        let conn = self.conn()?;
        let n = conn
            .execute(
                "UPDATE users SET name = ?3, extension = ?4, agent_id = ?5
                 WHERE id = ?1 AND account_id = ?2",
                params![
                    user.id,
                    user.account_id,
                    user.name,
                    user.extension,
                    user.agent_id
                ],
            )
            .map_err(|e| insert_error(e, "user (extension or agent_id)", &user.id))?;
        if n == 0 {
            return Err(not_found("user", &user.id));
        }
        Ok(())
    }

    fn delete_user(&self, account_id: &str, id: &str) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        let n = exec(
            &conn,
            "DELETE FROM users WHERE id = ?1 AND account_id = ?2",
            [id, account_id],
        )?;
        Ok(n > 0)
    }

    // ----- devices ------------------------------------------------------------------------

    fn device_by_username(&self, username: &str) -> Result<Option<Device>, StoreError> {
        let conn = self.conn()?;
        query_one(
            &conn,
            &format!("SELECT {DEVICE_COLS} FROM devices WHERE username = ?1"),
            [username],
            device_from_row,
        )
    }

    fn devices_for_user(&self, user_id: &str) -> Result<Vec<Device>, StoreError> {
        let conn = self.conn()?;
        query_list(
            &conn,
            &format!("SELECT {DEVICE_COLS} FROM devices WHERE user_id = ?1 ORDER BY username"),
            [user_id],
            device_from_row,
        )
    }

    fn create_device(
        &self,
        user_id: &str,
        username: &str,
        password: &Secret,
        realm: &str,
    ) -> Result<Device, StoreError> {
        if !crate::provision::is_sip_username(username) {
            return Err(StoreError::Invalid {
                field: "device.username",
                reason: format!("{username:?} is not a valid SIP username"),
            });
        }
        if password.is_empty() {
            return Err(StoreError::Invalid {
                field: "device.password",
                reason: "must not be empty".to_owned(),
            });
        }
        let device = Device {
            id: TypeId::new(DEVICE_PREFIX).to_string(),
            user_id: user_id.to_owned(),
            username: username.to_owned(),
            realm: realm.to_owned(),
            ha1_md5: ha1_md5(username, realm, password),
            ha1_sha256: ha1_sha256(username, realm, password),
        };
        let conn = self.conn()?;
        exec(
            &conn,
            &format!("INSERT INTO devices ({DEVICE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
            params![
                device.id,
                device.user_id,
                device.username,
                device.realm,
                device.ha1_md5.expose(),
                device.ha1_sha256.expose()
            ],
        )
        .map_err(|e| {
            if StoreError::is_foreign_key_violation(&e) {
                not_found("user", user_id)
            } else {
                insert_error(e, "device", username)
            }
        })?;
        Ok(device)
    }

    fn set_device_password(
        &self,
        username: &str,
        password: &Secret,
        realm: &str,
    ) -> Result<Device, StoreError> {
        if password.is_empty() {
            return Err(StoreError::Invalid {
                field: "device.password",
                reason: "must not be empty".to_owned(),
            });
        }
        let md5 = ha1_md5(username, realm, password);
        let sha = ha1_sha256(username, realm, password);
        let conn = self.conn()?;
        let n = exec(
            &conn,
            "UPDATE devices SET realm = ?2, ha1_md5 = ?3, ha1_sha256 = ?4 WHERE username = ?1",
            params![username, realm, md5.expose(), sha.expose()],
        )?;
        if n == 0 {
            return Err(not_found("device", username));
        }
        query_one(
            &conn,
            &format!("SELECT {DEVICE_COLS} FROM devices WHERE username = ?1"),
            [username],
            device_from_row,
        )?
        .ok_or_else(|| not_found("device", username))
    }

    fn delete_device(&self, username: &str) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        Ok(exec(&conn, "DELETE FROM devices WHERE username = ?1", [username])? > 0)
    }

    // ----- numbers ------------------------------------------------------------------------

    fn number(&self, number: &str) -> Result<Option<Number>, StoreError> {
        let conn = self.conn()?;
        query_one(
            &conn,
            &format!("SELECT {NUMBER_COLS} FROM numbers WHERE number = ?1"),
            [number],
            number_from_row,
        )
    }

    fn numbers_for_account(&self, account_id: &str) -> Result<Vec<Number>, StoreError> {
        let conn = self.conn()?;
        query_list(
            &conn,
            &format!("SELECT {NUMBER_COLS} FROM numbers WHERE account_id = ?1 ORDER BY number"),
            [account_id],
            number_from_row,
        )
    }

    fn create_number(&self, number: &Number) -> Result<(), StoreError> {
        if !crate::e164::is_e164(&number.number) {
            return Err(StoreError::Invalid {
                field: "number",
                reason: format!("{:?} is not an E.164 number", number.number),
            });
        }
        let conn = self.conn()?;
        check_owner(&conn, number)?;
        exec(
            &conn,
            &format!("INSERT INTO numbers ({NUMBER_COLS}) VALUES (?1, ?2, ?3)"),
            params![number.number, number.account_id, number.owner_user_id],
        )
        .map_err(|e| insert_error(e, "number", &number.number))?;
        Ok(())
    }

    fn update_number(&self, number: &Number) -> Result<(), StoreError> {
        let conn = self.conn()?;
        check_owner(&conn, number)?;
        let n = conn
            .execute(
                "UPDATE numbers SET owner_user_id = ?3 WHERE number = ?1 AND account_id = ?2",
                params![number.number, number.account_id, number.owner_user_id],
            )
            .map_err(|e| insert_error(e, "number", &number.number))?;
        if n == 0 {
            return Err(not_found("number", &number.number));
        }
        Ok(())
    }

    fn delete_number(&self, account_id: &str, number: &str) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        Ok(exec(
            &conn,
            "DELETE FROM numbers WHERE number = ?1 AND account_id = ?2",
            [number, account_id],
        )? > 0)
    }

    // ----- trunks -------------------------------------------------------------------------

    fn trunk(&self, name: &str) -> Result<Option<Trunk>, StoreError> {
        let conn = self.conn()?;
        query_one(
            &conn,
            &format!("SELECT {TRUNK_COLS} FROM trunks WHERE name = ?1"),
            [name],
            trunk_from_row,
        )
    }

    fn trunks_for_account(&self, account_id: &str) -> Result<Vec<Trunk>, StoreError> {
        let conn = self.conn()?;
        query_list(
            &conn,
            &format!(
                "SELECT {TRUNK_COLS} FROM trunks WHERE account_id = ?1 OR account_id IS NULL
                 ORDER BY account_id IS NULL, name"
            ),
            [account_id],
            trunk_from_row,
        )
    }

    fn list_trunks(&self) -> Result<Vec<Trunk>, StoreError> {
        let conn = self.conn()?;
        query_list(
            &conn,
            &format!("SELECT {TRUNK_COLS} FROM trunks ORDER BY name"),
            [],
            trunk_from_row,
        )
    }

    fn create_trunk(&self, trunk: &Trunk) -> Result<(), StoreError> {
        validate_trunk(trunk)?;
        let conn = self.conn()?;
        insert_trunk(&conn, trunk)
    }

    fn update_trunk(&self, trunk: &Trunk) -> Result<(), StoreError> {
        validate_trunk(trunk)?;
        let conn = self.conn()?;
        if update_trunk_row(&conn, trunk)? == 0 {
            return Err(not_found("trunk", &trunk.name));
        }
        Ok(())
    }

    fn delete_trunk(&self, name: &str) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        Ok(exec(&conn, "DELETE FROM trunks WHERE name = ?1", [name])? > 0)
    }

    // ----- registrations ------------------------------------------------------------------

    fn upsert_binding(&self, b: &Binding) -> Result<(), StoreError> {
        self.forget_refresh(&b.device_username, Some(&b.contact));
        let conn = self.conn()?;
        upsert_binding_on(&conn, b)
    }

    fn upsert_bindings(&self, bindings: &[Binding]) -> Vec<Result<(), StoreError>> {
        if let [b] = bindings {
            return vec![self.upsert_binding(b)];
        }
        for b in bindings {
            self.forget_refresh(&b.device_username, Some(&b.contact));
        }
        let every = |e: StoreError| bindings.iter().map(|_| Err(e.for_batch())).collect();
        let mut conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return every(e),
        };
        let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => return every(e.into()),
        };
        let mut results = Vec::with_capacity(bindings.len());
        for b in bindings {
            match upsert_binding_on(&tx, b) {
                Ok(()) => results.push(Ok(())),
                // A binding of a device deleted meanwhile: its own refusal; the others go on.
                Err(e @ StoreError::NotFound { .. }) => results.push(Err(e)),
                // Anything else (a full disk, an I/O error) ends the transaction: none of it
                // was written.
                Err(e) => return every(e),
            }
        }
        match tx.commit() {
            Ok(()) => results,
            Err(e) => every(e.into()),
        }
    }

    fn remove_binding(&self, device_username: &str, contact: &str) -> Result<bool, StoreError> {
        self.forget_refresh(device_username, Some(contact));
        let conn = self.conn()?;
        Ok(exec(
            &conn,
            "DELETE FROM bindings WHERE device_username = ?1 AND contact = ?2",
            [device_username, contact],
        )? > 0)
    }

    fn remove_all_bindings(&self, device_username: &str) -> Result<usize, StoreError> {
        self.forget_refresh(device_username, None);
        let conn = self.conn()?;
        Ok(exec(
            &conn,
            "DELETE FROM bindings WHERE device_username = ?1",
            [device_username],
        )?)
    }

    fn bindings_for_device(
        &self,
        device_username: &str,
        now: UnixSecs,
    ) -> Result<Vec<Binding>, StoreError> {
        let conn = self.conn()?;
        let rows = query_list(
            &conn,
            &format!(
                "SELECT {BINDING_COLS} FROM bindings b
                 JOIN devices d ON d.username = b.device_username
                 WHERE b.device_username = ?1
                 ORDER BY b.contact"
            ),
            params![device_username],
            binding_from_row,
        )?;
        // Expired rows are left out after the waiting refreshes are laid over them, under
        // the connection, so that a flush is wholly before or after.
        let rows = self.with_refreshes(rows, now);
        drop(conn);
        Ok(rows)
    }

    fn bindings_for_user(&self, user_id: &str, now: UnixSecs) -> Result<Vec<Binding>, StoreError> {
        let conn = self.conn()?;
        let rows = query_list(
            &conn,
            &format!(
                "SELECT {BINDING_COLS} FROM bindings b
                 JOIN devices d ON d.username = b.device_username
                 WHERE d.user_id = ?1
                 ORDER BY b.device_username, b.contact"
            ),
            params![user_id],
            binding_from_row,
        )?;
        let rows = self.with_refreshes(rows, now);
        drop(conn);
        Ok(rows)
    }

    fn refreshes_in_memory(&self) -> bool {
        true
    }

    fn refresh_binding(&self, binding: &Binding) -> Result<(), StoreError> {
        let refresh = Refresh::of(binding);
        let mut r = self.refreshes.lock().map_err(|_| StoreError::Poisoned)?;
        match r.get_mut(binding.device_username.as_str()) {
            Some(of_device) => match of_device.iter_mut().find(|(c, _)| *c == binding.contact) {
                Some((_, waiting)) => *waiting = refresh,
                None => of_device.push((binding.contact.clone(), refresh)),
            },
            None => {
                r.insert(
                    binding.device_username.clone(),
                    vec![(binding.contact.clone(), refresh)],
                );
            }
        }
        Ok(())
    }

    fn flush_refreshes(&self) -> Result<usize, StoreError> {
        // The connection is held from before the refreshes are taken until they are
        // committed: a write of the same contact (which first forgets its refresh) and a read
        // of the bindings (which adds the waiting refreshes to its rows) come wholly before
        // or wholly after, never between the taking and the writing.
        let mut conn = self.conn()?;
        let pending: Vec<(String, String, Refresh)> = {
            let mut r = self.refreshes.lock().map_err(|_| StoreError::Poisoned)?;
            if r.is_empty() {
                return Ok(0);
            }
            let mut pending = Vec::with_capacity(r.len());
            for (mut device, of_device) in r.drain() {
                let last = of_device.len().saturating_sub(1);
                for (i, (contact, refresh)) in of_device.into_iter().enumerate() {
                    let device = if i == last {
                        std::mem::take(&mut device)
                    } else {
                        device.clone()
                    };
                    pending.push((device, contact, refresh));
                }
            }
            pending
        };
        let written = (|| -> Result<(), StoreError> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                // Only what a refresh may change is set (the trait's contract: expiry,
                // Call-ID, CSeq, source, time), about half the cost of writing the whole row
                // (`docs/benchmarks.md`). It only ever changes a row that exists; one removed
                // meanwhile stays removed.
                let mut update = tx.prepare_cached(REFRESH_UPDATE)?;
                for (device, contact, f) in &pending {
                    update.execute(params![
                        device,
                        contact,
                        f.expires_at,
                        f.call_id,
                        f.cseq,
                        f.source,
                        f.updated_at
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })();
        drop(conn);
        if let Err(e) = written {
            // Keep them for the next flush, unless a newer refresh or a write replaced them.
            if let Ok(mut r) = self.refreshes.lock() {
                for (device, contact, f) in pending {
                    let of_device = r.entry(device).or_default();
                    if refresh_of(of_device, &contact).is_none() {
                        of_device.push((contact, f));
                    }
                }
            }
            return Err(e);
        }
        Ok(pending.len())
    }

    fn sweep_expired(&self, now: UnixSecs) -> Result<usize, StoreError> {
        // A row whose refresh waits in memory must not be swept as expired.
        self.flush_refreshes()?;
        let conn = self.conn()?;
        let n = exec(&conn, "DELETE FROM bindings WHERE expires_at <= ?1", [now])?;
        if n > 0 {
            tracing::debug!(removed = n, "expired bindings swept");
        }
        Ok(n)
    }

    fn count_bindings(&self, now: UnixSecs) -> Result<u64, StoreError> {
        let conn = self.conn()?;
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM bindings WHERE expires_at > ?1",
            [now],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    // ----- calls --------------------------------------------------------------------------

    fn insert_call(&self, c: &CallRecord) -> Result<(), StoreError> {
        insert_call_on(&*self.conn()?, c, None)
    }

    fn admit_call(
        &self,
        writes: &[CallWrite],
        limits: &AccountLimits,
        now_ms: UnixMs,
    ) -> Result<Admission, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let admission = admit_on(&tx, admitted_account(writes)?, writes, limits, now_ms)?;
        if admission == Admission::Admitted {
            tx.commit()?;
        }
        Ok(admission)
    }

    fn update_call(&self, c: &CallRecord) -> Result<(), StoreError> {
        update_call_on(&*self.conn()?, c)
    }

    fn get_call(&self, account_id: &str, id: &str) -> Result<Option<CallRecord>, StoreError> {
        let conn = self.conn()?;
        query_one(
            &conn,
            &format!("SELECT {CALL_COLS} FROM calls WHERE id = ?1 AND account_id = ?2"),
            [id, account_id],
            call_from_row,
        )
    }

    fn call_by_request_id(
        &self,
        account_id: &str,
        request_id: &str,
    ) -> Result<Option<CallRecord>, StoreError> {
        let conn = self.conn()?;
        query_one(
            &conn,
            &format!(
                "SELECT {CALL_COLS} FROM calls WHERE account_id = ?1 AND request_id = ?2
                 ORDER BY created_at_ms DESC LIMIT 1"
            ),
            [account_id, request_id],
            call_from_row,
        )
    }

    fn list_calls(
        &self,
        filter: &CallFilter,
    ) -> Result<(Vec<CallRecord>, Option<String>), StoreError> {
        let limit = filter.limit.clamp(1, CallFilter::MAX_LIMIT);
        let mut sql = format!("SELECT {CALL_COLS} FROM calls WHERE account_id = ?");
        let mut args: Vec<Value> = vec![Value::Text(filter.account_id.clone())];
        if let Some(status) = filter.status {
            sql.push_str(" AND status = ?");
            args.push(Value::Text(status.as_str().to_owned()));
        }
        if let Some(user) = &filter.user_id {
            sql.push_str(" AND user_id = ?");
            args.push(Value::Text(user.clone()));
        }
        if let Some(since) = filter.since_ms {
            sql.push_str(" AND created_at_ms >= ?");
            args.push(Value::Integer(since));
        }
        if let Some(until) = filter.until_ms {
            sql.push_str(" AND created_at_ms < ?");
            args.push(Value::Integer(until));
        }
        if let Some(cursor) = &filter.cursor {
            let (ms, id) = decode_cursor(cursor)?;
            // The first conjunct bounds the index range; the second breaks ties by id.
            sql.push_str(" AND created_at_ms <= ? AND (created_at_ms < ? OR id < ?)");
            args.push(Value::Integer(ms));
            args.push(Value::Integer(ms));
            args.push(Value::Text(id));
        }
        sql.push_str(" ORDER BY created_at_ms DESC, id DESC LIMIT ?");
        args.push(Value::Integer(i64::from(limit) + 1));
        let conn = self.conn()?;
        let mut calls = query_list(&conn, &sql, params_from_iter(args), call_from_row)?;
        let next = if calls.len() > limit as usize {
            calls.truncate(limit as usize);
            calls.last().map(|c| encode_cursor(c.created_at_ms, &c.id))
        } else {
            None
        };
        Ok((calls, next))
    }

    fn append_timeline(&self, call_id: &str, entry: &TimelineEntry) -> Result<(), StoreError> {
        // The row's id is taken, the row written and listed in its call under one write
        // lock.
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        append_timeline_on(&tx, call_id, entry)?;
        tx.commit()?;
        Ok(())
    }

    fn timeline(&self, call_id: &str) -> Result<Vec<TimelineEntry>, StoreError> {
        let conn = self.conn()?;
        let listed: Option<Option<String>> = conn
            .prepare_cached(TIMELINE_ROWS_OF_CALL)?
            .query_row([call_id], |r| r.get(0))
            .optional()?;
        let mut ids: Vec<i64> = listed
            .flatten()
            .map(|l| {
                l.split(',')
                    .filter_map(|id| id.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        // In the order written.
        ids.sort_unstable();
        ids.dedup();
        let mut row = conn.prepare_cached(TIMELINE_ROW)?;
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            let read = row
                .query_row([id], |r| {
                    let first = TimelineEntry {
                        at_ms: r.get(0)?,
                        kind: r.get(1)?,
                        leg: r.get(2)?,
                        detail: json_col(r, 3)?,
                    };
                    let more: Option<String> = r.get(4)?;
                    let more: Vec<TimelineEntry> = match more {
                        Some(text) => {
                            serde_json::from_str(&text).map_err(|e| conversion_error(4, e))?
                        }
                        None => Vec::new(),
                    };
                    Ok(std::iter::once(first).chain(more).collect::<Vec<_>>())
                })
                .optional()?;
            rows.extend(read.into_iter().flatten());
        }
        // In the order written; by time, entries of the same time in that order (as one row
        // per entry ordered by `at_ms, id` had them).
        rows.sort_by_key(|e| e.at_ms);
        Ok(rows)
    }

    // ----- outbox -------------------------------------------------------------------------

    fn enqueue_callback(&self, e: &OutboxEntry) -> Result<(), StoreError> {
        enqueue_callback_on(&*self.conn()?, e)
    }

    fn write_call_batch(&self, writes: &[CallWrite]) -> Result<(), StoreError> {
        self.write_call_batch_admitting(&[], writes).map(drop)
    }

    fn write_call_batch_admitting(
        &self,
        admissions: &[AdmitRequest],
        writes: &[CallWrite],
    ) -> Result<Vec<Result<Admission, StoreError>>, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut outcomes = Vec::with_capacity(admissions.len());
        for a in admissions {
            // A malformed or refused admission writes nothing and the batch goes on; a store
            // error in one fails the batch, as one in the batch's own writes does (the
            // journal answers its admissions with the error and tries the events again
            // without them). No savepoint: each would copy every page the admission touches
            // into SQLite's statement journal.
            let outcome = match admitted_account(&a.writes) {
                Ok(account_id) => Ok(admit_on(&tx, account_id, &a.writes, &a.limits, a.now_ms)?),
                Err(e) => Err(e),
            };
            outcomes.push(outcome);
        }
        apply_writes_on(&tx, writes)?;
        tx.commit()?;
        Ok(outcomes)
    }

    fn unfinished_calls(&self) -> Result<Vec<CallRecord>, StoreError> {
        let conn = self.conn()?;
        let finals: Vec<String> = CallStatus::ALL
            .iter()
            .filter(|s| s.is_final())
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        query_list(
            &conn,
            &format!(
                "SELECT {CALL_COLS} FROM calls WHERE status NOT IN ({}) ORDER BY created_at_ms",
                finals.join(", ")
            ),
            [],
            call_from_row,
        )
    }

    fn unfinished_calls_of(
        &self,
        node_id: &str,
        with_unowned: bool,
    ) -> Result<Vec<CallRecord>, StoreError> {
        let conn = self.conn()?;
        let finals: Vec<String> = CallStatus::ALL
            .iter()
            .filter(|s| s.is_final())
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        query_list(
            &conn,
            &format!(
                "SELECT {CALL_COLS} FROM calls
                 WHERE status NOT IN ({}) AND (node_id = ?1 OR (?2 AND node_id IS NULL))
                 ORDER BY created_at_ms",
                finals.join(", ")
            ),
            params![node_id, with_unowned],
            call_from_row,
        )
    }

    fn acquire_node_lease(
        &self,
        lease: &NodeLease,
        now: UnixMs,
        stale_until: Option<UnixMs>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let held: Option<(String, i64)> = tx
            .query_row(
                "SELECT instance, until_ms FROM nodes WHERE node_id = ?1",
                [&lease.node_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((instance, until_ms)) = held {
            let free = until_ms <= now
                || instance == lease.instance
                || stale_until.is_some_and(|s| s == until_ms);
            if !free {
                return Err(StoreError::NodeIdInUse {
                    id: lease.node_id.clone(),
                    until_ms,
                });
            }
        }
        exec(
            &tx,
            "INSERT INTO nodes (node_id, instance, api_url, until_ms, taken_over_by)
             VALUES (?1, ?2, ?3, ?4, NULL)
             ON CONFLICT (node_id) DO UPDATE SET instance = excluded.instance,
                 api_url = excluded.api_url, until_ms = excluded.until_ms, taken_over_by = NULL",
            params![lease.node_id, lease.instance, lease.api_url, lease.until_ms],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn renew_node_lease(&self, lease: &NodeLease) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        let n = exec(
            &conn,
            "UPDATE nodes SET until_ms = ?3, api_url = ?4
             WHERE node_id = ?1 AND instance = ?2 AND taken_over_by IS NULL",
            params![lease.node_id, lease.instance, lease.until_ms, lease.api_url],
        )?;
        Ok(n > 0)
    }

    fn claim_lapsed_nodes(&self, by: &str, now: UnixMs) -> Result<Vec<NodeLease>, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let lapsed = query_list(
            &tx,
            "SELECT node_id, instance, api_url, until_ms FROM nodes
             WHERE until_ms <= ?1 AND taken_over_by IS NULL AND node_id <> ?2
             ORDER BY node_id",
            params![now, by],
            |r| {
                Ok(NodeLease {
                    node_id: r.get(0)?,
                    instance: r.get(1)?,
                    api_url: r.get(2)?,
                    until_ms: r.get(3)?,
                })
            },
        )?;
        for l in &lapsed {
            exec(
                &tx,
                "UPDATE nodes SET taken_over_by = ?2 WHERE node_id = ?1",
                params![l.node_id, by],
            )?;
        }
        tx.commit()?;
        Ok(lapsed)
    }

    fn node_lease(&self, node_id: &str) -> Result<Option<NodeLease>, StoreError> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                "SELECT node_id, instance, api_url, until_ms FROM nodes WHERE node_id = ?1",
                [node_id],
                |r| {
                    Ok(NodeLease {
                        node_id: r.get(0)?,
                        instance: r.get(1)?,
                        api_url: r.get(2)?,
                        until_ms: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    fn release_node_lease(&self, node_id: &str, instance: &str) -> Result<(), StoreError> {
        let conn = self.conn()?;
        exec(
            &conn,
            "DELETE FROM nodes WHERE node_id = ?1 AND instance = ?2",
            [node_id, instance],
        )?;
        Ok(())
    }

    fn probe_write(&self, now: UnixMs) -> Result<(), StoreError> {
        let conn = self.conn()?;
        exec(
            &conn,
            "INSERT INTO meta (key, value) VALUES ('health_probe', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [now.to_string()],
        )?;
        Ok(())
    }

    fn due_callbacks(&self, now: UnixMs, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        let conn = self.conn()?;
        query_list(
            &conn,
            &format!(
                "SELECT {OUTBOX_COLS} FROM callback_outbox o
                 WHERE o.state = 'pending' AND o.next_attempt_at_ms <= ?1
                   AND o.seq = (SELECT MIN(p.seq) FROM callback_outbox p
                                WHERE p.call_id = o.call_id AND p.state = 'pending')
                 ORDER BY o.next_attempt_at_ms, o.created_at_ms, o.call_id, o.seq
                 LIMIT ?2"
            ),
            params![now, limit],
            outbox_from_row,
        )
    }

    fn claim_callbacks(
        &self,
        by: &str,
        now: UnixMs,
        claim_until: UnixMs,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let claimed = query_list(
            &tx,
            &format!(
                "UPDATE callback_outbox SET claimed_by = ?3, claimed_until_ms = ?4
                 WHERE event_id IN (
                   SELECT o.event_id FROM callback_outbox o
                   WHERE o.state = 'pending' AND o.next_attempt_at_ms <= ?1
                     AND (o.claimed_until_ms IS NULL OR o.claimed_until_ms <= ?1)
                     AND o.seq = (SELECT MIN(p.seq) FROM callback_outbox p
                                  WHERE p.call_id = o.call_id AND p.state = 'pending')
                   ORDER BY o.next_attempt_at_ms, o.created_at_ms, o.call_id, o.seq
                   LIMIT ?2)
                 RETURNING {OUTBOX_COLS}"
            ),
            params![now, limit, by, claim_until],
            outbox_from_row,
        )?;
        tx.commit()?;
        let mut claimed = claimed;
        claimed.sort_by(|a, b| {
            (a.next_attempt_at_ms, a.created_at_ms, &a.call_id, a.seq).cmp(&(
                b.next_attempt_at_ms,
                b.created_at_ms,
                &b.call_id,
                b.seq,
            ))
        });
        Ok(claimed)
    }

    fn callback_due(&self, event_id: &str, now: UnixMs) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                "SELECT 1 FROM callback_outbox
                 WHERE event_id = ?1 AND state = 'pending' AND next_attempt_at_ms <= ?2",
                params![event_id, now],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    fn mark_delivered(&self, event_id: &str, attempts: u32) -> Result<(), StoreError> {
        let conn = self.conn()?;
        let n = exec(
            &conn,
            "UPDATE callback_outbox SET state = 'delivered', attempts = ?2, last_error = NULL,
                 claimed_by = NULL, claimed_until_ms = NULL
             WHERE event_id = ?1",
            params![event_id, attempts],
        )?;
        if n == 0 {
            return Err(not_found("callback", event_id));
        }
        Ok(())
    }

    fn reschedule(
        &self,
        event_id: &str,
        attempts: u32,
        next_attempt_at_ms: UnixMs,
        last_error: &str,
    ) -> Result<(), StoreError> {
        let conn = self.conn()?;
        let n = exec(
            &conn,
            "UPDATE callback_outbox SET attempts = ?2, next_attempt_at_ms = ?3, last_error = ?4,
                 claimed_by = NULL, claimed_until_ms = NULL
             WHERE event_id = ?1 AND state = 'pending'",
            params![event_id, attempts, next_attempt_at_ms, last_error],
        )?;
        if n == 0 {
            return Err(not_found("pending callback", event_id));
        }
        Ok(())
    }

    fn abandon_callback(
        &self,
        event_id: &str,
        attempts: u32,
        last_error: &str,
    ) -> Result<(), StoreError> {
        let conn = self.conn()?;
        let n = exec(
            &conn,
            "UPDATE callback_outbox SET state = 'abandoned', attempts = ?2, last_error = ?3,
                 claimed_by = NULL, claimed_until_ms = NULL
             WHERE event_id = ?1 AND state = 'pending'",
            params![event_id, attempts, last_error],
        )?;
        if n == 0 {
            return Err(not_found("pending callback", event_id));
        }
        tracing::warn!(event_id, attempts, "callback abandoned");
        Ok(())
    }

    fn callbacks_for_call(&self, call_id: &str) -> Result<Vec<OutboxEntry>, StoreError> {
        let conn = self.conn()?;
        query_list(
            &conn,
            &format!("SELECT {OUTBOX_COLS} FROM callback_outbox WHERE call_id = ?1 ORDER BY seq"),
            [call_id],
            outbox_from_row,
        )
    }

    fn next_callback_seq(&self, call_id: &str) -> Result<i64, StoreError> {
        let conn = self.conn()?;
        Ok(conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM callback_outbox WHERE call_id = ?1",
            [call_id],
            |r| r.get(0),
        )?)
    }

    // ----- idempotency --------------------------------------------------------------------

    fn put_idempotency(&self, r: &IdempotencyRecord) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        let n = exec(
            &conn,
            "INSERT INTO idempotency (account_id, key, request_hash, response_status,
                 response_body, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (account_id, key) DO NOTHING",
            params![
                r.account_id,
                r.key,
                r.request_hash,
                r.response_status,
                r.response_body,
                r.created_at_ms
            ],
        )?;
        Ok(n > 0)
    }

    fn get_idempotency(
        &self,
        account_id: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let conn = self.conn()?;
        query_one(
            &conn,
            "SELECT account_id, key, request_hash, response_status, response_body, created_at_ms
             FROM idempotency WHERE account_id = ?1 AND key = ?2",
            [account_id, key],
            idempotency_from_row,
        )
    }

    fn purge_idempotency(&self, before_ms: UnixMs) -> Result<usize, StoreError> {
        let conn = self.conn()?;
        Ok(exec(
            &conn,
            "DELETE FROM idempotency WHERE created_at_ms < ?1",
            [before_ms],
        )?)
    }

    fn complete_idempotency(&self, r: &IdempotencyRecord) -> Result<(), StoreError> {
        let conn = self.conn()?;
        let n = exec(
            &conn,
            "UPDATE idempotency SET request_hash = ?3, response_status = ?4, response_body = ?5,
                 created_at_ms = ?6
             WHERE account_id = ?1 AND key = ?2",
            params![
                r.account_id,
                r.key,
                r.request_hash,
                r.response_status,
                r.response_body,
                r.created_at_ms
            ],
        )?;
        if n == 0 {
            return Err(not_found("idempotency key", &r.key));
        }
        Ok(())
    }

    fn release_idempotency(&self, account_id: &str, key: &str) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        Ok(exec(
            &conn,
            "DELETE FROM idempotency WHERE account_id = ?1 AND key = ?2 AND response_status = 0",
            params![account_id, key],
        )? > 0)
    }
}

/// Writes a batch in its order, except the timeline: the entries of one call share one row
/// (the first entry in the row's columns, the others in `more`), written after the batch's
/// other writes, so after the record of a call the batch creates.
///
/// A call's events come in bursts (a response, the request it causes, the status it
/// changes), so one call's 19 entries take about 5 rows. Each row's id is listed in its
/// call's `timeline_rows` by the statement that writes the call's record in the batch
/// (whose page the commit writes anyway), not by an index on `call_id`: that index's
/// entries landed on scattered pages, and each page a transaction touches is a frame its
/// commit writes to the WAL (`docs/benchmarks.md`, "One timeline row per call and batch",
/// "A call's timeline rows listed in its record").
fn apply_writes_on(conn: &Connection, writes: &[CallWrite]) -> Result<(), StoreError> {
    // (call id, its entries in order), in the order of each call's first entry.
    let mut rows: Vec<(&str, Vec<&TimelineEntry>)> = Vec::new();
    // Keyed by aHash: std's SipHash showed at about 1 % of the writer's CPU.
    let mut row_of: HashMap<&str, usize, ahash::RandomState> = HashMap::default();
    for w in writes {
        if let CallWrite::Timeline { call_id, entry } = w {
            match row_of.get(call_id.as_str()) {
                Some(&i) => rows[i].1.push(entry),
                None => {
                    row_of.insert(call_id, rows.len());
                    rows.push((call_id, vec![entry]));
                }
            }
        }
    }
    // Row i's id is `first_id + i`; the call's record write lists it (once), or, for a call
    // whose record the batch does not write, a statement of its own below.
    let first_id = if rows.is_empty() {
        0
    } else {
        next_timeline_id(conn)?
    };
    let mut linked = vec![false; rows.len()];
    let mut link = |call_id: &str| -> Option<i64> {
        let &i = row_of.get(call_id)?;
        (!std::mem::replace(&mut linked[i], true)).then(|| first_id + i as i64)
    };
    for w in writes {
        match w {
            CallWrite::Timeline { .. } => {}
            CallWrite::NewCall(c) => insert_call_on(conn, c, link(&c.id))?,
            CallWrite::Call(c) => update_progress_on(conn, c, false, link(&c.id))?,
            CallWrite::CallStatus(c) => update_progress_on(conn, c, true, link(&c.id))?,
            CallWrite::Callback(e) => enqueue_callback_on(conn, e)?,
        }
    }
    for (i, (call_id, entries)) in rows.into_iter().enumerate() {
        if let Some((first, more)) = entries.split_first() {
            let id = first_id + i as i64;
            insert_timeline_row_on(conn, id, call_id, first, more)?;
            if !linked[i] {
                link_timeline_row_on(conn, call_id, id)?;
            }
        }
    }
    Ok(())
}

/// The id the next `call_timeline` row gets (as SQLite would give it: one above the
/// highest).
fn next_timeline_id(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT COALESCE(MAX(id), 0) + 1 FROM call_timeline")?
        .query_row([], |r| r.get(0))?)
}

/// Adds the `call_timeline` row `id` to its call's `timeline_rows`.
fn link_timeline_row_on(conn: &Connection, call_id: &str, id: i64) -> Result<(), StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE calls SET timeline_rows = COALESCE(timeline_rows || ',' || ?2, ?2)
             WHERE id = ?1",
        )?
        .execute(params![call_id, id])?;
    if n == 0 {
        return Err(not_found("call", call_id));
    }
    Ok(())
}

/// The ids of a call's timeline rows (migration 18).
const TIMELINE_ROWS_OF_CALL: &str = "SELECT timeline_rows FROM calls WHERE id = ?1";

/// One timeline row, by its id.
const TIMELINE_ROW: &str = "SELECT at_ms, kind, leg, detail, more FROM call_timeline WHERE id = ?1";

/// The account of the new call an admission's `writes` must hold.
fn admitted_account(writes: &[CallWrite]) -> Result<&str, StoreError> {
    writes
        .iter()
        .find_map(|w| match w {
            CallWrite::NewCall(c) => Some(c.account_id.as_str()),
            _ => None,
        })
        .ok_or_else(|| StoreError::Invalid {
            field: "writes",
            reason: "admit_call needs a new call".to_owned(),
        })
}

/// Admits a new call of `account_id` on `conn` (inside the caller's transaction): the
/// account's live calls against `max_concurrent`, a token from its rate bucket, then `writes`
/// (which hold the new call, [`admitted_account`]). Writes nothing unless the call is
/// admitted; an error may leave part of it written, for the caller to roll back with its
/// transaction.
fn admit_on(
    conn: &Connection,
    account_id: &str,
    writes: &[CallWrite],
    limits: &AccountLimits,
    now_ms: UnixMs,
) -> Result<Admission, StoreError> {
    let live: i64 = conn
        .prepare_cached(LIVE_COUNT)?
        .query_row([account_id], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    if live >= i64::from(limits.max_concurrent) {
        return Ok(Admission::Concurrency);
    }
    let bucket = conn
        .prepare_cached("SELECT tokens, at_ms FROM rate_buckets WHERE account_id = ?1")?
        .query_row([account_id], |r| {
            Ok(RateBucket {
                tokens: r.get(0)?,
                at_ms: r.get(1)?,
            })
        })
        .optional()?;
    let bucket = match RateBucket::take(bucket, limits, now_ms) {
        Ok(b) => b,
        Err(retry_after_secs) => return Ok(Admission::Rate { retry_after_secs }),
    };
    conn.prepare_cached(
        "INSERT INTO rate_buckets (account_id, tokens, at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (account_id) DO UPDATE SET tokens = excluded.tokens,
                                                at_ms = excluded.at_ms",
    )?
    .execute(params![account_id, bucket.tokens, bucket.at_ms])?;
    apply_writes_on(conn, writes)?;
    Ok(Admission::Admitted)
}

/// A call record's JSON columns, as stored.
struct CallJson {
    recording: String,
    metadata: String,
    legs: String,
    stats: String,
}

impl CallJson {
    fn of(c: &CallRecord) -> Result<CallJson, StoreError> {
        Ok(CallJson {
            recording: serde_json::to_string(&c.recording)?,
            metadata: serde_json::to_string(&c.metadata)?,
            legs: serde_json::to_string(&c.legs)?,
            stats: serde_json::to_string(&c.stats)?,
        })
    }
}

/// `timeline_row`: the id of the call's first `call_timeline` row, written after it in the
/// same transaction (its `timeline_rows`).
fn insert_call_on(
    conn: &Connection,
    c: &CallRecord,
    timeline_row: Option<i64>,
) -> Result<(), StoreError> {
    let CallJson {
        recording,
        metadata,
        legs,
        stats,
    } = CallJson::of(c)?;
    exec(
        conn,
        &format!(
            "INSERT INTO calls ({CALL_COLS}, timeline_rows) VALUES
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
              ?18, ?19, ?20, ?21)"
        ),
        params![
            c.id,
            c.account_id,
            c.user_id,
            c.request_id,
            c.status.as_str(),
            c.dial_string,
            c.destination,
            c.caller_id,
            c.callback_url,
            c.end_leg,
            c.sip_code,
            c.created_at_ms,
            c.answered_at_ms,
            c.ended_at_ms,
            metadata,
            legs,
            stats,
            c.node_id,
            c.direction,
            recording,
            timeline_row
        ],
    )
    .map_err(|e| insert_error(e, "call", &c.id))?;
    Ok(())
}

/// A call record written whole over the one stored (`update_call_on`).
const UPDATE_CALL: &str = "UPDATE calls SET user_id = ?3, request_id = ?4, status = ?5,
     dial_string = ?6, destination = ?7, caller_id = ?8, callback_url = ?9, end_leg = ?10,
     sip_code = ?11, answered_at_ms = ?12, ended_at_ms = ?13, metadata = ?14, legs = ?15,
     stats = ?16, recording = ?17
 WHERE id = ?1 AND account_id = ?2";

/// [`UPDATE_CALL`] for a record whose keyed columns (`status`, which the `live_calls`
/// triggers follow, `request_id` of `calls_request`, and `user_id` with them) are those
/// stored: they are matched, not set. SQLite rewrites the entries of every index whose
/// columns a statement sets, changed or not (a delete and an insert, and the index page goes
/// to the WAL with the commit), and runs an `AFTER UPDATE OF status` trigger whenever the
/// statement sets `status`; most of a call's updates (its legs ringing and answering, its
/// stats) leave them as they are. No row changed: they differ, and [`UPDATE_CALL`] writes
/// them.
const UPDATE_CALL_SAME_KEYS: &str = "UPDATE calls SET
     dial_string = ?6, destination = ?7, caller_id = ?8, callback_url = ?9, end_leg = ?10,
     sip_code = ?11, answered_at_ms = ?12, ended_at_ms = ?13, metadata = ?14, legs = ?15,
     stats = ?16, recording = ?17
 WHERE id = ?1 AND account_id = ?2 AND user_id IS ?3 AND request_id IS ?4 AND status = ?5";

/// A call's progress (`CallWrite::Call`): what its events change. What was fixed when it
/// was placed (user, request id, dial string, destination, caller id, callback URL,
/// metadata) stays as stored: none of it is bound, nor the metadata serialized again, on
/// every event.
const UPDATE_PROGRESS: &str = "UPDATE calls SET status = ?3, end_leg = ?4, sip_code = ?5,
     answered_at_ms = ?6, ended_at_ms = ?7, legs = ?8, stats = ?9, recording = ?10,
     timeline_rows = COALESCE(timeline_rows || ',' || ?11, ?11, timeline_rows)
 WHERE id = ?1 AND account_id = ?2";

/// [`UPDATE_PROGRESS`] when the status is the one stored: matched, not set, so that the
/// `live_calls` trigger does not run (as [`UPDATE_CALL_SAME_KEYS`]).
const UPDATE_PROGRESS_SAME_STATUS: &str = "UPDATE calls SET end_leg = ?4, sip_code = ?5,
     answered_at_ms = ?6, ended_at_ms = ?7, legs = ?8, stats = ?9, recording = ?10,
     timeline_rows = COALESCE(timeline_rows || ',' || ?11, ?11, timeline_rows)
 WHERE id = ?1 AND account_id = ?2 AND status = ?3";

/// `new_status`: the writer's word that the status is not the stored one, so the statement
/// that keeps it is not tried first (it would match no row); either way the row ends right.
/// `timeline_row`: the id of a `call_timeline` row of the call written in the same
/// transaction, added to its `timeline_rows`.
fn update_progress_on(
    conn: &Connection,
    c: &CallRecord,
    new_status: bool,
    timeline_row: Option<i64>,
) -> Result<(), StoreError> {
    let recording = serde_json::to_string(&c.recording)?;
    let legs = serde_json::to_string(&c.legs)?;
    let stats = serde_json::to_string(&c.stats)?;
    let params = params![
        c.id,
        c.account_id,
        c.status.as_str(),
        c.end_leg,
        c.sip_code,
        c.answered_at_ms,
        c.ended_at_ms,
        legs,
        stats,
        recording,
        timeline_row
    ];
    let mut n = if new_status {
        0
    } else {
        exec(conn, UPDATE_PROGRESS_SAME_STATUS, params)?
    };
    if n == 0 {
        n = exec(conn, UPDATE_PROGRESS, params)?;
    }
    if n == 0 {
        return Err(not_found("call", &c.id));
    }
    Ok(())
}

fn update_call_on(conn: &Connection, c: &CallRecord) -> Result<(), StoreError> {
    let CallJson {
        recording,
        metadata,
        legs,
        stats,
    } = CallJson::of(c)?;
    let params = params![
        c.id,
        c.account_id,
        c.user_id,
        c.request_id,
        c.status.as_str(),
        c.dial_string,
        c.destination,
        c.caller_id,
        c.callback_url,
        c.end_leg,
        c.sip_code,
        c.answered_at_ms,
        c.ended_at_ms,
        metadata,
        legs,
        stats,
        recording
    ];
    let mut n = exec(conn, UPDATE_CALL_SAME_KEYS, params)?;
    if n == 0 {
        n = exec(conn, UPDATE_CALL, params)?;
    }
    if n == 0 {
        return Err(not_found("call", &c.id));
    }
    Ok(())
}

/// One entry in a row of its own, listed in its call's `timeline_rows`. The caller holds a
/// write transaction throughout, so that no other writer takes the same id.
fn append_timeline_on(
    conn: &Connection,
    call_id: &str,
    entry: &TimelineEntry,
) -> Result<(), StoreError> {
    let id = next_timeline_id(conn)?;
    insert_timeline_row_on(conn, id, call_id, entry, &[])?;
    link_timeline_row_on(conn, call_id, id)
}

/// The `call_timeline` row `id`: `first` in its columns, `more` (in order) in its `more`
/// column. Its call lists it in `timeline_rows` ([`apply_writes_on`]).
fn insert_timeline_row_on(
    conn: &Connection,
    id: i64,
    call_id: &str,
    first: &TimelineEntry,
    more: &[&TimelineEntry],
) -> Result<(), StoreError> {
    let detail = first.detail.as_str();
    let more = if more.is_empty() {
        None
    } else {
        Some(serde_json::to_string(more)?)
    };
    exec(
        conn,
        "INSERT INTO call_timeline (id, call_id, at_ms, kind, leg, detail, more)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            id,
            call_id,
            first.at_ms,
            first.kind,
            first.leg,
            detail,
            more
        ],
    )
    .map_err(|e| {
        if StoreError::is_foreign_key_violation(&e) {
            not_found("call", call_id)
        } else {
            StoreError::Sqlite(e)
        }
    })?;
    Ok(())
}

fn enqueue_callback_on(conn: &Connection, e: &OutboxEntry) -> Result<(), StoreError> {
    exec(
        conn,
        &format!(
            "INSERT INTO callback_outbox ({OUTBOX_COLS}) VALUES
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        ),
        params![
            e.event_id,
            e.call_id,
            e.account_id,
            e.seq,
            e.url,
            e.body,
            e.state.to_sql(),
            e.attempts,
            e.next_attempt_at_ms,
            e.last_error,
            e.created_at_ms
        ],
    )
    .map_err(|err| insert_error(err, "callback (event_id or call seq)", &e.event_id))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_statuses_are_the_statuses_not_final() {
        let live: Vec<String> = CallStatus::ALL
            .iter()
            .filter(|s| !s.is_final())
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        assert_eq!(live.join(", "), LIVE_STATUSES);
        let compared: Vec<String> = live.iter().map(|s| format!("status = {s}")).collect();
        assert_eq!(format!("({})", compared.join(" OR ")), LIVE_CONDITION);
    }

    /// The query plan of `sql` (one parameter) on a fresh database, one step a line.
    fn query_plan(sql: &str) -> Vec<String> {
        let store = SqliteStore::open_in_memory().unwrap();
        let conn = store.conn().unwrap();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan = stmt
            .query_map(["x"], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        plan
    }

    /// A refresh rewrites its binding's row and no index entry (migration 19): its `UPDATE`
    /// sets only columns that no index holds. A new contact's write adds the primary key's
    /// entry alone.
    #[test]
    fn a_refresh_writes_its_row_and_no_index() {
        let store = SqliteStore::open_in_memory().unwrap();
        let conn = store.conn().unwrap();
        let opcodes = |sql: &str| -> Vec<String> {
            let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
            let unbound = vec![rusqlite::types::Null; stmt.parameter_count()];
            stmt.query_map(params_from_iter(unbound), |r| r.get::<_, String>(1))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let refresh = opcodes(REFRESH_UPDATE);
        let index_writes = |ops: &[String]| {
            ops.iter()
                .filter(|o| matches!(o.as_str(), "IdxInsert" | "IdxDelete"))
                .count()
        };
        assert!(refresh.iter().any(|o| o == "Insert"), "{refresh:?}");
        assert_eq!(index_writes(&refresh), 0, "{refresh:?}");
        // The primary key's entry when the row is new; nothing indexed changes otherwise.
        let upsert = opcodes(UPSERT_BINDING);
        assert_eq!(index_writes(&upsert), 1, "{upsert:?}");
        let indexes: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'bindings'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(indexes, ["sqlite_autoindex_bindings_1"]);
    }

    /// The call log is read through `calls_log` (backwards, since migration 17), with no
    /// sort, with and without a cursor.
    #[test]
    fn the_call_log_reads_its_index_with_no_sort() {
        let store = SqliteStore::open_in_memory().unwrap();
        let conn = store.conn().unwrap();
        for cursor in [
            "",
            " AND created_at_ms <= 5 AND (created_at_ms < 5 OR id < 'x')",
        ] {
            let sql = format!(
                "EXPLAIN QUERY PLAN SELECT {CALL_COLS} FROM calls WHERE account_id = ?1{cursor}
                 ORDER BY created_at_ms DESC, id DESC LIMIT 51"
            );
            let plan: Vec<String> = conn
                .prepare(&sql)
                .unwrap()
                .query_map(["x"], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(plan.iter().any(|p| p.contains("calls_log")), "{plan:?}");
            assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
        }
    }

    /// A timeline insert writes no `sqlite_sequence` row (no AUTOINCREMENT since 17).
    #[test]
    fn a_timeline_insert_leaves_sqlite_sequence_alone() {
        let store = SqliteStore::open_in_memory().unwrap();
        let conn = store.conn().unwrap();
        let rec = CallRecord::new("call_1".into(), "acc_1".into(), "+14155550100".into(), 1);
        insert_call_on(&conn, &rec, None).unwrap();
        append_timeline_on(
            &conn,
            "call_1",
            &TimelineEntry {
                at_ms: 1,
                kind: "api.request".into(),
                leg: None,
                detail: serde_json::json!({}).into(),
            },
        )
        .unwrap();
        let seq: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_sequence WHERE name = 'call_timeline'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(seq, 0);
    }

    /// A call's timeline is read through the call's primary key, then each row by its id:
    /// no scan, no sort.
    #[test]
    fn a_timeline_read_uses_the_keys_and_no_sort() {
        let listed = query_plan(TIMELINE_ROWS_OF_CALL);
        assert!(
            listed
                .iter()
                .any(|p| p.contains("sqlite_autoindex_calls_1")),
            "plan: {listed:?}"
        );
        let row = query_plan(TIMELINE_ROW);
        assert!(
            row.iter().any(|p| p.contains("INTEGER PRIMARY KEY")),
            "plan: {row:?}"
        );
        for p in listed.iter().chain(&row) {
            assert!(
                !p.contains("SCAN") && !p.contains("TEMP B-TREE"),
                "plan: {listed:?} {row:?}"
            );
        }
    }

    /// Writing a call record builds no temporary b-tree (a partial index's `IN` list did,
    /// on every insert and twice on every update).
    #[test]
    fn call_writes_open_no_ephemeral_table() {
        let store = SqliteStore::open_in_memory().unwrap();
        let conn = store.conn().unwrap();
        let ops = |sql: &str, n: usize| -> Vec<String> {
            let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
            let params = vec![rusqlite::types::Value::Null; n];
            stmt.query_map(params_from_iter(params), |r| r.get::<_, String>(1))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let update = ops(UPDATE_CALL, 17);
        let insert = ops(
            &format!(
                "INSERT INTO calls ({CALL_COLS}) VALUES ({})",
                vec!["?"; 20].join(", ")
            ),
            20,
        );
        for (what, ops) in [("update", update), ("insert", insert)] {
            assert!(ops.iter().any(|o| o == "IdxInsert"), "{what}: {ops:?}");
            assert!(!ops.iter().any(|o| o == "OpenEphemeral"), "{what}: {ops:?}");
        }
        // An index entry written, or a trigger's program run, by one of `ops`.
        let writes_index =
            |ops: &[String]| ops.iter().any(|o| o == "IdxInsert" || o == "IdxDelete");
        let runs_trigger = |ops: &[String]| ops.iter().any(|o| o == "Program");
        // An update that leaves the indexed columns as stored touches no index entry (the
        // `live_calls` trigger, on `status`, does not fire either).
        let same = ops(UPDATE_CALL_SAME_KEYS, 17);
        assert!(
            !writes_index(&same) && !runs_trigger(&same),
            "same keys: {same:?}"
        );
        // A call's progress, its status changed or not, moves no index entry of `calls`
        // (migration 20 dropped `calls_node`, keyed by the status); a status change runs the
        // `live_calls` trigger, whose program (listed after the statement's `Halt`) writes
        // that table's row.
        let progress = ops(UPDATE_PROGRESS, 11);
        let own = progress.split(|o| o == "Halt").next().unwrap_or_default();
        assert!(!writes_index(own), "progress: {progress:?}");
        assert!(runs_trigger(&progress), "{progress:?}");
        let same = ops(UPDATE_PROGRESS_SAME_STATUS, 11);
        assert!(
            !writes_index(&same) && !runs_trigger(&same),
            "same status: {same:?}"
        );
    }

    /// A record update goes through whichever statement fits: the same indexed columns, or
    /// new ones (the status, the request id), which the indexes and `live_calls` follow.
    #[test]
    fn call_updates_with_the_same_or_new_indexed_columns() {
        let store = SqliteStore::open_in_memory().unwrap();
        let mut c = CallRecord::new("call_u1".into(), "acct_u".into(), "+14155550100".into(), 0);
        c.status = CallStatus::Ringing;
        store.insert_call(&c).unwrap();
        let live = |store: &SqliteStore| -> i64 {
            store
                .conn()
                .unwrap()
                .query_row(
                    "SELECT n FROM live_calls WHERE account_id = 'acct_u'",
                    [],
                    |r| r.get(0),
                )
                .unwrap()
        };
        assert_eq!(live(&store), 1);
        // Same status: the legs change.
        c.sip_code = Some(180);
        store.update_call(&c).unwrap();
        assert_eq!(
            store.get_call("acct_u", "call_u1").unwrap(),
            Some(c.clone())
        );
        // A request id and a new status.
        c.request_id = Some("req-1".into());
        c.status = CallStatus::Completed;
        c.sip_code = Some(200);
        store.update_call(&c).unwrap();
        assert_eq!(
            store.get_call("acct_u", "call_u1").unwrap(),
            Some(c.clone())
        );
        assert_eq!(live(&store), 0);
        let by_node: i64 = store
            .conn()
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM calls WHERE node_id IS ?1 AND status = 'completed'",
                [&c.node_id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(by_node, 1);
        // A call that is not there is still an error.
        let mut gone = c.clone();
        gone.id = "call_u2".into();
        assert!(store.update_call(&gone).is_err());
    }

    /// The admission reads the account's one `live_calls` row, not its calls.
    #[test]
    fn admission_count_reads_one_row() {
        let plan = query_plan(LIVE_COUNT);
        assert!(
            plan.iter()
                .any(|p| p.contains("live_calls") && p.contains("SEARCH")),
            "plan: {plan:?}"
        );
    }

    /// `live_calls` follows every way a call comes, changes status and goes, for each
    /// account, as a count of the calls themselves would.
    #[test]
    fn live_calls_follow_inserts_updates_and_deletes() {
        let store = SqliteStore::open_in_memory().unwrap();
        let conn = store.conn().unwrap();
        let check = |step: &str| {
            let counted: Vec<(String, i64)> = conn
                .prepare(&format!(
                    "SELECT account_id, COUNT(*) FROM calls WHERE {LIVE_CONDITION}
                     GROUP BY account_id ORDER BY account_id"
                ))
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let kept: Vec<(String, i64)> = conn
                .prepare("SELECT account_id, n FROM live_calls WHERE n <> 0 ORDER BY account_id")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(kept, counted, "after {step}");
        };
        let mut calls = Vec::new();
        for (i, acc) in ["acc_a", "acc_b", "acc_a", "acc_a"].iter().enumerate() {
            let mut c = CallRecord::new(format!("call_{i}"), (*acc).into(), "+1".into(), 1);
            if i == 3 {
                c.status = CallStatus::Failed; // born final: never live
            }
            insert_call_on(&conn, &c, None).unwrap();
            calls.push(c);
        }
        check("inserts");
        assert_eq!(
            conn.query_row(LIVE_COUNT, ["acc_a"], |r| r.get::<_, i64>(0))
                .unwrap(),
            2
        );
        for (i, status) in [
            (0, CallStatus::Ringing),
            (0, CallStatus::InProgress),
            (1, CallStatus::Completed),
            (0, CallStatus::Completed),
            (0, CallStatus::Completed),
            (3, CallStatus::Failed),
        ] {
            calls[i].status = status;
            update_call_on(&conn, &calls[i]).unwrap();
            check(&format!("call_{i} {status:?}"));
        }
        conn.execute("DELETE FROM calls WHERE id = 'call_2'", [])
            .unwrap();
        check("a live call deleted");
        conn.execute("DELETE FROM calls WHERE id = 'call_1'", [])
            .unwrap();
        check("an ended call deleted");
    }

    /// A batch's timeline entries of one call take one row, in the batch's order; another
    /// call's entries in between take their own.
    #[test]
    fn a_batch_writes_one_timeline_row_per_call() {
        let store = SqliteStore::open_in_memory().unwrap();
        let conn = store.conn().unwrap();
        for id in ["call_a", "call_b"] {
            let c = CallRecord::new(id.into(), "acct".into(), "+14155550100".into(), 1);
            insert_call_on(&conn, &c, None).unwrap();
        }
        let entry = |at: i64| TimelineEntry {
            at_ms: at,
            kind: format!("k{at}"),
            leg: (at % 2 == 0).then(|| "agent".to_owned()),
            detail: serde_json::json!({ "at": at }).into(),
        };
        let on = |id: &str, at: i64| CallWrite::Timeline {
            call_id: id.into(),
            entry: entry(at),
        };
        apply_writes_on(
            &conn,
            &[
                on("call_a", 1),
                on("call_b", 2),
                on("call_a", 3),
                on("call_a", 4),
            ],
        )
        .unwrap();
        let rows: Vec<(String, i64, Option<String>)> = conn
            .prepare("SELECT call_id, at_ms, more FROM call_timeline ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!((rows[0].0.as_str(), rows[0].1), ("call_a", 1));
        assert_eq!(
            (rows[1].0.as_str(), rows[1].1, rows[1].2.as_deref()),
            ("call_b", 2, None)
        );
        drop(conn);
        assert_eq!(
            store.timeline("call_a").unwrap(),
            vec![entry(1), entry(3), entry(4)]
        );
    }

    /// A batch's timeline row is listed in its call's `timeline_rows` by the statement that
    /// writes the call's record (a new call's insert, a progress update), or by one of its
    /// own when the batch does not write the record; the call's timeline is read back
    /// through that list, in the order written. A call the batch does not know fails it.
    #[test]
    fn timeline_rows_are_listed_in_the_record_written_with_them() {
        let store = SqliteStore::open_in_memory().unwrap();
        let conn = store.conn().unwrap();
        let entry = |at: i64| TimelineEntry {
            at_ms: at,
            kind: format!("k{at}"),
            leg: None,
            detail: serde_json::json!({ "at": at }).into(),
        };
        let on = |id: &str, at: i64| CallWrite::Timeline {
            call_id: id.into(),
            entry: entry(at),
        };
        let mut rec = CallRecord::new("call_a".into(), "acc_a".into(), "+1".into(), 1);
        // An admission: the record and its first entry.
        apply_writes_on(&conn, &[CallWrite::NewCall(rec.clone()), on("call_a", 1)]).unwrap();
        // A batch that writes the record, with two entries of the call and one of another.
        let other = CallRecord::new("call_b".into(), "acc_a".into(), "+1".into(), 2);
        insert_call_on(&conn, &other, None).unwrap();
        rec.status = CallStatus::Ringing;
        apply_writes_on(
            &conn,
            &[
                on("call_a", 2),
                on("call_b", 3),
                on("call_a", 4),
                CallWrite::CallStatus(rec.clone()),
            ],
        )
        .unwrap();
        // A batch with an entry only.
        apply_writes_on(&conn, &[on("call_a", 5)]).unwrap();
        let listed = |id: &str| -> Option<String> {
            conn.query_row(TIMELINE_ROWS_OF_CALL, [id], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(listed("call_a").as_deref(), Some("1,2,4"));
        assert_eq!(listed("call_b").as_deref(), Some("3"));
        let status: String = conn
            .query_row("SELECT status FROM calls WHERE id = 'call_a'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(status, "ringing");
        let err = apply_writes_on(&conn, &[on("call_x", 6)]).unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
        drop(conn);
        assert_eq!(
            store.timeline("call_a").unwrap(),
            vec![entry(1), entry(2), entry(4), entry(5)]
        );
        assert_eq!(store.timeline("call_b").unwrap(), vec![entry(3)]);
        assert_eq!(store.timeline("call_x").unwrap(), vec![]);
    }
}
