//! Recording a session: both legs into one dual-channel WAV (8 kHz, 16-bit PCM; leg A on
//! the left, leg B on the right), written by a thread of its own.
//!
//! ```text
//!  forwarding thread                       recording thread (one per recording)
//!  ─────────────────                       ────────────────────────────────────
//!  RTP of a recorded session ──try_send──► bounded queue ──► G.711 decoded, placed by its
//!  (payload copied into a fixed frame;      (full: frame      arrival time on its channel
//!   no allocation, no file I/O; a full       dropped and       (a gap of more than 60 ms is
//!   queue drops the frame and counts it)     counted)          silence; a silent channel is
//!                                                              padded 200 ms behind the other)
//!                                                          ──► interleaved, written in 32 KiB
//!  session removed / stop_recording ──► queue closed ──► the rest padded to one length, the
//!                                                          header's sizes written: summary
//! ```
//!
//! A write that fails (a full disk, an I/O error) ends the recording — the session goes on
//! being relayed — and is reported as [`crate::MediaEvent::RecordingStopped`] and in the
//! [`RecordingSummary`]; what was written before stays a valid WAV as far as the header could
//! be completed. Payloads other than G.711 (telephone-events, comfort noise, other codecs)
//! leave silence.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::g711::G711;
use crate::{MediaEvent, SessionId};

/// Largest payload kept per packet (40 ms of G.711); longer payloads are cut.
pub(crate) const MAX_PAYLOAD: usize = 320;
/// Frames the queue holds: about 10 s of both legs at 20 ms.
const QUEUE: usize = 1024;
/// Samples per second.
const RATE: u64 = 8000;
/// A packet arriving this much after its channel's end starts after silence.
const GAP: u64 = 480;
/// A channel with no packets is padded with silence up to this far behind the arrivals.
const LAG: u64 = 1600;

/// One packet's payload on its way to the recording thread.
pub(crate) struct RecFrame {
    leg: u8,
    payload_type: u8,
    len: u16,
    at: Instant,
    payload: [u8; MAX_PAYLOAD],
}

/// The forwarding thread's end of a recording.
#[derive(Debug)]
pub(crate) struct RecTap {
    tx: SyncSender<RecFrame>,
    dropped: Arc<AtomicU64>,
}

impl RecTap {
    /// Hands one RTP packet (whole, header included) of leg `leg` over; never blocks.
    /// False when the recording thread is gone (the tap can be dropped).
    pub(crate) fn offer(&self, leg: usize, payload_type: u8, packet: &[u8], at: Instant) -> bool {
        let Some(payload) = crate::source::rtp_payload(packet) else {
            return true;
        };
        let len = payload.len().min(MAX_PAYLOAD);
        let mut f = RecFrame {
            leg: leg as u8,
            payload_type,
            len: len as u16,
            at,
            payload: [0; MAX_PAYLOAD],
        };
        f.payload[..len].copy_from_slice(&payload[..len]);
        match self.tx.try_send(f) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// How a recording ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordingSummary {
    pub path: PathBuf,
    /// Seconds of audio in the file.
    pub duration: Duration,
    /// Size of the file in bytes (header included).
    pub bytes: u64,
    /// Why the recording stopped before the session ended (a full disk...), if it did.
    pub error: Option<String>,
    /// Packets the recording thread could not keep up with (left as silence).
    pub frames_dropped: u64,
}

/// A running recording, as the control side holds it: [`Recording::wait`] for its summary
/// once the session was closed (or the recording stopped).
#[derive(Debug)]
pub struct Recording {
    thread: Option<JoinHandle<RecordingSummary>>,
    path: PathBuf,
    dropped: Arc<AtomicU64>,
}

impl Recording {
    /// Waits for the recording thread to finish the file. Blocks: call it off any async
    /// runtime thread (`spawn_blocking`).
    pub fn wait(mut self) -> RecordingSummary {
        let dropped = self.dropped.load(Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(mut s)) => {
                s.frames_dropped = dropped;
                s
            }
            _ => RecordingSummary {
                path: self.path.clone(),
                duration: Duration::ZERO,
                bytes: 0,
                error: Some("the recording thread failed".into()),
                frames_dropped: dropped,
            },
        }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Starts a recording thread writing `path`; returns the tap for the forwarding thread and
/// the handle. `events` hears when the recording stops early.
pub(crate) fn start(
    path: PathBuf,
    session: SessionId,
    events: UnboundedSender<MediaEvent>,
) -> std::io::Result<(RecTap, Recording)> {
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let p = path.clone();
    let thread = std::thread::Builder::new()
        .name(format!("media-rec-{}", session.0))
        .spawn(move || {
            let started = Instant::now();
            let file = File::create(&p);
            run(file, &p, rx, started, |reason| {
                let _ = events.send(MediaEvent::RecordingStopped {
                    session_id: session,
                    reason,
                });
            })
        })?;
    Ok((
        RecTap {
            tx,
            dropped: Arc::clone(&dropped),
        },
        Recording {
            thread: Some(thread),
            path,
            dropped,
        },
    ))
}

/// The two channels' samples not yet written, and where each channel ends.
struct Channels {
    /// Samples of each channel from `written` on.
    pending: [Vec<i16>; 2],
    /// Frames (sample pairs) written to the file.
    written: u64,
}

impl Channels {
    fn end(&self, ch: usize) -> u64 {
        self.written + self.pending[ch].len() as u64
    }

