//! Relay configuration: the `[media]` section of the dialbridge config, validated before start.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// How a leg learns where its peer really sends from (symmetric RTP, RFC 4961).
///
/// The address in the peer's SDP is only a hint: behind a NAT the packets come from another
/// address. The relay *latches* onto the source of the packets it receives on the leg and sends
/// the other leg's traffic back there. The modes trade NAT friendliness against protection from
/// a third party that sends packets to the relay port to hijack the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatchMode {
    /// Strict source (`media.strict_source = true`, the default): a leg accepts packets only
    /// from the IP addresses its peer can send from (its SDP addresses and those the B2BUA
    /// names with [`crate::MediaSession::allow_sources`]); anything else is dropped before it
    /// can latch and counted as `hijack_dropped`. The first packet from an allowed address
    /// latches; a move to another source of an allowed address (a NAT rebinding) needs
    /// `probation` packets in sequence with one SSRC (RFC 3550 §A.1).
    Strict {
        /// Packets in sequence that a new source must send before the leg moves to it.
        probation: u8,
    },
    /// Follow the source of the latest packet during this window after the leg's first
    /// packet; afterwards the latched source is fixed and packets from any other source are
    /// dropped (and counted as `hijack_dropped`).
    Window(Duration),
    /// Latch onto the first source; move to another source only when its packets carry the
    /// SSRC already seen from the latched one (a NAT rebinding). Anything else is dropped.
    Ssrc,
    /// No symmetric RTP: send to the SDP address, accept packets from any source. Without an
    /// SDP address the first source seen is used.
    Off,
}

impl LatchMode {
    /// The default probation of [`LatchMode::Strict`]: four packets, as RFC 3550 §A.1's
    /// `MIN_SEQUENTIAL` is two and Asterisk's `strictrtp` learning takes four.
    pub const DEFAULT_PROBATION: u8 = 4;

    /// What `media.strict_source = false` selects: follow the latest source for 3 s after
    /// the first packet, from any address (for networks where media comes from addresses
    /// that neither SDP nor signalling name).
    pub const LOOSE: LatchMode = LatchMode::Window(Duration::from_secs(3));
}

impl Default for LatchMode {
    fn default() -> Self {
        LatchMode::Strict {
            probation: LatchMode::DEFAULT_PROBATION,
        }
    }
}

/// How the forwarding threads move packets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// io_uring when the kernel offers it (multishot `recvmsg` into provided buffers, 6.0 or
    /// later, not refused by `io_uring_disabled` or seccomp), else epoll. The environment
    /// variable `DIALBRIDGE_MEDIA_BACKEND=epoll|io_uring` overrides this choice. Which one
    /// runs is logged once at start.
    #[default]
    Auto,
    /// io_uring, or [`crate::Relay::start`] fails.
    IoUring,
    /// epoll with `recvmmsg`/`sendmmsg`.
    Epoll,
}

impl Backend {
    /// `Auto` resolved against `DIALBRIDGE_MEDIA_BACKEND`.
    pub(crate) fn resolve_env(self) -> Backend {
        if self != Backend::Auto {
            return self;
        }
        match std::env::var("DIALBRIDGE_MEDIA_BACKEND").as_deref() {
            Ok("epoll") => Backend::Epoll,
            Ok("io_uring") | Ok("io-uring") => Backend::IoUring,
            _ => Backend::Auto,
        }
    }
}

/// The relay's settings (`[media]` in the configuration file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Address the relay ports are bound to (`media.bind`).
    pub bind: IpAddr,
    /// Address written into SDP for the relay ports (`media.advertise`, behind NAT).
    pub advertise: IpAddr,
    /// Lowest port of the range (`media.ports`); RTP uses even ports, RTCP the odd port above.
    pub port_min: u16,
    /// Highest port of the range, inclusive.
    pub port_max: u16,
    /// No packet from either leg of a started session for this long raises
    /// [`crate::MediaEvent::Timeout`] (`media.timeout_secs`).
    pub timeout: Duration,
    /// Symmetric RTP policy.
    pub latch: LatchMode,
    /// Forwarding threads; 0 means one per available core.
    pub workers: usize,
    /// io_uring or epoll (default: io_uring when available).
    pub backend: Backend,
    /// Shown a copy of each RTCP packet the relay receives and sends (e.g. for HEP); none
    /// by default.
    pub rtcp_tap: RtcpTapHandle,
    /// How long a closed session's sockets rest, parked, before a new session takes them
    /// (see [`crate::Relay::allocate_session`]); late packets of the old call are dropped
    /// meanwhile.
    pub park_quarantine: Duration,
    /// How long a closed session's sockets stay parked before they are closed and their
    /// ports freed.
    pub park_idle: Duration,
    /// A datagram to a parked session's sockets this long or more after it was parked is no
    /// late packet of its call: the sockets are closed.
    pub park_late: Duration,
}

