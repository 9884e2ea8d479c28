//! Status callbacks (webhooks): the outbox dispatcher, signatures, retry policy and the
//! callback URL guard.
//!
//! ```text
//!   call hook ──enqueue──▶ store outbox (pending, seq 1, 2, 3 … per call)
//!                                  │ claim_callbacks(node, now, lease): per call only the
//!                                  │ lowest pending seq, not held by another node's claim
//!                                  ▼
//!                        dispatcher ──POST (signed)──▶ receiver
//!                          │  2xx            → mark_delivered
//!                          │  error/time-out → reschedule(now + backoff(attempt) ± jitter)
//!                          │  attempt cap    → abandon_callback (the call's next one goes)
//!                          └─ every attempt  → timeline entry `callback`
//! ```
//!
//! The outbox lives in the store, so callbacks pending at a crash go out after the restart.
//! Nodes sharing one database claim callbacks before sending them (a lease of
//! [`CallbackPolicy::claim_lease`]): one node sends a given callback at a time, a call's next
//! callback is not claimed while an earlier one is pending, and the claim of a node that
//! died lapses and is taken over. A receiver may still see one twice when a node dies
//! between the receiver's 2xx and `mark_delivered` (or its store writes fail for longer
//! than the lease), and de-duplicates by `event_id`. Hooks only write to the store and wake the dispatcher:
//! a slow receiver never holds up a call.
//!
//! Signature: `Dialbridge-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t + "." +
//! body)>`, the scheme receivers of Stripe-style webhooks already know.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use store::{OutboxEntry, TimelineEntry};

use crate::state::Shared;
use crate::time::now_ms;

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Dialbridge-Signature";
/// Header carrying the event id (also in the body).
pub const EVENT_ID_HEADER: &str = "Dialbridge-Event-Id";

/// How callbacks are delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct CallbackPolicy {
    /// Time-out of one delivery attempt (connect + response).
    pub timeout: Duration,
    /// Delay after the first failed attempt; doubled after each further failure.
    pub base_delay: Duration,
    /// Upper bound of the delay between attempts.
    pub max_delay: Duration,
    /// Attempts before a callback is abandoned.
    pub max_attempts: u32,
    /// How often the outbox is polled when nothing wakes the dispatcher.
    pub poll_interval: Duration,
    /// Deliveries in flight at once (to different calls).
    pub concurrency: usize,
    /// How long a node holds a callback it claimed for delivery: an attempt (at most
    /// `timeout`) and the write of its result fit in it many times over. The claim of a node
    /// that died is taken over by another node after it.
    pub claim_lease: Duration,
}

impl Default for CallbackPolicy {
    fn default() -> Self {
        CallbackPolicy {
            timeout: Duration::from_secs(5),
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(600),
            max_attempts: 12,
            poll_interval: Duration::from_millis(500),
            concurrency: 32,
            claim_lease: Duration::from_secs(15),
        }
    }
}

impl CallbackPolicy {
    /// Delay before attempt `failed + 1` after `failed` failures: `base * 2^(failed-1)`,
    /// capped at `max_delay`, then scaled by `jitter` (expected in `0.8..=1.2`).
    pub fn backoff(&self, failed: u32, jitter: f64) -> Duration {
        let exp = failed.saturating_sub(1).min(30);
        let raw = self.base_delay.saturating_mul(1u32 << exp);
        let capped = raw.min(self.max_delay);
        capped.mul_f64(jitter.clamp(0.5, 1.5))
    }
}

/// The `Dialbridge-Signature` value for `body` sent at Unix time `t`.
pub fn signature_header(secret: &str, t: i64, body: &str) -> String {
    format!("t={t},v1={}", sign(secret, t, body))
}

/// Hex HMAC-SHA256 of `"{t}.{body}"` keyed with `secret`.
pub fn sign(secret: &str, t: i64, body: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm is unreachable in practice.
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Why a callback URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("callback_url is not a valid URL")]
    Invalid,
    #[error("callback_url must use http or https")]
    Scheme,
    #[error("callback_url must not carry credentials")]
    Credentials,
    #[error("callback_url host cannot be resolved")]
    Unresolvable,
    #[error("callback_url resolves to a forbidden address (link-local, metadata, unspecified or broadcast)")]
    Forbidden,
}

