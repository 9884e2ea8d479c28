//! The dialbridge store: accounts, users, devices, numbers, trunks, registration bindings,
//! the call log with its timelines, the callback outbox and API idempotency records.
//!
//! Everything above this crate talks to the [`Store`] trait, an object-safe, asynchronous
//! interface (`Arc<dyn Store>`), so that no tokio worker thread ever waits on a database.
//! [`SqliteStore`] implements the synchronous [`BlockingStore`] on an embedded SQLite database
//! in WAL mode, and [`StoreThreads`] runs it on dedicated store threads as a [`Store`].
//! [`PgStore`] implements [`Store`] directly on PostgreSQL. [`open`] picks the implementation
//! from `store.url`.
//!
//! # Layout
//!
//! - [`threads`]: [`StoreThreads`], a [`BlockingStore`] on its own OS threads behind a bounded
//!   job queue, offered as a [`Store`].
//! - [`sqlite`]: [`SqliteStore`], the schema and its ordered migrations (run at open).
//! - [`postgres`]: [`PgStore`], the store on PostgreSQL for several nodes sharing one
//!   database: an async driver with a connection pool, its own migrations (run at open).
//! - [`provision`]: the `[[accounts]]`, `[[users]]`, `[[trunks]]`, `[[numbers]]` config tables
//!   ([`Provisioning`]), their validation into [`ConfigIssue`]s (key path + reason), and the
//!   [`ProvisionReport`] of an idempotent upsert.
//! - [`model`]: the rows as Rust values ([`Account`], [`User`], [`Device`], [`Binding`],
//!   [`CallRecord`], [`OutboxEntry`], ...).
//! - [`secret`]: [`Secret`], a string redacted from `Debug`/`Display`, and the hashes: digest
//!   HA1 (MD5, SHA-256) and the keyed hash of API secrets.
//! - [`cache`]: [`cache::ReadCache`], provisioning data kept in memory for the hot paths,
//!   trusted while [`Store::provisioning_generation`] holds and for a time to live.
//! - [`typeid`]: TypeIDs (`user_01h2xcejqtf2nbrexx3vqjhp42`): generation from UUIDv7, parsing.
//! - [`e164`]: E.164 number checks.
//! - [`error`]: the error type, [`StoreError`].
//!
//! # Secrets
//!
//! - Device passwords are not stored: only `HA1 = H(username:realm:password)` for MD5 and
//!   SHA-256, which is what the registrar's digest check needs (RFC 7616 §3.4.2). HA1 values
//!   are password-equivalent for that realm and are redacted like passwords.
//! - API secrets are stored as `HMAC-SHA256(pepper, secret)`. The 32-byte pepper is generated
//!   at the first open and kept in the database's `meta` table. Trade-off: a copy of the whole
//!   database gives an attacker the pepper too, so the hash then only protects secrets with
//!   enough entropy to resist offline guessing (generated API secrets do; a memorable word
//!   would not). In exchange, lookups cost one HMAC, not a deliberately slow hash on every
//!   API request, and all nodes sharing the database agree on the hash.
//! - Webhook secrets and trunk passwords must be usable (they sign callbacks, answer a carrier's
//!   challenge), so they are stored as given, and only ever shown as `***`.
//!
//! # What it does not do
//!
//! - No SIP, no digest challenge/response, no registrar policy (expiry limits, RFC 5626 flow
//!   rules): it keeps bindings; the registrar decides.
//! - No dial-plan logic: it keeps `region`, `allowed_prefixes`, `allowed_countries` and
//!   `blocked_number_types`; the call logic applies them.
//! - No clock of its own on any protocol path: sweeps, due callbacks and bindings take `now`.
//! - Provisioning never deletes users, devices, numbers or trunks that the configuration no
//!   longer lists (they may have been created through the admin API); only an account's API
//!   keys follow its list exactly.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod cache;
pub mod calendar;
pub mod e164;
pub mod error;
pub mod model;
pub mod postgres;
pub mod provision;
pub mod secret;
pub mod sqlite;
pub mod threads;
pub mod typeid;

pub use error::StoreError;
pub use model::{
    Account, AccountLimits, Admission, AdmitRequest, ApiKey, Binding, CallFilter, CallRecord,
    CallStatus, CallWrite, Detail, Device, IdempotencyRecord, NodeLease, Number, NumberType,
    OutboxEntry, OutboxState, PublishableKey, RateBucket, Srtp, TimelineEntry, Transport, Trunk,
    TrunkRouting, UnixMs, UnixSecs, UnknownNumberType, UnknownSrtp, User,
};
pub use postgres::PgStore;
pub use provision::{
    AccountSpec, ApiKeySpec, ConfigIssue, Counts, DeviceSpec, NumberSpec, ProvisionReport,
    Provisioning, TrunkSpec, UserSpec,
};
pub use secret::Secret;
pub use sqlite::{redact_url, SqliteStore};
pub use threads::StoreThreads;
pub use typeid::{TypeId, TypeIdError};

