//! `reg-bench`: the registrar's cost against Kamailio's, in one run.
//!
//! One SIPp digest-REGISTER scenario (`sipp-scenarios/register_bench.xml`, users from an
//! injection file) at a fixed rate, first against the release `dialbridge serve`, then against
//! Kamailio 5.6 with `deploy/kamailio/registrar.cfg` (in-memory usrloc, plain-text passwords
//! in a hash table), both provisioned with the same users and passwords. Prints
//! registrations per CPU second of each, SIPp's retransmissions against each, and the ratio.
//! Method: `docs/benchmarks.md`.
//!
//! ```text
//! cargo build --release -p dialbridge -p sip-tests
//! target/release/reg-bench --rate 2000 --seconds 10
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sip_tests::bench::{
    bench_users, clock_ticks_per_second, heap_bytes, injection_csv, installed, kamailio_users,
    load_average, peak_rss_kib, rss_kib, tree_cpu, typeid, wait_idle, BenchSipp, Flags, Kamailio,
    SippTotals,
};
use sip_tests::{dialbridge_bin, free_port, scenario, workspace_root, TempDir, TestServer};

const USAGE: &str = "reg-bench [--rate REGISTER_PER_SECOND (2000)] [--seconds N (10)] \
[--users N (2000)] [--children N (2)] [--settle SECONDS (35)] [--log RUST_LOG (info)] \
[--dialbridge PATH (target/release/dialbridge)] \
[--rounds N (1: one run of each; more: that many pairs, the order alternated, and the median ratio)]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reg-bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// One registrar's result.
struct Side {
    name: &'static str,
    totals: SippTotals,
    /// CPU seconds while SIPp ran.
    cpu: f64,
    /// Of those, in user space and in the kernel.
    user: f64,
    system: f64,
    /// CPU seconds while SIPp ran and for the settle time after it (transactions held for
    /// Timer J and the like are freed then).
    cpu_settled: f64,
    wall: f64,
    /// Peak RSS of the main process (meaningful for dialbridge; Kamailio keeps its location
    /// table in shared memory across processes).
    rss_mb: f64,
    /// Resident set (KiB) just before the first REGISTER and after the settle time (the
    /// transactions gone, the bindings kept).
    rss_before_kib: u64,
    rss_after_kib: u64,
    /// Heap in use (bytes, from the server's /metrics) at the same two moments: dialbridge.
    heap: Option<(u64, u64)>,
    /// When the run registers each user more than once: the registrations and CPU seconds
    /// of its first part, up to each user's first registration (a new contact each, written
    /// before its 200), and of the rest (refreshes).
    split: Option<Split>,
}

/// A run's registrations and CPU seconds before and after [`FIRST_WAVE_MARGIN`] past the
/// first registration of the last user.
struct Split {
    first: (u64, f64),
    rest: (u64, f64),
}

/// How long after the last user's first REGISTER is sent its exchange is taken to be over.
const FIRST_WAVE_MARGIN: Duration = Duration::from_millis(20);

impl Side {
    fn per_cpu_second(&self) -> f64 {
        self.totals.successful as f64 / self.cpu.max(1e-9)
    }

    fn per_cpu_second_settled(&self) -> f64 {
        self.totals.successful as f64 / self.cpu_settled.max(1e-9)
    }
}

/// Runs the REGISTER scenario against `target` and measures the process tree under `pid`.
/// The load both registrars get.
struct Load<'a> {
    csv: &'a Path,
    rate: u64,
    count: u64,
    /// Users, registered in turn: the first `users` registrations are each user's first.
    users: u64,
    settle: Duration,
}

