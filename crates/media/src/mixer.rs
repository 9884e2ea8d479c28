//! Mixing G.711 audio: the sample-level pieces of a monitored call (no sockets, no clock).
//!
//! ```text
//!   RTP payload (PCMU/PCMA) ──decode──► JitterBuffer (per input, by RTP timestamp)
//!                                              │ every 20 ms: one frame, silence if missing
//!                                              ▼
//!                         Mixer::tick ── for each output: Σ of the inputs it hears,
//!                                              │ saturated to i16, encoded in its law
//!                                              ▼
//!                                     RtpOut: our SSRC, sequence, timestamp
//! ```
//!
//! Only G.711 can be mixed here (the relay does no other transcoding): a leg with any other
//! codec is refused with [`MixError::CodecNotMixable`] (`codec_not_mixable` in the API).

use crate::g711::G711;

/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;

/// One 20 ms frame of 16-bit linear PCM.
pub type Frame = [i16; FRAME_SAMPLES];

/// Why a mix cannot be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixError {
    /// A leg's payload type is not G.711 (PCMU 0 / PCMA 8).
    #[error("payload type {0} cannot be mixed (only G.711 PCMU and PCMA can)")]
    CodecNotMixable(u8),
}

impl MixError {
    /// The API's error code.
    pub fn code(&self) -> &'static str {
        match self {
            MixError::CodecNotMixable(_) => "codec_not_mixable",
        }
    }
}

/// The law of a payload type that can be mixed.
pub fn mixable(payload_type: u8) -> Result<G711, MixError> {
    G711::from_payload_type(payload_type).ok_or(MixError::CodecNotMixable(payload_type))
}

/// Sums `inputs` sample by sample into `out`, saturating at the i16 range. No input gives
/// silence.
pub fn mix(inputs: &[&Frame], out: &mut Frame) {
    for (i, o) in out.iter_mut().enumerate() {
        let mut sum: i32 = 0;
        for f in inputs {
            sum += i32::from(f[i]);
        }
        *o = sum.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
    }
}

/// Encodes a frame into `out` (160 bytes).
pub fn encode_frame(law: G711, frame: &Frame, out: &mut [u8; FRAME_SAMPLES]) {
    for (o, &s) in out.iter_mut().zip(frame.iter()) {
        *o = law.encode(s);
    }
}

/// Size of a jitter buffer's ring, in samples (400 ms).
const RING: usize = 20 * FRAME_SAMPLES;
/// Packets arriving late in a row before the buffer starts again from the sender's clock.
const LATE_RESYNC: u32 = 5;

/// A small jitter buffer of one input: decoded samples placed by RTP timestamp, played out
/// `depth` frames behind the first packet; what is missing plays as silence, what comes after
/// its time is dropped.
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    samples: Box<[i16]>,
    filled: Box<[bool]>,
    /// The RTP timestamp of the next sample to play; `None` before the first packet.
    next_ts: Option<u32>,
    ssrc: Option<u32>,
    depth: u32,
    late_in_row: u32,
    /// Packets dropped because they came after their time.
    pub late: u64,
    /// Frames played that had no sample at all.
    pub missing: u64,
}

impl JitterBuffer {
    /// A buffer that holds audio back `depth` frames (1..=8; 2 = 40 ms is the relay's).
    pub fn new(depth: u32) -> JitterBuffer {
        JitterBuffer {
            samples: vec![0; RING].into_boxed_slice(),
            filled: vec![false; RING].into_boxed_slice(),
            next_ts: None,
            ssrc: None,
            depth: depth.clamp(1, 8),
            late_in_row: 0,
            late: 0,
            missing: 0,
        }
    }

    fn reset(&mut self, ts: u32, ssrc: u32) {
        self.filled.fill(false);
        self.next_ts = Some(ts.wrapping_sub(self.depth * FRAME_SAMPLES as u32));
        self.ssrc = Some(ssrc);
        self.late_in_row = 0;
    }

