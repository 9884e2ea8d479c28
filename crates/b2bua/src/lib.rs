//! b2bua: the SIP application of dialbridge — the registrar and the click-to-call engine
//! (agent leg -> customer leg -> bridge) on top of sip-core's endpoint.
//!
//! Layout:
//! - [`server`]: the dispatcher. Every request the endpoint takes in goes through the same
//!   checks (RFC 3261 §8.2: Require, URI scheme, Max-Forwards, Content-Type) and then to the
//!   part that owns it: the registrar for REGISTER, a call for in-dialog requests, the
//!   inbound path (`calls::inbound`) for an INVITE from a trunk; what no part owns gets the
//!   answer a well-mannered UAS gives (403 for an INVITE from no trunk, 404, 481, 405, 501).
//!
//! - [`calls`]: the call engine and its interface ([`calls::CallControl`], [`calls::CallHooks`]);
//!   each call is a sans-IO state machine driven by a thin task. A call's first leg may be
//!   an INVITE we received (inbound calls); agent confirm and recording ride on the relay's
//!   prompts, DTMF reports and recorder; [`calls::recordings`] keeps the retention.
//! - [`capabilities`]: the Allow / Supported / Accept this server states.
//! - [`registrar`]: REGISTER with digest auth, bindings in the store (and, for a store of
//!   this node alone, in memory: `binding_view`), brute-force guard.
//! - [`dialplan`]: dial strings (E.164, national, international prefix, extensions, emergency)
//!   and what an account may dial (countries, number types, prefixes).
//! - [`numbering`]: validity, region and type of a number from libphonenumber's metadata.
//! - [`trunks`]: where a customer leg goes — RFC 3263 resolution of trunk addresses, the
//!   failover order, health checks and per-trunk limits.
//!
//! This crate does no socket I/O of its own (sip-core's endpoint and the media crate do;
//! hickory-resolver makes the DNS queries of [`trunks::resolve`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod binding_view;
pub mod calls;
pub mod capabilities;
pub mod dialplan;
pub mod numbering;
pub mod registrar;
pub mod server;
pub mod trunks;
