//! [`PgStore`]: the store on PostgreSQL, for several nodes sharing one database.
//!
//! - Driver: `tokio-postgres` (async, pipelined, prepared statements), pooled by
//!   `deadpool-postgres` (each pooled connection keeps its prepared statements). Nothing here
//!   blocks a thread: every call is a future on the caller's task.
//! - Schema: [`MIGRATIONS`], applied at open inside one transaction that holds an advisory
//!   lock, so that nodes starting together migrate once. The same tables and columns as on
//!   SQLite, with PostgreSQL types (`BIGINT`, `BOOLEAN`, `BYTEA`, `BIGSERIAL`), except that
//!   here each timeline entry is a row of its own (SQLite packs a batch's entries of one call
//!   into one row, `call_timeline.more`).
//! - Transactions: [`Store::write_call_batch`] and [`Store::apply_provisioning`] run in one
//!   transaction each, as on SQLite: a batch's timeline rows, call records and callbacks
//!   commit together or not at all.
//! - Binding refreshes are written at once ([`Store::refresh_binding`]'s default): there is
//!   no per-node memory of bindings that other nodes could not see.

use std::collections::HashSet;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::model::{
    Account, AccountLimits, Admission, ApiKey, Binding, CallFilter, CallRecord, CallStatus,
    CallWrite, Device, IdempotencyRecord, NodeLease, Number, OutboxEntry, OutboxState,
    PublishableKey, RateBucket, TimelineEntry, Transport, Trunk, TrunkRouting, UnixMs, UnixSecs,
    User,
};
use crate::provision::{Change, ConfigIssue, ProvisionReport, Provisioning, DEVICE_PREFIX};
use crate::secret::{api_secret_hash, constant_time_eq, ha1_md5, ha1_sha256, Secret};
use crate::sqlite::{
    decode_cursor, encode_cursor, log_change, not_found, redact_url, validate_account,
    validate_trunk, validate_user, wall_clock_ms,
};
use crate::typeid::TypeId;
use crate::{Store, StoreError};

/// The schema on PostgreSQL, one script per version (its own numbering, not SQLite's).
pub const MIGRATIONS: &[&str] = &[
    // 1: the schema of SQLite's versions 1-3.
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE accounts (
    id                   TEXT PRIMARY KEY,
    name                 TEXT NOT NULL,
    region               TEXT NOT NULL,
    webhook_secret       TEXT NOT NULL,
    allowed_prefixes     TEXT NOT NULL,         -- JSON array of strings
    allowed_countries    TEXT NOT NULL DEFAULT '[]',
    blocked_number_types TEXT NOT NULL
        DEFAULT '["premium_rate","shared_cost","personal_number","uan"]',
    calls_per_second     DOUBLE PRECISION NOT NULL DEFAULT 5,
    burst                BIGINT NOT NULL DEFAULT 20,
    max_concurrent       BIGINT NOT NULL DEFAULT 100
);

CREATE TABLE api_keys (
    key         TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL UNIQUE
);
CREATE INDEX api_keys_account ON api_keys(account_id);

CREATE TABLE users (
    id         TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    extension  TEXT,
    agent_id   BIGINT,
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
    emergency   BOOLEAN NOT NULL DEFAULT FALSE,
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
    expires_at BIGINT NOT NULL,
    q          REAL,
    call_id    TEXT NOT NULL,
    cseq       BIGINT NOT NULL,
    instance   TEXT,
    reg_id     BIGINT,
    user_agent TEXT,
    updated_at BIGINT NOT NULL,
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
    sip_code       BIGINT,
    created_at_ms  BIGINT NOT NULL,
    answered_at_ms BIGINT,
    ended_at_ms    BIGINT,
    metadata       TEXT NOT NULL,
    legs           TEXT NOT NULL,
    stats          TEXT NOT NULL
);
CREATE INDEX calls_log ON calls(account_id, created_at_ms DESC, id DESC);
CREATE INDEX calls_request ON calls(account_id, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX calls_unfinished ON calls(status);

CREATE TABLE call_timeline (
    id      BIGSERIAL PRIMARY KEY,
    call_id TEXT NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    at_ms   BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    leg     TEXT,
    detail  TEXT NOT NULL
);
CREATE INDEX call_timeline_call ON call_timeline(call_id, at_ms, id);

CREATE TABLE callback_outbox (
    event_id           TEXT PRIMARY KEY,
    call_id            TEXT NOT NULL,
    account_id         TEXT NOT NULL,
    seq                BIGINT NOT NULL,
    url                TEXT NOT NULL,
    body               TEXT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'abandoned')),
    attempts           BIGINT NOT NULL,
    next_attempt_at_ms BIGINT NOT NULL,
    last_error         TEXT,
    created_at_ms      BIGINT NOT NULL,
    UNIQUE (call_id, seq)
);
CREATE INDEX callback_outbox_due ON callback_outbox(state, next_attempt_at_ms);
CREATE INDEX callback_outbox_call ON callback_outbox(call_id, state, seq);

CREATE TABLE idempotency (
    account_id      TEXT NOT NULL,
    key             TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    response_status BIGINT NOT NULL,
    response_body   TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (account_id, key)
);
CREATE INDEX idempotency_created ON idempotency(created_at_ms);
"#,
    // 2: the node that owns each call, and the nodes' leases (SQLite's version 4).
    r#"
ALTER TABLE calls ADD COLUMN node_id TEXT;
CREATE INDEX calls_node ON calls(node_id, status);
CREATE TABLE nodes (
    node_id       TEXT PRIMARY KEY,
    instance      TEXT NOT NULL,
    api_url       TEXT NOT NULL,
    until_ms      BIGINT NOT NULL,
    taken_over_by TEXT
);
"#,
    // 3: trunk failover, health checks and limits (SPEC §9.8, issue 22), as SQLite's 5.
    r#"
ALTER TABLE trunks ADD COLUMN priority BIGINT NOT NULL DEFAULT 10;
ALTER TABLE trunks ADD COLUMN invite_timeout_ms BIGINT NOT NULL DEFAULT 2000;
ALTER TABLE trunks ADD COLUMN failover_codes TEXT NOT NULL DEFAULT '408,500,502,503,504';
ALTER TABLE trunks ADD COLUMN options_interval_secs BIGINT NOT NULL DEFAULT 0;
ALTER TABLE trunks ADD COLUMN down_after BIGINT NOT NULL DEFAULT 3;
ALTER TABLE trunks ADD COLUMN up_after BIGINT NOT NULL DEFAULT 2;
ALTER TABLE trunks ADD COLUMN max_calls BIGINT;
ALTER TABLE trunks ADD COLUMN calls_per_second BIGINT;
"#,
    // 4: the browser side (SQLite's version 6): publishable keys, the platform an account is
    // connected to.
    r#"
ALTER TABLE accounts ADD COLUMN platform TEXT;
CREATE TABLE publishable_keys (
    key           TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    source        TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX publishable_keys_account ON publishable_keys(account_id);
"#,
    // 5: calls users ask for (SQLite's version 7): the account's default callback URL, its
    // confirm and record defaults; a call's direction and its recording.
    r#"
ALTER TABLE accounts ADD COLUMN callback_url TEXT;
ALTER TABLE accounts ADD COLUMN confirm_calls BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE accounts ADD COLUMN record_calls BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE calls ADD COLUMN direction TEXT NOT NULL DEFAULT 'outbound';
ALTER TABLE calls ADD COLUMN recording TEXT NOT NULL DEFAULT 'null';
"#,
    // 6: secure trunks (SPEC §9.5), as SQLite's 8: `tls` joins the transports, and `srtp`
    // says how a trunk's media is encrypted.
    r#"
ALTER TABLE trunks DROP CONSTRAINT trunks_transport_check;
ALTER TABLE trunks ADD CONSTRAINT trunks_transport_check
    CHECK (transport IN ('udp', 'tcp', 'tls'));
ALTER TABLE trunks ADD COLUMN srtp TEXT NOT NULL DEFAULT 'none'
    CHECK (srtp IN ('none', 'sdes'));
"#,
    // 7: callbacks claimed for delivery by one node at a time (SQLite's version 9).
    r#"
ALTER TABLE callback_outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE callback_outbox ADD COLUMN claimed_until_ms BIGINT;
"#,
    // 8: the RFC 3327 Path of a binding (SQLite's version 10).
    r#"
ALTER TABLE bindings ADD COLUMN path TEXT NOT NULL DEFAULT '[]';
"#,
    // 9: an account's live calls without reading its call history (SQLite's version 11).
    r#"
CREATE INDEX calls_live ON calls(account_id) WHERE status IN ('queued', 'ringing', 'in-progress');
"#,
    // 10: each account's token bucket for its call rate, shared by the nodes (SQLite's
    // version 12). No row: the bucket is full.
    r#"
CREATE TABLE rate_buckets (
    account_id TEXT PRIMARY KEY,           -- as calls.account_id: no foreign key
    tokens     DOUBLE PRECISION NOT NULL,
    at_ms      BIGINT NOT NULL
);
"#,
];

/// The advisory lock held while migrating (any constant shared by all nodes).
const MIGRATION_LOCK: i64 = 0x6469_616c_6272;
/// The advisory lock held while applying the provisioning tables.
const PROVISION_LOCK: i64 = 0x6469_616c_6273;

const PEPPER_KEY: &str = "api_secret_pepper";
const PEPPER_LEN: usize = 32;

/// Connections in the pool (per node).
pub const POOL_SIZE: usize = 16;

/// How long opening a connection may take (connect and start-up) before the store says the
/// database is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// The PostgreSQL implementation of [`Store`].
pub struct PgStore {
    pool: Pool,
    pepper: Vec<u8>,
    /// `store.url` with its password replaced by `***`.
    url: String,
    /// [`Store::provisioning_generation`].
    generation: crate::Generation,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database named by `url` (`postgres://USER[:PASS]@HOST[:PORT]/DB`),
    /// runs pending migrations and reads (or creates) the API secret pepper.
    /// [`StoreError::PostgresUnreachable`] names `store.url` when no connection can be made.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let shown = redact_url(url);
        let mut config: tokio_postgres::Config =
            url.parse()
                .map_err(|e: tokio_postgres::Error| StoreError::Invalid {
                    field: "store.url",
                    reason: format!("{shown}: {e}"),
                })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("dialbridge");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .wait_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| StoreError::Invalid {
                field: "store.url",
                reason: format!("{shown}: {e}"),
            })?;
        let mut client = pool
            .get()
            .await
            .map_err(|e| StoreError::PostgresUnreachable {
                url: shown.clone(),
                reason: pool_error_reason(&e),
            })?;
        migrate(&mut client).await?;
        let pepper = load_or_create_pepper(&client).await?;
        drop(client);
        tracing::info!(url = %shown, version = MIGRATIONS.len(), "store opened (PostgreSQL)");
        Ok(PgStore {
            pool,
            pepper,
            url: shown,
            generation: crate::Generation::default(),
        })
    }

    /// The schema version recorded in the database.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let c = self.pool.get().await?;
        current_version(&c).await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    fn secret_hash(&self, secret: &str) -> String {
        api_secret_hash(&self.pepper, secret)
    }
}

