//! The media layer's error type.

use std::io;

use crate::config::ConfigError;

/// Errors of the media relay. Every one is recoverable by the caller: none is a panic.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The configuration was refused by [`crate::RelayConfig::validate`].
    #[error("invalid media configuration: {0}")]
    Config(#[from] ConfigError),
    /// Every even/odd port pair of the range is in use (or could not be bound).
    #[error("no free RTP/RTCP port pair left in {min}-{max}")]
    PortsExhausted {
        /// Lowest port of the range.
        min: u16,
        /// Highest port of the range.
        max: u16,
    },
    /// A system call the relay depends on failed (epoll, eventfd, thread spawn, socket set-up).
    #[error("{op} failed: {source}")]
    Io {
        /// What the relay was doing.
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A leg's codec cannot be mixed (only G.711 can): no monitor on this call.
    #[error("{0}")]
    CodecNotMixable(#[from] crate::mixer::MixError),
    /// The relay has no DTLS identity (it could not be made at start): no WebRTC leg.
    #[error("the media relay has no DTLS identity: WebRTC legs are not available")]
    NoDtlsIdentity,
    /// A WebRTC leg could not be set up.
    #[error("webrtc: {0}")]
    WebRtc(String),
    /// The forwarding thread that owns this session is gone (the relay was shut down).
    #[error("the media relay has stopped")]
    RelayStopped,
}

impl MediaError {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(io::Error) -> MediaError {
        move |source| MediaError::Io { op, source }
    }
}
