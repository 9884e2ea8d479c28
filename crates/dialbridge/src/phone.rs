//! `dialbridge phone`: a SIP phone for tests and interop checks, built on the `ua` crate.
//!
//! ```text
//! dialbridge phone --register alice-desk:secret@127.0.0.1:5060 --answer --tone 440
//! dialbridge phone --call sip:+14155550100@127.0.0.1:5080 --duration 5 --calls 1
//! ```
//!
//! It prints one line per event (`phone: registered …`, `phone: incoming …`,
//! `phone: answered …`, `phone: ended … sent N packets … received M packets …`) on stdout
//! and runs until Ctrl-C, `--for` seconds, or `--calls` calls have ended.

use clap::Args;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use ua::{AnswerMode, MediaMode, Registration, UaConfig, UaEvent, UserAgent};

#[derive(Args, Debug)]
pub struct PhoneArgs {
    /// Register as USER:PASSWORD@HOST:PORT (digest), refreshing before expiry.
    #[arg(long, value_name = "USER:PASSWORD@HOST:PORT")]
    register: Option<String>,
    /// The registrar's domain (the AOR is sip:USER@DOMAIN).
    #[arg(long, default_value = "dialbridge.test")]
    domain: String,
    /// Seconds of registration asked for.
    #[arg(long, default_value_t = 300)]
    expires: u32,
    /// Where the phone's SIP transport listens.
    #[arg(long, default_value = "udp:127.0.0.1:0")]
    listen: String,
    /// Answer incoming calls (after --ring-ms); without it they ring until cancelled.
    #[arg(long)]
    answer: bool,
    /// How long an incoming call rings before --answer picks it up.
    #[arg(long, default_value_t = 500)]
    ring_ms: u64,
    /// Refuse incoming calls with this status (e.g. 486).
    #[arg(long, value_name = "STATUS", conflicts_with = "answer")]
    reject: Option<u16>,
    /// Send a sine tone of this many Hz (the default: 440).
    #[arg(long, value_name = "HZ", conflicts_with_all = ["wav", "echo", "silent"])]
    tone: Option<f64>,
    /// Send this WAV file (8 kHz mono 16-bit PCM), looped.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["echo", "silent"])]
    wav: Option<PathBuf>,
    /// Send back every RTP packet received.
    #[arg(long, conflicts_with = "silent")]
    echo: bool,
    /// Send nothing; only count what arrives.
    #[arg(long)]
    silent: bool,
    /// Write what each call received as DIR/<call-id>.wav.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Place a call to this SIP URI.
    #[arg(long, value_name = "URI")]
    call: Option<String>,
    /// Send the call to this HOST:PORT instead of where the URI points (outbound proxy).
    #[arg(long, value_name = "HOST:PORT")]
    via: Option<String>,
    /// Hang up calls after this many seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Exit after this many calls have ended.
    #[arg(long, value_name = "N")]
    calls: Option<u32>,
    /// Send these DTMF digits as RFC 4733 telephone-events in each call (when the peer
    /// took telephone-event), starting --dtmf-after-ms after the media starts.
    #[arg(long, value_name = "DIGITS")]
    dtmf: Option<String>,
    /// When the --dtmf digits start, after the media starts.
    #[arg(long, default_value_t = 1000)]
    dtmf_after_ms: u64,
    /// Exit after this many seconds.
    #[arg(long = "for", value_name = "SECS")]
    run_for: Option<u64>,
}

/// USER:PASSWORD@HOST:PORT.
fn parse_register(s: &str) -> Result<(String, String, SocketAddr), String> {
    let (cred, host) = s
        .rsplit_once('@')
        .ok_or_else(|| format!("--register {s}: expected USER:PASSWORD@HOST:PORT"))?;
    let (user, pass) = cred
        .split_once(':')
        .ok_or_else(|| format!("--register {s}: expected USER:PASSWORD before @"))?;
    let addr = resolve(host).map_err(|e| format!("--register {s}: {e}"))?;
    Ok((user.to_string(), pass.to_string(), addr))
}

