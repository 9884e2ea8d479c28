//! The media time-out as the relay really raises it, with a short time-out.

mod support;

use std::time::{Duration, Instant};

use media::{Backend, LatchMode, LegId, MediaEvent};
use support::{relay_with_timeout, rtp, Peer};

#[tokio::test]
async fn a_started_silent_session_times_out_and_an_unstarted_one_does_not_io_uring() {
    if let Some(b) = support::io_uring() {
        silent_session_times_out(b).await;
    }
}

#[tokio::test]
async fn a_started_silent_session_times_out_and_an_unstarted_one_does_not_epoll() {
    silent_session_times_out(Backend::Epoll).await;
}

async fn silent_session_times_out(b: Backend) {
    let timeout = Duration::from_millis(200);
    let relay = relay_with_timeout(b, 43000, 43099, LatchMode::default(), timeout);
    let mut events = relay.events().unwrap();
    assert!(relay.events().is_none(), "one receiver");
    let ringing = relay.allocate_session().unwrap(); // never started: no time-out
    let silent = relay.allocate_session().unwrap();
    let started = Instant::now();
    silent.start().unwrap();
    // Some media at first, then silence: the time-out counts from the last packet.
    let (agent, customer) = (Peer::new(), Peer::new());
    silent
        .set_peer(LegId::B, customer.addr(), None, false)
        .unwrap();
    silent
        .set_peer(LegId::A, agent.addr(), None, false)
        .unwrap();
    agent.send(
        silent.leg(LegId::A).bound_rtp(),
        &rtp(0, false, 1, 0, 1, &[0; 160]),
    );
    customer.recv();
    let last_packet = Instant::now();

    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("a time-out event")
        .unwrap();
    assert_eq!(
        ev,
        MediaEvent::Timeout {
            session_id: silent.id()
        }
    );
    assert!(started.elapsed() >= timeout);
    assert!(last_packet.elapsed() >= timeout - Duration::from_millis(20));
    // Fires once, and never for the session that was not started.
    let more = tokio::time::timeout(Duration::from_millis(300), events.recv()).await;
    assert!(more.is_err(), "unexpected event {more:?}");
    drop(ringing);
}
