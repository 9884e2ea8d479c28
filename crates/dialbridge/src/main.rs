//! dialbridge: the binary — command line, configuration, store wiring.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod budget;
mod config;
mod demo;
mod development;
mod hep;
mod logging;
mod node;
mod phone;
mod serve;
mod sip_trace;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "dialbridge",
    version,
    about = "Click-to-call SIP B2BUA with its own RTP relay"
)]
struct Cli {
    /// Log format (the level comes from RUST_LOG, default "info").
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (SIP + media + REST); Ctrl-C / SIGTERM drain and stop.
    Serve {
        /// Configuration file (TOML); embedded defaults without it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Log every SIP message received and sent, whole (log target `sip_trace`); the
        /// same as `[log] sip_trace = true`.
        #[arg(long)]
        sip_trace: bool,
    },
    /// A self-contained click-to-call on loopback: server, phones, carrier, REST, callbacks.
    Demo,
    /// A SIP phone for tests: register, auto-answer, call, play a tone or a WAV file.
    Phone(Box<phone::PhoneArgs>),
    /// Validate a configuration file, print what is wrong, exit non-zero on error.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
}

/// `RUST_LOG` wins; without it `default` (the demo and the phone print their own story,
/// so they log warnings only). With the SIP trace on, its target logs at `info` whatever the
/// level (unless `RUST_LOG` names `sip_trace` itself).
fn init_logging(format: LogFormat, default: &str, sip_trace: bool) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let named = std::env::var("RUST_LOG").is_ok_and(|v| v.contains(sip_trace::TARGET));
    if sip_trace && !named {
        if let Ok(d) = format!("{}=info", sip_trace::TARGET).parse() {
            filter = filter.add_directive(d);
        }
    }
    logging::set_json(matches!(format, LogFormat::Json));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(logging::use_colour())
        .log_internal_errors(false)
        .with_writer(logging::LossyStderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let code = run(Cli::parse());
    logging::flush();
    code
}

fn run(cli: Cli) -> ExitCode {
    let default_level = match cli.command {
        Command::Serve { .. } | Command::CheckConfig { .. } => "info",
        _ => "warn",
    };
    match cli.command {
        Command::CheckConfig { file } => {
            init_logging(cli.log_format, default_level, false);
            check_config(&file)
        }
        Command::Demo => {
            init_logging(cli.log_format, default_level, false);
            demo::run()
        }
        Command::Phone(args) => {
            init_logging(cli.log_format, default_level, false);
            phone::run(*args)
        }
        Command::Serve { config, sip_trace } => {
            // The configuration first: it says whether the log carries the SIP trace.
            let source = config.as_ref().map(|p| p.display().to_string());
            let mut cfg = match config {
                Some(path) => match config::Config::load(&path) {
                    Ok(c) => c,
                    Err(errs) => {
                        for e in errs {
                            eprintln!("error: {e}");
                        }
                        return ExitCode::from(2);
                    }
                },
                None => config::Config {
                    embedded_defaults: true,
                    ..Default::default()
                },
            };
            cfg.log.sip_trace |= sip_trace;
            init_logging(cli.log_format, default_level, cfg.log.sip_trace);
            let valid = match cfg.validate() {
                Ok(v) => v,
                Err(errs) => {
                    let file = source.as_deref().unwrap_or("(defaults)");
                    for e in errs {
                        eprintln!("error: {file}: {e}");
                    }
                    return ExitCode::from(2);
                }
            };
            for w in cfg.warnings() {
                let file = source.as_deref().unwrap_or("(defaults)");
                eprintln!("warning: {file}: {w}");
            }
            let Some(rt) = runtime(cfg.runtime.worker_threads()) else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(serve::serve(cfg, valid)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    let cfg = match config::Config::load(file) {
        Ok(c) => c,
        Err(errs) => {
            for e in errs {
                eprintln!("error: {e}");
            }
            return ExitCode::from(2);
        }
    };
    for w in cfg.warnings() {
        eprintln!("warning: {}: {w}", file.display());
    }
    match cfg.validate() {
        Ok(valid) => {
            // The budget serve would plan: the soft limit is raised to the hard one.
            let nofile = budget::nofile().map(|(_, hard)| hard);
            match nofile.map(|n| budget::Budget::plan(n, &cfg, valid.media_ports)) {
                Ok(Ok(b)) => println!("{}: {b}", file.display()),
                Ok(Err(e)) => {
                    eprintln!("error: {}: {e}", file.display());
                    return ExitCode::from(2);
                }
                Err(e) => eprintln!("warning: cannot read the nofile limit: {e}"),
            }
            println!("{}: OK", file.display());
            ExitCode::SUCCESS
        }
        Err(errs) => {
            for e in errs {
                eprintln!("error: {}: {e}", file.display());
            }
            ExitCode::from(2)
        }
    }
}

/// The multi-threaded tokio runtime every command runs on, with `workers` worker threads
/// (`serve`: `[runtime] workers`; the other commands: [`config::default_workers`]); `None`
/// (said on stderr) when it cannot start.
fn runtime(workers: usize) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            None
        }
    }
}