/// Why the pool could not give a connection, said plainly.
fn pool_error_reason(e: &deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError as P;
    match e {
        P::Timeout(_) => "no connection within the time-out".to_owned(),
        P::Backend(b) => {
            let mut s = b.to_string();
            let mut src = std::error::Error::source(b);
            while let Some(cause) = src {
                let c = cause.to_string();
                if !s.contains(&c) {
                    s.push_str(": ");
                    s.push_str(&c);
                }
                src = cause.source();
            }
            s
        }
        other => other.to_string(),
    }
}

async fn current_version(c: &tokio_postgres::Client) -> Result<i64, StoreError> {
    let row = c
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .await?;
    Ok(row.try_get::<_, i64>(0)?)
}

async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version       BIGINT PRIMARY KEY,
             applied_at_ms BIGINT NOT NULL
         );",
    )
    .await?;
    let found: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .await?
        .try_get(0)?;
    let supported = MIGRATIONS.len() as i64;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for (version, sql) in (1i64..).zip(MIGRATIONS.iter()).skip(found as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at_ms) VALUES ($1, $2)",
            &[&version, &wall_clock_ms()],
        )
        .await?;
        tracing::info!(version, "store migration applied (PostgreSQL)");
    }
    tx.commit().await?;
    Ok(())
}

async fn load_or_create_pepper(c: &deadpool_postgres::Object) -> Result<Vec<u8>, StoreError> {
    let pepper: [u8; PEPPER_LEN] = rand::random();
    // Nodes starting together agree on the first one written.
    c.execute(
        "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        &[&PEPPER_KEY, &pepper.as_slice()],
    )
    .await?;
    let row = c
        .query_one("SELECT value FROM meta WHERE key = $1", &[&PEPPER_KEY])
        .await?;
    Ok(row.try_get::<_, Vec<u8>>(0)?)
}

// ----- statements ---------------------------------------------------------------------------

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs one statement (prepared once per pooled connection).
async fn exec<C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<u64, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.execute(&st, params).await
}

async fn query<C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>, StoreError> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query(&st, params).await?)
}

async fn query_opt<C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>, StoreError> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&st, params).await?)
}

fn list<T>(rows: Vec<Row>, map: fn(&Row) -> Result<T, StoreError>) -> Result<Vec<T>, StoreError> {
    rows.iter().map(map).collect()
}

fn code_is(e: &tokio_postgres::Error, code: &SqlState) -> bool {
    e.code() == Some(code)
}

/// Maps a constraint violation of an insert to a typed error.
fn insert_error(err: tokio_postgres::Error, kind: &'static str, id: &str) -> StoreError {
    if code_is(&err, &SqlState::UNIQUE_VIOLATION) {
        StoreError::AlreadyExists {
            kind,
            id: id.to_owned(),
        }
    } else if code_is(&err, &SqlState::FOREIGN_KEY_VIOLATION) {
        StoreError::NotFound {
            kind: "referenced row",
            id: id.to_owned(),
        }
    } else {
        StoreError::Postgres(err)
    }
}

fn conflict(key: String, err: tokio_postgres::Error, what: &str) -> StoreError {
    if code_is(&err, &SqlState::UNIQUE_VIOLATION) {
        StoreError::ProvisioningConflict {
            key,
            reason: format!("{what} is already taken by a row in the store"),
        }
    } else {
        StoreError::Postgres(err)
    }
}

// ----- row mapping --------------------------------------------------------------------------

fn bad_column(column: &'static str, reason: String) -> StoreError {
    StoreError::Invalid {
        field: column,
        reason,
    }
}

fn json_col<T: serde::de::DeserializeOwned>(
    row: &Row,
    idx: usize,
    column: &'static str,
) -> Result<T, StoreError> {
    let text: String = row.try_get(idx)?;
    serde_json::from_str(&text).map_err(|e| bad_column(column, e.to_string()))
}

fn u32_col(row: &Row, idx: usize, column: &'static str) -> Result<u32, StoreError> {
    let v: i64 = row.try_get(idx)?;
    u32::try_from(v).map_err(|_| bad_column(column, format!("{v} out of range")))
}

fn opt_u32_col(row: &Row, idx: usize, column: &'static str) -> Result<Option<u32>, StoreError> {
    let v: Option<i64> = row.try_get(idx)?;
    v.map(|v| u32::try_from(v).map_err(|_| bad_column(column, format!("{v} out of range"))))
        .transpose()
}

const ACCOUNT_COLS: &str = "id, name, region, webhook_secret, allowed_prefixes, \
     allowed_countries, blocked_number_types, calls_per_second, burst, max_concurrent, platform, \
     callback_url, confirm_calls, record_calls";

fn account_from_row(row: &Row) -> Result<Account, StoreError> {
    let prefixes: String = row.try_get(4)?;
    let countries: String = row.try_get(5)?;
    let blocked: String = row.try_get(6)?;
    Ok(Account {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        region: row.try_get(2)?,
        webhook_secret: Secret::new(row.try_get::<_, String>(3)?),
        allowed_prefixes: serde_json::from_str(&prefixes)
            .map_err(|e| bad_column("accounts.allowed_prefixes", e.to_string()))?,
        allowed_countries: serde_json::from_str(&countries)
            .map_err(|e| bad_column("accounts.allowed_countries", e.to_string()))?,
        blocked_number_types: serde_json::from_str(&blocked)
            .map_err(|e| bad_column("accounts.blocked_number_types", e.to_string()))?,
        limits: AccountLimits {
            calls_per_second: row.try_get(7)?,
            burst: u32_col(row, 8, "accounts.burst")?,
            max_concurrent: u32_col(row, 9, "accounts.max_concurrent")?,
        },
        platform: row.try_get(10)?,
        callback_url: row.try_get(11)?,
        confirm_calls: row.try_get(12)?,
        record_calls: row.try_get(13)?,
    })
}

const PK_COLS: &str = "key, account_id, source, created_at_ms";

fn publishable_key_from_row(row: &Row) -> Result<PublishableKey, StoreError> {
    Ok(PublishableKey {
        key: row.try_get(0)?,
        account_id: row.try_get(1)?,
        source: row.try_get(2)?,
        created_at_ms: row.try_get(3)?,
    })
}

const USER_COLS: &str = "id, account_id, name, extension, agent_id";

fn user_from_row(row: &Row) -> Result<User, StoreError> {
    Ok(User {
        id: row.try_get(0)?,
        account_id: row.try_get(1)?,
        name: row.try_get(2)?,
        extension: row.try_get(3)?,
        agent_id: row.try_get(4)?,
    })
}

const DEVICE_COLS: &str = "id, user_id, username, realm, ha1_md5, ha1_sha256";

fn device_from_row(row: &Row) -> Result<Device, StoreError> {
    Ok(Device {
        id: row.try_get(0)?,
        user_id: row.try_get(1)?,
        username: row.try_get(2)?,
        realm: row.try_get(3)?,
        ha1_md5: Secret::new(row.try_get::<_, String>(4)?),
        ha1_sha256: Secret::new(row.try_get::<_, String>(5)?),
    })
}

const NUMBER_COLS: &str = "number, account_id, owner_user_id";

fn number_from_row(row: &Row) -> Result<Number, StoreError> {
    Ok(Number {
        number: row.try_get(0)?,
        account_id: row.try_get(1)?,
        owner_user_id: row.try_get(2)?,
    })
}

const TRUNK_COLS: &str =
    "name, account_id, address, transport, username, password, emergency, dial_prefix, from_domain, \
     priority, invite_timeout_ms, failover_codes, options_interval_secs, down_after, up_after, \
     max_calls, calls_per_second, srtp";

fn trunk_from_row(row: &Row) -> Result<Trunk, StoreError> {
    let transport: String = row.try_get(3)?;
    Ok(Trunk {
        name: row.try_get(0)?,
        account_id: row.try_get(1)?,
        address: row.try_get(2)?,
        transport: transport
            .parse()
            .map_err(|e: crate::model::UnknownTransport| {
                bad_column("trunks.transport", e.to_string())
            })?,
        username: row.try_get(4)?,
        password: row.try_get::<_, Option<String>>(5)?.map(Secret::new),
        emergency: row.try_get(6)?,
        dial_prefix: row.try_get(7)?,
        from_domain: row.try_get(8)?,
        routing: TrunkRouting {
            priority: u32_col(row, 9, "trunks.priority")?,
            invite_timeout_ms: u32_col(row, 10, "trunks.invite_timeout_ms")?,
            failover_codes: {
                let text: String = row.try_get(11)?;
                TrunkRouting::parse_failover_codes(&text).ok_or_else(|| {
                    bad_column(
                        "trunks.failover_codes",
                        format!("{text:?} is not a list of SIP status codes"),
                    )
                })?
            },
            options_interval_secs: u32_col(row, 12, "trunks.options_interval_secs")?,
            down_after: u32_col(row, 13, "trunks.down_after")?,
            up_after: u32_col(row, 14, "trunks.up_after")?,
            max_calls: opt_u32_col(row, 15, "trunks.max_calls")?,
            calls_per_second: opt_u32_col(row, 16, "trunks.calls_per_second")?,
        },
        srtp: {
            let text: String = row.try_get(17)?;
            text.parse()
                .map_err(|e: crate::model::UnknownSrtp| bad_column("trunks.srtp", e.to_string()))?
        },
    })
}

/// A trunk's routing settings as the columns store them (BIGINT, text).
struct RoutingCols {
    priority: i64,
    invite_timeout_ms: i64,
    failover_codes: String,
    options_interval_secs: i64,
    down_after: i64,
    up_after: i64,
    max_calls: Option<i64>,
    calls_per_second: Option<i64>,
}

impl RoutingCols {
    fn of(r: &TrunkRouting) -> RoutingCols {
        RoutingCols {
            priority: i64::from(r.priority),
            invite_timeout_ms: i64::from(r.invite_timeout_ms),
            failover_codes: r.failover_codes_text(),
            options_interval_secs: i64::from(r.options_interval_secs),
            down_after: i64::from(r.down_after),
            up_after: i64::from(r.up_after),
            max_calls: r.max_calls.map(i64::from),
            calls_per_second: r.calls_per_second.map(i64::from),
        }
    }
}

