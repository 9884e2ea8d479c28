//! The toll-fraud guard through the real binary: the account of the click-to-call fixture
//! (`region = "US"`, `allowed_prefixes = ["+1"]`, no `allowed_countries`: the US only, the
//! default blocked types) asks for calls to numbers that share +1 with the US but are not in
//! the US, to a US premium-rate number and to numbers too short for the NANP, through the
//! three API shapes; each is refused with 422 and the reason, and no call is created. Then
//! `GET /v1/lookup/{number}` says the same before any call, and follows `PATCH /v1/account`.

use serde_json::{json, Value};
use sip_tests::c2c::{fixture, Fixture, SECRET, USER};
use sip_tests::http::request;

fn call(f: &Fixture, dial: &str) -> (u16, Value) {
    let r = request(
        f.api(),
        "POST",
        "/v1/calls",
        &[("Authorization", &format!("Bearer {SECRET}"))],
        Some(&json!({"user_id": USER, "dial_string": dial}).to_string()),
    );
    (r.status, r.json())
}

fn get(f: &Fixture, path: &str) -> (u16, Value) {
    let r = request(
        f.api(),
        "GET",
        path,
        &[("Authorization", &format!("Bearer {SECRET}"))],
        None,
    );
    (r.status, r.json())
}

#[test]
fn refusals_name_the_country_the_type_or_the_reason() {
    let f = fixture(0);
    for (dial, code, message) in [
        (
            "+1 876 555 1234",
            "destination_not_allowed",
            "+18765551234 is a number in JM, which is not in the account's allowed_countries (US)",
        ),
        (
            "+18095551234",
            "destination_not_allowed",
            "+18095551234 is a number in DO, which is not in the account's allowed_countries (US)",
        ),
        (
            "(684) 258-1234",
            "destination_not_allowed",
            "+16842581234 is a number in AS, which is not in the account's allowed_countries (US)",
        ),
        (
            "+19005551234",
            "destination_not_allowed",
            "+19005551234 is a premium_rate number in US, and the account blocks premium_rate numbers",
        ),
        (
            "+15550100",
            "invalid_destination",
            "+15550100 is not a valid number: too short for US",
        ),
        (
            "+1415555010",
            "invalid_destination",
            "+1415555010 is not a valid number: too short for US",
        ),
    ] {
        let (status, body) = call(&f, dial);
        assert_eq!(status, 422, "{dial}: {body}");
        assert_eq!(
            body,
            json!({"error": {"code": code, "message": message}}),
            "{dial}"
        );
    }
    // The JustCall-style and Click-2-Call-style shapes refuse the same way.
    let r = request(
        f.api(),
        "POST",
        "/v2/calls/make",
        &[("Authorization", &format!("ak_test_1:{SECRET}"))],
        Some(&json!({"from": "+14155551234", "to": "+1 876 555 1234"}).to_string()),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "destination_not_allowed");
    let r = request(
        f.api(),
        "GET",
        &format!("/click2call?api_key={SECRET}&dial_first=1001&dial_second=%2B19005551234"),
        &[],
        None,
    );
    let v = r.json();
    assert_eq!(v["response"]["status"], "fail", "{v}");
    assert_eq!(
        v["response"]["errors"],
        json!(["+19005551234 is a premium_rate number in US, and the account blocks premium_rate numbers"])
    );
    // Nothing was dialled: the call log is empty.
    let (status, log) = get(&f, "/v1/calls");
    assert_eq!(status, 200);
    assert_eq!(log["data"], json!([]), "{log}");
}

#[test]
fn lookup_before_calling_and_after_a_permission_change() {
    let f = fixture(0);
    let (status, v) = get(&f, "/v1/lookup/+18765551234");
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"e164": "+18765551234", "region": "JM", "type": "mobile", "valid": true,
               "allowed": false,
               "reason": "+18765551234 is a number in JM, which is not in the account's allowed_countries (US)"})
    );
    let (_, v) = get(&f, "/v1/lookup/(415)%20555-1234");
    assert_eq!(
        (&v["e164"], &v["region"], &v["valid"], &v["allowed"]),
        (
            &json!("+14155551234"),
            &json!("US"),
            &json!(true),
            &json!(true)
        )
    );
    let (_, v) = get(&f, "/v1/lookup/+1415555010");
    assert_eq!(
        (&v["valid"], &v["type"]),
        (&json!(false), &json!("unknown"))
    );
    let (_, v) = get(&f, "/v1/lookup/0909%20876%205432?region=GB");
    assert_eq!(
        (&v["e164"], &v["region"], &v["type"]),
        (
            &json!("+449098765432"),
            &json!("GB"),
            &json!("premium_rate")
        )
    );
    // The account now allows Jamaica: the lookup follows at once.
    let r = request(
        f.api(),
        "PATCH",
        "/v1/account",
        &[("Authorization", &format!("Bearer {SECRET}"))],
        Some(&json!({"allowed_countries": ["US", "CA", "JM"]}).to_string()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, v) = get(&f, "/v1/lookup/+18765551234");
    assert_eq!((&v["allowed"], &v["reason"]), (&json!(true), &json!(null)));
    // And the OpenAPI document describes the endpoint.
    let r = request(f.api(), "GET", "/openapi.json", &[], None);
    let doc = r.json();
    assert!(
        doc["paths"]["/v1/lookup/{number}"]["get"].is_object(),
        "{}",
        doc["paths"]
    );
    assert!(doc["paths"]["/v1/account"]["patch"].is_object());
}