fn measure(
    name: &'static str,
    pid: u32,
    target: &str,
    load: &Load<'_>,
    api: Option<std::net::SocketAddr>,
) -> Result<Side, String> {
    let Load {
        csv,
        rate,
        count,
        users,
        settle,
    } = *load;
    let ticks = clock_ticks_per_second();
    let sf = scenario("register_bench.xml")
        .to_string_lossy()
        .into_owned();
    let csv = csv.to_string_lossy().into_owned();
    let rate_s = rate.to_string();
    let count_s = count.to_string();
    let limit = format!("{}s", count / rate.max(1) + 60);
    // The heap is read first: the request that reads it is no registration's work.
    let heap_before = api.and_then(heap_bytes);
    if !wait_idle(pid, ticks, Duration::from_secs(10)) {
        println!("  {name}: still busy 10 s after it started; measuring anyway");
    }
    let before = tree_cpu(pid, ticks);
    let rss_before_kib = rss_kib(pid).unwrap_or(0);
    let started = Instant::now();
    let mut sipp = BenchSipp::spawn(
        name,
        &[
            "-sf",
            &sf,
            "-inf",
            &csv,
            target,
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "-r",
            &rate_s,
            "-m",
            &count_s,
            "-l",
            "10000",
            "-set",
            "expires",
            "3600",
            "-auth_uri",
            "sip:dialbridge.test",
            "-buff_size",
            "4194304",
            "-timeout",
            &limit,
            "-timeout_error",
        ],
    )
    .map_err(|e| format!("cannot start sipp: {e}"))?;
    // SIPp starts a registration every 1/rate s and takes the users in turn: the CPU time
    // when the last user's first exchange is over splits the run.
    let first_wave = Duration::from_secs_f64(users as f64 / rate.max(1) as f64) + FIRST_WAVE_MARGIN;
    let sampler = (users < count).then(|| {
        std::thread::spawn(move || {
            std::thread::sleep(first_wave.saturating_sub(started.elapsed()));
            tree_cpu(pid, ticks)
        })
    });
    let totals = sipp.finish(Duration::from_secs(count / rate.max(1) + 90));
    let wall = started.elapsed().as_secs_f64();
    let during = tree_cpu(pid, ticks).since(before);
    let split = sampler.and_then(|t| t.join().ok()).map(|mid| {
        let first_cpu = mid.since(before).total();
        let first_n =
            (users + (rate as f64 * FIRST_WAVE_MARGIN.as_secs_f64()) as u64).min(totals.successful);
        Split {
            first: (first_n, first_cpu),
            rest: (totals.successful - first_n, during.total() - first_cpu),
        }
    });
    let cpu = during.total();
    std::thread::sleep(settle);
    let cpu_settled = tree_cpu(pid, ticks).since(before).total();
    let errors = sipp.errors(5);
    if !errors.trim().is_empty() {
        println!("  SIPp against {name}: errors (first lines):\n{errors}");
    }
    Ok(Side {
        name,
        totals,
        cpu,
        user: during.user,
        system: during.system,
        cpu_settled,
        wall,
        rss_mb: peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
        rss_before_kib,
        rss_after_kib: rss_kib(pid).unwrap_or(0),
        heap: {
            if let (Ok(keep), Some(api)) = (std::env::var("BENCH_KEEP_STATS"), api) {
                if let Ok(r) = sip_tests::http::try_request(api, "GET", "/metrics", &[], None) {
                    let _ = std::fs::write(format!("{keep}.metrics"), &r.body);
                }
            }
            heap_before.zip(api.and_then(heap_bytes))
        },
        split,
    })
}

fn dialbridge_config(users: &[(String, String)]) -> String {
    // SIPp sends every user's REGISTER from its one address, where phones would each have
    // their own and with it their own budget of refusals (a challenge counts as one): the
    // bench lists that address as an operator lists an edge proxy in front of many phones,
    // so that one address's 30 a second does not stand for 2,000 phones' (without it the
    // first ~40 challenges, before any of these users is registered, run past the budget
    // and SIPp retransmits the few that got no answer: `docs/benchmarks.md`).
    let mut c = String::from(
        r#"
[sip]
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
refusal_exempt = ["127.0.0.1"]

[media]
ports = "20000-20099"

[[accounts]]
id = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Bench"
region = "US"
webhook_secret = "whsec_bench_1"
"#,
    );
    for (n, (u, p)) in users.iter().enumerate() {
        c.push_str(&format!(
            "\n[[users]]\nid = \"{}\"\naccount = \"acct_01h2xcejqtf2nbrexx3vqjhp41\"\n\
             name = \"{u}\"\ndevices = [{{ username = \"{u}\", password = \"{p}\" }}]\n",
            typeid("user", n as u32)
        ));
    }
    c
}

