//! Support for the benchmark binaries `c2c-bench` and `reg-bench` (`src/bin/`): command-line
//! flags, CPU time and peak memory of a process (tree) from `/proc`, percentiles, what the
//! SIPp scenarios log, and generated users. Everything here that parses or computes is pure
//! and tested below; the benchmarks themselves are not tests (see `docs/benchmarks.md`).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::{parse_stats, TempDir};

/// `--name value` flags; anything else is an error naming the argument.
#[derive(Debug, Default)]
pub struct Flags(HashMap<String, String>);

impl Flags {
    /// Parses `args` (without the program name) against the `known` flag names.
    pub fn parse(args: &[String], known: &[&str]) -> Result<Flags, String> {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let name = a
                .strip_prefix("--")
                .filter(|n| known.contains(n))
                .ok_or_else(|| {
                    format!("unknown argument {a:?} (known: --{})", known.join(", --"))
                })?;
            let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            map.insert(name.to_owned(), value.clone());
        }
        Ok(Flags(map))
    }

    /// The value of `--name`, or `default` when it was not given.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.0.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: {v:?} is not a valid value")),
        }
    }

    /// The value of `--name` as text, if given.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// The fields of `/proc/PID/stat` a benchmark needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub ppid: u32,
    /// Clock ticks in user mode.
    pub utime: u64,
    /// Clock ticks in kernel mode.
    pub stime: u64,
}

/// Parses the text of `/proc/PID/stat`. The command name (field 2) is in parentheses and may
/// hold spaces and parentheses itself, so the fields are counted after the last `)`.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) ... utime(14) stime(15); f[0] is field 3.
    Some(ProcStat {
        ppid: f.get(1)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
    })
}

