//! Bytes of heap a held server transaction keeps: what N answered REGISTERs over UDP leave
//! alive while their transactions wait out Timer J (64*T1), divided by N.
//!
//! Method: T1 raised to 5 s, so that Timer J outlasts the run; a counting global allocator (live bytes = allocated - freed, exact, no allocator
//! overhead); an endpoint on 127.0.0.1; a transaction user that answers every REGISTER 200
//! with a Contact, Expires and Date as the registrar does; a plain UDP socket sending N
//! REGISTERs of a desk phone's size (about 560 bytes), each with its own branch, in batches
//! of 200, reading every answer. Live bytes are read after a warm-up of 34,000 transactions
//! (so that neither the completed answers' hash table, which doubles past 57,344, nor their
//! expiry queue, past 65,536, grows inside the window) and after the last answer, well
//! inside Timer J, and divided by the transactions answered.
//!
//! `cargo bench -p sip-core --bench held [-- N]` (default N = 20000; keep N <= 23000).

use sip_core::endpoint::{Endpoint, EndpointConfig, EndpointEvent};
use sip_core::message::{HeaderName, Response};
use sip_core::transport::TransportConfig;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn register(i: usize, server: std::net::SocketAddr, me: std::net::SocketAddr) -> Vec<u8> {
    format!(
        "REGISTER sip:dialbridge.test SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK-held-{i:08};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice-desk@dialbridge.test>;tag=held{i:08}\r\n\
         To: <sip:alice-desk@dialbridge.test>\r\n\
         Call-ID: held-{i:08}@{me}\r\n\
         CSeq: 2 REGISTER\r\n\
         Contact: <sip:alice-desk@{me};transport=udp>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000000000001>\"\r\n\
         Expires: 600\r\n\
         Authorization: Digest username=\"alice-desk\", realm=\"dialbridge.test\", nonce=\"1700000000.0123456789abcdef\", uri=\"sip:{server}\", response=\"0123456789abcdef0123456789abcdef\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"abcdef\"\r\n\
         User-Agent: desk-phone/1.0\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let (endpoint, mut events) = Endpoint::start(EndpointConfig {
            transport: TransportConfig {
                listen: vec!["udp:127.0.0.1:0".parse().expect("listen")],
                ..Default::default()
            },
            // T1 = 5 s: Timer J (64*T1) outlasts the whole run, so no transaction of the
            // warm-up ends inside the measured window. What a transaction keeps does not
            // depend on T1.
            timers: sip_core::transaction::TimerConfig {
                t1: Duration::from_secs(5),
                t2: Duration::from_secs(40),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .expect("endpoint");
        let server = endpoint.local_addrs()[0].addr;
        let tu = endpoint.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let EndpointEvent::Request(inc) = ev {
                    let mut r = Response::for_request(&inc.request, 200);
                    r.set_to_tag("held");
                    if let Some(c) = inc.request.headers.get(&HeaderName::Contact) {
                        r.headers
                            .add(HeaderName::Contact, format!("{};expires=600", c.to_str()));
                    }
                    r.headers
                        .add(HeaderName::Date, "Thu, 03 Dec 2026 07:40:00 GMT");
                    tu.respond(&inc.key, r);
                }
            }
        });
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let me = sock.local_addr().expect("addr");
        async fn batch(
            sock: &tokio::net::UdpSocket,
            server: std::net::SocketAddr,
            me: std::net::SocketAddr,
            from: usize,
            to: usize,
        ) -> usize {
            let mut buf = vec![0u8; 4096];
            for i in from..to {
                let _ = sock.send_to(&register(i, server, me), server).await;
            }
            let mut got = 0;
            while got < to - from {
                match tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf)).await {
                    Ok(Ok(_)) => got += 1,
                    _ => break,
                }
            }
            got
        }
        // Warm-up: the maps and queues reach their working size (34,000 held transactions, so
        // that no table or queue doubles inside the measured window).
        let warm = 34_000;
        let mut w = 0;
        while w < warm {
            batch(&sock, server, me, n + 1_000_000 + w, n + 1_000_000 + w + 200).await;
            w += 200;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = LIVE.load(Ordering::Relaxed);
        let mut answered = 0;
        let mut i = 0;
        while i < n {
            let to = (i + 200).min(n);
            answered += batch(&sock, server, me, i, to).await;
            i = to;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = LIVE.load(Ordering::Relaxed);
        let per = (after - before) as f64 / answered.max(1) as f64;
        println!(
            "{n} REGISTERs sent, {answered} answered; live heap {before} -> {after} bytes: {per:.0} bytes per held transaction (request {} bytes)",
            register(0, server, me).len()
        );
    });
}