/// True for addresses a callback must never reach: link-local (169.254.0.0/16 with the
/// cloud metadata address 169.254.169.254, fe80::/10), unspecified, broadcast and multicast,
/// and their IPv4-mapped IPv6 forms. Loopback and private ranges are allowed.
pub fn forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let seg0 = v6.segments()[0];
            v6 == Ipv6Addr::UNSPECIFIED
                || (seg0 & 0xffc0) == 0xfe80
                || v6.is_multicast()
                // fd00:ec2::254, the IPv6 metadata address of one large cloud.
                || v6 == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)
        }
    }
}

fn forbidden_v4(v4: Ipv4Addr) -> bool {
    v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.octets()[0] == 0
}

/// Checks a callback URL: http(s), no credentials, and every address its host resolves to
/// allowed by [`forbidden_ip`].
pub async fn check_callback_url(raw: &str) -> Result<reqwest::Url, UrlError> {
    let url = reqwest::Url::parse(raw).map_err(|_| UrlError::Invalid)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlError::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    let port = url.port_or_known_default().ok_or(UrlError::Invalid)?;
    let host = url.host_str().ok_or(UrlError::Invalid)?;
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<IpAddr> = match literal.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| UrlError::Unresolvable)?
            .map(|sa| sa.ip())
            .collect(),
    };
    if addrs.is_empty() {
        return Err(UrlError::Unresolvable);
    }
    if addrs.into_iter().any(forbidden_ip) {
        return Err(UrlError::Forbidden);
    }
    Ok(url)
}

