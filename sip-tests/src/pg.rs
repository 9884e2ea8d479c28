//! A real PostgreSQL server for the tests, from the Debian `postgresql` package: `initdb`
//! into a temporary directory and `pg_ctl` on a free loopback port, as the `postgres` user
//! when the tests run as root (PostgreSQL refuses to run as root). One server per test
//! process; each test gets a database of its own (`createdb`). A watcher process stops the
//! server and removes its directory when the test process is gone.
//!
//! Shared by the store's test suite (`crates/store/tests/store`, which includes this file)
//! and the black-box tests here. Synchronous and free of crate dependencies for that reason.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The server shared by the tests of this process.
pub struct PgServer {
    port: u16,
    data: String,
    opts: String,
    log: String,
}

/// Where `initdb` and `pg_ctl` are: `DIALBRIDGE_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`, else the `PATH`.
fn bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("DIALBRIDGE_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn tool(name: &str) -> PathBuf {
    match bin_dir() {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    }
}

/// Whether this process runs as root (its effective uid, from `/proc/self/status`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Runs `cmd` as the `postgres` user when we are root.
fn as_pg_user(program: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl PgServer {
    /// The server of this test process, started at the first call.
    pub fn get() -> &'static PgServer {
        static SERVER: OnceLock<PgServer> = OnceLock::new();
        SERVER.get_or_init(PgServer::start)
    }

    /// A server of the calling test's own, which it may stop and start again
    /// ([`PgServer::stop`], [`PgServer::start_again`]).
    pub fn own() -> PgServer {
        PgServer::start()
    }

    fn start() -> PgServer {
        let initdb = tool("initdb");
        let pg_ctl = tool("pg_ctl");
        assert!(
            Command::new(&initdb).arg("--version").output().is_ok(),
            "PostgreSQL's initdb was not found (install the Debian package `postgresql`, or set \
             DIALBRIDGE_PG_BIN to the directory of initdb and pg_ctl)"
        );
        let dir = std::env::temp_dir().join(format!(
            "dialbridge-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "chown of the PostgreSQL directory to postgres failed");
        }
        let data = dir.join("data");
        let data_s = data.to_string_lossy().into_owned();
        let out = as_pg_user(
            &initdb,
            &[
                "-D",
                &data_s,
                "-U",
                "dialbridge",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )
        .output()
        .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            dir.display()
        );
        let log = dir.join("server.log").to_string_lossy().into_owned();
        let out = as_pg_user(
            &pg_ctl,
            &[
                "-D", &data_s, "-o", &opts, "-l", &log, "-w", "-t", "60", "start",
            ],
        )
        .output()
        .expect("pg_ctl runs");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        // Stop the server and remove its directory once this process is gone.
        let pg_user = if is_root() {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 0.5; done; {pg_user}{pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
            data = data.display(),
            dir = dir.display(),
        );
        // The watcher outlives this process on purpose (init reaps it): it is never waited for.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("watcher starts");
        PgServer {
            port,
            data: data_s,
            opts,
            log,
        }
    }

    /// Stops the server (fast shutdown: open connections are closed).
    pub fn stop(&self) {
        let out = as_pg_user(
            &tool("pg_ctl"),
            &["-D", &self.data, "-m", "fast", "-w", "stop"],
        )
        .output()
        .expect("pg_ctl runs");
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the stopped server again, on the same port.
    pub fn start_again(&self) {
        let out = as_pg_user(
            &tool("pg_ctl"),
            &[
                "-D", &self.data, "-o", &self.opts, "-l", &self.log, "-w", "-t", "60", "start",
            ],
        )
        .output()
        .expect("pg_ctl runs");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server's main process (from its `postmaster.pid`): its process tree is the whole
    /// server, for a benchmark's CPU count.
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(Path::new(&self.data).join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// A fresh, empty database; its URL.
    pub fn fresh_database(&self) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let port = self.port.to_string();
        let out = Command::new(tool("createdb"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "dialbridge", &name])
            .output()
            .expect("createdb runs");
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://dialbridge@127.0.0.1:{}/{name}", self.port)
    }
}