const BINDING_COLS: &str = "b.device_username, d.user_id, b.contact, b.source, b.transport, \
     b.local, b.expires_at, b.q, b.call_id, b.cseq, b.instance, b.reg_id, b.user_agent, \
     b.updated_at, b.path";

fn binding_from_row(row: &Row) -> Result<Binding, StoreError> {
    Ok(Binding {
        device_username: row.try_get(0)?,
        user_id: row.try_get(1)?,
        contact: row.try_get(2)?,
        source: row.try_get(3)?,
        transport: row.try_get(4)?,
        local: row.try_get(5)?,
        expires_at: row.try_get(6)?,
        q: row.try_get(7)?,
        call_id: row.try_get(8)?,
        cseq: u32_col(row, 9, "bindings.cseq")?,
        instance: row.try_get(10)?,
        reg_id: opt_u32_col(row, 11, "bindings.reg_id")?,
        user_agent: row.try_get(12)?,
        updated_at: row.try_get(13)?,
        path: crate::sqlite::path_from_json(row.try_get(14)?),
    })
}

const CALL_COLS: &str = "id, account_id, user_id, request_id, status, dial_string, destination, \
     caller_id, callback_url, end_leg, sip_code, created_at_ms, answered_at_ms, ended_at_ms, \
     metadata, legs, stats, node_id, direction, recording";

fn call_from_row(row: &Row) -> Result<CallRecord, StoreError> {
    let status: String = row.try_get(4)?;
    let sip_code: Option<i64> = row.try_get(10)?;
    Ok(CallRecord {
        id: row.try_get(0)?,
        account_id: row.try_get(1)?,
        user_id: row.try_get(2)?,
        request_id: row.try_get(3)?,
        status: status
            .parse::<CallStatus>()
            .map_err(|e| bad_column("calls.status", e.to_string()))?,
        dial_string: row.try_get(5)?,
        destination: row.try_get(6)?,
        caller_id: row.try_get(7)?,
        callback_url: row.try_get(8)?,
        end_leg: row.try_get(9)?,
        sip_code: sip_code
            .map(|c| u16::try_from(c).map_err(|_| bad_column("calls.sip_code", format!("{c}"))))
            .transpose()?,
        created_at_ms: row.try_get(11)?,
        answered_at_ms: row.try_get(12)?,
        ended_at_ms: row.try_get(13)?,
        metadata: json_col(row, 14, "calls.metadata")?,
        legs: json_col(row, 15, "calls.legs")?,
        stats: json_col(row, 16, "calls.stats")?,
        node_id: row.try_get(17)?,
        direction: row.try_get(18)?,
        recording: json_col(row, 19, "calls.recording")?,
    })
}

const OUTBOX_COLS: &str = "event_id, call_id, account_id, seq, url, body, state, attempts, \
     next_attempt_at_ms, last_error, created_at_ms";

fn outbox_from_row(row: &Row) -> Result<OutboxEntry, StoreError> {
    let state: String = row.try_get(6)?;
    Ok(OutboxEntry {
        event_id: row.try_get(0)?,
        call_id: row.try_get(1)?,
        account_id: row.try_get(2)?,
        seq: row.try_get(3)?,
        url: row.try_get(4)?,
        body: row.try_get(5)?,
        state: OutboxState::from_sql(&state)
            .ok_or_else(|| bad_column("callback_outbox.state", state.clone()))?,
        attempts: u32_col(row, 7, "callback_outbox.attempts")?,
        next_attempt_at_ms: row.try_get(8)?,
        last_error: row.try_get(9)?,
        created_at_ms: row.try_get(10)?,
    })
}

fn idempotency_from_row(row: &Row) -> Result<IdempotencyRecord, StoreError> {
    let status: i64 = row.try_get(3)?;
    Ok(IdempotencyRecord {
        account_id: row.try_get(0)?,
        key: row.try_get(1)?,
        request_hash: row.try_get(2)?,
        response_status: u16::try_from(status)
            .map_err(|_| bad_column("idempotency.response_status", format!("{status}")))?,
        response_body: row.try_get(4)?,
        created_at_ms: row.try_get(5)?,
    })
}

fn timeline_from_row(row: &Row) -> Result<TimelineEntry, StoreError> {
    Ok(TimelineEntry {
        at_ms: row.try_get(0)?,
        kind: row.try_get(1)?,
        leg: row.try_get(2)?,
        detail: json_col(row, 3, "call_timeline.detail")?,
    })
}

// ----- writes shared by several methods ------------------------------------------------------

/// The publishable keys of one `[[accounts]]` entry (as SQLite's `provision_publishable_keys`):
/// listed ones are created or moved here, those the file no longer lists are removed, keys
/// made through the admin API are left alone.
async fn provision_publishable_keys<C: GenericClient + Sync>(
    tx: &C,
    i: usize,
    a: &crate::provision::AccountSpec,
) -> Result<(), StoreError> {
    let now = wall_clock_ms();
    for (j, k) in a.publishable_keys.iter().enumerate() {
        let key_path = format!("accounts[{i}].publishable_keys[{j}]");
        let existing = query_opt(
            tx,
            "SELECT account_id FROM publishable_keys WHERE key = $1",
            &[k],
        )
        .await?;
        match existing {
            Some(r) if r.try_get::<_, String>(0)? == a.id => {}
            Some(_) => {
                exec(
                    tx,
                    "UPDATE publishable_keys SET account_id = $2, source = 'config' WHERE key = $1",
                    &[k, &a.id],
                )
                .await
                .map_err(|e| conflict(key_path, e, "publishable key"))?;
            }
            None => {
                exec(
                    tx,
                    "INSERT INTO publishable_keys (key, account_id, source, created_at_ms)
                     VALUES ($1, $2, 'config', $3)",
                    &[k, &a.id, &now],
                )
                .await
                .map_err(|e| conflict(key_path, e, "publishable key"))?;
                log_change(Change::Created, "publishable key", k);
            }
        }
    }
    let rows = query(
        tx,
        "SELECT key FROM publishable_keys WHERE account_id = $1 AND source = 'config'",
        &[&a.id],
    )
    .await?;
    for row in rows {
        let key: String = row.try_get(0)?;
        if a.publishable_keys.contains(&key) {
            continue;
        }
        exec(tx, "DELETE FROM publishable_keys WHERE key = $1", &[&key]).await?;
        tracing::info!(key = %key, account = %a.id, "publishable key removed by provisioning");
    }
    Ok(())
}

async fn write_account_limits<C: GenericClient + Sync>(
    c: &C,
    account_id: &str,
    limits: &AccountLimits,
) -> Result<bool, StoreError> {
    if let Some((field, reason)) = limits.problems().into_iter().next() {
        return Err(StoreError::Invalid { field, reason });
    }
    let n = exec(
        c,
        "UPDATE accounts SET calls_per_second = $2, burst = $3, max_concurrent = $4
         WHERE id = $1",
        &[
            &account_id,
            &limits.calls_per_second,
            &i64::from(limits.burst),
            &i64::from(limits.max_concurrent),
        ],
    )
    .await?;
    Ok(n > 0)
}

async fn insert_trunk<C: GenericClient + Sync>(c: &C, t: &Trunk) -> Result<(), StoreError> {
    let r = RoutingCols::of(&t.routing);
    exec(
        c,
        &format!(
            "INSERT INTO trunks ({TRUNK_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
             $10, $11, $12, $13, $14, $15, $16, $17, $18)"
        ),
        &[
            &t.name,
            &t.account_id,
            &t.address,
            &t.transport.as_str(),
            &t.username,
            &t.password.as_ref().map(Secret::expose),
            &t.emergency,
            &t.dial_prefix,
            &t.from_domain,
            &r.priority,
            &r.invite_timeout_ms,
            &r.failover_codes,
            &r.options_interval_secs,
            &r.down_after,
            &r.up_after,
            &r.max_calls,
            &r.calls_per_second,
            &t.srtp.as_str(),
        ],
    )
    .await
    .map_err(|e| insert_error(e, "trunk", &t.name))?;
    Ok(())
}

async fn update_trunk_row<C: GenericClient + Sync>(c: &C, t: &Trunk) -> Result<u64, StoreError> {
    let r = RoutingCols::of(&t.routing);
    exec(
        c,
        "UPDATE trunks SET account_id = $2, address = $3, transport = $4, username = $5,
             password = $6, emergency = $7, dial_prefix = $8, from_domain = $9,
             priority = $10, invite_timeout_ms = $11, failover_codes = $12,
             options_interval_secs = $13, down_after = $14, up_after = $15, max_calls = $16,
             calls_per_second = $17, srtp = $18
         WHERE name = $1",
        &[
            &t.name,
            &t.account_id,
            &t.address,
            &t.transport.as_str(),
            &t.username,
            &t.password.as_ref().map(Secret::expose),
            &t.emergency,
            &t.dial_prefix,
            &t.from_domain,
            &r.priority,
            &r.invite_timeout_ms,
            &r.failover_codes,
            &r.options_interval_secs,
            &r.down_after,
            &r.up_after,
            &r.max_calls,
            &r.calls_per_second,
            &t.srtp.as_str(),
        ],
    )
    .await
    .map_err(|e| insert_error(e, "trunk", &t.name))
}

/// A number's owner must be a user of the number's account.
async fn check_owner<C: GenericClient + Sync>(c: &C, number: &Number) -> Result<(), StoreError> {
    let Some(owner) = &number.owner_user_id else {
        return Ok(());
    };
    let account: Option<String> =
        query_opt(c, "SELECT account_id FROM users WHERE id = $1", &[owner])
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
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

/// The account of the new call in `writes` (the one [`Store::admit_call`] admits).
fn new_call_account(writes: &[CallWrite]) -> Option<&str> {
    writes.iter().find_map(|w| match w {
        CallWrite::NewCall(r) => Some(r.account_id.as_str()),
        _ => None,
    })
}

async fn apply_writes_on<C: GenericClient + Sync>(
    c: &C,
    writes: &[CallWrite],
) -> Result<(), StoreError> {
    for w in writes {
        match w {
            CallWrite::Timeline { call_id, entry } => {
                append_timeline_on(c, call_id, entry).await?;
            }
            CallWrite::NewCall(r) => insert_call_on(c, r).await?,
            CallWrite::Call(r) | CallWrite::CallStatus(r) => update_progress_on(c, r).await?,
            CallWrite::Callback(e) => enqueue_callback_on(c, e).await?,
        }
    }
    Ok(())
}

async fn insert_call_on<C: GenericClient + Sync>(c: &C, r: &CallRecord) -> Result<(), StoreError> {
    let recording = serde_json::to_string(&r.recording)?;
    let metadata = serde_json::to_string(&r.metadata)?;
    let legs = serde_json::to_string(&r.legs)?;
    let stats = serde_json::to_string(&r.stats)?;
    exec(
        c,
        &format!(
            "INSERT INTO calls ({CALL_COLS}) VALUES
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
              $18, $19, $20)"
        ),
        &[
            &r.id,
            &r.account_id,
            &r.user_id,
            &r.request_id,
            &r.status.as_str(),
            &r.dial_string,
            &r.destination,
            &r.caller_id,
            &r.callback_url,
            &r.end_leg,
            &r.sip_code.map(i64::from),
            &r.created_at_ms,
            &r.answered_at_ms,
            &r.ended_at_ms,
            &metadata,
            &legs,
            &stats,
            &r.node_id,
            &r.direction,
            &recording,
        ],
    )
    .await
    .map_err(|e| insert_error(e, "call", &r.id))?;
    Ok(())
}