/// Which way an RTCP packet went through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RtcpDirection {
    /// Received from the leg's peer.
    Received,
    /// Sent toward the leg's peer.
    Sent,
}

/// Watches the RTCP the relay forwards. Called on a forwarding thread, for RTCP packets
/// only (never for RTP): it must return at once — copy the bytes into a bounded queue, never
/// block or wait for I/O.
pub trait RtcpTap: Send + Sync + std::fmt::Debug + 'static {
    /// `leg`: the leg whose peer sent the packet (`Received`) or gets it (`Sent`).
    fn on_rtcp(
        &self,
        session: crate::SessionId,
        leg: crate::LegId,
        direction: RtcpDirection,
        src: std::net::SocketAddr,
        dst: std::net::SocketAddr,
        data: &[u8],
    );
}

/// An optional [`RtcpTap`] (compared by identity).
#[derive(Debug, Clone, Default)]
pub struct RtcpTapHandle(pub Option<std::sync::Arc<dyn RtcpTap>>);

impl PartialEq for RtcpTapHandle {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for RtcpTapHandle {}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            advertise: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port_min: 20000,
            port_max: 29999,
            timeout: Duration::from_secs(30),
            latch: LatchMode::default(),
            workers: 0,
            backend: Backend::Auto,
            rtcp_tap: RtcpTapHandle::default(),
            park_quarantine: Duration::from_secs(2),
            park_idle: Duration::from_secs(10),
            park_late: Duration::from_millis(500),
        }
    }
}

/// What is wrong with a [`RelayConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `port_min` above `port_max`.
    #[error("media.ports: lowest port {min} is above highest port {max}")]
    InvertedRange {
        /// Lowest port given.
        min: u16,
        /// Highest port given.
        max: u16,
    },
    /// The range holds no even/odd pair, or only one (a session needs two).
    #[error("media.ports: {min}-{max} holds fewer than two even/odd port pairs")]
    RangeTooSmall {
        /// Lowest port given.
        min: u16,
        /// Highest port given.
        max: u16,
    },
    /// Port 0 cannot be part of the range.
    #[error("media.ports: port 0 is not a usable port")]
    PortZero,
    /// A zero media time-out would end every call at once.
    #[error("media.timeout_secs must be greater than zero")]
    ZeroTimeout,
    /// A strict latch that never needs a packet would move on any forged one.
    #[error("media.probation_packets must be between 1 and 64")]
    BadProbation,
}

impl RelayConfig {
    /// Checks the settings before anything is bound.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (min, max) = (self.port_min, self.port_max);
        if min == 0 {
            return Err(ConfigError::PortZero);
        }
        if min > max {
            return Err(ConfigError::InvertedRange { min, max });
        }
        if crate::ports::pair_count(min, max) < 2 {
            return Err(ConfigError::RangeTooSmall { min, max });
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        if let LatchMode::Strict { probation } = self.latch {
            if !(1..=64).contains(&probation) {
                return Err(ConfigError::BadProbation);
            }
        }
        Ok(())
    }

    /// The number of forwarding threads this config asks for.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(RelayConfig::default().validate(), Ok(()));
    }

    #[test]
    fn rejects_bad_ranges_and_timeout() {
        let mut c = RelayConfig {
            port_min: 3000,
            port_max: 2000,
            ..RelayConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::InvertedRange {
                min: 3000,
                max: 2000
            })
        );
        c.port_min = 2000;
        c.port_max = 2002;
        assert_eq!(
            c.validate(),
            Err(ConfigError::RangeTooSmall {
                min: 2000,
                max: 2002
            })
        );
        c.port_max = 2003;
        assert_eq!(c.validate(), Ok(()));
        c.port_min = 0;
        assert_eq!(c.validate(), Err(ConfigError::PortZero));
        c.port_min = 2000;
        c.timeout = Duration::ZERO;
        assert_eq!(c.validate(), Err(ConfigError::ZeroTimeout));
    }
}
