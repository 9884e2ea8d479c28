//! `relay-bench`: measures a media relay — dialbridge's own (`media` crate) or rtpengine in
//! userspace mode — with the same load from the same tool, in one run.
//!
//! The relay runs in a process of its own (dialbridge: this binary re-executed as
//! `relay-serve`; rtpengine: started with `--table=-1` on loopback and driven through its ng
//! protocol). The load generator opens `--streams` paced 50 pps streams of 172-byte RTP
//! (paired into bidirectional calls, one relay session per call), stamps every packet with its
//! send time, receives it back after the relay and reports, on its last line:
//!
//! `relay-bench: target=… streams=N pps=… cpu_s=… pps_per_cpu_s=… loss=…% p50_us=… p99_us=…`
//!
//! where `cpu_s` is the relay process's user+system CPU time over the measured window.
//! Method and results: `docs/benchmarks.md`.

mod gen;
mod ng;
mod serve;
mod sys;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use media::MediaError;

/// What went wrong in a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("usage: {0}")]
    Usage(&'static str),
    #[error("bad value for {flag}: {value:?}")]
    BadValue { flag: String, value: String },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("relay: {0}")]
    Media(#[from] MediaError),
    #[error("{0}")]
    Protocol(&'static str),
}

impl BenchError {
    pub fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> BenchError {
        move |source| BenchError::Io { what, source }
    }
}

pub fn arg_value<T: FromStr>(flag: &str, v: Option<&String>) -> Result<T, BenchError> {
    let v = v.ok_or(BenchError::Usage("a flag is missing its value"))?;
    v.parse().map_err(|_| BenchError::BadValue {
        flag: flag.to_string(),
        value: v.clone(),
    })
}

const USAGE: &str =
    "relay-bench [--target dialbridge|rtpengine|direct] [--streams N] [--seconds S] \
[--warmup S] [--workers N] [--relay-cpus LIST] [--gen-cpus LIST] [--endpoints K] [--pps P] \
[--size BYTES] [--port-min P] [--port-max P] [--rtpengine PATH] [--no-rt] [--gen-sleep] \
[--backend auto|io_uring|epoll] [--pacing-us US] [--cpu-latency-us US]";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Dialbridge,
    Rtpengine,
    /// No relay: each stream goes straight to the other side's endpoint, the baseline of the
    /// generator and two loopback traversals that a relay's figures are read against.
    Direct,
}

#[derive(Debug, Clone)]
struct Options {
    target: Target,
    streams: usize,
    seconds: f64,
    warmup: f64,
    workers: usize,
    relay_cpus: Option<String>,
    gen_cpus: Option<String>,
    endpoints: usize,
    pps: u32,
    size: usize,
    port_min: u16,
    port_max: u16,
    rtpengine: String,
    rt: bool,
    gen_sleep: bool,
    /// dialbridge's forwarding backend (`DIALBRIDGE_MEDIA_BACKEND` of the relay process).
    backend: String,
    /// The sender's pacing granularity, in µs.
    pacing_us: u64,
    /// Hold the PM QoS CPU latency limit (`/dev/cpu_dma_latency`) at this many µs during the
    /// run: 0 keeps idle CPUs polling instead of halting.
    cpu_latency_us: Option<i32>,
}

