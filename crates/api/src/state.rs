//! The configuration of the API and the state its handlers, hooks and dispatcher share.

use std::net::SocketAddr;
use std::sync::Arc;

use b2bua::calls::CallControl;
use store::Store;

use crate::callbacks::CallbackPolicy;
use crate::events::EventHub;
use crate::metrics::Metrics;

/// How long an `Idempotency-Key` answer is replayed: 24 hours.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

/// Largest request body accepted (413 above).
pub const BODY_LIMIT: usize = 64 * 1024;

/// The API's settings, filled by the binary from `[api]`, `[calls]` and `[sip]`.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `api.listen`.
    pub listen: SocketAddr,
    /// `sip.domain`: the digest realm device passwords are hashed for.
    pub realm: String,
    /// Default ring time of the agent leg (`calls.agent_ring_secs`).
    pub agent_ring_secs: u32,
    /// Default ring time of the customer leg (`calls.customer_ring_secs`).
    pub customer_ring_secs: u32,
    /// Largest `ring_timeout` / `timeout` a request may ask for.
    pub max_ring_secs: u32,
    /// Agent confirm: how long the agent has to press `1` (`calls.confirm_secs`).
    pub confirm_secs: u64,
    /// This node (`[node] id`): the owner recorded with each call it places, and `server_id`
    /// in Click-2-Call answers.
    pub server_id: String,
    /// `[node] secret`, shared by the nodes: signs the requests one node forwards to another
    /// (see [`crate::forward`]). Without it nothing is forwarded.
    pub node_secret: Option<store::Secret>,
    /// Callback delivery policy.
    pub callbacks: CallbackPolicy,
    /// Caps on connections open at once, overall and per source.
    pub connections: sip_core::limits::ConnectionLimitsConfig,
    /// Header, body and idle time-outs of each connection.
    pub timeouts: crate::conn::HttpTimeouts,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            realm: "dialbridge.test".to_owned(),
            agent_ring_secs: 30,
            customer_ring_secs: 45,
            max_ring_secs: 300,
            confirm_secs: 10,
            server_id: "dialbridge-1".to_owned(),
            node_secret: None,
            callbacks: CallbackPolicy::default(),
            connections: sip_core::limits::ConnectionLimitsConfig::default(),
            timeouts: crate::conn::HttpTimeouts::default(),
        }
    }
}

/// What the handlers, the hooks and the dispatcher share (opaque outside this crate).
pub struct Shared {
    pub(crate) cfg: ApiConfig,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) calls: Arc<dyn CallControl>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) events: EventHub,
    /// Wakes the callback dispatcher when a callback is enqueued or delivered.
    pub(crate) dispatch: tokio::sync::Notify,
    /// Call events on their way to the store (see [`crate::journal`]).
    pub(crate) journal: Arc<crate::journal::Journal>,
    /// Whether the store takes writes, as last seen.
    pub(crate) store_health: crate::journal::StoreHealth,
    /// The client sessions of the browser side (see [`crate::client`]).
    pub(crate) client_sessions: crate::client::ClientSessions,
    /// The HTTP client of requests forwarded to other nodes.
    pub(crate) forward: reqwest::Client,
    /// Provisioning reads kept in memory for the request path (see [`Reads`]).
    pub(crate) reads: Reads,
}

/// How long provisioning read by the API is trusted at most: a change made through another
/// node sharing the database (a revoked API key, a number moved) is seen within it; one made
/// through this node is seen at once ([`store::Store::provisioning_generation`]).
pub const READS_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Entries each read cache keeps at most.
const READS_CAPACITY: usize = 10_000;

/// The provisioning an API request reads on every call: its account (by the SHA-256 of its
/// secret: the secret itself is not kept), the agent user, the account's numbers and
/// trunks.
pub(crate) struct Reads {
    accounts_by_secret: store::cache::ReadCache<[u8; 32], Option<store::Account>>,
    users: store::cache::ReadCache<String, Option<store::User>>,
    numbers: store::cache::ReadCache<String, Vec<store::Number>>,
    trunks: store::cache::ReadCache<String, Vec<store::Trunk>>,
}

impl Default for Reads {
    fn default() -> Reads {
        Reads {
            accounts_by_secret: store::cache::ReadCache::new(READS_TTL, READS_CAPACITY),
            users: store::cache::ReadCache::new(READS_TTL, READS_CAPACITY),
            numbers: store::cache::ReadCache::new(READS_TTL, READS_CAPACITY),
            trunks: store::cache::ReadCache::new(READS_TTL, READS_CAPACITY),
        }
    }
}

impl Shared {
    /// [`Store::account_by_api_secret`] through [`Reads`].
    pub(crate) async fn account_by_api_secret(
        &self,
        secret: &str,
    ) -> Result<Option<store::Account>, store::StoreError> {
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(secret.as_bytes()).into();
        let generation = self.store.provisioning_generation();
        store::cache::read_through(
            &self.reads.accounts_by_secret,
            key,
            generation,
            self.store.account_by_api_secret(secret),
        )
        .await
    }

    /// [`Store::user`] through [`Reads`].
    pub(crate) async fn user(&self, id: &str) -> Result<Option<store::User>, store::StoreError> {
        let generation = self.store.provisioning_generation();
        store::cache::read_through(
            &self.reads.users,
            id.to_owned(),
            generation,
            self.store.user(id),
        )
        .await
    }

    /// [`Store::trunks_for_account`] through [`Reads`].
    pub(crate) async fn trunks_for_account(
        &self,
        account_id: &str,
    ) -> Result<Vec<store::Trunk>, store::StoreError> {
        let generation = self.store.provisioning_generation();
        store::cache::read_through(
            &self.reads.trunks,
            account_id.to_owned(),
            generation,
            self.store.trunks_for_account(account_id),
        )
        .await
    }

    /// [`Store::numbers_for_account`] through [`Reads`].
    pub(crate) async fn numbers_for_account(
        &self,
        account_id: &str,
    ) -> Result<Vec<store::Number>, store::StoreError> {
        let generation = self.store.provisioning_generation();
        store::cache::read_through(
            &self.reads.numbers,
            account_id.to_owned(),
            generation,
            self.store.numbers_for_account(account_id),
        )
        .await
    }
}
