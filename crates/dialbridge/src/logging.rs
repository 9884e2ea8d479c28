//! Where log lines go: standard error, through a bounded queue and a thread of its own, so
//! that logging never takes a request down.
//!
//! A log line is handed to the queue and the caller goes on; the writer thread writes it to
//! standard error within a few milliseconds, together with the lines that came meanwhile: it
//! is woken only when it waits for a first line, and then lets others gather for
//! [`GATHER`] before it writes, so the lines of a busy stretch cost one wake-up and one
//! write per [`GATHER`], not one each. When standard error cannot be written (its disk is full, an I/O error, a
//! closed pipe) the line is dropped and counted, and nothing panics — the standard library's
//! `eprintln!`, and the subscriber's own error report that uses it, would abort the request
//! that logged. When the queue is full (the disk is slow) the line is dropped and counted too.
//! Both counts are `dialbridge_log_lines_dropped_total` on `/metrics`.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

/// Lines waiting for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 16_384;

/// How long the writer, woken by a first line, lets others join it before it writes.
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Lines queued, and lines the writer thread is done with (written or dropped).
static QUEUED: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicU64 = AtomicU64::new(0);
static QUEUE: OnceLock<Option<&'static Queue>> = OnceLock::new();

/// Lines handed over and not yet taken by the writer thread.
#[derive(Default)]
struct Lines {
    bytes: Vec<u8>,
    count: usize,
    /// The writer waits for a first line: only then does a new line wake it.
    writer_waiting: bool,
}

#[derive(Default)]
struct Queue {
    lines: Mutex<Lines>,
    ready: Condvar,
}

impl Queue {
    /// Takes a line; false when the queue is full.
    fn push(&self, line: &[u8]) -> bool {
        let wake = {
            let Ok(mut l) = self.lines.lock() else {
                return false;
            };
            if l.count >= QUEUE_LINES {
                return false;
            }
            l.bytes.extend_from_slice(line);
            l.count += 1;
            std::mem::replace(&mut l.writer_waiting, false)
        };
        // After the lock is let go: the writer woken does not then wait for it.
        if wake {
            self.ready.notify_one();
        }
        true
    }

    /// The writer thread: takes what gathered and writes it to `sink` with one `write_all`.
    /// Woken from waiting, it first lets `gather` pass (lines pushed meanwhile do not wake
    /// it again); lines that came while it wrote are taken at once.
    fn run(&self, mut sink: impl Write, gather: std::time::Duration) {
        let mut out = Vec::new();
        loop {
            let waited = {
                let Ok(mut l) = self.lines.lock() else {
                    return;
                };
                let mut waited = false;
                while l.count == 0 {
                    l.writer_waiting = true;
                    waited = true;
                    l = match self.ready.wait(l) {
                        Ok(l) => l,
                        Err(_) => return,
                    };
                }
                waited
            };
            if waited {
                std::thread::sleep(gather);
            }
            let count = {
                let Ok(mut l) = self.lines.lock() else {
                    return;
                };
                l.writer_waiting = false;
                std::mem::swap(&mut out, &mut l.bytes);
                std::mem::take(&mut l.count)
            };
            if sink.write_all(&out).is_err() {
                DROPPED.fetch_add(count as u64, Ordering::Relaxed);
            }
            DONE.fetch_add(count as u64, Ordering::Release);
            out.clear();
            if out.capacity() > 1 << 20 {
                out.shrink_to(64 << 10);
            }
        }
    }
}

/// Log lines dropped so far (queue full, or standard error not writable).
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

fn queue() -> Option<&'static Queue> {
    *QUEUE.get_or_init(|| {
        let q: &'static Queue = Box::leak(Box::default());
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || q.run(std::io::stderr(), GATHER))
            .ok()
            .map(|_| q)
    })
}

/// The writer the log subscriber gets for each line.
#[derive(Debug, Clone, Copy, Default)]
pub struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match queue() {
            Some(q) => {
                if q.push(buf) {
                    QUEUED.fetch_add(1, Ordering::Release);
                } else {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            }
            // No writer thread could be started: write in place, never fail.
            None => {
                if std::io::stderr().write_all(buf).is_err() {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LossyStderr {
    type Writer = LossyStderr;

    fn make_writer(&'a self) -> Self::Writer {
        LossyStderr
    }
}

/// Waits (briefly) until the queued lines are written: for the end of the process.
pub fn flush() {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
    while DONE.load(Ordering::Acquire) < QUEUED.load(Ordering::Acquire)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records that log lines are JSON (the SIP trace then puts the message in a field).
pub fn set_json(json: bool) {
    JSON.store(json, Ordering::Relaxed);
}

/// Whether log lines are JSON.
pub fn is_json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Whether log output gets ANSI colours: only on a terminal, and not with `NO_COLOR` set.
pub fn use_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A sink the test reads back, each `write` call kept apart.
    #[derive(Clone, Default)]
    struct Writes(std::sync::Arc<Mutex<Vec<Vec<u8>>>>);

    impl Writes {
        /// Everything written so far, as one text.
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().concat()).unwrap()
        }
    }

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_reach_the_sink_whole_and_in_order_and_a_full_queue_refuses() {
        let q: &'static Queue = Box::leak(Box::default());
        // No writer yet: the queue fills up to its bound, then refuses.
        for i in 0..QUEUE_LINES {
            assert!(q.push(format!("line {i}\n").as_bytes()));
        }
        assert!(!q.push(b"one too many\n"));
        let sink = Writes::default();
        let out = sink.clone();
        std::thread::spawn(move || q.run(sink, GATHER));
        // Taken by the writer, the queue has room again; lines pushed while it waits wake it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !q.push(b"after\n") {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer never took the queue"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        for burst in 0..3 {
            std::thread::sleep(Duration::from_millis(20));
            assert!(q.push(format!("burst {burst}\n").as_bytes()));
        }
        let expected: String = (0..QUEUE_LINES)
            .map(|i| format!("line {i}\n"))
            .chain(["after\n".to_owned()])
            .chain((0..3).map(|b| format!("burst {b}\n")))
            .collect();
        loop {
            let got = out.text();
            if got == expected {
                break;
            }
            assert!(expected.starts_with(&got), "lines out of order or cut");
            assert!(std::time::Instant::now() < deadline, "lines never written");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Lines that come while the writer gathers after its wake-up go out with the first,
    /// in one write.
    #[test]
    fn lines_of_a_busy_stretch_go_out_in_one_write() {
        let q: &'static Queue = Box::leak(Box::default());
        let sink = Writes::default();
        let out = sink.clone();
        std::thread::spawn(move || q.run(sink, Duration::from_millis(300)));
        // The writer waits for a first line before any is pushed.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !q.lines.lock().unwrap().writer_waiting {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer never waited"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(q.push(b"first\n"));
        std::thread::sleep(Duration::from_millis(20));
        assert!(q.push(b"second\n"));
        assert!(q.push(b"third\n"));
        while out.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "nothing written");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            *out.0.lock().unwrap(),
            vec![b"first\nsecond\nthird\n".to_vec()]
        );
    }

    #[test]
    fn a_line_is_always_taken_whatever_happens_to_it() {
        let mut w = LossyStderr;
        assert_eq!(w.write(b"a log line\n").unwrap(), 11);
        assert!(w.flush().is_ok());
    }
}
