//! Black-box test support: start the real `dialbridge` binary with a config, drive it with
//! real peers (SIPp, baresip) and raw sockets on loopback, and read what came back.
//!
//! Every server a test starts listens on port 0 (the kernel picks), so tests run in
//! parallel; the ports actually bound are read from the server's start-up lines.
//! Tests that replay foreign messages run inside a network namespace that has only
//! loopback ([`in_netns`]).

pub mod baresip;
pub mod bench;
pub mod c2c;
pub mod dns;
pub mod edge;
pub mod http;
pub mod pg;
pub mod tls;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `sipp-scenarios/NAME`.
pub fn scenario(name: &str) -> PathBuf {
    workspace_root().join("sipp-scenarios").join(name)
}

/// The RFC 4475 messages (`$RFC4475_DIR` or `../shared/data/rfc4475`).
pub fn rfc4475_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("RFC4475_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/data/rfc4475"));
    dir.join("expected.tsv").exists().then_some(dir)
}

/// The `dialbridge` binary of this build (built on demand when missing).
pub fn dialbridge_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let bin = target.join(profile).join("dialbridge");
    if !bin.exists() {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "dialbridge", "--bin", "dialbridge"]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let st = cmd.current_dir(workspace_root()).status();
        assert!(
            st.map(|s| s.success()).unwrap_or(false),
            "cannot build dialbridge"
        );
    }
    bin
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "dialbridge-test-{tag}-{}-{n}-{:x}",
            std::process::id(),
            rand_u64()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.0.as_os_str().is_empty() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish()
}

/// Builds the command that runs the server: (binary, config file, log file) -> command.
pub type Wrap<'a> = &'a dyn Fn(&Path, &Path, &Path) -> Command;

/// A running `dialbridge serve`.
pub struct TestServer {
    child: Child,
    pub dir: TempDir,
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    /// `ws:` and `wss:` listen addresses, as announced (`ws:ADDR` / `wss:ADDR`).
    pub websocket: Vec<String>,
    pub api: Option<SocketAddr>,
    pub log: PathBuf,
    pub config: PathBuf,
}

impl TestServer {
    /// Starts the server with `config` (TOML). When the config has no `[sip]` listen list,
    /// it listens on `udp:127.0.0.1:0` and `tcp:127.0.0.1:0`; the store is a file in a
    /// temporary directory unless the config names one.
    pub fn start(config: &str) -> TestServer {
        let dir = TempDir::new("server");
        Self::start_in(dir, config)
    }

    /// Starts the server in an existing directory (e.g. to restart on the same store).
    pub fn start_in(dir: TempDir, config: &str) -> TestServer {
        Self::start_wrapped(dir, config, None)
    }