fn run(args: &[String]) -> Result<(), String> {
    let flags = Flags::parse(
        args,
        &[
            "rate",
            "seconds",
            "users",
            "children",
            "settle",
            "log",
            "dialbridge",
            "rounds",
        ],
    )?;
    let rate: u64 = flags.get("rate", 2000)?;
    let seconds: u64 = flags.get("seconds", 10)?;
    let n_users: usize = flags.get("users", 2000)?;
    let children: u32 = flags.get("children", 2)?;
    let settle = Duration::from_secs(flags.get("settle", 35)?);
    let log: String = flags.get("log", "info".to_owned())?;
    let rounds: usize = flags.get("rounds", 1)?;
    if !(1..=20).contains(&rounds) {
        return Err(format!("--rounds: 1 to 20, not {rounds}"));
    }
    if rate == 0 || seconds == 0 || n_users == 0 || n_users > 99_999 || children == 0 {
        return Err(format!(
            "--rate, --seconds, --children above 0; --users 1..=99999\n{USAGE}"
        ));
    }
    if !installed("kamailio", &["-v"]) {
        return Err(
            "kamailio is not installed: reg-bench compares against Kamailio 5.6 \
             (apt-get install kamailio)"
                .into(),
        );
    }
    if !installed("sipp", &["-v"]) {
        return Err("sipp is not installed (Debian package sip-tester)".into());
    }
    let bin = flags
        .text("dialbridge")
        .map(PathBuf::from)
        .unwrap_or_else(dialbridge_bin);
    if cfg!(debug_assertions) && flags.text("dialbridge").is_none() {
        eprintln!("reg-bench: warning: a debug build measures the debug dialbridge; use --release");
    }
    let count = rate * seconds;
    let users = bench_users(n_users);
    let dir = TempDir::new("reg-bench");
    let csv = dir.path().join("users.csv");
    std::fs::write(&csv, injection_csv(&users)).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.path().join("registrar-users.cfg"),
        kamailio_users(&users),
    )
    .map_err(|e| e.to_string())?;
    let load = Load {
        csv: &csv,
        rate,
        count,
        users: users.len() as u64,
        settle,
    };
    let cfg_src = workspace_root().join("deploy/kamailio/registrar.cfg");
    let kamailio_cfg = std::fs::read_to_string(&cfg_src)
        .map_err(|e| format!("{}: {e}", cfg_src.display()))?
        .replace("children=2", &format!("children={children}"));
    let p = Pair {
        bin: &bin,
        log: &log,
        dir: dir.path(),
        users: &users,
        kamailio_cfg: &kamailio_cfg,
        load: &load,
    };
    // Alternated: Kamailio goes first in every second round, so that neither side is always
    // measured in the later minute.
    let kamailio_first = |round: usize| round % 2 == 0;
    let mut ratios = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        if rounds > 1 {
            println!("reg-bench: round {round} of {rounds}");
        }
        ratios.push(pair(&p, kamailio_first(round))?);
    }
    if rounds > 1 {
        println!("reg-bench: ratio dialbridge / kamailio, registrations per CPU-second, by round");
        for (i, (during, settled)) in ratios.iter().enumerate() {
            println!(
                "  round {} ({} first): {during:.2} during the run, {settled:.2} with the {} s after",
                i + 1,
                if kamailio_first(i + 1) { "kamailio" } else { "dialbridge" },
                settle.as_secs()
            );
        }
        let mut during: Vec<f64> = ratios.iter().map(|r| r.0).collect();
        during.sort_by(f64::total_cmp);
        println!(
            "  during the run: median {:.2}, lowest {:.2}, highest {:.2}",
            during[during.len() / 2],
            during[0],
            during[during.len() - 1]
        );
    }
    Ok(())
}

/// What one pair of runs needs.
struct Pair<'a> {
    bin: &'a Path,
    log: &'a str,
    /// Kamailio's working directory (its configuration and users file).
    dir: &'a Path,
    users: &'a [(String, String)],
    /// Kamailio's registrar configuration, its children set.
    kamailio_cfg: &'a str,
    load: &'a Load<'a>,
}

