//! SIP parser throughput: sip-core's own parser against `rsip` 0.4 on the same message.
//!
//! What is measured, per message: parse one datagram, then read the core header fields a
//! B2BUA touches on every request: top Via and its branch, the From tag, To, Call-ID, CSeq,
//! the first Contact, Max-Forwards, Content-Length and whether Content-Type is SDP. sip-core
//! reads them through its borrowed views (what the server does on every request), and again
//! into owned values. Both parsers get the same bytes, two trunk INVITEs with SDP: 1,029
//! octets (two Vias, one Record-Route) and 1,333 octets (three Vias, two Record-Routes,
//! P-Asserted-Identity, a longer offer).
//!
//! Run with `cargo bench -p sip-core --bench parse`; method and numbers are in
//! `docs/benchmarks.md`, section "SIP parser". Criterion runs on one thread, so each figure
//! is per core. Time is the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall
//! time: on a small machine shared with builds, wall time mostly measures the scheduler.

use std::hint::black_box;

use bytes::Bytes;
use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, Criterion, Throughput};
use sip_core::message::{parse_message, typed::parse_number, HeaderAccess, HeaderName, SipMessage};

/// A 1 KB trunk-side INVITE (1,029 octets) as a carrier SBC sends it through one proxy.
const INVITE_1K: &[u8] = b"INVITE sip:+14155550123@trunk.example.com;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bK-524287-1-4f7c2a8e;rport\r\n\
Via: SIP/2.0/UDP 203.0.113.7:5060;received=203.0.113.7;branch=z9hG4bK.8a7b6c5d4e\r\n\
Max-Forwards: 69\r\n\
Record-Route: <sip:198.51.100.20;lr;ftag=as6e1f2a3b>\r\n\
From: \"Acme Support\" <sip:+14155550100@carrier.example.net;user=phone>;tag=as6e1f2a3b\r\n\
To: <sip:+14155550123@trunk.example.com;user=phone>\r\n\
Call-ID: 3c26700b4e5a1f2d@198.51.100.20\r\n\
CSeq: 102 INVITE\r\n\
Contact: <sip:+14155550100@198.51.100.20:5060;transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, INFO, PRACK, UPDATE\r\n\
Supported: replaces, timer\r\n\
User-Agent: CarrierSBC/7.2.1\r\n\
Session-Expires: 1800;refresher=uac\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 249\r\n\
\r\n\
v=0\r\n\
o=- 1712345678 1712345678 IN IP4 198.51.100.20\r\n\
s=CarrierSBC\r\n\
c=IN IP4 198.51.100.20\r\n\
t=0 0\r\n\
m=audio 40000 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

/// A trunk-side INVITE as a carrier SBC would send it through two proxies.
const INVITE: &[u8] = b"INVITE sip:+14155550123@trunk.example.com;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bK-524287-1-4f7c2a8e;rport\r\n\
Via: SIP/2.0/UDP 203.0.113.7:5060;received=203.0.113.7;branch=z9hG4bK.8a7b6c5d4e\r\n\
Via: SIP/2.0/TCP 192.0.2.44:5061;branch=z9hG4bKpx3f0a1c2d;alias\r\n\
Max-Forwards: 68\r\n\
Record-Route: <sip:198.51.100.20;lr;ftag=as6e1f2a3b>\r\n\
Record-Route: <sip:203.0.113.7;transport=udp;lr>\r\n\
From: \"Acme Support\" <sip:+14155550100@carrier.example.net;user=phone>;tag=as6e1f2a3b\r\n\
To: <sip:+14155550123@trunk.example.com;user=phone>\r\n\
Call-ID: 3c26700b4e5a1f2d@198.51.100.20\r\n\
CSeq: 102 INVITE\r\n\
Contact: <sip:+14155550100@198.51.100.20:5060;transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, INFO, PRACK, UPDATE\r\n\
Supported: replaces, timer, 100rel\r\n\
User-Agent: CarrierSBC/7.2.1\r\n\
P-Asserted-Identity: \"Acme Support\" <sip:+14155550100@carrier.example.net;user=phone>\r\n\
Session-Expires: 1800;refresher=uac\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 343\r\n\
\r\n\
v=0\r\n\
o=- 1712345678 1712345678 IN IP4 198.51.100.20\r\n\
s=CarrierSBC\r\n\
c=IN IP4 198.51.100.20\r\n\
t=0 0\r\n\
m=audio 40000 RTP/AVP 0 8 9 111 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

