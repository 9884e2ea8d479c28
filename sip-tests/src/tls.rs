//! TLS in black-box tests: certificates made for the test, and a TLS front for peers that
//! speak only TCP.
//!
//! - [`TestCa`]: a certificate authority made with rcgen; [`TestCa::issue`] writes a leaf
//!   certificate and its key as PEM files for the names given (DNS names and IP addresses).
//! - [`TlsFront`]: `socat` (OpenSSL) terminating TLS on a loopback port and forwarding each
//!   connection to a TCP peer, e.g. a SIPp carrier (Debian's SIPp is built without TLS).
//!   The TLS side is OpenSSL, independent of the rustls under test.
//! - [`peer_certificate_subject`]: `openssl s_client` against a server, to see which
//!   certificate it presents.

use crate::{free_port, TempDir};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A certificate authority and the directory its files go to.
pub struct TestCa {
    pub dir: TempDir,
    /// The CA certificate (PEM): what `[tls] ca` or a peer's CA file names.
    pub ca_pem: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `name` (its common name).
    pub fn new(name: &str) -> TestCa {
        let dir = TempDir::new("pki");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca_pem = dir.path().join(format!("{name}-ca.pem"));
        std::fs::write(&ca_pem, cert.pem()).expect("write CA");
        TestCa {
            dir,
            ca_pem,
            cert,
            key,
        }
    }

    /// A leaf certificate for `names` (the first is also its common name), written as
    /// `<file>.pem` and `<file>.key`.
    pub fn issue(&self, file: &str, names: &[&str]) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf certificate");
        let out = Issued {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
        };
        std::fs::write(&out.cert, cert.pem()).expect("write cert");
        std::fs::write(&out.key, key.serialize_pem()).expect("write key");
        out
    }
}

/// `socat` terminating TLS on `addr` and forwarding each connection to a TCP peer; killed
/// on drop.
pub struct TlsFront {
    child: Child,
    pub addr: SocketAddr,
}

impl TlsFront {
    /// TLS on a free loopback port with `identity`, each connection forwarded to `to`.
    pub fn start(identity: &Issued, to: SocketAddr) -> TlsFront {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                identity.cert.display(),
                identity.key.display()
            ))
            .arg(format!("TCP:{to},nodelay"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat is installed (Debian package socat)");
        wait_listening(addr);
        TlsFront { child, addr }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until something listens on `addr`, without connecting to it (a
/// connection would start a TLS handshake that fails): reads the kernel's socket table.
pub fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let want = format!(":{:04X}", addr.port());
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        // Columns: sl local_address rem_address st ...; st 0A = LISTEN.
        let listening = table.lines().skip(1).any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && cols[1].ends_with(&want) && cols[3] == "0A"
        });
        if listening {
            return;
        }
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The subject of the certificate the TLS server at `addr` presents, as `openssl s_client`
/// prints it, and whether it verified against `ca`.
pub fn peer_certificate_subject(addr: SocketAddr, ca: &Path) -> (String, bool) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-CAfile"])
        .arg(ca)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let subject = text
        .lines()
        .find_map(|l| l.strip_prefix("subject="))
        .unwrap_or("")
        .trim()
        .to_string();
    (subject, text.contains("Verify return code: 0 (ok)"))
}
