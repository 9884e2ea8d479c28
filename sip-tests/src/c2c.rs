//! Shared click-to-call fixture: a server configured with one account, one agent with two
//! devices, a trunk to a carrier on a free port and a number; SIPp phones and carriers; the
//! REST calls and the callback checks the tests make.

use crate::http::{request, CallbackReceiver};
use crate::{free_port, scenario, SippChild, TestServer};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::{Duration, Instant};

pub const SECRET: &str = "sk_test_1";
pub const WEBHOOK: &str = "whsec_test_1";
pub const USER: &str = "user_01h2xcejqtf2nbrexx3vqjhp42";

pub fn config(carrier_port: u16) -> String {
    config_with_account(carrier_port, "")
}

/// [`config`] with more keys of the `[[accounts]]` table (`callback_url`, `record_calls`...).
pub fn config_with_account(carrier_port: u16, account_extra: &str) -> String {
    config_full(carrier_port, "", account_extra)
}

/// [`config`] with more keys of `[calls]` and of the `[[accounts]]` table, and more tables
/// after them (`calls_extra` may end with e.g. a `[recording]` table).
pub fn config_full(carrier_port: u16, calls_extra: &str, account_extra: &str) -> String {
    format!(
        r#"
[calls]
agent_ring_secs = 8
shutdown_grace_secs = 1
customer_ring_secs = 8
{calls_extra}

[[accounts]]
id = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Acme"
region = "US"
api_keys = [{{ key = "ak_test_1", secret = "{SECRET}" }}]
webhook_secret = "{WEBHOOK}"
allowed_prefixes = ["+1"]
{account_extra}

[[users]]
id = "{USER}"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Alice Agent"
extension = "1001"
agent_id = 42
devices = [{{ username = "alice-desk", password = "s3cret-desk" }},
           {{ username = "alice-soft", password = "s3cret-soft" }}]

[[trunks]]
name = "carrier"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
address = "127.0.0.1:{carrier_port}"
transport = "udp"
username = "acme"
password = "trunk-pass"

[[numbers]]
number = "+14155551234"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
owner = "{USER}"
"#
    )
}

pub struct Fixture {
    pub server: TestServer,
    pub receiver: CallbackReceiver,
    pub carrier_port: u16,
}

pub fn fixture(fail_first_callbacks: usize) -> Fixture {
    fixture_with(fail_first_callbacks, "")
}

/// A fixture whose configuration starts with `extra` (e.g. a `[media]` table).
pub fn fixture_with(fail_first_callbacks: usize, extra: &str) -> Fixture {
    fixture_wrapped(fail_first_callbacks, extra, None)
}

/// A fixture whose server is started through `wrap` (e.g. under `prlimit`).
pub fn fixture_wrapped(
    fail_first_callbacks: usize,
    extra: &str,
    wrap: Option<crate::Wrap<'_>>,
) -> Fixture {
    let carrier_port = free_port();
    let server = TestServer::start_wrapped(
        crate::TempDir::new("server"),
        &format!("{extra}{}", config(carrier_port)),
        wrap,
    );
    assert!(server.api.is_some(), "the REST API is not listening");
    Fixture {
        server,
        receiver: CallbackReceiver::start(fail_first_callbacks),
        carrier_port,
    }
}

impl Fixture {
    /// A SIPp phone running `scenario_file` in server mode, registered as `device` (a
    /// second SIPp sends the REGISTER naming the first one's port in its Contact).
    pub fn phone(
        &self,
        device: &str,
        password: &str,
        scenario_file: &str,
        extra: &[&str],
    ) -> SippChild {
        let sf = scenario(scenario_file).to_string_lossy().into_owned();
        let port = free_port().to_string();
        let mp = free_port().to_string();
        let mut args = vec![
            "-sf",
            &sf,
            "-i",
            "127.0.0.1",
            "-p",
            &port,
            "-m",
            "1",
            "-rtp_echo",
            "-mp",
            &mp,
            "-timeout",
            "40s",
            "-timeout_error",
        ];
        args.extend_from_slice(extra);
        let p = SippChild::spawn(device, &args);
        let run = crate::sipp_once(
            "register_contact.xml",
            self.server.udp_addr(),
            &[
                "-s",
                device,
                "-au",
                device,
                "-ap",
                password,
                "-set",
                "expires",
                "300",
                "-set",
                "contact_port",
                &port,
            ],
            15,
        );
        assert_eq!(run.code, 0, "{device} did not register: {}", run.output);
        p
    }

