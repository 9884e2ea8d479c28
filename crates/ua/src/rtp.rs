//! RTP (RFC 3550) for the user agent: the fixed header, a receive counter with the
//! extended sequence number and loss of §A.3, and the media task that sends 20 ms G.711
//! frames, echoes, records and counts.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |V=2|P|X|  CC   |M|     PT      |       sequence number         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                           timestamp                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           synchronization source (SSRC) identifier            |
//! +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
//! ```

use crate::g711::{Tone, G711};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// The packet interval.
pub const PTIME: Duration = Duration::from_millis(20);

/// The fixed RTP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    /// Appends the 12-byte header and `payload` to `out`.
    pub fn write(&self, payload: &[u8], out: &mut Vec<u8>) {
        out.push(0x80);
        out.push((u8::from(self.marker) << 7) | (self.payload_type & 0x7F));
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// The header and payload of a packet: version 2, CSRCs and a header extension skipped,
    /// padding removed. `None` for anything that is not a well-formed RTP packet.
    pub fn parse(packet: &[u8]) -> Option<(RtpHeader, &[u8])> {
        if packet.len() < 12 || packet[0] >> 6 != 2 {
            return None;
        }
        let cc = usize::from(packet[0] & 0x0F);
        let mut start = 12 + 4 * cc;
        if packet[0] & 0x10 != 0 {
            let len = packet.get(start + 2..start + 4)?;
            start += 4 + 4 * usize::from(u16::from_be_bytes([len[0], len[1]]));
        }
        let mut end = packet.len();
        if packet[0] & 0x20 != 0 {
            end = end.checked_sub(usize::from(*packet.last()?))?;
        }
        let payload = packet.get(start..end)?;
        Some((
            RtpHeader {
                marker: packet[1] & 0x80 != 0,
                payload_type: packet[1] & 0x7F,
                sequence: u16::from_be_bytes([packet[2], packet[3]]),
                timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
                ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
            },
            payload,
        ))
    }
}

/// What a call's media sent and received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RtpStats {
    pub sent_packets: u64,
    pub sent_bytes: u64,
    pub received_packets: u64,
    pub received_bytes: u64,
    /// Packets expected (from the extended sequence numbers) but not received (RFC 3550
    /// §A.3); reordered and duplicated packets can make it negative, shown as 0.
    pub lost: u64,
    /// Datagrams that were not RTP.
    pub malformed: u64,
    /// Where the first packet came from.
    pub remote: Option<SocketAddr>,
    /// The SSRC heard last.
    pub remote_ssrc: Option<u32>,
    /// Time from the start of media to the first and the last packet received.
    pub first_received: Option<Duration>,
    pub last_received: Option<Duration>,
}

impl std::fmt::Display for RtpStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} packets ({} bytes), received {} packets ({} bytes), lost {}",
            self.sent_packets,
            self.sent_bytes,
            self.received_packets,
            self.received_bytes,
            self.lost
        )?;
        if let Some(r) = self.remote {
            write!(f, ", from {r}")?;
        }
        Ok(())
    }
}

/// The receive side of §A.1/§A.3: extended highest sequence number and loss.
#[derive(Debug, Clone, Default)]
pub struct SequenceTracker {
    ssrc: Option<u32>,
    base: u32,
    cycles: u32,
    max_seq: u16,
    received: u64,
}

impl SequenceTracker {
    /// Counts one packet (a new SSRC starts over).
    pub fn on_packet(&mut self, ssrc: u32, seq: u16) {
        if self.ssrc != Some(ssrc) {
            *self = SequenceTracker {
                ssrc: Some(ssrc),
                base: u32::from(seq),
                cycles: 0,
                max_seq: seq,
                received: 1,
            };
            return;
        }
        let delta = seq.wrapping_sub(self.max_seq);
        if delta != 0 && delta < 0x8000 {
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(1 << 16);
            }
            self.max_seq = seq;
        }
        self.received += 1;
    }

    /// Packets expected so far.
    pub fn expected(&self) -> u64 {
        if self.ssrc.is_none() {
            return 0;
        }
        let extended = u64::from(self.cycles) + u64::from(self.max_seq);
        (extended + 1).saturating_sub(u64::from(self.base))
    }

    /// Expected minus received, at least 0.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }
}

