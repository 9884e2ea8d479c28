//! Prometheus metrics, rendered in the text exposition format (version 0.0.4) at `/metrics`.
//!
//! Counters are atomics updated by the call hooks and the callback dispatcher. Gauges that
//! other parts of the process own (registrations in the store, relay packet counts) are read
//! through closures the binary installs with [`Metrics::set_registrations_source`] and
//! [`Metrics::set_relay_packets_source`], or set directly.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use store::CallStatus;

type Source = Box<dyn Fn() -> u64 + Send + Sync>;
type FamilySource = Box<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

/// A counter another part of the process keeps in a value of type `T`: name, help, and how
/// to read it from the value.
pub type Counter<T> = (&'static str, &'static str, fn(&T) -> u64);

/// The process's metrics.
#[derive(Default)]
pub struct Metrics {
    calls_started: AtomicU64,
    calls_inbound: AtomicU64,
    calls_by_outcome: [AtomicU64; CallStatus::ALL.len()],
    callback_deliveries: AtomicU64,
    callback_retries: AtomicU64,
    callback_abandoned: AtomicU64,
    http_requests: AtomicU64,
    store_write_failures: AtomicU64,
    registrations: AtomicU64,
    relay_packets: AtomicU64,
    registrations_source: RwLock<Option<Source>>,
    /// When the registrations gauge was last read from the store
    /// ([`Metrics::registrations_due`]).
    registrations_read_at: std::sync::Mutex<Option<std::time::Instant>>,
    relay_packets_source: RwLock<Option<Source>>,
    /// Further metrics other parts of the process own (name, type, help, reader).
    extra: RwLock<Vec<(&'static str, &'static str, &'static str, Source)>>,
    /// Labelled families other parts of the process own (name, type, help, reader of
    /// `({labels}, value)` lines).
    families: RwLock<Vec<(&'static str, &'static str, &'static str, FamilySource)>>,
}

/// How often a scrape reads the registrations gauge from the store at most.
pub const REGISTRATIONS_READ_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn index(status: CallStatus) -> usize {
    CallStatus::ALL
        .iter()
        .position(|s| *s == status)
        .unwrap_or(0)
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// A call was handed to the engine.
    pub fn call_started(&self) {
        self.calls_started.fetch_add(1, Ordering::Relaxed);
    }

    /// An inbound call (an INVITE from a trunk) was handed to the engine.
    pub fn inbound_call_started(&self) {
        self.calls_started.fetch_add(1, Ordering::Relaxed);
        self.calls_inbound.fetch_add(1, Ordering::Relaxed);
    }

    /// A call ended with `status`.
    pub fn call_ended(&self, status: CallStatus) {
        self.calls_by_outcome[index(status)].fetch_add(1, Ordering::Relaxed);
    }

    /// Calls that ended with `status` so far.
    pub fn calls_ended(&self, status: CallStatus) -> u64 {
        self.calls_by_outcome[index(status)].load(Ordering::Relaxed)
    }

    /// A callback was delivered (2xx from the receiver).
    pub fn callback_delivered(&self) {
        self.callback_deliveries.fetch_add(1, Ordering::Relaxed);
    }

    /// A callback attempt failed and was rescheduled.
    pub fn callback_retried(&self) {
        self.callback_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// A callback was given up on.
    pub fn callback_abandoned(&self) {
        self.callback_abandoned.fetch_add(1, Ordering::Relaxed);
    }

    /// Delivered, retried, abandoned callbacks so far.
    pub fn callback_counts(&self) -> (u64, u64, u64) {
        (
            self.callback_deliveries.load(Ordering::Relaxed),
            self.callback_retries.load(Ordering::Relaxed),
            self.callback_abandoned.load(Ordering::Relaxed),
        )
    }

    /// A batch of call events that the store refused (it is tried again).
    pub fn store_write_failed(&self) {
        self.store_write_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn http_request(&self) {
        self.http_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the registrations gauge (when no source closure is installed).
    pub fn set_registrations(&self, n: u64) {
        self.registrations.store(n, Ordering::Relaxed);
    }

    /// Whether the registrations gauge is to be read from the store again at `now`: at most
    /// once a [`REGISTRATIONS_READ_EVERY`]; a scrape in between shows the last count. The
    /// count reads the bindings table (on SQLite all of it), so scrapes coming fast, or
    /// many of them, cost the store one count a second at most. Answers `true` to one
    /// caller per period.
    pub fn registrations_due(&self, now: std::time::Instant) -> bool {
        let Ok(mut at) = self.registrations_read_at.lock() else {
            return false;
        };
        match *at {
            Some(last) if now.saturating_duration_since(last) < REGISTRATIONS_READ_EVERY => false,
            _ => {
                *at = Some(now);
                true
            }
        }
    }

    /// Sets the relayed packets counter (when no source closure is installed).
    pub fn set_relay_packets(&self, n: u64) {
        self.relay_packets.store(n, Ordering::Relaxed);
    }

    /// Reads the registrations gauge from `f` at every scrape.
    pub fn set_registrations_source(&self, f: impl Fn() -> u64 + Send + Sync + 'static) {
        if let Ok(mut slot) = self.registrations_source.write() {
            *slot = Some(Box::new(f));
        }
    }

    /// Reads the relayed packets counter from `f` at every scrape.
    pub fn set_relay_packets_source(&self, f: impl Fn() -> u64 + Send + Sync + 'static) {
        if let Ok(mut slot) = self.relay_packets_source.write() {
            *slot = Some(Box::new(f));
        }
    }

    fn read(source: &RwLock<Option<Source>>, fallback: &AtomicU64) -> u64 {
        match source.read() {
            Ok(guard) => match guard.as_ref() {
                Some(f) => f(),
                None => fallback.load(Ordering::Relaxed),
            },
            Err(_) => fallback.load(Ordering::Relaxed),
        }
    }

    /// Adds a metric read from elsewhere at each scrape (e.g. the registrar's digest failure
    /// counters): `kind` is `counter` or `gauge`.
    pub fn add_source(
        &self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        f: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        if let Ok(mut extra) = self.extra.write() {
            extra.push((name, kind, help, Box::new(f)));
        }
    }

    /// Adds a metric with labels read at every scrape: `f` returns `({label="…"}, value)`
    /// lines (no line, no sample).
    pub fn add_family(
        &self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        f: impl Fn() -> Vec<(String, u64)> + Send + Sync + 'static,
    ) {
        if let Ok(mut fam) = self.families.write() {
            fam.push((name, kind, help, Box::new(f)));
        }
    }

    /// Adds counters that live in one shared value (a component's statistics), each read
    /// from it at every scrape.
    pub fn add_counters<T: Send + Sync + 'static>(&self, source: &Arc<T>, counters: &[Counter<T>]) {
        for &(name, help, read) in counters {
            let s = Arc::clone(source);
            self.add_source(name, "counter", help, move || read(&s));
        }
    }

    /// The Prometheus text exposition, with `active_calls` from the engine.
    pub fn render(&self, active_calls: usize) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        metric(
            "dialbridge_calls_started_total",
            "counter",
            "Calls handed to the call engine.",
            &[(String::new(), self.calls_started.load(Ordering::Relaxed))],
        );
        metric(
            "dialbridge_calls_inbound_total",
            "counter",
            "Inbound calls (INVITEs from a trunk to an account's number) handed to the call engine.",
            &[(String::new(), self.calls_inbound.load(Ordering::Relaxed))],
        );
        let by_outcome: Vec<(String, u64)> = CallStatus::ALL
            .iter()
            .filter(|s| s.is_final())
            .map(|s| {
                (
                    format!("{{outcome=\"{}\"}}", s.as_str()),
                    self.calls_ended(*s),
                )
            })
            .collect();
        metric(
            "dialbridge_calls_total",
            "counter",
            "Calls ended, by outcome.",
            &by_outcome,
        );
        metric(
            "dialbridge_active_calls",
            "gauge",
            "Calls now running.",
            &[(String::new(), active_calls as u64)],
        );
        metric(
            "dialbridge_registrations",
            "gauge",
            "Registration bindings in force.",
            &[(
                String::new(),
                Self::read(&self.registrations_source, &self.registrations),
            )],
        );
        let (delivered, retried, abandoned) = self.callback_counts();
        metric(
            "dialbridge_callback_deliveries_total",
            "counter",
            "Callbacks delivered.",
            &[(String::new(), delivered)],
        );
        metric(
            "dialbridge_callback_retries_total",
            "counter",
            "Callback attempts that failed and were rescheduled.",
            &[(String::new(), retried)],
        );
        metric(
            "dialbridge_callback_abandoned_total",
            "counter",
            "Callbacks given up on after the last attempt.",
            &[(String::new(), abandoned)],
        );
        metric(
            "dialbridge_relay_packets_total",
            "counter",
            "RTP/RTCP packets relayed.",
            &[(
                String::new(),
                Self::read(&self.relay_packets_source, &self.relay_packets),
            )],
        );
        metric(
            "dialbridge_http_requests_total",
            "counter",
            "REST requests served.",
            &[(String::new(), self.http_requests.load(Ordering::Relaxed))],
        );
        metric(
            "dialbridge_store_write_failures_total",
            "counter",
            "Batches of call events the store refused (each is tried again until accepted).",
            &[(
                String::new(),
                self.store_write_failures.load(Ordering::Relaxed),
            )],
        );
        if let Ok(extra) = self.extra.read() {
            for (name, kind, help, f) in extra.iter() {
                metric(name, kind, help, &[(String::new(), f())]);
            }
        }
        if let Ok(fam) = self.families.read() {
            for (name, kind, help, f) in fam.iter() {
                metric(name, kind, help, &f());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registrations_are_counted_at_most_once_a_second() {
        let m = Metrics::new();
        let t0 = std::time::Instant::now();
        assert!(m.registrations_due(t0));
        assert!(!m.registrations_due(t0));
        assert!(!m.registrations_due(t0 + std::time::Duration::from_millis(999)));
        assert!(m.registrations_due(t0 + REGISTRATIONS_READ_EVERY));
        assert!(!m.registrations_due(t0 + REGISTRATIONS_READ_EVERY));
    }

    #[test]
    fn renders_counters_and_sources() {
        let m = Metrics::new();
        m.call_ended(CallStatus::Completed);
        m.call_ended(CallStatus::Completed);
        m.call_ended(CallStatus::Busy);
        m.callback_retried();
        m.set_registrations(3);
        m.set_relay_packets_source(|| 12345);
        m.add_source("dialbridge_test_total", "counter", "A test counter.", || 7);
        let text = m.render(7);
        assert!(text.contains("dialbridge_calls_total{outcome=\"completed\"} 2\n"));
        assert!(text.contains("dialbridge_calls_total{outcome=\"busy\"} 1\n"));
        assert!(text.contains("dialbridge_calls_total{outcome=\"no-answer\"} 0\n"));
        assert!(!text.contains("outcome=\"queued\""));
        assert!(text.contains("dialbridge_active_calls 7\n"));
        assert!(text.contains("dialbridge_registrations 3\n"));
        assert!(text.contains("dialbridge_relay_packets_total 12345\n"));
        assert!(text.contains("# TYPE dialbridge_test_total counter\ndialbridge_test_total 7\n"));
        assert!(text.contains("dialbridge_callback_retries_total 1\n"));
        assert!(text.contains("# TYPE dialbridge_active_calls gauge\n"));
    }
}