/// The values both parsers must find; compared once before timing so the two sides
/// provably do the same work.
#[derive(Debug, PartialEq, Eq)]
struct Core {
    branch: String,
    from_tag: String,
    to_has_tag: bool,
    call_id: String,
    cseq: u32,
    contact_port: Option<u16>,
    max_forwards: u32,
    content_length: u32,
    /// Whether Content-Type says `application/sdp`.
    sdp: bool,
}

/// sip-core: parse, then the typed accessors (the borrowed views the server reads on
/// every request: nothing allocated, nothing shared).
fn ours(data: &Bytes) -> Option<Core> {
    let SipMessage::Request(req) = parse_message(data.clone()).ok()? else {
        return None;
    };
    let via = req.view_top_via().ok()?;
    let from = req.view_from().ok()?;
    let to = req.view_to().ok()?;
    let call_id = req.call_id().ok()?;
    let cseq = req.cseq().ok()?;
    let contact = req.view_contact().ok()??;
    let max_forwards = req.max_forwards().ok()??;
    let content_length = parse_number(
        &req.headers.get(&HeaderName::ContentLength)?,
        u32::MAX.into(),
    )
    .ok()?;
    Some(Core {
        branch: String::from_utf8_lossy(via.branch()?).into_owned(),
        from_tag: String::from_utf8_lossy(from.tag()?).into_owned(),
        to_has_tag: to.tag().is_some(),
        call_id: String::from_utf8_lossy(&call_id).into_owned(),
        cseq: cseq.seq,
        contact_port: contact.uri.as_sip()?.port,
        max_forwards: max_forwards.into(),
        content_length: content_length as u32,
        sdp: req.content_type_is("application/sdp"),
    })
}

/// Reads the core header fields of `req` through the accessors named (views or owned
/// values), summing what it finds so that nothing is optimised away.
macro_rules! read_core {
    ($req:expr, $via:ident, $from:ident, $to:ident, $contact:ident) => {{
        let req = $req;
        let mut acc = 0;
        if let Ok(via) = req.$via() {
            acc += via.branch().map_or(0, <[u8]>::len);
        }
        if let Ok(from) = req.$from() {
            acc += from.tag().map_or(0, <[u8]>::len);
        }
        if let Ok(to) = req.$to() {
            acc += usize::from(to.tag().is_some());
        }
        if let Ok(c) = req.call_id() {
            acc += c.len();
        }
        if let Ok(c) = req.cseq() {
            acc += c.seq as usize;
        }
        if let Ok(Some(c)) = req.$contact() {
            acc += c.uri.as_sip().and_then(|u| u.port).map_or(0, usize::from);
        }
        if let Ok(Some(m)) = req.max_forwards() {
            acc += usize::from(m);
        }
        if let Some(l) = req.headers.get(&HeaderName::ContentLength) {
            acc += parse_number(&l, u32::MAX.into()).map_or(0, |n| n as usize);
        }
        acc + usize::from(req.content_type_is("application/sdp"))
    }};
}

/// The same work through sip-core, without building the comparison struct (what is timed).
fn ours_hot(data: &Bytes) -> usize {
    match parse_message(data.clone()) {
        Ok(SipMessage::Request(req)) => {
            read_core!(&req, view_top_via, view_from, view_to, view_contact)
        }
        _ => 0,
    }
}

/// The same values read into owned typed headers (`top_via()`, `from()`, ...: parts shared
/// with the datagram, what a caller keeps beyond the message's life).
fn ours_owned(data: &Bytes) -> usize {
    match parse_message(data.clone()) {
        Ok(SipMessage::Request(req)) => read_core!(&req, top_via, from, to, contact),
        _ => 0,
    }
}

