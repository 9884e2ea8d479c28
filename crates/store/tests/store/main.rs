//! Tests of the SQLite store against real database files in a temporary directory.

mod bindings;
mod calls;
mod crud;
mod idempotency;
mod limits;
mod migrations;
mod outbox;
mod provisioning;
mod secrets;
mod support;
