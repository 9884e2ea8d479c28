//! `relay-bench relay-serve`: the dialbridge relay in a process of its own, driven by lines
//! on stdin (`open <peer A> <peer B>` -> `ok <port A> <port B>`, `stats`, `quit`).

use std::io::{BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use media::{LatchMode, LegId, MediaSession, Relay, RelayConfig};

use crate::{arg_value, BenchError};

pub fn run(args: &[String]) -> Result<(), BenchError> {
    let mut cfg = RelayConfig {
        port_min: 30000,
        port_max: 59999,
        workers: 1,
        timeout: Duration::from_secs(3600),
        latch: LatchMode::default(),
        ..RelayConfig::default()
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--bind" => {
                let ip: IpAddr = arg_value(flag, it.next())?;
                cfg.bind = ip;
                cfg.advertise = ip;
            }
            "--port-min" => cfg.port_min = arg_value(flag, it.next())?,
            "--port-max" => cfg.port_max = arg_value(flag, it.next())?,
            "--workers" => cfg.workers = arg_value(flag, it.next())?,
            _ => {
                return Err(BenchError::Usage(
                    "relay-serve [--bind IP] [--port-min P] [--port-max P] [--workers N]",
                ))
            }
        }
    }
    crate::sys::raise_nofile(1 << 20);
    let relay = Relay::start(cfg)?;
    let mut sessions: Vec<MediaSession> = Vec::new();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready backend={:?}", relay.backend()).map_err(BenchError::io("stdout"))?;
    for line in stdin.lock().lines() {
        let line = line.map_err(BenchError::io("stdin"))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["open", a, b] => {
                let a: SocketAddr = arg_value("open", Some(&a.to_string()))?;
                let b: SocketAddr = arg_value("open", Some(&b.to_string()))?;
                match relay.allocate_session() {
                    Ok(s) => {
                        s.set_peer(LegId::A, a, None, false)?;
                        s.set_peer(LegId::B, b, None, false)?;
                        s.start()?;
                        let r = format!(
                            "ok {} {}",
                            s.leg(LegId::A).local_rtp_port(),
                            s.leg(LegId::B).local_rtp_port()
                        );
                        sessions.push(s);
                        r
                    }
                    Err(e) => format!("err {e}"),
                }
            }
            ["stats"] => {
                let (mut rx, mut tx, mut dropped) = (0u64, 0u64, 0u64);
                for s in &sessions {
                    let st = s.stats();
                    rx += st.a.rx_packets + st.b.rx_packets;
                    tx += st.a.tx_packets + st.b.tx_packets;
                    dropped += st.a.not_forwarded
                        + st.b.not_forwarded
                        + st.a.hijack_dropped
                        + st.b.hijack_dropped;
                }
                format!(
                    "stats backend={:?} rx={rx} tx={tx} not_forwarded={dropped}",
                    relay.backend()
                )
            }
            ["quit"] => break,
            _ => "err unknown command".to_string(),
        };
        writeln!(out, "{reply}").map_err(BenchError::io("stdout"))?;
    }
    drop(sessions);
    relay.shutdown();
    Ok(())
}
