//! RFC 4475 torture messages, read from `../shared/data/rfc4475/` (or `$RFC4475_DIR`), and the
//! RFC 5118 IPv6 examples: what the parser and the request checks make of each.

use bytes::Bytes;
use sip_core::message::{parse_message, HeaderAccess, SipMessage};
use std::path::PathBuf;

/// What the message layer must do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A request that parses and passes `Request::check`.
    Request,
    /// A response that parses and whose core headers are well formed.
    Response,
    /// A request refused with this status (by the parser or by `check`).
    Refuse(u16),
    /// A response that must be dropped.
    Drop,
    /// Either accepted or refused with 400 (RFC 4475 leaves the choice).
    RequestOr400,
    /// No expectation beyond not crashing (the unreferenced `test.dat`).
    Any,
}

fn expectation(file: &str) -> Option<Expect> {
    use Expect::*;
    Some(match file {
        "wsinv.dat" | "intmeth.dat" | "esc01.dat" | "escnull.dat" | "esc02.dat" | "lwsdisp.dat"
        | "longreq.dat" | "dblreq.dat" | "semiuri.dat" | "transports.dat" | "mpart01.dat" => {
            Request
        }
        "unreason.dat" | "noreason.dat" => Response,
        "badinv01.dat" | "clerr.dat" | "ncl.dat" | "scalar02.dat" | "quotbal.dat"
        | "ltgtruri.dat" | "lwsruri.dat" | "lwsstart.dat" | "trws.dat" | "escruri.dat"
        | "regbadct.dat" | "badaspec.dat" | "baddn.dat" | "mismatch01.dat" => Refuse(400),
        "badvers.dat" => Refuse(505),
        "mismatch02.dat" => Refuse(501),
        "baddate.dat" => RequestOr400,
        "scalarlg.dat" | "bigcode.dat" => Drop,
        "badbranch.dat" | "unkscm.dat" | "novelsc.dat" | "unksm2.dat" | "bext01.dat"
        | "invut.dat" | "regaut01.dat" | "zeromf.dat" | "cparam01.dat" | "cparam02.dat"
        | "regescrt.dat" | "sdp01.dat" | "inv2543.dat" => Request,
        "test.dat" => Any,
        "insuf.dat" | "multi01.dat" | "mcl01.dat" => Refuse(400),
        "bcast.dat" => Response,
        _ => return None,
    })
}

fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("RFC4475_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/rfc4475")
        });
    dir.join("expected.tsv").exists().then_some(dir)
}

fn outcome(data: &[u8]) -> Result<SipMessage, u16> {
    match parse_message(Bytes::copy_from_slice(data)) {
        Ok(SipMessage::Request(r)) => match r.check() {
            Ok(()) => Ok(SipMessage::Request(r)),
            Err(f) => Err(f.status),
        },
        Ok(SipMessage::Response(r)) => {
            let ok = r.vias().is_ok() && r.cseq().is_ok() && r.from().is_ok() && r.to().is_ok();
            if ok {
                Ok(SipMessage::Response(r))
            } else {
                Err(0)
            }
        }
        Err(rej) => Err(if rej.request_headers.is_some() {
            rej.status
        } else {
            0
        }),
    }
}

#[test]
fn every_torture_message() {
    let Some(dir) = data_dir() else {
        eprintln!("NOTICE: RFC 4475 messages not found (set RFC4475_DIR); test skipped");
        return;
    };
    let tsv = std::fs::read_to_string(dir.join("expected.tsv")).expect("expected.tsv");
    let mut checked = 0;
    let mut failures = Vec::new();
    for line in tsv
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let file = line.split('\t').next().unwrap_or_default();
        let expect = expectation(file).unwrap_or_else(|| panic!("no expectation for {file}"));
        let data = std::fs::read(dir.join(file)).expect(file);
        let got = outcome(&data);
        let ok = match (expect, &got) {
            (Expect::Request, Ok(SipMessage::Request(_))) => true,
            (Expect::Response, Ok(SipMessage::Response(_))) => true,
            (Expect::Refuse(s), Err(g)) => s == *g,
            (Expect::Drop, Err(_)) => true,
            (Expect::RequestOr400, Ok(SipMessage::Request(_)) | Err(400)) => true,
            (Expect::Any, _) => true,
            _ => false,
        };
        if !ok {
            failures.push(format!("{file}: expected {expect:?}, got {got:?}"));
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 50, "only {checked} messages checked");
}