    /// Stores the samples of a packet with RTP timestamp `ts` of source `ssrc`.
    pub fn push(&mut self, ssrc: u32, ts: u32, samples: &[i16]) {
        if samples.is_empty() || samples.len() > RING / 2 {
            return;
        }
        let next = match self.next_ts {
            Some(n) if self.ssrc == Some(ssrc) => n,
            _ => {
                self.reset(ts, ssrc);
                ts.wrapping_sub(self.depth * FRAME_SAMPLES as u32)
            }
        };
        let offset = ts.wrapping_sub(next) as i32;
        let len = samples.len() as i32;
        if offset + len <= 0 || offset + len > RING as i32 {
            // Entirely late, or beyond the ring: a sender far off our clock starts over
            // after a few; a single straggler is dropped.
            if offset < 0 && -offset < RING as i32 {
                self.late += 1;
                self.late_in_row += 1;
                if self.late_in_row < LATE_RESYNC {
                    return;
                }
            }
            self.reset(ts, ssrc);
            return self.push(ssrc, ts, samples);
        }
        self.late_in_row = 0;
        for (i, &s) in samples.iter().enumerate() {
            let at = offset + i as i32;
            if at < 0 {
                continue;
            }
            let idx = (next.wrapping_add(at as u32) as usize) % RING;
            self.samples[idx] = s;
            self.filled[idx] = true;
        }
    }

    /// Plays the next 20 ms into `out`; false when none of it had arrived (silence).
    pub fn pop(&mut self, out: &mut Frame) -> bool {
        let Some(next) = self.next_ts else {
            out.fill(0);
            return false;
        };
        let mut any = false;
        for (i, o) in out.iter_mut().enumerate() {
            let idx = (next.wrapping_add(i as u32) as usize) % RING;
            if self.filled[idx] {
                *o = self.samples[idx];
                self.filled[idx] = false;
                any = true;
            } else {
                *o = 0;
            }
        }
        self.next_ts = Some(next.wrapping_add(FRAME_SAMPLES as u32));
        if !any {
            self.missing += 1;
        }
        any
    }
}

/// The RTP stream the mixer sends to one party: its own SSRC, sequence and timestamp.
#[derive(Debug, Clone)]
pub struct RtpOut {
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    pub law: G711,
    first: bool,
}

/// An RTP header plus one frame of G.711.
pub const PACKET_BYTES: usize = 12 + FRAME_SAMPLES;

impl RtpOut {
    pub fn new(ssrc: u32, law: G711) -> RtpOut {
        RtpOut {
            ssrc,
            seq: (ssrc >> 16) as u16,
            ts: ssrc.rotate_left(7),
            law,
            first: true,
        }
    }

    /// Writes the next packet of this stream carrying `frame`.
    pub fn packet(&mut self, frame: &Frame, out: &mut [u8; PACKET_BYTES]) {
        out[0] = 0x80;
        out[1] = self.law.payload_type() | if self.first { 0x80 } else { 0 };
        out[2..4].copy_from_slice(&self.seq.to_be_bytes());
        out[4..8].copy_from_slice(&self.ts.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        let mut payload = [0u8; FRAME_SAMPLES];
        encode_frame(self.law, frame, &mut payload);
        out[12..].copy_from_slice(&payload);
        self.first = false;
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(FRAME_SAMPLES as u32);
    }
}

/// One party of a mix: its jitter buffer (what it says) and its stream (what it hears).
#[derive(Debug, Clone)]
struct Party {
    jitter: JitterBuffer,
    frame: Frame,
    live: bool,
    out: RtpOut,
}

/// A mix of up to [`Mixer::MAX_PARTIES`] parties: each tick takes one frame from every
/// party and gives each listening party the sum of those it hears.
#[derive(Debug, Clone)]
pub struct Mixer {
    parties: Vec<Party>,
    scratch: Frame,
}

impl Mixer {
    pub const MAX_PARTIES: usize = 8;