/// The dispatcher loop: polls the outbox, delivers due callbacks, forever.
pub(crate) async fn run_dispatcher(shared: Arc<Shared>) {
    let policy = shared.cfg.callbacks.clone();
    let client = match reqwest::Client::builder()
        .timeout(policy.timeout)
        .connect_timeout(policy.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("dialbridge/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the callback HTTP client");
            return;
        }
    };
    let inflight: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(HashSet::new()));
    let slots = Arc::new(tokio::sync::Semaphore::new(policy.concurrency.max(1)));
    let mut last_purge = 0i64;
    // Deliveries belong to the dispatcher: aborting it drops the set and aborts them, and
    // their callbacks stay pending in the outbox.
    let mut deliveries = tokio::task::JoinSet::new();
    loop {
        while deliveries.try_join_next().is_some() {}
        let now = now_ms();
        if now - last_purge > 60_000 {
            last_purge = now;
            if let Err(e) = shared
                .store
                .purge_idempotency(now - crate::state::IDEMPOTENCY_TTL_MS)
                .await
            {
                tracing::warn!(error = %e, "idempotency purge failed");
            }
        }
        // Claim only what can start now: a claimed callback waiting for a slot would hold
        // its lease for nothing.
        let limit = slots.available_permits() as u32;
        let claimed = if limit == 0 {
            Ok(Vec::new())
        } else {
            shared
                .store
                .claim_callbacks(
                    &shared.cfg.server_id,
                    now,
                    now + policy.claim_lease.as_millis() as i64,
                    limit,
                )
                .await
        };
        match claimed {
            Ok(due) => {
                for entry in due {
                    {
                        // A delivery of ours still running whose claim lapsed (the store
                        // refused its result for that long) is not started twice here.
                        let mut set = inflight.lock().unwrap_or_else(|p| p.into_inner());
                        if !set.insert(entry.event_id.clone()) {
                            continue;
                        }
                    }
                    let Ok(permit) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    let shared = shared.clone();
                    let client = client.clone();
                    let inflight = inflight.clone();
                    deliveries.spawn(async move {
                        let id = entry.event_id.clone();
                        deliver(&shared, &client, entry).await;
                        inflight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&id);
                        drop(permit);
                        shared.dispatch.notify_one();
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the callback outbox failed"),
        }
        tokio::select! {
            _ = shared.dispatch.notified() => {}
            _ = tokio::time::sleep(policy.poll_interval) => {}
        }
    }
}

enum Attempt {
    Delivered(u16),
    Failed {
        http_status: Option<u16>,
        error: String,
    },
    Refused(String),
}

async fn attempt(shared: &Shared, client: &reqwest::Client, entry: &OutboxEntry) -> Attempt {
    let secret = match shared.store.account(&entry.account_id).await {
        Ok(Some(a)) => a.webhook_secret,
        Ok(None) => return Attempt::Refused("account no longer exists".into()),
        Err(e) => {
            return Attempt::Failed {
                http_status: None,
                error: format!("store: {e}"),
            }
        }
    };
    // Checked again at delivery: the name may resolve elsewhere now.
    let url = match check_callback_url(&entry.url).await {
        Ok(u) => u,
        Err(e @ UrlError::Unresolvable) => {
            return Attempt::Failed {
                http_status: None,
                error: e.to_string(),
            }
        }
        Err(e) => return Attempt::Refused(e.to_string()),
    };
    let t = now_ms() / 1000;
    let sig = signature_header(secret.expose(), t, &entry.body);
    let res = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, sig)
        .header(EVENT_ID_HEADER, entry.event_id.as_str())
        .body(entry.body.clone())
        .send()
        .await;
    match res {
        Ok(resp) if resp.status().is_success() => Attempt::Delivered(resp.status().as_u16()),
        Ok(resp) => Attempt::Failed {
            http_status: Some(resp.status().as_u16()),
            error: format!("HTTP {}", resp.status().as_u16()),
        },
        Err(e) => Attempt::Failed {
            http_status: None,
            // reqwest's message names the URL; keep only the kind of failure.
            error: if e.is_timeout() {
                "timed out".to_owned()
            } else if e.is_connect() {
                "connection failed".to_owned()
            } else {
                "request failed".to_owned()
            },
        },
    }
}

async fn deliver(shared: &Shared, client: &reqwest::Client, entry: OutboxEntry) {
    let n = entry.attempts + 1;
    let result = attempt(shared, client, &entry).await;
    let store = &shared.store;
    let policy = &shared.cfg.callbacks;
    let status = serde_json::from_str::<serde_json::Value>(&entry.body)
        .ok()
        .and_then(|v| v.get("status").cloned())
        .unwrap_or(serde_json::Value::Null);
    let mut detail = serde_json::json!({
        "event_id": entry.event_id,
        "sequence": entry.seq,
        "status": status,
        "attempt": n,
    });
    // What the attempt writes to the outbox. A delivered callback whose row cannot be
    // marked would be sent again: while the store refuses writes, the write is tried again
    // (the entry stays in flight meanwhile, so it is not re-sent, and its call's next
    // callback waits behind it).
    #[derive(Clone, Copy)]
    enum Write<'a> {
        Delivered,
        Reschedule(i64, &'a str),
        Abandon(&'a str),
    }
    let op = match &result {
        Attempt::Delivered(code) => {
            detail["result"] = "delivered".into();
            detail["http_status"] = (*code).into();
            Write::Delivered
        }
        Attempt::Failed { http_status, error } if n < policy.max_attempts => {
            let jitter = 0.8 + rand::random::<f64>() * 0.4;
            let delay = policy.backoff(n, jitter);
            let next = now_ms() + delay.as_millis() as i64;
            detail["result"] = "retry".into();
            detail["error"] = error.as_str().into();
            detail["http_status"] = (*http_status).into();
            detail["next_attempt_at"] = crate::time::rfc3339_ms(next).into();
            Write::Reschedule(next, error)
        }
        Attempt::Failed { http_status, error } => {
            detail["result"] = "abandoned".into();
            detail["error"] = error.as_str().into();
            detail["http_status"] = (*http_status).into();
            Write::Abandon(error)
        }
        Attempt::Refused(error) => {
            detail["result"] = "abandoned".into();
            detail["error"] = error.as_str().into();
            Write::Abandon(error)
        }
    };
    let write = || async {
        match op {
            Write::Delivered => store.mark_delivered(&entry.event_id, n).await,
            Write::Reschedule(next, error) => {
                store.reschedule(&entry.event_id, n, next, error).await
            }
            Write::Abandon(error) => store.abandon_callback(&entry.event_id, n, error).await,
        }
    };
    let mut outcome = write().await;
    let mut backoff = std::time::Duration::from_millis(50);
    while let Err(e) = &outcome {
        if !e.is_unavailable() {
            break;
        }
        shared.store_health.failed(&e.to_string());
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
        outcome = write().await;
    }
    match &result {
        Attempt::Delivered(_) => shared.metrics.callback_delivered(),
        Attempt::Failed { .. } if n < policy.max_attempts => shared.metrics.callback_retried(),
        _ => shared.metrics.callback_abandoned(),
    }
    tracing::info!(
        call_id = %entry.call_id,
        event_id = %entry.event_id,
        seq = entry.seq,
        attempt = n,
        result = %detail["result"],
        "callback attempt"
    );
    if let Err(e) = outcome {
        tracing::warn!(error = %e, event_id = %entry.event_id, "updating the outbox failed");
    }
    let tl = TimelineEntry {
        at_ms: now_ms(),
        kind: "callback".to_owned(),
        leg: None,
        detail: detail.into(),
    };
    if let Err(e) = store.append_timeline(&entry.call_id, &tl).await {
        tracing::warn!(error = %e, call_id = %entry.call_id, "timeline append failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // HMAC-SHA256("whsec_test_1", "1700000000.{}") computed independently.
        let sig = sign("whsec_test_1", 1_700_000_000, "{}");
        assert_eq!(sig.len(), 64);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_test_1").unwrap();
        mac.update(b"1700000000.{}");
        assert_eq!(sig, hex::encode(mac.finalize().into_bytes()));
        assert_eq!(
            signature_header("k", 5, "b"),
            format!("t=5,v1={}", sign("k", 5, "b"))
        );
        assert_ne!(sign("k", 5, "b"), sign("k", 6, "b"));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = CallbackPolicy {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            ..CallbackPolicy::default()
        };
        assert_eq!(p.backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(p.backoff(2, 1.0), Duration::from_secs(2));
        assert_eq!(p.backoff(5, 1.0), Duration::from_secs(16));
        assert_eq!(p.backoff(7, 1.0), Duration::from_secs(60));
        assert_eq!(p.backoff(40, 1.0), Duration::from_secs(60));
        assert_eq!(p.backoff(2, 0.8), Duration::from_millis(1600));
    }

    #[test]
    fn forbidden_addresses() {
        for ip in [
            "169.254.169.254",
            "169.254.1.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "fe80::1",
            "::",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
        ] {
            assert!(forbidden_ip(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "::1",
            "10.0.0.1",
            "93.184.216.34",
            "2001:db8::1",
        ] {
            assert!(!forbidden_ip(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn url_guard() {
        assert!(check_callback_url("http://127.0.0.1:9/x").await.is_ok());
        assert!(check_callback_url("http://[::1]:9/x").await.is_ok());
        assert_eq!(
            check_callback_url("http://169.254.169.254/latest/meta-data").await,
            Err(UrlError::Forbidden)
        );
        assert_eq!(
            check_callback_url("http://[fe80::1]/").await,
            Err(UrlError::Forbidden)
        );
        assert_eq!(
            check_callback_url("ftp://127.0.0.1/").await,
            Err(UrlError::Scheme)
        );
        assert_eq!(
            check_callback_url("not a url").await,
            Err(UrlError::Invalid)
        );
        assert_eq!(
            check_callback_url("http://u:p@127.0.0.1/").await,
            Err(UrlError::Credentials)
        );
        // `localhost` resolves through the system resolver to loopback.
        assert!(check_callback_url("http://localhost:9/").await.is_ok());
    }
}
