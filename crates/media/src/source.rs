//! Media of the relay's own: a [`Prompt`] played into one leg instead of what the other leg
//! sends, and RFC 4733 telephone-events seen on a leg.
//!
//! ```text
//!   Player (one per playing leg, on its forwarding thread)
//!     idle ──play(prompt)──► playing: every 20 ms one RTP packet of 160 G.711 bytes
//!                               │   (own SSRC, sequence, timestamp; marker on the first)
//!                               │   the other leg's RTP toward this leg is not forwarded
//!                               ├── end of a looped prompt: from its start again
//!                               └── end of a one-shot prompt / stop ──► idle
//! ```
//!
//! Both are pure: the player is asked for its next packet with the time, the event parser
//! is given a payload. The forwarding threads carry them (see `worker`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::g711::{Tone, G711};

/// Samples of one packet: 20 ms at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// The time one packet carries.
pub const FRAME: Duration = Duration::from_millis(20);
/// An RTP header (no CSRC, no extension) and one frame of G.711.
pub(crate) const PACKET_LEN: usize = 12 + FRAME_SAMPLES;

/// Audio that the relay plays into a leg: G.711 at 8 kHz, sent as 20 ms RTP packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    payload: Arc<[u8]>,
    codec: G711,
    looped: bool,
}

impl Prompt {
    /// Linear samples (8 kHz) encoded with `codec`; `looped` plays them again and again
    /// until stopped. A length that is not a whole number of frames is padded with silence.
    pub fn from_samples(samples: &[i16], codec: G711, looped: bool) -> Prompt {
        let frames = samples.len().div_ceil(FRAME_SAMPLES).max(1);
        let silence = codec.encode(0);
        let mut payload = vec![silence; frames * FRAME_SAMPLES];
        for (o, s) in payload.iter_mut().zip(samples) {
            *o = codec.encode(*s);
        }
        Prompt {
            payload: payload.into(),
            codec,
            looped,
        }
    }

    /// A tone of `hz` for `on`, then silence for `off` (a beep that repeats when `looped`).
    pub fn tone(hz: f64, on: Duration, off: Duration, codec: G711, looped: bool) -> Prompt {
        let n = |d: Duration| (d.as_millis() as usize) * 8;
        let mut samples = vec![0i16; n(on) + n(off)];
        Tone::new(hz).fill(&mut samples[..n(on)]);
        Prompt::from_samples(&samples, codec, looped)
    }

    /// The same prompt in another codec (what the leg's peer accepted).
    pub fn with_codec(&self, codec: G711) -> Prompt {
        if codec == self.codec {
            return self.clone();
        }
        let samples: Vec<i16> = self.payload.iter().map(|b| self.codec.decode(*b)).collect();
        Prompt::from_samples(&samples, codec, self.looped)
    }

    /// The codec of its packets.
    pub fn codec(&self) -> G711 {
        self.codec
    }

    /// How long one pass of it lasts.
    pub fn duration(&self) -> Duration {
        FRAME * (self.payload.len() / FRAME_SAMPLES) as u32
    }

    /// Whether it starts again at its end.
    pub fn looped(&self) -> bool {
        self.looped
    }
}

/// What a [`Player`] has for the time it was asked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A packet of this many bytes was written.
    Packet(usize),
    /// Nothing before this time.
    NotBefore(Instant),
    /// A one-shot prompt has been played to its end.
    Finished,
}

/// A prompt being played into one leg.
#[derive(Debug)]
pub(crate) struct Player {
    prompt: Prompt,
    pos: usize,
    seq: u16,
    ts: u32,
    ssrc: u32,
    next_at: Instant,
    first: bool,
}

/// At most this much late sending is caught up; beyond it the player skips ahead.
const MAX_CATCH_UP: Duration = Duration::from_millis(100);

impl Player {
    /// Starts `prompt` now; `seed` varies the SSRC, sequence and timestamp bases.
    pub(crate) fn new(prompt: Prompt, now: Instant, seed: u64) -> Player {
        let mix = seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(17)
            .wrapping_add(0x2545_f491_4f6c_dd1d);
        Player {
            prompt,
            pos: 0,
            seq: (mix >> 16) as u16,
            ts: (mix >> 32) as u32,
            ssrc: (mix as u32) | 1,
            next_at: now,
            first: true,
        }
    }

    /// The next packet, written into `buf`, when it is due at `now`.
    pub(crate) fn frame(&mut self, now: Instant, buf: &mut [u8; PACKET_LEN]) -> Frame {
        if now < self.next_at {
            return Frame::NotBefore(self.next_at);
        }
        if self.pos >= self.prompt.payload.len() {
            if !self.prompt.looped {
                return Frame::Finished;
            }
            self.pos = 0;
        }
        if now.saturating_duration_since(self.next_at) > MAX_CATCH_UP {
            // The thread was held up: skip what could not be sent in time (the timestamp
            // still counts it, as a sender that lost packets would).
            let behind = now.saturating_duration_since(self.next_at);
            let frames = (behind.as_millis() / FRAME.as_millis()) as u32;
            self.ts = self
                .ts
                .wrapping_add(frames.wrapping_mul(FRAME_SAMPLES as u32));
            self.next_at += FRAME * frames;
        }
        buf[0] = 0x80;
        buf[1] = self.prompt.codec.payload_type() | if self.first { 0x80 } else { 0 };
        buf[2..4].copy_from_slice(&self.seq.to_be_bytes());
        buf[4..8].copy_from_slice(&self.ts.to_be_bytes());
        buf[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        buf[12..].copy_from_slice(&self.prompt.payload[self.pos..self.pos + FRAME_SAMPLES]);
        self.pos += FRAME_SAMPLES;
        self.first = false;
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(FRAME_SAMPLES as u32);
        self.next_at += FRAME;
        Frame::Packet(PACKET_LEN)
    }
}

/// An RFC 4733 telephone-event of an RTP packet: the event code (0-9, 10 `*`, 11 `#`,
/// 12-15 `A`-`D`), whether it is an end packet, and the RTP timestamp that identifies the
/// event (its packets and their retransmissions share it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub event: u8,
    pub end: bool,
    pub timestamp: u32,
}

