//! What this server says of itself in SIP: the methods, extensions and bodies it takes.

/// Methods this server implements (the `Allow` header).
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, UPDATE, INFO, REFER, NOTIFY";
/// Extensions this server supports (the `Supported` header).
pub const SUPPORTED: &[&str] = &["timer", "path", "outbound", "replaces"];
/// Body types this server accepts (the `Accept` header).
pub const ACCEPT: &str = "application/sdp";
