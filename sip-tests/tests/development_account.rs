//! `dialbridge serve` on embedded defaults, on an empty store: it makes a development account
//! and prints how to sign in (its keys) once on standard output, never in the log; the keys
//! work; the next start on the same store prints none. Runs in a network namespace with only
//! loopback, since the embedded defaults listen on fixed ports (5060, 8080).

use sip_tests::http::request;
use sip_tests::{dialbridge_bin, in_netns, TempDir};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Starts `serve` without `--config` in `dir`; returns the child and its stdout up to "ready".
fn serve(dir: &TempDir) -> (Child, Vec<String>) {
    let log = std::fs::File::create(dir.path().join("serve.log")).expect("log file");
    let mut child = Command::new(dialbridge_bin())
        .arg("serve")
        .current_dir(dir.path())
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start dialbridge");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
            panic!("dialbridge did not start: {lines:?}\n{log}")
        };
        let ready = line.starts_with("dialbridge: ready");
        lines.push(line);
        if ready {
            return (child, lines);
        }
    }
}

fn stop(mut child: Child) {
    sip_tests::terminate(&mut child, Duration::from_secs(15));
}

fn value(lines: &[String], label: &str) -> String {
    lines
        .iter()
        .find_map(|l| {
            let rest = l.strip_prefix("dialbridge:")?.trim_start();
            let v = rest.strip_prefix(label)?;
            v.split_whitespace().next().map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no {label:?} line in {lines:#?}"))
}

#[test]
fn serve_on_defaults_makes_a_development_account_and_prints_its_keys_once() {
    if in_netns("serve_on_defaults_makes_a_development_account_and_prints_its_keys_once") {
        return;
    }
    let dir = TempDir::new("devacct");
    let (child, lines) = serve(&dir);
    let secret = value(&lines, "secret key");
    let publishable = value(&lines, "publishable key");
    let webhook = value(&lines, "webhook secret");
    let console = value(&lines, "console");
    assert!(secret.starts_with("sk_dev_"), "{lines:#?}");
    assert!(publishable.starts_with("pk_dev_"), "{lines:#?}");
    assert_eq!(console, "http://127.0.0.1:8080/console");
    let phone = lines
        .iter()
        .find(|l| l.contains("--register agent-desk:"))
        .expect("how to register the agent's phone");
    let password = phone
        .split("agent-desk:")
        .nth(1)
        .and_then(|r| r.split('@').next())
        .expect("device password")
        .to_owned();

    // The keys work: the secret key signs in; the console is there.
    let api = "127.0.0.1:8080".parse().expect("address");
    let auth = format!("Bearer {secret}");
    let acct = request(api, "GET", "/v1/account", &[("Authorization", &auth)], None);
    assert_eq!(acct.status, 200, "{}", acct.body);
    assert_eq!(acct.json()["name"], "Development");
    let keys = request(
        api,
        "GET",
        "/v1/publishable_keys",
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(keys.json()["data"][0]["key"], publishable.as_str());
    let page = request(api, "GET", "/console", &[], None);
    assert_eq!(page.status, 200);
    stop(child);

    // Never in the log.
    let log = std::fs::read_to_string(dir.path().join("serve.log")).expect("log");
    assert!(log.contains("development account created"), "{log}");
    for s in [&secret, &webhook, &password] {
        assert!(
            !log.contains(s.as_str()),
            "a secret of the development account was logged"
        );
    }

    // The next start on the same store: the account is there, its keys are not printed.
    let (child, again) = serve(&dir);
    assert!(
        !again
            .iter()
            .any(|l| l.contains(&secret) || l.contains("secret key")),
        "{again:#?}"
    );
    let acct = request(api, "GET", "/v1/account", &[("Authorization", &auth)], None);
    assert_eq!(acct.status, 200, "{}", acct.body);
    stop(child);
}