impl TelephoneEvent {
    /// The DTMF digit of the event, `None` for other events (RFC 4733 §3.2 / RFC 4734).
    pub fn digit(&self) -> Option<char> {
        match self.event {
            0..=9 => Some(char::from(b'0' + self.event)),
            10 => Some('*'),
            11 => Some('#'),
            12..=15 => Some(char::from(b'A' + self.event - 12)),
            _ => None,
        }
    }
}

/// The payload of an RTP packet (`packet` whole): past the CSRCs and a header extension,
/// without padding. `None` when the packet is too short for what its header says.
pub fn rtp_payload(packet: &[u8]) -> Option<&[u8]> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return None;
    }
    let cc = usize::from(packet[0] & 0x0f);
    let mut off = 12 + 4 * cc;
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(off + 2..off + 4)?;
        off += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    let mut end = packet.len();
    if packet[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*packet.last()?))?;
    }
    packet.get(off..end)
}

/// The telephone-event of an RTP packet (`packet` whole, header included), `None` when it
/// has no event payload.
pub fn telephone_event(packet: &[u8]) -> Option<TelephoneEvent> {
    let p = rtp_payload(packet)?.get(..4)?;
    Some(TelephoneEvent {
        event: p[0],
        end: p[1] & 0x80 != 0,
        timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::g711::tone_power;

    #[test]
    fn a_player_sends_a_packet_every_20_ms_with_its_own_numbering() {
        let t0 = Instant::now();
        let p = Prompt::tone(
            440.0,
            Duration::from_millis(60),
            Duration::ZERO,
            G711::Pcmu,
            false,
        );
        assert_eq!(p.duration(), Duration::from_millis(60));
        let mut pl = Player::new(p, t0, 7);
        let mut buf = [0u8; PACKET_LEN];
        let mut seqs = Vec::new();
        let mut samples = Vec::new();
        let mut t = t0;
        loop {
            match pl.frame(t, &mut buf) {
                Frame::Packet(n) => {
                    assert_eq!(n, PACKET_LEN);
                    assert_eq!(buf[1] & 0x7f, 0, "PCMU");
                    assert_eq!(buf[1] & 0x80 != 0, seqs.is_empty(), "marker on the first");
                    seqs.push(u16::from_be_bytes([buf[2], buf[3]]));
                    samples.extend(buf[12..].iter().map(|b| G711::Pcmu.decode(*b)));
                    // Not again before its time.
                    assert_eq!(pl.frame(t, &mut buf), Frame::NotBefore(t + FRAME));
                }
                Frame::NotBefore(at) => t = at,
                Frame::Finished => break,
            }
        }
        assert_eq!(seqs.len(), 3);
        assert_eq!(seqs[1], seqs[0].wrapping_add(1));
        assert!(tone_power(&samples, 440.0) > 0.4);
    }

    #[test]
    fn a_looped_prompt_starts_again_and_a_late_thread_skips_ahead() {
        let t0 = Instant::now();
        let p = Prompt::tone(
            1000.0,
            Duration::from_millis(20),
            Duration::ZERO,
            G711::Pcma,
            true,
        );
        let mut pl = Player::new(p.clone(), t0, 1);
        let mut buf = [0u8; PACKET_LEN];
        for i in 0..5 {
            assert!(matches!(
                pl.frame(t0 + FRAME * i, &mut buf),
                Frame::Packet(_)
            ));
        }
        let ts = |b: &[u8; PACKET_LEN]| u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        let before = ts(&buf);
        // One second late: one packet now, its timestamp a second on.
        let late = t0 + FRAME * 5 + Duration::from_secs(1);
        assert!(matches!(pl.frame(late, &mut buf), Frame::Packet(_)));
        assert_eq!(ts(&buf).wrapping_sub(before), 160 * 51);
        assert!(matches!(pl.frame(late, &mut buf), Frame::NotBefore(_)));
        assert_eq!(p.with_codec(G711::Pcmu).codec(), G711::Pcmu);
    }

    #[test]
    fn telephone_events_are_read_past_csrcs_and_extensions() {
        let mut pkt = vec![0x80, 101, 0, 1, 0, 0, 0x10, 0, 1, 2, 3, 4];
        pkt.extend_from_slice(&[1, 0x0a, 0, 160]);
        let ev = telephone_event(&pkt).expect("an event");
        assert_eq!(ev.digit(), Some('1'));
        assert!(!ev.end);
        assert_eq!(ev.timestamp, 0x1000);
        // One CSRC and a one-word extension before the payload; end bit set; '#'.
        let mut pkt = vec![0x91, 101, 0, 1, 0, 0, 0, 9, 1, 2, 3, 4, 9, 9, 9, 9];
        pkt.extend_from_slice(&[0xbe, 0xde, 0, 1, 0, 0, 0, 0]);
        pkt.extend_from_slice(&[11, 0x8a, 1, 0]);
        let ev = telephone_event(&pkt).expect("an event");
        assert_eq!(ev.digit(), Some('#'));
        assert!(ev.end);
        // Too short: nothing, no panic.
        assert_eq!(telephone_event(&pkt[..14]), None);
        assert_eq!(telephone_event(&[0x90, 101]), None);
        assert_eq!(
            TelephoneEvent {
                event: 16,
                end: false,
                timestamp: 0
            }
            .digit(),
            None
        );
    }
}
