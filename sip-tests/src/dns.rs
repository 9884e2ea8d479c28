//! dnsmasq (Debian `dnsmasq-base`) on loopback as the DNS server of trunk tests: NAPTR, SRV
//! and A records given on its command line, nothing else.

use crate::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// dnsmasq in the foreground on a loopback port, serving only the records given; killed on
/// drop.
pub struct Dnsmasq {
    child: Child,
    pub port: u16,
}

impl Dnsmasq {
    /// `records`: dnsmasq options such as `--srv-host=...`, `--naptr-record=...`,
    /// `--host-record=...`.
    pub fn start(records: &[String]) -> Dnsmasq {
        let port = free_port();
        // Debian puts it in /usr/sbin, which a non-root PATH may lack.
        let bin = if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
            "/usr/sbin/dnsmasq"
        } else {
            "dnsmasq"
        };
        let child = Command::new(bin)
            .args([
                "-k",
                &format!("--port={port}"),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                "--pid-file=",
                "--local-ttl=1",
                "--log-facility=-",
            ])
            .args(records)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq is installed (Debian package dnsmasq-base)");
        // Ready when it answers on its TCP port.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "dnsmasq did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Dnsmasq { child, port }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