fn parse_request(dir: &std::path::Path, file: &str) -> sip_core::message::Request {
    match parse_message(Bytes::from(std::fs::read(dir.join(file)).expect(file))) {
        Ok(SipMessage::Request(r)) => r,
        other => panic!("{file}: {other:?}"),
    }
}

#[test]
fn details_of_valid_messages() {
    let Some(dir) = data_dir() else {
        eprintln!("NOTICE: RFC 4475 messages not found (set RFC4475_DIR); test skipped");
        return;
    };
    use sip_core::message::{ContactValue, HeaderName, Method};
    // wsinv: folded, compact, odd white space.
    let r = parse_request(&dir, "wsinv.dat");
    assert_eq!(r.body.len(), 150);
    assert_eq!(r.vias().unwrap().len(), 3);
    assert_eq!(r.cseq().unwrap().seq, 9);
    assert_eq!(r.max_forwards().unwrap(), Some(68));
    assert_eq!(
        r.headers
            .get_other("UnknownHeaderWithUnusualValue")
            .map(|v| v.as_bytes()),
        Some(&b";;,,;;,;"[..])
    );
    assert_eq!(r.to().unwrap().tag(), Some(&b"1918181833n"[..]));
    // intmeth: an extension method with odd characters.
    let r = parse_request(&dir, "intmeth.dat");
    assert!(matches!(r.method, Method::Extension(ref m) if m.starts_with(b"!interesting")));
    // esc02: RE%47IST%45R is not REGISTER, C%6Fntact is not Contact.
    let r = parse_request(&dir, "esc02.dat");
    assert!(matches!(r.method, Method::Extension(_)));
    match r.contacts().unwrap() {
        Some(ContactValue::Addrs(a)) => assert_eq!(a.len(), 2),
        other => panic!("{other:?}"),
    }
    // escnull: %00 does not truncate.
    let r = parse_request(&dir, "escnull.dat");
    assert!(r.to().unwrap().to_string().contains("null-%00-null"));
    // longreq: 34 Via values over many spellings of the name.
    let r = parse_request(&dir, "longreq.dat");
    assert!(r.vias().unwrap().len() >= 34);
    // dblreq: the trailing INVITE is ignored.
    let r = parse_request(&dir, "dblreq.dat");
    assert_eq!(r.method, Method::Register);
    assert!(r.body.is_empty());
    // semiuri: the user part keeps its ';'.
    let r = parse_request(&dir, "semiuri.dat");
    let u = r.uri().as_sip().unwrap();
    assert_eq!(u.user.as_deref(), Some(&b"user;par=u%40example.net"[..]));
    // mpart01: binary body taken by Content-Length.
    let r = parse_request(&dir, "mpart01.dat");
    let cl: usize = r
        .header_str(&HeaderName::ContentLength)
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(r.body.len(), cl);
    // cparam01 vs cparam02: header param vs URI param.
    let r = parse_request(&dir, "cparam01.dat");
    let c = r.contact().unwrap().unwrap();
    assert!(c.params.contains("unknownparam"));
    let r = parse_request(&dir, "cparam02.dat");
    let c = r.contact().unwrap().unwrap();
    assert!(c.uri.as_sip().unwrap().params.contains("unknownparam"));
    // regescrt: escaped header inside <> is legal.
    let r = parse_request(&dir, "regescrt.dat");
    assert!(r
        .contact()
        .unwrap()
        .unwrap()
        .uri
        .as_sip()
        .unwrap()
        .headers
        .is_some());
    // unreason: the UTF-8 reason phrase passes byte-exact.
    let data = std::fs::read(dir.join("unreason.dat")).unwrap();
    match parse_message(Bytes::from(data.clone())) {
        Ok(SipMessage::Response(resp)) => {
            let line_end = data.iter().position(|&b| b == b'\r').unwrap();
            assert!(data[..line_end].ends_with(&resp.reason));
            assert!(resp.reason.iter().any(|&b| b >= 0x80));
        }
        other => panic!("{other:?}"),
    }
}

