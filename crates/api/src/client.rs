//! The browser side's credentials (SPEC §9.3): client sessions and who a request acts for.
//!
//! A **client session** is made by an application's backend with its secret key
//! (`POST /v1/client_sessions {"user_id"}`) and handed to a browser as a short-lived
//! `client_secret` (`cs_…`). The browser sends it as `Authorization: Bearer cs_…` together
//! with one of the account's publishable keys (`Dialbridge-Publishable-Key: pk_…`). It may
//! place, watch and hang up the calls of that one user, and nothing else: every other route
//! refuses it (403 `client_secret_not_allowed`), and a call of another user is answered as
//! if it did not exist (404).
//!
//! Secrets are kept hashed (SHA-256 of the whole secret, which carries 256 random bits), in
//! this node's memory: a restart revokes every client secret, and the SDK then fetches a new
//! one from the application's backend. A secret stops working at its `expires_at`, when it
//! is revoked (`DELETE /v1/client_sessions/{id}`), and when its user is deleted.
//!
//! [`Caller`] is the extractor of the routes a client secret may use: it yields the account
//! and the [`Scope`] of the request, a secret key giving the whole account.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use rand::RngCore;
use sha2::{Digest, Sha256};
use store::Account;

use crate::error::ApiError;
use crate::http::BearerAccount;
use crate::state::Shared;

/// Prefix of client secrets.
pub const CLIENT_SECRET_PREFIX: &str = "cs_";
/// TypeID prefix of client sessions (their public id, used to revoke them).
pub const CLIENT_SESSION_PREFIX: &str = "clisess";
/// The header carrying the publishable key beside a client secret.
pub const PUBLISHABLE_KEY_HEADER: &str = "dialbridge-publishable-key";
/// Default lifetime of a client secret.
pub const DEFAULT_TTL_SECS: u32 = 900;
/// Shortest and longest lifetime a request may ask for.
pub const TTL_RANGE_SECS: std::ops::RangeInclusive<u32> = 60..=86_400;
/// Most client sessions kept at once; past it the oldest are dropped.
pub const MAX_SESSIONS: usize = 100_000;

/// The routes a client secret may use (as documented in the OpenAPI document).
pub const CLIENT_SECRET_ROUTES: &[&str] = &[
    "/v1/calls",
    "/v1/calls/{call_id}",
    "/v1/calls/{call_id}/hangup",
    "/v1/events",
];

/// What a request may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// A secret key: everything of the account.
    Account,
    /// A client secret: the calls of this user only.
    User(String),
}

impl Scope {
    /// Whether a call of `user_id` is within reach.
    pub fn reaches_user(&self, user_id: &str) -> bool {
        match self {
            Scope::Account => true,
            Scope::User(u) => u == user_id,
        }
    }

    /// The user a client secret is scoped to.
    pub fn user(&self) -> Option<&str> {
        match self {
            Scope::Account => None,
            Scope::User(u) => Some(u),
        }
    }
}

/// One client session, as kept (the secret itself is not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSession {
    /// `clisess_…`.
    pub id: String,
    pub account_id: String,
    pub user_id: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// Why a client secret was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionRefusal {
    #[error("client secret is not known (revoked, or issued before a restart)")]
    Unknown,
    #[error("client secret has expired")]
    Expired,
}

/// The client sessions of this node, by the hash of their secret.
#[derive(Debug, Default)]
pub struct ClientSessions {
    by_hash: Mutex<HashMap<[u8; 32], ClientSession>>,
}

fn secret_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl ClientSessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], ClientSession>> {
        self.by_hash.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a session for `user_id` of `account_id` living `ttl_secs` from `now_ms`;
    /// returns it with its secret (shown once, never kept).
    pub fn create(
        &self,
        account_id: &str,
        user_id: &str,
        now_ms: i64,
        ttl_secs: u32,
    ) -> (ClientSession, String) {
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let secret = format!("{CLIENT_SECRET_PREFIX}{}", hex::encode(raw));
        let session = ClientSession {
            id: store::TypeId::new(CLIENT_SESSION_PREFIX).to_string(),
            account_id: account_id.to_owned(),
            user_id: user_id.to_owned(),
            created_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(i64::from(ttl_secs) * 1000),
        };
        let mut map = self.map();
        map.retain(|_, s| s.expires_at_ms > now_ms);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.created_at_ms)
                .map(|(h, _)| *h)
            {
                map.remove(&oldest);
            }
        }
        map.insert(secret_hash(&secret), session.clone());
        (session, secret)
    }

    /// The session of `secret` if it is known and not expired at `now_ms`.
    pub fn lookup(&self, secret: &str, now_ms: i64) -> Result<ClientSession, SessionRefusal> {
        let hash = secret_hash(secret);
        let mut map = self.map();
        let session = map.get(&hash).ok_or(SessionRefusal::Unknown)?;
        if session.expires_at_ms <= now_ms {
            map.remove(&hash);
            return Err(SessionRefusal::Expired);
        }
        Ok(session.clone())
    }

    /// Revokes session `id` of `account_id`; false when there is none.
    pub fn revoke(&self, account_id: &str, id: &str) -> bool {
        let mut map = self.map();
        let before = map.len();
        map.retain(|_, s| !(s.id == id && s.account_id == account_id));
        map.len() != before
    }

    /// Revokes every session of a user (when the user is deleted); returns how many.
    pub fn revoke_user(&self, user_id: &str) -> usize {
        let mut map = self.map();
        let before = map.len();
        map.retain(|_, s| s.user_id != user_id);
        before - map.len()
    }

    /// Sessions of an account alive at `now_ms`, newest first.
    pub fn list(&self, account_id: &str, now_ms: i64) -> Vec<ClientSession> {
        let mut out: Vec<ClientSession> = self
            .map()
            .values()
            .filter(|s| s.account_id == account_id && s.expires_at_ms > now_ms)
            .cloned()
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.created_at_ms));
        out
    }
}