fn resolve(hostport: &str) -> Result<SocketAddr, String> {
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))
}

pub fn run(args: PhoneArgs) -> ExitCode {
    let Some(rt) = crate::runtime(crate::config::default_workers()) else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(phone(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phone: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn phone(args: PhoneArgs) -> Result<(), String> {
    let listen = args.listen.parse().map_err(|e| format!("--listen {e}"))?;
    let media = if let Some(path) = &args.wav {
        ua::agent::load_wav(path).map_err(|e| e.to_string())?
    } else if args.echo {
        MediaMode::Echo
    } else if args.silent {
        MediaMode::Count
    } else {
        MediaMode::Tone(args.tone.unwrap_or(440.0))
    };
    let answer = match (args.reject, args.answer) {
        (Some(code), _) => AnswerMode::Reject(code),
        (None, true) => AnswerMode::Auto {
            after: Duration::from_millis(args.ring_ms),
        },
        (None, false) => AnswerMode::Never,
    };
    if let Some(dir) = &args.record {
        std::fs::create_dir_all(dir).map_err(|e| format!("--record {}: {e}", dir.display()))?;
    }
    let registration = args.register.as_deref().map(parse_register).transpose()?;
    let via = args.via.as_deref().map(resolve).transpose()?;
    let (mut ua, mut events) = UserAgent::start(UaConfig {
        listen,
        domain: args.domain.clone(),
        answer,
        media,
        record_dir: args.record.clone(),
        dtmf: args.dtmf.clone().map(|digits| ua::rtp::Dtmf {
            after: Duration::from_millis(args.dtmf_after_ms),
            digits,
        }),
        max_call: Duration::from_secs(args.duration.unwrap_or(3600)),
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    if let Some(a) = ua.local_addr() {
        println!("phone: SIP on udp:{a}");
    }
    let mut registrar = None;
    if let Some((user, pass, addr)) = registration {
        registrar = Some(addr);
        ua.register(Registration {
            registrar: addr,
            transport: sip_core::transport::Transport::Udp,
            username: user,
            password: pass,
            domain: args.domain.clone(),
            expires: args.expires,
        })
        .await
        .map_err(|e| format!("registration: {e}"))?;
    }
    if let Some(target) = &args.call {
        let call = ua
            .call(target, via.or(registrar))
            .await
            .map_err(|e| e.to_string())?;
        println!("phone: calling {target} (call {})", call.id);
    }
    let limit = tokio::time::sleep(Duration::from_secs(args.run_for.unwrap_or(u64::MAX / 4)));
    tokio::pin!(limit);
    let mut ended = 0u32;
    loop {
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    UaEvent::Registered { aor, expires } => println!("phone: registered {aor} for {expires} s"),
                    UaEvent::RegistrationFailed { aor, status } => println!("phone: registration of {aor} failed ({})", status.map(|s| s.to_string()).unwrap_or_else(|| "no answer".into())),
                    UaEvent::Unregistered { aor } => println!("phone: unregistered {aor}"),
                    UaEvent::Incoming { call, from } => println!("phone: incoming call {call} from {from}"),
                    UaEvent::Ringing { call, status } => println!("phone: ringing {call} ({status})"),
                    UaEvent::Answered { call, codec, remote_rtp } => println!("phone: answered {call} ({}, RTP to {})", codec.name(), remote_rtp.map(|a| a.to_string()).unwrap_or_else(|| "-".into())),
                    UaEvent::Ended { call, reason, stats } => {
                        println!("phone: ended {call} ({reason}): {stats}");
                        ended += 1;
                        if args.calls.is_some_and(|n| ended >= n) {
                            break;
                        }
                    }
                }
            }
            _ = &mut limit => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    if args.register.is_some() {
        match tokio::time::timeout(Duration::from_secs(5), ua.unregister()).await {
            Ok(Ok(())) => println!("phone: unregistered"),
            Ok(Err(e)) => println!("phone: unregister failed: {e}"),
            Err(_) => println!("phone: unregister timed out"),
        }
    }
    Ok(())
}
