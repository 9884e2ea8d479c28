//! Per-leg statistics: packet and byte counters, and the RFC 3550 reception statistics
//! (sequence tracking of Appendix A.1, loss of A.3, interarrival jitter of A.8).
//!
//! The math here is pure: it is fed header fields and arrival times and never reads a clock.
//! The forwarding thread owns one [`RtpReception`] per leg and publishes the results into the
//! session's [`LegCounters`] (single writer, lock-free readers) after each batch.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::rtp::RtpHeader;
use crate::LegId;

const RTP_SEQ_MOD: u32 = 1 << 16;
const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;
const MIN_SEQUENTIAL: u32 = 2;

/// Per-source sequence number state, as in RFC 3550 Appendix A.1 (`source` / `update_seq`).
///
/// A source is valid after `MIN_SEQUENTIAL` (2) packets in sequence; large jumps
/// (> `MAX_DROPOUT`) are taken as a restart of the sender once two consecutive packets confirm
/// them; packets at most `MAX_MISORDER` behind are duplicates or reordered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceState {
    max_seq: u16,
    /// Shifted count of sequence number cycles (a multiple of 2^16).
    cycles: u32,
    base_seq: u32,
    bad_seq: u32,
    probation: u32,
    received: u32,
}

impl SequenceState {
    /// A source first heard with `seq` (RFC 3550 A.1: `init_seq` then probation).
    pub fn new(seq: u16) -> Self {
        let mut s = SequenceState {
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: 0,
            probation: MIN_SEQUENTIAL,
            received: 0,
        };
        s.init(seq);
        s.max_seq = seq.wrapping_sub(1);
        s.probation = MIN_SEQUENTIAL;
        s
    }

    fn init(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
    }

    /// RFC 3550 A.1 `update_seq`: returns whether the packet is valid for the source.
    pub fn update(&mut self, seq: u16) -> bool {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init(seq);
                    self.received += 1;
                    return true;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return false;
        }
        if udelta < MAX_DROPOUT {
            // In order, with permissible gap.
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(RTP_SEQ_MOD);
            }
            self.max_seq = seq;
        } else if u32::from(udelta) <= RTP_SEQ_MOD - u32::from(MAX_MISORDER) {
            // The sequence number made a very large jump.
            if u32::from(seq) == self.bad_seq {
                // Two sequential packets: the other side restarted without telling us.
                self.init(seq);
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
                return false;
            }
        }
        // else: duplicate or reordered packet.
        self.received += 1;
        true
    }

    /// Whether the source left probation.
    pub fn is_valid(&self) -> bool {
        self.probation == 0
    }

    /// Highest sequence number seen, extended with the cycle count.
    pub fn extended_max(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    /// Packets counted as received (duplicates included, as RFC 3550 does).
    pub fn received(&self) -> u32 {
        self.received
    }

    /// RFC 3550 A.3: `expected = extended_max - base_seq + 1` (0 while on probation).
    pub fn expected(&self) -> u32 {
        if !self.is_valid() {
            return 0;
        }
        self.extended_max()
            .wrapping_sub(self.base_seq)
            .wrapping_add(1)
    }

    /// RFC 3550 A.3: cumulative number of packets lost, `expected - received`. Negative when
    /// duplicates outnumber losses.
    pub fn lost(&self) -> i64 {
        i64::from(self.expected()) - i64::from(self.received)
    }
}

/// Interarrival jitter, RFC 3550 §6.4.1 and Appendix A.8, in timestamp units.
///
/// `J(i) = J(i-1) + (|D(i-1,i)| - J(i-1)) / 16`, kept scaled by 16 as A.8 does
/// (`jitter += d - ((jitter + 8) >> 4)`) to avoid fractions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Jitter {
    last_transit: Option<u32>,
    scaled: u64,
}