/// The account a request acts for, and how far it reaches: a secret key (with an optional
/// `Dialbridge-Account` of a connected account) or a client secret with its publishable key.
pub struct Caller {
    pub account: Account,
    pub scope: Scope,
}

fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// True when the request carries a client secret as its bearer token.
pub(crate) fn has_client_secret(parts: &Parts) -> bool {
    bearer_token(parts).is_some_and(|t| t.starts_with(CLIENT_SECRET_PREFIX))
}

/// The error of a route that a client secret may not use.
pub(crate) fn not_for_client_secrets() -> ApiError {
    ApiError::Forbidden {
        code: "client_secret_not_allowed",
        message: "A client secret may only place, watch and hang up its own user's calls",
    }
}

impl FromRequestParts<Arc<Shared>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Shared>,
    ) -> Result<Self, Self::Rejection> {
        // Already authenticated by the contract layer.
        match parts.extensions.get::<crate::contract::Authenticated>() {
            Some(crate::contract::Authenticated::Bearer(a)) => {
                return Ok(Caller {
                    account: a.clone(),
                    scope: Scope::Account,
                })
            }
            Some(crate::contract::Authenticated::Client(a, user)) => {
                return Ok(Caller {
                    account: a.clone(),
                    scope: Scope::User(user.clone()),
                })
            }
            _ => {}
        }
        let Some(secret) = bearer_token(parts).filter(|t| t.starts_with(CLIENT_SECRET_PREFIX))
        else {
            let BearerAccount(account) = BearerAccount::from_request_parts(parts, state).await?;
            return Ok(Caller {
                account,
                scope: Scope::Account,
            });
        };
        let session = state
            .client_sessions
            .lookup(secret, crate::time::now_ms())
            .map_err(|why| match why {
                SessionRefusal::Unknown => ApiError::ClientSecret {
                    code: "client_secret_invalid",
                    message: "Client secret is not valid",
                },
                SessionRefusal::Expired => ApiError::ClientSecret {
                    code: "client_secret_expired",
                    message: "Client secret has expired",
                },
            })?;
        let pk = parts
            .headers
            .get(PUBLISHABLE_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or("");
        let pk_account = if pk.is_empty() {
            None
        } else {
            state.store.account_by_publishable_key(pk).await?
        };
        let Some(account) = pk_account.filter(|a| a.id == session.account_id) else {
            return Err(ApiError::ClientSecret {
                code: "publishable_key_invalid",
                message: "A client secret must come with a publishable key of its account (Dialbridge-Publishable-Key)",
            });
        };
        // The user may have been deleted since: the session dies with it.
        match state.store.user(&session.user_id).await? {
            Some(u) if u.account_id == account.id => {}
            _ => {
                state.client_sessions.revoke_user(&session.user_id);
                return Err(ApiError::ClientSecret {
                    code: "client_secret_invalid",
                    message: "Client secret is not valid",
                });
            }
        }
        Ok(Caller {
            account,
            scope: Scope::User(session.user_id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_works_until_it_expires_and_is_kept_hashed() {
        let s = ClientSessions::default();
        let (sess, secret) = s.create("acct_a", "user_a", 1_000, 60);
        assert!(secret.starts_with("cs_") && secret.len() == 3 + 64);
        assert_eq!(sess.expires_at_ms, 61_000);
        assert_eq!(
            s.lookup(&secret, 60_999).map(|x| x.user_id),
            Ok("user_a".into())
        );
        assert_eq!(s.lookup(&secret, 61_000), Err(SessionRefusal::Expired));
        // Expired sessions are forgotten.
        assert_eq!(s.lookup(&secret, 1_000), Err(SessionRefusal::Unknown));
        // Nothing kept holds the secret's text.
        assert!(!format!("{:?}", s.by_hash).contains(&secret[3..]));
    }

    #[test]
    fn revocation_is_per_account_and_per_user() {
        let s = ClientSessions::default();
        let (a, sa) = s.create("acct_a", "user_a", 0, 600);
        let (_, sb) = s.create("acct_a", "user_b", 0, 600);
        assert!(
            !s.revoke("acct_other", &a.id),
            "another account cannot revoke it"
        );
        assert!(s.lookup(&sa, 1).is_ok());
        assert!(s.revoke("acct_a", &a.id));
        assert_eq!(s.lookup(&sa, 1), Err(SessionRefusal::Unknown));
        assert_eq!(s.revoke_user("user_b"), 1);
        assert_eq!(s.lookup(&sb, 1), Err(SessionRefusal::Unknown));
        assert_eq!(s.lookup("cs_nonsense", 1), Err(SessionRefusal::Unknown));
    }

    #[test]
    fn scope_reaches_only_its_user() {
        assert!(Scope::Account.reaches_user("user_x"));
        assert!(Scope::User("user_a".into()).reaches_user("user_a"));
        assert!(!Scope::User("user_a".into()).reaches_user("user_b"));
    }
}
