//! The relay's own media on real sockets: a prompt played into a leg (and the other leg held
//! back from it meanwhile), and RFC 4733 telephone-events reported as DTMF.

mod support;

use std::time::Duration;

use media::g711::{tone_power, G711};
use media::{Backend, LatchMode, LegId, MediaEvent, Prompt};
use support::{relay, rtp, Peer};

#[tokio::test]
async fn a_prompt_is_played_into_a_leg_and_stops_io_uring() {
    if let Some(b) = support::io_uring() {
        prompt_played(b).await;
    }
}

#[tokio::test]
async fn a_prompt_is_played_into_a_leg_and_stops_epoll() {
    prompt_played(Backend::Epoll).await;
}

async fn prompt_played(b: Backend) {
    let relay = relay(b, 44400, 44499, LatchMode::default());
    let mut events = relay.events().unwrap();
    let s = relay.allocate_session().unwrap();
    let (agent, customer) = (Peer::new(), Peer::new());
    s.set_peer(LegId::A, agent.addr(), None, false).unwrap();
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    let prompt = Prompt::tone(
        440.0,
        Duration::from_millis(200),
        Duration::ZERO,
        G711::Pcma,
        false,
    );
    s.play(LegId::A, prompt).unwrap();
    let mut samples = Vec::new();
    let mut ssrcs = Vec::new();
    for i in 0..10 {
        let (pkt, from) = agent.recv();
        if i == 0 {
            // The prompt plays (the control message is applied on the forwarding thread,
            // not when `play` returns): the customer's RTP toward the agent is held back.
            customer.send(
                s.leg(LegId::B).bound_rtp(),
                &rtp(8, false, 1, 0, 77, &[0xd5; 160]),
            );
        }
        assert_eq!(
            from,
            s.leg(LegId::A).bound_rtp(),
            "sent from the agent's port"
        );
        assert_eq!(pkt.len(), 172);
        assert_eq!(pkt[1] & 0x7f, 8, "PCMA as asked");
        ssrcs.push(u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]));
        samples.extend(pkt[12..].iter().map(|c| G711::Pcma.decode(*c)));
    }
    assert!(
        ssrcs.iter().all(|x| *x == ssrcs[0] && *x != 77),
        "its own SSRC"
    );
    assert!(
        tone_power(&samples, 440.0) > 0.3,
        "the prompt's tone reached the agent"
    );
    let ev = tokio::time::timeout(Duration::from_secs(3), events.recv())
        .await
        .expect("the prompt ends")
        .unwrap();
    assert_eq!(
        ev,
        MediaEvent::PromptEnded {
            session_id: s.id(),
            leg: LegId::A
        }
    );
    // Forwarded again once it ended.
    customer.send(
        s.leg(LegId::B).bound_rtp(),
        &rtp(8, false, 2, 160, 77, &[0xd5; 160]),
    );
    let (pkt, _) = agent.recv();
    assert_eq!(u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]), 77);
    // A looped prompt plays until stopped.
    s.play(
        LegId::A,
        Prompt::tone(
            1000.0,
            Duration::from_millis(20),
            Duration::ZERO,
            G711::Pcmu,
            true,
        ),
    )
    .unwrap();
    for _ in 0..15 {
        let (pkt, _) = agent.recv();
        assert_eq!(pkt[1] & 0x7f, 0);
    }
    s.stop_playing(LegId::A).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    while agent.try_recv().is_some() {}
    std::thread::sleep(Duration::from_millis(100));
    assert!(agent.try_recv().is_none(), "nothing after stop");
    assert!(
        s.stats().a.tx_packets >= 25,
        "prompt packets are counted as sent"
    );
}

#[tokio::test]
async fn telephone_events_are_reported_once_per_event_io_uring() {
    if let Some(b) = support::io_uring() {
        dtmf_reported(b).await;
    }
}

#[tokio::test]
async fn telephone_events_are_reported_once_per_event_epoll() {
    dtmf_reported(Backend::Epoll).await;
}

