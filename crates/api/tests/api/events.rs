//! `GET /v1/events`: live delivery, account isolation, `Last-Event-ID` resume.

use std::time::Duration;

use b2bua::calls::{CallEventKind, Leg};
use serde_json::json;

use crate::support::*;

/// One parsed SSE event.
#[derive(Debug)]
struct Sse {
    id: u64,
    event: String,
    data: serde_json::Value,
}

/// Reads `n` events (comments skipped) from an SSE response, within 10 s.
async fn read_events(mut resp: reqwest::Response, n: usize) -> Vec<Sse> {
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("SSE events in time")
            .unwrap()
            .expect("stream open");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse().unwrap());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if let Some(id) = id {
                out.push(Sse {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                });
            }
        }
    }
    out
}

#[tokio::test]
async fn live_events_and_resume() {
    let s = Server::start().await;
    let subscribe = |secret: &'static str, last: Option<u64>| {
        let mut r = s.http.get(s.url("/v1/events")).bearer_auth(secret);
        if let Some(l) = last {
            r = r.header("Last-Event-ID", l.to_string());
        }
        async move {
            let r = r.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            assert!(r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream"));
            r
        }
    };
    assert_eq!(
        s.http
            .get(s.url("/v1/events"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    let acme = subscribe(ACME_SECRET, None).await;
    let globex = subscribe(GLOBEX_SECRET, None).await;

    let (_, v) = s
        .create_call(json!({"user_id": ALICE, "dial_string": "+14155550100"}))
        .await;
    let acme_call = v["call_id"].as_str().unwrap().to_owned();
    let r = s
        .http
        .post(s.url("/v1/calls"))
        .bearer_auth(GLOBEX_SECRET)
        .json(&json!({"user_id": BOB, "dial_string": "+442071838751"}))
        .send()
        .await
        .unwrap();
    let globex_call = r.json::<serde_json::Value>().await.unwrap()["call_id"]
        .as_str()
        .unwrap()
        .to_owned();

    s.calls.emit(
        &globex_call,
        CallEventKind::Ringing {
            leg: Leg::Agent,
            sip_code: 180,
        },
    );
    s.calls.complete(&acme_call);

    let got = read_events(acme, 5).await;
    let names: Vec<&str> = got.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        ["sip", "ringing", "agent_answered", "in_progress", "ended"]
    );
    assert!(got.iter().all(|e| e.data["call_id"] == acme_call.as_str()));
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(got[1].data["status"], "ringing");
    assert_eq!(got[4].data["status"], "completed");

    // Globex's stream carries its own event only.
    let theirs = read_events(globex, 1).await;
    assert_eq!(theirs[0].data["call_id"], globex_call.as_str());
    assert_eq!(theirs[0].event, "ringing");

    // Resume after the second event: the three after it come from the ring, then live ones.
    let resumed = subscribe(ACME_SECRET, Some(got[1].id)).await;
    let (_, v) = s
        .create_call(json!({"user_id": ALICE, "dial_string": "+14155550101"}))
        .await;
    let next_call = v["call_id"].as_str().unwrap().to_owned();
    s.calls.emit(
        &next_call,
        CallEventKind::Ringing {
            leg: Leg::Agent,
            sip_code: 183,
        },
    );
    let again = read_events(resumed, 4).await;
    let ids: Vec<u64> = again.iter().map(|e| e.id).collect();
    assert_eq!(&ids[..3], &[got[2].id, got[3].id, got[4].id]);
    assert_eq!(again[3].data["call_id"], next_call.as_str());
    assert!(again[3].id > got[4].id);
    s.stop().await;
}
