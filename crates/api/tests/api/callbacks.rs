//! Callbacks: retries after a 500 and a time-out, order, signatures, unique event ids, and
//! a restart with callbacks pending.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use b2bua::calls::{CallEventKind, Leg};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use store::CallStatus;

use crate::support::*;

#[derive(Clone, Copy, Debug)]
enum Reply {
    Fail500,
    Hang,
    Accept,
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Hit {
    signature: String,
    body: String,
    accepted: bool,
}

#[derive(Clone, Default)]
struct Receiver {
    script: Arc<Mutex<VecDeque<Reply>>>,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    fn accepted(&self) -> Vec<serde_json::Value> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.accepted)
            .map(|h| serde_json::from_str(&h.body).unwrap())
            .collect()
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    let reply = r
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Accept);
    let signature = headers
        .get("dialbridge-signature")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    r.hits.lock().unwrap().push(Hit {
        signature,
        body,
        accepted: matches!(reply, Reply::Accept),
    });
    match reply {
        Reply::Fail500 => StatusCode::INTERNAL_SERVER_ERROR,
        Reply::Hang => {
            // Longer than the dispatcher's 400 ms time-out.
            tokio::time::sleep(Duration::from_secs(3)).await;
            StatusCode::OK
        }
        Reply::Accept => StatusCode::OK,
    }
}

async fn start_receiver(script: Vec<Reply>) -> (Receiver, String) {
    let r = Receiver {
        script: Arc::new(Mutex::new(script.into())),
        ..Receiver::default()
    };
    let app = axum::Router::new()
        .route("/cb", axum::routing::post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cb", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, url)
}

fn verify(secret: &str, hit: &Hit) {
    let (t, v1) = hit
        .signature
        .split_once(",v1=")
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v)))
        .expect("t=…,v1=… signature");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", hit.body).as_bytes());
    assert_eq!(v1, hex::encode(mac.finalize().into_bytes()), "signature");
    let t: i64 = t.parse().unwrap();
    assert!((api::time::now_ms() / 1000 - t).abs() < 60);
}