/// A call's progress (`CallWrite::Call`): what its events change; what was fixed when it
/// was placed stays as stored.
async fn update_progress_on<C: GenericClient + Sync>(
    c: &C,
    r: &CallRecord,
) -> Result<(), StoreError> {
    let recording = serde_json::to_string(&r.recording)?;
    let legs = serde_json::to_string(&r.legs)?;
    let stats = serde_json::to_string(&r.stats)?;
    let n = exec(
        c,
        "UPDATE calls SET status = $3, end_leg = $4, sip_code = $5, answered_at_ms = $6,
             ended_at_ms = $7, legs = $8, stats = $9, recording = $10
         WHERE id = $1 AND account_id = $2",
        &[
            &r.id,
            &r.account_id,
            &r.status.as_str(),
            &r.end_leg,
            &r.sip_code.map(i64::from),
            &r.answered_at_ms,
            &r.ended_at_ms,
            &legs,
            &stats,
            &recording,
        ],
    )
    .await?;
    if n == 0 {
        return Err(not_found("call", &r.id));
    }
    Ok(())
}

async fn update_call_on<C: GenericClient + Sync>(c: &C, r: &CallRecord) -> Result<(), StoreError> {
    let recording = serde_json::to_string(&r.recording)?;
    let metadata = serde_json::to_string(&r.metadata)?;
    let legs = serde_json::to_string(&r.legs)?;
    let stats = serde_json::to_string(&r.stats)?;
    let n = exec(
        c,
        "UPDATE calls SET user_id = $3, request_id = $4, status = $5, dial_string = $6,
             destination = $7, caller_id = $8, callback_url = $9, end_leg = $10,
             sip_code = $11, answered_at_ms = $12, ended_at_ms = $13, metadata = $14,
             legs = $15, stats = $16, recording = $17
         WHERE id = $1 AND account_id = $2",
        &[
            &r.id,
            &r.account_id,
            &r.user_id,
            &r.request_id,
            &r.status.as_str(),
            &r.dial_string,
            &r.destination,
            &r.caller_id,
            &r.callback_url,
            &r.end_leg,
            &r.sip_code.map(i64::from),
            &r.answered_at_ms,
            &r.ended_at_ms,
            &metadata,
            &legs,
            &stats,
            &recording,
        ],
    )
    .await?;
    if n == 0 {
        return Err(not_found("call", &r.id));
    }
    Ok(())
}

async fn append_timeline_on<C: GenericClient + Sync>(
    c: &C,
    call_id: &str,
    entry: &TimelineEntry,
) -> Result<(), StoreError> {
    let detail = entry.detail.as_str();
    exec(
        c,
        "INSERT INTO call_timeline (call_id, at_ms, kind, leg, detail)
         VALUES ($1, $2, $3, $4, $5)",
        &[&call_id, &entry.at_ms, &entry.kind, &entry.leg, &detail],
    )
    .await
    .map_err(|e| {
        if code_is(&e, &SqlState::FOREIGN_KEY_VIOLATION) {
            not_found("call", call_id)
        } else {
            StoreError::Postgres(e)
        }
    })?;
    Ok(())
}

async fn enqueue_callback_on<C: GenericClient + Sync>(
    c: &C,
    e: &OutboxEntry,
) -> Result<(), StoreError> {
    exec(
        c,
        &format!(
            "INSERT INTO callback_outbox ({OUTBOX_COLS}) VALUES
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ),
        &[
            &e.event_id,
            &e.call_id,
            &e.account_id,
            &e.seq,
            &e.url,
            &e.body,
            &e.state.to_sql(),
            &i64::from(e.attempts),
            &e.next_attempt_at_ms,
            &e.last_error,
            &e.created_at_ms,
        ],
    )
    .await
    .map_err(|err| insert_error(err, "callback (event_id or call seq)", &e.event_id))?;
    Ok(())
}

// ----- provisioning -------------------------------------------------------------------------

impl PgStore {
    async fn provision_accounts<C: GenericClient + Sync>(
        &self,
        tx: &C,
        prov: &Provisioning,
        report: &mut ProvisionReport,
    ) -> Result<(), StoreError> {
        for (i, a) in prov.accounts.iter().enumerate() {
            let prefixes = serde_json::to_string(&a.allowed_prefixes)?;
            let existing = query_opt(
                tx,
                &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE id = $1"),
                &[&a.id],
            )
            .await?
            .map(|r| account_from_row(&r))
            .transpose()?;
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
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                        &[
                            &a.id,
                            &a.name,
                            &a.region,
                            &a.webhook_secret.expose(),
                            &prefixes,
                            &countries,
                            &blocked,
                            &a.platform,
                            &a.callback_url,
                            &a.confirm_calls,
                            &a.record_calls,
                        ],
                    )
                    .await?;
                    write_account_limits(tx, &a.id, &limits).await?;
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
                        "UPDATE accounts SET name = $2, region = $3, webhook_secret = $4,
                             allowed_prefixes = $5, allowed_countries = $6,
                             blocked_number_types = $7, platform = $8, callback_url = $9,
                             confirm_calls = $10, record_calls = $11 WHERE id = $1",
                        &[
                            &a.id,
                            &a.name,
                            &a.region,
                            &a.webhook_secret.expose(),
                            &prefixes,
                            &countries,
                            &blocked,
                            &a.platform,
                            &a.callback_url,
                            &a.confirm_calls,
                            &a.record_calls,
                        ],
                    )
                    .await?;
                    write_account_limits(tx, &a.id, &limits).await?;
                    Change::Updated
                }
            };
            log_change(change, "account", &a.id);
            report.accounts.record(change);

            let mut listed = HashSet::new();
            for (j, k) in a.api_keys.iter().enumerate() {
                listed.insert(k.key.as_str());
                let hash = self.secret_hash(k.secret.expose());
                let existing: Option<(String, String)> = match query_opt(
                    tx,
                    "SELECT account_id, secret_hash FROM api_keys WHERE key = $1",
                    &[&k.key],
                )
                .await?
                {
                    Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
                    None => None,
                };
                let key_path = format!("accounts[{i}].api_keys[{j}]");
                let change = match existing {
                    None => {
                        exec(
                            tx,
                            "INSERT INTO api_keys (key, account_id, secret_hash)
                             VALUES ($1, $2, $3)",
                            &[&k.key, &a.id, &hash],
                        )
                        .await
                        .map_err(|e| conflict(key_path, e, "API secret"))?;
                        Change::Created
                    }
                    Some((acct, h)) if acct == a.id && h == hash => Change::Unchanged,
                    Some(_) => {
                        exec(
                            tx,
                            "UPDATE api_keys SET account_id = $2, secret_hash = $3 WHERE key = $1",
                            &[&k.key, &a.id, &hash],
                        )
                        .await
                        .map_err(|e| conflict(key_path, e, "API secret"))?;
                        Change::Updated
                    }
                };
                log_change(change, "api key", &k.key);
                report.api_keys.record(change);
            }
            let keys = query(
                tx,
                "SELECT key FROM api_keys WHERE account_id = $1",
                &[&a.id],
            )
            .await?;
            for row in keys {
                let key: String = row.try_get(0)?;
                if listed.contains(key.as_str()) {
                    continue;
                }
                exec(tx, "DELETE FROM api_keys WHERE key = $1", &[&key]).await?;
                tracing::info!(key = %key, account = %a.id, "api key revoked by provisioning");
                report.api_keys.removed += 1;
            }
            provision_publishable_keys(tx, i, a).await?;
        }
        Ok(())
    }

    async fn provision_users<C: GenericClient + Sync>(
        tx: &C,
        prov: &Provisioning,
        realm: &str,
        report: &mut ProvisionReport,
    ) -> Result<(), StoreError> {
        for (i, u) in prov.users.iter().enumerate() {
            let key_path = format!("users[{i}]");
            let existing = query_opt(
                tx,
                &format!("SELECT {USER_COLS} FROM users WHERE id = $1"),
                &[&u.id],
            )
            .await?
            .map(|r| user_from_row(&r))
            .transpose()?;
            let change = match existing {
                None => {
                    exec(
                        tx,
                        "INSERT INTO users (id, account_id, name, extension, agent_id)
                         VALUES ($1, $2, $3, $4, $5)",
                        &[&u.id, &u.account, &u.name, &u.extension, &u.agent_id],
                    )
                    .await
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
                        "UPDATE users SET account_id = $2, name = $3, extension = $4,
                             agent_id = $5 WHERE id = $1",
                        &[&u.id, &u.account, &u.name, &u.extension, &u.agent_id],
                    )
                    .await
                    .map_err(|e| conflict(key_path.clone(), e, "extension or agent_id"))?;
                    Change::Updated
                }
            };
            log_change(change, "user", &u.id);
            report.users.record(change);

            for d in &u.devices {
                let md5 = ha1_md5(&d.username, realm, &d.password);
                let sha = ha1_sha256(&d.username, realm, &d.password);
                let existing = query_opt(
                    tx,
                    &format!("SELECT {DEVICE_COLS} FROM devices WHERE username = $1"),
                    &[&d.username],
                )
                .await?
                .map(|r| device_from_row(&r))
                .transpose()?;
                let change = match existing {
                    None => {
                        let id = TypeId::new(DEVICE_PREFIX).to_string();
                        exec(
                            tx,
                            "INSERT INTO devices (id, user_id, username, realm, ha1_md5, ha1_sha256)
                             VALUES ($1, $2, $3, $4, $5, $6)",
                            &[&id, &u.id, &d.username, &realm, &md5.expose(), &sha.expose()],
                        )
                        .await?;
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
                            "UPDATE devices SET user_id = $2, realm = $3, ha1_md5 = $4,
                                 ha1_sha256 = $5 WHERE username = $1",
                            &[&d.username, &u.id, &realm, &md5.expose(), &sha.expose()],
                        )
                        .await?;
                        Change::Updated
                    }
                };
                log_change(change, "device", &d.username);
                report.devices.record(change);
            }
        }
        Ok(())
    }

    async fn provision_trunks<C: GenericClient + Sync>(
        tx: &C,
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
            let existing = query_opt(
                tx,
                &format!("SELECT {TRUNK_COLS} FROM trunks WHERE name = $1"),
                &[&t.name],
            )
            .await?
            .map(|r| trunk_from_row(&r))
            .transpose()?;
            let change = match existing {
                None => {
                    insert_trunk(tx, &wanted).await?;
                    Change::Created
                }
                Some(old) if old == wanted => Change::Unchanged,
                Some(_) => {
                    update_trunk_row(tx, &wanted).await?;
                    Change::Updated
                }
            };
            log_change(change, "trunk", &t.name);
            report.trunks.record(change);
        }
        Ok(())
    }

    async fn provision_numbers<C: GenericClient + Sync>(
        tx: &C,
        prov: &Provisioning,
        report: &mut ProvisionReport,
    ) -> Result<(), StoreError> {
        for n in &prov.numbers {
            let existing = query_opt(
                tx,
                &format!("SELECT {NUMBER_COLS} FROM numbers WHERE number = $1"),
                &[&n.number],
            )
            .await?
            .map(|r| number_from_row(&r))
            .transpose()?;
            let change = match existing {
                None => {
                    exec(
                        tx,
                        "INSERT INTO numbers (number, account_id, owner_user_id)
                         VALUES ($1, $2, $3)",
                        &[&n.number, &n.account, &n.owner],
                    )
                    .await?;
                    Change::Created
                }
                Some(old) if old.account_id == n.account && old.owner_user_id == n.owner => {
                    Change::Unchanged
                }
                Some(_) => {
                    exec(
                        tx,
                        "UPDATE numbers SET account_id = $2, owner_user_id = $3 WHERE number = $1",
                        &[&n.number, &n.account, &n.owner],
                    )
                    .await?;
                    Change::Updated
                }
            };
            log_change(change, "number", &n.number);
            report.numbers.record(change);
        }
        Ok(())
    }
}

