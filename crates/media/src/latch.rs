//! Symmetric RTP: which source a leg accepts packets from, and where the other leg's traffic
//! is sent back to. Pure state, fed the time of each packet.
//!
//! With [`LatchMode::Strict`] (the default) a leg accepts media only from the IP addresses its
//! peer can legitimately send from ([`AllowedSources`]: the addresses in the peer's SDP and
//! the addresses of its signalling, such as a registered phone's NAT-side address or a trunk's
//! resolved address), and moves to a new source port of such an address only after
//! `probation` packets in sequence with one SSRC (RFC 3550 §A.1 probation): a NAT rebinding
//! moves the leg, a forged packet cannot. This closes "RTP Bleed", where a stranger spraying
//! the media ports takes over a call's audio in its first moments.
//!
//! ```text
//!                 first packet from an           packet from S' != S
//!                 allowed S                      (Strict: S' allowed IP, else dropped)
//!   Unlatched ---------------------------> Latched(S) ------------------> mode decides:
//!   (send to SDP hint)                     (send to S)     Strict: S' after `probation` packets
//!        |                                   ^   |                 in sequence, one SSRC
//!        | packet from an IP not allowed     |   |         Window: S' within window
//!        v (Strict)                          |   |         Ssrc:   S' with latched SSRC
//!      dropped (hijack_dropped)              +---+         else    dropped (hijack_dropped)
//!                                     allowed set changes and S is no longer in it:
//!                                     back to Unlatched
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::config::LatchMode;

/// What to do with a packet, by the latch's judgement of its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatchVerdict {
    /// From the latched source (or latching is off): relay it.
    Accept,
    /// The leg latched onto this packet's source (first packet, or a permitted move): relay it.
    Latched,
    /// From an allowed address but a new source still on probation: not relayed yet.
    Probation,
    /// From a source the leg may not move to: drop it.
    Drop,
}

/// What the latch reads of a packet: its SSRC and, for RTP, its sequence number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Probe {
    /// SSRC of RTP, sender SSRC of RTCP; `None` for anything else.
    pub ssrc: Option<u32>,
    /// RTP sequence number; `None` for RTCP and anything else.
    pub seq: Option<u16>,
}

/// The IP addresses a leg accepts media from under [`LatchMode::Strict`]: a small fixed set,
/// searched linearly (it holds a handful of addresses; no allocation on the packet path).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllowedSources {
    ips: [Option<IpAddr>; AllowedSources::CAPACITY],
}

impl AllowedSources {
    /// How many addresses a leg keeps; further ones are ignored.
    pub const CAPACITY: usize = 8;

    /// A set of the given addresses (duplicates and the unspecified address left out).
    pub fn new(ips: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut s = AllowedSources::default();
        for ip in ips {
            s.insert(ip);
        }
        s
    }

    /// Adds `ip`; false when the set is full. IPv4-mapped IPv6 addresses are kept as IPv4.
    pub fn insert(&mut self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if ip.is_unspecified() || self.contains(ip) {
            return true;
        }
        match self.ips.iter_mut().find(|s| s.is_none()) {
            Some(slot) => {
                *slot = Some(ip);
                true
            }
            None => false,
        }
    }

    /// Whether packets from `ip` may be accepted.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.ips.contains(&Some(ip))
    }

    /// True when no address is allowed (nothing known yet about the peer).
    pub fn is_empty(&self) -> bool {
        self.ips.iter().all(Option::is_none)
    }

    /// The allowed addresses.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ips.iter().flatten().copied()
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A new source on probation: packets from it counted while they come in sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    source: SocketAddr,
    ssrc: u32,
    /// The sequence number expected next (RTP); `None` when it sends RTCP only.
    next_seq: Option<u16>,
    seen: u8,
}

/// Latching state of one socket of a leg (RTP and RTCP latch separately).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latch {
    source: Option<SocketAddr>,
    ssrc: Option<u32>,
    first_at: Option<Instant>,
    candidate: Option<Candidate>,
}