/// RFC 5118 §4 examples (IPv6 in SIP), written out from the RFC text.
#[test]
fn rfc5118_ipv6_messages() {
    let ok = |name: &str, text: &str| {
        let text = text.replace('\n', "\r\n");
        let body_len = text.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
        let data = Bytes::from(text.replace("{CL}", &body_len.to_string()));
        match parse_message(data) {
            Ok(SipMessage::Request(r)) => {
                r.check().unwrap_or_else(|e| panic!("{name}: {e:?}"));
                r
            }
            other => panic!("{name}: {other:?}"),
        }
    };
    let refused = |name: &str, text: &str| {
        let data = Bytes::from(text.replace('\n', "\r\n"));
        let refused = match parse_message(data) {
            Ok(SipMessage::Request(r)) => r.check().is_err(),
            Ok(SipMessage::Response(_)) => false,
            Err(_) => true,
        };
        assert!(refused, "{name} should be refused");
    };
    // 4.1 Basic Request
    let r = ok("4.1", "REGISTER sip:[2001:db8::10] SIP/2.0\nTo: sip:user@example.com\nFrom: sip:user@example.com;tag=81x2\nVia: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111\nCall-ID: SSG9559905523997077@hlau_4100\nMax-Forwards: 70\nContact: \"Caller\" <sip:caller@[2001:db8::1]>\nCSeq: 98176 REGISTER\nContent-Length: 0\n\n");
    assert_eq!(
        r.uri().as_sip().unwrap().host.ip(),
        "2001:db8::10".parse().ok()
    );
    assert_eq!(r.top_via().unwrap().host.ip(), "2001:db8::9:1".parse().ok());
    // 4.2 Request with IPv6 Reference Missing Brackets (invalid)
    refused("4.2", "REGISTER sip:2001:db8::10 SIP/2.0\nTo: sip:user@example.com\nFrom: sip:user@example.com;tag=81x2\nVia: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111\nCall-ID: SSG9559905523997077@hlau_4100\nMax-Forwards: 70\nContact: \"Caller\" <sip:caller@[2001:db8::1]>\nCSeq: 98176 REGISTER\nContent-Length: 0\n\n");
    // 4.3 Port Ambiguous in a SIP URI: valid, the whole of 2001:db8::10:5070 is the address.
    let r = ok("4.3", "REGISTER sip:[2001:db8::10:5070] SIP/2.0\nTo: sip:user@example.com\nFrom: sip:user@example.com;tag=81x2\nVia: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111\nCall-ID: SSG9559905523997077@hlau_4100\nContact: \"Caller\" <sip:caller@[2001:db8::1]>\nCSeq: 98176 REGISTER\nContent-Length: 0\n\n");
    let u = r.uri().as_sip().unwrap();
    assert_eq!(
        (u.host.ip(), u.port),
        ("2001:db8::10:5070".parse().ok(), None)
    );
    // 4.4 Port Unambiguous in a SIP URI
    let r = ok("4.4", "REGISTER sip:[2001:db8::10]:5070 SIP/2.0\nTo: sip:user@example.com\nFrom: sip:user@example.com;tag=81x2\nVia: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111\nCall-ID: SSG9559905523997077@hlau_4100\nMax-Forwards: 70\nContact: \"Caller\" <sip:caller@[2001:db8::1]>\nCSeq: 98176 REGISTER\nContent-Length: 0\n\n");
    assert_eq!(r.uri().as_sip().unwrap().port, Some(5070));
    // 4.5 Via received param with IPv6 (with and without brackets)
    let r = ok("4.5", "BYE sip:[2001:db8::10] SIP/2.0\nTo: sip:user@example.com;tag=bd76ya\nFrom: sip:user@example.com;tag=81x2\nVia: SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3-111\nCall-ID: SSG9559905523997077@hlau_4100\nMax-Forwards: 70\nCSeq: 321 BYE\nContent-Length: 0\n\n");
    assert_eq!(
        r.top_via().unwrap().received(),
        Some(&b"[2001:db8::9:255]"[..])
    );
    let r = ok("4.5b", "OPTIONS sip:[2001:db8::10] SIP/2.0\nTo: sip:user@example.com\nFrom: sip:user@example.com;tag=81x2\nVia: SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3\nCall-ID: SSG95523997077@hlau_4100\nMax-Forwards: 70\nContact: \"Caller\" <sip:caller@[2001:db8::9:1]>\nCSeq: 921 OPTIONS\nContent-Length: 0\n\n");
    assert_eq!(
        r.top_via().unwrap().received(),
        Some(&b"2001:db8::9:255"[..])
    );
    // 4.6 SDP with IPv6 (body passes untouched)
    let r = ok("4.6", "INVITE sip:user@[2001:db8::10] SIP/2.0\nTo: sip:user@[2001:db8::10]\nFrom: sip:user@example.com;tag=81x2\nVia: SIP/2.0/UDP [2001:db8::20];branch=z9hG4bKas3-111\nCall-ID: SSG9559905523997077@hlau_4100\nContact: \"Caller\" <sip:caller@[2001:db8::20]>\nCSeq: 8612 INVITE\nMax-Forwards: 70\nContent-Type: application/sdp\nContent-Length: {CL}\n\nv=0\no=assistant 971731711378798081 0 IN IP6 2001:db8::20\ns=Live video feed for today's meeting\nc=IN IP6 2001:db8::20\nt=3338481189 3370017201\nm=audio 6000 RTP/AVP 2\na=rtpmap:2 G726-32/8000\nm=video 6024 RTP/AVP 107\na=rtpmap:107 H263-1998/90000\n");
    assert!(r.body.ends_with(b"H263-1998/90000\r\n"));
    // 4.9 IPv4-mapped IPv6 addresses
    let r = ok("4.9", "INVITE sip:user@example.com SIP/2.0\nTo: sip:user@example.com\nFrom: sip:user@east.example.com;tag=81x2\nVia: SIP/2.0/UDP [::ffff:192.0.2.10]:19823;branch=z9hG4bKbh19\nVia: SIP/2.0/UDP [::ffff:192.0.2.128];branch=z9hG4bKas3-111\nCall-ID: SSG9559905523997077@hlau_4100\nContact: \"T. desk phone\" <sip:ted@[::ffff:192.0.2.128]>\nCSeq: 612 INVITE\nMax-Forwards: 70\nContent-Length: 0\n\n");
    assert_eq!(r.vias().unwrap()[0].port, Some(19823));
    // 4.7 Multiple IP addresses in SIP headers
    let r = ok("4.7", "BYE sip:user@host.example.net SIP/2.0\nVia: SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bKas3-111\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKjhja8781hjuaij65144\nVia: SIP/2.0/TCP [2001:db8::9:255];branch=z9hG4bK451jj;received=192.0.2.200\nCall-ID: 997077@lau_4100\nMax-Forwards: 70\nCSeq: 89187 BYE\nTo: sip:user@example.net;tag=9817--94\nFrom: sip:user@example.com;tag=81x2\nContent-Length: 0\n\n");
    assert_eq!(r.vias().unwrap().len(), 3);
    // 4.10 IPv6 reference bug in RFC 3261 ABNF: three colons are invalid, two are fine.
    refused("4.10a", "OPTIONS sip:user@[2001:db8:::192.0.2.1] SIP/2.0\nTo: sip:user@[2001:db8:::192.0.2.1]\nFrom: sip:user@example.com;tag=810x2\nVia: SIP/2.0/UDP lab1.east.example.com;branch=z9hG4bKas3-111\nCall-ID: G9559905523997077@hlau_4100\nCSeq: 689 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n");
    ok("4.10b", "OPTIONS sip:user@[2001:db8::192.0.2.1] SIP/2.0\nTo: sip:user@[2001:db8::192.0.2.1]\nFrom: sip:user@example.com;tag=810x2\nVia: SIP/2.0/UDP lab1.east.example.com;branch=z9hG4bKas3-111\nCall-ID: G9559905523997077@hlau_4100\nCSeq: 689 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n");
}