    fn pad_to(&mut self, ch: usize, until: u64) {
        let end = self.end(ch);
        if until > end {
            let n = (until - end) as usize;
            self.pending[ch].resize(self.pending[ch].len() + n, 0);
        }
    }

    /// The frames both channels have, interleaved, taken out.
    fn take_ready(&mut self, out: &mut Vec<u8>) {
        let n = self.pending[0].len().min(self.pending[1].len());
        out.clear();
        for i in 0..n {
            out.extend_from_slice(&self.pending[0][i].to_le_bytes());
            out.extend_from_slice(&self.pending[1][i].to_le_bytes());
        }
        self.pending[0].drain(..n);
        self.pending[1].drain(..n);
        self.written += n as u64;
    }
}

fn header(data_bytes: u32) -> [u8; 44] {
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&36u32.saturating_add(data_bytes).to_le_bytes());
    h[8..16].copy_from_slice(b"WAVEfmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&2u16.to_le_bytes()); // channels
    h[24..28].copy_from_slice(&8000u32.to_le_bytes());
    h[28..32].copy_from_slice(&32000u32.to_le_bytes()); // byte rate
    h[32..34].copy_from_slice(&4u16.to_le_bytes()); // block align
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    h
}

/// What the thread writes at once: about one second of audio.
const WRITE_CHUNK: usize = 32 * 1024;

/// Writes `buf`, counting what reached the file even when a write fails part-way.
fn write_counted<W: Write>(w: &mut W, buf: &[u8]) -> (usize, std::io::Result<()>) {
    let mut done = 0;
    while done < buf.len() {
        match w.write(&buf[done..]) {
            Ok(0) => return (done, Err(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (done, Err(e)),
        }
    }
    (done, Ok(()))
}

/// The file being written: what is on it, what waits to go.
struct Output<W> {
    w: W,
    /// Sample bytes on the file (after the header).
    on_file: u64,
    waiting: Vec<u8>,
}

impl<W: Write + Seek> Output<W> {
    /// Writes what waits; on a failure the header is made to say what did reach the file.
    fn write_waiting(&mut self) -> std::io::Result<()> {
        let (n, r) = write_counted(&mut self.w, &self.waiting);
        self.on_file += n as u64;
        self.waiting.clear();
        if r.is_err() {
            let _ = self.finish();
        }
        r
    }

    /// The header's sizes for what is on the file (whole sample frames only).
    fn finish(&mut self) -> std::io::Result<()> {
        let data = self.on_file - self.on_file % 4;
        self.w.seek(SeekFrom::Start(0))?;
        self.w
            .write_all(&header(u32::try_from(data).unwrap_or(u32::MAX)))?;
        self.w.flush()
    }
}

/// The recording thread: frames in, the file out (see the module documentation).
pub(crate) fn run<W: Write + Seek>(
    file: std::io::Result<W>,
    path: &Path,
    rx: Receiver<RecFrame>,
    started: Instant,
    stopped: impl Fn(String),
) -> RecordingSummary {
    let mut error = None;
    let mut out = match file {
        Ok(mut w) => match w.write_all(&header(0)) {
            Ok(()) => Some(Output {
                w,
                on_file: 0,
                waiting: Vec::with_capacity(WRITE_CHUNK + 4096),
            }),
            Err(e) => {
                error = Some(e.to_string());
                None
            }
        },
        Err(e) => {
            error = Some(e.to_string());
            None
        }
    };
    if let Some(e) = &error {
        stopped(format!("cannot write {}: {e}", path.display()));
    }
    let mut ch = Channels {
        pending: [Vec::with_capacity(8000), Vec::with_capacity(8000)],
        written: 0,
    };
    let mut bytes = Vec::with_capacity(32_000);
    let mut on_file = 0;
    while let Ok(f) = rx.recv() {
        let Some(o) = out.as_mut() else {
            continue; // stopped: drain until the session ends
        };
        let Some(law) = G711::from_payload_type(f.payload_type) else {
            continue;
        };
        let c = usize::from(f.leg & 1);
        let n = u64::from(f.len);
        let arrived = f.at.saturating_duration_since(started);
        let now = (arrived.as_micros() as u64) * RATE / 1_000_000;
        let first = now.saturating_sub(n);
        if first > ch.end(c) + GAP {
            ch.pad_to(c, first);
        }
        let payload = &f.payload[..usize::from(f.len)];
        ch.pending[c].extend(payload.iter().map(|b| law.decode(*b)));
        ch.pad_to(1 - c, now.saturating_sub(LAG));
        ch.take_ready(&mut bytes);
        o.waiting.extend_from_slice(&bytes);
        if o.waiting.len() >= WRITE_CHUNK {
            if let Err(e) = o.write_waiting() {
                let reason = format!("writing {} failed: {e}", path.display());
                stopped(reason.clone());
                error = Some(reason);
                on_file = o.on_file - o.on_file % 4;
                out = None;
            }
        }
    }
    if let Some(mut o) = out {
        let end = ch.end(0).max(ch.end(1));
        ch.pad_to(0, end);
        ch.pad_to(1, end);
        ch.take_ready(&mut bytes);
        o.waiting.extend_from_slice(&bytes);
        let done = o.write_waiting().and_then(|()| o.finish());
        if let Err(e) = done {
            let reason = format!("writing {} failed: {e}", path.display());
            stopped(reason.clone());
            error = Some(reason);
        }
        on_file = o.on_file - o.on_file % 4;
    }
    RecordingSummary {
        path: path.to_path_buf(),
        duration: Duration::from_millis(on_file * 1000 / (RATE * 4)),
        bytes: if on_file > 0 || error.is_none() {
            44 + on_file
        } else {
            0
        },
        error,
        frames_dropped: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::g711::{parse_wav_stereo, tone_power, Tone};
    use std::io::Cursor;

    fn frame(leg: u8, at: Instant, samples: &[i16]) -> RecFrame {
        let mut f = RecFrame {
            leg,
            payload_type: 0,
            len: samples.len() as u16,
            at,
            payload: [0; MAX_PAYLOAD],
        };
        for (o, s) in f.payload.iter_mut().zip(samples) {
            *o = G711::Pcmu.encode(*s);
        }
        f
    }

    /// Runs the writer over `frames` into memory (or into a sink that fails after `limit`
    /// bytes).
    fn record(
        frames: Vec<RecFrame>,
        t0: Instant,
        limit: Option<usize>,
    ) -> (Vec<u8>, RecordingSummary, Vec<String>) {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        for f in frames {
            tx.send(f).unwrap();
        }
        drop(tx);
        let stops = std::sync::Mutex::new(Vec::new());
        let mut sink = Limited {
            inner: Cursor::new(Vec::new()),
            limit: limit.unwrap_or(usize::MAX),
        };
        let s = run(Ok(&mut sink), Path::new("x.wav"), rx, t0, |r| {
            stops.lock().unwrap().push(r)
        });
        (sink.inner.into_inner(), s, stops.into_inner().unwrap())
    }

    /// A file that fills up: writes past `limit` bytes fail as a full disk does.
    struct Limited {
        inner: Cursor<Vec<u8>>,
        limit: usize,
    }

    impl Write for Limited {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            // Overwriting what is there always works; new bytes only up to the limit (a
            // partial write first, as a filling disk gives).
            let pos = self.inner.position() as usize;
            let room = self
                .limit
                .max(self.inner.get_ref().len())
                .saturating_sub(pos);
            if room == 0 {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.inner.write(&buf[..buf.len().min(room)])
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Seek for Limited {
        fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
            self.inner.seek(pos)
        }
    }

    #[test]
    fn two_legs_go_left_and_right_time_aligned_with_gaps_as_silence() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let (mut a, mut b) = (Tone::new(500.0), Tone::new(1500.0));
        let mut frames = Vec::new();
        let mut buf = [0i16; 160];
        // Leg A speaks for 1 s from the start; leg B from 0.5 s to 1.5 s; A is silent
        // (no packets) from 1 s to 2 s, then speaks again for 0.5 s.
        for i in 0..125u64 {
            let at = 20 * (i + 1);
            if at <= 1000 || (2000..2500).contains(&at) {
                a.fill(&mut buf);
                frames.push(frame(0, ms(at), &buf));
            }
            if (520..=1500).contains(&at) {
                b.fill(&mut buf);
                frames.push(frame(1, ms(at), &buf));
            }
        }
        frames.sort_by_key(|f| f.at);
        let (file, s, stops) = record(frames, t0, None);
        assert!(stops.is_empty(), "{stops:?}");
        assert_eq!(s.error, None);
        assert_eq!(s.bytes, file.len() as u64);
        let samples = parse_wav_stereo(&file).expect("a stereo WAV");
        let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
        let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
        assert!(
            (2.4..2.6).contains(&(left.len() as f64 / 8000.0)),
            "{}",
            left.len()
        );
        assert_eq!(
            s.duration.as_millis() / 100,
            (left.len() as u128 * 1000 / 8000) / 100
        );
        let win = |v: &[i16], from_ms: usize| v[from_ms * 8..from_ms * 8 + 1600].to_vec();
        // 0.1-0.3 s: A only, on the left.
        assert!(tone_power(&win(&left, 100), 500.0) > 0.3);
        assert_eq!(tone_power(&win(&right, 100), 1500.0), 0.0);
        // 0.7-0.9 s: both, each on its own side.
        assert!(tone_power(&win(&left, 700), 500.0) > 0.3);
        assert!(tone_power(&win(&right, 700), 1500.0) > 0.3);
        assert!(tone_power(&win(&left, 700), 1500.0) < 0.01);
        // 1.2-1.4 s: A's gap is silence, B goes on.
        assert!(win(&left, 1200).iter().all(|s| *s == 0));
        assert!(tone_power(&win(&right, 1200), 1500.0) > 0.3);
        // 2.1-2.3 s: A again, at its time (not right after its last packet).
        assert!(tone_power(&win(&left, 2100), 500.0) > 0.3);
        assert!(win(&left, 1700).iter().all(|s| *s == 0));
    }

    #[test]
    fn a_full_disk_stops_the_recording_with_what_was_written_readable() {
        let t0 = Instant::now();
        let mut tone = Tone::new(800.0);
        let mut buf = [0i16; 160];
        let mut frames = Vec::new();
        for i in 0..200u64 {
            tone.fill(&mut buf);
            for leg in 0..2 {
                frames.push(frame(leg, t0 + Duration::from_millis(20 * (i + 1)), &buf));
            }
        }
        // Room for about one second of audio.
        let (file, s, stops) = record(frames, t0, Some(44 + 32_000));
        assert_eq!(stops.len(), 1, "reported once: {stops:?}");
        let e = s.error.expect("the error is in the summary");
        assert!(e.contains("writing x.wav failed"), "{e}");
        let samples = parse_wav_stereo(&file).expect("still a WAV");
        assert!(
            samples.len() / 2 <= 8000 && samples.len() / 2 > 4000,
            "{}",
            samples.len()
        );
        assert!(s.duration <= Duration::from_secs(1));
    }

    #[test]
    fn a_file_that_cannot_be_created_is_reported() {
        let (_tx, rx) = mpsc::sync_channel::<RecFrame>(1);
        drop(_tx);
        let stops = std::sync::Mutex::new(Vec::new());
        let s = run::<Cursor<Vec<u8>>>(
            Err(std::io::Error::from_raw_os_error(libc::EACCES)),
            Path::new("/nope/x.wav"),
            rx,
            Instant::now(),
            |r| stops.lock().unwrap().push(r),
        );
        assert!(s.error.is_some());
        assert_eq!(s.bytes, 0);
        assert_eq!(stops.into_inner().unwrap().len(), 1);
    }
}
