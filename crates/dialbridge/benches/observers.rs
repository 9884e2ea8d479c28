//! What watching the wire costs per SIP message: the SIP trace (text and JSON, and installed
//! but filtered out) and the HEP export (encode, and the datagram to the collector).
//!
//! Each figure is the CPU time of the benchmark thread (`CLOCK_THREAD_CPUTIME_ID`) for one
//! 1,047-octet INVITE with `Proxy-Authorization` (the INVITE dialbridge sends a carrier after a
//! 407): for the trace, masking the digest response, formatting the event and writing it to
//! `/dev/null` (the server hands the line to a writer thread instead; the formatting is the
//! same); for HEP, building the packet and sending it over loopback UDP to a bound socket (the
//! server's sender thread does the send). Multiply by the messages of a call (13 in a
//! click-to-call of `c2c-bench`) for the cost per call. Method and numbers:
//! `docs/benchmarks.md`, "Watching the wire".
//!
//! `cargo bench -p dialbridge --bench observers`

// The modules are the binary's own, compiled into the bench as they are.
#[allow(dead_code, unused_imports)]
#[path = "../src/hep.rs"]
mod hep;
#[allow(dead_code, unused_imports)]
#[path = "../src/sip_trace.rs"]
mod sip_trace;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, Criterion, Throughput};
use sip_core::observe::{Direction, MessageObserver, WireMessage};
use sip_core::transport::Transport;
use std::hint::black_box;
use std::time::SystemTime;

const INVITE: &[u8] = b"INVITE sip:+14155550100@127.0.0.1:5080 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK5f1c0e2d9a8b7c6d5e4f3a2b;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:+14155551234@dialbridge.test>;tag=8c1f2e3d4a5b6c7d\r\n\
To: <sip:+14155550100@127.0.0.1:5080>\r\n\
Call-ID: 3f2a9c8b7d6e5f40@dialbridge.test\r\n\
CSeq: 2 INVITE\r\n\
Contact: <sip:127.0.0.1:5060>\r\n\
P-Asserted-Identity: <sip:+14155551234@dialbridge.test>\r\n\
Proxy-Authorization: Digest username=\"acme\", realm=\"carrier.test\", nonce=\"4a7f6b5c3d2e1f00\", uri=\"sip:+14155550100@127.0.0.1:5080\", response=\"6629fae49393a05397450978507c4ef1\", algorithm=MD5, cnonce=\"0a4f113b\", qop=auth, nc=00000001\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE\r\n\
Supported: timer\r\n\
User-Agent: dialbridge/0.1.0\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 262\r\n\
\r\n\
v=0\r\n\
o=dialbridge 3912345678 3912345678 IN IP4 127.0.0.1\r\n\
s=dialbridge\r\n\
c=IN IP4 127.0.0.1\r\n\
t=0 0\r\n\
m=audio 20002 RTP/AVP 0 8 9 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=sendrecv\r\n";

fn wire() -> WireMessage<'static> {
    WireMessage {
        direction: Direction::Sent,
        transport: Transport::Udp,
        local: "127.0.0.1:5060".parse().unwrap(),
        remote: "127.0.0.1:5080".parse().unwrap(),
        data: INVITE,
    }
}

fn dev_null() -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap()
}

fn trace(c: &mut Criterion<ThreadCpuTime>) {
    let mut g = c.benchmark_group("sip_trace");
    g.throughput(Throughput::Elements(1));
    let m = wire();
    for (name, json, filter) in [
        ("text", false, "info"),
        ("json", true, "info"),
        ("filtered_out", false, "info,sip_trace=off"),
    ] {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(dev_null()));
        let t = sip_trace::SipTrace { json };
        let run = |g: &mut criterion::BenchmarkGroup<'_, ThreadCpuTime>| {
            g.bench_function(name, |b| b.iter(|| t.on_message(black_box(&m))));
        };
        if json {
            let sub = builder.json().finish();
            tracing::subscriber::with_default(sub, || run(&mut g));
        } else {
            let sub = builder.finish();
            tracing::subscriber::with_default(sub, || run(&mut g));
        }
    }
    g.finish();
}

fn hep_export(c: &mut Criterion<ThreadCpuTime>) {
    let mut g = c.benchmark_group("hep");
    g.throughput(Throughput::Elements(1));
    let capture = |payload| hep::Capture {
        src: "127.0.0.1:5060".parse().unwrap(),
        dst: "127.0.0.1:5080".parse().unwrap(),
        ip_proto: 17,
        time: SystemTime::now(),
        payload_type: hep::PAYLOAD_SIP,
        agent_id: 2001,
        auth_key: None,
        correlation: Some("call_01jdz8y4m6k2r3t5v7w9x1b3c5"),
        payload,
    };
    g.bench_function("encode", |b| {
        b.iter(|| hep::encode(black_box(&capture(INVITE))).unwrap())
    });
    let collector = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.connect(collector.local_addr().unwrap()).unwrap();
    collector.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 2048];
    // What the endpoint's task does per message: find the Call-ID, look the call up (a map
    // under a mutex, as the engine's), build the packet, queue it. The sender thread sends
    // it to a collector that reads everything (its CPU is not in this figure: see below).
    {
        let collector = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = format!("udp:{}", collector.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while collector.recv(&mut buf).is_ok() {}
        });
        let x = hep::HepExporter::start(hep::HepSettings {
            target: target.parse().unwrap(),
            agent_id: 2001,
            password: None,
            queue: 8192,
        })
        .unwrap();
        let calls: std::sync::Mutex<std::collections::HashMap<String, String>> =
            std::sync::Mutex::new(
                (0..1000)
                    .map(|i| (format!("{i:016x}@dialbridge.test"), format!("call_{i}")))
                    .chain([(
                        "3f2a9c8b7d6e5f40@dialbridge.test".to_string(),
                        "call_01jdz8y4m6k2r3t5v7w9x1b3c5".to_string(),
                    )])
                    .collect(),
            );
        x.set_correlate(std::sync::Arc::new(move |id: &str| {
            calls.lock().ok()?.get(id).cloned()
        }));
        let m = wire();
        g.bench_function("exporter_on_message", |b| {
            b.iter(|| x.on_message(black_box(&m)))
        });
    }
    g.bench_function("encode_and_send", |b| {
        b.iter(|| {
            let p = hep::encode(&capture(INVITE)).unwrap();
            let _ = sender.send(&p);
            // Keep the collector's buffer from filling: its read is in this figure too, so
            // it is an upper bound of the sender thread's work per packet.
            let _ = collector.recv(&mut buf);
        })
    });
    g.finish();
}

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
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = trace, hep_export
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
