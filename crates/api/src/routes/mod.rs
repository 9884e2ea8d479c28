//! The HTTP handlers, by area.

pub mod admin;
pub mod calls;
pub mod compat;
pub mod lookup;
pub mod meta;