mod theirs {
    use rsip::headers::{typed, Header, ToTypedHeader, UntypedHeader};
    use rsip::prelude::{HasHeaders, HeadersExt};

    use super::Core;

    fn content_length(msg: &rsip::SipMessage) -> Option<u32> {
        msg.headers().iter().find_map(|h| match h {
            Header::ContentLength(l) => l.length().ok(),
            _ => None,
        })
    }

    fn content_type(msg: &rsip::SipMessage) -> Option<typed::ContentType> {
        msg.headers().iter().find_map(|h| match h {
            Header::ContentType(c) => c.typed().ok(),
            _ => None,
        })
    }

    fn contact_port(c: &typed::Contact) -> Option<u16> {
        c.uri.host_with_port.port.as_ref().map(|p| *p.value())
    }

    /// rsip: parse, then its typed header accessors.
    pub fn core(data: &[u8]) -> Option<Core> {
        let msg = rsip::SipMessage::try_from(data).ok()?;
        let via = msg.via_header().ok()?.typed().ok()?;
        let from = msg.from_header().ok()?.typed().ok()?;
        let to = msg.to_header().ok()?.typed().ok()?;
        let call_id = msg.call_id_header().ok()?;
        let cseq = msg.cseq_header().ok()?.typed().ok()?;
        let contact = msg.contact_header().ok()?.typed().ok()?;
        let max_forwards = msg.max_forwards_header().ok()?.num().ok()?;
        let content_length = content_length(&msg)?;
        let content_type = content_type(&msg)?;
        Some(Core {
            branch: via.branch()?.to_string(),
            from_tag: from.tag()?.value().to_string(),
            to_has_tag: to.tag().is_some(),
            call_id: call_id.value().to_string(),
            cseq: cseq.seq,
            contact_port: contact_port(&contact),
            max_forwards,
            content_length,
            sdp: content_type
                .to_string()
                .eq_ignore_ascii_case("application/sdp"),
        })
    }

    /// The same work as [`core`] without building the comparison struct (what is timed).
    pub fn hot(data: &[u8]) -> usize {
        let Ok(msg) = rsip::SipMessage::try_from(data) else {
            return 0;
        };
        let mut acc = 0;
        if let Some(via) = msg.via_header().ok().and_then(|v| v.typed().ok()) {
            acc += via.branch().map_or(0, |b| b.to_string().len());
        }
        if let Some(from) = msg.from_header().ok().and_then(|v| v.typed().ok()) {
            acc += from.tag().map_or(0, |t| t.value().len());
        }
        if let Some(to) = msg.to_header().ok().and_then(|v| v.typed().ok()) {
            acc += usize::from(to.tag().is_some());
        }
        if let Ok(c) = msg.call_id_header() {
            acc += c.value().len();
        }
        if let Some(c) = msg.cseq_header().ok().and_then(|v| v.typed().ok()) {
            acc += c.seq as usize;
        }
        if let Some(c) = msg.contact_header().ok().and_then(|v| v.typed().ok()) {
            acc += contact_port(&c).map_or(0, usize::from);
        }
        if let Some(m) = msg.max_forwards_header().ok().and_then(|m| m.num().ok()) {
            acc += m as usize;
        }
        acc += content_length(&msg).map_or(0, |n| n as usize);
        acc += content_type(&msg).map_or(0, |c| {
            usize::from(c.to_string().eq_ignore_ascii_case("application/sdp"))
        });
        acc
    }

    /// Parsing alone.
    pub fn parse_only(data: &[u8]) -> bool {
        rsip::SipMessage::try_from(data).is_ok()
    }
}

fn invite(c: &mut Criterion<ThreadCpuTime>) {
    for message in [INVITE_1K, INVITE] {
        one_message(c, message);
    }
}

