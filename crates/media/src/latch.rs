//! Symmetric RTP: which source a leg accepts packets from, and where the other leg's traffic
//! is sent back to. Pure state, fed the time of each packet.
//!
//! ```text
//!                 first packet from S            packet from S' != S
//!   Unlatched ---------------------------> Latched(S) ------------------> mode decides:
//!   (send to SDP hint)                     (send to S)     Window: S' within window -> Latched(S')
//!                                                          Ssrc:   S' with latched SSRC -> Latched(S')
//!                                                          else    dropped (hijack_dropped)
//! ```

use std::net::SocketAddr;
use std::time::Instant;

use crate::config::LatchMode;

/// What to do with a packet, by the latch's judgement of its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatchVerdict {
    /// From the latched source (or latching is off): relay it.
    Accept,
    /// The leg latched onto this packet's source (first packet, or a permitted move): relay it.
    Latched,
    /// From a source the leg may not move to: drop it.
    Drop,
}

/// Latching state of one socket of a leg (RTP and RTCP latch separately).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latch {
    source: Option<SocketAddr>,
    ssrc: Option<u32>,
    first_at: Option<Instant>,
}

impl Latch {
    /// Judges a packet from `src`, carrying `ssrc` (if RTP/RTCP), arriving at `now`.
    pub fn on_packet(
        &mut self,
        mode: LatchMode,
        src: SocketAddr,
        ssrc: Option<u32>,
        now: Instant,
    ) -> LatchVerdict {
        let first_at = *self.first_at.get_or_insert(now);
        if self.source == Some(src) {
            if self.ssrc.is_none() {
                self.ssrc = ssrc;
            }
            return LatchVerdict::Accept;
        }
        let may_move = match (mode, self.source) {
            (_, None) => true,
            (LatchMode::Off, Some(_)) => return LatchVerdict::Accept,
            (LatchMode::Window(w), Some(_)) => now.saturating_duration_since(first_at) < w,
            (LatchMode::Ssrc, Some(_)) => ssrc.is_some() && ssrc == self.ssrc,
        };
        if may_move {
            self.source = Some(src);
            self.ssrc = ssrc;
            LatchVerdict::Latched
        } else {
            LatchVerdict::Drop
        }
    }

    /// Where packets for this leg go: the latched source, or the SDP `hint` before any packet
    /// arrived. With [`LatchMode::Off`] the hint wins when there is one.
    pub fn destination(&self, mode: LatchMode, hint: Option<SocketAddr>) -> Option<SocketAddr> {
        match mode {
            LatchMode::Off => hint.or(self.source),
            _ => self.source.or(hint),
        }
    }

    /// The latched source.
    pub fn source(&self) -> Option<SocketAddr> {
        self.source
    }

    /// Forgets the latched source: used when new SDP moves the peer (re-INVITE).
    pub fn reset(&mut self) {
        *self = Latch::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn first_packet_latches_over_the_hint() {
        let t0 = Instant::now();
        let mode = LatchMode::Window(Duration::from_secs(2));
        let mut l = Latch::default();
        assert_eq!(l.destination(mode, Some(addr(4000))), Some(addr(4000)));
        assert_eq!(l.destination(mode, None), None);
        assert_eq!(
            l.on_packet(mode, addr(5000), Some(1), t0),
            LatchVerdict::Latched
        );
        assert_eq!(l.destination(mode, Some(addr(4000))), Some(addr(5000)));
        assert_eq!(
            l.on_packet(mode, addr(5000), Some(1), t0),
            LatchVerdict::Accept
        );
    }

    #[test]
    fn window_mode_moves_inside_the_window_and_drops_after() {
        let t0 = Instant::now();
        let mode = LatchMode::Window(Duration::from_secs(2));
        let mut l = Latch::default();
        l.on_packet(mode, addr(5000), Some(1), t0);
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(
            l.on_packet(mode, addr(5002), Some(1), t1),
            LatchVerdict::Latched
        );
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(
            l.on_packet(mode, addr(6666), Some(1), t2),
            LatchVerdict::Drop
        );
        assert_eq!(l.source(), Some(addr(5002)));
    }

    #[test]
    fn ssrc_mode_follows_only_the_same_ssrc() {
        let t0 = Instant::now();
        let mode = LatchMode::Ssrc;
        let mut l = Latch::default();
        l.on_packet(mode, addr(5000), Some(77), t0);
        assert_eq!(
            l.on_packet(mode, addr(6666), Some(99), t0),
            LatchVerdict::Drop
        );
        assert_eq!(l.on_packet(mode, addr(6666), None, t0), LatchVerdict::Drop);
        let later = t0 + Duration::from_secs(600);
        assert_eq!(
            l.on_packet(mode, addr(5100), Some(77), later),
            LatchVerdict::Latched
        );
        assert_eq!(l.source(), Some(addr(5100)));
    }

    #[test]
    fn off_mode_accepts_all_and_sends_to_the_hint() {
        let t0 = Instant::now();
        let mode = LatchMode::Off;
        let mut l = Latch::default();
        l.on_packet(mode, addr(5000), None, t0);
        assert_eq!(
            l.on_packet(mode, addr(6000), None, t0),
            LatchVerdict::Accept
        );
        assert_eq!(l.destination(mode, Some(addr(4000))), Some(addr(4000)));
        assert_eq!(l.destination(mode, None), Some(addr(5000)));
    }

    #[test]
    fn reset_reopens_latching() {
        let t0 = Instant::now();
        let mode = LatchMode::Ssrc;
        let mut l = Latch::default();
        l.on_packet(mode, addr(5000), Some(1), t0);
        l.reset();
        assert_eq!(
            l.on_packet(mode, addr(7000), Some(2), t0),
            LatchVerdict::Latched
        );
    }
}
