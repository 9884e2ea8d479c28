//! Kamailio as the edge in front of dialbridge nodes, run from `deploy/kamailio/kamailio.cfg`
//! (Debian's `kamailio` package) on a loopback port, with the nodes in a dispatcher list of
//! its own. Stopped (SIGTERM, which ends its worker processes too) when dropped.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, workspace_root, TempDir};

/// A running Kamailio edge.
pub struct Edge {
    child: Child,
    pub addr: SocketAddr,
    pub dir: TempDir,
}

impl Edge {
    /// Starts the edge on a free loopback port (UDP and TCP) with `nodes` (their SIP UDP
    /// addresses) in dispatcher set 1, and waits until it answers OPTIONS.
    pub fn start(nodes: &[SocketAddr]) -> Edge {
        let dir = TempDir::new("edge");
        let list = dir.path().join("dispatcher.list");
        let text: String = nodes.iter().map(|n| format!("1 sip:{n}\n")).collect();
        std::fs::write(&list, text).expect("write the dispatcher list");
        let cfg = workspace_root().join("deploy/kamailio/kamailio.cfg");
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::File::create(dir.path().join("kamailio.log")).expect("log file");
        let child = Command::new("kamailio")
            .arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E", "-m", "64", "-M", "8", "-Y"])
            .arg(dir.path())
            .arg("-w")
            .arg(dir.path())
            .args(["-l", &format!("udp:{addr}"), "-l", &format!("tcp:{addr}")])
            .arg("-A")
            .arg(format!("DISPATCHER_LIST=\"{}\"", list.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("kamailio is installed (Debian package kamailio)");
        let mut edge = Edge { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !edge.answers() {
            if Instant::now() > deadline || !matches!(edge.child.try_wait(), Ok(None)) {
                panic!("kamailio did not start:\n{}", edge.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        edge
    }

    /// Whether the edge answers an OPTIONS to itself with 200.
    pub fn answers(&self) -> bool {
        let Ok(s) = UdpSocket::bind("127.0.0.1:0") else {
            return false;
        };
        let Ok(local) = s.local_addr() else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
        let msg = format!(
            "OPTIONS sip:{a} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-probe-{p};rport\r\n\
             From: <sip:probe@127.0.0.1>;tag=probe\r\nTo: <sip:{a}>\r\nCall-ID: probe-{p}@{local}\r\n\
             CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            a = self.addr,
            p = local.port()
        );
        if s.send_to(msg.as_bytes(), self.addr).is_err() {
            return false;
        }
        let mut buf = [0u8; 4096];
        match s.recv(&mut buf) {
            Ok(n) => buf[..n].starts_with(b"SIP/2.0 200"),
            Err(_) => false,
        }
    }

    /// Kamailio's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kamailio.log")).unwrap_or_default()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        crate::terminate(&mut self.child, Duration::from_secs(5));
    }
}
