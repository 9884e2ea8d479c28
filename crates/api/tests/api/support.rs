//! Test harness: a real SQLite store file provisioned with two accounts, the real axum server
//! on 127.0.0.1:0, a fake call engine that records specs and drives calls through the API's
//! hooks, a scriptable callback receiver, and a log capture for the secret scan.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use api::{Api, ApiConfig, CallbackPolicy, Metrics};
use b2bua::calls::{
    CallControl, CallEvent, CallEventKind, CallHooks, CallSpec, HangupError, Leg, Outcome,
    StartError,
};
use store::{CallStatus, Provisioning, SqliteStore, Store, StoreThreads};
use tokio::task::JoinHandle;

pub const ACME: &str = "acct_01h2xcejqtf2nbrexx3vqjhp41";
pub const ALICE: &str = "user_01h2xcejqtf2nbrexx3vqjhp42";
#[allow(dead_code)]
pub const GLOBEX: &str = "acct_01h2xcejqtf2nbrexx3vqjhp51";
pub const BOB: &str = "user_01h2xcejqtf2nbrexx3vqjhp52";
pub const ACME_SECRET: &str = "sk_test_1";
pub const GLOBEX_SECRET: &str = "sk_test_2";
pub const ACME_WEBHOOK: &str = "whsec_test_1";
pub const DEVICE_PASSWORD: &str = "s3cret-desk";
pub const REALM: &str = "dialbridge.test";

pub const PROVISIONING: &str = r#"
[[accounts]]
id = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Acme"
region = "US"
api_keys = [{ key = "ak_test_1", secret = "sk_test_1" }]
webhook_secret = "whsec_test_1"
allowed_prefixes = ["+1"]
calls_per_second = 1000
burst = 1000
max_concurrent = 1000

[[accounts]]
id = "acct_01h2xcejqtf2nbrexx3vqjhp51"
name = "Globex"
region = "GB"
api_keys = [{ key = "ak_test_2", secret = "sk_test_2" }]
webhook_secret = "whsec_test_2"
allowed_prefixes = ["+44"]
calls_per_second = 1000
burst = 1000
max_concurrent = 1000

[[users]]
id = "user_01h2xcejqtf2nbrexx3vqjhp42"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Alice Agent"
extension = "1001"
agent_id = 42
devices = [{ username = "alice-desk", password = "s3cret-desk" },
           { username = "alice-soft", password = "s3cret-soft" }]

[[users]]
id = "user_01h2xcejqtf2nbrexx3vqjhp52"
account = "acct_01h2xcejqtf2nbrexx3vqjhp51"
name = "Bob"
extension = "2001"
agent_id = 7

[[trunks]]
name = "carrier"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
address = "127.0.0.1:5080"
username = "acme"
password = "trunk-pass"

[[trunks]]
name = "shared"
address = "127.0.0.1:5090"

[[trunks]]
name = "globex-sos"
account = "acct_01h2xcejqtf2nbrexx3vqjhp51"
address = "127.0.0.1:5092"
emergency = true

[[numbers]]
number = "+14155551234"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
owner = "user_01h2xcejqtf2nbrexx3vqjhp42"

[[numbers]]
number = "+14155559999"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"

[[numbers]]
number = "+442071838750"
account = "acct_01h2xcejqtf2nbrexx3vqjhp51"
owner = "user_01h2xcejqtf2nbrexx3vqjhp52"
"#;

// ----- log capture ----------------------------------------------------------------------------

static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every log line of the test binary (TRACE and up, with span fields).
pub fn init_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .finish();
        let _ = tracing::subscriber::set_global_default(sub);
    });
}

/// Everything logged so far.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