    /// A SIPp carrier on the trunk port running `scenario_file`.
    pub fn carrier(&self, scenario_file: &str, extra: &[&str]) -> SippChild {
        let sf = scenario(scenario_file).to_string_lossy().into_owned();
        let port = self.carrier_port.to_string();
        let mp = free_port().to_string();
        let mut args = vec![
            "-sf",
            &sf,
            "-i",
            "127.0.0.1",
            "-p",
            &port,
            "-m",
            "1",
            "-mp",
            &mp,
            "-timeout",
            "40s",
            "-timeout_error",
        ];
        args.extend_from_slice(extra);
        let c = SippChild::spawn("carrier", &args);
        std::thread::sleep(Duration::from_millis(300));
        c
    }

    pub fn api(&self) -> std::net::SocketAddr {
        self.server.api.expect("api address")
    }

    pub fn place(&self, body: serde_json::Value) -> String {
        let r = request(
            self.api(),
            "POST",
            "/v1/calls",
            &[("Authorization", &format!("Bearer {SECRET}"))],
            Some(&body.to_string()),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        r.json()["call_id"].as_str().expect("call_id").to_string()
    }

    pub fn call(&self, id: &str) -> serde_json::Value {
        let r = request(
            self.api(),
            "GET",
            &format!("/v1/calls/{id}"),
            &[("Authorization", &format!("Bearer {SECRET}"))],
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    /// Waits until the call has ended (bounded) and returns it.
    pub fn ended(&self, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c = self.call(id);
            let s = c["status"].as_str().unwrap_or("").to_string();
            if ["completed", "busy", "no-answer", "failed", "canceled"].contains(&s.as_str()) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "call never ended: {c}\n{}",
                self.server.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn hangup(&self, id: &str) -> u16 {
        request(
            self.api(),
            "POST",
            &format!("/v1/calls/{id}/hangup"),
            &[("Authorization", &format!("Bearer {SECRET}"))],
            Some("{}"),
        )
        .status
    }
}

/// Checks every accepted callback's signature and returns their statuses in order.
pub fn verified_statuses(rx: &CallbackReceiver) -> Vec<String> {
    let mut out = Vec::new();
    let mut last_seq = 0;
    for d in rx.deliveries().into_iter().filter(|d| d.answered == 200) {
        let sig = d.header("Dialbridge-Signature").expect("signature header");
        let t = sig
            .split(',')
            .find_map(|p| p.strip_prefix("t="))
            .expect("t=");
        let v1 = sig
            .split(',')
            .find_map(|p| p.strip_prefix("v1="))
            .expect("v1=");
        let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK.as_bytes()).unwrap();
        mac.update(format!("{t}.{}", d.body).as_bytes());
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(v1, want, "bad signature on {}", d.body);
        let j = d.json();
        let seq = j["sequence"].as_i64().expect("sequence");
        assert!(
            seq > last_seq,
            "callbacks out of order: {seq} after {last_seq}"
        );
        last_seq = seq;
        out.push(j["status"].as_str().unwrap_or("").to_string());
    }
    out
}

pub fn final_callback(rx: &CallbackReceiver, status: &str) -> serde_json::Value {
    assert!(
        rx.wait_status(status, Duration::from_secs(30)),
        "no {status} callback: {:?}",
        rx.accepted()
    );
    rx.accepted()
        .into_iter()
        .find(|b| b["status"] == status)
        .unwrap_or_default()
}
