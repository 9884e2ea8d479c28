//! JustCall-style `POST /v2/calls/make` and Click-2-Call-style `GET /click2call`.

use b2bua::calls::{AgentTarget, CustomerTarget};
use serde_json::json;

use crate::support::*;

async fn make(s: &Server, auth: Option<&str>, body: serde_json::Value) -> (u16, serde_json::Value) {
    let mut r = s.http.post(s.url("/v2/calls/make")).json(&body);
    if let Some(a) = auth {
        r = r.header("Authorization", a);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn justcall_make_call() {
    let s = Server::start().await;
    let auth = Some("ak_test_1:sk_test_1");
    let (st, v) = make(
        &s,
        auth,
        json!({"from": "+14155551234", "to": "415-555-0100"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "success");
    assert_eq!(v["message"], "Call initiated");
    let d = &v["data"];
    assert!(d["call_id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(d["from"], "+14155551234");
    assert_eq!(d["to"], "+14155550100");
    assert_eq!(d["agent_id"], 42);
    assert_eq!(d["direction"], "outbound");
    assert_eq!(d["status"], "ringing");
    let spec = s.calls.spec(d["call_id"].as_str().unwrap());
    // agent_id defaults to the owner of `from`; `from` is the caller ID.
    assert_eq!(
        spec.agent,
        AgentTarget::Devices {
            user_id: ALICE.into()
        }
    );
    assert_eq!(spec.caller_id.as_deref(), Some("+14155551234"));

    // An explicit agent and caller ID.
    let (st, v) = make(
        &s,
        auth,
        json!({"from": "+14155559999", "to": "+14155550100",
        "agent_id": 42, "caller_id": "+14155551234"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");

    // Errors.
    let (st, v) = make(
        &s,
        None,
        json!({"from": "+14155551234", "to": "+14155550100"}),
    )
    .await;
    assert_eq!(st, 401);
    assert_eq!(v["status"], "error");
    assert_eq!(v["error"]["message"], "Unauthorized");
    assert_eq!(make(&s, Some("ak_test_1:wrong"), json!({})).await.0, 401);
    assert_eq!(make(&s, Some("Bearer sk_test_1"), json!({})).await.0, 401);
    let (st, v) = make(&s, auth, json!({"to": "+14155550100"})).await;
    assert_eq!(
        (st, v["message"].as_str().unwrap()),
        (400, "from is required")
    );
    let (st, v) = make(&s, auth, json!({"from": "+14155551234"})).await;
    assert_eq!(
        (st, v["message"].as_str().unwrap()),
        (400, "to is required")
    );
    let (st, v) = make(
        &s,
        auth,
        json!({"from": "+442071838750", "to": "+14155550100"}),
    )
    .await;
    assert_eq!(st, 404);
    assert_eq!(
        v["error"]["message"],
        "from is not a number of this account"
    );
    let (st, v) = make(
        &s,
        auth,
        json!({"from": "+14155559999", "to": "+14155550100"}),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str().unwrap()),
        (422, "agent_required")
    );
    let (st, _) = make(
        &s,
        auth,
        json!({"from": "+14155551234", "to": "+14155550100", "agent_id": 7}),
    )
    .await;
    assert_eq!(st, 404);
    let (st, v) = make(
        &s,
        auth,
        json!({"from": "+14155551234", "to": "+14155550100", "caller_id": "+15550000000"}),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str().unwrap()),
        (422, "caller_id_not_allowed")
    );
    // The same toll-fraud guard as the native API.
    let (st, v) = make(
        &s,
        auth,
        json!({"from": "+14155551234", "to": "+1 809 221 1234"}),
    )
    .await;
    assert_eq!(st, 422);
    assert_eq!(v["error"]["code"], "destination_not_allowed");
    assert_eq!(
        v["error"]["message"],
        "+18092211234 is a number in DO, which is not in the account's allowed_countries (US)"
    );
    let (st, v) = make(
        &s,
        auth,
        json!({"from": "+14155551234", "to": "+1415555010"}),
    )
    .await;
    assert_eq!(st, 422);
    assert_eq!(v["error"]["code"], "invalid_destination");
    assert_eq!(
        v["error"]["message"],
        "+1415555010 is not a valid number: too short for US"
    );
    s.stop().await;
}

async fn c2c(s: &Server, query: &str) -> serde_json::Value {
    let r = s
        .http
        .get(s.url(&format!("/click2call?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn click2call_shapes_and_status() {
    let s = Server::start().await;
    let v = c2c(
        &s,
        "api_key=sk_test_1&dial_first=1001&dial_second=%2B14155550100&timeout=20",
    )
    .await;
    let r = &v["response"];
    assert_eq!(r["status"], "success", "{v}");
    assert_eq!(r["errors"], json!([]));
    assert_eq!(r["server_id"], "test-node");
    let request_id = r["request_id"].as_str().unwrap().to_owned();
    let call_id = r["call_id"].as_str().unwrap().to_owned();
    let spec = s.calls.spec(&call_id);
    assert_eq!(
        spec.agent,
        AgentTarget::Devices {
            user_id: ALICE.into()
        }
    );
    assert_eq!(spec.customer, CustomerTarget::E164("+14155550100".into()));
    assert_eq!(spec.agent_ring.as_secs(), 20);

    // A number on a named PBX trunk, presented as one of the account's numbers.
    let v = c2c(&s, "api_key=sk_test_1&dial_first=5551&dial_second=4155550100&dial_as=%2B14155559999&pbx=carrier").await;
    assert_eq!(v["response"]["status"], "success", "{v}");
    let spec = s.calls.spec(v["response"]["call_id"].as_str().unwrap());
    assert_eq!(
        spec.agent,
        AgentTarget::Trunk {
            number: "5551".into(),
            dial_as: Some("+14155559999".into()),
            trunk: Some("carrier".into())
        }
    );
    assert_eq!(spec.caller_id.as_deref(), Some("+14155559999"));

    // Failures still answer 200, in the same shape.
    for (q, err) in [
        ("dial_first=1001&dial_second=%2B14155550100", "Unauthorized"),
        (
            "api_key=nope&dial_first=1001&dial_second=%2B14155550100",
            "Unauthorized",
        ),
        (
            "api_key=sk_test_1&dial_second=%2B14155550100",
            "dial_first is required",
        ),
        (
            "api_key=sk_test_1&dial_first=1001",
            "dial_second is required",
        ),
        (
            "api_key=sk_test_1&dial_first=1001&dial_second=%2B14155550100&timeout=soon",
            "timeout must be a whole number of seconds",
        ),
        (
            "api_key=sk_test_1&dial_first=1001&dial_second=%2B14155550100&pbx=globex-sos",
            "pbx is not a trunk of this account",
        ),
        // The agent leg dialled as a number on a trunk passes the same guard.
        (
            "api_key=sk_test_1&dial_first=%2B19005551234&dial_second=%2B14155550100&pbx=carrier",
            "+19005551234 is a premium_rate number in US, and the account blocks premium_rate numbers",
        ),
        (
            "api_key=sk_test_1&dial_first=1001&dial_second=%2B442071838750",
            "+442071838750 is a number in GB, which is not in the account's allowed_countries (US)",
        ),
    ] {
        let v = c2c(&s, q).await;
        assert_eq!(v["response"]["status"], "fail", "{q}");
        assert_eq!(v["response"]["errors"], json!([err]), "{q}");
        assert!(v["response"]["request_id"].is_string());
    }

    // The status endpoint returns the whole timeline of the request.
    s.calls.complete(&call_id);
    let r = s
        .http
        .get(s.url(&format!(
            "/click2call/status/{request_id}?api_key=sk_test_1"
        )))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    let resp = &v["response"];
    assert_eq!(resp["status"], "success", "{v}");
    assert_eq!(resp["call_id"], call_id.as_str());
    assert_eq!(resp["call_status"], "completed");
    let tl = resp["timeline"].as_array().unwrap();
    assert_eq!(tl.len(), 6);
    assert_eq!(tl[0]["kind"], "api.request");
    assert_eq!(tl[0]["detail"]["dial_first"], "1001");
    // The request's api_key is not in the timeline.
    assert!(!v.to_string().contains("sk_test_1"));
    // Another account's key does not see it.
    let r = s
        .http
        .get(s.url(&format!(
            "/click2call/status/{request_id}?api_key=sk_test_2"
        )))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["response"]["status"], "fail");
    assert_eq!(v["response"]["errors"], json!(["Request not found"]));
    s.stop().await;
}