    /// Starts the server through `wrap`, which gets the binary, the config file and the
    /// log file and returns the command to run (e.g. inside a private mount namespace with
    /// a small disk); its stdout must be the server's.
    pub fn start_wrapped(dir: TempDir, config: &str, wrap: Option<Wrap<'_>>) -> TestServer {
        let log = std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "debug".into());
        Self::launch(dir, config, &dialbridge_bin(), &log, wrap)
    }

    /// Starts `bin` (a `dialbridge` binary) in `dir` with `RUST_LOG=rust_log`; the config is
    /// completed as [`TestServer::start`] says.
    pub fn start_bin(dir: TempDir, config: &str, bin: &Path, rust_log: &str) -> TestServer {
        Self::launch(dir, config, bin, rust_log, None)
    }

    fn launch(
        dir: TempDir,
        config: &str,
        bin: &Path,
        rust_log: &str,
        wrap: Option<Wrap<'_>>,
    ) -> TestServer {
        let mut text = String::new();
        if !config.contains("[sip]") {
            text.push_str("[sip]\nlisten = [\"udp:127.0.0.1:0\", \"tcp:127.0.0.1:0\"]\n");
        }
        if !config.contains("[store]") {
            text.push_str(&format!(
                "[store]\nurl = \"sqlite://{}\"\n",
                dir.path().join("dialbridge.db").display()
            ));
        }
        if !config.contains("[api]") {
            text.push_str("[api]\nlisten = \"127.0.0.1:0\"\n");
        }
        if !config.contains("[media]") {
            text.push_str("[media]\nports = \"40000-49999\"\n");
        }
        text.push_str(config);
        let cfg_path = dir.path().join("dialbridge.toml");
        std::fs::write(&cfg_path, text).expect("write config");
        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = match wrap {
            Some(w) => w(bin, &cfg_path, &log),
            None => {
                let mut c = Command::new(bin);
                c.args(["serve", "--config"]).arg(&cfg_path);
                c
            }
        };
        let mut child = cmd
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
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
        let mut server = TestServer {
            child,
            dir,
            udp: vec![],
            tcp: vec![],
            tls: vec![],
            websocket: vec![],
            api: None,
            log,
            config: cfg_path,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("dialbridge: SIP listening on ") {
                        if let Some(a) = rest.strip_prefix("udp:").and_then(|a| a.parse().ok()) {
                            server.udp.push(a);
                        } else if let Some(a) =
                            rest.strip_prefix("tcp:").and_then(|a| a.parse().ok())
                        {
                            server.tcp.push(a);
                        } else if let Some(a) =
                            rest.strip_prefix("tls:").and_then(|a| a.parse().ok())
                        {
                            server.tls.push(a);
                        } else if rest.starts_with("ws:") || rest.starts_with("wss:") {
                            server.websocket.push(rest.to_string());
                        }
                    } else if let Some(rest) =
                        line.strip_prefix("dialbridge: REST listening on http://")
                    {
                        server.api = rest.trim_end_matches('/').parse().ok();
                    } else if line.starts_with("dialbridge: ready") {
                        return server;
                    }
                }
                Err(_) => {
                    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
                    panic!("dialbridge did not start:\n{log}");
                }
            }
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn udp_addr(&self) -> SocketAddr {
        self.udp[0]
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp[0]
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most `limit`) until the server's log holds `text`: a line is written by the
    /// server's log thread a moment after what it tells of.
    pub fn wait_log(&self, text: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.log_text().contains(text) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL (a crash) and returns its directory, store included.
    pub fn kill9(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, TempDir(PathBuf::new()))
    }

    /// Stops the server with SIGTERM and waits for it (SIGKILL after 10 s).
    pub fn stop(mut self) -> TempDir {
        self.terminate();
        std::mem::replace(&mut self.dir, TempDir(PathBuf::new()))
    }

    fn terminate(&mut self) {
        terminate(&mut self.child, Duration::from_secs(10));
    }
}

/// Stops `child` with SIGTERM and waits for it, SIGKILL after `limit`.
pub fn terminate(child: &mut Child, limit: Duration) {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}

/// The result of one SIPp run.
#[derive(Debug)]
pub struct SippRun {
    /// SIPp's exit code: 0 all calls succeeded, 1 some failed, 99 none processed, 255 fatal.
    pub code: i32,
    pub output: String,
    /// The last row of `-trace_stat` as (column, value) pairs, when stats were asked for.
    pub stats: Vec<(String, String)>,
}

impl SippRun {
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.stats
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.trim().parse().ok())
    }
}

/// A free UDP+TCP port on 127.0.0.1 (bound and released; a peer that needs a fixed port,
/// like a SIPp carrier named in the trunk config, takes it next).
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let Ok(u) = std::net::UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(a) = u.local_addr() else { continue };
        if std::net::TcpListener::bind(a).is_ok()
            && std::net::UdpSocket::bind((a.ip(), a.port() + 2)).is_ok()
        {
            return a.port();
        }
    }
    panic!("no free port");
}

/// A SIPp running in the background.
pub struct SippChild {
    child: Option<Child>,
    dir: TempDir,
    pub name: String,
}

impl SippChild {
    /// Starts `sipp` with `args` plus `-nostdin`, stats, errors and `-trace_logs` in a temp dir.
    pub fn spawn(name: &str, args: &[&str]) -> SippChild {
        let dir = TempDir::new("sipp");
        let child = Command::new("sipp")
            .args(args)
            .args(["-nostdin", "-trace_stat", "-stf"])
            .arg(dir.path().join("stats.csv"))
            .args(["-trace_err", "-error_file"])
            .arg(dir.path().join("errors.log"))
            .args(["-trace_logs", "-log_file"])
            .arg(dir.path().join("logs.log"))
            .args(["-trace_msg", "-message_file"])
            .arg(dir.path().join("messages.log"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp is installed (Debian package sip-tester)");
        SippChild {
            child: Some(child),
            dir,
            name: name.to_string(),
        }
    }

    /// What the scenario logged with `<log>`.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs.log")).unwrap_or_default()
    }

    /// The messages SIPp sent and received.
    pub fn messages(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("messages.log")).unwrap_or_default()
    }

