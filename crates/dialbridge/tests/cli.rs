//! The command line as a user runs it: `check-config` on good and bad files.

use std::process::Command;

fn dialbridge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dialbridge"))
}

#[test]
fn check_config_accepts_the_example() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/dialbridge.toml"
    );
    let out = dialbridge()
        .args(["check-config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn check_config_names_the_wrong_keys() {
    let dir = std::env::temp_dir().join(format!("dialbridge-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[sip]\nlisten = [\"udp:nowhere\"]\n[media]\nports = \"9-3\"\n[[numbers]]\nnumber = \"12\"\naccount = \"acct_01h2xcejqtf2nbrexx3vqjhp41\"\n",
    )
    .unwrap();
    let out = dialbridge()
        .args(["check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["sip.listen[0]", "media.ports", "numbers[0]"] {
        assert!(err.contains(key), "{key} not named in: {err}");
    }
    std::fs::write(&bad, "[sip]\nlisen = []\n").unwrap();
    let out = dialbridge()
        .args(["check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lisen"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_names_bad_account_limits() {
    let dir = std::env::temp_dir().join(format!("dialbridge-cli-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("limits.toml");
    let account = "[[accounts]]\nid = \"acct_01h2xcejqtf2nbrexx3vqjhp41\"\nname = \"Acme\"\n\
                   region = \"US\"\nwebhook_secret = \"w\"\n";
    std::fs::write(
        &file,
        format!("{account}calls_per_second = -1\nmax_concurrent = 0\n"),
    )
    .unwrap();
    let out = dialbridge()
        .args(["check-config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("accounts[0].calls_per_second: must be a number above 0"),
        "{err}"
    );
    assert!(
        err.contains("accounts[0].max_concurrent: must be at least 1"),
        "{err}"
    );
    assert!(!err.contains("accounts[0].burst"), "{err}");
    // Good values pass.
    std::fs::write(
        &file,
        format!("{account}calls_per_second = 0.5\nburst = 3\nmax_concurrent = 10\n"),
    )
    .unwrap();
    let out = dialbridge()
        .args(["check-config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_names_store_url_when_postgres_cannot_be_reached() {
    let dir = std::env::temp_dir().join(format!("dialbridge-cli-pg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = dir.join("pg.toml");
    std::fs::write(
        &file,
        format!(
            "[sip]\nlisten = [\"udp:127.0.0.1:0\"]\n[api]\nlisten = \"127.0.0.1:0\"\n\
             [store]\nurl = \"postgres://dialbridge:pgpass@127.0.0.1:{port}/dialbridge\"\n"
        ),
    )
    .unwrap();
    let mut child = dialbridge()
        .args(["serve", "--config"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: the connection is refused at once; the store's own time-out is 5 s.
    let mut status = None;
    for _ in 0..300 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(status.is_some_and(|s| !s.success()), "serve did not stop");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("store.url"), "{err}");
    assert!(err.contains("cannot reach PostgreSQL"), "{err}");
    assert!(!err.contains("pgpass"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
