//! A WebRTC leg through real loopback sockets, with a DTLS client standing in for the
//! browser: ICE-lite answers its check, DTLS-SRTP keys the leg, SRTP from the browser leaves
//! the other leg as plain RTP and back; a certificate that does not match the SDP's
//! fingerprint is refused with a log line, and nothing is relayed.

#[macro_use]
mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use media::srtp::SrtpLeg;
use media::webrtc::{stun, DtlsClient, DtlsIdentity, Fingerprint, IceCredentials};
use media::{Backend, LatchMode, LegId, MediaSession};
use support::{eventually, relay, rtp, Peer};

/// Everything logged by the test binary (the forwarding threads log too).
fn log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = Arc::clone(&buf);
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Tee(Arc::clone(&w)))
            .try_init();
        buf
    })
    .clone()
}

struct Tee(Arc<Mutex<Vec<u8>>>);
impl Write for Tee {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The browser's side: ICE check, then the DTLS handshake over the socket.
fn connect(
    browser: &Peer,
    s: &MediaSession,
    ice: &IceCredentials,
    id: &DtlsIdentity,
) -> DtlsClient {
    let a = s.leg(LegId::A).bound_rtp();
    // A check with a wrong password is not answered.
    browser.send(
        a,
        &stun::request(
            [9; 12],
            &format!("{}:brws", ice.ufrag),
            "wrong-password-wrong-pwd",
            true,
        ),
    );
    browser.send(
        a,
        &stun::request([1; 12], &format!("{}:brws", ice.ufrag), &ice.pwd, true),
    );
    let (resp, from) = browser.recv();
    assert_eq!(from, a);
    assert_eq!(&resp[8..20], &[1; 12], "the answer to the valid check");
    assert_eq!(stun::mapped_v4(&resp), Some(browser.addr()));
    let (mut client, flight) = DtlsClient::start(id).unwrap();
    for d in flight {
        browser.send(a, &d);
    }
    for _ in 0..10 {
        if client.keys().is_some() {
            break;
        }
        let Some(d) = recv_within(browser) else { break };
        for reply in client.feed(&d) {
            browser.send(a, &reply);
        }
    }
    client
}

fn recv_within(p: &Peer) -> Option<Vec<u8>> {
    p.sock
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let r = p
        .sock
        .recv_from(&mut buf)
        .ok()
        .map(|(n, _)| buf[..n].to_vec());
    p.sock
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    r
}

fn browser_to_plain_carrier_and_back(b: Backend) {
    let relay = relay(b, 46600, 46699, LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let (browser, carrier) = (Peer::new(), Peer::new());
    let ice = IceCredentials::random();
    let id = DtlsIdentity::generate().unwrap();
    s.set_webrtc(LegId::A, Some(ice.clone())).unwrap();
    s.set_webrtc_fingerprint(LegId::A, Some(id.fingerprint().clone()))
        .unwrap();
    s.set_peer(LegId::B, carrier.addr(), None, false).unwrap();
    s.start().unwrap();
    assert!(relay.dtls_fingerprint().is_some());
    let (a, bl) = (s.leg(LegId::A).bound_rtp(), s.leg(LegId::B).bound_rtp());

    // Before the handshake: the carrier's RTP does not reach the browser in the clear. Its
    // first packet, sent right after the set-up, is judged by that set-up (both loops apply
    // control messages before the datagrams that came with them): the carrier's, held back,
    // not a stranger's.
    carrier.send(bl, &rtp(0, false, 1, 160, 0x4444, &[0xff; 160]));
    assert!(eventually(|| s.stats().b.not_forwarded == 1));
    assert_eq!(s.stats().b.hijack_dropped, 0);
    let mut client = connect(&browser, &s, &ice, &id);
    let keys = client.keys().expect("the handshake completed");
    let mut srtp = SrtpLeg::new(&keys).unwrap();
    assert!(!client.alerted());

    // Browser (SRTP) -> relay -> carrier (plain).
    for seq in 1..=5u16 {
        let plain = rtp(0, false, seq, u32::from(seq) * 160, 0x1111, &[0xd5; 160]);
        browser.send(a, &srtp.protect(&plain, false).unwrap());
        let (got, from) = carrier.recv();
        assert_eq!(from, bl);
        assert_eq!(got, plain);
    }
    // Carrier (plain) -> relay -> browser (SRTP).
    for seq in 10..15u16 {
        let plain = rtp(8, false, seq, u32::from(seq) * 160, 0x2222, &[0x55; 160]);
        carrier.send(bl, &plain);
        let (wire, from) = browser.recv();
        assert_eq!(from, a);
        assert_eq!(wire.len(), plain.len() + 10);
        assert_eq!(&srtp.unprotect(&wire, false).unwrap()[..], &plain[..]);
    }
    // A prompt the relay plays to the browser is encrypted too.
    s.play(
        LegId::A,
        media::Prompt::tone(
            425.0,
            std::time::Duration::from_millis(100),
            std::time::Duration::ZERO,
            media::g711::G711::Pcmu,
            false,
        ),
    )
    .unwrap();
    let (wire, _) = browser.recv();
    let plain = srtp.unprotect(&wire, false).expect("an SRTP prompt packet");
    assert_eq!(plain[1] & 0x7f, 0, "PCMU");
    assert_eq!(plain.len() + 10, wire.len());
    for _ in 0..4 {
        let (wire, _) = browser.recv();
        assert!(srtp.unprotect(&wire, false).is_ok());
    }
    s.stop_playing(LegId::A).unwrap();
    while recv_within(&browser).is_some() {}
    // SRTP from an address no check came from is dropped.
    let stranger = Peer::new();
    let plain = rtp(0, false, 6, 960, 0x1111, &[0xd5; 160]);
    stranger.send(a, &srtp.protect(&plain, false).unwrap());
    assert!(
        eventually(|| s.stats().a.hijack_dropped == 1),
        "{:?}",
        s.stats()
    );
    assert_eq!(carrier.try_recv(), None);
    let st = s.close();
    assert_eq!((st.a.rx_packets, st.b.tx_packets), (5, 5), "{st:?}");
    assert_eq!(st.b.rx_packets, 5, "{st:?}");
    assert!(
        st.a.tx_packets >= 10,
        "five relayed and the prompt's: {st:?}"
    );
    assert_eq!(st.b.not_forwarded, 1, "the packet before the keys: {st:?}");
}

fn a_fingerprint_mismatch_is_refused(b: Backend) {
    let log = log();
    let relay = relay(b, 46700, 46799, LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let (browser, carrier) = (Peer::new(), Peer::new());
    let ice = IceCredentials::random();
    let id = DtlsIdentity::generate().unwrap();
    let claimed = DtlsIdentity::generate().unwrap();
    s.set_webrtc(LegId::A, Some(ice.clone())).unwrap();
    s.set_peer(LegId::B, carrier.addr(), None, false).unwrap();
    s.start().unwrap();
    let a = s.leg(LegId::A).bound_rtp();
    let mut client = connect(&browser, &s, &ice, &id);
    let keys = client.keys().expect("the handshake itself completes");
    // The SDP names another certificate: refused when the answer arrives.
    s.set_webrtc_fingerprint(LegId::A, Some(claimed.fingerprint().clone()))
        .unwrap();
    let alert = browser.recv().0;
    assert_eq!(alert[0], 21, "a DTLS alert record");
    client.feed(&alert);
    assert!(client.alerted());
    let mut srtp = SrtpLeg::new(&keys).unwrap();
    for seq in 1..=3u16 {
        let plain = rtp(0, false, seq, u32::from(seq) * 160, 0x1111, &[0xd5; 160]);
        browser.send(a, &srtp.protect(&plain, false).unwrap());
    }
    assert!(
        eventually(|| s.stats().a.not_forwarded >= 3),
        "{:?}",
        s.stats()
    );
    assert_eq!(carrier.try_recv(), None, "nothing relayed");
    // Still alive: a new session works.
    let s2 = relay.allocate_session().unwrap();
    drop(s2);
    let text = String::from_utf8_lossy(&log.lock().unwrap()).to_string();
    assert!(
        text.contains("does not match the a=fingerprint of its SDP")
            && text.contains(&claimed.fingerprint().to_string()),
        "{text}"
    );
    let st = s.close();
    assert_eq!((st.a.rx_packets, st.b.tx_packets), (0, 0), "{st:?}");
}

#[test]
fn fingerprint_text_round_trips() {
    let id = DtlsIdentity::generate().unwrap();
    let text = id.fingerprint().to_string();
    assert_eq!(Fingerprint::parse(&text).as_ref(), Some(id.fingerprint()));
}

each_backend!(
    browser_to_plain_carrier_and_back,
    a_fingerprint_mismatch_is_refused
);