    /// A mixer whose party `i` receives audio in `laws[i]`, with jitter buffers of `depth`
    /// frames. `ssrc_base` seeds the SSRCs of the streams it sends.
    pub fn new(laws: &[G711], depth: u32, ssrc_base: u32) -> Mixer {
        let parties = laws
            .iter()
            .take(Self::MAX_PARTIES)
            .enumerate()
            .map(|(i, &law)| Party {
                jitter: JitterBuffer::new(depth),
                frame: [0; FRAME_SAMPLES],
                live: false,
                out: RtpOut::new(
                    ssrc_base.wrapping_add(0x9E37_79B9u32.wrapping_mul(i as u32 + 1)),
                    law,
                ),
            })
            .collect();
        Mixer {
            parties,
            scratch: [0; FRAME_SAMPLES],
        }
    }

    /// How many parties.
    pub fn parties(&self) -> usize {
        self.parties.len()
    }

    /// Feeds an RTP packet that `party` sent. Payload types other than G.711 (RFC 4733
    /// events, comfort noise) are ignored. Returns whether it was taken.
    pub fn push_rtp(&mut self, party: usize, packet: &[u8]) -> bool {
        let Some(p) = self.parties.get_mut(party) else {
            return false;
        };
        let crate::rtp::Packet::Rtp(h) = crate::rtp::classify(packet) else {
            return false;
        };
        let Some(law) = G711::from_payload_type(h.payload_type) else {
            return false;
        };
        let Some(payload) = rtp_payload(packet) else {
            return false;
        };
        let mut buf = [0i16; 4 * FRAME_SAMPLES];
        let n = payload.len().min(buf.len());
        for (o, &c) in buf[..n].iter_mut().zip(payload) {
            *o = law.decode(c);
        }
        p.jitter.push(h.ssrc, h.timestamp, &buf[..n]);
        true
    }

    /// Feeds linear samples as party `party` said them (tests, prompts).
    pub fn push_samples(&mut self, party: usize, ssrc: u32, ts: u32, samples: &[i16]) {
        if let Some(p) = self.parties.get_mut(party) {
            p.jitter.push(ssrc, ts, samples);
        }
    }

    /// One 20 ms step: every party's next frame is taken (silence where missing); then for
    /// each party `o` with `hears(o, i)` true for some `i != o`, `emit(o, packet)` is called
    /// with the RTP packet of the sum of what it hears. `silenced(i)` parties count as
    /// silence (a muted party).
    pub fn tick(
        &mut self,
        hears: impl Fn(usize, usize) -> bool,
        silenced: impl Fn(usize) -> bool,
        mut emit: impl FnMut(usize, &[u8]),
    ) {
        for (i, p) in self.parties.iter_mut().enumerate() {
            p.live = p.jitter.pop(&mut p.frame) && !silenced(i);
        }
        let n = self.parties.len();
        let mut pkt = [0u8; PACKET_BYTES];
        for o in 0..n {
            if !(0..n).any(|i| i != o && hears(o, i)) {
                continue;
            }
            let mut refs: [&Frame; Self::MAX_PARTIES] = [&self.parties[o].frame; Self::MAX_PARTIES];
            let mut k = 0;
            for i in 0..n {
                if i != o && hears(o, i) && self.parties[i].live {
                    refs[k] = &self.parties[i].frame;
                    k += 1;
                }
            }
            mix(&refs[..k], &mut self.scratch);
            let frame = self.scratch;
            self.parties[o].out.packet(&frame, &mut pkt);
            emit(o, &pkt);
        }
    }

