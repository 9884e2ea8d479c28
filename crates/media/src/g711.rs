//! G.711 (ITU-T G.711) µ-law and A-law companding, a sine tone source, a Goertzel tone
//! detector, and WAV files (RIFF, 8 kHz mono 16-bit PCM only).
//!
//! The encoders follow the reference segment tables of G.711: µ-law adds a bias of 0x84
//! and codes sign, a 3-bit segment and a 4-bit mantissa, inverted; A-law works on the
//! 13-bit magnitude and XORs even bits with 0x55.

/// One of the two G.711 laws, with its static RTP payload type (RFC 3551 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum G711 {
    /// µ-law, payload type 0.
    Pcmu,
    /// A-law, payload type 8.
    Pcma,
}

impl G711 {
    pub fn payload_type(self) -> u8 {
        match self {
            G711::Pcmu => 0,
            G711::Pcma => 8,
        }
    }

    /// The SDP encoding name.
    pub fn name(self) -> &'static str {
        match self {
            G711::Pcmu => "PCMU",
            G711::Pcma => "PCMA",
        }
    }

    /// The law of a payload type, if it is one.
    pub fn from_payload_type(pt: u8) -> Option<G711> {
        match pt {
            0 => Some(G711::Pcmu),
            8 => Some(G711::Pcma),
            _ => None,
        }
    }

    pub fn encode(self, sample: i16) -> u8 {
        match self {
            G711::Pcmu => linear_to_ulaw(sample),
            G711::Pcma => linear_to_alaw(sample),
        }
    }

    pub fn decode(self, code: u8) -> i16 {
        match self {
            G711::Pcmu => ulaw_to_linear(code),
            G711::Pcma => alaw_to_linear(code),
        }
    }
}

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32635;

/// 16-bit linear PCM to µ-law.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(ULAW_CLIP) + ULAW_BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && s & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// µ-law to 16-bit linear PCM.
pub fn ulaw_to_linear(code: u8) -> i16 {
    let u = !code;
    let exponent = i32::from((u >> 4) & 0x07);
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

const ALAW_SEGMENT_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

/// 16-bit linear PCM to A-law.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let mut pcm = i32::from(sample) >> 3;
    let mask = if pcm >= 0 {
        0xD5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    let Some(seg) = ALAW_SEGMENT_END.iter().position(|end| pcm <= *end) else {
        return 0x7F ^ mask;
    };
    let mut aval = (seg as i32) << 4;
    aval |= if seg < 2 {
        (pcm >> 1) & 0x0F
    } else {
        (pcm >> seg) & 0x0F
    };
    (aval as u8) ^ mask
}

/// A-law to 16-bit linear PCM.
pub fn alaw_to_linear(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mut t = i32::from(a & 0x0F) << 4;
    let seg = i32::from((a & 0x70) >> 4);
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    if a & 0x80 != 0 {
        t as i16
    } else {
        -t as i16
    }
}

/// A sine tone at 8 kHz.
#[derive(Debug, Clone)]
pub struct Tone {
    step: f64,
    phase: f64,
    amplitude: f64,
}

impl Tone {
    /// A tone of `hz` at about -10 dBFS.
    pub fn new(hz: f64) -> Tone {
        Tone {
            step: 2.0 * std::f64::consts::PI * hz / 8000.0,
            phase: 0.0,
            amplitude: 0.3 * f64::from(i16::MAX),
        }
    }

    /// Fills `out` with the next samples.
    pub fn fill(&mut self, out: &mut [i16]) {
        for s in out {
            *s = (self.phase.sin() * self.amplitude) as i16;
            self.phase += self.step;
            if self.phase > 2.0 * std::f64::consts::PI {
                self.phase -= 2.0 * std::f64::consts::PI;
            }
        }
    }
}

/// The power of `hz` in `samples` (8 kHz), by the Goertzel algorithm, normalised by the
/// signal's total power: near 0.5 for a pure tone at `hz`, near 0 when `hz` is absent.
/// Silence gives 0.
pub fn tone_power(samples: &[i16], hz: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let coeff = 2.0 * (2.0 * std::f64::consts::PI * hz / 8000.0).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut total = 0.0f64;
    for &x in samples {
        let x = f64::from(x);
        total += x * x;
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    if total == 0.0 {
        return 0.0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    power / (total * samples.len() as f64)
}

/// Why a WAV file is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WavError {
    #[error("not a RIFF/WAVE file")]
    NotWave,
    #[error("no fmt chunk")]
    NoFormat,
    #[error("no data chunk")]
    NoData,
    #[error(
        "unsupported format: {format_tag} ({channels} channel(s), {sample_rate} Hz, \
         {bits} bits); need PCM (1), 8000 Hz, 16 bits, 1 channel (2 for a recording)"
    )]
    Unsupported {
        format_tag: u16,
        channels: u16,
        sample_rate: u32,
        bits: u16,
    },
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// The samples of a WAV file that holds 8 kHz mono 16-bit PCM; anything else is refused
/// with what it is.
pub fn parse_wav(bytes: &[u8]) -> Result<Vec<i16>, WavError> {
    parse_wav_with(bytes, 1)
}

/// The interleaved samples (left, right, left, ...) of a WAV file that holds 8 kHz stereo
/// 16-bit PCM, as the relay's recordings are; anything else is refused with what it is.
pub fn parse_wav_stereo(bytes: &[u8]) -> Result<Vec<i16>, WavError> {
    parse_wav_with(bytes, 2)
}

fn parse_wav_with(bytes: &[u8], want_channels: u16) -> Result<Vec<i16>, WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWave);
    }
    let mut at = 12;
    let mut format = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = le32(bytes, at + 4).ok_or(WavError::NotWave)? as usize;
        let body = at + 8;
        let end = body.saturating_add(size).min(bytes.len());
        if id == b"fmt " {
            let f = (
                le16(bytes, body).ok_or(WavError::NoFormat)?,
                le16(bytes, body + 2).ok_or(WavError::NoFormat)?,
                le32(bytes, body + 4).ok_or(WavError::NoFormat)?,
                le16(bytes, body + 14).ok_or(WavError::NoFormat)?,
            );
            format = Some(f);
        } else if id == b"data" {
            let (format_tag, channels, sample_rate, bits) = format.ok_or(WavError::NoFormat)?;
            if format_tag != 1 || channels != want_channels || sample_rate != 8000 || bits != 16 {
                return Err(WavError::Unsupported {
                    format_tag,
                    channels,
                    sample_rate,
                    bits,
                });
            }
            return Ok(bytes[body..end]
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect());
        }
        at = body.saturating_add(size).saturating_add(size & 1);
    }
    Err(if format.is_some() {
        WavError::NoData
    } else {
        WavError::NoFormat
    })
}