/// dialbridge and Kamailio under the same load, one after the other (Kamailio first when
/// `kamailio_first`), each started afresh; prints both and returns the ratios dialbridge ÷
/// Kamailio (during the run, with the settle time).
fn pair(p: &Pair<'_>, kamailio_first: bool) -> Result<(f64, f64), String> {
    let Pair {
        bin,
        log,
        dir,
        users,
        kamailio_cfg,
        load,
    } = *p;
    let Load {
        rate,
        count,
        settle,
        ..
    } = *load;
    let n_users = users.len();
    let load_before = load_average();
    let run_dialbridge = || -> Result<Side, String> {
        let server = TestServer::start_bin(
            TempDir::new("reg-bench-dialbridge"),
            &dialbridge_config(users),
            bin,
            log,
        );
        let target = server.udp_addr().to_string();
        let side = measure("dialbridge", server.pid(), &target, load, server.api);
        drop(server.stop());
        side
    };
    let run_kamailio = || -> Result<Side, String> {
        let port = free_port();
        // Private memory per process: the users' hash table lines of the configuration are
        // parsed into it (16 MB falls short of 20,000 users).
        let kamailio = Kamailio::start(dir, "registrar.cfg", kamailio_cfg, port, 64, &[])?;
        measure(
            "kamailio",
            kamailio.pid(),
            &format!("127.0.0.1:{port}"),
            load,
            None,
        )
    };
    let (db, kam) = if kamailio_first {
        let kam = run_kamailio()?;
        (run_dialbridge()?, kam)
    } else {
        let db = run_dialbridge()?;
        (db, run_kamailio()?)
    };
    let load_after = load_average();

    println!(
        "reg-bench: {count} registrations (REGISTER, 401, REGISTER with credentials, 200) \
         offered at {rate}/s, {n_users} users, dialbridge {}",
        bin.display()
    );
    println!("  load average before: {load_before}; after: {load_after}");
    for s in [&db, &kam] {
        println!(
            "  {:<10} {} ok, {} failed, {} retransmissions (SIPp exit {}); CPU {:.2} s \
             (user {:.2}, system {:.2}) over {:.1} s: {:.0} registrations per CPU-second; with \
             the {} s after: CPU {:.2} s, {:.0} per CPU-second",
            s.name,
            s.totals.successful,
            s.totals.failed,
            s.totals.retransmissions,
            s.totals.exit_code,
            s.cpu,
            s.user,
            s.system,
            s.wall,
            s.per_cpu_second(),
            settle.as_secs(),
            s.cpu_settled,
            s.per_cpu_second_settled(),
        );
    }
    println!("  dialbridge peak RSS (VmHWM): {:.1} MB", db.rss_mb);
    // Each user is one device with one contact: its binding is what stays after the settle.
    let bindings = (users.len() as u64).min(db.totals.successful).max(1);
    println!(
        "  dialbridge RSS before the first REGISTER {:.1} MB, {} s after the last {:.1} MB: \
         {:.0} bytes per binding ({bindings} bindings)",
        db.rss_before_kib as f64 / 1024.0,
        settle.as_secs(),
        db.rss_after_kib as f64 / 1024.0,
        (db.rss_after_kib.saturating_sub(db.rss_before_kib) * 1024) as f64 / bindings as f64
    );
    if let Some((before, after)) = db.heap {
        println!(
            "  dialbridge heap in use before {:.1} MB, after {:.1} MB: {:.0} bytes per binding",
            before as f64 / 1e6,
            after as f64 / 1e6,
            after.saturating_sub(before) as f64 / bindings as f64
        );
    }
    let during = db.per_cpu_second() / kam.per_cpu_second().max(1e-9);
    let settled = db.per_cpu_second_settled() / kam.per_cpu_second_settled().max(1e-9);
    println!(
        "  ratio dialbridge / kamailio, registrations per CPU-second: {during:.2} during the \
         run, {settled:.2} with the {} s after",
        settle.as_secs()
    );
    if let (Some(d), Some(k)) = (&db.split, &kam.split) {
        let per = |(n, cpu): (u64, f64)| n as f64 / cpu.max(1e-9);
        for (what, d, k) in [
            (
                "each user's first registration (a new contact, durable before its 200)",
                d.first,
                k.first,
            ),
            ("the registrations after it (refreshes)", d.rest, k.rest),
        ] {
            println!(
                "  {what}: dialbridge {} in {:.2} CPU-s, {:.0} per CPU-second; kamailio {} in \
                 {:.2} CPU-s, {:.0} per CPU-second; ratio {:.2}",
                d.0,
                d.1,
                per(d),
                k.0,
                k.1,
                per(k),
                per(d) / per(k).max(1e-9)
            );
        }
    }
    Ok((during, settled))
}
