//! `c2c-bench`: click-to-call throughput and cost of the release `dialbridge serve`.
//!
//! A SIPp agent device (registered like a phone; answers after 300 ms) and a SIPp carrier
//! (answers after 500 ms, hangs up 1 s later) on loopback; REST calls at a fixed rate with no
//! callback URL. Prints the calls completed and failed (from the call log, through the API),
//! the server's CPU seconds, calls per CPU second, REST request → agent INVITE latency
//! (p50/p99, measured on the SIPp side) and peak RSS. Method: `docs/benchmarks.md`.
//!
//! ```text
//! cargo build --release -p dialbridge -p sip-tests
//! target/release/c2c-bench --rate 100 --calls 1000
//! target/release/c2c-bench --rate 100 --calls 1000 --nodes 2   # two nodes on PostgreSQL
//! target/release/c2c-bench --rate 100 --calls 2000 --hold-ms 90000 --live-sample 35
//! ```
//!
//! With `--nodes N` (or `--store postgres`) the nodes share a PostgreSQL database started for
//! the run (`sip_tests::pg`), the agent registers at the first node, and the REST calls go to
//! the nodes in turn; the CPU reported is the nodes' and, on its own line, PostgreSQL's.
//!
//! With `--live-sample S`, the resident set is read S seconds after the last call was
//! placed, while the calls are held (`--hold-ms`, the carrier's wait before its BYE), and
//! compared with the resident set before the first call: bytes per live call (of the first
//! node, with `--nodes`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sip_tests::bench::{
    clock_ticks_per_second, dial_string, heap_bytes, installed, load_average, parse_invite_log,
    peak_rss_kib, percentile, rss_kib, threads_cpu, tree_cpu, BenchSipp, CpuTime, Flags,
    ReferenceProxy, SippTotals,
};
use sip_tests::http::{try_request, KeepAlive};
use sip_tests::{dialbridge_bin, free_port, scenario, sipp, TempDir, TestServer};

const SECRET: &str = "sk_bench_1";
const USER: &str = "user_01h2xcejqtf2nbrexx3vqjhp42";
const DEVICE: &str = "agent-desk";
const DEVICE_PASSWORD: &str = "agent-desk-pass";