/// A WAV file (8 kHz mono 16-bit PCM) holding `samples`.
pub fn wav_bytes(samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&16000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goertzel_finds_the_tone_that_is_there_and_not_the_other() {
        let mut samples = vec![0i16; 1600];
        Tone::new(1000.0).fill(&mut samples);
        assert!(tone_power(&samples, 1000.0) > 0.3);
        assert!(tone_power(&samples, 1400.0) < 0.01);
        // Through µ-law and back, the tone survives.
        let coded: Vec<i16> = samples
            .iter()
            .map(|&s| G711::Pcmu.decode(G711::Pcmu.encode(s)))
            .collect();
        assert!(tone_power(&coded, 1000.0) > 0.3);
        assert_eq!(tone_power(&[0; 160], 1000.0), 0.0);
        assert_eq!(tone_power(&[], 1000.0), 0.0);
    }

    #[test]
    fn silence_codes_are_the_reference_ones() {
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(alaw_to_linear(0xD5), 8);
        // Full scale.
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
    }

    #[test]
    fn round_trip_error_stays_within_the_segment_step() {
        for law in [G711::Pcmu, G711::Pcma] {
            for s in (-32000i32..32000).step_by(37) {
                let s = s as i16;
                let back = law.decode(law.encode(s));
                let err = (i32::from(back) - i32::from(s)).abs();
                // The step doubles per segment: 1/16 of the magnitude plus the finest step.
                let bound = i32::from(s).abs() / 16 + 16;
                assert!(err <= bound, "{law:?}: {s} -> {back} (err {err})");
                if s.unsigned_abs() > 16 {
                    assert_eq!(back.signum(), s.signum(), "{law:?} sign of {s}");
                }
            }
        }
    }

    #[test]
    fn every_code_decodes_and_reencodes_to_itself() {
        for c in 0..=255u8 {
            let u = ulaw_to_linear(c);
            // 0x7F and 0xFF are both zero in µ-law.
            if c != 0x7F {
                assert_eq!(linear_to_ulaw(u), c, "µ-law {c:#x} -> {u}");
            }
            let a = alaw_to_linear(c);
            assert_eq!(linear_to_alaw(a), c, "A-law {c:#x} -> {a}");
        }
    }

    #[test]
    fn tone_has_its_frequency() {
        let mut t = Tone::new(440.0);
        let mut buf = vec![0i16; 8000];
        t.fill(&mut buf);
        // Upward zero crossings in one second = the frequency.
        let crossings = buf.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
        assert!((439..=441).contains(&crossings), "{crossings}");
        let peak = buf.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
        assert!(peak > 9000 && peak < 10000, "{peak}");
    }

    #[test]
    fn wav_round_trip_and_refusals() {
        let samples: Vec<i16> = (0..400).map(|i| (i * 50 - 10000) as i16).collect();
        let bytes = wav_bytes(&samples);
        assert_eq!(parse_wav(&bytes), Ok(samples));
        assert_eq!(parse_wav(b"RIFX...."), Err(WavError::NotWave));
        let mut stereo = wav_bytes(&[1, 2, 3, 4]);
        stereo[22] = 2; // channels
        assert!(matches!(
            parse_wav(&stereo),
            Err(WavError::Unsupported { channels: 2, .. })
        ));
        let mut wide = wav_bytes(&[1, 2]);
        wide[24..28].copy_from_slice(&48000u32.to_le_bytes());
        let e = parse_wav(&wide).unwrap_err();
        assert!(e.to_string().contains("48000 Hz"), "{e}");
        assert_eq!(parse_wav(&wav_bytes(&[])[..36]), Err(WavError::NoData));
    }
}