// ----- temp dir ----------------------------------------------------------------------------

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dialbridge-api-test-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            api::time::now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn db(&self) -> PathBuf {
        self.0.join("dialbridge.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ----- fake call engine --------------------------------------------------------------------

/// Records the specs it is given; calls end only when the test says so (or on hang-up).
#[derive(Default)]
pub struct FakeCalls {
    pub specs: Mutex<Vec<CallSpec>>,
    active: Mutex<HashSet<(String, String)>>,
    hooks: OnceLock<Arc<dyn CallHooks>>,
    /// The API's journal: each event is waited for until it is in the store, as a test
    /// reads the store right after.
    journal: OnceLock<Arc<api::journal::Journal>>,
    pub full: AtomicBool,
}

impl FakeCalls {
    pub fn set_hooks(&self, h: Arc<dyn CallHooks>) {
        let _ = self.hooks.set(h);
    }

    pub fn set_journal(&self, j: Arc<api::journal::Journal>) {
        let _ = self.journal.set(j);
    }

    pub fn spec(&self, call_id: &str) -> CallSpec {
        self.specs
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.call_id == call_id)
            .cloned()
            .unwrap()
    }

    pub fn count(&self) -> usize {
        self.specs.lock().unwrap().len()
    }

    /// Reports an event of a call through the API's hooks, as the engine would.
    pub fn emit(&self, call_id: &str, kind: CallEventKind) {
        let account_id = self.spec(call_id).account_id;
        if matches!(kind, CallEventKind::Ended { .. }) {
            self.active.lock().unwrap().retain(|(c, _)| c != call_id);
        }
        let ev = CallEvent {
            call_id: call_id.to_owned(),
            account_id,
            at_ms: api::time::now_ms(),
            kind,
        };
        self.hooks.get().unwrap().on_event(ev);
        if let Some(j) = self.journal.get() {
            assert!(
                j.flush(Duration::from_secs(10)),
                "the journal did not write the event"
            );
        }
    }

    /// Ringing, answered, bridged, then a BYE from the customer after `secs`.
    pub fn complete(&self, call_id: &str) {
        self.emit(
            call_id,
            CallEventKind::Sip {
                leg: Leg::Agent,
                direction: "sent",
                summary: "INVITE sip:alice-desk@127.0.0.1:5062".into(),
                sip_call_id: "a1@dialbridge".into(),
            },
        );
        self.emit(
            call_id,
            CallEventKind::Ringing {
                leg: Leg::Agent,
                sip_code: 180,
            },
        );
        self.emit(call_id, CallEventKind::AgentAnswered { sip_code: 200 });
        self.emit(call_id, CallEventKind::InProgress { sip_code: 200 });
        self.emit(
            call_id,
            ended(CallStatus::Completed, Some(Leg::Customer), None, 7),
        );
    }
}

pub fn ended(
    status: CallStatus,
    leg: Option<Leg>,
    sip_code: Option<u16>,
    secs: u64,
) -> CallEventKind {
    CallEventKind::Ended {
        outcome: Outcome {
            status,
            leg,
            sip_code,
            q850_cause: None,
            duration_secs: secs,
            reason: format!("test {status}"),
        },
        stats: serde_json::json!({"agent": {"packets": 100}, "customer": {"packets": 99}}),
    }
}

impl CallControl for FakeCalls {
    fn start_call(&self, spec: CallSpec) -> Result<(), StartError> {
        if self.full.load(Ordering::Relaxed) {
            return Err(StartError::AtCapacity(0));
        }
        self.active
            .lock()
            .unwrap()
            .insert((spec.call_id.clone(), spec.account_id.clone()));
        self.specs.lock().unwrap().push(spec);
        Ok(())
    }

    fn hangup(&self, call_id: &str) -> Result<(), HangupError> {
        let known = self
            .active
            .lock()
            .unwrap()
            .iter()
            .any(|(c, _)| c == call_id);
        if !known {
            return Err(HangupError::NotActive);
        }
        self.emit(call_id, ended(CallStatus::Canceled, None, None, 0));
        Ok(())
    }

    fn active_calls(&self) -> usize {
        self.active.lock().unwrap().len()
    }
}

// ----- server ------------------------------------------------------------------------------

pub fn test_config() -> ApiConfig {
    ApiConfig {
        realm: REALM.to_owned(),
        server_id: "test-node".to_owned(),
        callbacks: CallbackPolicy {
            timeout: Duration::from_millis(400),
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
            max_attempts: 8,
            poll_interval: Duration::from_millis(50),
            concurrency: 8,
            claim_lease: Duration::from_secs(2),
        },
        ..ApiConfig::default()
    }
}

pub struct Server {
    pub base: String,
    pub store: Arc<dyn Store>,
    pub calls: Arc<FakeCalls>,
    pub metrics: Arc<Metrics>,
    pub http: reqwest::Client,
    pub dispatcher: Option<JoinHandle<()>>,
    journal: Option<api::JournalWriter>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// Keeps the store file alive as long as the server.
    #[allow(dead_code)]
    pub dir: Arc<TempDir>,
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(test_config(), Arc::new(TempDir::new()), true).await
    }

    pub async fn start_with(cfg: ApiConfig, dir: Arc<TempDir>, dispatcher: bool) -> Server {
        Self::start_provisioned(cfg, dir, dispatcher, PROVISIONING).await
    }

    /// Starts on a store provisioned with `provisioning` (TOML tables) instead of
    /// [`PROVISIONING`].
    pub async fn start_provisioned(
        cfg: ApiConfig,
        dir: Arc<TempDir>,
        dispatcher: bool,
        provisioning: &str,
    ) -> Server {
        Self::start_on(cfg, dir, dispatcher, provisioning, false).await
    }

    /// Starts for a test on tokio's paused clock: the store runs inline, since a wait for a
    /// store thread would let the clock jump to the next timer.
    pub async fn start_paused(cfg: ApiConfig) -> Server {
        Self::start_on(cfg, Arc::new(TempDir::new()), false, PROVISIONING, true).await
    }

    async fn start_on(
        cfg: ApiConfig,
        dir: Arc<TempDir>,
        dispatcher: bool,
        provisioning: &str,
        inline: bool,
    ) -> Server {
        init_logs();
        let sqlite = SqliteStore::open(dir.db().to_str().unwrap()).unwrap();
        let store: Arc<dyn Store> = if inline {
            Arc::new(StoreThreads::inline(sqlite))
        } else {
            Arc::new(StoreThreads::new(sqlite, 2).unwrap())
        };
        let prov: Provisioning = toml::from_str(provisioning).unwrap();
        store.apply_provisioning(&prov, REALM).await.unwrap();
        let calls = Arc::new(FakeCalls::default());
        let metrics = Arc::new(Metrics::new());
        let api = Api::new(cfg, store.clone(), calls.clone(), metrics.clone());
        api.recover_interrupted().await.unwrap();
        let journal = Some(api.start_journal().unwrap());
        calls.set_hooks(api.hooks());
        calls.set_journal(api.journal());
        let dispatcher = dispatcher.then(|| api.spawn_dispatcher());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(api.serve(listener, async move {
            let _ = rx.await;
        }));
        Server {
            base: format!("http://{addr}"),
            store,
            calls,
            metrics,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            dispatcher,
            journal,
            shutdown: Some(tx),
            task: Some(task),
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn stop(mut self) {
        if let Some(j) = self.journal.take() {
            let _ = tokio::task::spawn_blocking(move || j.stop()).await;
        }
        if let Some(d) = self.dispatcher.take() {
            d.abort();
            let _ = d.await;
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// POST /v1/calls with the Acme secret.
    pub async fn create_call(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(self.url("/v1/calls"))
            .bearer_auth(ACME_SECRET)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    pub async fn get(&self, path: &str, secret: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(secret)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }
}

/// Polls `f` every 20 ms for at most 10 s.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut f: F) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// [`eventually`] for a condition that needs to wait (on the store, say).
pub async fn eventually_async<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Asserts an error answer: status, code and message.
pub fn assert_error(got: &(u16, serde_json::Value), status: u16, code: &str, message: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert_eq!(got.1["error"]["message"], message, "{}", got.1);
}