impl Jitter {
    /// Feeds one packet: `arrival` is the arrival time in the same units as the RTP
    /// timestamp `rtp_ts` (the offset between the two clocks does not matter).
    pub fn update(&mut self, arrival: u32, rtp_ts: u32) {
        let transit = arrival.wrapping_sub(rtp_ts);
        if let Some(last) = self.last_transit {
            let d = u64::from((transit.wrapping_sub(last) as i32).unsigned_abs());
            self.scaled = (self.scaled + d).saturating_sub((self.scaled + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    /// The current estimate, in timestamp units (what an RTCP report block carries).
    pub fn get(&self) -> u32 {
        u32::try_from(self.scaled >> 4).unwrap_or(u32::MAX)
    }
}

/// Converts a time since an epoch into RTP timestamp units at `clock_rate` Hz (wrapping).
pub fn timestamp_units(since_epoch: Duration, clock_rate: u32) -> u32 {
    let rate = u64::from(clock_rate);
    let whole = since_epoch.as_secs().wrapping_mul(rate);
    let frac = u64::from(since_epoch.subsec_nanos()) * rate / 1_000_000_000;
    whole.wrapping_add(frac) as u32
}

/// Reception statistics of the RTP one leg sends to the relay.
///
/// Counts survive an SSRC change (a re-INVITE to another phone): the totals of earlier
/// sources are kept in `expected_prior` / `lost_prior`. Jitter is computed on the first
/// payload type seen, so that RFC 4733 events, which repeat one timestamp, do not distort it.
#[derive(Debug, Clone, Default)]
pub struct RtpReception {
    ssrc: Option<u32>,
    seq: Option<SequenceState>,
    jitter: Jitter,
    jitter_pt: Option<u8>,
    expected_prior: u64,
    lost_prior: i64,
}

impl RtpReception {
    /// Feeds one RTP packet; `arrival` is its arrival time in timestamp units.
    pub fn on_rtp(&mut self, h: &RtpHeader, arrival: u32) {
        if self.ssrc != Some(h.ssrc) {
            if let Some(s) = self.seq.take() {
                self.expected_prior += u64::from(s.expected());
                self.lost_prior += s.lost();
            }
            self.ssrc = Some(h.ssrc);
            self.jitter = Jitter::default();
            self.jitter_pt = None;
        }
        match &mut self.seq {
            Some(s) => {
                s.update(h.sequence);
            }
            None => {
                let mut s = SequenceState::new(h.sequence);
                s.update(h.sequence);
                self.seq = Some(s);
            }
        }
        let pt = *self.jitter_pt.get_or_insert(h.payload_type);
        if pt == h.payload_type {
            self.jitter.update(arrival, h.timestamp);
        }
    }

    /// Packets expected so far (RFC 3550 A.3), over every SSRC heard.
    pub fn expected(&self) -> u64 {
        self.expected_prior + self.seq.as_ref().map_or(0, |s| u64::from(s.expected()))
    }

    /// Packets lost so far (RFC 3550 A.3), over every SSRC heard.
    pub fn lost(&self) -> i64 {
        self.lost_prior + self.seq.as_ref().map_or(0, SequenceState::lost)
    }

    /// Jitter of the current source, in timestamp units.
    pub fn jitter(&self) -> u32 {
        self.jitter.get()
    }

    /// The current SSRC.
    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }
}

/// A snapshot of one leg's statistics.
///
/// "rx" is what the leg's peer sent to the relay, "tx" what the relay sent to the leg's peer
/// (the other leg's traffic). RTP and RTCP are both counted in the packet and byte totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LegStats {
    /// Packets received from this leg's peer.
    pub rx_packets: u64,
    /// Bytes (UDP payload) received from this leg's peer.
    pub rx_bytes: u64,
    /// Of `rx_packets`, how many were RTCP.
    pub rx_rtcp_packets: u64,
    /// Packets sent to this leg's peer.
    pub tx_packets: u64,
    /// Bytes sent to this leg's peer.
    pub tx_bytes: u64,
    /// Of `tx_packets`, how many were RTCP.
    pub tx_rtcp_packets: u64,
    /// RTP packets expected from this leg's peer (RFC 3550 A.3).
    pub expected: u64,
    /// RTP packets lost on the way from this leg's peer (RFC 3550 A.3; negative with duplicates).
    pub lost: i64,
    /// Interarrival jitter of this leg's RTP, in timestamp units (RFC 3550 A.8).
    pub jitter: u32,
    /// Clock rate used for the jitter, in Hz.
    pub clock_rate: u32,
    /// Packets dropped because they came from a source other than the latched one.
    pub hijack_dropped: u64,
    /// SRTP/SRTCP packets of this leg dropped: failed authentication (a wrong key) or a
    /// replay.
    pub srtp_dropped: u64,
    /// Packets from this leg that could not be sent on: the other leg had no known address,
    /// forwarding was stopped, the datagram was oversized, or the send failed.
    pub not_forwarded: u64,
    /// When the last packet from this leg's peer arrived.
    pub last_rx: Option<Instant>,
    /// The address RTP from this leg's peer comes from (the latched source).
    pub remote_rtp: Option<SocketAddr>,
    /// The SSRC of this leg's RTP.
    pub ssrc: Option<u32>,
}

impl LegStats {
    /// The jitter as a duration.
    pub fn jitter_duration(&self) -> Duration {
        if self.clock_rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(u64::from(self.jitter) * 1_000_000_000 / u64::from(self.clock_rate))
    }
}

/// A snapshot of both legs of a session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionStats {
    /// Leg A (the agent side).
    pub a: LegStats,
    /// Leg B (the customer side).
    pub b: LegStats,
}

impl SessionStats {
    /// The stats of one leg.
    pub fn leg(&self, leg: LegId) -> &LegStats {
        match leg {
            LegId::A => &self.a,
            LegId::B => &self.b,
        }
    }
}

/// Lock-free published counters of one leg: written by the leg's forwarding thread only,
/// read by anyone.
#[derive(Debug, Default)]
pub(crate) struct LegCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub rx_rtcp_packets: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_rtcp_packets: AtomicU64,
    pub expected: AtomicU64,
    pub lost: AtomicI64,
    pub jitter: AtomicU32,
    pub clock_rate: AtomicU32,
    pub hijack_dropped: AtomicU64,
    pub srtp_dropped: AtomicU64,
    pub not_forwarded: AtomicU64,
    /// Nanoseconds since the relay epoch, plus one; 0 means never.
    pub last_rx: AtomicU64,
    /// Changes only when a leg latches or changes SSRC.
    pub remote: Mutex<(Option<SocketAddr>, Option<u32>)>,
}