    /// Waits (bounded) until the scenario logged `text`.
    pub fn wait_log(&self, text: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.logs().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Waits for the exit (killed past `limit`) and returns the result.
    pub fn wait(mut self, limit: Duration) -> SippRun {
        let Some(mut child) = self.child.take() else {
            return SippRun {
                code: -1,
                output: String::new(),
                stats: vec![],
            };
        };
        let deadline = Instant::now() + limit;
        let code = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st.code().unwrap_or(-1),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break -2;
                }
            }
        };
        let stats_text =
            std::fs::read_to_string(self.dir.path().join("stats.csv")).unwrap_or_default();
        let errors =
            std::fs::read_to_string(self.dir.path().join("errors.log")).unwrap_or_default();
        SippRun {
            code,
            output: format!(
                "[{}] errors:\n{errors}\nlogs:\n{}\nmessages:\n{}",
                self.name,
                self.logs(),
                self.messages()
            ),
            stats: parse_stats(&stats_text),
        }
    }
}

impl Drop for SippChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The header and the last row of a SIPp `-trace_stat` file as (column, value) pairs.
pub fn parse_stats(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    match (lines.first(), lines.last()) {
        (Some(h), Some(l)) if lines.len() > 1 => h
            .split(';')
            .map(str::to_string)
            .zip(l.split(';').map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// Runs `sipp` with `args` (plus `-nostdin`, stats and a hard time limit) and waits for it.
/// Runs the UAC scenario `sipp-scenarios/NAME` once from 127.0.0.1 against `target`, with
/// `extra` arguments (`-s`, `-au`, `-set` ...), bounded by `secs` seconds (SIPp's own
/// `-timeout`, and 5 s more for the process).
pub fn sipp_once(name: &str, target: SocketAddr, extra: &[&str], secs: u64) -> SippRun {
    let sf = scenario(name).to_string_lossy().into_owned();
    let target = target.to_string();
    let timeout = format!("{secs}s");
    let mut args = vec!["-sf", &sf, &target, "-i", "127.0.0.1", "-p", "0", "-m", "1"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-timeout", &timeout, "-timeout_error"]);
    sipp(&args, Duration::from_secs(secs + 5))
}

pub fn sipp(args: &[&str], limit: Duration) -> SippRun {
    let dir = TempDir::new("sipp");
    let stf = dir.path().join("stats.csv");
    let mut cmd = Command::new("sipp");
    cmd.args(args)
        .args(["-nostdin", "-trace_stat", "-stf"])
        .arg(&stf)
        .args(["-trace_err", "-error_file"])
        .arg(dir.path().join("errors.log"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .expect("sipp is installed (Debian package sip-tester)");
    let out = wait_limit(child, limit);
    let stats_text = std::fs::read_to_string(&stf).unwrap_or_default();
    let mut lines = stats_text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .rev()
        .peekable();
    let last_line = lines.next();
    let first_line = stats_text.lines().find(|l| !l.trim().is_empty());
    let header: Vec<String> = first_line
        .map(|h| h.split(';').map(str::to_string).collect())
        .unwrap_or_default();
    let last: Vec<String> = last_line
        .filter(|l| Some(*l) != first_line)
        .map(|h| h.split(';').map(str::to_string).collect())
        .unwrap_or_default();
    let errors = std::fs::read_to_string(dir.path().join("errors.log")).unwrap_or_default();
    SippRun {
        code: out.0,
        output: format!("{}\n--- errors ---\n{errors}", out.1),
        stats: header.into_iter().zip(last).collect(),
    }
}

/// Waits for a child with a time limit (killed past it); returns (exit code, stdout+stderr).
pub fn wait_limit(mut child: Child, limit: Duration) -> (i32, String) {
    let deadline = Instant::now() + limit;
    let code = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.code().unwrap_or(-1),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break -2;
            }
        }
    };
    let mut text = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut o, &mut text);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut text);
    }
    (code, text)
}

/// Runs the calling test again inside a network namespace that has only loopback
/// (`unshare -rn`), so that nothing it sends can leave the machine. Returns `true` in the
/// parent (the test is done: the child's verdict was asserted) and `false` inside the
/// namespace (go on with the test).
pub fn in_netns(test_name: &str) -> bool {
    if std::env::var_os("DIALBRIDGE_IN_NETNS").is_some() {
        return false;
    }
    let exe = std::env::current_exe().expect("test executable");
    let out = Command::new("unshare")
        .args(["-rn", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env("DIALBRIDGE_IN_NETNS", "1")
        .output()
        .expect("unshare (util-linux) is installed");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "test inside the namespace failed:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "the test did not run inside the namespace:\n{text}"
    );
    true
}
