//! Where log lines go: standard error, through a bounded queue and a thread of its own, so
//! that logging never takes a request down.
//!
//! A log line is handed to the queue and the caller goes on; the writer thread writes it to
//! standard error. When standard error cannot be written (its disk is full, an I/O error, a
//! closed pipe) the line is dropped and counted, and nothing panics — the standard library's
//! `eprintln!`, and the subscriber's own error report that uses it, would abort the request
//! that logged. When the queue is full (the disk is slow) the line is dropped and counted too.
//! Both counts are `dialbridge_log_lines_dropped_total` on `/metrics`.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;

/// Lines waiting for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 16_384;

static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Lines queued, and lines the writer thread is done with (written or dropped).
static QUEUED: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicU64 = AtomicU64::new(0);
static QUEUE: OnceLock<Option<SyncSender<Vec<u8>>>> = OnceLock::new();

/// Log lines dropped so far (queue full, or standard error not writable).
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

fn queue() -> Option<&'static SyncSender<Vec<u8>>> {
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_LINES);
            let spawned = std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || {
                    let mut err = std::io::stderr();
                    for line in rx {
                        if err.write_all(&line).is_err() {
                            DROPPED.fetch_add(1, Ordering::Relaxed);
                        }
                        DONE.fetch_add(1, Ordering::Release);
                    }
                });
            spawned.ok().map(|_| tx)
        })
        .as_ref()
}

/// The writer the log subscriber gets for each line.
#[derive(Debug, Clone, Copy, Default)]
pub struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match queue() {
            Some(q) => match q.try_send(buf.to_vec()) {
                Ok(()) => {
                    QUEUED.fetch_add(1, Ordering::Release);
                }
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            },
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

    #[test]
    fn a_line_is_always_taken_whatever_happens_to_it() {
        let mut w = LossyStderr;
        assert_eq!(w.write(b"a log line\n").unwrap(), 11);
        assert!(w.flush().is_ok());
    }
}