/// Worker-side, unsynchronized tallies of one leg, published into [`LegCounters`].
#[derive(Debug, Default, Clone)]
pub(crate) struct LegTally {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_rtcp_packets: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_rtcp_packets: u64,
    pub hijack_dropped: u64,
    pub srtp_dropped: u64,
    pub not_forwarded: u64,
    pub last_rx: Option<Instant>,
}

impl LegCounters {
    pub(crate) fn publish(&self, t: &LegTally, r: &RtpReception, clock_rate: u32, epoch: Instant) {
        self.rx_packets.store(t.rx_packets, Relaxed);
        self.rx_bytes.store(t.rx_bytes, Relaxed);
        self.rx_rtcp_packets.store(t.rx_rtcp_packets, Relaxed);
        self.tx_packets.store(t.tx_packets, Relaxed);
        self.tx_bytes.store(t.tx_bytes, Relaxed);
        self.tx_rtcp_packets.store(t.tx_rtcp_packets, Relaxed);
        self.hijack_dropped.store(t.hijack_dropped, Relaxed);
        self.srtp_dropped.store(t.srtp_dropped, Relaxed);
        self.not_forwarded.store(t.not_forwarded, Relaxed);
        self.expected.store(r.expected(), Relaxed);
        self.lost.store(r.lost(), Relaxed);
        self.jitter.store(r.jitter(), Relaxed);
        self.clock_rate.store(clock_rate, Relaxed);
        if let Some(at) = t.last_rx {
            let nanos = u64::try_from(at.saturating_duration_since(epoch).as_nanos())
                .unwrap_or(u64::MAX - 1);
            self.last_rx.store(nanos + 1, Relaxed);
        }
    }

    pub(crate) fn set_remote(&self, addr: Option<SocketAddr>, ssrc: Option<u32>) {
        if let Ok(mut g) = self.remote.lock() {
            *g = (addr, ssrc);
        }
    }

