//! rtpengine's ng control protocol: a cookie, a space, then a bencoded dictionary, over UDP.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use crate::BenchError;

/// A bencode value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bencode {
    Bytes(Vec<u8>),
    Int(i64),
    List(Vec<Bencode>),
    Dict(BTreeMap<Vec<u8>, Bencode>),
}

impl Bencode {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Bencode::Bytes(b) => {
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(b);
            }
            Bencode::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Bencode::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode(out);
                }
                out.push(b'e');
            }
            Bencode::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    Bencode::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Decodes one value from the start of `input`; returns it and the rest.
    pub fn decode(input: &[u8]) -> Option<(Bencode, &[u8])> {
        match *input.first()? {
            b'i' => {
                let end = input.iter().position(|&c| c == b'e')?;
                let v = std::str::from_utf8(&input[1..end]).ok()?.parse().ok()?;
                Some((Bencode::Int(v), &input[end + 1..]))
            }
            b'l' => {
                let mut rest = &input[1..];
                let mut items = Vec::new();
                while *rest.first()? != b'e' {
                    let (v, r) = Bencode::decode(rest)?;
                    items.push(v);
                    rest = r;
                }
                Some((Bencode::List(items), &rest[1..]))
            }
            b'd' => {
                let mut rest = &input[1..];
                let mut map = BTreeMap::new();
                while *rest.first()? != b'e' {
                    let (Bencode::Bytes(k), r) = Bencode::decode(rest)? else {
                        return None;
                    };
                    let (v, r) = Bencode::decode(r)?;
                    map.insert(k, v);
                    rest = r;
                }
                Some((Bencode::Dict(map), &rest[1..]))
            }
            b'0'..=b'9' => {
                let colon = input.iter().position(|&c| c == b':')?;
                let len: usize = std::str::from_utf8(&input[..colon]).ok()?.parse().ok()?;
                let body = input.get(colon + 1..colon + 1 + len)?;
                Some((Bencode::Bytes(body.to_vec()), &input[colon + 1 + len..]))
            }
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Bencode> {
        match self {
            Bencode::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Bencode::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// A dictionary of string values.
pub fn dict(pairs: &[(&str, &str)]) -> Bencode {
    Bencode::Dict(
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), Bencode::Bytes(v.as_bytes().to_vec())))
            .collect(),
    )
}

/// A client of one rtpengine's ng port.
pub struct NgClient {
    sock: UdpSocket,
    server: SocketAddr,
    cookie: u64,
}

impl NgClient {
    pub fn new(server: SocketAddr) -> Result<Self, BenchError> {
        let sock = UdpSocket::bind("127.0.0.1:0").map_err(BenchError::io("ng socket"))?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(BenchError::io("ng socket"))?;
        Ok(NgClient {
            sock,
            server,
            cookie: 0,
        })
    }

    /// Sends a command and waits for its reply (three tries).
    pub fn call(&mut self, msg: &Bencode) -> Result<Bencode, BenchError> {
        self.cookie += 1;
        let cookie = format!("b{}", self.cookie);
        let mut wire = format!("{cookie} ").into_bytes();
        msg.encode(&mut wire);
        let mut buf = vec![0u8; 65536];
        for _ in 0..3 {
            self.sock
                .send_to(&wire, self.server)
                .map_err(BenchError::io("ng send"))?;
            while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                let reply = &buf[..n];
                let Some(body) = reply.strip_prefix(format!("{cookie} ").as_bytes()) else {
                    continue; // a late reply to an earlier try
                };
                let (v, _) = Bencode::decode(body).ok_or(BenchError::Protocol("bad bencode"))?;
                return Ok(v);
            }
        }
        Err(BenchError::Protocol("no reply from rtpengine"))
    }

    pub fn ping(&mut self) -> bool {
        self.call(&dict(&[("command", "ping")]))
            .ok()
            .and_then(|r| {
                r.get("result")
                    .and_then(Bencode::as_str)
                    .map(|s| s == "pong")
            })
            .unwrap_or(false)
    }

    /// `offer` or `answer` with `sdp`; returns the port of the rewritten SDP's `m=audio`.
    pub fn offer_answer(
        &mut self,
        command: &str,
        call_id: &str,
        from_tag: &str,
        to_tag: Option<&str>,
        sdp: &str,
    ) -> Result<u16, BenchError> {
        let mut pairs = vec![
            ("command", command),
            ("call-id", call_id),
            ("from-tag", from_tag),
            ("sdp", sdp),
        ];
        if let Some(t) = to_tag {
            pairs.push(("to-tag", t));
        }
        let reply = self.call(&dict(&pairs))?;
        if reply.get("result").and_then(Bencode::as_str) != Some("ok") {
            return Err(BenchError::Protocol("rtpengine refused offer/answer"));
        }
        let sdp = reply
            .get("sdp")
            .and_then(Bencode::as_str)
            .ok_or(BenchError::Protocol("no SDP in rtpengine reply"))?;
        sdp.lines()
            .find_map(|l| l.strip_prefix("m=audio "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .ok_or(BenchError::Protocol("no m=audio port in rtpengine SDP"))
    }
}

/// A minimal SDP offer/answer for one G.711 stream at `port` on 127.0.0.1.
pub fn sdp(port: u16, session: u64) -> String {
    format!(
        "v=0\r\no=- {session} 1 IN IP4 127.0.0.1\r\ns=bench\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bencode_round_trips() {
        let v = Bencode::Dict(
            [
                (b"a".to_vec(), Bencode::Int(-3)),
                (
                    b"list".to_vec(),
                    Bencode::List(vec![Bencode::Bytes(b"x y".to_vec())]),
                ),
            ]
            .into_iter()
            .collect(),
        );
        let mut out = Vec::new();
        v.encode(&mut out);
        assert_eq!(out, b"d1:ai-3e4:listl3:x yee");
        assert_eq!(Bencode::decode(&out), Some((v, &b""[..])));
        assert_eq!(
            Bencode::decode(b"d6:result4:ponge")
                .unwrap()
                .0
                .get("result"),
            Some(&Bencode::Bytes(b"pong".to_vec()))
        );
        assert_eq!(Bencode::decode(b"5:abc"), None);
    }
}
