//! The native call API: errors, placement, idempotency, tenancy, paging, hang-up, limits.

use b2bua::calls::{AgentTarget, CustomerTarget};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn documented_errors_of_post_calls() {
    let s = Server::start().await;
    let post = |auth: Option<&'static str>, body: serde_json::Value| {
        let mut r = s.http.post(s.url("/v1/calls")).json(&body);
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        async move {
            let r = r.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let ok_body = json!({"user_id": ALICE, "dial_string": "+14155550100"});
    assert_error(
        &post(None, ok_body.clone()).await,
        401,
        "unauthorized",
        "Unauthorized",
    );
    assert_error(
        &post(Some("Bearer nope"), ok_body.clone()).await,
        401,
        "unauthorized",
        "Unauthorized",
    );
    // A key:secret pair is not a Bearer secret.
    assert_error(
        &post(Some("ak_test_1:sk_test_1"), ok_body.clone()).await,
        401,
        "unauthorized",
        "Unauthorized",
    );
    let b = Some("Bearer sk_test_1");
    assert_error(
        &post(b, json!({"dial_string": "+14155550100"})).await,
        400,
        "missing_user_id",
        "user_id is required",
    );
    assert_error(
        &post(b, json!({"user_id": ALICE})).await,
        400,
        "missing_dial_string",
        "dial_string is required",
    );
    assert_error(
        &post(
            b,
            json!({"user_id": "alice", "dial_string": "+14155550100"}),
        )
        .await,
        400,
        "invalid_user_id",
        "Invalid user_id format",
    );
    assert_error(
        &post(
            b,
            json!({"user_id": "acct_01h2xcejqtf2nbrexx3vqjhp41", "dial_string": "1"}),
        )
        .await,
        400,
        "invalid_user_id",
        "Invalid user_id format",
    );
    assert_error(
        &post(
            b,
            json!({"user_id": "user_01h2xcejqtf2nbrexx3vqjhp99", "dial_string": "+14155550100"}),
        )
        .await,
        404,
        "user_not_found",
        "User not found",
    );
    // Another account's user is not found either.
    assert_error(
        &post(b, json!({"user_id": BOB, "dial_string": "+14155550100"})).await,
        404,
        "user_not_found",
        "User not found",
    );
    assert_error(
        &post(b, json!({"user_id": ALICE, "dial_string": "+442071838750"})).await,
        422,
        "destination_not_allowed",
        "+442071838750 is a number in GB, which is not in the account's allowed_countries (US)",
    );
    // +1 is not the US: Jamaica shares the code. A US premium-rate number is blocked by type.
    assert_error(
        &post(
            b,
            json!({"user_id": ALICE, "dial_string": "+1 876 555 1234"}),
        )
        .await,
        422,
        "destination_not_allowed",
        "+18765551234 is a number in JM, which is not in the account's allowed_countries (US)",
    );
    assert_error(
        &post(
            b,
            json!({"user_id": ALICE, "dial_string": "1-900-555-1234"}),
        )
        .await,
        422,
        "destination_not_allowed",
        "+19005551234 is a premium_rate number in US, and the account blocks premium_rate numbers",
    );
    assert_error(
        &post(b, json!({"user_id": ALICE, "dial_string": "+15550100"})).await,
        422,
        "invalid_destination",
        "+15550100 is not a valid number: too short for US",
    );
    assert_error(
        &post(b, json!({"user_id": ALICE, "dial_string": "911"})).await,
        422,
        "emergency_not_routable",
        "Emergency calls need a trunk flagged for emergency use; this account has none",
    );
    assert_error(
        &post(b, json!({"user_id": ALICE, "dial_string": "+1415"})).await,
        422,
        "invalid_destination",
        "dial_string is not dialable: +1415 is not a valid E.164 number",
    );
    assert_error(
        &post(b, json!({"user_id": ALICE, "dial_string": "4444"})).await,
        422,
        "unknown_extension",
        "Extension 4444 does not exist in this account",
    );
    assert_error(
        &post(
            b,
            json!({"user_id": ALICE, "dial_string": "+14155550100", "caller_id": "+442071838750"}),
        )
        .await,
        422,
        "caller_id_not_allowed",
        "caller_id must be one of the account's numbers",
    );
    let meta = post(
        b,
        json!({"user_id": ALICE, "dial_string": "+14155550100",
        "callback_url": "http://169.254.169.254/latest/meta-data"}),
    )
    .await;
    assert_eq!(meta.0, 422);
    assert_eq!(meta.1["error"]["code"], "invalid_callback_url");
    let ring = post(
        b,
        json!({"user_id": ALICE, "dial_string": "+14155550100", "ring_timeout": 0}),
    )
    .await;
    assert_error(
        &ring,
        400,
        "invalid_ring_timeout",
        "ring_timeout must be between 1 and 300",
    );
    // Unknown fields and wrong types are named.
    let unknown = post(
        b,
        json!({"user_id": ALICE, "dial_string": "1001", "colour": "red"}),
    )
    .await;
    assert_error(
        &unknown,
        400,
        "unknown_field",
        "colour is not a field of this request",
    );
    let typed = post(b, json!({"user_id": ALICE, "dial_string": 5})).await;
    assert_error(
        &typed,
        400,
        "invalid_dial_string",
        "dial_string must be a string",
    );
    // A number written as a float is an integer when it is one (JSON Schema).
    let nulls = post(b, json!({"user_id": null, "dial_string": "1001"})).await;
    assert_error(&nulls, 400, "missing_user_id", "user_id is required");
    // Nothing reached the engine.
    assert_eq!(s.calls.count(), 0);

    // Syntax error, wrong content type, oversized body.
    let raw = |ct: &'static str, body: Vec<u8>| {
        let r = s
            .http
            .post(s.url("/v1/calls"))
            .bearer_auth(ACME_SECRET)
            .header("content-type", ct)
            .body(body);
        async move {
            let r = r.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let syntax = raw("application/json", b"{\"user_id\": ".to_vec()).await;
    assert_eq!(syntax.0, 400);
    assert_eq!(syntax.1["error"]["code"], "invalid_json");
    assert_error(
        &raw("text/plain", b"{}".to_vec()).await,
        415,
        "unsupported_media_type",
        "Content-Type must be application/json",
    );
    let mut big = b"{\"metadata\": \"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 70 * 1024));
    big.extend(b"\"}");
    assert_error(
        &raw("application/json", big).await,
        413,
        "payload_too_large",
        "Request body is larger than 65536 bytes",
    );
    // Unknown route, wrong method.
    assert_error(
        &s.get("/v1/nothing", ACME_SECRET).await,
        404,
        "not_found",
        "Not found",
    );
    let r = s
        .http
        .delete(s.url("/v1/calls"))
        .bearer_auth(ACME_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "method_not_allowed");
    s.stop().await;
}

#[tokio::test]
async fn places_a_call_and_shows_its_timeline() {
    let s = Server::start().await;
    let (st, body) = s
        .create_call(json!({"user_id": ALICE, "dial_string": "(415) 555-0100",
            "ring_timeout": 12, "metadata": {"ticket": 7}}))
        .await;
    assert_eq!(st, 202, "{body}");
    let call_id = body["call_id"].as_str().unwrap().to_owned();
    assert!(call_id.starts_with("call_"));
    assert_eq!(body["status"], "queued");
    assert_eq!(body["user_id"], ALICE);
    assert_eq!(body["dial_string"], "(415) 555-0100");
    assert_eq!(body["destination"], "+14155550100");
    // The caller ID defaults to the number Alice owns.
    assert_eq!(body["caller_id"], "+14155551234");
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));

    let spec = s.calls.spec(&call_id);
    assert_eq!(
        spec.agent,
        AgentTarget::Devices {
            user_id: ALICE.into()
        }
    );
    assert_eq!(spec.customer, CustomerTarget::E164("+14155550100".into()));
    assert_eq!(spec.agent_ring.as_secs(), 12);
    assert_eq!(spec.customer_ring.as_secs(), 45);
    assert_eq!(spec.account_id, ACME);

    s.calls.complete(&call_id);
    let (st, call) = s.get(&format!("/v1/calls/{call_id}"), ACME_SECRET).await;
    assert_eq!(st, 200);
    assert_eq!(call["status"], "completed");
    assert_eq!(call["end_leg"], "customer");
    assert_eq!(call["outcome"]["status"], "completed");
    assert_eq!(call["outcome"]["reason"], "test completed");
    assert_eq!(call["metadata"]["ticket"], 7);
    assert_eq!(call["stats"]["agent"]["packets"], 100);
    assert_eq!(call["legs"]["agent"]["sip_call_id"], "a1@dialbridge");
    // The customer leg says what the metadata made of the number.
    assert_eq!(call["legs"]["customer"]["region"], "US");
    assert_eq!(
        call["legs"]["customer"]["number_type"],
        "fixed_line_or_mobile"
    );
    assert!(call["answered_at"].is_string());
    let kinds: Vec<&str> = call["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "api.request",
            "sip",
            "ringing",
            "agent_answered",
            "in_progress",
            "ended"
        ]
    );
    assert_eq!(call["timeline"][1]["leg"], "agent");
    assert_eq!(
        call["timeline"][1]["detail"]["summary"],
        "INVITE sip:alice-desk@127.0.0.1:5062"
    );
    assert!(call["timeline"][0]["at"].as_str().unwrap().ends_with('Z'));
    // No callback_url: no callbacks.
    assert_eq!(call["callbacks"], json!([]));

    // Extension dialling reaches the internal user; an explicit caller ID of the account is kept.
    let (st, body) = s
        .create_call(json!({"user_id": ALICE, "dial_string": "1001", "caller_id": "+14155559999"}))
        .await;
    assert_eq!(st, 202, "{body}");
    let spec = s.calls.spec(body["call_id"].as_str().unwrap());
    assert_eq!(
        spec.customer,
        CustomerTarget::User {
            user_id: ALICE.into()
        }
    );
    assert_eq!(spec.caller_id.as_deref(), Some("+14155559999"));
    s.stop().await;
}

