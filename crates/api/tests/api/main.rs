//! HTTP tests against the real server (see `support`).

mod admin;
mod browser;
mod callbacks;
mod calls;
mod cluster;
mod compat;
mod connections;
mod events;
mod limits;
mod meta;
mod support;