#[tokio::test]
async fn callbacks_are_retried_signed_and_in_order() {
    let (rx, url) = start_receiver(vec![Reply::Fail500, Reply::Hang]).await;
    let s = Server::start().await;
    let (st, v) = s
        .create_call(json!({"user_id": ALICE, "dial_string": "+14155550100",
            "callback_url": url, "metadata": {"crm": "x-1"}}))
        .await;
    assert_eq!(st, 202, "{v}");
    let id = v["call_id"].as_str().unwrap().to_owned();
    s.calls.complete(&id);

    eventually("three callbacks accepted", || rx.accepted().len() == 3).await;
    let got = rx.accepted();
    let statuses: Vec<&str> = got.iter().map(|b| b["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["ringing", "in-progress", "completed"]);
    let seqs: Vec<i64> = got
        .iter()
        .map(|b| b["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    let first = &got[0];
    assert_eq!(first["call_id"], id.as_str());
    assert_eq!(first["leg"], "agent");
    assert_eq!(first["sip_code"], 180);
    assert_eq!(first["duration"], 0);
    assert_eq!(first["direction"], "outbound");
    assert_eq!(first["from"], "+14155551234");
    assert_eq!(first["to"], "+14155550100");
    assert_eq!(first["metadata"]["crm"], "x-1");
    assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(got[2]["duration"], 7);
    assert_eq!(got[2]["leg"], "customer");

    // The first callback was tried three times (500, time-out, accepted): same event id.
    let hits = rx.hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 5);
    let first_id = first["event_id"].as_str().unwrap();
    let attempts_of_first = hits.iter().filter(|h| h.body.contains(first_id)).count();
    assert_eq!(attempts_of_first, 3);
    // Nothing of a later callback went out before the first was delivered.
    assert!(hits[..3].iter().all(|h| h.body.contains(first_id)));
    for h in &hits {
        verify(ACME_WEBHOOK, h);
    }
    let mut ids: Vec<&str> = got
        .iter()
        .map(|b| b["event_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3);

    // The outbox and the timeline record the attempts.
    eventually_async("outbox marks all delivered", || async {
        s.store
            .callbacks_for_call(&id)
            .await
            .unwrap()
            .iter()
            .all(|c| c.state == store::OutboxState::Delivered)
    })
    .await;
    let (_, call) = s.get(&format!("/v1/calls/{id}"), ACME_SECRET).await;
    let cb_entries: Vec<&serde_json::Value> = call["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "callback")
        .collect();
    assert_eq!(cb_entries.len(), 5);
    let results: Vec<&str> = cb_entries
        .iter()
        .map(|e| e["detail"]["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        results,
        ["retry", "retry", "delivered", "delivered", "delivered"]
    );
    assert_eq!(cb_entries[0]["detail"]["http_status"], 500);
    assert_eq!(cb_entries[1]["detail"]["error"], "timed out");
    assert_eq!(call["callbacks"][0]["attempts"], 3);
    assert_eq!(call["callbacks"][0]["state"], "delivered");
    let (delivered, retried, _) = s.metrics.callback_counts();
    assert_eq!((delivered, retried), (3, 2));
    s.stop().await;
}

#[tokio::test]
async fn canceled_and_busy_stages_and_attempt_cap() {
    let (rx, url) = start_receiver(vec![]).await;
    let mut cfg = test_config();
    cfg.callbacks.max_attempts = 2;
    let s = Server::start_with(cfg, Arc::new(TempDir::new()), true).await;
    let (_, v) = s
        .create_call(json!({"user_id": ALICE, "dial_string": "+14155550100", "callback_url": url}))
        .await;
    let canceled = v["call_id"].as_str().unwrap().to_owned();
    let r = s
        .http
        .post(s.url(&format!("/v1/calls/{canceled}/hangup")))
        .bearer_auth(ACME_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let (_, v) = s
        .create_call(json!({"user_id": ALICE, "dial_string": "+14155550100", "callback_url": url}))
        .await;
    let busy = v["call_id"].as_str().unwrap().to_owned();
    s.calls.emit(
        &busy,
        ended(CallStatus::Busy, Some(Leg::Customer), Some(486), 0),
    );
    eventually("two callbacks", || rx.accepted().len() == 2).await;
    let by_call: HashMap<String, serde_json::Value> = rx
        .accepted()
        .into_iter()
        .map(|b| (b["call_id"].as_str().unwrap().to_owned(), b))
        .collect();
    assert_eq!(by_call[&canceled]["status"], "canceled");
    assert_eq!(by_call[&canceled]["leg"], json!(null));
    assert_eq!(by_call[&busy]["status"], "busy");
    assert_eq!(by_call[&busy]["sip_code"], 486);

    // A receiver that never answers 2xx: abandoned after the cap, and the next one goes.
    let (_, v) = s
        .create_call(json!({"user_id": ALICE, "dial_string": "+14155550100",
            "callback_url": "http://127.0.0.1:9/refused"}))
        .await;
    let dead = v["call_id"].as_str().unwrap().to_owned();
    s.calls.emit(
        &dead,
        CallEventKind::Ringing {
            leg: Leg::Agent,
            sip_code: 180,
        },
    );
    s.calls.emit(
        &dead,
        ended(CallStatus::NoAnswer, Some(Leg::Agent), Some(408), 0),
    );
    eventually_async("both abandoned", || async {
        let cbs = s.store.callbacks_for_call(&dead).await.unwrap();
        cbs.len() == 2 && cbs.iter().all(|c| c.state == store::OutboxState::Abandoned)
    })
    .await;
    let cbs = s.store.callbacks_for_call(&dead).await.unwrap();
    assert!(cbs.iter().all(|c| c.attempts == 2));
    assert_eq!(s.metrics.callback_counts().2, 2);
    s.stop().await;
}

#[tokio::test]
async fn restart_with_pending_callbacks_loses_none() {
    let dir = Arc::new(TempDir::new());
    // The receiver accepts four callbacks, then fails everything until the restart.
    let mut script = vec![Reply::Accept; 4];
    script.extend(vec![Reply::Fail500; 1000]);
    let (rx, url) = start_receiver(script).await;
    let mut cfg = test_config();
    cfg.callbacks.max_attempts = 100;
    let s1 = Server::start_with(cfg.clone(), dir.clone(), true).await;
    let mut calls = Vec::new();
    for i in 0..3 {
        let (st, v) = s1
            .create_call(
                json!({"user_id": ALICE, "dial_string": format!("+1415555020{i}"),
                "callback_url": url}),
            )
            .await;
        assert_eq!(st, 202);
        let id = v["call_id"].as_str().unwrap().to_owned();
        s1.calls.complete(&id);
        calls.push(id);
    }
    let outbox = |store: Arc<dyn store::Store>| {
        let calls = calls.clone();
        async move {
            let mut all = Vec::new();
            for c in &calls {
                all.extend(store.callbacks_for_call(c).await.unwrap());
            }
            all
        }
    };
    eventually_async("four delivered and a failed attempt", || async {
        let all = outbox(s1.store.clone()).await;
        let delivered = all
            .iter()
            .filter(|e| e.state == store::OutboxState::Delivered)
            .count();
        let failed = all
            .iter()
            .any(|e| e.state == store::OutboxState::Pending && e.attempts > 0);
        delivered == 4 && failed
    })
    .await;
    let expected: Vec<String> = outbox(s1.store.clone())
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(expected.len(), 9);
    // Stop the first life with five callbacks pending.
    s1.stop().await;
    rx.script.lock().unwrap().clear();

    // Second life on the same store file.
    let s2 = Server::start_with(cfg, dir.clone(), true).await;
    eventually("all callbacks delivered", || rx.accepted().len() >= 9).await;
    eventually_async("outbox drained", || async {
        outbox(s2.store.clone())
            .await
            .iter()
            .all(|e| e.state == store::OutboxState::Delivered)
    })
    .await;
    let got = rx.accepted();
    let mut ids: Vec<String> = got
        .iter()
        .map(|b| b["event_id"].as_str().unwrap().to_owned())
        .collect();
    let mut want = expected.clone();
    want.sort();
    ids.sort();
    // Exactly once each, by event id.
    assert_eq!(ids, want);
    // Per call, in order, across the restart.
    for c in &calls {
        let seqs: Vec<i64> = got
            .iter()
            .filter(|b| b["call_id"] == c.as_str())
            .map(|b| b["sequence"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
    }
    s2.stop().await;
}