/// `VmHWM` (peak resident set) of `/proc/PID/status`, in KiB.
pub fn parse_vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`; 100 when unknown).
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// User and system CPU seconds of a process and its descendants alive now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTime {
    pub user: f64,
    pub system: f64,
}

impl CpuTime {
    pub fn total(&self) -> f64 {
        self.user + self.system
    }

    /// The sum of two processes' CPU time.
    pub fn plus(self, other: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }

    /// The CPU time spent between `earlier` and `self`.
    pub fn since(&self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

/// The group a thread's name (`/proc/PID/task/TID/comm`) belongs to: numbered threads of one
/// kind (`store-0`, `store-1`) are one group.
pub fn thread_group(comm: &str) -> String {
    let comm = comm.trim();
    match comm.rsplit_once('-') {
        Some((kind, n))
            if !kind.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            kind.to_owned()
        }
        _ => comm.to_owned(),
    }
}

/// CPU seconds (user + system) of a process's threads alive now, by [`thread_group`].
pub fn threads_cpu(pid: u32, ticks_per_second: u64) -> std::collections::BTreeMap<String, f64> {
    let mut by_group = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_group;
    };
    for t in tasks.flatten() {
        let path = t.path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue;
        };
        if let Some(st) = parse_proc_stat(&stat) {
            *by_group.entry(thread_group(&comm)).or_insert(0.0) +=
                (st.utime + st.stime) as f64 / ticks_per_second.max(1) as f64;
        }
    }
    by_group
}

/// The pids in `stats` that descend from `root`, `root` included.
pub fn descendants(root: u32, stats: &[(u32, ProcStat)]) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        for (pid, st) in stats {
            if st.ppid == parent && !out.contains(pid) {
                out.push(*pid);
            }
        }
        i += 1;
    }
    out
}

/// CPU time of `root` and every process below it (Kamailio's children, for instance).
pub fn tree_cpu(root: u32, ticks_per_second: u64) -> CpuTime {
    let mut stats = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(st) = std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .as_deref()
                .and_then(parse_proc_stat)
            {
                stats.push((pid, st));
            }
        }
    }
    let tree = descendants(root, &stats);
    let tps = ticks_per_second.max(1) as f64;
    let mut cpu = CpuTime::default();
    for (pid, st) in &stats {
        if tree.contains(pid) {
            cpu.user += st.utime as f64 / tps;
            cpu.system += st.stime as f64 / tps;
        }
    }
    cpu
}

/// Waits, at most `limit`, until the processes under `root` are idle: at most 20 ms of CPU
/// in each of two 200 ms intervals in a row. What a server does once after it starts (the
/// numbering metadata dialbridge compiles in the background, Kamailio's children setting up)
/// is then not counted with the load that follows. False when `limit` ran out first.
pub fn wait_idle(root: u32, ticks_per_second: u64, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let mut last = tree_cpu(root, ticks_per_second).total();
    let mut quiet = 0;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = tree_cpu(root, ticks_per_second).total();
        quiet = if now - last <= 0.02 { quiet + 1 } else { 0 };
        last = now;
        if quiet == 2 {
            return true;
        }
    }
    false
}

/// The value of an unlabelled sample `name` in a Prometheus text exposition.
pub fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `dialbridge_heap_bytes` from the server's `/metrics` (heap in use, not the resident set).
pub fn heap_bytes(api: std::net::SocketAddr) -> Option<u64> {
    let r = crate::http::try_request(api, "GET", "/metrics", &[], None).ok()?;
    metric_value(&r.body, "dialbridge_heap_bytes")
}

/// `VmRSS` (resident set now) of `/proc/PID/status`, in KiB.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Resident set of a process now, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .as_deref()
        .and_then(parse_vm_rss_kib)
}

/// Peak resident set of a process in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .as_deref()
        .and_then(parse_vm_hwm_kib)
}

/// The `p`-th percentile (0–100) by nearest rank of `values` (sorted here).
pub fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

/// The INVITEs `bench_agent.xml` logged: `INVITE <number shown> <secs> <usecs>` per line, as
/// number → arrival time in seconds since the Unix epoch (the first arrival of a number).
pub fn parse_invite_log(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        if f.next() != Some("INVITE") {
            continue;
        }
        let (Some(shown), Some(secs), Some(usecs)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let (Ok(secs), Ok(usecs)) = (secs.parse::<f64>(), usecs.parse::<f64>()) else {
            continue;
        };
        out.entry(shown.to_owned())
            .or_insert(secs.trunc() + usecs / 1e6);
    }
    out
}

/// The dial string of call `i` of a run: a distinct North American number, so that the
/// agent's INVITE (whose From shows it) can be matched with its REST request.
pub fn dial_string(i: usize) -> String {
    // A valid US number (the exchange starts with 2-9): what the dialing checks accept.
    format!("+1415{}{:04}", 200 + (i / 10_000) % 800, i % 10_000)
}

/// A valid TypeID `PREFIX_…` whose last five characters encode `n` (below 32⁵), for
/// generated configurations.
pub fn typeid(prefix: &str, n: u32) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut tail = [b'0'; 5];
    let mut v = n;
    for c in tail.iter_mut().rev() {
        *c = ALPHABET[(v % 32) as usize];
        v /= 32;
    }
    format!(
        "{prefix}_01h2xcejqtf2nbrexx3vq{}",
        String::from_utf8_lossy(&tail)
    )
}

/// `count` device usernames and passwords: `bench00000` / `pw-00000-…`.
pub fn bench_users(count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            (
                format!("bench{i:05}"),
                format!("pw-{i:05}-{:08x}", (i as u32).wrapping_mul(2_654_435_761)),
            )
        })
        .collect()
}

/// A SIPp injection file for `register_bench.xml`: field 0 the user, field 1 the
/// `[authentication …]` keyword with that user's credentials.
pub fn injection_csv(users: &[(String, String)]) -> String {
    let mut out = String::from("SEQUENTIAL\n");
    for (u, p) in users {
        out.push_str(&format!("{u};[authentication username={u} password={p}]\n"));
    }
    out
}

/// The `registrar-users.cfg` Kamailio imports (`deploy/kamailio/registrar.cfg`).
pub fn kamailio_users(users: &[(String, String)]) -> String {
    users
        .iter()
        .map(|(u, p)| format!("$sht(users=>{u}) = \"{p}\";\n"))
        .collect()
}

/// The 1-, 5- and 15-minute load averages, as `/proc/loadavg` gives them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// A SIPp in the background with statistics (`-trace_stat`, every second), errors and
/// `<log>` output in its own directory, but no message trace (it would cost SIPp more than
/// the server under test).
pub struct BenchSipp {
    child: Option<Child>,
    dir: TempDir,
    pub name: String,
}

/// What a [`BenchSipp`] reported.
#[derive(Debug, Default)]
pub struct SippTotals {
    pub exit_code: i32,
    pub successful: u64,
    pub failed: u64,
    pub retransmissions: u64,
}

impl BenchSipp {
    pub fn spawn(name: &str, args: &[&str]) -> std::io::Result<BenchSipp> {
        let dir = TempDir::new(&format!("bench-{name}"));
        let child = Command::new("sipp")
            .args(args)
            .args(["-nostdin", "-trace_stat", "-fd", "1", "-stf"])
            .arg(dir.path().join("stats.csv"))
            .args(["-trace_err", "-error_file"])
            .arg(dir.path().join("errors.log"))
            .args(["-trace_logs", "-log_file"])
            .arg(dir.path().join("logs.log"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(BenchSipp {
            child: Some(child),
            dir,
            name: name.to_owned(),
        })
    }

    /// What the scenario logged with `<log>`.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs.log")).unwrap_or_default()
    }

    /// The first lines of SIPp's error file.
    pub fn errors(&self, lines: usize) -> String {
        std::fs::read_to_string(self.dir.path().join("errors.log"))
            .unwrap_or_default()
            .lines()
            .take(lines)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits up to `limit` for the exit, then kills; returns the final counters.
    pub fn finish(&mut self, limit: Duration) -> SippTotals {
        let mut exit_code = -1;
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + limit;
            exit_code = loop {
                match child.try_wait() {
                    Ok(Some(st)) => break st.code().unwrap_or(-1),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break -2;
                    }
                }
            };
        }
        if let Ok(keep) = std::env::var("BENCH_KEEP_STATS") {
            let _ = std::fs::copy(
                self.dir.path().join("stats.csv"),
                format!("{keep}.{}.csv", self.name),
            );
        }
        let stats = parse_stats(
            &std::fs::read_to_string(self.dir.path().join("stats.csv")).unwrap_or_default(),
        );
        let stat = |name: &str| {
            stats
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0)
        };
        SippTotals {
            exit_code,
            successful: stat("SuccessfulCall(C)"),
            failed: stat("FailedCall(C)"),
            retransmissions: stat("Retransmissions(C)"),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for BenchSipp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Kamailio in the foreground (its main process; the workers are its children), the
/// reference `reg-bench` and `c2c-bench --reference kamailio` measure beside dialbridge.
pub struct Kamailio {
    child: Child,
}

impl Kamailio {
    /// Writes `config` (the text of one of `deploy/kamailio/`'s files) into `dir` as `name`
    /// and starts Kamailio on it, listening on UDP `127.0.0.1:port`, with `private_mb` MB of
    /// private memory per process and `defines` (`-A NAME=value`). Returns once the port
    /// is taken (at most 15 s).
    pub fn start(
        dir: &Path,
        name: &str,
        config: &str,
        port: u16,
        private_mb: u32,
        defines: &[String],
    ) -> Result<Kamailio, String> {
        std::fs::write(dir.join(name), config).map_err(|e| e.to_string())?;
        let run = dir.join("run");
        std::fs::create_dir_all(&run).map_err(|e| e.to_string())?;
        let log_path = dir.join("kamailio.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("kamailio");
        cmd.args(["-f", name, "-DD", "-E", "-m", "512", "-M"])
            .arg(private_mb.to_string())
            .arg("-Y")
            .arg(&run)
            .args(["-l", &format!("udp:127.0.0.1:{port}")]);
        for d in defines {
            cmd.args(["-A", d]);
        }
        let child = cmd
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start kamailio: {e}"))?;
        let k = Kamailio { child };
        // Ready when its UDP port is taken.
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
                std::thread::sleep(Duration::from_millis(500));
                return Ok(k);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        Err(format!("kamailio did not start:\n{log}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        crate::terminate(&mut self.child, Duration::from_secs(10));
    }
}

/// The reference `c2c-bench --reference kamailio` measures: a SIPp callee
/// (`sipp-scenarios/bench_callee.xml`: 180, 200 after 500 ms, 200 to the BYE) behind
/// Kamailio as a transaction-stateful proxy (`deploy/kamailio/proxy.cfg`). A SIPp caller
/// ([`ReferenceProxy::caller_args`]) sends its calls to [`ReferenceProxy::target`].
pub struct ReferenceProxy {
    pub callee: BenchSipp,
    pub kamailio: Kamailio,
    /// Where the caller sends its calls (Kamailio's UDP address).
    pub target: String,
    /// Kamailio's working directory; dropped after Kamailio.
    _dir: TempDir,
}

impl ReferenceProxy {
    /// Starts the callee for `calls` calls and Kamailio in front of it; `limit` is SIPp's
    /// `-timeout` (`"60s"`).
    pub fn start(calls: usize, limit: &str) -> Result<ReferenceProxy, String> {
        let dir = TempDir::new("reference-proxy");
        let callee_port = crate::free_port();
        let sf = crate::scenario("bench_callee.xml")
            .to_string_lossy()
            .into_owned();
        let (port_s, media, max) = (
            callee_port.to_string(),
            crate::free_port().to_string(),
            calls.to_string(),
        );
        let callee = BenchSipp::spawn(
            "callee",
            &[
                "-sf",
                &sf,
                "-i",
                "127.0.0.1",
                "-p",
                &port_s,
                "-mp",
                &media,
                "-m",
                &max,
                "-buff_size",
                "4194304",
                "-timeout",
                limit,
                "-timeout_error",
            ],
        )
        .map_err(|e| format!("cannot start sipp: {e}"))?;
        let cfg_src = crate::workspace_root().join("deploy/kamailio/proxy.cfg");
        let cfg =
            std::fs::read_to_string(&cfg_src).map_err(|e| format!("{}: {e}", cfg_src.display()))?;
        let port = crate::free_port();
        let kamailio = Kamailio::start(
            dir.path(),
            "proxy.cfg",
            &cfg,
            port,
            16,
            &[format!("CALLEE=\"sip:127.0.0.1:{callee_port}\"")],
        )?;
        Ok(ReferenceProxy {
            callee,
            kamailio,
            target: format!("127.0.0.1:{port}"),
            _dir: dir,
        })
    }

    /// SIPp's arguments for the caller (`sipp-scenarios/bench_caller.xml`): `calls` calls
    /// at `rate` a second to [`ReferenceProxy::target`], each hung up after `hold_ms`.
    pub fn caller_args(&self, calls: usize, rate: f64, hold_ms: u64, limit: &str) -> Vec<String> {
        let sf = crate::scenario("bench_caller.xml")
            .to_string_lossy()
            .into_owned();
        [
            "-sf",
            &sf,
            &self.target,
            "-i",
            "127.0.0.1",
            "-p",
            &crate::free_port().to_string(),
            "-mp",
            &crate::free_port().to_string(),
            "-m",
            &calls.to_string(),
            "-r",
            &rate.to_string(),
            "-d",
            &hold_ms.to_string(),
            "-buff_size",
            "4194304",
            "-timeout",
            limit,
            "-timeout_error",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    }
}

/// Whether `program --version`-like `args` runs at all (the peer is installed).
pub fn installed(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_threads_of_one_kind_are_one_group() {
        assert_eq!(thread_group("store-0\n"), "store");
        assert_eq!(thread_group("media-fwd-1"), "media-fwd");
        assert_eq!(thread_group("tokio-rt-worker"), "tokio-rt-worker");
        assert_eq!(thread_group("call-journal"), "call-journal");
        assert_eq!(thread_group("x-"), "x-");
        assert_eq!(thread_group("-7"), "-7");
    }

    #[test]
    fn this_process_has_its_threads_cpu_counted() {
        let me = std::process::id();
        let ticks = clock_ticks_per_second();
        // A thread spins until its own CPU time shows under its group (bounded).
        let spin = std::thread::Builder::new()
            .name("spin-0".into())
            .spawn(move || {
                let t = Instant::now();
                let mut x = 0u64;
                while t.elapsed() < Duration::from_secs(30) {
                    for _ in 0..1_000_000 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                    if threads_cpu(me, ticks).get("spin").copied().unwrap_or(0.0) >= 0.05 {
                        return true;
                    }
                }
                false
            })
            .unwrap();
        assert!(spin.join().unwrap(), "{:?}", threads_cpu(me, ticks));
    }

    #[test]
    fn flags_parse_defaults_and_errors() {
        let args: Vec<String> = ["--rate", "50", "--calls", "500"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let f = Flags::parse(&args, &["rate", "calls", "log"]).unwrap();
        assert_eq!(f.get("rate", 1.0).unwrap(), 50.0);
        assert_eq!(f.get("calls", 1usize).unwrap(), 500);
        assert_eq!(f.get("log", "info".to_string()).unwrap(), "info");
        assert_eq!(f.text("log"), None);
        let bad: Vec<String> = vec!["--rate".into(), "fast".into()];
        let f = Flags::parse(&bad, &["rate"]).unwrap();
        assert!(f.get("rate", 1.0).unwrap_err().contains("--rate"));
        assert!(Flags::parse(&["--nope".into(), "1".into()], &["rate"])
            .unwrap_err()
            .contains("--nope"));
        assert!(Flags::parse(&["--rate".into()], &["rate"])
            .unwrap_err()
            .contains("needs a value"));
    }

    #[test]
    fn proc_stat_fields_after_an_awkward_name() {
        // Field 2 with a space and a parenthesis, as a thread name may have.
        let text = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    731 95 0 0 20 0 9 0 12345 1000000 2000 18446744073709551615\n";
        assert_eq!(
            parse_proc_stat(text),
            Some(ProcStat {
                ppid: 1,
                utime: 731,
                stime: 95
            })
        );
        assert_eq!(parse_proc_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_proc_stat(""), None);
    }

    #[test]
    fn vm_hwm_is_read_in_kib() {
        let status =
            "Name:\tdialbridge\nVmPeak:\t  900000 kB\nVmHWM:\t   51234 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(parse_vm_hwm_kib(status), Some(51234));
        assert_eq!(parse_vm_rss_kib(status), Some(40000));
        let metrics = "# HELP dialbridge_heap_bytes x\n# TYPE dialbridge_heap_bytes gauge\n\
                       dialbridge_heap_bytes_other 5\ndialbridge_heap_bytes 1234\n";
        assert_eq!(metric_value(metrics, "dialbridge_heap_bytes"), Some(1234));
        assert_eq!(metric_value(metrics, "dialbridge_nothing"), None);
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
        assert_eq!(parse_vm_hwm_kib("Name:\tx\n"), None);
    }

    #[test]
    fn a_process_tree_is_followed_down() {
        let st = |ppid| ProcStat {
            ppid,
            utime: 0,
            stime: 0,
        };
        // 10 -> 11, 12; 12 -> 13; 20 unrelated (child of 1).
        let stats = vec![
            (13, st(12)),
            (10, st(1)),
            (11, st(10)),
            (12, st(10)),
            (20, st(1)),
        ];
        let mut tree = descendants(10, &stats);
        tree.sort_unstable();
        assert_eq!(tree, vec![10, 11, 12, 13]);
        assert_eq!(descendants(99, &stats), vec![99]);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), Some(50.0));
        assert_eq!(percentile(&mut v, 99.0), Some(99.0));
        assert_eq!(percentile(&mut v, 100.0), Some(100.0));
        assert_eq!(percentile(&mut v, 0.0), Some(1.0));
        let mut one = vec![7.5];
        assert_eq!(percentile(&mut one, 99.0), Some(7.5));
        assert_eq!(percentile(&mut [], 50.0), None);
        assert_eq!(percentile(&mut [1.0], 101.0), None);
    }

    #[test]
    fn invite_log_lines_give_arrival_times() {
        let log = "INVITE +14150000001 1796264845.000000 253480.000000\n\
                   garbage line\n\
                   INVITE +14150000002 1796264846.000000 5.000000\n\
                   INVITE +14150000001 1796264999.000000 0.000000\n\
                   INVITE +14150000003 notanumber 1\n";
        let m = parse_invite_log(log);
        assert_eq!(m.len(), 2);
        assert!((m["+14150000001"] - 1_796_264_845.253_48).abs() < 1e-6);
        assert!((m["+14150000002"] - 1_796_264_846.000_005).abs() < 1e-6);
    }

    #[test]
    fn generated_ids_and_users_are_valid_and_distinct() {
        let ids: Vec<String> = (0..2000).map(|n| typeid("user", n)).collect();
        for id in &ids {
            store::TypeId::parse_with_prefix(id, "user").unwrap();
        }
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        assert_eq!(dial_string(42), "+14152000042");
        let users = bench_users(3);
        assert_eq!(users[2].0, "bench00002");
        let csv = injection_csv(&users);
        assert!(csv.starts_with(
            "SEQUENTIAL\nbench00000;[authentication username=bench00000 password=pw-00000-"
        ));
        assert_eq!(csv.lines().count(), 4);
        let kam = kamailio_users(&users[..1]);
        assert_eq!(
            kam,
            format!("$sht(users=>bench00000) = \"{}\";\n", users[0].1)
        );
    }
}