// ----- the store ----------------------------------------------------------------------------

#[async_trait::async_trait]
impl Store for PgStore {
    fn provisioning_generation(&self) -> u64 {
        self.generation.get()
    }
    async fn apply_provisioning(
        &self,
        prov: &Provisioning,
        realm: &str,
    ) -> Result<ProvisionReport, StoreError> {
        let r = async {
            prov.validate().map_err(StoreError::InvalidProvisioning)?;
            if realm.is_empty() {
                return Err(StoreError::Invalid {
                    field: "realm",
                    reason: "must not be empty".to_owned(),
                });
            }
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            // Nodes starting together apply the same provisioning one after another (each
            // then finds the other's rows), not into each other's unique keys.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PROVISION_LOCK])
                .await?;
            let mut report = ProvisionReport::default();
            self.provision_accounts(&tx, prov, &mut report).await?;
            PgStore::provision_users(&tx, prov, realm, &mut report).await?;
            PgStore::provision_trunks(&tx, prov, &mut report).await?;
            PgStore::provision_numbers(&tx, prov, &mut report).await?;
            tx.commit().await?;
            tracing::info!(%report, "provisioning applied");
            Ok(report)
        }
        .await;
        self.generation.changed(r)
    }

    // ----- accounts -----------------------------------------------------------------------