async fn dtmf_reported(b: Backend) {
    let relay = relay(b, 44500, 44599, LatchMode::default());
    let mut events = relay.events().unwrap();
    let s = relay.allocate_session().unwrap();
    let (agent, customer) = (Peer::new(), Peer::new());
    s.set_peer(LegId::A, agent.addr(), None, false).unwrap();
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    let to = s.leg(LegId::A).bound_rtp();
    // Not watched yet: nothing reported (and the packet is still relayed).
    agent.send(to, &rtp(101, true, 1, 1000, 5, &[5, 0x0a, 0, 160]));
    customer.recv();
    s.watch_telephone_events(LegId::A, Some(101)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // Digit 1: start, continuation, three end packets (one timestamp): one report.
    let mut seq = 2;
    for (e, dur) in [
        (0u8, 160u16),
        (0, 320),
        (0x80, 480),
        (0x80, 480),
        (0x80, 480),
    ] {
        let mut payload = vec![1, 0x0a | e];
        payload.extend_from_slice(&dur.to_be_bytes());
        agent.send(to, &rtp(101, seq == 2, seq, 8000, 5, &payload));
        seq += 1;
    }
    // Digit # with a new timestamp; and voice, which is no event.
    agent.send(to, &rtp(0, false, seq, 9000, 5, &[0xff; 160]));
    agent.send(to, &rtp(101, true, seq + 1, 16000, 5, &[11, 0x8a, 0, 160]));
    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(3), events.recv()).await {
            Ok(Some(MediaEvent::Dtmf {
                session_id,
                leg,
                digit,
            })) => {
                assert_eq!((session_id, leg), (s.id(), LegId::A));
                got.push(digit);
            }
            other => panic!("expected a digit, got {other:?}"),
        }
    }
    assert_eq!(got, ['1', '#']);
    let more = tokio::time::timeout(Duration::from_millis(200), events.recv()).await;
    assert!(more.is_err(), "one report per event: {more:?}");
    // Another leg's events are not watched.
    customer.send(
        s.leg(LegId::B).bound_rtp(),
        &rtp(101, true, 1, 500, 9, &[3, 0x8a, 0, 160]),
    );
    let more = tokio::time::timeout(Duration::from_millis(200), events.recv()).await;
    assert!(more.is_err(), "{more:?}");
}

#[tokio::test]
async fn a_recorded_session_writes_each_leg_on_its_channel_io_uring() {
    if let Some(b) = support::io_uring() {
        recorded(b).await;
    }
}

#[tokio::test]
async fn a_recorded_session_writes_each_leg_on_its_channel_epoll() {
    recorded(Backend::Epoll).await;
}

async fn recorded(b: Backend) {
    use media::g711::{parse_wav_stereo, Tone};
    let relay = relay(b, 44600, 44699, LatchMode::default());
    let mut s = relay.allocate_session().unwrap();
    let (agent, customer) = (Peer::new(), Peer::new());
    s.set_peer(LegId::A, agent.addr(), None, false).unwrap();
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    let dir = std::env::temp_dir().join(format!("media-rec-{}-{:?}", std::process::id(), b));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("call.wav");
    s.record(path.clone()).unwrap();
    assert!(s.record(path.clone()).is_err(), "one recording per session");
    let (mut ta, mut tb) = (Tone::new(500.0), Tone::new(1500.0));
    let mut buf = [0i16; 160];
    for i in 0..50u16 {
        ta.fill(&mut buf);
        let pa: Vec<u8> = buf.iter().map(|x| G711::Pcmu.encode(*x)).collect();
        agent.send(
            s.leg(LegId::A).bound_rtp(),
            &rtp(0, i == 0, i, u32::from(i) * 160, 1, &pa),
        );
        tb.fill(&mut buf);
        let pb: Vec<u8> = buf.iter().map(|x| G711::Pcma.encode(*x)).collect();
        customer.send(
            s.leg(LegId::B).bound_rtp(),
            &rtp(8, i == 0, i, u32::from(i) * 160, 2, &pb),
        );
        // Still relayed both ways.
        customer.recv();
        agent.recv();
        std::thread::sleep(Duration::from_millis(20));
    }
    let rec = s.take_recording().expect("a recording");
    let _ = s.close();
    let summary = tokio::task::spawn_blocking(move || rec.wait())
        .await
        .unwrap();
    assert_eq!(summary.error, None);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(summary.bytes, bytes.len() as u64);
    let samples = parse_wav_stereo(&bytes).unwrap();
    let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
    let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
    assert!(left.len() >= 6000, "{} samples", left.len());
    let mid = left.len() / 2;
    let (l, r) = (&left[mid - 800..mid + 800], &right[mid - 800..mid + 800]);
    assert!(tone_power(l, 500.0) > 0.3, "the agent on the left");
    assert!(tone_power(r, 1500.0) > 0.3, "the customer on the right");
    assert!(tone_power(l, 1500.0) < 0.05 && tone_power(r, 500.0) < 0.05);
    let _ = std::fs::remove_dir_all(&dir);
}
