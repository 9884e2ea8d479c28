//! Admin CRUD: users, devices, numbers, trunks; write-only passwords; tenancy.

use serde_json::json;

use crate::support::*;

async fn send(
    s: &Server,
    method: reqwest::Method,
    path: &str,
    secret: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut r = s.http.request(method, s.url(path)).bearer_auth(secret);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let st = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        st,
        if text.is_empty() {
            json!(null)
        } else {
            serde_json::from_str(&text).unwrap()
        },
    )
}

use reqwest::Method;

#[tokio::test]
async fn users_and_devices() {
    let s = Server::start().await;
    let (st, u) = send(
        &s,
        Method::POST,
        "/v1/users",
        ACME_SECRET,
        Some(json!({
            "name": "Carol", "extension": "1002", "agent_id": 43,
            "devices": [{"username": "carol-desk", "password": "carol-pass-1"}]
        })),
    )
    .await;
    assert_eq!(st, 201, "{u}");
    let id = u["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("user_"));
    assert_eq!(u["devices"][0]["username"], "carol-desk");
    assert!(!u.to_string().contains("carol-pass-1"));
    assert!(u["devices"][0].get("password").is_none());
    // The device's HA1 is computed for the realm.
    let d = s
        .store
        .device_by_username("carol-desk")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        d.ha1_md5,
        store::secret::ha1_md5("carol-desk", REALM, &"carol-pass-1".into())
    );

    // Duplicate extension: 409.
    let (st, v) = send(
        &s,
        Method::POST,
        "/v1/users",
        ACME_SECRET,
        Some(json!({"name": "Dup", "extension": "1002"})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str().unwrap()),
        (409, "already_exists")
    );
    let (st, _) = send(
        &s,
        Method::POST,
        "/v1/users",
        ACME_SECRET,
        Some(json!({"name": "X", "id": "nope"})),
    )
    .await;
    assert_eq!(st, 400);

    let (st, list) = send(&s, Method::GET, "/v1/users", ACME_SECRET, None).await;
    assert_eq!(st, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    let (_, theirs) = send(&s, Method::GET, "/v1/users", GLOBEX_SECRET, None).await;
    assert_eq!(theirs["data"].as_array().unwrap().len(), 1);

    // PATCH: absent unchanged, null cleared.
    let (st, v) = send(
        &s,
        Method::PATCH,
        &format!("/v1/users/{id}"),
        ACME_SECRET,
        Some(json!({"name": "Carol C", "agent_id": null})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["name"], "Carol C");
    assert_eq!(v["extension"], "1002");
    assert_eq!(v["agent_id"], json!(null));

    // Another account: 404 everywhere.
    for (m, p) in [
        (Method::GET, format!("/v1/users/{id}")),
        (Method::DELETE, format!("/v1/users/{id}")),
        (Method::GET, format!("/v1/users/{id}/devices")),
        (Method::DELETE, "/v1/devices/carol-desk".to_owned()),
    ] {
        assert_eq!(send(&s, m, &p, GLOBEX_SECRET, None).await.0, 404, "{p}");
    }

    // Devices: add, change password, delete.
    let (st, dv) = send(
        &s,
        Method::POST,
        &format!("/v1/users/{id}/devices"),
        ACME_SECRET,
        Some(json!({"username": "carol-soft", "password": "p2"})),
    )
    .await;
    assert_eq!(st, 201, "{dv}");
    let (st, _) = send(
        &s,
        Method::POST,
        &format!("/v1/users/{id}/devices"),
        ACME_SECRET,
        Some(json!({"username": "carol-soft", "password": "p2"})),
    )
    .await;
    assert_eq!(st, 409);
    let (st, _) = send(
        &s,
        Method::PATCH,
        "/v1/devices/carol-soft",
        ACME_SECRET,
        Some(json!({"password": "p3"})),
    )
    .await;
    assert_eq!(st, 200);
    let d = s
        .store
        .device_by_username("carol-soft")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        d.ha1_md5,
        store::secret::ha1_md5("carol-soft", REALM, &"p3".into())
    );
    let (st, _) = send(
        &s,
        Method::PATCH,
        "/v1/devices/carol-soft",
        GLOBEX_SECRET,
        Some(json!({"password": "hijack"})),
    )
    .await;
    assert_eq!(st, 404);
    let (_, devs) = send(
        &s,
        Method::GET,
        &format!("/v1/users/{id}/devices"),
        ACME_SECRET,
        None,
    )
    .await;
    assert_eq!(devs["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        send(
            &s,
            Method::DELETE,
            "/v1/devices/carol-soft",
            ACME_SECRET,
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        send(
            &s,
            Method::DELETE,
            "/v1/devices/carol-soft",
            ACME_SECRET,
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        send(
            &s,
            Method::DELETE,
            &format!("/v1/users/{id}"),
            ACME_SECRET,
            None
        )
        .await
        .0,
        204
    );
    assert_error(
        &send(
            &s,
            Method::GET,
            &format!("/v1/users/{id}"),
            ACME_SECRET,
            None,
        )
        .await,
        404,
        "user_not_found",
        "User not found",
    );
    s.stop().await;
}

#[tokio::test]
async fn numbers_and_trunks() {
    let s = Server::start().await;
    let (st, n) = send(
        &s,
        Method::POST,
        "/v1/numbers",
        ACME_SECRET,
        Some(json!({"number": "+14155550000", "owner": ALICE})),
    )
    .await;
    assert_eq!(st, 201, "{n}");
    assert_eq!(n["owner"], ALICE);
    let (st, _) = send(
        &s,
        Method::POST,
        "/v1/numbers",
        ACME_SECRET,
        Some(json!({"number": "4155550000"})),
    )
    .await;
    assert_eq!(st, 400);
    let (st, v) = send(
        &s,
        Method::POST,
        "/v1/numbers",
        ACME_SECRET,
        Some(json!({"number": "+14155550001", "owner": BOB})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str().unwrap()),
        (422, "owner_not_found")
    );
    let (st, v) = send(
        &s,
        Method::PATCH,
        "/v1/numbers/%2B14155550000",
        ACME_SECRET,
        Some(json!({"owner": null})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["owner"], json!(null));
    assert_eq!(
        send(
            &s,
            Method::GET,
            "/v1/numbers/%2B14155550000",
            GLOBEX_SECRET,
            None
        )
        .await
        .0,
        404
    );
    let (_, list) = send(&s, Method::GET, "/v1/numbers", ACME_SECRET, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    assert_eq!(
        send(
            &s,
            Method::DELETE,
            "/v1/numbers/+14155550000",
            ACME_SECRET,
            None
        )
        .await
        .0,
        204
    );

    // Trunks: own ones writable, shared ones read-only, others' invisible.
    let (st, t) = send(
        &s,
        Method::POST,
        "/v1/trunks",
        ACME_SECRET,
        Some(json!({
        "name": "acme-2", "address": "127.0.0.1:5070", "transport": "tcp",
        "username": "u", "password": "acme-2-trunk-secret"})),
    )
    .await;
    assert_eq!(st, 201, "{t}");
    assert_eq!(t["password_set"], true);
    assert!(!t.to_string().contains("acme-2-trunk-secret"));
    let (st, _) = send(
        &s,
        Method::POST,
        "/v1/trunks",
        ACME_SECRET,
        Some(json!({"name": "x", "address": "127.0.0.1:1", "transport": "sctp"})),
    )
    .await;
    assert_eq!(st, 400);
    let (st, v) = send(
        &s,
        Method::PATCH,
        "/v1/trunks/acme-2",
        ACME_SECRET,
        Some(json!({"password": null})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str().unwrap()),
        (409, "credentials_incomplete")
    );
    let (st, t) = send(
        &s,
        Method::PATCH,
        "/v1/trunks/acme-2",
        ACME_SECRET,
        Some(json!({"username": null, "password": null, "emergency": true})),
    )
    .await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["password_set"], false);
    assert_eq!(t["emergency"], true);
    let (_, list) = send(&s, Method::GET, "/v1/trunks", ACME_SECRET, None).await;
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"shared") && names.contains(&"carrier") && !names.contains(&"globex-sos")
    );
    assert!(!list.to_string().contains("trunk-pass"));
    let (st, v) = send(
        &s,
        Method::PATCH,
        "/v1/trunks/shared",
        ACME_SECRET,
        Some(json!({"emergency": true})),
    )
    .await;
    assert_error(
        &(st, v),
        403,
        "trunk_read_only",
        "Shared trunks are read-only",
    );
    assert_eq!(
        send(&s, Method::GET, "/v1/trunks/shared", ACME_SECRET, None)
            .await
            .0,
        200
    );
    assert_eq!(
        send(&s, Method::GET, "/v1/trunks/globex-sos", ACME_SECRET, None)
            .await
            .0,
        404
    );
    assert_eq!(
        send(
            &s,
            Method::DELETE,
            "/v1/trunks/carrier",
            GLOBEX_SECRET,
            None
        )
        .await
        .0,
        404
    );
    // With its own emergency trunk now, Acme may call 911.
    let (st, v) = s
        .create_call(json!({"user_id": ALICE, "dial_string": "911"}))
        .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(
        send(&s, Method::DELETE, "/v1/trunks/acme-2", ACME_SECRET, None)
            .await
            .0,
        204
    );
    s.stop().await;
}

#[tokio::test]
async fn account_dialing_permissions() {
    let s = Server::start().await;
    let (st, a) = send(&s, Method::GET, "/v1/account", ACME_SECRET, None).await;
    assert_eq!(st, 200);
    assert_eq!(
        a,
        json!({"id": ACME, "name": "Acme", "region": "US", "allowed_countries": ["US"],
               "blocked_number_types": ["premium_rate", "shared_cost", "personal_number", "uan"],
               "allowed_prefixes": ["+1"], "platform": null})
    );
    // Jamaica is refused until the account allows it.
    let call = json!({"user_id": ALICE, "dial_string": "+18765551234"});
    let (st, v) = s.create_call(call.clone()).await;
    assert_eq!(
        (st, &v["error"]["code"]),
        (422, &json!("destination_not_allowed"))
    );
    let (st, a) = send(
        &s,
        Method::PATCH,
        "/v1/account",
        ACME_SECRET,
        Some(json!({"allowed_countries": ["US", "ca", "JM"], "blocked_number_types": ["premium_rate"]})),
    )
    .await;
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["allowed_countries"], json!(["US", "CA", "JM"]));
    assert_eq!(a["blocked_number_types"], json!(["premium_rate"]));
    assert_eq!(a["allowed_prefixes"], json!(["+1"]));
    let (st, v) = s.create_call(call).await;
    assert_eq!(st, 202, "{v}");
    // Each bad value is named by its field and index; nothing is written.
    for (body, code, message) in [
        (
            json!({"allowed_countries": ["US", "XX"]}),
            "invalid_allowed_countries",
            "allowed_countries[1] is \"XX\", which is not one of the",
        ),
        (
            json!({"blocked_number_types": ["premium"]}),
            "invalid_blocked_number_types",
            "blocked_number_types[0] must be one of \"fixed_line\", ",
        ),
        (
            json!({"allowed_prefixes": ["1"]}),
            "invalid_allowed_prefixes",
            "Invalid allowed_prefixes[0] format",
        ),
    ] {
        let (st, v) = send(&s, Method::PATCH, "/v1/account", ACME_SECRET, Some(body)).await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"]["code"], code);
        let got = v["error"]["message"].as_str().unwrap();
        assert!(got.starts_with(message), "{got}");
    }
    let (st, v) = send(
        &s,
        Method::PATCH,
        "/v1/account",
        ACME_SECRET,
        Some(json!({"region": "GB"})),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    let (_, a) = send(&s, Method::GET, "/v1/account", ACME_SECRET, None).await;
    assert_eq!(a["allowed_countries"], json!(["US", "CA", "JM"]));
    // Another account is untouched.
    let (_, g) = send(&s, Method::GET, "/v1/account", GLOBEX_SECRET, None).await;
    assert_eq!(g["allowed_countries"], json!(["GB"]));
    let (st, _) = send(&s, Method::GET, "/v1/account", "nope", None).await;
    assert_eq!(st, 401);
    s.stop().await;
}

#[tokio::test]
async fn lookup_classifies_and_applies_the_account_policy() {
    let s = Server::start().await;
    let get = |path: &str, secret: &str| {
        let path = path.to_owned();
        let secret = secret.to_owned();
        let s = &s;
        async move { send(s, Method::GET, &path, &secret, None).await }
    };
    let (st, v) = get("/v1/lookup/+14155551234", ACME_SECRET).await;
    assert_eq!(st, 200);
    assert_eq!(
        v,
        json!({"e164": "+14155551234", "region": "US", "type": "fixed_line_or_mobile",
               "valid": true, "allowed": true, "reason": null})
    );
    let (_, v) = get("/v1/lookup/+18765551234", ACME_SECRET).await;
    assert_eq!((&v["region"], &v["type"]), (&json!("JM"), &json!("mobile")));
    assert_eq!((&v["valid"], &v["allowed"]), (&json!(true), &json!(false)));
    let (_, v) = get("/v1/lookup/(900)%20555-1234", ACME_SECRET).await;
    assert_eq!(v["e164"], "+19005551234");
    assert_eq!(v["type"], "premium_rate");
    assert_eq!(v["allowed"], false);
    let (_, v) = get("/v1/lookup/+15550100", ACME_SECRET).await;
    assert_eq!((&v["valid"], &v["allowed"]), (&json!(false), &json!(false)));
    assert_eq!(
        v["reason"],
        "+15550100 is not a valid number: too short for US"
    );
    // National forms are read in the account's region, or in ?region=.
    let (_, v) = get("/v1/lookup/020%207183%208750", GLOBEX_SECRET).await;
    assert_eq!(
        (&v["e164"], &v["allowed"]),
        (&json!("+442071838750"), &json!(true))
    );
    let (_, v) = get("/v1/lookup/0900%201%20234567?region=de", ACME_SECRET).await;
    assert_eq!(v["e164"], "+499001234567");
    assert_eq!(
        (&v["region"], &v["type"]),
        (&json!("DE"), &json!("premium_rate"))
    );
    let (st, v) = get("/v1/lookup/123?region=QQ", ACME_SECRET).await;
    assert_eq!((st, &v["error"]["code"]), (400, &json!("invalid_region")));
    let (st, v) = get("/v1/lookup/1001", ACME_SECRET).await;
    assert_eq!(
        (st, &v["error"]["code"]),
        (422, &json!("invalid_destination"))
    );
    let (st, v) = get("/v1/lookup/abc", ACME_SECRET).await;
    assert_eq!(
        (st, &v["error"]["code"]),
        (422, &json!("invalid_destination"))
    );
    let (st, _) = get("/v1/lookup/+14155551234", "nope").await;
    assert_eq!(st, 401);
    s.stop().await;
}
