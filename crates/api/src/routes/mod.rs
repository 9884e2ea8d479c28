//! The HTTP handlers, by area.

pub mod admin;
pub mod calls;
pub mod client_sessions;
pub mod compat;
pub mod console;
pub mod live;
pub mod lookup;
pub mod meta;
pub mod publishable_keys;