const USAGE: &str = "c2c-bench [--rate CALLS_PER_SECOND (50)] [--calls N (500)] \
[--threads N (8)] [--settle SECONDS (35)] [--log RUST_LOG (info)] [--dialbridge PATH (target/release/dialbridge)] \
[--nodes N (1; above 1: PostgreSQL)] [--store sqlite|postgres (sqlite)] \
[--extra-config FILE (TOML added to the server's configuration, e.g. [log] or [hep])] \
[--hold-ms MS (1000: the carrier's wait before its BYE)] \
[--live-sample SECONDS (0 = off: RSS per live call, read that long after the last call)] \
[--keep-alive true|false (false: a new connection per REST request; true: each sending thread keeps one)] \
[--versus PATH (a second dialbridge build, run alternately with the first under the same flags) [--rounds N (3)]] \
[--reference kamailio|none (none; kamailio: then the same calls through Kamailio as a stateful proxy, measured the same way)]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = Flags::parse(&args, FLAGS).and_then(|flags| match flags.text("versus") {
        None if flags.text("rounds").is_some() => {
            Err(format!("--rounds goes with --versus\n{USAGE}"))
        }
        Some(_) if flags.text("reference").is_some() => Err(format!(
            "--reference goes without --versus (the builds are each other's reference)\n{USAGE}"
        )),
        None => run(&flags, None).map(drop),
        Some(second) => compare(&flags, second),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("c2c-bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// The flags `c2c-bench` takes.
const FLAGS: &[&str] = &[
    "rate",
    "calls",
    "threads",
    "settle",
    "log",
    "dialbridge",
    "extra-config",
    "nodes",
    "store",
    "hold-ms",
    "live-sample",
    "keep-alive",
    "versus",
    "rounds",
    "reference",
];

/// Runs the two builds alternately (first, second, first, ...) and prints each pair's
/// calls per CPU-second and their ratio: on a machine whose speed drifts from one half hour
/// to the next, only builds measured side by side compare.
fn compare(flags: &Flags, second: &str) -> Result<(), String> {
    let rounds: usize = flags.get("rounds", 3)?;
    if !(1..=20).contains(&rounds) {
        return Err(format!("--rounds: 1 to 20, not {rounds}"));
    }
    let first = flags
        .text("dialbridge")
        .map(str::to_owned)
        .unwrap_or_else(|| dialbridge_bin().to_string_lossy().into_owned());
    let mut pairs: Vec<(Outcome, Outcome)> = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let one = |path: &str| {
            println!("c2c-bench --versus: round {round} of {rounds}, {path}");
            run(flags, Some(path))
        };
        let a = one(&first)?;
        let b = one(second)?;
        pairs.push((a, b));
    }
    println!("c2c-bench --versus: calls per CPU-second, alternated");
    println!("  first:  {first}");
    println!("  second: {second}");
    let mut ratios = Vec::with_capacity(pairs.len());
    for (i, (a, b)) in pairs.iter().enumerate() {
        let ratio = b.per_cpu_second / a.per_cpu_second.max(1e-9);
        ratios.push(ratio);
        println!(
            "  round {}: first {:.0} ({} failed), second {:.0} ({} failed), second / first {ratio:.3}",
            i + 1,
            a.per_cpu_second,
            a.failed,
            b.per_cpu_second,
            b.failed
        );
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!(
        "  second / first: median {median:.3}, lowest {:.3}, highest {:.3}",
        ratios[0],
        ratios[ratios.len() - 1]
    );
    Ok(())
}

/// What one run measured, for [`compare`].
struct Outcome {
    /// Completed calls per CPU-second of the server(s) during the run.
    per_cpu_second: f64,
    failed: usize,
}

struct Sent {
    /// Wall clock just before the request was written, seconds since the epoch.
    at: f64,
    status: u16,
    call_id: Option<String>,
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The `[store]`, `[node]` and `[registrar]` tables of node `i` of a run on PostgreSQL.
fn node_config(db: &str, i: usize) -> String {
    format!(
        "[store]\nurl = \"{db}\"\n[node]\nid = \"bench-{i}\"\nsecret = \"bench-cluster-secret-0123\"\n\
         [registrar]\nnonce_secret = \"bench-nonce-secret-0123\"\n"
    )
}

/// The media ports of node `i` of `nodes`: those of the single-node run, split.
fn media_ports(i: usize, nodes: usize) -> String {
    let span = (12_000 / nodes as u32) & !1;
    let lo = 20_000 + span * i as u32;
    format!("{lo}-{}", lo + span - 1)
}

fn config(carrier_port: u16, rate: f64, hold_ms: u64, ports: &str) -> String {
    // The account's limits are raised well above the offered rate (the defaults, 5 calls/s,
    // burst 20 and 100 in progress, would refuse most of the load).
    let cps = (rate * 2.0).max(10.0);
    format!(
        r#"
[media]
ports = "{ports}"
# No RTP flows in this benchmark: the media time-out must outlast the held calls.
timeout_secs = {media_timeout}

[calls]
agent_ring_secs = 10
customer_ring_secs = 10
shutdown_grace_secs = 1

[[accounts]]
id = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Bench"
region = "US"
api_keys = [{{ key = "ak_bench_1", secret = "{SECRET}" }}]
webhook_secret = "whsec_bench_1"
allowed_prefixes = ["+1"]
calls_per_second = {cps}
burst = {burst}
max_concurrent = 100000

[[users]]
id = "{USER}"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Bench Agent"
devices = [{{ username = "{DEVICE}", password = "{DEVICE_PASSWORD}" }}]

[[trunks]]
name = "carrier"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
address = "127.0.0.1:{carrier_port}"
transport = "udp"

[[numbers]]
number = "+14155551234"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
owner = "{USER}"
"#,
        burst = cps.ceil() as u64,
        media_timeout = (hold_ms / 1000 + 60).max(30),
    )
}

fn bearer() -> String {
    format!("Bearer {SECRET}")
}

/// Calls of the log in a status that is not final, over all pages of those statuses.
fn unfinished(api: SocketAddr) -> Result<usize, String> {
    let mut n = 0;
    for status in ["queued", "ringing", "in-progress"] {
        let r = try_request(
            api,
            "GET",
            &format!("/v1/calls?status={status}&limit=100"),
            &[("Authorization", &bearer())],
            None,
        )
        .map_err(|e| format!("call log: {e}"))?;
        if r.status != 200 {
            return Err(format!("call log: HTTP {} {}", r.status, r.body));
        }
        n += r.json()["data"].as_array().map(Vec::len).unwrap_or(0);
    }
    Ok(n)
}

/// Every call of the log by status.
fn call_log(api: SocketAddr) -> Result<HashMap<String, usize>, String> {
    let mut by_status = HashMap::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100_000 {
        let path = match &cursor {
            Some(c) => format!("/v1/calls?limit=100&cursor={c}"),
            None => "/v1/calls?limit=100".to_owned(),
        };
        let r = try_request(api, "GET", &path, &[("Authorization", &bearer())], None)
            .map_err(|e| format!("call log: {e}"))?;
        if r.status != 200 {
            return Err(format!("call log: HTTP {} {}", r.status, r.body));
        }
        let v = r.json();
        for c in v["data"].as_array().into_iter().flatten() {
            let s = c["status"].as_str().unwrap_or("?").to_owned();
            *by_status.entry(s).or_insert(0) += 1;
        }
        cursor = v["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    Ok(by_status)
}

/// One run; `bin`: the build to run instead of `--dialbridge`'s (for `--versus`).
fn run(flags: &Flags, bin: Option<&str>) -> Result<Outcome, String> {
    let nodes: usize = flags.get("nodes", 1)?;
    let on_postgres = match flags.text("store").unwrap_or("sqlite") {
        "sqlite" => nodes > 1,
        "postgres" => true,
        other => return Err(format!("--store: {other:?} is not sqlite or postgres")),
    };
    if nodes == 0 || nodes > 8 {
        return Err("--nodes: 1 to 8".into());
    }
    let extra = match flags.text("extra-config") {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("--extra-config {path}: {e}"))?
        }
        None => String::new(),
    };
    let rate: f64 = flags.get("rate", 50.0)?;
    let calls: usize = flags.get("calls", 500)?;
    let threads: usize = flags.get("threads", 8)?;
    let keep_alive: bool = flags.get("keep-alive", false)?;
    let log: String = flags.get("log", "info".to_owned())?;
    let settle = Duration::from_secs(flags.get("settle", 35)?);
    let hold_ms: u64 = flags.get("hold-ms", 1000)?;
    let live_sample = Duration::from_secs(flags.get("live-sample", 0)?);
    let reference = match flags.text("reference").unwrap_or("none") {
        "none" => false,
        "kamailio" if nodes == 1 && live_sample.is_zero() => true,
        "kamailio" => {
            return Err("--reference kamailio: one node, without --live-sample".into());
        }
        other => return Err(format!("--reference: {other:?} is not kamailio or none")),
    };
    if reference && !installed("kamailio", &["-v"]) {
        return Err("kamailio is not installed (apt-get install kamailio)".into());
    }
    if !(rate > 0.0 && rate.is_finite()) || calls == 0 || threads == 0 {
        return Err(format!(
            "--rate, --calls and --threads must be above 0\n{USAGE}"
        ));
    }
    if calls > 1_000_000 {
        return Err("--calls: at most 1000000".into());
    }
    if !installed("sipp", &["-v"]) {
        return Err("sipp is not installed (Debian package sip-tester)".into());
    }
    let given = bin.or(flags.text("dialbridge"));
    let bin = given.map(PathBuf::from).unwrap_or_else(dialbridge_bin);
    if cfg!(debug_assertions) && given.is_none() {
        eprintln!("c2c-bench: warning: a debug build measures the debug dialbridge; use --release");
    }
    let load_before = load_average();

    // The carrier on the trunk's port, then the server, then the agent device.
    let carrier_port = free_port();
    let run_limit = format!("{}s", (calls as f64 / rate) as u64 + 90 + hold_ms / 1000);
    let hold = hold_ms.to_string();
    let carrier_sf = scenario("bench_carrier.xml").to_string_lossy().into_owned();
    let cport = carrier_port.to_string();
    let mp = free_port().to_string();
    let max = calls.to_string();
    let mut carrier = BenchSipp::spawn(
        "carrier",
        &[
            "-sf",
            &carrier_sf,
            "-i",
            "127.0.0.1",
            "-p",
            &cport,
            "-mp",
            &mp,
            "-m",
            &max,
            "-buff_size",
            "4194304",
            "-d",
            &hold,
            "-timeout",
            &run_limit,
            "-timeout_error",
        ],
    )
    .map_err(|e| format!("cannot start sipp: {e}"))?;

    let pg = on_postgres.then(sip_tests::pg::PgServer::get);
    let db = pg.map(|p| p.fresh_database());
    let mut servers = Vec::new();
    for i in 0..nodes {
        let store = match &db {
            Some(db) => node_config(db, i),
            None => String::new(),
        };
        servers.push(TestServer::start_bin(
            TempDir::new("c2c-bench"),
            &format!(
                "{extra}\n{store}{}",
                config(carrier_port, rate, hold_ms, &media_ports(i, nodes))
            ),
            &bin,
            &log,
        ));
    }
    let server = &servers[0];
    let apis: Vec<SocketAddr> = servers
        .iter()
        .map(|s| s.api.ok_or("the REST API is not listening"))
        .collect::<Result<_, _>>()?;
    let api = apis[0];
    let pids: Vec<u32> = servers.iter().map(TestServer::pid).collect();
    let pg_pid = pg.and_then(|p| p.postmaster_pid());
    let nodes_cpu = |ticks| {
        pids.iter()
            .map(|p| tree_cpu(*p, ticks))
            .fold(sip_tests::bench::CpuTime::default(), |a, b| a.plus(b))
    };
    let pid = pids[0];

    let agent_port = free_port();
    let agent_sf = scenario("bench_agent.xml").to_string_lossy().into_owned();
    let aport = agent_port.to_string();
    let amp = free_port().to_string();
    let mut agent = BenchSipp::spawn(
        "agent",
        &[
            "-sf",
            &agent_sf,
            "-i",
            "127.0.0.1",
            "-p",
            &aport,
            "-mp",
            &amp,
            "-m",
            &max,
            "-buff_size",
            "4194304",
            "-timeout",
            &run_limit,
            "-timeout_error",
        ],
    )
    .map_err(|e| format!("cannot start sipp: {e}"))?;
    let reg_sf = scenario("register_contact.xml")
        .to_string_lossy()
        .into_owned();
    let target = server.udp_addr().to_string();
    let reg = sipp(
        &[
            "-sf",
            &reg_sf,
            &target,
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "-m",
            "1",
            "-s",
            DEVICE,
            "-au",
            DEVICE,
            "-ap",
            DEVICE_PASSWORD,
            "-set",
            "expires",
            "3600",
            "-set",
            "contact_port",
            &aport,
            "-timeout",
            "15s",
            "-timeout_error",
        ],
        Duration::from_secs(20),
    );
    if reg.code != 0 {
        return Err(format!(
            "the agent device did not register:\n{}",
            reg.output
        ));
    }
    std::thread::sleep(Duration::from_millis(300));

    // The load: call i is due at start + i / rate, whichever thread takes it.
    let ticks = clock_ticks_per_second();
    // The heap is read first (the request that reads it is no call's work), then the nodes
    // are let finish what they do once after starting.
    let heap_before = heap_bytes(api).unwrap_or(0);
    for p in &pids {
        if !sip_tests::bench::wait_idle(*p, ticks, Duration::from_secs(10)) {
            println!("  node {p}: still busy 10 s after it started; measuring anyway");
        }
    }
    let cpu_before = nodes_cpu(ticks);
    let threads_before = threads_cpu(pid, ticks);
    let pg_before = pg_pid.map(|p| tree_cpu(p, ticks));
    let rss_before_kib = rss_kib(pid).unwrap_or(0);
    let next = Arc::new(AtomicUsize::new(0));
    let sent: Arc<Mutex<Vec<Option<Sent>>>> =
        Arc::new(Mutex::new((0..calls).map(|_| None).collect()));
    let start = Instant::now() + Duration::from_millis(100);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let next = next.clone();
            let sent = sent.clone();
            let apis = apis.clone();
            std::thread::spawn(move || {
                let mut clients: Vec<KeepAlive> = apis.iter().map(|a| KeepAlive::new(*a)).collect();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= calls {
                        break;
                    }
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let body = serde_json::json!({"user_id": USER, "dial_string": dial_string(i)})
                        .to_string();
                    let at = now_epoch();
                    let auth = bearer();
                    let headers = [("Authorization", auth.as_str())];
                    let node = i % apis.len();
                    let answer = if keep_alive {
                        clients[node].request("POST", "/v1/calls", &headers, Some(&body))
                    } else {
                        try_request(apis[node], "POST", "/v1/calls", &headers, Some(&body))
                    };
                    let (status, call_id) = match answer {
                        Ok(r) => {
                            let id = r.json()["call_id"].as_str().map(str::to_owned);
                            (r.status, id)
                        }
                        Err(_) => (0, None),
                    };
                    if let Ok(mut s) = sent.lock() {
                        s[i] = Some(Sent {
                            at,
                            status,
                            call_id,
                        });
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let offered_secs = start.elapsed().as_secs_f64();
    // Bytes per live call: the resident set while the calls are held, against before.
    let live = if live_sample.is_zero() {
        None
    } else {
        std::thread::sleep(live_sample);
        let rss = rss_kib(pid).unwrap_or(0);
        let heap = heap_bytes(api).unwrap_or(0);
        let log = call_log(api)?;
        let live: usize = ["queued", "ringing", "in-progress"]
            .iter()
            .map(|s| log.get(*s).copied().unwrap_or(0))
            .sum();
        Some((live, rss, heap))
    };

    // Every call ends by itself within ~2 s of its answer; wait (bounded) for the log to
    // show no call still going, then read the server's counters before anything else.
    let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_millis(hold_ms);
    let mut left = usize::MAX;
    while Instant::now() < deadline {
        left = unfinished(api)?;
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = nodes_cpu(ticks).since(cpu_before);
    let threads_after = threads_cpu(pid, ticks);
    let pg_cpu = pg_pid
        .zip(pg_before)
        .map(|(p, before)| tree_cpu(p, ticks).since(before));
    let load_after = load_average();
    // Transactions and dialogs outlive their calls (Timer J, K, D: up to 32 s); the work of
    // ending them is part of a call's cost too.
    std::thread::sleep(settle);
    let cpu_settled = nodes_cpu(ticks).since(cpu_before);
    let rss_kib: u64 = pids.iter().map(|p| peak_rss_kib(*p).unwrap_or(0)).sum();

    let by_status = call_log(api)?;
    let agent_totals = agent.finish(Duration::from_secs(5));
    let carrier_totals = carrier.finish(Duration::from_secs(5));
    let invites = parse_invite_log(&agent.logs());
    let sent = std::mem::take(&mut *sent.lock().map_err(|_| "lock poisoned")?);
    let accepted = sent
        .iter()
        .flatten()
        .filter(|s| s.status == 202 && s.call_id.is_some())
        .count();
    let mut latencies_ms: Vec<f64> = sent
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let s = s.as_ref()?;
            let got = invites.get(&dial_string(i))?;
            Some((got - s.at) * 1000.0)
        })
        .collect();
    let matched = latencies_ms.len();
    let p50 = percentile(&mut latencies_ms, 50.0);
    let p99 = percentile(&mut latencies_ms, 99.0);
    let completed = by_status.get("completed").copied().unwrap_or(0);
    let failed = calls - completed.min(calls);
    let mut refused: HashMap<u16, usize> = HashMap::new();
    for s in sent.iter().flatten().filter(|s| s.status != 202) {
        *refused.entry(s.status).or_insert(0) += 1;
    }
    let mut statuses: Vec<_> = by_status.iter().collect();
    statuses.sort();

    println!(
        "c2c-bench: {calls} calls offered at {rate}/s ({:.1}/s achieved), dialbridge {}, {nodes} node(s) on {}",
        calls as f64 / offered_secs.max(1e-9),
        bin.display(),
        if db.is_some() { "PostgreSQL" } else { "SQLite" }
    );
    println!("  load average before: {load_before}; after: {load_after}");
    println!(
        "  REST: {accepted} accepted (202), refused: {refused:?} (status 0 = no answer); {}",
        if keep_alive {
            "persistent connections (one per sending thread)"
        } else {
            "a new connection per request"
        }
    );
    println!("  call log: {statuses:?}");
    println!("  calls completed: {completed}, failed: {failed}");
    if left > 0 {
        println!("  still unfinished after 60 s: {left}");
    }
    println!(
        "  server CPU: {:.2} s (user {:.2}, system {:.2}) over {wall:.1} s",
        cpu.total(),
        cpu.user,
        cpu.system
    );
    println!(
        "  calls per CPU-second: {:.0}",
        completed as f64 / cpu.total().max(1e-9)
    );
    if let Some(pg_cpu) = pg_cpu {
        println!(
            "  PostgreSQL CPU: {:.2} s (user {:.2}, system {:.2}); nodes + PostgreSQL: {:.0} calls per CPU-second",
            pg_cpu.total(),
            pg_cpu.user,
            pg_cpu.system,
            completed as f64 / (cpu.total() + pg_cpu.total()).max(1e-9)
        );
    }
    println!(
        "  with the {} s after the last call: CPU {:.2} s, {:.0} calls per CPU-second",
        settle.as_secs(),
        cpu_settled.total(),
        completed as f64 / cpu_settled.total().max(1e-9)
    );
    // Where the first node's CPU went, by thread kind, per completed call.
    let mut by_thread: Vec<(String, f64)> = threads_after
        .iter()
        .map(|(g, after)| {
            (
                g.clone(),
                after - threads_before.get(g).copied().unwrap_or(0.0),
            )
        })
        .filter(|(_, d)| *d > 0.0)
        .collect();
    by_thread.sort_by(|a, b| b.1.total_cmp(&a.1));
    let per_call: Vec<String> = by_thread
        .iter()
        .map(|(g, d)| format!("{g} {:.0}", d * 1e6 / completed.max(1) as f64))
        .collect();
    println!(
        "  CPU per completed call by thread{}, µs: {}",
        if nodes > 1 { " (first node)" } else { "" },
        per_call.join(", ")
    );
    match (p50, p99) {
        (Some(p50), Some(p99)) => println!(
            "  REST request -> agent INVITE: p50 {p50:.1} ms, p99 {p99:.1} ms ({matched} INVITEs matched)"
        ),
        _ => println!("  REST request -> agent INVITE: no INVITE matched"),
    }
    println!(
        "  peak RSS (VmHWM, all nodes): {:.1} MB",
        rss_kib as f64 / 1024.0
    );
    if let Some((n, rss, heap)) = live {
        println!(
            "  {} s after the last call: {n} calls live; heap in use {:.1} MB (before the first call {:.1} MB): {:.0} bytes per live call; RSS {:.1} MB (before {:.1} MB): {:.0} bytes per live call",
            live_sample.as_secs(),
            heap as f64 / 1e6,
            heap_before as f64 / 1e6,
            heap.saturating_sub(heap_before) as f64 / n.max(1) as f64,
            rss as f64 / 1024.0,
            rss_before_kib as f64 / 1024.0,
            (rss.saturating_sub(rss_before_kib) * 1024) as f64 / n.max(1) as f64
        );
    }
    println!(
        "  SIPp agent: {} ok, {} failed, {} retransmissions (exit {}); carrier: {} ok, {} failed, {} retransmissions (exit {})",
        agent_totals.successful,
        agent_totals.failed,
        agent_totals.retransmissions,
        agent_totals.exit_code,
        carrier_totals.successful,
        carrier_totals.failed,
        carrier_totals.retransmissions,
        carrier_totals.exit_code
    );
    for s in [&agent, &carrier] {
        let e = s.errors(5);
        if !e.trim().is_empty() {
            println!("  SIPp {} errors (first lines):\n{e}", s.name);
        }
    }
    for s in servers {
        drop(s.stop());
    }
    if reference {
        let r = kamailio_reference(rate, calls, hold_ms, &run_limit)?;
        let per_cpu_second = r.totals.successful as f64 / r.cpu.total().max(1e-9);
        println!(
            "  reference, Kamailio as a stateful proxy (deploy/kamailio/proxy.cfg; each call an \
             INVITE, 180, 200, ACK, BYE and 200 through it, the callee answering after 500 ms, \
             the caller hanging up after {hold_ms} ms), {calls} calls at {rate}/s: {} ok, {} \
             failed, {} retransmissions (caller), {} retransmissions (callee); CPU {:.2} s \
             (user {:.2}, system {:.2}): {per_cpu_second:.0} calls per CPU-second",
            r.totals.successful,
            r.totals.failed,
            r.totals.retransmissions,
            r.callee_retransmissions,
            r.cpu.total(),
            r.cpu.user,
            r.cpu.system,
        );
        println!(
            "  ratio dialbridge / Kamailio proxy, calls per CPU-second: {:.2}",
            completed as f64 / cpu.total().max(1e-9) / per_cpu_second.max(1e-9)
        );
    }
    Ok(Outcome {
        per_cpu_second: completed as f64 / cpu.total().max(1e-9),
        failed,
    })
}

/// What the reference run measured.
struct Reference {
    /// The caller's counters.
    totals: SippTotals,
    callee_retransmissions: u64,
    /// Kamailio's CPU (all its processes) while the caller ran.
    cpu: CpuTime,
}

/// The same calls (`calls` at `rate`, answered after 500 ms, held `hold_ms`) through Kamailio
/// as a transaction-stateful, record-routing proxy between a SIPp caller and a SIPp callee:
/// the machine's speed at this moment, measured the way dialbridge's run was. `run_limit`:
/// SIPp's own time limit, the one dialbridge's peers ran with.
fn kamailio_reference(
    rate: f64,
    calls: usize,
    hold_ms: u64,
    run_limit: &str,
) -> Result<Reference, String> {
    let reference = ReferenceProxy::start(calls, run_limit)?;
    let kamailio = &reference.kamailio;
    let ticks = clock_ticks_per_second();
    if !sip_tests::bench::wait_idle(kamailio.pid(), ticks, Duration::from_secs(10)) {
        println!("  kamailio: still busy 10 s after it started; measuring anyway");
    }
    let before = tree_cpu(kamailio.pid(), ticks);
    let args = reference.caller_args(calls, rate, hold_ms, run_limit);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut caller =
        BenchSipp::spawn("caller", &args).map_err(|e| format!("cannot start sipp: {e}"))?;
    let limit = Duration::from_secs_f64(calls as f64 / rate + 60.0 + hold_ms as f64 / 1000.0);
    let totals = caller.finish(limit);
    let cpu = tree_cpu(kamailio.pid(), ticks).since(before);
    let mut reference = reference;
    let callee_totals = reference.callee.finish(Duration::from_secs(5));
    for s in [&caller, &reference.callee] {
        let e = s.errors(5);
        if !e.trim().is_empty() {
            println!("  SIPp {} errors (first lines):\n{e}", s.name);
        }
    }
    Ok(Reference {
        totals,
        callee_retransmissions: callee_totals.retransmissions,
        cpu,
    })
}