use std::sync::Arc;

/// Opens the store named by `store.url`: `postgres://USER[:PASS]@HOST[:PORT]/DB` (or
/// `postgresql://`) opens [`PgStore`]; `sqlite://PATH`, `sqlite:PATH`, `sqlite::memory:` or a
/// plain path open SQLite, run on [`threads::DEFAULT_THREADS`] store threads. Migrations run
/// on either. A PostgreSQL database that cannot be reached is
/// [`StoreError::PostgresUnreachable`], naming `store.url` (password hidden).
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if postgres::is_postgres_url(url) {
        return Ok(Arc::new(PgStore::open(url).await?));
    }
    let url = url.to_owned();
    let sqlite =
        StoreThreads::start(move || SqliteStore::open(&url), threads::DEFAULT_THREADS).await?;
    Ok(Arc::new(sqlite))
}

/// Checks the form of a `store.url` without opening anything (`check-config`): the reason,
/// password hidden, when it names no store this build can open.
pub fn check_url(url: &str) -> Result<(), String> {
    if postgres::is_postgres_url(url) {
        return url
            .parse::<tokio_postgres::Config>()
            .map(|_| ())
            .map_err(|e| format!("{}: {e}", sqlite::redact_url(url)));
    }
    sqlite::Location::parse(url)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The counter behind [`Store::provisioning_generation`], kept by each backend.
#[derive(Debug, Default)]
pub(crate) struct Generation(std::sync::atomic::AtomicU64);

impl Generation {
    pub(crate) fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Counts a write that may have changed provisioning (whatever its result) and passes the
    /// result on.
    pub(crate) fn changed<T>(&self, result: T) -> T {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        result
    }
}

/// The store interface used by the registrar, the call logic and the API: asynchronous, so
/// that no runtime thread ever waits on a database.
///
/// Each backend decides where its work runs: SQLite on the store's own threads
/// ([`StoreThreads`]), PostgreSQL on its pool's connections. Lookups return `Ok(None)` when
/// nothing matches; updates and deletes of a missing row return [`StoreError::NotFound`] or
/// `Ok(false)` as documented.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// A number that changes whenever provisioning may have changed through this store
    /// (the configuration applied; an account, its limits or keys, a user, device, number
    /// or trunk created, changed or deleted): what a [`cache::ReadCache`] compares to know it
    /// is stale. Read it before the lookup whose result is cached. Writes made by another
    /// node are not seen here: a cache also needs a lifetime.
    fn provisioning_generation(&self) -> u64 {
        0
    }

    // ----- provisioning -------------------------------------------------------------------

    /// Validates `prov` and upserts it in one transaction. `realm` is the digest realm
    /// (`sip.domain`) for which device HA1 values are computed. Applying the same input twice
    /// changes nothing the second time ([`ProvisionReport::is_noop`]).
    async fn apply_provisioning(
        &self,
        prov: &Provisioning,
        realm: &str,
    ) -> Result<ProvisionReport, StoreError>;

    // ----- accounts and API keys ----------------------------------------------------------

    async fn account(&self, id: &str) -> Result<Option<Account>, StoreError>;
    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError>;
    /// The account one of whose API secrets is `secret` (`Authorization: Bearer`).
    async fn account_by_api_secret(&self, secret: &str) -> Result<Option<Account>, StoreError>;
    /// The account of API key `key`, if `secret` is its secret (`Authorization: key:secret`).
    /// The secret is compared in constant time.
    async fn account_by_key_pair(
        &self,
        key: &str,
        secret: &str,
    ) -> Result<Option<Account>, StoreError>;
    async fn api_keys_for_account(&self, account_id: &str) -> Result<Vec<ApiKey>, StoreError>;
    /// Replaces the call limits of `account_id` ([`StoreError::Invalid`] for a value out of
    /// range). `Ok(false)` when there is no such account.
    async fn set_account_limits(
        &self,
        account_id: &str,
        limits: &AccountLimits,
    ) -> Result<bool, StoreError>;
    /// The account of a publishable key (`pk_…`).
    async fn account_by_publishable_key(&self, key: &str) -> Result<Option<Account>, StoreError>;
    /// An account's publishable keys, oldest first.
    async fn publishable_keys_for_account(
        &self,
        account_id: &str,
    ) -> Result<Vec<PublishableKey>, StoreError>;
    /// Adds a publishable key (`Invalid` for a malformed key, `AlreadyExists` for a taken one).
    async fn create_publishable_key(&self, key: &PublishableKey) -> Result<(), StoreError>;
    /// Removes one of the account's publishable keys; `Ok(false)` when it has no such key.
    async fn delete_publishable_key(&self, account_id: &str, key: &str)
        -> Result<bool, StoreError>;
    /// Writes an account's name, region and dialing permissions (not its webhook secret nor
    /// its keys). `NotFound` when there is no such account.
    async fn update_account(&self, account: &Account) -> Result<(), StoreError>;

    // ----- users --------------------------------------------------------------------------

    async fn user(&self, id: &str) -> Result<Option<User>, StoreError>;
    async fn user_by_extension(
        &self,
        account_id: &str,
        extension: &str,
    ) -> Result<Option<User>, StoreError>;
    async fn user_by_agent_id(
        &self,
        account_id: &str,
        agent_id: i64,
    ) -> Result<Option<User>, StoreError>;
    async fn users_for_account(&self, account_id: &str) -> Result<Vec<User>, StoreError>;
    /// Inserts a user; [`StoreError::AlreadyExists`] when the id, extension or agent id is
    /// taken, [`StoreError::NotFound`] when the account does not exist.
    async fn create_user(&self, user: &User) -> Result<(), StoreError>;
    /// Replaces the user's name, extension and agent id (the account cannot change).
    async fn update_user(&self, user: &User) -> Result<(), StoreError>;
    /// Deletes a user of `account_id` with its devices and their bindings. `Ok(false)` when
    /// there was none.
    async fn delete_user(&self, account_id: &str, id: &str) -> Result<bool, StoreError>;

    // ----- devices ------------------------------------------------------------------------

    async fn device_by_username(&self, username: &str) -> Result<Option<Device>, StoreError>;
    async fn devices_for_user(&self, user_id: &str) -> Result<Vec<Device>, StoreError>;
    /// Creates a device for `user_id`, keeping only the HA1 values for `realm`.
    async fn create_device(
        &self,
        user_id: &str,
        username: &str,
        password: &Secret,
        realm: &str,
    ) -> Result<Device, StoreError>;
    /// Replaces the HA1 values of a device (new password or new realm).
    async fn set_device_password(
        &self,
        username: &str,
        password: &Secret,
        realm: &str,
    ) -> Result<Device, StoreError>;
    /// Deletes a device and its bindings. `Ok(false)` when there was none.
    async fn delete_device(&self, username: &str) -> Result<bool, StoreError>;

    // ----- numbers ------------------------------------------------------------------------

    async fn number(&self, number: &str) -> Result<Option<Number>, StoreError>;
    async fn numbers_for_account(&self, account_id: &str) -> Result<Vec<Number>, StoreError>;
    async fn create_number(&self, number: &Number) -> Result<(), StoreError>;
    /// Replaces the owner of a number (the account cannot change).
    async fn update_number(&self, number: &Number) -> Result<(), StoreError>;
    async fn delete_number(&self, account_id: &str, number: &str) -> Result<bool, StoreError>;

    // ----- trunks -------------------------------------------------------------------------

    async fn trunk(&self, name: &str) -> Result<Option<Trunk>, StoreError>;
    /// The account's own trunks first, then the shared ones, each by name.
    async fn trunks_for_account(&self, account_id: &str) -> Result<Vec<Trunk>, StoreError>;
    async fn list_trunks(&self) -> Result<Vec<Trunk>, StoreError>;
    async fn create_trunk(&self, trunk: &Trunk) -> Result<(), StoreError>;
    async fn update_trunk(&self, trunk: &Trunk) -> Result<(), StoreError>;
    async fn delete_trunk(&self, name: &str) -> Result<bool, StoreError>;

    // ----- registrations (RFC 3261 §10.3) -------------------------------------------------

    /// Inserts or replaces the binding of (`device_username`, `contact`).
    async fn upsert_binding(&self, binding: &Binding) -> Result<(), StoreError>;
    async fn remove_binding(
        &self,
        device_username: &str,
        contact: &str,
    ) -> Result<bool, StoreError>;
    /// Removes every binding of a device (`Contact: *`); returns how many there were.
    async fn remove_all_bindings(&self, device_username: &str) -> Result<usize, StoreError>;
    /// Unexpired (`expires_at > now`) bindings of a device, by contact.
    async fn bindings_for_device(
        &self,
        device_username: &str,
        now: UnixSecs,
    ) -> Result<Vec<Binding>, StoreError>;
    /// Unexpired bindings of all the user's devices, by device then contact.
    async fn bindings_for_user(
        &self,
        user_id: &str,
        now: UnixSecs,
    ) -> Result<Vec<Binding>, StoreError>;
    /// A device and, when it exists, its unexpired bindings (as
    /// [`bindings_for_device`](Self::bindings_for_device)): what a REGISTER of a device not
    /// seen lately needs first. The default reads one, then the other; a store with threads
    /// of its own reads both in one call.
    async fn device_and_bindings(
        &self,
        username: &str,
        now: UnixSecs,
    ) -> Result<(Option<Device>, Vec<Binding>), StoreError> {
        let Some(device) = self.device_by_username(username).await? else {
            return Ok((None, Vec::new()));
        };
        let bindings = self.bindings_for_device(username, now).await?;
        Ok((Some(device), bindings))
    }
    /// A refresh of a binding that exists (same device and contact, only its expiry, CSeq,
    /// Call-ID, source or time changed): kept in memory and written with the other waiting
    /// refreshes by [`flush_refreshes`](Self::flush_refreshes), which the server calls at
    /// least twice a second; the reads of bindings see it at once. A new or removed contact
    /// goes through [`upsert_binding`](Self::upsert_binding) /
    /// [`remove_binding`](Self::remove_binding) instead, durable before they return. The
    /// default writes it at once.
    async fn refresh_binding(&self, binding: &Binding) -> Result<(), StoreError> {
        self.upsert_binding(binding).await
    }
    /// Writes the refreshes waiting in memory, in one transaction; returns how many.
    async fn flush_refreshes(&self) -> Result<usize, StoreError> {
        Ok(0)
    }
    /// [`refresh_binding`](Self::refresh_binding) on the caller's thread, when this backend
    /// keeps refreshes in memory (SQLite): a short lock, no disk and no store thread, so a
    /// runtime thread may call it. `None`: this backend writes refreshes; use
    /// `refresh_binding`.
    fn refresh_binding_here(&self, _binding: &Binding) -> Option<Result<(), StoreError>> {
        None
    }
    /// Whether other processes may write this store (several nodes on one PostgreSQL
    /// database), so that what this process last read or wrote may no longer be so.
    /// `false` for SQLite: one node's store.
    fn shared(&self) -> bool {
        true
    }
    /// Deletes bindings with `expires_at <= now`; returns how many.
    async fn sweep_expired(&self, now: UnixSecs) -> Result<usize, StoreError>;
    /// How many bindings are in force at `now` (a gauge for metrics).
    async fn count_bindings(&self, now: UnixSecs) -> Result<u64, StoreError>;

    // ----- calls and timelines ------------------------------------------------------------

    async fn insert_call(&self, call: &CallRecord) -> Result<(), StoreError>;
    /// Writes `writes` (a new call, [`CallWrite::NewCall`], with what goes with it) in one
    /// transaction under the account's `limits`, which hold for every node sharing the
    /// database: refused ([`Admission::Concurrency`]) when the new call's account already has
    /// `max_concurrent` unfinished calls, refused ([`Admission::Rate`]) when the account's
    /// token bucket ([`RateBucket`], refilled at `calls_per_second` up to `burst`, as of
    /// `now_ms`) holds no token; nothing is written then. Checking, taking the token and
    /// writing are one step cluster-wide (a lock per account on PostgreSQL). A call's slot is
    /// free again once its status is final. [`StoreError::Invalid`] when `writes` holds no
    /// new call.
    async fn admit_call(
        &self,
        writes: &[CallWrite],
        limits: &AccountLimits,
        now_ms: UnixMs,
    ) -> Result<Admission, StoreError>;
    /// Replaces every mutable field of the call `call.id` (not `account_id`, `created_at_ms`).
    async fn update_call(&self, call: &CallRecord) -> Result<(), StoreError>;
    async fn get_call(&self, account_id: &str, id: &str) -> Result<Option<CallRecord>, StoreError>;
    async fn call_by_request_id(
        &self,
        account_id: &str,
        request_id: &str,
    ) -> Result<Option<CallRecord>, StoreError>;
    /// One page of the call log, newest first, and the cursor of the next page (`None` on the
    /// last page). The cursor is opaque text.
    async fn list_calls(
        &self,
        filter: &CallFilter,
    ) -> Result<(Vec<CallRecord>, Option<String>), StoreError>;
    async fn append_timeline(&self, call_id: &str, entry: &TimelineEntry)
        -> Result<(), StoreError>;
    /// The call's timeline by time, then insertion order.
    async fn timeline(&self, call_id: &str) -> Result<Vec<TimelineEntry>, StoreError>;

    // ----- callback outbox ----------------------------------------------------------------

    async fn enqueue_callback(&self, entry: &OutboxEntry) -> Result<(), StoreError>;
    /// Pending callbacks due at `now`, at most `limit`, oldest due first; for each call only
    /// the lowest pending `seq`, so callbacks of one call go out in order. The cost grows with
    /// the number of pending rows (about 0.4 ms with 20 000 pending on SQLite), which the
    /// outbox keeps small in normal operation.
    async fn due_callbacks(&self, now: UnixMs, limit: u32) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Whether one callback is still pending and due at `now`: the dispatcher asks right
    /// before sending, so that a row read as due just before another delivery of it ended
    /// is not sent twice.
    async fn callback_due(&self, event_id: &str, now: UnixMs) -> Result<bool, StoreError>;
    async fn mark_delivered(&self, event_id: &str, attempts: u32) -> Result<(), StoreError>;
    /// Records a failed attempt and when to try again.
    async fn reschedule(
        &self,
        event_id: &str,
        attempts: u32,
        next_attempt_at_ms: UnixMs,
        last_error: &str,
    ) -> Result<(), StoreError>;
    /// Gives up on a callback, letting the call's next one go.
    async fn abandon_callback(
        &self,
        event_id: &str,
        attempts: u32,
        last_error: &str,
    ) -> Result<(), StoreError>;
    /// Every callback of a call (any state), by `seq`.
    async fn callbacks_for_call(&self, call_id: &str) -> Result<Vec<OutboxEntry>, StoreError>;
    /// The next free `seq` for a call's callbacks (1 for the first).
    async fn next_callback_seq(&self, call_id: &str) -> Result<i64, StoreError>;
    /// Claims up to `limit` due callbacks for node `by` until `claim_until` (a lease on the
    /// delivery): of each call only its lowest pending sequence, and never one that an
    /// unexpired claim holds. Claiming is one statement for the whole cluster (`FOR UPDATE
    /// SKIP LOCKED` on PostgreSQL), so a callback is held by one node at a time. A claim ends
    /// with [`mark_delivered`](Self::mark_delivered), [`reschedule`](Self::reschedule) or
    /// [`abandon_callback`](Self::abandon_callback); one whose holder died lapses at
    /// `claim_until` and is claimed again by any node.
    async fn claim_callbacks(
        &self,
        by: &str,
        now: UnixMs,
        claim_until: UnixMs,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError>;

    // ----- the call event write path ------------------------------------------------------

    /// Applies a batch of call writes (timeline entries, call records, callbacks) in one
    /// transaction: all of them or, on an error, none — so a batch that failed can be retried
    /// whole without anything being written twice.
    async fn write_call_batch(&self, writes: &[CallWrite]) -> Result<(), StoreError>;
    /// [`Store::write_call_batch`] on the caller's own thread, blocking it, where the backend's
    /// work is blocking anyway (SQLite): for a caller that is an OS thread of its own (the
    /// call event journal), which saves a hand-off to a store thread and back, and a copy
    /// of the batch. `None`: this backend has no such path; use `write_call_batch` (and
    /// `admit_call` for each admission).
    ///
    /// The same transaction first admits `admissions` (none: just the batch), each as
    /// [`Store::admit_call`] would (in order, each under its account's limits as the calls
    /// before it in the batch left them); an admission refused (over a limit) or malformed
    /// (no new call) writes nothing and the rest of the batch goes on, while a store error
    /// in one fails the whole batch. Returns each admission's outcome, in order, once the
    /// whole batch is committed; on an error nothing of the batch is written. On a store of this node alone the journal admits new calls this way, so
    /// that an admission shares its commit with the events of the calls before it.
    #[allow(clippy::type_complexity)]
    fn write_call_batch_admitting_here(
        &self,
        _admissions: &[AdmitRequest],
        _writes: &[CallWrite],
    ) -> Option<Result<Vec<Result<Admission, StoreError>>, StoreError>> {
        None
    }
    /// A call's record and the sequence number of its next callback
    /// ([`Store::get_call`] and [`Store::next_callback_seq`]) read on the caller's own thread,
    /// where the backend is blocking anyway, as [`Store::write_call_batch_admitting_here`] writes: for
    /// the call event journal, which reads an answered call back at its next event. A call
    /// without a callback URL has no callbacks: its next sequence is 1, not read. `None`:
    /// this backend has no such path; use the two async reads.
    #[allow(clippy::type_complexity)]
    fn read_call_here(
        &self,
        _account_id: &str,
        _id: &str,
    ) -> Option<Result<Option<(CallRecord, i64)>, StoreError>> {
        None
    }
    /// Calls whose status is not final (after a crash: the calls a previous run left).
    async fn unfinished_calls(&self) -> Result<Vec<CallRecord>, StoreError>;
    /// The unfinished calls owned by `node_id` (and, with `with_unowned`, those that record
    /// no node), oldest first.
    async fn unfinished_calls_of(
        &self,
        node_id: &str,
        with_unowned: bool,
    ) -> Result<Vec<CallRecord>, StoreError>;

    // ----- nodes --------------------------------------------------------------------------

    /// Takes the lease of `lease.node_id` for `lease.instance` until `lease.until_ms`: when
    /// there is none, it lapsed (`until_ms <= now`), it is already this instance's, or its
    /// `until_ms` is still `stale_until` (seen earlier and not renewed since: its holder is
    /// dead). Otherwise [`StoreError::NodeIdInUse`]: another process runs with that id.
    async fn acquire_node_lease(
        &self,
        lease: &NodeLease,
        now: UnixMs,
        stale_until: Option<UnixMs>,
    ) -> Result<(), StoreError>;
    /// Extends this instance's lease to `lease.until_ms`; `Ok(false)` when it is no longer
    /// this instance's (taken over, or taken by another process with the same id).
    async fn renew_node_lease(&self, lease: &NodeLease) -> Result<bool, StoreError>;
    /// Claims the lapsed leases of other nodes for node `by`: each lapsed lease is claimed
    /// once, cluster-wide, and returned to the one node that claimed it.
    async fn claim_lapsed_nodes(&self, by: &str, now: UnixMs)
        -> Result<Vec<NodeLease>, StoreError>;
    /// Gives up this instance's lease (a clean stop).
    async fn release_node_lease(&self, node_id: &str, instance: &str) -> Result<(), StoreError>;
    /// The lease of a node as it stands (live or lapsed), `None` when it has none: where
    /// another node reaches it (`api_url`) and whether it is alive.
    async fn node_lease(&self, node_id: &str) -> Result<Option<NodeLease>, StoreError>;
    /// A small write that tells whether the store accepts writes now (health checks).
    async fn probe_write(&self, now: UnixMs) -> Result<(), StoreError>;

    // ----- idempotency keys ---------------------------------------------------------------

    /// Stores a response for (`account_id`, `key`) unless one exists; `Ok(false)` when a
    /// record was already there (the existing one is kept).
    async fn put_idempotency(&self, record: &IdempotencyRecord) -> Result<bool, StoreError>;
    async fn get_idempotency(
        &self,
        account_id: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
    /// Deletes records created before `before_ms`; returns how many.
    async fn purge_idempotency(&self, before_ms: UnixMs) -> Result<usize, StoreError>;
    /// Replaces the response of an existing record (a reservation made with
    /// [`put_idempotency`](Self::put_idempotency) and status 0 gets its answer).
    /// `NotFound` when there is none.
    async fn complete_idempotency(&self, record: &IdempotencyRecord) -> Result<(), StoreError>;
    /// Deletes a reservation (status 0) of (`account_id`, `key`); `Ok(false)` when there was
    /// none. Completed records stay.
    async fn release_idempotency(&self, account_id: &str, key: &str) -> Result<bool, StoreError>;
}

/// The synchronous interface of a backend that runs on threads of its own ([`SqliteStore`]).
///
/// Nothing above this crate calls it on a runtime thread: [`StoreThreads`] runs it on
/// dedicated store threads and offers it as a [`Store`]. The methods are those of [`Store`],
/// documented there.
pub trait BlockingStore: Send + Sync + std::fmt::Debug + 'static {
    // ----- provisioning -------------------------------------------------------------------

    fn apply_provisioning(
        &self,
        prov: &Provisioning,
        realm: &str,
    ) -> Result<ProvisionReport, StoreError>;

    // ----- accounts and API keys ----------------------------------------------------------

    fn account(&self, id: &str) -> Result<Option<Account>, StoreError>;
    fn list_accounts(&self) -> Result<Vec<Account>, StoreError>;
    fn account_by_api_secret(&self, secret: &str) -> Result<Option<Account>, StoreError>;
    fn account_by_key_pair(&self, key: &str, secret: &str) -> Result<Option<Account>, StoreError>;
    fn api_keys_for_account(&self, account_id: &str) -> Result<Vec<ApiKey>, StoreError>;
    fn set_account_limits(
        &self,
        account_id: &str,
        limits: &AccountLimits,
    ) -> Result<bool, StoreError>;
    /// The account of a publishable key (`pk_…`).
    fn account_by_publishable_key(&self, key: &str) -> Result<Option<Account>, StoreError>;
    /// An account's publishable keys, oldest first.
    fn publishable_keys_for_account(
        &self,
        account_id: &str,
    ) -> Result<Vec<PublishableKey>, StoreError>;
    /// Adds a publishable key (`Invalid` for a malformed key, `Conflict` for a taken one).
    fn create_publishable_key(&self, key: &PublishableKey) -> Result<(), StoreError>;
    /// Removes one of the account's publishable keys; `Ok(false)` when it has no such key.
    fn delete_publishable_key(&self, account_id: &str, key: &str) -> Result<bool, StoreError>;
    /// Writes an account's name, region and dialing permissions (not its webhook secret nor
    /// its keys). `NotFound` when there is no such account.
    fn update_account(&self, account: &Account) -> Result<(), StoreError>;

    // ----- users --------------------------------------------------------------------------

    fn user(&self, id: &str) -> Result<Option<User>, StoreError>;
    fn user_by_extension(
        &self,
        account_id: &str,
        extension: &str,
    ) -> Result<Option<User>, StoreError>;
    fn user_by_agent_id(&self, account_id: &str, agent_id: i64)
        -> Result<Option<User>, StoreError>;
    fn users_for_account(&self, account_id: &str) -> Result<Vec<User>, StoreError>;
    fn create_user(&self, user: &User) -> Result<(), StoreError>;
    fn update_user(&self, user: &User) -> Result<(), StoreError>;
    fn delete_user(&self, account_id: &str, id: &str) -> Result<bool, StoreError>;

    // ----- devices ------------------------------------------------------------------------

    fn device_by_username(&self, username: &str) -> Result<Option<Device>, StoreError>;
    fn devices_for_user(&self, user_id: &str) -> Result<Vec<Device>, StoreError>;
    fn create_device(
        &self,
        user_id: &str,
        username: &str,
        password: &Secret,
        realm: &str,
    ) -> Result<Device, StoreError>;
    fn set_device_password(
        &self,
        username: &str,
        password: &Secret,
        realm: &str,
    ) -> Result<Device, StoreError>;
    fn delete_device(&self, username: &str) -> Result<bool, StoreError>;

    // ----- numbers ------------------------------------------------------------------------

    fn number(&self, number: &str) -> Result<Option<Number>, StoreError>;
    fn numbers_for_account(&self, account_id: &str) -> Result<Vec<Number>, StoreError>;
    fn create_number(&self, number: &Number) -> Result<(), StoreError>;
    fn update_number(&self, number: &Number) -> Result<(), StoreError>;
    fn delete_number(&self, account_id: &str, number: &str) -> Result<bool, StoreError>;

    // ----- trunks -------------------------------------------------------------------------

    fn trunk(&self, name: &str) -> Result<Option<Trunk>, StoreError>;
    fn trunks_for_account(&self, account_id: &str) -> Result<Vec<Trunk>, StoreError>;
    fn list_trunks(&self) -> Result<Vec<Trunk>, StoreError>;
    fn create_trunk(&self, trunk: &Trunk) -> Result<(), StoreError>;
    fn update_trunk(&self, trunk: &Trunk) -> Result<(), StoreError>;
    fn delete_trunk(&self, name: &str) -> Result<bool, StoreError>;

    // ----- registrations (RFC 3261 §10.3) -------------------------------------------------

    fn upsert_binding(&self, binding: &Binding) -> Result<(), StoreError>;
    /// [`upsert_binding`](Self::upsert_binding) for several bindings at once, in one
    /// transaction where the backend can (group commit): one result per binding, in order.
    /// A binding refused on its own (its device is gone) leaves the others written; a
    /// failure of the whole (a full disk) refuses them all. The default writes them one by
    /// one.
    fn upsert_bindings(&self, bindings: &[Binding]) -> Vec<Result<(), StoreError>> {
        bindings.iter().map(|b| self.upsert_binding(b)).collect()
    }
    fn remove_binding(&self, device_username: &str, contact: &str) -> Result<bool, StoreError>;
    fn remove_all_bindings(&self, device_username: &str) -> Result<usize, StoreError>;
    fn bindings_for_device(
        &self,
        device_username: &str,
        now: UnixSecs,
    ) -> Result<Vec<Binding>, StoreError>;
    fn bindings_for_user(&self, user_id: &str, now: UnixSecs) -> Result<Vec<Binding>, StoreError>;
    /// Default: written at once, like [`upsert_binding`](Self::upsert_binding).
    fn refresh_binding(&self, binding: &Binding) -> Result<(), StoreError> {
        self.upsert_binding(binding)
    }
    fn flush_refreshes(&self) -> Result<usize, StoreError> {
        Ok(0)
    }
    /// Whether [`refresh_binding`](Self::refresh_binding) only records the refresh in memory
    /// (a short lock, no disk): then any thread may call it.
    fn refreshes_in_memory(&self) -> bool {
        false
    }
    fn sweep_expired(&self, now: UnixSecs) -> Result<usize, StoreError>;
    fn count_bindings(&self, now: UnixSecs) -> Result<u64, StoreError>;

    // ----- calls and timelines ------------------------------------------------------------

    fn insert_call(&self, call: &CallRecord) -> Result<(), StoreError>;
    fn admit_call(
        &self,
        writes: &[CallWrite],
        limits: &AccountLimits,
        now_ms: UnixMs,
    ) -> Result<Admission, StoreError>;
    fn update_call(&self, call: &CallRecord) -> Result<(), StoreError>;
    fn get_call(&self, account_id: &str, id: &str) -> Result<Option<CallRecord>, StoreError>;
    fn call_by_request_id(
        &self,
        account_id: &str,
        request_id: &str,
    ) -> Result<Option<CallRecord>, StoreError>;
    fn list_calls(
        &self,
        filter: &CallFilter,
    ) -> Result<(Vec<CallRecord>, Option<String>), StoreError>;
    fn append_timeline(&self, call_id: &str, entry: &TimelineEntry) -> Result<(), StoreError>;
    fn timeline(&self, call_id: &str) -> Result<Vec<TimelineEntry>, StoreError>;

    // ----- callback outbox ----------------------------------------------------------------

    fn enqueue_callback(&self, entry: &OutboxEntry) -> Result<(), StoreError>;
    fn due_callbacks(&self, now: UnixMs, limit: u32) -> Result<Vec<OutboxEntry>, StoreError>;
    fn callback_due(&self, event_id: &str, now: UnixMs) -> Result<bool, StoreError>;
    fn mark_delivered(&self, event_id: &str, attempts: u32) -> Result<(), StoreError>;
    fn reschedule(
        &self,
        event_id: &str,
        attempts: u32,
        next_attempt_at_ms: UnixMs,
        last_error: &str,
    ) -> Result<(), StoreError>;
    fn abandon_callback(
        &self,
        event_id: &str,
        attempts: u32,
        last_error: &str,
    ) -> Result<(), StoreError>;
    fn callbacks_for_call(&self, call_id: &str) -> Result<Vec<OutboxEntry>, StoreError>;
    fn next_callback_seq(&self, call_id: &str) -> Result<i64, StoreError>;
    fn claim_callbacks(
        &self,
        by: &str,
        now: UnixMs,
        claim_until: UnixMs,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError>;

    // ----- the call event write path ------------------------------------------------------

    fn write_call_batch(&self, writes: &[CallWrite]) -> Result<(), StoreError>;
    #[allow(clippy::type_complexity)]
    fn write_call_batch_admitting(
        &self,
        admissions: &[AdmitRequest],
        writes: &[CallWrite],
    ) -> Result<Vec<Result<Admission, StoreError>>, StoreError>;
    fn unfinished_calls(&self) -> Result<Vec<CallRecord>, StoreError>;
    fn unfinished_calls_of(
        &self,
        node_id: &str,
        with_unowned: bool,
    ) -> Result<Vec<CallRecord>, StoreError>;
    fn acquire_node_lease(
        &self,
        lease: &NodeLease,
        now: UnixMs,
        stale_until: Option<UnixMs>,
    ) -> Result<(), StoreError>;
    fn renew_node_lease(&self, lease: &NodeLease) -> Result<bool, StoreError>;
    fn claim_lapsed_nodes(&self, by: &str, now: UnixMs) -> Result<Vec<NodeLease>, StoreError>;
    fn release_node_lease(&self, node_id: &str, instance: &str) -> Result<(), StoreError>;
    fn node_lease(&self, node_id: &str) -> Result<Option<NodeLease>, StoreError>;
    fn probe_write(&self, now: UnixMs) -> Result<(), StoreError>;

    // ----- idempotency keys ---------------------------------------------------------------

    fn put_idempotency(&self, record: &IdempotencyRecord) -> Result<bool, StoreError>;
    fn get_idempotency(
        &self,
        account_id: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
    fn purge_idempotency(&self, before_ms: UnixMs) -> Result<usize, StoreError>;
    fn complete_idempotency(&self, record: &IdempotencyRecord) -> Result<(), StoreError>;
    fn release_idempotency(&self, account_id: &str, key: &str) -> Result<bool, StoreError>;
}