fn parse(args: &[String]) -> Result<Options, BenchError> {
    let two_or_more = sys::cpu_count() >= 2;
    let last = sys::cpu_count().saturating_sub(1);
    let mut o = Options {
        target: Target::Dialbridge,
        streams: 1000,
        seconds: 5.0,
        warmup: 1.0,
        workers: 1,
        relay_cpus: two_or_more.then(|| last.to_string()),
        gen_cpus: two_or_more.then(|| format!("0-{}", last.saturating_sub(1))),
        endpoints: 4,
        pps: 50,
        size: 172,
        port_min: 30000,
        port_max: 59999,
        rtpengine: "rtpengine".to_string(),
        rt: true,
        gen_sleep: false,
        backend: "auto".to_string(),
        pacing_us: 1000,
        cpu_latency_us: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--rt" || flag == "--no-rt" {
            o.rt = flag == "--rt";
            continue;
        }
        if flag == "--gen-sleep" {
            o.gen_sleep = true;
            continue;
        }
        let v = it.next();
        match flag.as_str() {
            "--target" => {
                o.target = match v.map(String::as_str) {
                    Some("dialbridge") => Target::Dialbridge,
                    Some("rtpengine") => Target::Rtpengine,
                    Some("direct") => Target::Direct,
                    _ => return Err(BenchError::Usage(USAGE)),
                }
            }
            "--streams" => o.streams = arg_value(flag, v)?,
            "--seconds" => o.seconds = arg_value(flag, v)?,
            "--warmup" => o.warmup = arg_value(flag, v)?,
            "--workers" => o.workers = arg_value(flag, v)?,
            "--relay-cpus" => o.relay_cpus = v.filter(|s| s.as_str() != "any").cloned(),
            "--gen-cpus" => o.gen_cpus = v.filter(|s| s.as_str() != "any").cloned(),
            "--endpoints" => o.endpoints = arg_value(flag, v)?,
            "--pps" => o.pps = arg_value(flag, v)?,
            "--size" => o.size = arg_value(flag, v)?,
            "--pacing-us" => o.pacing_us = arg_value(flag, v)?,
            "--cpu-latency-us" => o.cpu_latency_us = Some(arg_value(flag, v)?),
            "--port-min" => o.port_min = arg_value(flag, v)?,
            "--port-max" => o.port_max = arg_value(flag, v)?,
            "--rtpengine" => o.rtpengine = v.cloned().ok_or(BenchError::Usage(USAGE))?,
            "--backend" => {
                o.backend = match v.map(String::as_str) {
                    Some(b @ ("auto" | "io_uring" | "epoll")) => b.to_string(),
                    _ => return Err(BenchError::Usage(USAGE)),
                }
            }
            _ => return Err(BenchError::Usage(USAGE)),
        }
    }
    if o.streams == 0 || o.endpoints == 0 || o.size < 28 || o.size > 2048 || o.pps == 0 {
        return Err(BenchError::Usage(
            "--streams, --endpoints, --pps must be > 0 and --size within 28..=2048",
        ));
    }
    if o.cpu_latency_us.is_some_and(|v| v < 0) {
        return Err(BenchError::Usage("--cpu-latency-us must be >= 0"));
    }
    if !(10..=20_000).contains(&o.pacing_us) {
        return Err(BenchError::Usage("--pacing-us must be within 10..=20000"));
    }
    Ok(o)
}

/// The relay under test, in its own process.
struct RelayProcess {
    child: Child,
    control: Control,
}

enum Control {
    Serve {
        stdin: ChildStdin,
        stdout: BufReader<ChildStdout>,
    },
    Ng(ng::NgClient),
}

fn with_affinity(cmd: &mut Command, cpus: Option<&str>, rt: bool) -> Result<(), BenchError> {
    let set = match cpus {
        Some(list) => Some(sys::parse_cpus(list).ok_or(BenchError::Usage("bad CPU list"))?),
        None => None,
    };
    // SAFETY: the closure only makes the sched_setaffinity and sched_setscheduler system
    // calls, which are async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(set) = &set {
                sys::set_affinity(set)?;
            }
            if rt {
                // Without the privilege the relay runs at normal priority.
                let _ = sys::set_fifo(RT_PRIORITY);
            }
            Ok(())
        });
    }
    Ok(())
}

/// SCHED_FIFO priority of the relay and the generator's sender (unless `--no-rt`), so that
/// other work on a shared machine does not starve them during the few seconds of a run.
const RT_PRIORITY: i32 = 10;