impl Latch {
    /// Judges a packet from `src`, carrying `probe`, arriving at `now`; `allowed` is the set
    /// of addresses the leg accepts under [`LatchMode::Strict`] (ignored by the other modes).
    pub fn on_packet(
        &mut self,
        mode: LatchMode,
        src: SocketAddr,
        probe: Probe,
        allowed: &AllowedSources,
        now: Instant,
    ) -> LatchVerdict {
        if self.source == Some(src) {
            if self.ssrc.is_none() {
                self.ssrc = probe.ssrc;
            }
            return LatchVerdict::Accept;
        }
        let first_at = *self.first_at.get_or_insert(now);
        let may_move = match (mode, self.source) {
            (LatchMode::Strict { .. }, _) if !allowed.contains(src.ip()) => {
                return LatchVerdict::Drop
            }
            (_, None) => true,
            (LatchMode::Off, Some(_)) => return LatchVerdict::Accept,
            (LatchMode::Strict { probation }, Some(_)) => {
                return self.probe_candidate(src, probe, probation)
            }
            (LatchMode::Window(w), Some(_)) => now.saturating_duration_since(first_at) < w,
            (LatchMode::Ssrc, Some(_)) => probe.ssrc.is_some() && probe.ssrc == self.ssrc,
        };
        if may_move {
            self.latch(src, probe.ssrc);
            LatchVerdict::Latched
        } else {
            LatchVerdict::Drop
        }
    }

    fn latch(&mut self, src: SocketAddr, ssrc: Option<u32>) {
        self.source = Some(src);
        self.ssrc = ssrc;
        self.candidate = None;
    }

