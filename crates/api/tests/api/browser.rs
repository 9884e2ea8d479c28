//! The browser side (SPEC §9.3): publishable keys, client sessions scoped to one user, and a
//! platform acting for its connected accounts.

use std::sync::Arc;
use std::time::Duration;

use b2bua::calls::{CallEventKind, Leg};
use serde_json::{json, Value};

use crate::support::*;

const CAROL: &str = "user_01h2xcejqtf2nbrexx3vqjhp43";
const CONNECTED: &str = "acct_01h2xcejqtf2nbrexx3vqjhp61";
const CONNECTED_SECRET: &str = "sk_test_3";
const ACME_PK: &str = "pk_test_acme_0001";
const GLOBEX_PK: &str = "pk_test_globex_0001";

fn provisioning() -> String {
    let mut p = PROVISIONING.replace(
        "allowed_prefixes = [\"+1\"]\n",
        &format!("allowed_prefixes = [\"+1\"]\npublishable_keys = [\"{ACME_PK}\"]\n"),
    );
    p = p.replace(
        "allowed_prefixes = [\"+44\"]\n",
        &format!("allowed_prefixes = [\"+44\"]\npublishable_keys = [\"{GLOBEX_PK}\"]\n"),
    );
    p.push_str(&format!(
        r#"
[[accounts]]
id = "{CONNECTED}"
name = "Connected Co"
region = "US"
api_keys = [{{ key = "ak_test_3", secret = "{CONNECTED_SECRET}" }}]
webhook_secret = "whsec_test_3"
allowed_prefixes = ["+1"]
platform = "{ACME}"

[[users]]
id = "{CAROL}"
account = "{ACME}"
name = "Carol Agent"
extension = "1002"
agent_id = 43
"#
    ));
    p
}

async fn start() -> Server {
    Server::start_provisioned(
        test_config(),
        Arc::new(TempDir::new()),
        false,
        &provisioning(),
    )
    .await
}

/// A request with a client secret and (optionally) a publishable key.
fn with_client(
    r: reqwest::RequestBuilder,
    secret: &str,
    pk: Option<&str>,
) -> reqwest::RequestBuilder {
    let r = r.bearer_auth(secret);
    match pk {
        Some(pk) => r.header("Dialbridge-Publishable-Key", pk),
        None => r,
    }
}