/// What a call sends.
#[derive(Debug, Clone)]
pub enum MediaMode {
    /// A sine tone of this many Hz.
    Tone(f64),
    /// These samples (8 kHz mono), looped.
    Wav(Arc<[i16]>),
    /// Every packet received goes back to where it came from.
    Echo,
    /// Nothing: only count.
    Count,
}

/// The media of one call: the socket and where to send.
pub struct MediaPlan {
    pub socket: UdpSocket,
    /// The peer's RTP address from its SDP (none: do not send until a packet arrives).
    pub remote: Option<SocketAddr>,
    pub codec: G711,
    pub mode: MediaMode,
    /// A WAV file for what was received (decoded G.711).
    pub record: Option<PathBuf>,
    /// DTMF to send as RFC 4733 telephone-events with this payload type (the one the peer
    /// took), when asked for.
    pub dtmf: Option<(Dtmf, u8)>,
}

/// Digits sent as RFC 4733 events, starting this long after the media starts; each event
/// lasts 100 ms (five packets, then three end packets), with 200 ms between digits. The
/// audio pauses while an event is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dtmf {
    pub after: Duration,
    pub digits: String,
}

/// The RFC 4733 event code of a DTMF digit.
pub fn event_code(d: char) -> Option<u8> {
    match d {
        '0'..='9' => Some(d as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(d as u8 - b'A' + 12),
        _ => None,
    }
}

/// Where the sending of the digits stands.
struct DtmfSender {
    pt: u8,
    codes: Vec<u8>,
    next_at: Duration,
    /// (event code, packets sent, the event's timestamp).
    current: Option<(u8, u16, u32)>,
}

impl DtmfSender {
    /// The event packet's payload and timestamp for this tick, if an event is being sent
    /// (or starts now); after an event's last packet the header's timestamp moves past it.
    fn payload(&mut self, elapsed: Duration, header: &mut RtpHeader) -> Option<([u8; 4], u32)> {
        if self.current.is_none() {
            if elapsed < self.next_at || self.codes.is_empty() {
                return None;
            }
            let code = self.codes.remove(0);
            self.current = Some((code, 0, header.timestamp));
            header.marker = true;
        }
        let (code, n, ts) = self.current?;
        let n = n + 1;
        self.current = Some((code, n, ts));
        // Five packets growing in duration, then three end packets of the final duration.
        let dur = (160u16 * n.min(5)).to_be_bytes();
        let end = n > 5;
        let p = [code, (u8::from(end) << 7) | 10, dur[0], dur[1]];
        if n >= 8 {
            self.current = None;
            self.next_at = elapsed + Duration::from_millis(200);
            // The audio resumes past the event's duration.
            header.timestamp = ts.wrapping_add(800);
        }
        Some((p, ts))
    }
}

/// A running media task.
pub struct MediaHandle {
    stop: Option<oneshot::Sender<()>>,
    /// Where the task sends: the peer's address, changed by a re-INVITE.
    remote: Arc<Mutex<Option<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<Mutex<RtpStats>>,
}

impl MediaHandle {
    /// The counters so far.
    pub fn stats(&self) -> RtpStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Sends to `to` from now on (the peer's SDP moved its media, e.g. by a re-INVITE).
    pub fn set_remote(&self, to: SocketAddr) {
        if let Ok(mut r) = self.remote.lock() {
            *r = Some(to);
        }
    }

    /// Stops the task (bounded) and returns the final counters.
    pub async fn stop(mut self) -> RtpStats {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        self.task.abort();
        self.stats()
    }
}

/// Starts sending and receiving.
pub fn start(plan: MediaPlan) -> MediaHandle {
    let (stop_tx, stop_rx) = oneshot::channel();
    let stats = Arc::new(Mutex::new(RtpStats::default()));
    let remote = Arc::new(Mutex::new(plan.remote));
    let task = tokio::spawn(run(plan, stop_rx, Arc::clone(&stats), Arc::clone(&remote)));
    MediaHandle {
        stop: Some(stop_tx),
        remote,
        task,
        stats,
    }
}

async fn run(
    plan: MediaPlan,
    mut stop: oneshot::Receiver<()>,
    shared: Arc<Mutex<RtpStats>>,
    remote: Arc<Mutex<Option<SocketAddr>>>,
) {
    let MediaPlan {
        socket,
        codec,
        mode,
        record,
        dtmf,
        ..
    } = plan;
    let started = Instant::now();
    let mut dtmf = dtmf.map(|(d, pt)| DtmfSender {
        pt,
        codes: d.digits.chars().filter_map(event_code).collect(),
        next_at: d.after,
        current: None,
    });
    let mut header = RtpHeader {
        marker: true,
        payload_type: codec.payload_type(),
        sequence: rand::random(),
        timestamp: rand::random(),
        ssrc: rand::random(),
    };
    let mut tone = match &mode {
        MediaMode::Tone(hz) => Some(Tone::new(*hz)),
        _ => None,
    };
    let mut wav_pos = 0usize;
    let sends = matches!(mode, MediaMode::Tone(_) | MediaMode::Wav(_)) || dtmf.is_some();
    let mut tick = tokio::time::interval(PTIME);
    // A sound card's clock does not wait for the CPU: frames missed while this task was held
    // up are sent at once, so the stream's timestamps keep pace with the wall clock (a
    // delayed tick would stretch the call's audio and drift from what a recorder or a jitter
    // buffer on the other side expects).
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut stats = RtpStats::default();
    let mut seq = SequenceTracker::default();
    let mut recorded: Vec<i16> = Vec::new();
    let mut samples = [0i16; FRAME_SAMPLES];
    let mut payload = Vec::with_capacity(FRAME_SAMPLES);
    let mut out = Vec::with_capacity(12 + FRAME_SAMPLES);
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick(), if sends => {
                let Some(to) = remote.lock().ok().and_then(|r| *r) else { continue };
                let mut event = None;
                if let Some(d) = dtmf.as_mut() {
                    if let Some((p, ts)) = d.payload(started.elapsed(), &mut header) {
                        event = Some((p, ts, d.pt));
                    }
                }
                if let Some((p, timestamp, pt)) = event {
                    out.clear();
                    let h = RtpHeader { payload_type: pt, timestamp, ..header };
                    h.write(&p, &mut out);
                    if socket.send_to(&out, to).await.is_ok() {
                        stats.sent_packets += 1;
                        stats.sent_bytes += out.len() as u64;
                    }
                    header.marker = false;
                    header.sequence = header.sequence.wrapping_add(1);
                    continue;
                }
                if !matches!(mode, MediaMode::Tone(_) | MediaMode::Wav(_)) {
                    continue;
                }
                match &mode {
                    MediaMode::Wav(w) if !w.is_empty() => {
                        for s in samples.iter_mut() {
                            *s = w[wav_pos % w.len()];
                            wav_pos = (wav_pos + 1) % w.len();
                        }
                    }
                    _ => match tone.as_mut() {
                        Some(t) => t.fill(&mut samples),
                        None => samples = [0; FRAME_SAMPLES],
                    },
                }
                payload.clear();
                payload.extend(samples.iter().map(|s| codec.encode(*s)));
                out.clear();
                header.write(&payload, &mut out);
                if socket.send_to(&out, to).await.is_ok() {
                    stats.sent_packets += 1;
                    stats.sent_bytes += out.len() as u64;
                }
                header.marker = false;
                header.sequence = header.sequence.wrapping_add(1);
                header.timestamp = header.timestamp.wrapping_add(FRAME_SAMPLES as u32);
            }
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let Some((h, body)) = RtpHeader::parse(&buf[..n]) else {
                    stats.malformed += 1;
                    continue;
                };
                let at = started.elapsed();
                stats.received_packets += 1;
                stats.received_bytes += n as u64;
                stats.remote.get_or_insert(from);
                stats.remote_ssrc = Some(h.ssrc);
                stats.first_received.get_or_insert(at);
                stats.last_received = Some(at);
                seq.on_packet(h.ssrc, h.sequence);
                stats.lost = seq.lost();
                if record.is_some() {
                    if let Some(law) = G711::from_payload_type(h.payload_type) {
                        recorded.extend(body.iter().map(|c| law.decode(*c)));
                    }
                }
                if matches!(mode, MediaMode::Echo) {
                    header.payload_type = h.payload_type;
                    out.clear();
                    header.write(body, &mut out);
                    if socket.send_to(&out, from).await.is_ok() {
                        stats.sent_packets += 1;
                        stats.sent_bytes += out.len() as u64;
                    }
                    header.marker = false;
                    header.sequence = header.sequence.wrapping_add(1);
                    header.timestamp = header.timestamp.wrapping_add(body.len() as u32);
                }
            }
        }
        if let Ok(mut s) = shared.lock() {
            *s = stats.clone();
        }
    }
    if let Ok(mut s) = shared.lock() {
        *s = stats;
    }
    if let Some(path) = record {
        if let Err(e) = tokio::fs::write(&path, crate::g711::wav_bytes(&recorded)).await {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the recording");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_malformed_packets() {
        let h = RtpHeader {
            marker: true,
            payload_type: 8,
            sequence: 65535,
            timestamp: 0xDEAD_BEEF,
            ssrc: 0x0102_0304,
        };
        let mut out = Vec::new();
        h.write(&[1, 2, 3], &mut out);
        assert_eq!(out.len(), 15);
        assert_eq!(&out[..2], &[0x80, 0x88]);
        let (back, body) = RtpHeader::parse(&out).unwrap();
        assert_eq!(back, h);
        assert_eq!(body, &[1, 2, 3]);
        assert!(RtpHeader::parse(&out[..11]).is_none());
        let mut v1 = out.clone();
        v1[0] = 0x40;
        assert!(RtpHeader::parse(&v1).is_none());
        // Padding longer than the packet.
        let mut pad = out.clone();
        pad[0] |= 0x20;
        *pad.last_mut().unwrap() = 200;
        assert!(RtpHeader::parse(&pad).is_none());
        // One CSRC and padding of 2.
        let mut csrc = vec![
            0x81 | 0x20,
            0,
            0,
            1,
            0,
            0,
            0,
            2,
            0,
            0,
            0,
            3,
            9,
            9,
            9,
            9,
            7,
            7,
            2,
        ];
        let (h, body) = RtpHeader::parse(&csrc).unwrap();
        assert_eq!((h.sequence, h.ssrc), (1, 3));
        assert_eq!(body, &[7]);
        csrc.truncate(14);
        assert!(RtpHeader::parse(&csrc).is_none());
    }

    #[test]
    fn loss_counts_gaps_across_the_sequence_wrap() {
        let mut t = SequenceTracker::default();
        assert_eq!(t.expected(), 0);
        for s in [65533u16, 65534, 65535, 0, 2, 3] {
            t.on_packet(7, s);
        }
        assert_eq!(t.expected(), 7);
        assert_eq!(t.lost(), 1);
        // A late packet fills the gap without moving the highest sequence.
        t.on_packet(7, 1);
        assert_eq!(t.expected(), 7);
        assert_eq!(t.lost(), 0);
        // A new source starts over.
        t.on_packet(8, 100);
        assert_eq!((t.expected(), t.lost()), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn tone_is_paced_in_20ms_frames_with_proper_headers() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b_addr = b.local_addr().unwrap();
        let h = start(MediaPlan {
            socket: a,
            remote: Some(b_addr),
            codec: G711::Pcmu,
            mode: MediaMode::Tone(440.0),
            record: None,
            dtmf: None,
        });
        let mut buf = [0u8; 512];
        let mut last: Option<RtpHeader> = None;
        for i in 0..10 {
            let n = tokio::time::timeout(Duration::from_secs(1), b.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(n, 12 + 160);
            let (hdr, _) = RtpHeader::parse(&buf[..n]).unwrap();
            assert_eq!(hdr.payload_type, 0);
            assert_eq!(hdr.marker, i == 0);
            if let Some(p) = last {
                assert_eq!(hdr.sequence, p.sequence.wrapping_add(1));
                assert_eq!(hdr.timestamp, p.timestamp.wrapping_add(160));
                assert_eq!(hdr.ssrc, p.ssrc);
            }
            last = Some(hdr);
        }
        let st = h.stop().await;
        assert!(st.sent_packets >= 10, "{st:?}");
        assert_eq!(st.received_packets, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dtmf_digits_go_as_rfc_4733_events_between_the_audio() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b_addr = b.local_addr().unwrap();
        let h = start(MediaPlan {
            socket: a,
            remote: Some(b_addr),
            codec: G711::Pcma,
            mode: MediaMode::Tone(440.0),
            record: None,
            dtmf: Some((
                Dtmf {
                    after: Duration::from_millis(100),
                    digits: "1#".into(),
                },
                101,
            )),
        });
        let mut buf = [0u8; 512];
        let mut events: Vec<(u8, bool, u32)> = Vec::new();
        let mut seqs = Vec::new();
        for _ in 0..40 {
            let n = tokio::time::timeout(Duration::from_secs(1), b.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            let (hdr, body) = RtpHeader::parse(&buf[..n]).unwrap();
            seqs.push(hdr.sequence);
            if hdr.payload_type == 101 {
                assert_eq!(body.len(), 4);
                events.push((body[0], body[1] & 0x80 != 0, hdr.timestamp));
            } else {
                assert_eq!(hdr.payload_type, 8);
            }
        }
        h.stop().await;
        // Digit 1: 5 packets, then 3 end packets, all with one timestamp; then #.
        let ones: Vec<_> = events.iter().filter(|e| e.0 == 1).collect();
        assert_eq!(ones.len(), 8, "{events:?}");
        assert_eq!(ones.iter().filter(|e| e.1).count(), 3);
        assert!(ones.iter().all(|e| e.2 == ones[0].2));
        assert!(events.iter().any(|e| e.0 == 11), "{events:?}");
        assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
        assert_eq!(event_code('D'), Some(15));
        assert_eq!(event_code('x'), None);
    }

    #[tokio::test]
    async fn echo_returns_packets_and_records_them() {
        let dir = std::env::temp_dir().join(format!("ua-rec-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let wav = dir.join("rec.wav");
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a_addr = a.local_addr().unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let h = start(MediaPlan {
            socket: a,
            remote: None,
            codec: G711::Pcma,
            mode: MediaMode::Echo,
            record: Some(wav.clone()),
            dtmf: None,
        });
        let mut buf = [0u8; 512];
        for i in 0..5u16 {
            let mut p = Vec::new();
            RtpHeader {
                marker: false,
                payload_type: 8,
                sequence: 10 + i,
                timestamp: 0,
                ssrc: 42,
            }
            .write(&[0xD5; 160], &mut p);
            peer.send_to(&p, a_addr).await.unwrap();
            let n = tokio::time::timeout(Duration::from_secs(5), peer.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            let (h, body) = RtpHeader::parse(&buf[..n]).unwrap();
            assert_eq!(h.payload_type, 8);
            assert_ne!(h.ssrc, 42, "the echo carries its own SSRC");
            assert_eq!(body, &[0xD5; 160][..]);
        }
        peer.send_to(b"not rtp", a_addr).await.unwrap();
        // Bounded wait for the malformed datagram to be counted.
        for _ in 0..200 {
            if h.stats().malformed == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let st = h.stop().await;
        assert_eq!((st.received_packets, st.sent_packets, st.lost), (5, 5, 0));
        assert_eq!(st.malformed, 1);
        assert_eq!(st.remote, Some(peer.local_addr().unwrap()));
        let rec = crate::g711::parse_wav(&std::fs::read(&wav).unwrap()).unwrap();
        assert_eq!(rec.len(), 5 * 160);
        assert!(rec.iter().all(|s| *s == 8));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
