//! sip-core: SIP messages (own zero-copy parser), transports, transactions, dialogs, digest auth.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
pub mod deadline;
pub mod dialog;
pub mod endpoint;
pub mod limits;
pub mod map;
pub mod message;
pub mod observe;
pub mod sdp;
pub mod stateless;
pub mod tls;
pub mod transaction;
pub mod transport;