    async fn account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        let c = self.client().await?;
        query_opt(
            &c,
            &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE id = $1"),
            &[&id],
        )
        .await?
        .map(|r| account_from_row(&r))
        .transpose()
    }

    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        let c = self.client().await?;
        list(
            query(
                &c,
                &format!("SELECT {ACCOUNT_COLS} FROM accounts ORDER BY id"),
                &[],
            )
            .await?,
            account_from_row,
        )
    }

    async fn account_by_api_secret(&self, secret: &str) -> Result<Option<Account>, StoreError> {
        if secret.is_empty() {
            return Ok(None);
        }
        let hash = self.secret_hash(secret);
        let c = self.client().await?;
        query_opt(
            &c,
            &format!(
                "SELECT {ACCOUNT_COLS} FROM accounts
                 WHERE id = (SELECT account_id FROM api_keys WHERE secret_hash = $1)"
            ),
            &[&hash],
        )
        .await?
        .map(|r| account_from_row(&r))
        .transpose()
    }

    async fn account_by_key_pair(
        &self,
        key: &str,
        secret: &str,
    ) -> Result<Option<Account>, StoreError> {
        let hash = self.secret_hash(secret);
        let c = self.client().await?;
        let Some(row) = query_opt(
            &c,
            "SELECT account_id, secret_hash FROM api_keys WHERE key = $1",
            &[&key],
        )
        .await?
        else {
            return Ok(None);
        };
        let account_id: String = row.try_get(0)?;
        let stored_hash: String = row.try_get(1)?;
        if secret.is_empty() || !constant_time_eq(stored_hash.as_bytes(), hash.as_bytes()) {
            return Ok(None);
        }
        query_opt(
            &c,
            &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE id = $1"),
            &[&account_id],
        )
        .await?
        .map(|r| account_from_row(&r))
        .transpose()
    }

    async fn api_keys_for_account(&self, account_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let c = self.client().await?;
        query(
            &c,
            "SELECT key, account_id FROM api_keys WHERE account_id = $1 ORDER BY key",
            &[&account_id],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(ApiKey {
                key: r.try_get(0)?,
                account_id: r.try_get(1)?,
            })
        })
        .collect()
    }

    async fn set_account_limits(
        &self,
        account_id: &str,
        limits: &AccountLimits,
    ) -> Result<bool, StoreError> {
        let r = async {
            let c = self.client().await?;
            write_account_limits(&c, account_id, limits).await
        }
        .await;
        self.generation.changed(r)
    }

    async fn account_by_publishable_key(&self, key: &str) -> Result<Option<Account>, StoreError> {
        let c = self.client().await?;
        query_opt(
            &c,
            &format!(
                "SELECT {ACCOUNT_COLS} FROM accounts
                 WHERE id = (SELECT account_id FROM publishable_keys WHERE key = $1)"
            ),
            &[&key],
        )
        .await?
        .map(|r| account_from_row(&r))
        .transpose()
    }

    async fn publishable_keys_for_account(
        &self,
        account_id: &str,
    ) -> Result<Vec<PublishableKey>, StoreError> {
        let c = self.client().await?;
        let rows = query(
            &c,
            &format!(
                "SELECT {PK_COLS} FROM publishable_keys WHERE account_id = $1
                 ORDER BY created_at_ms, key"
            ),
            &[&account_id],
        )
        .await?;
        list(rows, publishable_key_from_row)
    }

    async fn create_publishable_key(&self, key: &PublishableKey) -> Result<(), StoreError> {
        let r = async {
            crate::provision::check_publishable_key(&key.key).map_err(|reason| {
                StoreError::Invalid {
                    field: "key",
                    reason,
                }
            })?;
            let c = self.client().await?;
            exec(
                &c,
                &format!("INSERT INTO publishable_keys ({PK_COLS}) VALUES ($1, $2, $3, $4)"),
                &[&key.key, &key.account_id, &key.source, &key.created_at_ms],
            )
            .await
            .map_err(|e| insert_error(e, "publishable key", &key.key))?;
            Ok(())
        }
        .await;
        self.generation.changed(r)
    }

    async fn delete_publishable_key(
        &self,
        account_id: &str,
        key: &str,
    ) -> Result<bool, StoreError> {
        let r = async {
            let c = self.client().await?;
            let n = exec(
                &c,
                "DELETE FROM publishable_keys WHERE account_id = $1 AND key = $2",
                &[&account_id, &key],
            )
            .await?;
            Ok(n > 0)
        }
        .await;
        self.generation.changed(r)
    }

    async fn update_account(&self, account: &Account) -> Result<(), StoreError> {
        let r = async {
            validate_account(account)?;
            let c = self.client().await?;
            let n = exec(
                &c,
                "UPDATE accounts SET name = $2, region = $3, allowed_prefixes = $4,
                     allowed_countries = $5, blocked_number_types = $6 WHERE id = $1",
                &[
                    &account.id,
                    &account.name,
                    &account.region,
                    &serde_json::to_string(&account.allowed_prefixes)?,
                    &serde_json::to_string(&account.allowed_countries)?,
                    &serde_json::to_string(&account.blocked_number_types)?,
                ],
            )
            .await?;
            if n == 0 {
                return Err(not_found("account", &account.id));
            }
            Ok(())
        }
        .await;
        self.generation.changed(r)
    }

    // ----- users --------------------------------------------------------------------------

    async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let c = self.client().await?;
        query_opt(
            &c,
            &format!("SELECT {USER_COLS} FROM users WHERE id = $1"),
            &[&id],
        )
        .await?
        .map(|r| user_from_row(&r))
        .transpose()
    }

    async fn user_by_extension(
        &self,
        account_id: &str,
        extension: &str,
    ) -> Result<Option<User>, StoreError> {
        let c = self.client().await?;
        query_opt(
            &c,
            &format!("SELECT {USER_COLS} FROM users WHERE account_id = $1 AND extension = $2"),
            &[&account_id, &extension],
        )
        .await?
        .map(|r| user_from_row(&r))
        .transpose()
    }

    async fn user_by_agent_id(
        &self,
        account_id: &str,
        agent_id: i64,
    ) -> Result<Option<User>, StoreError> {
        let c = self.client().await?;
        query_opt(
            &c,
            &format!("SELECT {USER_COLS} FROM users WHERE account_id = $1 AND agent_id = $2"),
            &[&account_id, &agent_id],
        )
        .await?
        .map(|r| user_from_row(&r))
        .transpose()
    }

    async fn users_for_account(&self, account_id: &str) -> Result<Vec<User>, StoreError> {
        let c = self.client().await?;
        list(
            query(
                &c,
                &format!("SELECT {USER_COLS} FROM users WHERE account_id = $1 ORDER BY id"),
                &[&account_id],
            )
            .await?,
            user_from_row,
        )
    }

    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let r = async {
            validate_user(user)?;
            let c = self.client().await?;
            exec(
                &c,
                &format!("INSERT INTO users ({USER_COLS}) VALUES ($1, $2, $3, $4, $5)"),
                &[
                    &user.id,
                    &user.account_id,
                    &user.name,
                    &user.extension,
                    &user.agent_id,
                ],
            )
            .await
            .map_err(|e| {
                if code_is(&e, &SqlState::FOREIGN_KEY_VIOLATION) {
                    not_found("account", &user.account_id)
                } else {
                    insert_error(e, "user (id, extension or agent_id)", &user.id)
                }
            })?;
            Ok(())
        }
        .await;
        self.generation.changed(r)
    }

    async fn update_user(&self, user: &User) -> Result<(), StoreError> {
        let r = async {
            validate_user(user)?;
            let c = self.client().await?;
            let n = exec(
                &c,
                "UPDATE users SET name = $3, extension = $4, agent_id = $5
                 WHERE id = $1 AND account_id = $2",
                &[
                    &user.id,
                    &user.account_id,
                    &user.name,
                    &user.extension,
                    &user.agent_id,
                ],
            )
            .await
            .map_err(|e| insert_error(e, "user (extension or agent_id)", &user.id))?;
            if n == 0 {
                return Err(not_found("user", &user.id));
            }
            Ok(())
        }
        .await;
        self.generation.changed(r)
    }

    async fn delete_user(&self, account_id: &str, id: &str) -> Result<bool, StoreError> {
        let r = async {
            let c = self.client().await?;
            let n = exec(
                &c,
                "DELETE FROM users WHERE id = $1 AND account_id = $2",
                &[&id, &account_id],
            )
            .await?;
            Ok(n > 0)
        }
        .await;
        self.generation.changed(r)
    }

    // ----- devices ------------------------------------------------------------------------

    async fn device_by_username(&self, username: &str) -> Result<Option<Device>, StoreError> {
        let c = self.client().await?;
        query_opt(
            &c,
            &format!("SELECT {DEVICE_COLS} FROM devices WHERE username = $1"),
            &[&username],
        )
        .await?
        .map(|r| device_from_row(&r))
        .transpose()
    }

    async fn devices_for_user(&self, user_id: &str) -> Result<Vec<Device>, StoreError> {
        let c = self.client().await?;
        list(
            query(
                &c,
                &format!("SELECT {DEVICE_COLS} FROM devices WHERE user_id = $1 ORDER BY username"),
                &[&user_id],
            )
            .await?,
            device_from_row,
        )
    }

    async fn create_device(
        &self,
        user_id: &str,
        username: &str,
        password: &Secret,
        realm: &str,
    ) -> Result<Device, StoreError> {
        let r = async {
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
            let c = self.client().await?;
            exec(
                &c,
                &format!("INSERT INTO devices ({DEVICE_COLS}) VALUES ($1, $2, $3, $4, $5, $6)"),
                &[
                    &device.id,
                    &device.user_id,
                    &device.username,
                    &device.realm,
                    &device.ha1_md5.expose(),
                    &device.ha1_sha256.expose(),
                ],
            )
            .await
            .map_err(|e| {
                if code_is(&e, &SqlState::FOREIGN_KEY_VIOLATION) {
                    not_found("user", user_id)
                } else {
                    insert_error(e, "device", username)
                }
            })?;
            Ok(device)
        }
        .await;
        self.generation.changed(r)
    }

    async fn set_device_password(
        &self,
        username: &str,
        password: &Secret,
        realm: &str,
    ) -> Result<Device, StoreError> {
        let r = async {
            if password.is_empty() {
                return Err(StoreError::Invalid {
                    field: "device.password",
                    reason: "must not be empty".to_owned(),
                });
            }
            let md5 = ha1_md5(username, realm, password);
            let sha = ha1_sha256(username, realm, password);
            let c = self.client().await?;
            let n = exec(
                &c,
                "UPDATE devices SET realm = $2, ha1_md5 = $3, ha1_sha256 = $4 WHERE username = $1",
                &[&username, &realm, &md5.expose(), &sha.expose()],
            )
            .await?;
            if n == 0 {
                return Err(not_found("device", username));
            }
            query_opt(
                &c,
                &format!("SELECT {DEVICE_COLS} FROM devices WHERE username = $1"),
                &[&username],
            )
            .await?
            .map(|r| device_from_row(&r))
            .transpose()?
            .ok_or_else(|| not_found("device", username))
        }
        .await;
        self.generation.changed(r)
    }

    async fn delete_device(&self, username: &str) -> Result<bool, StoreError> {
        let r = async {
            let c = self.client().await?;
            Ok(exec(&c, "DELETE FROM devices WHERE username = $1", &[&username]).await? > 0)
        }
        .await;
        self.generation.changed(r)
    }

    // ----- numbers ------------------------------------------------------------------------

    async fn number(&self, number: &str) -> Result<Option<Number>, StoreError> {
        let c = self.client().await?;
        query_opt(
            &c,
            &format!("SELECT {NUMBER_COLS} FROM numbers WHERE number = $1"),
            &[&number],
        )
        .await?
        .map(|r| number_from_row(&r))
        .transpose()
    }

    async fn numbers_for_account(&self, account_id: &str) -> Result<Vec<Number>, StoreError> {
        let c = self.client().await?;
        list(
            query(
                &c,
                &format!("SELECT {NUMBER_COLS} FROM numbers WHERE account_id = $1 ORDER BY number"),
                &[&account_id],
            )
            .await?,
            number_from_row,
        )
    }

    async fn create_number(&self, number: &Number) -> Result<(), StoreError> {
        let r = async {
            if !crate::e164::is_e164(&number.number) {
                return Err(StoreError::Invalid {
                    field: "number",
                    reason: format!("{:?} is not an E.164 number", number.number),
                });
            }
            let c = self.client().await?;
            check_owner(&c, number).await?;
            exec(
                &c,
                &format!("INSERT INTO numbers ({NUMBER_COLS}) VALUES ($1, $2, $3)"),
                &[&number.number, &number.account_id, &number.owner_user_id],
            )
            .await
            .map_err(|e| insert_error(e, "number", &number.number))?;
            Ok(())
        }
        .await;
        self.generation.changed(r)
    }

    async fn update_number(&self, number: &Number) -> Result<(), StoreError> {
        let r = async {
            let c = self.client().await?;
            check_owner(&c, number).await?;
            let n = exec(
                &c,
                "UPDATE numbers SET owner_user_id = $3 WHERE number = $1 AND account_id = $2",
                &[&number.number, &number.account_id, &number.owner_user_id],
            )
            .await
            .map_err(|e| insert_error(e, "number", &number.number))?;
            if n == 0 {
                return Err(not_found("number", &number.number));
            }
            Ok(())
        }
        .await;
        self.generation.changed(r)
    }

    async fn delete_number(&self, account_id: &str, number: &str) -> Result<bool, StoreError> {
        let r = async {
            let c = self.client().await?;
            Ok(exec(
                &c,
                "DELETE FROM numbers WHERE number = $1 AND account_id = $2",
                &[&number, &account_id],
            )
            .await?
                > 0)
        }
        .await;
        self.generation.changed(r)
    }

    // ----- trunks -------------------------------------------------------------------------

    async fn trunk(&self, name: &str) -> Result<Option<Trunk>, StoreError> {
        let c = self.client().await?;
        query_opt(
            &c,
            &format!("SELECT {TRUNK_COLS} FROM trunks WHERE name = $1"),
            &[&name],
        )
        .await?
        .map(|r| trunk_from_row(&r))
        .transpose()
    }

    async fn trunks_for_account(&self, account_id: &str) -> Result<Vec<Trunk>, StoreError> {
        let c = self.client().await?;
        list(
            query(
                &c,
                &format!(
                    "SELECT {TRUNK_COLS} FROM trunks WHERE account_id = $1 OR account_id IS NULL
                     ORDER BY account_id IS NULL, name"
                ),
                &[&account_id],
            )
            .await?,
            trunk_from_row,
        )
    }

    async fn list_trunks(&self) -> Result<Vec<Trunk>, StoreError> {
        let c = self.client().await?;
        list(
            query(
                &c,
                &format!("SELECT {TRUNK_COLS} FROM trunks ORDER BY name"),
                &[],
            )
            .await?,
            trunk_from_row,
        )
    }

    async fn create_trunk(&self, trunk: &Trunk) -> Result<(), StoreError> {
        let r = async {
            validate_trunk(trunk)?;
            let c = self.client().await?;
            insert_trunk(&c, trunk).await
        }
        .await;
        self.generation.changed(r)
    }

    async fn update_trunk(&self, trunk: &Trunk) -> Result<(), StoreError> {
        let r = async {
            validate_trunk(trunk)?;
            let c = self.client().await?;
            if update_trunk_row(&c, trunk).await? == 0 {
                return Err(not_found("trunk", &trunk.name));
            }
            Ok(())
        }
        .await;
        self.generation.changed(r)
    }

    async fn delete_trunk(&self, name: &str) -> Result<bool, StoreError> {
        let r = async {
            let c = self.client().await?;
            Ok(exec(&c, "DELETE FROM trunks WHERE name = $1", &[&name]).await? > 0)
        }
        .await;
        self.generation.changed(r)
    }

    // ----- registrations ------------------------------------------------------------------

    async fn upsert_binding(&self, b: &Binding) -> Result<(), StoreError> {
        let c = self.client().await?;
        exec(
            &c,
            "INSERT INTO bindings (device_username, contact, source, transport, local,
                 expires_at, q, call_id, cseq, instance, reg_id, user_agent, updated_at, path)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (device_username, contact) DO UPDATE SET
                 source = excluded.source, transport = excluded.transport,
                 local = excluded.local, expires_at = excluded.expires_at, q = excluded.q,
                 call_id = excluded.call_id, cseq = excluded.cseq,
                 instance = excluded.instance, reg_id = excluded.reg_id,
                 user_agent = excluded.user_agent, updated_at = excluded.updated_at,
                 path = excluded.path",
            &[
                &b.device_username,
                &b.contact,
                &b.source,
                &b.transport,
                &b.local,
                &b.expires_at,
                &b.q,
                &b.call_id,
                &i64::from(b.cseq),
                &b.instance,
                &b.reg_id.map(i64::from),
                &b.user_agent,
                &b.updated_at,
                &crate::sqlite::path_to_json(&b.path),
            ],
        )
        .await
        .map_err(|e| {
            if code_is(&e, &SqlState::FOREIGN_KEY_VIOLATION) {
                not_found("device", &b.device_username)
            } else {
                StoreError::Postgres(e)
            }
        })?;
        Ok(())
    }

    async fn remove_binding(
        &self,
        device_username: &str,
        contact: &str,
    ) -> Result<bool, StoreError> {
        let c = self.client().await?;
        Ok(exec(
            &c,
            "DELETE FROM bindings WHERE device_username = $1 AND contact = $2",
            &[&device_username, &contact],
        )
        .await?
            > 0)
    }

    async fn remove_all_bindings(&self, device_username: &str) -> Result<usize, StoreError> {
        let c = self.client().await?;
        let n = exec(
            &c,
            "DELETE FROM bindings WHERE device_username = $1",
            &[&device_username],
        )
        .await?;
        Ok(n as usize)
    }

    async fn bindings_for_device(
        &self,
        device_username: &str,
        now: UnixSecs,
    ) -> Result<Vec<Binding>, StoreError> {
        let c = self.client().await?;
        list(
            query(
                &c,
                &format!(
                    "SELECT {BINDING_COLS} FROM bindings b
                     JOIN devices d ON d.username = b.device_username
                     WHERE b.device_username = $1 AND b.expires_at > $2
                     ORDER BY b.contact"
                ),
                &[&device_username, &now],
            )
            .await?,
            binding_from_row,
        )
    }

    async fn bindings_for_user(
        &self,
        user_id: &str,
        now: UnixSecs,
    ) -> Result<Vec<Binding>, StoreError> {
        let c = self.client().await?;
        list(
            query(
                &c,
                &format!(
                    "SELECT {BINDING_COLS} FROM bindings b
                     JOIN devices d ON d.username = b.device_username
                     WHERE d.user_id = $1 AND b.expires_at > $2
                     ORDER BY b.device_username, b.contact"
                ),
                &[&user_id, &now],
            )
            .await?,
            binding_from_row,
        )
    }

    async fn sweep_expired(&self, now: UnixSecs) -> Result<usize, StoreError> {
        let c = self.client().await?;
        let n = exec(&c, "DELETE FROM bindings WHERE expires_at <= $1", &[&now]).await?;
        if n > 0 {
            tracing::debug!(removed = n, "expired bindings swept");
        }
        Ok(n as usize)
    }

    async fn count_bindings(&self, now: UnixSecs) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let row = query_opt(
            &c,
            "SELECT COUNT(*) FROM bindings WHERE expires_at > $1",
            &[&now],
        )
        .await?;
        let n: i64 = match row {
            Some(r) => r.try_get(0)?,
            None => 0,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }

    // ----- calls --------------------------------------------------------------------------

    async fn insert_call(&self, r: &CallRecord) -> Result<(), StoreError> {
        let c = self.client().await?;
        insert_call_on(&c, r).await
    }

    async fn admit_call(
        &self,
        writes: &[CallWrite],
        limits: &AccountLimits,
        now_ms: UnixMs,
    ) -> Result<Admission, StoreError> {
        let Some(account_id) = new_call_account(writes) else {
            return Err(StoreError::Invalid {
                field: "writes",
                reason: "admit_call needs a new call".to_owned(),
            });
        };
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // One account's admissions queue behind each other, cluster-wide, until commit: the
        // count of its live calls and its token bucket read below are those the previous
        // admission left, and no other node takes a token meanwhile.
        exec(
            &tx,
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&format!("calls:{account_id}")],
        )
        .await?;
        // The count and the bucket in one trip; the bucket's row is locked too (FOR UPDATE),
        // so even a writer that skipped the advisory lock would wait for this commit.
        let row = query_opt(
            &tx,
            &format!(
                "SELECT (SELECT COUNT(*) FROM calls
                              WHERE account_id = $1 AND status IN ({})),
                            b.tokens, b.at_ms
                       FROM (SELECT 1) AS one
                       LEFT JOIN LATERAL (SELECT tokens, at_ms FROM rate_buckets
                                           WHERE account_id = $1 FOR UPDATE) AS b ON TRUE",
                crate::sqlite::LIVE_STATUSES
            ),
            &[&account_id],
        )
        .await?
        .ok_or_else(|| StoreError::Invalid {
            field: "writes",
            reason: "the admission query returned no row".to_owned(),
        })?;
        let live: i64 = row.try_get(0)?;
        if live >= i64::from(limits.max_concurrent) {
            return Ok(Admission::Concurrency);
        }
        let tokens: Option<f64> = row.try_get(1)?;
        let at_ms: Option<i64> = row.try_get(2)?;
        let bucket = tokens
            .zip(at_ms)
            .map(|(tokens, at_ms)| RateBucket { tokens, at_ms });
        let bucket = match RateBucket::take(bucket, limits, now_ms) {
            Ok(b) => b,
            Err(retry_after_secs) => return Ok(Admission::Rate { retry_after_secs }),
        };
        // The bucket and the call's rows go out together (pipelined on the connection).
        let bucket_params: [&(dyn ToSql + Sync); 3] = [&account_id, &bucket.tokens, &bucket.at_ms];
        let take = exec(
            &tx,
            "INSERT INTO rate_buckets (account_id, tokens, at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (account_id) DO UPDATE SET tokens = EXCLUDED.tokens,
                                                    at_ms = EXCLUDED.at_ms",
            &bucket_params,
        );
        let (taken, written) = tokio::join!(take, apply_writes_on(&tx, writes));
        taken?;
        written?;
        tx.commit().await?;
        Ok(Admission::Admitted)
    }

    async fn update_call(&self, r: &CallRecord) -> Result<(), StoreError> {
        let c = self.client().await?;
        update_call_on(&c, r).await
    }

    async fn get_call(&self, account_id: &str, id: &str) -> Result<Option<CallRecord>, StoreError> {
        let c = self.client().await?;
        query_opt(
            &c,
            &format!("SELECT {CALL_COLS} FROM calls WHERE id = $1 AND account_id = $2"),
            &[&id, &account_id],
        )
        .await?
        .map(|r| call_from_row(&r))
        .transpose()
    }

    async fn call_by_request_id(
        &self,
        account_id: &str,
        request_id: &str,
    ) -> Result<Option<CallRecord>, StoreError> {
        let c = self.client().await?;
        query_opt(
            &c,
            &format!(
                "SELECT {CALL_COLS} FROM calls WHERE account_id = $1 AND request_id = $2
                 ORDER BY created_at_ms DESC LIMIT 1"
            ),
            &[&account_id, &request_id],
        )
        .await?
        .map(|r| call_from_row(&r))
        .transpose()
    }

    async fn list_calls(
        &self,
        filter: &CallFilter,
    ) -> Result<(Vec<CallRecord>, Option<String>), StoreError> {
        let limit = filter.limit.clamp(1, CallFilter::MAX_LIMIT);
        let mut sql = format!("SELECT {CALL_COLS} FROM calls WHERE account_id = $1");
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(filter.account_id.clone())];
        let mut arg = |sql: &mut String, text: &str, v: Box<dyn ToSql + Sync + Send>| {
            args.push(v);
            sql.push_str(&text.replace('?', &format!("${}", args.len())));
        };
        if let Some(status) = filter.status {
            arg(
                &mut sql,
                " AND status = ?",
                Box::new(status.as_str().to_owned()),
            );
        }
        if let Some(user) = &filter.user_id {
            arg(&mut sql, " AND user_id = ?", Box::new(user.clone()));
        }
        if let Some(since) = filter.since_ms {
            arg(&mut sql, " AND created_at_ms >= ?", Box::new(since));
        }
        if let Some(until) = filter.until_ms {
            arg(&mut sql, " AND created_at_ms < ?", Box::new(until));
        }
        if let Some(cursor) = &filter.cursor {
            let (ms, id) = decode_cursor(cursor)?;
            // The first conjunct bounds the index range; the second breaks ties by id.
            arg(&mut sql, " AND created_at_ms <= ?", Box::new(ms));
            arg(&mut sql, " AND (created_at_ms < ?", Box::new(ms));
            arg(&mut sql, " OR id < ?)", Box::new(id));
        }
        arg(
            &mut sql,
            " ORDER BY created_at_ms DESC, id DESC LIMIT ?",
            Box::new(i64::from(limit) + 1),
        );
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect();
        let c = self.client().await?;
        let mut calls = list(query(&c, &sql, &params).await?, call_from_row)?;
        let next = if calls.len() > limit as usize {
            calls.truncate(limit as usize);
            calls.last().map(|c| encode_cursor(c.created_at_ms, &c.id))
        } else {
            None
        };
        Ok((calls, next))
    }

    async fn append_timeline(
        &self,
        call_id: &str,
        entry: &TimelineEntry,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        append_timeline_on(&c, call_id, entry).await
    }

    async fn timeline(&self, call_id: &str) -> Result<Vec<TimelineEntry>, StoreError> {
        let c = self.client().await?;
        list(
            query(
                &c,
                "SELECT at_ms, kind, leg, detail FROM call_timeline WHERE call_id = $1
                 ORDER BY at_ms, id",
                &[&call_id],
            )
            .await?,
            timeline_from_row,
        )
    }

    // ----- outbox -------------------------------------------------------------------------

    async fn enqueue_callback(&self, e: &OutboxEntry) -> Result<(), StoreError> {
        let c = self.client().await?;
        enqueue_callback_on(&c, e).await
    }

    async fn due_callbacks(&self, now: UnixMs, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        let c = self.client().await?;
        list(
            query(
                &c,
                &format!(
                    "SELECT {OUTBOX_COLS} FROM callback_outbox o
                     WHERE o.state = 'pending' AND o.next_attempt_at_ms <= $1
                       AND o.seq = (SELECT MIN(p.seq) FROM callback_outbox p
                                    WHERE p.call_id = o.call_id AND p.state = 'pending')
                     ORDER BY o.next_attempt_at_ms, o.created_at_ms, o.call_id, o.seq
                     LIMIT $2"
                ),
                &[&now, &i64::from(limit)],
            )
            .await?,
            outbox_from_row,
        )
    }

    async fn claim_callbacks(
        &self,
        by: &str,
        now: UnixMs,
        claim_until: UnixMs,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let c = self.client().await?;
        // Rows another node is claiming right now are skipped, not waited for; a row claimed
        // and committed meanwhile fails the re-checked `claimed_until_ms` condition.
        let mut claimed = list(
            query(
                &c,
                &format!(
                    "UPDATE callback_outbox SET claimed_by = $3, claimed_until_ms = $4
                     WHERE event_id IN (
                       SELECT o.event_id FROM callback_outbox o
                       WHERE o.state = 'pending' AND o.next_attempt_at_ms <= $1
                         AND (o.claimed_until_ms IS NULL OR o.claimed_until_ms <= $1)
                         AND o.seq = (SELECT MIN(p.seq) FROM callback_outbox p
                                      WHERE p.call_id = o.call_id AND p.state = 'pending')
                       ORDER BY o.next_attempt_at_ms, o.created_at_ms, o.call_id, o.seq
                       LIMIT $2
                       FOR UPDATE SKIP LOCKED)
                       AND state = 'pending'
                       AND (claimed_until_ms IS NULL OR claimed_until_ms <= $1)
                     RETURNING {OUTBOX_COLS}"
                ),
                &[&now, &i64::from(limit), &by, &claim_until],
            )
            .await?,
            outbox_from_row,
        )?;
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

    async fn callback_due(&self, event_id: &str, now: UnixMs) -> Result<bool, StoreError> {
        let c = self.client().await?;
        Ok(query_opt(
            &c,
            "SELECT 1 FROM callback_outbox
             WHERE event_id = $1 AND state = 'pending' AND next_attempt_at_ms <= $2",
            &[&event_id, &now],
        )
        .await?
        .is_some())
    }

    async fn mark_delivered(&self, event_id: &str, attempts: u32) -> Result<(), StoreError> {
        let c = self.client().await?;
        let n = exec(
            &c,
            "UPDATE callback_outbox SET state = 'delivered', attempts = $2, last_error = NULL,
                 claimed_by = NULL, claimed_until_ms = NULL
             WHERE event_id = $1",
            &[&event_id, &i64::from(attempts)],
        )
        .await?;
        if n == 0 {
            return Err(not_found("callback", event_id));
        }
        Ok(())
    }

    async fn reschedule(
        &self,
        event_id: &str,
        attempts: u32,
        next_attempt_at_ms: UnixMs,
        last_error: &str,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        let n = exec(
            &c,
            "UPDATE callback_outbox SET attempts = $2, next_attempt_at_ms = $3, last_error = $4,
                 claimed_by = NULL, claimed_until_ms = NULL
             WHERE event_id = $1 AND state = 'pending'",
            &[
                &event_id,
                &i64::from(attempts),
                &next_attempt_at_ms,
                &last_error,
            ],
        )
        .await?;
        if n == 0 {
            return Err(not_found("pending callback", event_id));
        }
        Ok(())
    }

    async fn abandon_callback(
        &self,
        event_id: &str,
        attempts: u32,
        last_error: &str,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        let n = exec(
            &c,
            "UPDATE callback_outbox SET state = 'abandoned', attempts = $2, last_error = $3,
                 claimed_by = NULL, claimed_until_ms = NULL
             WHERE event_id = $1 AND state = 'pending'",
            &[&event_id, &i64::from(attempts), &last_error],
        )
        .await?;
        if n == 0 {
            return Err(not_found("pending callback", event_id));
        }
        tracing::warn!(event_id, attempts, "callback abandoned");
        Ok(())
    }

    async fn callbacks_for_call(&self, call_id: &str) -> Result<Vec<OutboxEntry>, StoreError> {
        let c = self.client().await?;
        list(
            query(
                &c,
                &format!(
                    "SELECT {OUTBOX_COLS} FROM callback_outbox WHERE call_id = $1 ORDER BY seq"
                ),
                &[&call_id],
            )
            .await?,
            outbox_from_row,
        )
    }

    async fn next_callback_seq(&self, call_id: &str) -> Result<i64, StoreError> {
        let c = self.client().await?;
        let row = query_opt(
            &c,
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM callback_outbox WHERE call_id = $1",
            &[&call_id],
        )
        .await?;
        match row {
            Some(r) => Ok(r.try_get(0)?),
            None => Ok(1),
        }
    }

    // ----- the call event write path ------------------------------------------------------

    async fn write_call_batch(&self, writes: &[CallWrite]) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        apply_writes_on(&tx, writes).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn unfinished_calls(&self) -> Result<Vec<CallRecord>, StoreError> {
        let finals: Vec<String> = CallStatus::ALL
            .iter()
            .filter(|s| s.is_final())
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        let c = self.client().await?;
        list(
            query(
                &c,
                &format!(
                    "SELECT {CALL_COLS} FROM calls WHERE status NOT IN ({}) ORDER BY created_at_ms",
                    finals.join(", ")
                ),
                &[],
            )
            .await?,
            call_from_row,
        )
    }

    async fn unfinished_calls_of(
        &self,
        node_id: &str,
        with_unowned: bool,
    ) -> Result<Vec<CallRecord>, StoreError> {
        let finals: Vec<String> = CallStatus::ALL
            .iter()
            .filter(|s| s.is_final())
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        let c = self.client().await?;
        list(
            query(
                &c,
                &format!(
                    "SELECT {CALL_COLS} FROM calls
                     WHERE status NOT IN ({}) AND (node_id = $1 OR ($2 AND node_id IS NULL))
                     ORDER BY created_at_ms",
                    finals.join(", ")
                ),
                &[&node_id, &with_unowned],
            )
            .await?,
            call_from_row,
        )
    }

    async fn acquire_node_lease(
        &self,
        lease: &NodeLease,
        now: UnixMs,
        stale_until: Option<UnixMs>,
    ) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Insert, or take over a lease that is free for us; one statement, so two nodes
        // racing for one id cannot both win.
        let row = query_opt(
            &tx,
            "INSERT INTO nodes (node_id, instance, api_url, until_ms, taken_over_by)
             VALUES ($1, $2, $3, $4, NULL)
             ON CONFLICT (node_id) DO UPDATE SET instance = excluded.instance,
                 api_url = excluded.api_url, until_ms = excluded.until_ms, taken_over_by = NULL
             WHERE nodes.until_ms <= $5 OR nodes.instance = excluded.instance
                OR nodes.until_ms = $6
             RETURNING node_id",
            &[
                &lease.node_id,
                &lease.instance,
                &lease.api_url,
                &lease.until_ms,
                &now,
                &stale_until.unwrap_or(i64::MIN),
            ],
        )
        .await?;
        if row.is_none() {
            let until_ms: i64 = query_opt(
                &tx,
                "SELECT until_ms FROM nodes WHERE node_id = $1",
                &[&lease.node_id],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(0);
            return Err(StoreError::NodeIdInUse {
                id: lease.node_id.clone(),
                until_ms,
            });
        }
        tx.commit().await?;
        Ok(())
    }

    async fn renew_node_lease(&self, lease: &NodeLease) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = exec(
            &c,
            "UPDATE nodes SET until_ms = $3, api_url = $4
             WHERE node_id = $1 AND instance = $2 AND taken_over_by IS NULL",
            &[
                &lease.node_id,
                &lease.instance,
                &lease.until_ms,
                &lease.api_url,
            ],
        )
        .await?;
        Ok(n > 0)
    }

    async fn claim_lapsed_nodes(
        &self,
        by: &str,
        now: UnixMs,
    ) -> Result<Vec<NodeLease>, StoreError> {
        let c = self.client().await?;
        // One statement: a lapsed lease is claimed by exactly one node.
        query(
            &c,
            "UPDATE nodes SET taken_over_by = $1
             WHERE until_ms <= $2 AND taken_over_by IS NULL AND node_id <> $1
             RETURNING node_id, instance, api_url, until_ms",
            &[&by, &now],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(NodeLease {
                node_id: r.try_get(0)?,
                instance: r.try_get(1)?,
                api_url: r.try_get(2)?,
                until_ms: r.try_get(3)?,
            })
        })
        .collect()
    }

    async fn node_lease(&self, node_id: &str) -> Result<Option<NodeLease>, StoreError> {
        let c = self.client().await?;
        let row = query_opt(
            &c,
            "SELECT node_id, instance, api_url, until_ms FROM nodes WHERE node_id = $1",
            &[&node_id],
        )
        .await?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some(NodeLease {
                node_id: r.try_get(0)?,
                instance: r.try_get(1)?,
                api_url: r.try_get(2)?,
                until_ms: r.try_get(3)?,
            })),
        }
    }

    async fn release_node_lease(&self, node_id: &str, instance: &str) -> Result<(), StoreError> {
        let c = self.client().await?;
        exec(
            &c,
            "DELETE FROM nodes WHERE node_id = $1 AND instance = $2",
            &[&node_id, &instance],
        )
        .await?;
        Ok(())
    }

    async fn probe_write(&self, now: UnixMs) -> Result<(), StoreError> {
        let c = self.client().await?;
        exec(
            &c,
            "INSERT INTO meta (key, value) VALUES ('health_probe', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&now.to_string().into_bytes()],
        )
        .await?;
        Ok(())
    }

    // ----- idempotency --------------------------------------------------------------------

    async fn put_idempotency(&self, r: &IdempotencyRecord) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = exec(
            &c,
            "INSERT INTO idempotency (account_id, key, request_hash, response_status,
                 response_body, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (account_id, key) DO NOTHING",
            &[
                &r.account_id,
                &r.key,
                &r.request_hash,
                &i64::from(r.response_status),
                &r.response_body,
                &r.created_at_ms,
            ],
        )
        .await?;
        Ok(n > 0)
    }

    async fn get_idempotency(
        &self,
        account_id: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let c = self.client().await?;
        query_opt(
            &c,
            "SELECT account_id, key, request_hash, response_status, response_body, created_at_ms
             FROM idempotency WHERE account_id = $1 AND key = $2",
            &[&account_id, &key],
        )
        .await?
        .map(|r| idempotency_from_row(&r))
        .transpose()
    }

    async fn purge_idempotency(&self, before_ms: UnixMs) -> Result<usize, StoreError> {
        let c = self.client().await?;
        Ok(exec(
            &c,
            "DELETE FROM idempotency WHERE created_at_ms < $1",
            &[&before_ms],
        )
        .await? as usize)
    }

    async fn complete_idempotency(&self, r: &IdempotencyRecord) -> Result<(), StoreError> {
        let c = self.client().await?;
        let n = exec(
            &c,
            "UPDATE idempotency SET request_hash = $3, response_status = $4, response_body = $5,
                 created_at_ms = $6
             WHERE account_id = $1 AND key = $2",
            &[
                &r.account_id,
                &r.key,
                &r.request_hash,
                &i64::from(r.response_status),
                &r.response_body,
                &r.created_at_ms,
            ],
        )
        .await?;
        if n == 0 {
            return Err(not_found("idempotency key", &r.key));
        }
        Ok(())
    }

    async fn release_idempotency(&self, account_id: &str, key: &str) -> Result<bool, StoreError> {
        let c = self.client().await?;
        Ok(exec(
            &c,
            "DELETE FROM idempotency WHERE account_id = $1 AND key = $2 AND response_status = 0",
            &[&account_id, &key],
        )
        .await?
            > 0)
    }
}