    /// RFC 3550 §A.1 probation for a new source of an allowed address: it takes over after
    /// `probation` packets in sequence with one SSRC (RTCP, which has no sequence number,
    /// after `probation` packets with one SSRC).
    fn probe_candidate(&mut self, src: SocketAddr, probe: Probe, probation: u8) -> LatchVerdict {
        let Some(ssrc) = probe.ssrc else {
            return LatchVerdict::Drop;
        };
        let continues = match self.candidate {
            Some(c) if c.source == src && c.ssrc == ssrc => match (c.next_seq, probe.seq) {
                (Some(next), Some(seq)) => seq == next,
                (None, None) => true,
                // RTCP on a muxed port between the candidate's RTP packets: neither counts
                // nor breaks the run.
                (Some(_), None) => return LatchVerdict::Probation,
                (None, Some(_)) => false,
            },
            _ => false,
        };
        let c = match (continues, self.candidate.as_mut()) {
            (true, Some(c)) => {
                c.seen = c.seen.saturating_add(1);
                c.next_seq = probe.seq.map(|s| s.wrapping_add(1));
                *c
            }
            _ => {
                let c = Candidate {
                    source: src,
                    ssrc,
                    next_seq: probe.seq.map(|s| s.wrapping_add(1)),
                    seen: 1,
                };
                self.candidate = Some(c);
                c
            }
        };
        if c.seen >= probation.max(1) {
            self.latch(src, Some(ssrc));
            LatchVerdict::Latched
        } else {
            LatchVerdict::Probation
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

    /// Under [`LatchMode::Strict`], forgets a latched source whose address is no longer
    /// allowed (the peer's addresses changed); true when it did.
    pub fn revalidate(&mut self, mode: LatchMode, allowed: &AllowedSources) -> bool {
        let stale = matches!(mode, LatchMode::Strict { .. })
            && self.source.is_some_and(|s| !allowed.contains(s.ip()));
        if stale {
            self.reset();
        }
        stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const STRICT: LatchMode = LatchMode::Strict { probation: 4 };

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn at(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    fn rtp(ssrc: u32, seq: u16) -> Probe {
        Probe {
            ssrc: Some(ssrc),
            seq: Some(seq),
        }
    }

    fn rtcp(ssrc: u32) -> Probe {
        Probe {
            ssrc: Some(ssrc),
            seq: None,
        }
    }

    fn any() -> AllowedSources {
        AllowedSources::default()
    }

    fn loopback() -> AllowedSources {
        AllowedSources::new([IpAddr::from([127, 0, 0, 1])])
    }

    #[test]
    fn first_packet_latches_over_the_hint() {
        let t0 = Instant::now();
        let mode = LatchMode::Window(Duration::from_secs(2));
        let mut l = Latch::default();
        assert_eq!(l.destination(mode, Some(addr(4000))), Some(addr(4000)));
        assert_eq!(l.destination(mode, None), None);
        assert_eq!(
            l.on_packet(mode, addr(5000), rtp(1, 1), &any(), t0),
            LatchVerdict::Latched
        );
        assert_eq!(l.destination(mode, Some(addr(4000))), Some(addr(5000)));
        assert_eq!(
            l.on_packet(mode, addr(5000), rtp(1, 2), &any(), t0),
            LatchVerdict::Accept
        );
    }

    #[test]
    fn window_mode_moves_inside_the_window_and_drops_after() {
        let t0 = Instant::now();
        let mode = LatchMode::Window(Duration::from_secs(2));
        let mut l = Latch::default();
        l.on_packet(mode, addr(5000), rtp(1, 1), &any(), t0);
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(
            l.on_packet(mode, addr(5002), rtp(1, 2), &any(), t1),
            LatchVerdict::Latched
        );
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(
            l.on_packet(mode, addr(6666), rtp(1, 3), &any(), t2),
            LatchVerdict::Drop
        );
        assert_eq!(l.source(), Some(addr(5002)));
    }

    #[test]
    fn ssrc_mode_follows_only_the_same_ssrc() {
        let t0 = Instant::now();
        let mode = LatchMode::Ssrc;
        let mut l = Latch::default();
        l.on_packet(mode, addr(5000), rtp(77, 1), &any(), t0);
        assert_eq!(
            l.on_packet(mode, addr(6666), rtp(99, 1), &any(), t0),
            LatchVerdict::Drop
        );
        assert_eq!(
            l.on_packet(mode, addr(6666), Probe::default(), &any(), t0),
            LatchVerdict::Drop
        );
        let later = t0 + Duration::from_secs(600);
        assert_eq!(
            l.on_packet(mode, addr(5100), rtp(77, 2), &any(), later),
            LatchVerdict::Latched
        );
        assert_eq!(l.source(), Some(addr(5100)));
    }

    #[test]
    fn off_mode_accepts_all_and_sends_to_the_hint() {
        let t0 = Instant::now();
        let mode = LatchMode::Off;
        let mut l = Latch::default();
        l.on_packet(mode, addr(5000), Probe::default(), &any(), t0);
        assert_eq!(
            l.on_packet(mode, addr(6000), Probe::default(), &any(), t0),
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
        l.on_packet(mode, addr(5000), rtp(1, 1), &any(), t0);
        l.reset();
        assert_eq!(
            l.on_packet(mode, addr(7000), rtp(2, 1), &any(), t0),
            LatchVerdict::Latched
        );
    }

    #[test]
    fn strict_drops_every_packet_from_an_address_not_allowed() {
        let t0 = Instant::now();
        let mut l = Latch::default();
        let stranger = at([127, 0, 0, 5], 9000);
        // Before the peer's first packet: a sprayer cannot latch, however many it sends.
        for seq in 0..100 {
            assert_eq!(
                l.on_packet(STRICT, stranger, rtp(0xbad, seq), &loopback(), t0),
                LatchVerdict::Drop
            );
        }
        assert_eq!(l.source(), None);
        assert_eq!(l.destination(STRICT, Some(addr(4000))), Some(addr(4000)));
        // The peer's first packet latches at once.
        assert_eq!(
            l.on_packet(STRICT, addr(5000), rtp(1, 10), &loopback(), t0),
            LatchVerdict::Latched
        );
        // And the stranger still cannot move it.
        for seq in 100..200 {
            assert_eq!(
                l.on_packet(STRICT, stranger, rtp(1, seq), &loopback(), t0),
                LatchVerdict::Drop
            );
        }
        assert_eq!(l.source(), Some(addr(5000)));
        // Nothing allowed yet (no SDP, no signalling address): nothing latches.
        let mut l = Latch::default();
        assert_eq!(
            l.on_packet(STRICT, addr(5000), rtp(1, 1), &any(), t0),
            LatchVerdict::Drop
        );
    }

    #[test]
    fn strict_moves_after_probation_packets_in_sequence_with_one_ssrc() {
        let t0 = Instant::now();
        let mut l = Latch::default();
        l.on_packet(STRICT, addr(5000), rtp(7, 100), &loopback(), t0);
        // A NAT rebinding: same address, new port, same stream continuing.
        for seq in 101..104 {
            assert_eq!(
                l.on_packet(STRICT, addr(6000), rtp(7, seq), &loopback(), t0),
                LatchVerdict::Probation
            );
            assert_eq!(l.source(), Some(addr(5000)));
        }
        assert_eq!(
            l.on_packet(STRICT, addr(6000), rtp(7, 104), &loopback(), t0),
            LatchVerdict::Latched
        );
        assert_eq!(l.source(), Some(addr(6000)));
        assert_eq!(
            l.on_packet(STRICT, addr(5000), rtp(7, 105), &loopback(), t0),
            LatchVerdict::Probation,
            "the old port is now a stranger on probation"
        );
    }

    #[test]
    fn strict_one_forged_packet_or_a_broken_run_does_not_move_it() {
        let t0 = Instant::now();
        let mut l = Latch::default();
        l.on_packet(STRICT, addr(5000), rtp(7, 100), &loopback(), t0);
        assert_eq!(
            l.on_packet(STRICT, addr(6666), rtp(7, 101), &loopback(), t0),
            LatchVerdict::Probation
        );
        // Out of sequence, another SSRC, no SSRC at all: each starts over or is dropped.
        let probes = [rtp(7, 150), rtp(8, 151), rtp(8, 152), rtp(7, 160)];
        for p in probes {
            assert_ne!(
                l.on_packet(STRICT, addr(6666), p, &loopback(), t0),
                LatchVerdict::Latched
            );
        }
        assert_eq!(
            l.on_packet(STRICT, addr(6666), Probe::default(), &loopback(), t0),
            LatchVerdict::Drop
        );
        // Interleaving two forgers never completes a run either.
        for seq in 0..20u16 {
            let port = if seq % 2 == 0 { 6001 } else { 6002 };
            assert_ne!(
                l.on_packet(STRICT, addr(port), rtp(7, 200 + seq), &loopback(), t0),
                LatchVerdict::Latched
            );
        }
        assert_eq!(l.source(), Some(addr(5000)));
    }

    #[test]
    fn strict_sequence_wraps_and_rtcp_probes_by_ssrc() {
        let t0 = Instant::now();
        let mut l = Latch::default();
        l.on_packet(STRICT, addr(5000), rtp(7, 1), &loopback(), t0);
        for seq in [65534, 65535, 0] {
            assert_eq!(
                l.on_packet(STRICT, addr(6000), rtp(7, seq), &loopback(), t0),
                LatchVerdict::Probation
            );
        }
        // RTCP between the run's packets (rtcp-mux) neither counts nor breaks it.
        assert_eq!(
            l.on_packet(STRICT, addr(6000), rtcp(7), &loopback(), t0),
            LatchVerdict::Probation
        );
        assert_eq!(
            l.on_packet(STRICT, addr(6000), rtp(7, 1), &loopback(), t0),
            LatchVerdict::Latched
        );
        // An RTCP port moves after `probation` reports with one SSRC.
        let mut c = Latch::default();
        c.on_packet(STRICT, addr(5001), rtcp(7), &loopback(), t0);
        for _ in 0..3 {
            assert_eq!(
                c.on_packet(STRICT, addr(6001), rtcp(7), &loopback(), t0),
                LatchVerdict::Probation
            );
        }
        assert_eq!(
            c.on_packet(STRICT, addr(6001), rtcp(7), &loopback(), t0),
            LatchVerdict::Latched
        );
    }

    #[test]
    fn strict_forgets_a_source_whose_address_is_no_longer_allowed() {
        let t0 = Instant::now();
        let two = AllowedSources::new([IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 2])]);
        let mut l = Latch::default();
        l.on_packet(STRICT, at([127, 0, 0, 2], 5000), rtp(1, 1), &two, t0);
        assert!(!l.revalidate(STRICT, &two));
        assert!(l.revalidate(STRICT, &loopback()));
        assert_eq!(l.source(), None);
        assert!(!l.revalidate(LatchMode::Ssrc, &loopback()));
    }

    #[test]
    fn allowed_sources_are_a_bounded_set_of_addresses() {
        let mut s = AllowedSources::new([IpAddr::from([0, 0, 0, 0])]);
        assert!(s.is_empty());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(s.insert(mapped));
        assert!(s.contains(IpAddr::from([10, 0, 0, 1])));
        assert!(s.insert(IpAddr::from([10, 0, 0, 1])));
        assert_eq!(s.iter().count(), 1);
        for i in 2..=AllowedSources::CAPACITY as u8 {
            assert!(s.insert(IpAddr::from([10, 0, 0, i])));
        }
        assert!(!s.insert(IpAddr::from([10, 0, 0, 99])));
        assert!(!s.contains(IpAddr::from([10, 0, 0, 99])));
    }
}
