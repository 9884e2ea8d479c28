//! A minimal HTTP/1.1 client and a callback receiver for black-box tests (std only: the
//! tests talk to the real server the way any HTTP client would).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A response: status, headers (lower-cased names), body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The body as it came (for binary bodies: a recording).
    pub bytes: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A message read off the wire: start line, headers, body.
type RawMessage = (String, Vec<(String, String)>, Vec<u8>);

fn read_message(reader: &mut BufReader<TcpStream>) -> std::io::Result<RawMessage> {
    let mut start = String::new();
    // A connection closed before its first line (a client killed while connecting) carried
    // no message.
    if reader.read_line(&mut start)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        }
        None => {
            let chunked = headers
                .iter()
                .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
            if chunked {
                loop {
                    let mut size = String::new();
                    reader.read_line(&mut size)?;
                    let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                    if n == 0 {
                        let mut end = String::new();
                        let _ = reader.read_line(&mut end);
                        break;
                    }
                    let mut chunk = vec![0; n + 2];
                    reader.read_exact(&mut chunk)?;
                    body.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
    Ok((start, headers, body))
}

/// Sends one request and reads the response (10 s limit).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpResponse {
    try_request(addr, method, path, headers, body).expect("HTTP request to the API")
}

/// [`request`], with connection and read errors returned instead of panicking.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let req = encode_request(addr, method, path, headers, body, true);
    s.write_all(req.as_bytes())?;
    let mut reader = BufReader::new(s);
    read_response(&mut reader)
}

/// A request's bytes; `close` asks the server to close the connection after its answer.
fn encode_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    close: bool,
) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if close {
        req.push_str("Connection: close\r\n");
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(b) = body {
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
    } else {
        req.push_str("\r\n");
    }
    req
}

fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<HttpResponse> {
    let (start, headers, body) = read_message(reader)?;
    let status = start
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        bytes: body,
    })
}

/// A client that keeps its connection open from one request to the next (HTTP/1.1
/// persistent connections), as an application's HTTP client does; it connects again when the
/// server closed the connection.
#[derive(Debug)]
pub struct KeepAlive {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive { addr, conn: None }
    }

    /// Sends one request and reads its response (10 s limit). A request on a reused
    /// connection that the server had closed meanwhile is sent once more on a new one.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> std::io::Result<HttpResponse> {
        let req = encode_request(self.addr, method, path, headers, body, false);
        let reused = self.conn.is_some();
        match self.exchange(&req) {
            Err(_) if reused => self.exchange(&req),
            r => r,
        }
    }

    fn exchange(&mut self, req: &str) -> std::io::Result<HttpResponse> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
                s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                BufReader::new(s)
            }
        };
        conn.get_mut().write_all(req.as_bytes())?;
        let resp = read_response(&mut conn)?;
        if !resp
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            self.conn = Some(conn);
        }
        Ok(resp)
    }
}

/// One callback the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// What the receiver answered.
    pub answered: u16,
    /// When the receiver had read it.
    pub at: Instant,
}

impl Delivery {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP server on 127.0.0.1:0 that records every POST; it answers 500 to the first
/// `fail_first` requests, then 200.
#[derive(Clone)]
pub struct CallbackReceiver {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Delivery>>>,
}

impl CallbackReceiver {
    pub fn start(fail_first: usize) -> CallbackReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let log: Arc<Mutex<Vec<Delivery>>> = Arc::new(Mutex::new(Vec::new()));
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = Arc::clone(&log2);
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let Ok(w) = stream.try_clone() else { return };
                    let mut reader = BufReader::new(stream);
                    let Ok((start, headers, body)) = read_message(&mut reader) else {
                        return;
                    };
                    let path = start.split_whitespace().nth(1).unwrap_or("").to_string();
                    let answered = {
                        let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                        let status = if l.len() < fail_first { 500 } else { 200 };
                        l.push(Delivery {
                            path,
                            headers,
                            body: String::from_utf8_lossy(&body).into_owned(),
                            answered: status,
                            at: Instant::now(),
                        });
                        status
                    };
                    let mut w = w;
                    let _ = write!(
                        w,
                        "HTTP/1.1 {answered} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                });
            }
        });
        CallbackReceiver { addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The accepted (200) deliveries' JSON bodies, in arrival order.
    pub fn accepted(&self) -> Vec<serde_json::Value> {
        self.deliveries()
            .into_iter()
            .filter(|d| d.answered == 200)
            .map(|d| d.json())
            .collect()
    }

    /// Waits (bounded) until an accepted delivery has `status` == `want`.
    pub fn wait_status(&self, want: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.accepted().iter().any(|b| b["status"] == want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}