async fn answer(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn client_session(s: &Server, secret: &str, user: &str) -> (u16, Value) {
    answer(
        s.http
            .post(s.url("/v1/client_sessions"))
            .bearer_auth(secret)
            .json(&json!({ "user_id": user })),
    )
    .await
}

#[tokio::test]
async fn a_client_secret_reaches_its_own_users_calls_and_nothing_else() {
    let s = start().await;
    let (st, sess) = client_session(&s, ACME_SECRET, ALICE).await;
    assert_eq!(st, 201, "{sess}");
    let cs = sess["client_secret"].as_str().unwrap().to_owned();
    assert!(cs.starts_with("cs_"), "{sess}");
    assert!(sess["id"].as_str().unwrap().starts_with("clisess_"));
    assert!(sess["expires_at"].as_str().unwrap().ends_with('Z'));
    let client = |r| with_client(r, &cs, Some(ACME_PK));

    // user_id is required of every caller (the SDK fills in the session's user).
    let got = answer(
        client(s.http.post(s.url("/v1/calls"))).json(&json!({"dial_string": "+14155550100"})),
    )
    .await;
    assert_error(&got, 400, "missing_user_id", "user_id is required");
    // The contract layer authenticates a client secret before it checks the request.
    let got = answer(
        with_client(s.http.post(s.url("/v1/calls")), "cs_unknown", Some(ACME_PK))
            .json(&json!({"dial_string": "+14155550100"})),
    )
    .await;
    assert_eq!(
        (got.0, got.1["error"]["code"].as_str()),
        (401, Some("client_secret_invalid")),
        "{}",
        got.1
    );

    // Alice's own call: placed, seen, listed.
    let (st, mine) = answer(
        client(s.http.post(s.url("/v1/calls")))
            .json(&json!({"user_id": ALICE, "dial_string": "+14155550100"})),
    )
    .await;
    assert_eq!(st, 202, "{mine}");
    assert_eq!(mine["user_id"], ALICE);
    let mine = mine["call_id"].as_str().unwrap().to_owned();
    let (st, got) = answer(client(s.http.get(s.url(&format!("/v1/calls/{mine}"))))).await;
    assert_eq!((st, got["call_id"].as_str()), (200, Some(mine.as_str())));

    // Carol's call, placed by the backend: out of reach, as if it did not exist.
    let (st, theirs) = s
        .create_call(json!({"user_id": CAROL, "dial_string": "+14155550101"}))
        .await;
    assert_eq!(st, 202, "{theirs}");
    let theirs = theirs["call_id"].as_str().unwrap().to_owned();
    let got = answer(client(s.http.get(s.url(&format!("/v1/calls/{theirs}"))))).await;
    assert_error(&got, 404, "call_not_found", "Call not found");
    let got = answer(client(
        s.http.post(s.url(&format!("/v1/calls/{theirs}/hangup"))),
    ))
    .await;
    assert_error(&got, 404, "call_not_found", "Call not found");
    let got = answer(
        client(s.http.post(s.url("/v1/calls")))
            .json(&json!({"user_id": CAROL, "dial_string": "+14155550102"})),
    )
    .await;
    assert_error(
        &got,
        403,
        "user_not_allowed",
        "A client secret may only place calls for its own user",
    );
    // The call log lists Alice's calls only, whatever filter is asked for.
    let (st, log) = answer(client(
        s.http.get(s.url(&format!("/v1/calls?user_id={CAROL}"))),
    ))
    .await;
    assert_eq!(st, 200, "{log}");
    let ids: Vec<&str> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["call_id"].as_str())
        .collect();
    assert_eq!(ids, vec![mine.as_str()]);

    // The live stream carries Alice's call events and not Carol's.
    let stream = client(s.http.get(s.url("/v1/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    s.calls.emit(
        &theirs,
        CallEventKind::Ringing {
            leg: Leg::Agent,
            sip_code: 180,
        },
    );
    s.calls.emit(
        &mine,
        CallEventKind::Ringing {
            leg: Leg::Agent,
            sip_code: 180,
        },
    );
    let first = first_event(stream).await;
    assert_eq!(first["call_id"], mine.as_str(), "{first}");
    assert_eq!(first["user_id"], ALICE);

    // Hang-up of its own call.
    let (st, _) = answer(client(
        s.http.post(s.url(&format!("/v1/calls/{mine}/hangup"))),
    ))
    .await;
    assert_eq!(st, 202);

    // Every other route refuses it.
    for (method, path) in [
        ("GET", "/v1/users".to_owned()),
        ("GET", "/v1/account".to_owned()),
        ("GET", format!("/v1/users/{ALICE}/registrations")),
        ("GET", "/v1/publishable_keys".to_owned()),
        ("POST", "/v1/client_sessions".to_owned()),
        ("GET", "/v1/trunks".to_owned()),
    ] {
        let r = match method {
            "GET" => s.http.get(s.url(&path)),
            _ => s.http.post(s.url(&path)).json(&json!({"user_id": CAROL})),
        };
        let got = answer(client(r)).await;
        assert_eq!(got.0, 403, "{method} {path}: {}", got.1);
        assert_eq!(
            got.1["error"]["code"], "client_secret_not_allowed",
            "{path}"
        );
    }

    // Without a publishable key of its account, the secret is refused.
    for pk in [None, Some(GLOBEX_PK), Some("pk_unknown_000000")] {
        let got = answer(with_client(
            s.http.get(s.url(&format!("/v1/calls/{mine}"))),
            &cs,
            pk,
        ))
        .await;
        assert_eq!(got.0, 401, "{pk:?}");
        assert_eq!(got.1["error"]["code"], "publishable_key_invalid");
    }

    // Revoked: refused at once.
    let sid = sess["id"].as_str().unwrap();
    let r = s
        .http
        .delete(s.url(&format!("/v1/client_sessions/{sid}")))
        .bearer_auth(GLOBEX_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404, "another account cannot revoke it");
    let r = s
        .http
        .delete(s.url(&format!("/v1/client_sessions/{sid}")))
        .bearer_auth(ACME_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let got = answer(client(s.http.get(s.url(&format!("/v1/calls/{mine}"))))).await;
    assert_error(
        &got,
        401,
        "client_secret_invalid",
        "Client secret is not valid",
    );

    // Secrets never reach the logs.
    let logs = captured_logs();
    assert!(!logs.contains(&cs[3..]), "a client secret was logged");
    s.stop().await;
}

async fn first_event(mut resp: reqwest::Response) -> Value {
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("stream open");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        if let Some(end) = buf.find("\n\n") {
            let block = &buf[..end];
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) {
                if block.lines().any(|l| l.starts_with("id:")) {
                    return serde_json::from_str(data.trim()).unwrap();
                }
            }
            buf.drain(..end + 2);
        }
    }
}

#[tokio::test]
async fn client_sessions_are_made_for_users_of_the_callers_account_only() {
    let s = start().await;
    let got = client_session(&s, GLOBEX_SECRET, ALICE).await;
    assert_error(&got, 404, "user_not_found", "User not found");
    let got = client_session(&s, ACME_SECRET, "alice").await;
    assert_error(&got, 400, "invalid_user_id", "Invalid user_id format");
    let got = answer(
        s.http
            .post(s.url("/v1/client_sessions"))
            .bearer_auth(ACME_SECRET)
            .json(&json!({"user_id": ALICE, "expires_in": 5})),
    )
    .await;
    assert_eq!(got.0, 400);
    assert_eq!(got.1["error"]["code"], "invalid_expires_in");
    let got = answer(
        s.http
            .post(s.url("/v1/client_sessions"))
            .json(&json!({"user_id": ALICE})),
    )
    .await;
    assert_error(&got, 401, "unauthorized", "Unauthorized");
    // A deleted user's sessions die with it.
    let (_, sess) = client_session(&s, ACME_SECRET, CAROL).await;
    let cs = sess["client_secret"].as_str().unwrap().to_owned();
    let r = s
        .http
        .delete(s.url(&format!("/v1/users/{CAROL}")))
        .bearer_auth(ACME_SECRET)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let got = answer(with_client(
        s.http.get(s.url("/v1/calls")),
        &cs,
        Some(ACME_PK),
    ))
    .await;
    assert_error(
        &got,
        401,
        "client_secret_invalid",
        "Client secret is not valid",
    );
    s.stop().await;
}

#[tokio::test]
async fn publishable_keys_come_from_the_config_and_the_admin_api() {
    let s = start().await;
    let (st, list) = s.get("/v1/publishable_keys", ACME_SECRET).await;
    assert_eq!(st, 200);
    assert_eq!(list["data"][0]["key"], ACME_PK);
    assert_eq!(list["data"][0]["source"], "config");
    let (st, made) = answer(
        s.http
            .post(s.url("/v1/publishable_keys"))
            .bearer_auth(ACME_SECRET),
    )
    .await;
    assert_eq!(st, 201, "{made}");
    let pk = made["key"].as_str().unwrap().to_owned();
    assert!(pk.starts_with("pk_"));
    // The new key works beside a client secret; once deleted, it does not.
    let (_, sess) = client_session(&s, ACME_SECRET, ALICE).await;
    let cs = sess["client_secret"].as_str().unwrap().to_owned();
    let (st, _) = answer(with_client(s.http.get(s.url("/v1/calls")), &cs, Some(&pk))).await;
    assert_eq!(st, 200);
    let r = s
        .http
        .delete(s.url(&format!("/v1/publishable_keys/{pk}")))
        .bearer_auth(GLOBEX_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404, "another account's key");
    let r = s
        .http
        .delete(s.url(&format!("/v1/publishable_keys/{pk}")))
        .bearer_auth(ACME_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (st, _) = answer(with_client(s.http.get(s.url("/v1/calls")), &cs, Some(&pk))).await;
    assert_eq!(st, 401);
    s.stop().await;
}

#[tokio::test]
async fn a_platform_acts_for_its_connected_accounts_only() {
    let s = start().await;
    let as_platform = |target: &str| {
        s.http
            .get(s.url("/v1/account"))
            .bearer_auth(ACME_SECRET)
            .header("Dialbridge-Account", target.to_owned())
    };
    let (st, acct) = answer(as_platform(CONNECTED)).await;
    assert_eq!(st, 200, "{acct}");
    assert_eq!(acct["id"], CONNECTED);
    assert_eq!(acct["platform"], ACME);
    // Its own id in the header is itself.
    let (st, acct) = answer(as_platform(ACME)).await;
    assert_eq!((st, acct["id"].as_str()), (200, Some(ACME)));
    for target in [GLOBEX, "acct_01h2xcejqtf2nbrexx3vqjhp99", "nonsense", ""] {
        let got = answer(as_platform(target)).await;
        assert_error(
            &got,
            403,
            "account_not_connected",
            "The account in Dialbridge-Account is not connected to this platform",
        );
    }
    // The connection goes one way: the connected account cannot act for its platform.
    let got = answer(
        s.http
            .get(s.url("/v1/account"))
            .bearer_auth(CONNECTED_SECRET)
            .header("Dialbridge-Account", ACME),
    )
    .await;
    assert_eq!(got.0, 403);
    // A call placed by the platform for the connected account belongs to that account.
    let got = answer(
        s.http
            .post(s.url("/v1/calls"))
            .bearer_auth(ACME_SECRET)
            .header("Dialbridge-Account", CONNECTED)
            .json(&json!({"user_id": ALICE, "dial_string": "+14155550100"})),
    )
    .await;
    assert_error(&got, 404, "user_not_found", "User not found");
    s.stop().await;
}

#[tokio::test]
async fn pages_of_other_origins_reach_the_call_routes_only() {
    let s = start().await;
    // A preflight for the SDK's request.
    let r = s
        .http
        .request(reqwest::Method::OPTIONS, s.url("/v1/calls"))
        .header("Origin", "https://crm.example")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type, dialbridge-publishable-key",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(allowed.contains("dialbridge-publishable-key") && allowed.contains("authorization"));
    // The answer itself is readable by the page.
    let (_, sess) = client_session(&s, ACME_SECRET, ALICE).await;
    let cs = sess["client_secret"].as_str().unwrap().to_owned();
    let r = with_client(s.http.get(s.url("/v1/calls")), &cs, Some(ACME_PK))
        .header("Origin", "https://crm.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    // Admin routes are not for other origins.
    for path in ["/v1/users", "/v1/client_sessions", "/v1/account"] {
        let r = s
            .http
            .get(s.url(path))
            .bearer_auth(ACME_SECRET)
            .header("Origin", "https://crm.example")
            .send()
            .await
            .unwrap();
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{path}"
        );
        let r = s
            .http
            .request(reqwest::Method::OPTIONS, s.url(path))
            .header("Origin", "https://crm.example")
            .header("Access-Control-Request-Method", "GET")
            .send()
            .await
            .unwrap();
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{path}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn the_openapi_document_names_the_routes_a_client_secret_may_use() {
    let s = start().await;
    let (st, doc) = s.get("/openapi.json", ACME_SECRET).await;
    assert_eq!(st, 200);
    assert!(doc["components"]["securitySchemes"]["client_secret"].is_object());
    let takes_client_secret = |path: &str, method: &str| {
        doc["paths"][path][method]["security"]
            .as_array()
            .is_some_and(|l| l.iter().any(|r| r.get("client_secret").is_some()))
    };
    for (path, method) in [
        ("/v1/calls", "post"),
        ("/v1/calls", "get"),
        ("/v1/calls/{call_id}", "get"),
        ("/v1/calls/{call_id}/hangup", "post"),
        ("/v1/events", "get"),
    ] {
        assert!(takes_client_secret(path, method), "{method} {path}");
    }
    for (path, method) in [
        ("/v1/users", "get"),
        ("/v1/client_sessions", "post"),
        ("/v1/account", "get"),
    ] {
        assert!(!takes_client_secret(path, method), "{method} {path}");
        assert!(doc["paths"][path][method].is_object(), "{method} {path}");
    }
    s.stop().await;
}