#[tokio::test]
async fn emergency_calls_need_an_emergency_trunk() {
    let s = Server::start().await;
    // Globex (GB) has a trunk flagged for emergency use: 999 goes through.
    let r = s
        .http
        .post(s.url("/v1/calls"))
        .bearer_auth(GLOBEX_SECRET)
        .json(&json!({"user_id": BOB, "dial_string": "999"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let v: serde_json::Value = r.json().await.unwrap();
    let spec = s.calls.spec(v["call_id"].as_str().unwrap());
    assert_eq!(spec.customer, CustomerTarget::Emergency("999".into()));
    // Local GB format is normalised with the account's region.
    let r = s
        .http
        .post(s.url("/v1/calls"))
        .bearer_auth(GLOBEX_SECRET)
        .json(&json!({"user_id": BOB, "dial_string": "020 7183 8750"}))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["destination"], "+442071838750");
    s.stop().await;
}

#[tokio::test]
async fn idempotency_key_replays_and_refuses_another_body() {
    let s = Server::start().await;
    let send = |key: &'static str, body: serde_json::Value| {
        let r = s
            .http
            .post(s.url("/v1/calls"))
            .bearer_auth(ACME_SECRET)
            .header("Idempotency-Key", key)
            .json(&body);
        async move {
            let r = r.send().await.unwrap();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            (r.status().as_u16(), r.text().await.unwrap(), replayed)
        }
    };
    let body = json!({"user_id": ALICE, "dial_string": "+14155550100"});
    let first = send("k-1", body.clone()).await;
    assert_eq!(first.0, 202);
    assert!(!first.2);
    let again = send("k-1", body.clone()).await;
    assert_eq!((again.0, &again.1), (first.0, &first.1));
    assert!(again.2);
    // Same JSON with another key order is the same request.
    let reordered = send(
        "k-1",
        json!({"dial_string": "+14155550100", "user_id": ALICE}),
    )
    .await;
    assert_eq!(reordered.1, first.1);
    assert_eq!(s.calls.count(), 1);
    // Another body with the same key.
    let other = send(
        "k-1",
        json!({"user_id": ALICE, "dial_string": "+14155550101"}),
    )
    .await;
    assert_eq!(other.0, 422);
    let v: serde_json::Value = serde_json::from_str(&other.1).unwrap();
    assert_eq!(v["error"]["code"], "idempotency_key_reused");
    assert_eq!(
        v["error"]["message"],
        "Idempotency-Key was already used with a different request"
    );
    // Errors are replayed too.
    let bad = send("k-2", json!({"user_id": ALICE})).await;
    assert_eq!(bad.0, 400);
    assert_eq!(send("k-2", json!({"user_id": ALICE})).await.1, bad.1);
    // Keys are per account: Globex may use k-1 for its own request.
    let r = s
        .http
        .post(s.url("/v1/calls"))
        .bearer_auth(GLOBEX_SECRET)
        .header("Idempotency-Key", "k-1")
        .json(&json!({"user_id": BOB, "dial_string": "+442071838751"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(s.calls.count(), 2);
    s.stop().await;
}

#[tokio::test]
async fn tenancy_and_paging_of_the_call_log() {
    let s = Server::start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (st, v) = s
            .create_call(json!({"user_id": ALICE, "dial_string": format!("+1415555010{i}")}))
            .await;
        assert_eq!(st, 202);
        ids.push(v["call_id"].as_str().unwrap().to_owned());
        // Distinct creation times make "newest first" unambiguous.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    s.calls.complete(&ids[1]);
    // Newest first, 2 per page, following cursors.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/calls?limit=2&cursor={c}"),
            None => "/v1/calls?limit=2".to_owned(),
        };
        let (st, page) = s.get(&path, ACME_SECRET).await;
        assert_eq!(st, 200, "{page}");
        pages += 1;
        for c in page["data"].as_array().unwrap() {
            seen.push(c["call_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 10);
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    assert_eq!(pages, 3);
    // Filters.
    let (_, done) = s.get("/v1/calls?status=completed", ACME_SECRET).await;
    assert_eq!(done["data"].as_array().unwrap().len(), 1);
    assert_eq!(done["data"][0]["call_id"], ids[1].as_str());
    let (_, none) = s.get("/v1/calls?until=1000000000", ACME_SECRET).await;
    assert_eq!(none["data"], json!([]));
    let (_, all) = s
        .get(
            "/v1/calls?since=2020-01-01T00:00:00Z".to_owned().as_str(),
            ACME_SECRET,
        )
        .await;
    assert_eq!(all["data"].as_array().unwrap().len(), 5);
    assert_error(
        &s.get("/v1/calls?limit=0", ACME_SECRET).await,
        400,
        "invalid_limit",
        "limit must be between 1 and 100",
    );
    assert_error(
        &s.get("/v1/calls?limit=101", ACME_SECRET).await,
        400,
        "invalid_limit",
        "limit must be between 1 and 100",
    );
    assert_eq!(s.get("/v1/calls?status=lost", ACME_SECRET).await.0, 400);
    assert_eq!(s.get("/v1/calls?since=yesterday", ACME_SECRET).await.0, 400);
    assert_eq!(
        s.get("/v1/calls?cursor=zz", ACME_SECRET).await.1["error"]["code"],
        "invalid_cursor"
    );
    // A cursor of the right form that this API did not return starts after nothing.
    assert_eq!(s.get("/v1/calls?cursor=31322e61", ACME_SECRET).await.0, 200);
    assert_eq!(
        s.get("/v1/calls?colour=red", ACME_SECRET).await.1["error"]["code"],
        "invalid_query"
    );

    // Globex sees none of Acme's calls.
    let (_, theirs) = s.get("/v1/calls", GLOBEX_SECRET).await;
    assert_eq!(theirs["data"], json!([]));
    assert_error(
        &s.get(&format!("/v1/calls/{}", ids[0]), GLOBEX_SECRET).await,
        404,
        "call_not_found",
        "Call not found",
    );
    let r = s
        .http
        .post(s.url(&format!("/v1/calls/{}/hangup", ids[0])))
        .bearer_auth(GLOBEX_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(s.get("/v1/calls", "wrong").await.0, 401);
    s.stop().await;
}

#[tokio::test]
async fn hangup_cancels_and_then_conflicts() {
    let s = Server::start().await;
    let (_, v) = s
        .create_call(json!({"user_id": ALICE, "dial_string": "+14155550100"}))
        .await;
    let id = v["call_id"].as_str().unwrap();
    let hang = || {
        let r = s
            .http
            .post(s.url(&format!("/v1/calls/{id}/hangup")))
            .bearer_auth(ACME_SECRET);
        async move {
            let r = r.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    assert_eq!(hang().await.0, 202);
    let (_, call) = s.get(&format!("/v1/calls/{id}"), ACME_SECRET).await;
    assert_eq!(call["status"], "canceled");
    assert_eq!(call["end_leg"], "api");
    let again = hang().await;
    assert_eq!(again.0, 409);
    assert_eq!(again.1["error"]["code"], "call_ended");
    let r = s
        .http
        .post(s.url("/v1/calls/call_01h2xcejqtf2nbrexx3vqjhp00/hangup"))
        .bearer_auth(ACME_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    s.stop().await;
}

/// Requests that arrive together race for the account's slots: each is decided alone under
/// the account's limits, and each admitted call is in the log with its first timeline entry.
#[tokio::test]
async fn concurrent_requests_are_admitted_together_under_the_limits() {
    let s = Server::start_with(test_config(), std::sync::Arc::new(TempDir::new()), false).await;
    let three = api::AccountLimits {
        calls_per_second: 1000.0,
        burst: 1000,
        max_concurrent: 3,
    };
    assert!(s.store.set_account_limits(ACME, &three).await.unwrap());
    let body = json!({"user_id": ALICE, "dial_string": "+14155550100"});
    let answers =
        futures_util::future::join_all((0..20).map(|_| s.create_call(body.clone()))).await;
    let admitted: Vec<&str> = answers
        .iter()
        .filter(|(st, _)| *st == 202)
        .map(|(_, v)| v["call_id"].as_str().unwrap())
        .collect();
    assert_eq!(admitted.len(), 3, "{answers:?}");
    assert!(answers
        .iter()
        .all(|(st, v)| *st == 202 || (*st == 429 && v["error"]["code"] == "rate_limited")));
    for id in admitted {
        let rec = s.store.get_call(ACME, id).await.unwrap().unwrap();
        assert_eq!(rec.dial_string, "+14155550100");
        let timeline = s.store.timeline(id).await.unwrap();
        assert_eq!(timeline[0].kind, "api.request");
    }
    assert_eq!(s.calls.specs.lock().unwrap().len(), 3);
    s.stop().await;
}

#[tokio::test]
async fn rate_concurrency_and_capacity_limits() {
    let s = Server::start_with(test_config(), std::sync::Arc::new(TempDir::new()), false).await;
    let slow = api::AccountLimits {
        calls_per_second: 0.01,
        burst: 2,
        max_concurrent: 100,
    };
    assert!(s.store.set_account_limits(ACME, &slow).await.unwrap());
    let body = json!({"user_id": ALICE, "dial_string": "+14155550100"});
    for _ in 0..2 {
        assert_eq!(s.create_call(body.clone()).await.0, 202);
    }
    let r = s
        .http
        .post(s.url("/v1/calls"))
        .bearer_auth(ACME_SECRET)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((50..=100).contains(&retry), "{retry}");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
    // Another account is not limited by Acme's calls.
    let r = s
        .http
        .post(s.url("/v1/calls"))
        .bearer_auth(GLOBEX_SECRET)
        .json(&json!({"user_id": BOB, "dial_string": "+442071838751"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    s.stop().await;

    let s = Server::start_with(test_config(), std::sync::Arc::new(TempDir::new()), false).await;
    let one_at_a_time = api::AccountLimits {
        calls_per_second: 1000.0,
        burst: 1000,
        max_concurrent: 1,
    };
    assert!(s
        .store
        .set_account_limits(ACME, &one_at_a_time)
        .await
        .unwrap());
    let (_, v) = s.create_call(body.clone()).await;
    let first = v["call_id"].as_str().unwrap().to_owned();
    let (st, v) = s.create_call(body.clone()).await;
    assert_eq!(st, 429);
    assert_eq!(
        v["error"]["message"],
        "Too many concurrent calls: the account may have 1 calls in progress"
    );
    // The end of the first call frees the slot.
    s.calls.complete(&first);
    assert_eq!(s.create_call(body.clone()).await.0, 202);
    // An engine at capacity: 503 with Retry-After, and the call is logged as failed.
    let second = s.calls.specs.lock().unwrap()[1].call_id.clone();
    s.calls.complete(&second);
    s.calls
        .full
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let r = s
        .http
        .post(s.url("/v1/calls"))
        .bearer_auth(ACME_SECRET)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let (_, failed) = s.get("/v1/calls?status=failed", ACME_SECRET).await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 1);
    s.stop().await;
}
