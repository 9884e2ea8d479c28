//! `/healthz`, `/openapi.json`, `/metrics`, request ids, and the secret scan of the logs.

use serde_json::json;
use store::Binding;

use crate::support::*;

#[tokio::test]
async fn health_openapi_and_request_ids() {
    let s = Server::start().await;
    let r = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        json!({"status": "ok"})
    );
    let r = s
        .http
        .get(s.url("/healthz"))
        .header("X-Request-Id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");

    let doc: serde_json::Value = s
        .http
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/calls",
        "/v1/calls/{call_id}",
        "/v1/calls/{call_id}/hangup",
        "/v1/events",
        "/v1/users",
        "/v1/users/{user_id}",
        "/v1/users/{user_id}/devices",
        "/v1/users/{user_id}/registrations",
        "/v1/devices/{username}",
        "/v1/numbers",
        "/v1/numbers/{number}",
        "/v1/trunks",
        "/v1/trunks/{name}",
        "/v2/calls/make",
        "/click2call",
        "/click2call/status/{request_id}",
        "/healthz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
    assert!(paths["/v1/calls"]["post"]["responses"]["202"].is_object());
    assert!(doc["components"]["schemas"]["CreateCall"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    s.stop().await;
}

#[tokio::test]
async fn metrics_count_calls_by_outcome() {
    let s = Server::start().await;
    s.metrics.set_registrations_source(|| 3);
    s.metrics.set_relay_packets(1234);
    let (_, v) = s
        .create_call(json!({"user_id": ALICE, "dial_string": "+14155550100"}))
        .await;
    s.calls.complete(v["call_id"].as_str().unwrap());
    let (_, v) = s
        .create_call(json!({"user_id": ALICE, "dial_string": "+14155550100"}))
        .await;
    let live = v["call_id"].as_str().unwrap().to_owned();
    let r = s.http.get(s.url("/metrics")).send().await.unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    assert!(
        text.contains("dialbridge_calls_total{outcome=\"completed\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("dialbridge_calls_started_total 2\n"));
    assert!(text.contains("dialbridge_active_calls 1\n"));
    assert!(text.contains("dialbridge_registrations 3\n"));
    assert!(text.contains("dialbridge_relay_packets_total 1234\n"));
    assert!(text.contains("# TYPE dialbridge_callback_retries_total counter\n"));
    s.calls.complete(&live);
    s.stop().await;
}

#[tokio::test]
async fn registrations_of_a_user() {
    let s = Server::start().await;
    let now = api::time::now_ms() / 1000;
    s.store
        .upsert_binding(&Binding {
            device_username: "alice-desk".into(),
            user_id: ALICE.into(),
            contact: "<sip:alice-desk@192.0.2.10:5062>".into(),
            source: "192.0.2.10:5062".into(),
            transport: "udp".into(),
            local: "127.0.0.1:5060".into(),
            expires_at: now + 300,
            q: None,
            call_id: "reg-1".into(),
            cseq: 1,
            instance: None,
            reg_id: None,
            user_agent: Some("Yealink T46".into()),
            updated_at: now,
            path: Vec::new(),
        })
        .await
        .unwrap();
    let (st, v) = s
        .get(&format!("/v1/users/{ALICE}/registrations"), ACME_SECRET)
        .await;
    assert_eq!(st, 200);
    let b = &v["data"][0];
    assert_eq!(b["device"], "alice-desk");
    assert_eq!(b["contact"], "<sip:alice-desk@192.0.2.10:5062>");
    assert_eq!(b["source"], "192.0.2.10:5062");
    assert_eq!(b["transport"], "udp");
    assert_eq!(b["user_agent"], "Yealink T46");
    let left = b["expires_in"].as_i64().unwrap();
    assert!((295..=300).contains(&left), "{left}");
    assert_eq!(
        api::time::parse_time_ms(b["expires_at"].as_str().unwrap()),
        Some((now + 300) * 1000)
    );
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_error(
        &s.get(&format!("/v1/users/{ALICE}/registrations"), GLOBEX_SECRET)
            .await,
        404,
        "user_not_found",
        "User not found",
    );
    assert_eq!(
        s.get(&format!("/v1/users/{ALICE}/registrations"), "x")
            .await
            .0,
        401
    );
    s.stop().await;
}

/// Runs requests that carry every kind of secret, then scans everything logged by this test
/// binary for them.
#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let s = Server::start().await;
    let (_, v) = s
        .create_call(json!({"user_id": ALICE, "dial_string": "+14155550100",
            "callback_url": "http://127.0.0.1:9/cb"}))
        .await;
    s.calls.complete(v["call_id"].as_str().unwrap());
    let _ = s
        .http
        .get(s.url("/click2call?api_key=sk_test_1&dial_first=1001&dial_second=%2B14155550100"))
        .send()
        .await
        .unwrap();
    let _ = s
        .http
        .post(s.url(&format!("/v1/users/{ALICE}/devices")))
        .bearer_auth(ACME_SECRET)
        .json(&json!({"username": "alice-new", "password": "n3w-device-pass"}))
        .send()
        .await
        .unwrap();
    let _ = s
        .http
        .post(s.url("/v2/calls/make"))
        .header("Authorization", "ak_test_1:sk_test_1")
        .json(&json!({"from": "+14155551234", "to": "+14155550100"}))
        .send()
        .await
        .unwrap();
    // Let the dispatcher try the callbacks (the receiver port refuses).
    eventually_async("a callback attempt", || async {
        s.store
            .callbacks_for_call(v["call_id"].as_str().unwrap())
            .await
            .unwrap()
            .iter()
            .any(|c| c.attempts > 0)
    })
    .await;
    let logs = captured_logs();
    assert!(logs.contains("/click2call"), "the access log is captured");
    for secret in [
        ACME_SECRET,
        GLOBEX_SECRET,
        ACME_WEBHOOK,
        DEVICE_PASSWORD,
        "n3w-device-pass",
        "trunk-pass",
        "api_key=",
    ] {
        assert!(!logs.contains(secret), "{secret} found in the logs");
    }
    s.stop().await;
}

/// `docs/openapi.json` is the document the server serves, and `docs/api.md` its rendering.
/// When either is stale this test writes the current one and fails, so that the new
/// document is committed with the change.
#[test]
fn published_openapi_document_is_current() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    let doc = api::document::document();
    let mut json = serde_json::to_string_pretty(doc).unwrap();
    json.push('\n');
    let mut stale = Vec::new();
    for (name, current) in [
        ("openapi.json", json),
        ("api.md", api::document::markdown(doc)),
    ] {
        let path = docs.join(name);
        if std::fs::read_to_string(&path).unwrap_or_default() != current {
            std::fs::write(&path, &current).unwrap();
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "docs/{stale:?} were stale and have been regenerated from the code: commit them"
    );
}

/// The answers are what the document says: a placed and completed call, the call log, the
/// account, its users, numbers and trunks, checked against their schemas in the document.
#[tokio::test]
async fn answers_fit_their_schemas_in_the_document() {
    let s = Server::start().await;
    let c = api::contract::contract();
    let fits = |schema: &str, v: &serde_json::Value| {
        let r = c.validate(
            &json!({"$ref": format!("#/components/schemas/{schema}")}),
            v,
            "",
        );
        assert!(r.is_ok(), "{schema}: {r:?} in {v}");
    };
    let (st, placed) = s
        .create_call(json!({"user_id": ALICE, "dial_string": "+14155550100",
            "metadata": {"ticket": 7}}))
        .await;
    assert_eq!(st, 202, "{placed}");
    fits("CallAccepted", &placed);
    let id = placed["call_id"].as_str().unwrap().to_owned();
    let (_, running) = s.get(&format!("/v1/calls/{id}"), ACME_SECRET).await;
    fits("CallDetail", &running);
    s.calls.complete(&id);
    let (_, done) = s.get(&format!("/v1/calls/{id}"), ACME_SECRET).await;
    assert_eq!(done["status"], "completed");
    fits("CallDetail", &done);
    for (path, schema) in [
        ("/v1/calls", "CallList"),
        ("/v1/account", "Account"),
        ("/v1/users", "UserList"),
        ("/v1/numbers", "NumberList"),
        ("/v1/trunks", "TrunkList"),
        ("/v1/account/limits", "Limits"),
    ] {
        let (st, v) = s.get(path, ACME_SECRET).await;
        assert_eq!(st, 200, "{path}: {v}");
        fits(schema, &v);
    }
    // A schema that does not fit is noticed.
    let r = c.validate(
        &json!({"$ref": "#/components/schemas/Call"}),
        &json!({"call_id": "nope"}),
        "",
    );
    assert!(r.is_err());
    s.stop().await;
}
