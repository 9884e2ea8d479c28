//! Two nodes' APIs on one store: a hang-up of a call another node runs reaches that node,
//! signed with the shared `[node] secret`; a dead or silent owner gives a clear error.

use std::sync::Arc;

use serde_json::json;
use store::{NodeLease, Secret};

use crate::support::*;

const SECRET: &str = "cluster-secret-0123456789";

fn node_config(id: &str) -> api::ApiConfig {
    api::ApiConfig {
        server_id: id.to_owned(),
        node_secret: Some(Secret::new(SECRET.to_owned())),
        ..test_config()
    }
}

async fn lease(s: &Server, node: &str, api_url: &str, until_ms: i64) {
    s.store.release_node_lease(node, "run-1").await.unwrap();
    s.store
        .acquire_node_lease(
            &NodeLease {
                node_id: node.to_owned(),
                instance: "run-1".to_owned(),
                api_url: api_url.to_owned(),
                until_ms,
            },
            now(),
            None,
        )
        .await
        .unwrap();
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn hang(s: &Server, id: &str) -> (u16, serde_json::Value) {
    let r = s
        .http
        .post(s.url(&format!("/v1/calls/{id}/hangup")))
        .bearer_auth(ACME_SECRET)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_hangup_is_forwarded_to_the_node_running_the_call() {
    let dir = Arc::new(TempDir::new());
    let a = Server::start_with(node_config("node-a"), dir.clone(), false).await;
    let b = Server::start_with(node_config("node-b"), dir.clone(), false).await;
    lease(&a, "node-a", &a.base, now() + 60_000).await;
    lease(&b, "node-b", &b.base, now() + 60_000).await;

    // Placed on node-b, hung up through node-a.
    let (code, v) = b
        .create_call(json!({"user_id": ALICE, "dial_string": "+14155550100"}))
        .await;
    assert_eq!(code, 202, "{v}");
    let id = v["call_id"].as_str().unwrap().to_owned();
    let (code, v) = hang(&a, &id).await;
    assert_eq!(code, 202, "{v}");
    let mut status = String::new();
    for _ in 0..100 {
        let (_, call) = a.get(&format!("/v1/calls/{id}"), ACME_SECRET).await;
        status = call["status"].as_str().unwrap_or_default().to_owned();
        if status == "canceled" {
            let forwarded = call["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "api.hangup" && e["detail"]["forwarded_to"] == "node-b");
            assert!(forwarded, "{call}");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, "canceled", "ended by its own node");

    // The internal route wants the shared secret's signature.
    let path = format!("/internal/v1/calls/{id}/hangup");
    let r = a.http.post(b.url(&path)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let t = now() / 1000;
    let forged = api::forward::sign("not-the-cluster-secret", "node-a", t, "POST", &path);
    let r = a
        .http
        .post(b.url(&path))
        .header(api::forward::NODE_HEADER, forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let good = api::forward::sign(SECRET, "node-a", t, "POST", &path);
    let r = a
        .http
        .post(b.url(&path))
        .header(api::forward::NODE_HEADER, good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409, "signed, but the call is over");

    // A call of a node whose lease lapsed: a clear 503, not a wait.
    let (_, v) = b
        .create_call(json!({"user_id": ALICE, "dial_string": "+14155550101"}))
        .await;
    let id = v["call_id"].as_str().unwrap().to_owned();
    lease(&b, "node-b", &b.base, now() - 1).await;
    let (code, v) = hang(&a, &id).await;
    assert_eq!(code, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("node-b is down"),
        "{v}"
    );

    // An owner that takes the connection and never answers: 503 after the forward's
    // time-out.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    lease(&b, "node-b", &silent_url, now() + 60_000).await;
    let (code, v) = hang(&a, &id).await;
    assert_eq!(code, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{v}"
    );
    holder.abort();
    a.stop().await;
    b.stop().await;
}
