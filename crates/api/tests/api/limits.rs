//! Per-account call limits: each account runs under its own `[[accounts]]` limits, and a
//! change through `PATCH /v1/account/limits` applies to the account's next call.

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

async fn send(s: &Server, method: Method, path: &str, secret: &str, body: Value) -> (u16, Value) {
    let r = s
        .http
        .request(method, s.url(path))
        .bearer_auth(secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Places a call for `secret`'s account; returns the status, the `Retry-After` header and
/// the body.
async fn call(s: &Server, secret: &str) -> (u16, Option<String>, Value) {
    let body = if secret == ACME_SECRET {
        json!({"user_id": ALICE, "dial_string": "+14155550100"})
    } else {
        json!({"user_id": BOB, "dial_string": "+442071838751"})
    };
    let r = s
        .http
        .post(s.url("/v1/calls"))
        .bearer_auth(secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, retry, r.json().await.unwrap())
}

/// Acme at 1 call/s with a burst of 1; Globex keeps the harness's high limits.
fn provisioning() -> String {
    let p = PROVISIONING.replacen(
        "calls_per_second = 1000\nburst = 1000\n",
        "calls_per_second = 1\nburst = 1\n",
        1,
    );
    assert_ne!(p, PROVISIONING);
    p
}

#[tokio::test]
async fn each_account_has_its_own_limits_and_the_admin_api_changes_them() {
    let s = Server::start_provisioned(
        test_config(),
        std::sync::Arc::new(TempDir::new()),
        false,
        &provisioning(),
    )
    .await;

    // The configured limits are the account's, readable through the API.
    let (st, v) = s.get("/v1/account/limits", ACME_SECRET).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v,
        json!({"calls_per_second": 1.0, "burst": 1, "max_concurrent": 1000})
    );

    // Acme: the first call takes the only token, the second is refused at once.
    assert_eq!(call(&s, ACME_SECRET).await.0, 202);
    let (st, retry, v) = call(&s, ACME_SECRET).await;
    assert_eq!(st, 429, "{v}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(v["error"]["code"], "rate_limited");
    assert_eq!(
        v["error"]["message"],
        "Too many calls: the account may start 1 calls per second"
    );

    // Globex is not held back by Acme's limits.
    for _ in 0..5 {
        let (st, _, v) = call(&s, GLOBEX_SECRET).await;
        assert_eq!(st, 202, "{v}");
    }

    // Acme slowed down to one call per 100 s: the next refusal asks for a longer wait.
    let (st, v) = send(
        &s,
        Method::PATCH,
        "/v1/account/limits",
        ACME_SECRET,
        json!({"calls_per_second": 0.01}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v,
        json!({"calls_per_second": 0.01, "burst": 1, "max_concurrent": 1000})
    );
    let (st, retry, _) = call(&s, ACME_SECRET).await;
    assert_eq!(st, 429);
    let retry: u64 = retry.unwrap().parse().unwrap();
    assert!((50..=100).contains(&retry), "{retry}");
    // Stored, so every node and the next start see it.
    let acme = s.store.account(ACME).await.unwrap().unwrap();
    assert_eq!(acme.limits.calls_per_second, 0.01);
    assert_eq!(acme.limits.burst, 1);

    // Globex down to one call in progress: the next call is refused, Acme's limits stay.
    let (st, v) = send(
        &s,
        Method::PATCH,
        "/v1/account/limits",
        GLOBEX_SECRET,
        json!({"max_concurrent": 1}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (st, _, v) = call(&s, GLOBEX_SECRET).await;
    assert_eq!(st, 429, "{v}");
    assert_eq!(
        v["error"]["message"],
        "Too many concurrent calls: the account may have 1 calls in progress"
    );
    // Raised above the five calls in progress: calls go through again.
    let (st, v) = send(
        &s,
        Method::PATCH,
        "/v1/account/limits",
        GLOBEX_SECRET,
        json!({"max_concurrent": 7}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(call(&s, GLOBEX_SECRET).await.0, 202);
    assert_eq!(call(&s, GLOBEX_SECRET).await.0, 202);
    assert_eq!(call(&s, GLOBEX_SECRET).await.0, 429);
    let (_, v) = s.get("/v1/account/limits", ACME_SECRET).await;
    assert_eq!(v["calls_per_second"], 0.01);
    s.stop().await;
}

#[tokio::test]
async fn bad_limits_are_refused_naming_the_field() {
    let s = Server::start().await;
    for (body, field) in [
        (json!({"calls_per_second": 0}), "calls_per_second"),
        (json!({"calls_per_second": -2.5}), "calls_per_second"),
        (json!({"calls_per_second": 1e9}), "calls_per_second"),
        (json!({"burst": 0}), "burst"),
        (json!({"max_concurrent": 0}), "max_concurrent"),
    ] {
        let (st, v) = send(&s, Method::PATCH, "/v1/account/limits", ACME_SECRET, body).await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"]["code"], format!("invalid_{field}"));
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("{field} must be")), "{msg}");
    }
    // Wrong types and unknown fields: the JSON body is refused as a whole.
    for body in [json!({"burst": -1}), json!({"rate": 3})] {
        let (st, v) = send(&s, Method::PATCH, "/v1/account/limits", ACME_SECRET, body).await;
        assert_eq!(st, 400, "{v}");
    }
    // Nothing was changed by the refused requests.
    let (_, v) = s.get("/v1/account/limits", ACME_SECRET).await;
    assert_eq!(
        v,
        json!({"calls_per_second": 1000.0, "burst": 1000, "max_concurrent": 1000})
    );
    // Without credentials: 401.
    let r = s
        .http
        .get(s.url("/v1/account/limits"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    s.stop().await;
}

#[tokio::test]
async fn the_limits_are_in_the_openapi_document() {
    let s = Server::start().await;
    let doc: Value = s
        .http
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = &doc["paths"]["/v1/account/limits"];
    assert!(path["get"]["responses"]["200"].is_object(), "{path}");
    assert!(path["patch"]["responses"]["400"].is_object(), "{path}");
    let update = &doc["components"]["schemas"]["UpdateLimits"]["properties"];
    for field in ["calls_per_second", "burst", "max_concurrent"] {
        assert!(update[field].is_object(), "{field} missing: {update}");
    }
    assert!(doc["components"]["schemas"]["Limits"].is_object());
    s.stop().await;
}