fn one_message(c: &mut Criterion<ThreadCpuTime>, message: &'static [u8]) {
    // As a transport hands a datagram over: a reference-counted buffer (not `from_static`),
    // so every `Bytes` the parser slices from it costs a reference count update.
    let data = Bytes::from(message.to_vec());
    let mine = ours(&data);
    let theirs = theirs::core(message);
    assert!(mine.is_some(), "sip-core did not read the benchmark INVITE");
    assert_eq!(
        mine, theirs,
        "the two parsers disagree on the benchmark INVITE"
    );
    assert_eq!(ours_hot(&data), theirs::hot(message));
    assert_eq!(ours_owned(&data), theirs::hot(message));

    let mut g = c.benchmark_group(format!("invite_{}B", message.len()));
    g.throughput(Throughput::Elements(1));
    g.bench_function("sip-core/parse+core-headers", |b| {
        b.iter(|| ours_hot(black_box(&data)))
    });
    g.bench_function("sip-core/parse+core-headers-owned", |b| {
        b.iter(|| ours_owned(black_box(&data)))
    });
    g.bench_function("rsip/parse+core-headers", |b| {
        b.iter(|| theirs::hot(black_box(message)))
    });
    g.bench_function("sip-core/parse", |b| {
        b.iter(|| parse_message(black_box(&data).clone()).is_ok())
    });
    g.bench_function("rsip/parse", |b| {
        b.iter(|| theirs::parse_only(black_box(message)))
    });
    g.bench_function("sip-core/parse+check", |b| {
        b.iter(|| match parse_message(black_box(&data).clone()) {
            Ok(SipMessage::Request(r)) => r.check().is_ok(),
            _ => false,
        })
    });
    g.finish();
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
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = invite
}

fn main() {
    if std::env::var_os("PARSE_BENCH_MIN").is_some() {
        min_of_batches();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

/// The second estimator (`PARSE_BENCH_MIN=1 cargo bench -p sip-core --bench parse`): the
/// same functions timed in batches of 100 calls by the thread's CPU clock, the quickest of
/// 2,000 batches kept, in three rounds with every function measured once per round; the
/// quickest round is printed. On a machine shared with other work the minimum is less
/// disturbed than criterion's mean, which takes in every slow stretch.
fn min_of_batches() {
    type Work = Box<dyn Fn() -> usize>;
    let mut rows: Vec<(String, Work)> = Vec::new();
    for message in [INVITE_1K, INVITE] {
        let n = message.len();
        let data = Bytes::from(message.to_vec());
        assert_eq!(ours_hot(&data), theirs::hot(message));
        let d = data.clone();
        rows.push((
            format!("{n} B sip-core parse+core-headers"),
            Box::new(move || ours_hot(black_box(&d))),
        ));
        let d = data.clone();
        rows.push((
            format!("{n} B sip-core parse+core-headers-owned"),
            Box::new(move || ours_owned(black_box(&d))),
        ));
        rows.push((
            format!("{n} B rsip parse+core-headers"),
            Box::new(move || theirs::hot(black_box(message))),
        ));
        let d = data.clone();
        rows.push((
            format!("{n} B sip-core parse"),
            Box::new(move || usize::from(parse_message(black_box(&d).clone()).is_ok())),
        ));
        rows.push((
            format!("{n} B rsip parse"),
            Box::new(move || usize::from(theirs::parse_only(black_box(message)))),
        ));
        let d = data.clone();
        rows.push((
            format!("{n} B sip-core parse+check"),
            Box::new(move || match parse_message(black_box(&d).clone()) {
                Ok(SipMessage::Request(r)) => usize::from(r.check().is_ok()),
                _ => 0,
            }),
        ));
    }
    // Warm up (caches, branch predictors, clock speed).
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_millis(700) {
        for (_, f) in &rows {
            black_box(f());
        }
    }
    let mut best = vec![f64::MAX; rows.len()];
    for _round in 0..3 {
        for (i, (_, f)) in rows.iter().enumerate() {
            for _ in 0..2_000 {
                let t = thread_cpu_ns();
                for _ in 0..100 {
                    black_box(f());
                }
                let per_call = (thread_cpu_ns() - t) as f64 / 100.0;
                best[i] = best[i].min(per_call);
            }
        }
    }
    for ((name, _), ns) in rows.iter().zip(&best) {
        println!("{name:<42} {ns:>8.0} ns  {:>10.0} msg/s", 1e9 / ns);
    }
}
