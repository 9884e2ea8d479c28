//! Tests of the store against real databases: SQLite files in a temporary directory and a
//! real PostgreSQL server (see [`pg`]). The tests of the store's behaviour run on both
//! backends (`both!`: a module per test with `sqlite` and `postgres` cases); those of a
//! backend's own matters (files, migrations of SQLite's schema, the in-memory refresh of
//! bindings) run on SQLite only.

/// Runs each named `async fn` once on SQLite and once on PostgreSQL.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    crate::support::on(crate::support::Backend::Sqlite, super::$name()).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    crate::support::on(crate::support::Backend::Postgres, super::$name()).await
                }
            }
        )*
    };
}

mod bindings;
mod calls;
mod crud;
mod idempotency;
mod limits;
mod migrations;
mod nodes;
mod outbox;
// Shared with the black-box tests, which use more of it (stopping and starting a server).
#[allow(dead_code)]
#[path = "../../../../sip-tests/src/pg.rs"]
mod pg;
mod postgres;
mod provisioning;
mod secrets;
mod support;