impl RelayProcess {
    fn start(o: &Options) -> Result<RelayProcess, BenchError> {
        match o.target {
            Target::Dialbridge => {
                let exe = std::env::current_exe().map_err(BenchError::io("current_exe"))?;
                let mut cmd = Command::new(exe);
                cmd.args([
                    "relay-serve",
                    "--bind",
                    "127.0.0.1",
                    "--port-min",
                    &o.port_min.to_string(),
                    "--port-max",
                    &o.port_max.to_string(),
                    "--workers",
                    &o.workers.to_string(),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
                if o.backend != "auto" {
                    cmd.env("DIALBRIDGE_MEDIA_BACKEND", &o.backend);
                }
                with_affinity(&mut cmd, o.relay_cpus.as_deref(), o.rt)?;
                let mut child = cmd
                    .spawn()
                    .map_err(BenchError::io("starting relay-serve"))?;
                let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                    return Err(BenchError::Protocol("relay-serve without pipes"));
                };
                let mut p = RelayProcess {
                    child,
                    control: Control::Serve {
                        stdin,
                        stdout: BufReader::new(stdout),
                    },
                };
                if !p.serve_line(None)?.starts_with("ready") {
                    return Err(BenchError::Protocol("relay-serve did not start"));
                }
                Ok(p)
            }
            Target::Direct => Err(BenchError::Usage("--target direct runs no relay")),
            Target::Rtpengine => {
                let ng_port = UdpSocket::bind("127.0.0.1:0")
                    .and_then(|s| s.local_addr())
                    .map_err(BenchError::io("picking an ng port"))?
                    .port();
                let log = std::fs::File::create("/tmp/relay-bench-rtpengine.log")
                    .map_err(BenchError::io("rtpengine log file"))?;
                let mut cmd = Command::new(&o.rtpengine);
                cmd.args([
                    "--config-file=none".to_string(),
                    "--table=-1".to_string(),
                    "--interface=127.0.0.1".to_string(),
                    format!("--listen-ng=127.0.0.1:{ng_port}"),
                    format!("--port-min={}", o.port_min),
                    format!("--port-max={}", o.port_max),
                    format!("--num-threads={}", o.workers),
                    "--foreground".to_string(),
                    "--log-stderr".to_string(),
                    "--log-level=4".to_string(),
                    "--delete-delay=0".to_string(),
                    "--timeout=3600".to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
                with_affinity(&mut cmd, o.relay_cpus.as_deref(), o.rt)?;
                let mut child = cmd.spawn().map_err(BenchError::io("starting rtpengine"))?;
                let mut client = ng::NgClient::new(SocketAddr::from(([127, 0, 0, 1], ng_port)))?;
                let deadline = Instant::now() + Duration::from_secs(10);
                while !client.ping() {
                    if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(BenchError::Protocol(
                            "rtpengine did not answer ng ping (see /tmp/relay-bench-rtpengine.log)",
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(RelayProcess {
                    child,
                    control: Control::Ng(client),
                })
            }
        }
    }

    fn serve_line(&mut self, send: Option<&str>) -> Result<String, BenchError> {
        let Control::Serve { stdin, stdout } = &mut self.control else {
            return Err(BenchError::Protocol("not relay-serve"));
        };
        if let Some(s) = send {
            writeln!(stdin, "{s}").map_err(BenchError::io("relay-serve stdin"))?;
            stdin.flush().map_err(BenchError::io("relay-serve stdin"))?;
        }
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .map_err(BenchError::io("relay-serve stdout"))?;
        Ok(line.trim().to_string())
    }

    /// Opens one call between the two endpoints; returns the relay ports that side A and
    /// side B must send to.
    fn open_call(
        &mut self,
        c: usize,
        a: SocketAddr,
        b: SocketAddr,
    ) -> Result<(u16, u16), BenchError> {
        match &mut self.control {
            Control::Serve { .. } => {
                let reply = self.serve_line(Some(&format!("open {a} {b}")))?;
                let mut w = reply.split_whitespace();
                match (w.next(), w.next(), w.next()) {
                    (Some("ok"), Some(pa), Some(pb)) => Ok((
                        arg_value("relay port", Some(&pa.to_string()))?,
                        arg_value("relay port", Some(&pb.to_string()))?,
                    )),
                    _ => Err(BenchError::Protocol("relay-serve refused a session")),
                }
            }
            Control::Ng(client) => {
                let call_id = format!("bench-{c}");
                let from_tag = format!("a{c}");
                let to_tag = format!("b{c}");
                // The offer carries A's address; rtpengine answers with the port B sends to.
                let to_b = client.offer_answer(
                    "offer",
                    &call_id,
                    &from_tag,
                    None,
                    &ng::sdp(a.port(), c as u64),
                )?;
                let to_a = client.offer_answer(
                    "answer",
                    &call_id,
                    &from_tag,
                    Some(&to_tag),
                    &ng::sdp(b.port(), c as u64 + 1_000_000),
                )?;
                Ok((to_a, to_b))
            }
        }
    }

    fn stop(mut self) {
        if let Control::Serve { .. } = self.control {
            let _ = self.serve_line(Some("quit"));
        }
        // SAFETY: signals our own child by its pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench(o: Options) -> Result<(), BenchError> {
    if let Some(list) = o.gen_cpus.as_deref() {
        let set = sys::parse_cpus(list).ok_or(BenchError::Usage("bad --gen-cpus"))?;
        sys::set_affinity(&set).map_err(BenchError::io("sched_setaffinity"))?;
    }
    if o.rt {
        if let Err(e) = sys::set_fifo(RT_PRIORITY) {
            eprintln!("relay-bench: SCHED_FIFO refused ({e}); running at normal priority");
        }
    }
    sys::raise_nofile(1 << 20);
    // Held open for the whole run: the kernel drops the limit when the file is closed.
    let _cpu_latency = match o.cpu_latency_us {
        Some(us) => {
            Some(sys::hold_cpu_latency(us).map_err(BenchError::io("/dev/cpu_dma_latency"))?)
        }
        None => None,
    };
    // Endpoints: K sockets on side A (the agents), K on side B (the customers).
    let k = o.endpoints;
    let mut socks = Vec::with_capacity(2 * k);
    for _ in 0..2 * k {
        let s = UdpSocket::bind("127.0.0.1:0").map_err(BenchError::io("endpoint socket"))?;
        s.set_nonblocking(true)
            .map_err(BenchError::io("endpoint socket"))?;
        sys::grow_buffers(s.as_raw_fd(), 16 << 20);
        socks.push(s);
    }
    let addrs: Vec<SocketAddr> = socks
        .iter()
        .map(|s| s.local_addr())
        .collect::<Result<_, _>>()
        .map_err(BenchError::io("endpoint address"))?;

    let mut relay = match o.target {
        Target::Direct => None,
        _ => Some(RelayProcess::start(&o)?),
    };
    let pid = relay.as_ref().map(|r| r.child.id());
    let calls = o.streams.div_ceil(2);
    let mut streams = Vec::with_capacity(o.streams);
    let setup = Instant::now();
    for c in 0..calls {
        let (ia, ib) = (c % k, k + c % k);
        let opened = match relay.as_mut() {
            Some(r) => r.open_call(c, addrs[ia], addrs[ib]),
            None => Ok((addrs[ib].port(), addrs[ia].port())),
        };
        let (to_a, to_b) = match opened {
            Ok(p) => p,
            Err(e) => {
                if let Some(r) = relay {
                    r.stop();
                }
                return Err(e);
            }
        };
        streams.push(gen::Stream {
            socket: ia,
            dest: SocketAddr::from(([127, 0, 0, 1], to_a)),
        });
        if streams.len() < o.streams {
            streams.push(gen::Stream {
                socket: ib,
                dest: SocketAddr::from(([127, 0, 0, 1], to_b)),
            });
        }
    }
    eprintln!(
        "relay-bench: {} calls set up in {:.2}s on {:?} (pid {pid:?})",
        calls,
        setup.elapsed().as_secs_f64(),
        o.target
    );

    let start = sys::now_ns() + 100_000_000;
    let window_start = start + (o.warmup * 1e9) as u64;
    let window_end = window_start + (o.seconds * 1e9) as u64;
    let schedule = gen::Schedule {
        start,
        window_start,
        window_end,
        recv_end: window_end + 500_000_000,
        pps: o.pps,
        size: o.size,
        pacing_ns: o.pacing_us * 1000,
        busy_poll: !o.gen_sleep,
    };
    let me = std::process::id();
    let relay_set = o.relay_cpus.as_deref().and_then(sys::parse_cpus);
    let mut cpu = [(0.0f64, 0.0f64, 0.0f64); 2];
    let outcome = gen::run(socks, streams, schedule, |at_start| {
        let sample = (
            pid.map_or(0.0, |pid| sys::process_cpu_seconds(pid).unwrap_or(f64::NAN)),
            sys::process_cpu_seconds(me).unwrap_or(f64::NAN),
            relay_set
                .as_ref()
                .and_then(|s| sys::cpus_busy_seconds(s).ok())
                .unwrap_or(f64::NAN),
        );
        cpu[usize::from(!at_start)] = sample;
    });
    let relay_stats = match relay.as_mut() {
        Some(r) if matches!(r.control, Control::Serve { .. }) => r.serve_line(Some("stats")).ok(),
        _ => None,
    };
    if let Some(r) = relay {
        r.stop();
    }

    let window = (window_end - window_start) as f64 / 1e9;
    let cpu_s = cpu[1].0 - cpu[0].0;
    let gen_cpu_s = cpu[1].1 - cpu[0].1;
    let relay_core_busy_s = cpu[1].2 - cpu[0].2;
    let received = outcome.received_window;
    let sent = outcome.sent_window;
    let loss = if sent > 0 {
        100.0 * (sent.saturating_sub(received)) as f64 / sent as f64
    } else {
        0.0
    };
    let pps = received as f64 / window;
    let per_cpu = if cpu_s > 0.0 {
        received as f64 / cpu_s
    } else {
        f64::INFINITY
    };
    let target = match o.target {
        Target::Dialbridge => "dialbridge",
        Target::Rtpengine => "rtpengine",
        Target::Direct => "direct",
    };
    println!(
        "relay-bench: detail offered_pps={:.0} sent={sent} received={received} sent_total={} received_total={} send_failed={} \
         relay_cpu_util={:.0}% relay_core_busy_s={relay_core_busy_s:.2} gen_cpu_s={gen_cpu_s:.2} rt={} workers={} relay_cpus={} gen_cpus={} \
         pacing_us={} cpu_latency_us={} p90_us={} p999_us={} max_us={} read_p50_us={} read_p99_us={} unstamped={}{}",
        o.streams as f64 * f64::from(o.pps),
        outcome.sent_total,
        outcome.received_total,
        outcome.send_failed,
        100.0 * cpu_s / window,
        o.rt,
        o.workers,
        o.relay_cpus.as_deref().unwrap_or("any"),
        o.gen_cpus.as_deref().unwrap_or("any"),
        o.pacing_us,
        o.cpu_latency_us
            .map_or_else(|| "off".to_string(), |v| v.to_string()),
        outcome.latency.quantile_us(0.90),
        outcome.latency.quantile_us(0.999),
        outcome.latency.quantile_us(1.0),
        outcome.latency_read.quantile_us(0.50),
        outcome.latency_read.quantile_us(0.99),
        outcome.unstamped,
        relay_stats.map(|s| format!(" relay_{s}")).unwrap_or_default(),
    );
    println!(
        "relay-bench: target={target} streams={} pps={pps:.0} cpu_s={cpu_s:.2} \
         pps_per_cpu_s={per_cpu:.0} loss={loss:.3}% p50_us={} p99_us={}",
        o.streams,
        outcome.latency.quantile_us(0.50),
        outcome.latency.quantile_us(0.99),
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("relay-serve") {
        serve::run(&args[1..])
    } else {
        parse(&args).and_then(bench)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
