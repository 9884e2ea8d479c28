//! Cost of one dial string through the dial plan, libphonenumber's metadata and the
//! toll-fraud guard: what `POST /v1/calls` (and the other call shapes, and `GET /v1/lookup`)
//! add before a call starts.
//!
//! Per dial string: [`normalize`] (separators, emergency, international prefix, extension,
//! national format), then [`dialplan::check`] ([`b2bua::numbering::classify`]: calling code,
//! region among those sharing it, type; then the account's countries, types and prefixes).
//! The metadata is loaded on first use and the ranges of a region compiled on the region's
//! first use; criterion's warm-up pays for that, so the figures are for regions already seen.
//! Both are timed once, on their own, before criterion starts, and printed (one sample each:
//! indicative only).
//!
//! Time is the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), as in the SIP parser
//! bench: on a small machine shared with builds, wall time mostly measures the scheduler.
//!
//! Run with `cargo bench -p b2bua --bench dialplan`; method and numbers are in
//! `docs/benchmarks.md`, section "Dial plan and numbering metadata".

use std::hint::black_box;
use std::time::{Duration, Instant};

use b2bua::dialplan::{self, normalize, Dialled, Permissions};
use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, Criterion, Throughput};
use store::NumberType;

/// (dial string, account region): E.164 and national forms over the regions the table test
/// covers, valid and invalid, allowed and refused.
const MIX: &[(&str, &str)] = &[
    ("+1 415 555 1234", "US"),
    ("(415) 555-1234", "US"),
    ("+1 876 555 1234", "US"),
    ("+1 809 221 1234", "US"),
    ("+1 900 555 1234", "US"),
    ("+1 555 0100", "US"),
    ("613 555 0100", "CA"),
    ("020 7183 8750", "GB"),
    ("0909 876 5432", "GB"),
    ("011 44 20 7183 8750", "US"),
    ("030 1234567", "DE"),
    ("0900 1 234567", "DE"),
    ("01 23 45 67 89", "FR"),
    ("02 9374 4000", "AU"),
    ("02 3661 8300", "IT"),
    ("+34 91 123 45 67", "ES"),
    ("03 1234 5678", "JP"),
    ("011 2345 6789", "IN"),
    ("+55 11 91234 5678", "BR"),
    ("8 495 123 45 67", "RU"),
];

struct Policy {
    countries: Vec<String>,
    blocked: Vec<NumberType>,
    prefixes: Vec<String>,
}

impl Policy {
    fn new() -> Policy {
        Policy {
            countries: ["US", "CA", "GB", "DE", "FR"].map(String::from).to_vec(),
            blocked: NumberType::DEFAULT_BLOCKED.to_vec(),
            prefixes: vec!["+".to_owned()],
        }
    }

    fn permissions(&self) -> Permissions<'_> {
        Permissions {
            allowed_countries: &self.countries,
            blocked_number_types: &self.blocked,
            allowed_prefixes: &self.prefixes,
        }
    }
}

/// One dial string the way the API handles it; returns something to keep the work alive.
fn dial(dial_string: &str, region: &str, p: Permissions<'_>) -> bool {
    match normalize(dial_string, region) {
        Ok(Dialled::E164(n)) => dialplan::check(&n, p).1.is_ok(),
        _ => false,
    }
}

fn bench(c: &mut Criterion<ThreadCpuTime>) {
    let policy = Policy::new();
    let p = policy.permissions();
    let mut g = c.benchmark_group("dial_string");
    g.throughput(Throughput::Elements(1));
    for (name, d, r) in [
        ("e164_us", "+14155551234", "US"),
        ("national_us", "(415) 555-1234", "US"),
        ("e164_jm", "+18765551234", "US"),
        ("national_gb", "020 7183 8750", "GB"),
        ("national_it", "02 3661 8300", "IT"),
        ("e164_invalid_us", "+15550100", "US"),
    ] {
        g.bench_function(name, |b| b.iter(|| dial(black_box(d), black_box(r), p)));
    }
    g.finish();
    let mut g = c.benchmark_group("mix");
    g.throughput(Throughput::Elements(MIX.len() as u64));
    g.bench_function("20_dial_strings", |b| {
        b.iter(|| {
            MIX.iter()
                .filter(|(d, r)| dial(black_box(d), black_box(r), p))
                .count()
        })
    });
    g.finish();
}

/// Loading the metadata, then the first use of each region of [`MIX`] (compiling its ranges),
/// one sample each.
fn first_use() {
    let policy = Policy::new();
    let t = Instant::now();
    black_box(b2bua::numbering::is_known_region("US"));
    println!("loading the metadata: {:?}", t.elapsed());
    let mut total = Duration::ZERO;
    let mut worst = (Duration::ZERO, "");
    for (d, r) in MIX {
        let t = Instant::now();
        black_box(dial(d, r, policy.permissions()));
        let took = t.elapsed();
        total += took;
        if took > worst.0 {
            worst = (took, d);
        }
    }
    println!(
        "first use of {} dial strings: {:?} in all, slowest {:?} ({})",
        MIX.len(),
        total,
        worst.0,
        worst.1
    );
}

/// The calling thread's CPU time, in nanoseconds.
pub struct ThreadCpuTime;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID exists on every
    // Linux this project supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }

    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }

    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }

    fn zero(&self) -> u64 {
        0
    }

    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuNanos
    }
}

/// Formats CPU nanoseconds like criterion formats wall time.
struct CpuNanos;

impl ValueFormatter for CpuNanos {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical < 1e3 {
            (1.0, "ns")
        } else if typical < 1e6 {
            (1e-3, "µs")
        } else {
            (1e-6, "ms")
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(&self, typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let per = match *t {
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) | Throughput::Elements(n) => {
                n as f64
            }
        };
        let (div, unit) = if per * 1e9 / typical >= 1e6 {
            (1e6, "Melem/s")
        } else {
            (1e3, "Kelem/s")
        };
        values.iter_mut().for_each(|v| *v = per * 1e9 / *v / div);
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .with_measurement(ThreadCpuTime)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}

fn main() {
    first_use();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