    /// Late packets and silent frames of one party's jitter buffer.
    pub fn jitter_stats(&self, party: usize) -> Option<(u64, u64)> {
        self.parties
            .get(party)
            .map(|p| (p.jitter.late, p.jitter.missing))
    }
}

/// The payload of an RTP packet (after CSRCs, header extension; padding removed).
pub fn rtp_payload(packet: &[u8]) -> Option<&[u8]> {
    if packet.len() < 12 {
        return None;
    }
    let cc = usize::from(packet[0] & 0x0F);
    let mut start = 12 + 4 * cc;
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(start + 2..start + 4)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    let mut end = packet.len();
    if packet[0] & 0x20 != 0 {
        let pad = usize::from(*packet.last()?);
        end = end.checked_sub(pad)?;
    }
    packet.get(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::g711::{tone_power, Tone};

    fn tone_frames(hz: f64, n: usize) -> Vec<Frame> {
        let mut t = Tone::new(hz);
        (0..n)
            .map(|_| {
                let mut f = [0; FRAME_SAMPLES];
                t.fill(&mut f);
                f
            })
            .collect()
    }

    #[test]
    fn mix_saturates_instead_of_wrapping() {
        let a = [30_000i16; FRAME_SAMPLES];
        let b = [10_000i16; FRAME_SAMPLES];
        let mut out = [0; FRAME_SAMPLES];
        mix(&[&a, &b], &mut out);
        assert!(out.iter().all(|&s| s == i16::MAX));
        let c = [-30_000i16; FRAME_SAMPLES];
        mix(&[&c, &c], &mut out);
        assert!(out.iter().all(|&s| s == i16::MIN));
        mix(&[], &mut out);
        assert!(out.iter().all(|&s| s == 0));
        mix(&[&a, &c], &mut out);
        assert!(out.iter().all(|&s| s == 0));
    }

    #[test]
    fn only_g711_is_mixable() {
        assert_eq!(mixable(0), Ok(G711::Pcmu));
        assert_eq!(mixable(8), Ok(G711::Pcma));
        for pt in [9u8, 18, 96, 111] {
            let e = mixable(pt).unwrap_err();
            assert_eq!(e, MixError::CodecNotMixable(pt));
            assert_eq!(e.code(), "codec_not_mixable");
        }
    }

    #[test]
    fn jitter_buffer_reorders_and_fills_gaps_with_silence() {
        let frames = tone_frames(440.0, 4);
        let mut jb = JitterBuffer::new(2);
        // Frames 0, 2, 1 arrive out of order; 3 never comes.
        jb.push(7, 1000, &frames[0]);
        jb.push(7, 1000 + 320, &frames[2]);
        jb.push(7, 1000 + 160, &frames[1]);
        let mut out = [0; FRAME_SAMPLES];
        // Two frames of delay first.
        assert!(!jb.pop(&mut out));
        assert!(!jb.pop(&mut out));
        for f in &frames[..3] {
            assert!(jb.pop(&mut out));
            assert_eq!(&out, f);
        }
        assert!(!jb.pop(&mut out), "frame 3 is missing");
        assert!(out.iter().all(|&s| s == 0));
        assert_eq!(jb.missing, 3);
        // Frame 1 again, long after its time: dropped.
        jb.push(7, 1000 + 160, &frames[1]);
        assert_eq!(jb.late, 1);
        assert!(!jb.pop(&mut out));
    }

    #[test]
    fn jitter_buffer_follows_a_new_source_and_a_timestamp_jump() {
        let frames = tone_frames(1000.0, 2);
        let mut jb = JitterBuffer::new(1);
        let mut out = [0; FRAME_SAMPLES];
        jb.push(1, 0, &frames[0]);
        assert!(!jb.pop(&mut out));
        assert!(jb.pop(&mut out));
        // Another SSRC (a re-INVITE moved the source): starts over on its clock.
        jb.push(2, 5_000_000, &frames[1]);
        assert!(!jb.pop(&mut out));
        assert!(jb.pop(&mut out));
        assert_eq!(out, frames[1]);
        // Same SSRC far ahead (a pause): starts over too.
        jb.push(2, 9_000_000, &frames[0]);
        assert!(!jb.pop(&mut out));
        assert!(jb.pop(&mut out));
        assert_eq!(out, frames[0]);
    }

    #[test]
    fn jitter_buffer_takes_other_packet_sizes() {
        // 10 ms packets make whole 20 ms frames.
        let f = tone_frames(440.0, 1)[0];
        let mut jb = JitterBuffer::new(1);
        jb.push(3, 80, &f[..80]);
        jb.push(3, 160, &f[80..]);
        let mut out = [0; FRAME_SAMPLES];
        jb.pop(&mut out);
        assert!(jb.pop(&mut out));
        assert_eq!(out, f);
    }

    /// Decodes the G.711 payload of packets the mixer emitted for one party.
    fn heard(packets: &[Vec<u8>]) -> Vec<i16> {
        let mut s = Vec::new();
        for p in packets {
            let law = G711::from_payload_type(p[1] & 0x7F).unwrap();
            s.extend(rtp_payload(p).unwrap().iter().map(|&c| law.decode(c)));
        }
        s
    }

    #[test]
    fn each_party_hears_the_sum_of_whom_it_hears_in_its_own_law() {
        // Party 0 (PCMU) says 440 Hz, party 1 (PCMA) 1000 Hz, party 2 (PCMU) 1800 Hz.
        let mut m = Mixer::new(&[G711::Pcmu, G711::Pcma, G711::Pcmu], 2, 42);
        let tones = [
            tone_frames(440.0, 50),
            tone_frames(1000.0, 50),
            tone_frames(1800.0, 50),
        ];
        let mut got: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
        let mut seqs: Vec<Vec<u16>> = vec![Vec::new(); 3];
        for k in 0..50 {
            for (p, t) in tones.iter().enumerate() {
                m.push_samples(p, 100 + p as u32, (k * FRAME_SAMPLES) as u32, &t[k]);
            }
            // 2 hears 0 and 1 (listen); 0 hears 1 and 2 (whisper); 1 hears nobody here.
            m.tick(
                |o, i| matches!((o, i), (2, 0) | (2, 1) | (0, 1) | (0, 2)),
                |_| false,
                |o, pkt| {
                    seqs[o].push(u16::from_be_bytes([pkt[2], pkt[3]]));
                    got[o].push(pkt.to_vec());
                },
            );
        }
        assert!(got[1].is_empty());
        assert_eq!(got[0].len(), 50);
        assert_eq!(got[0][0][1] & 0x7F, 0, "PCMU to party 0");
        assert!(seqs[0].windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
        // Skip the jitter buffer's delay.
        let sup = heard(&got[2][5..]);
        assert!(tone_power(&sup, 440.0) > 0.1);
        assert!(tone_power(&sup, 1000.0) > 0.1);
        assert!(tone_power(&sup, 1800.0) < 0.01);
        let agent = heard(&got[0][5..]);
        assert!(
            tone_power(&agent, 440.0) < 0.01,
            "a party never hears itself"
        );
        assert!(tone_power(&agent, 1000.0) > 0.1);
        assert!(tone_power(&agent, 1800.0) > 0.1);
    }

    #[test]
    fn a_silenced_party_is_left_out_of_the_mix() {
        let mut m = Mixer::new(&[G711::Pcmu, G711::Pcmu, G711::Pcmu], 1, 1);
        let tones = [tone_frames(440.0, 20), tone_frames(1000.0, 20)];
        let mut got = Vec::new();
        for k in 0..20 {
            for (p, t) in tones.iter().enumerate() {
                m.push_samples(p, 9, (k * FRAME_SAMPLES) as u32, &t[k]);
            }
            m.tick(
                |o, i| o == 2 && i != 2,
                |i| i == 0,
                |_, pkt| got.push(pkt.to_vec()),
            );
        }
        let s = heard(&got[3..]);
        assert!(tone_power(&s, 440.0) < 0.01);
        assert!(tone_power(&s, 1000.0) > 0.1);
    }

    #[test]
    fn rtp_payload_skips_csrcs_extensions_and_padding() {
        let mut p = vec![0x80 | 0x20 | 0x10 | 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
        p.extend([9, 9, 9, 9]); // one CSRC
        p.extend([0xBE, 0xDE, 0, 1, 1, 2, 3, 4]); // extension of one word
        p.extend([5, 6, 7]);
        p.extend([0, 2]); // two bytes of padding
        assert_eq!(rtp_payload(&p), Some(&[5u8, 6, 7][..]));
        assert_eq!(rtp_payload(&p[..14]), None);
        assert_eq!(rtp_payload(&[0x80; 5]), None);
    }
}