    pub(crate) fn snapshot(&self, epoch: Instant) -> LegStats {
        let last = self.last_rx.load(Relaxed);
        let (remote_rtp, ssrc) = self.remote.lock().map(|g| *g).unwrap_or((None, None));
        LegStats {
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            rx_rtcp_packets: self.rx_rtcp_packets.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            tx_rtcp_packets: self.tx_rtcp_packets.load(Relaxed),
            expected: self.expected.load(Relaxed),
            lost: self.lost.load(Relaxed),
            jitter: self.jitter.load(Relaxed),
            clock_rate: self.clock_rate.load(Relaxed),
            hijack_dropped: self.hijack_dropped.load(Relaxed),
            srtp_dropped: self.srtp_dropped.load(Relaxed),
            not_forwarded: self.not_forwarded.load(Relaxed),
            last_rx: (last > 0).then(|| epoch + Duration::from_nanos(last - 1)),
            remote_rtp,
            ssrc,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq_run(seqs: &[u16]) -> SequenceState {
        let mut s = SequenceState::new(seqs[0]);
        for &q in seqs {
            s.update(q);
        }
        s
    }

    #[test]
    fn probation_then_counting() {
        // RFC 3550 A.1: the first packet only starts probation; the second validates the
        // source and becomes the base of the expected count.
        let mut s = SequenceState::new(100);
        assert!(!s.update(100));
        assert!(!s.is_valid());
        assert_eq!(s.expected(), 0);
        assert!(s.update(101));
        assert!(s.is_valid());
        assert_eq!((s.expected(), s.received(), s.lost()), (1, 1, 0));
    }

    #[test]
    fn loss_from_a_gap() {
        // 1..=10 without 5: base is 2 (after probation), expected 9, received 8, lost 1.
        let seqs: Vec<u16> = (1..=10).filter(|&q| q != 5).collect();
        let s = seq_run(&seqs);
        assert_eq!(s.expected(), 9);
        assert_eq!(s.received(), 8);
        assert_eq!(s.lost(), 1);
    }

    #[test]
    fn wraps_sequence_numbers_with_cycles() {
        let seqs: Vec<u16> = (0..20u32).map(|i| (65530 + i) as u16).collect();
        let s = seq_run(&seqs);
        assert_eq!(s.extended_max(), (1 << 16) + 13);
        assert_eq!(s.expected(), 19);
        assert_eq!(s.lost(), 0);
    }

    #[test]
    fn duplicates_make_loss_negative_and_reorder_is_not_loss() {
        let s = seq_run(&[1, 2, 3, 3, 4]);
        assert_eq!(s.lost(), -1);
        let s = seq_run(&[1, 2, 4, 3, 5]);
        assert_eq!(s.lost(), 0);
    }

    #[test]
    fn large_jump_is_a_restart_once_confirmed() {
        let mut s = seq_run(&[1, 2, 3]);
        assert!(!s.update(40000));
        assert!(s.update(40001));
        // Re-based on 40001: nothing expected before it.
        assert_eq!((s.expected(), s.lost()), (1, 0));
    }

    #[test]
    fn jitter_is_zero_for_perfect_pacing() {
        let mut j = Jitter::default();
        for i in 0..50u32 {
            j.update(1000 + i * 160, i * 160);
        }
        assert_eq!(j.get(), 0);
    }

    #[test]
    fn jitter_follows_the_a8_recurrence() {
        // One packet 16 units late after perfect pacing: J = 16/16 = 1, then it decays.
        let mut j = Jitter::default();
        j.update(0, 0);
        j.update(160 + 16, 160);
        assert_eq!(j.get(), 1);
        // Alternating +-80 units of transit: |D| = 80 every packet; J converges to 80.
        let mut j = Jitter::default();
        let mut exact = 0.0f64;
        for i in 0..400u32 {
            let skew = if i % 2 == 0 { 0 } else { 80 };
            j.update(i * 160 + skew, i * 160);
            if i > 0 {
                exact += (80.0 - exact) / 16.0;
            }
        }
        assert!(
            (f64::from(j.get()) - exact).abs() <= 1.0,
            "{} vs {exact}",
            j.get()
        );
        assert_eq!(j.get(), 79); // floor of the scaled value just below 80
    }

    #[test]
    fn timestamp_units_at_8khz() {
        assert_eq!(timestamp_units(Duration::from_millis(20), 8000), 160);
        assert_eq!(timestamp_units(Duration::from_secs(3), 48000), 144_000);
    }

    fn rtp(seq: u16, ts: u32, ssrc: u32, pt: u8) -> RtpHeader {
        RtpHeader {
            payload_type: pt,
            marker: false,
            sequence: seq,
            timestamp: ts,
            ssrc,
        }
    }

    #[test]
    fn reception_keeps_totals_over_an_ssrc_change_and_ignores_dtmf_for_jitter() {
        let mut r = RtpReception::default();
        for q in [1u16, 2, 3, 5, 6] {
            r.on_rtp(&rtp(q, u32::from(q) * 160, 9, 0), u32::from(q) * 160);
        }
        assert_eq!((r.expected(), r.lost()), (5, 1));
        // A telephone-event packet with a stale timestamp does not move the jitter.
        r.on_rtp(&rtp(7, 0, 9, 101), 7 * 160);
        assert_eq!(r.jitter(), 0);
        // New SSRC (another phone took over): old totals kept, new source counted.
        for q in [500u16, 501, 502] {
            r.on_rtp(&rtp(q, 0, 10, 0), 0);
        }
        assert_eq!(r.ssrc(), Some(10));
        assert_eq!((r.expected(), r.lost()), (6 + 2, 1));
    }
}
