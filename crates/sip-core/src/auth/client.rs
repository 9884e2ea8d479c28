//! The client side: answering a 401/407 (RFC 3261 §22.2–22.3, RFC 7616
//! §3.4, RFC 8760 §2.4).
//!
//! From all the challenges received (every `WWW-Authenticate` or
//! `Proxy-Authenticate` value of the response) the client picks the
//! strongest algorithm it knows — SHA-512-256, then SHA-256, then MD5 —
//! skipping other schemes and unknown algorithms, and among equals the one
//! listed first. It uses `qop=auth` when offered (`auth-int` when that is
//! all that is offered, the RFC 2069 form when no `qop` is), a fresh random
//! `cnonce` per request, and a nonce count that grows by one for every
//! request sent under the same nonce. `algorithm` and `opaque` are echoed
//! as the challenge gave them.

use std::collections::VecDeque;

use rand::Rng;

use super::algorithm::{Algorithm, AlgorithmParam, NonceCount, Qop, QopInput};
use super::header::{parse_challenges, AuthChallenge, Challenge, Credentials};
use super::AuthError;

/// How many realms a [`ClientNonceState`] remembers.
const MAX_REALMS: usize = 16;

#[derive(Debug, Clone)]
struct NonceEntry {
    realm: String,
    nonce: String,
    nc: u32,
}

/// The nonce counts a client has used, per realm: the last nonce seen for
/// each realm and how many requests have been sent with it. Owned by the
/// caller (one per account or per trunk); bounded to a few realms.
#[derive(Debug, Clone, Default)]
pub struct ClientNonceState {
    entries: VecDeque<NonceEntry>,
}

impl ClientNonceState {
    /// No nonce seen yet.
    pub fn new() -> ClientNonceState {
        ClientNonceState::default()
    }

    /// The `nc` for the next request under `nonce` in `realm`: 1 for a
    /// nonce not seen before (which replaces the realm's previous one),
    /// one more than last time otherwise.
    pub fn next_nc(&mut self, realm: &str, nonce: &str) -> NonceCount {
        let position = self.entries.iter().position(|e| e.realm == realm);
        let mut entry = match position.and_then(|i| self.entries.remove(i)) {
            Some(e) if e.nonce == nonce => e,
            _ => NonceEntry {
                realm: realm.to_owned(),
                nonce: nonce.to_owned(),
                nc: 0,
            },
        };
        entry.nc = entry.nc.saturating_add(1);
        let nc = NonceCount::new(entry.nc);
        // Most recently used first; the least recently used realm goes.
        self.entries.push_front(entry);
        self.entries.truncate(MAX_REALMS);
        nc
    }
}

/// The request being authorised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestRequest<'a> {
    /// The SIP method (for an ACK or CANCEL, that of the INVITE being
    /// acknowledged or cancelled is *not* used: RFC 3261 §22.4 hashes the
    /// method of the request itself).
    pub method: &'a str,
    /// The Request-URI, exactly as written in the request line.
    pub uri: &'a str,
    /// The message body (hashed only with `qop=auth-int`).
    pub body: &'a [u8],
}

/// How a challenge will be answered, if it can be.
fn answerable(c: &Challenge) -> Option<(Algorithm, Option<Qop>)> {
    let algorithm = match &c.algorithm {
        None => Algorithm::Md5,
        Some(AlgorithmParam::Known(a)) => *a,
        Some(AlgorithmParam::Unknown(_)) => return None,
    };
    let qop = if c.qop.is_empty() {
        None
    } else if c.qop.contains(&Qop::Auth) {
        Some(Qop::Auth)
    } else if c.qop.contains(&Qop::AuthInt) {
        Some(Qop::AuthInt)
    } else {
        return None;
    };
    Some((algorithm, qop))
}

/// Picks the challenge to answer among header values: the strongest
/// algorithm, the first listed among equals. Values that do not parse are
/// skipped, as are other schemes and unknown algorithms or qop values.
pub fn choose_challenge(challenges: &[&str]) -> Option<Challenge> {
    let mut best: Option<(u8, Challenge)> = None;
    for c in challenges
        .iter()
        .filter_map(|v| parse_challenges(v).ok())
        .flatten()
    {
        let AuthChallenge::Digest(c) = c else {
            continue;
        };
        let Some((algorithm, _)) = answerable(&c) else {
            continue;
        };
        let strength = algorithm.strength();
        if best.as_ref().is_none_or(|(s, _)| strength > *s) {
            best = Some((strength, c));
        }
    }
    best.map(|(_, c)| c)
}

fn new_cnonce() -> String {
    let raw: [u8; 16] = rand::thread_rng().gen();
    super::hex_lower(&raw)
}

/// The credentials answering `challenge` for `request`, with the given
/// nonce count and client nonce (both ignored in the RFC 2069 form, where
/// a `-sess` algorithm still uses the `cnonce`).
pub fn credentials_for(
    challenge: &Challenge,
    username: &str,
    password: &str,
    request: &DigestRequest<'_>,
    nc: NonceCount,
    cnonce: &str,
) -> Result<Credentials, AuthError> {
    let has_line_break = |s: &str| s.contains(['\r', '\n']);
    if has_line_break(username) || has_line_break(request.uri) {
        return Err(AuthError::InvalidCredential);
    }
    let (algorithm, qop) = answerable(challenge).ok_or(AuthError::NoUsableChallenge)?;
    let qop_input = match qop {
        None => QopInput::None,
        Some(Qop::AuthInt) => QopInput::AuthInt { nc, cnonce },
        Some(_) => QopInput::Auth { nc, cnonce },
    };
    let stored = algorithm.ha1(username, &challenge.realm, password);
    let ha1 = algorithm.ha1_from(&stored, &challenge.nonce, cnonce);
    let response = algorithm.response(
        &ha1,
        &challenge.nonce,
        qop_input,
        request.method,
        request.uri,
        request.body,
    );
    let uses_cnonce = qop.is_some() || algorithm.is_session();
    Ok(Credentials {
        username: if challenge.userhash {
            algorithm.userhash(username, &challenge.realm)
        } else {
            username.to_owned()
        },
        realm: challenge.realm.clone(),
        nonce: challenge.nonce.clone(),
        uri: request.uri.to_owned(),
        response,
        algorithm: challenge.algorithm.clone(),
        cnonce: uses_cnonce.then(|| cnonce.to_owned()),
        opaque: challenge.opaque.clone(),
        nc: qop.is_some().then_some(nc),
        qop,
        userhash: challenge.userhash,
        extra: Vec::new(),
    })
}

/// Answers the challenges of a 401/407 with the value of an
/// `Authorization` (or `Proxy-Authorization`) header.
///
/// `challenges` are the values of every `WWW-Authenticate` (or
/// `Proxy-Authenticate`) header of the response; `uri` is the
/// Request-URI of the request being re-sent; `state` counts `nc`.
pub fn answer_challenges(
    state: &mut ClientNonceState,
    challenges: &[&str],
    method: &str,
    uri: &str,
    username: &str,
    password: &str,
    body: &[u8],
) -> Result<String, AuthError> {
    let challenge = choose_challenge(challenges).ok_or(AuthError::NoUsableChallenge)?;
    let nc = state.next_nc(&challenge.realm, &challenge.nonce);
    let request = DigestRequest { method, uri, body };
    credentials_for(&challenge, username, password, &request, nc, &new_cnonce())
        .map(|c| c.to_string())
}

/// A digest client for one account: the username, the password and the
/// nonce counts used so far.
#[derive(Clone)]
pub struct DigestClient {
    username: String,
    password: String,
    nonces: ClientNonceState,
}

impl std::fmt::Debug for DigestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestClient")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .field("nonces", &self.nonces)
            .finish()
    }
}

impl DigestClient {
    /// A client for `username` / `password`.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> DigestClient {
        DigestClient {
            username: username.into(),
            password: password.into(),
            nonces: ClientNonceState::new(),
        }
    }

    /// The username.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Answers the challenges of a 401/407; see [`answer_challenges`].
    pub fn answer(
        &mut self,
        challenges: &[&str],
        method: &str,
        uri: &str,
        body: &[u8],
    ) -> Result<String, AuthError> {
        answer_challenges(
            &mut self.nonces,
            challenges,
            method,
            uri,
            &self.username,
            &self.password,
            body,
        )
    }

    /// Answers the challenges of a 401 (`WWW-Authenticate`) or 407 (`Proxy-Authenticate`)
    /// response for a request with `method`, Request-URI `uri` and `body`: the header to add
    /// to the request sent again (`Authorization` / `Proxy-Authorization`) and its value.
    pub fn answer_response(
        &mut self,
        resp: &crate::message::Response,
        method: &str,
        uri: &str,
        body: &[u8],
    ) -> Result<(crate::message::HeaderName, String), AuthError> {
        use crate::message::HeaderName;
        let (challenge, answer) = if resp.status == 401 {
            (HeaderName::WwwAuthenticate, HeaderName::Authorization)
        } else {
            (
                HeaderName::ProxyAuthenticate,
                HeaderName::ProxyAuthorization,
            )
        };
        let challenges: Vec<String> = resp
            .headers
            .get_all(&challenge)
            .map(|v| v.to_str().into_owned())
            .collect();
        let refs: Vec<&str> = challenges.iter().map(String::as_str).collect();
        Ok((answer, self.answer(&refs, method, uri, body)?))
    }

    /// Credentials for a request sent again under a challenge already
    /// answered (preemptive authorisation, RFC 3261 §22.3): the same
    /// nonce, the next nonce count.
    pub fn answer_again(
        &mut self,
        challenge: &Challenge,
        request: &DigestRequest<'_>,
    ) -> Result<Credentials, AuthError> {
        let nc = self.nonces.next_nc(&challenge.realm, &challenge.nonce);
        credentials_for(
            challenge,
            &self.username,
            &self.password,
            request,
            nc,
            &new_cnonce(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nc_counts_per_nonce_and_resets_on_a_new_one() {
        let mut s = ClientNonceState::new();
        assert_eq!(s.next_nc("r", "n1").value(), 1);
        assert_eq!(s.next_nc("r", "n1").value(), 2);
        assert_eq!(s.next_nc("other", "x").value(), 1);
        assert_eq!(s.next_nc("r", "n1").as_str(), "00000003");
        assert_eq!(s.next_nc("r", "n2").value(), 1);
        assert_eq!(s.next_nc("r", "n1").value(), 1);
    }

    #[test]
    fn nc_state_is_bounded() {
        let mut s = ClientNonceState::new();
        for i in 0..100 {
            s.next_nc(&format!("realm{i}"), "n");
        }
        assert_eq!(s.entries.len(), MAX_REALMS);
        // The most recent realm is remembered, the first one forgotten.
        assert_eq!(s.next_nc("realm99", "n").value(), 2);
        assert_eq!(s.next_nc("realm0", "n").value(), 1);
    }

    #[test]
    fn chooses_the_strongest_algorithm() {
        let md5 = r#"Digest realm="r", nonce="1", algorithm=MD5, qop="auth""#;
        let sha256 = r#"Digest realm="r", nonce="2", algorithm=SHA-256, qop="auth""#;
        let sha512 = r#"Digest realm="r", nonce="3", algorithm=SHA-512-256, qop="auth""#;
        let unknown = r#"Digest realm="r", nonce="4", algorithm=SHA-3000, qop="auth""#;
        let basic = r#"Basic realm="r""#;
        let pick = |v: &[&str]| choose_challenge(v).map(|c| c.nonce);
        assert_eq!(pick(&[md5, sha256]).as_deref(), Some("2"));
        assert_eq!(pick(&[sha256, md5]).as_deref(), Some("2"));
        assert_eq!(pick(&[md5, sha512, sha256]).as_deref(), Some("3"));
        assert_eq!(pick(&[unknown, basic, md5]).as_deref(), Some("1"));
        assert_eq!(pick(&[unknown, basic, "garbage \""]), None);
        // Several challenges in one value.
        let joined = format!("{md5}, {sha256}");
        assert_eq!(pick(&[joined.as_str()]).as_deref(), Some("2"));
        // Equal strength: the first listed.
        let md5_again = r#"Digest realm="r", nonce="5", qop="auth""#;
        assert_eq!(pick(&[md5_again, md5]).as_deref(), Some("5"));
        // Only an unknown qop: not answerable.
        let qop_x = r#"Digest realm="r", nonce="6", qop="auth-conf""#;
        assert_eq!(pick(&[qop_x]), None);
    }

    #[test]
    fn answers_rfc2617_example_exactly() {
        let challenge = Challenge::parse(
            r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        )
        .unwrap();
        let request = DigestRequest {
            method: "GET",
            uri: "/dir/index.html",
            body: b"",
        };
        let c = credentials_for(
            &challenge,
            "Mufasa",
            "Circle Of Life",
            &request,
            NonceCount::new(1),
            "0a4f113b",
        )
        .unwrap();
        assert_eq!(c.response, "6629fae49393a05397450978507c4ef1");
        assert_eq!(c.qop, Some(Qop::Auth));
        assert_eq!(c.algorithm, None, "no algorithm offered, none echoed");
        assert_eq!(
            c.opaque.as_deref(),
            Some("5ccc069c403ebaf9f0171e9517f40e41")
        );
        assert_eq!(
            c.to_string(),
            r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", response="6629fae49393a05397450978507c4ef1", cnonce="0a4f113b", opaque="5ccc069c403ebaf9f0171e9517f40e41", qop=auth, nc=00000001"#
        );
    }

    #[test]
    fn answers_rfc7616_example_with_sha256() {
        let challenge = Challenge::parse(
            r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#,
        )
        .unwrap();
        let request = DigestRequest {
            method: "GET",
            uri: "/dir/index.html",
            body: b"",
        };
        let c = credentials_for(
            &challenge,
            "Mufasa",
            "Circle of Life",
            &request,
            NonceCount::new(1),
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        )
        .unwrap();
        assert_eq!(
            c.response,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        assert_eq!(c.algorithm, Some(AlgorithmParam::Known(Algorithm::Sha256)));
    }

    #[test]
    fn rfc2069_form_without_qop() {
        let challenge =
            Challenge::parse(r#"Digest realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#)
                .unwrap();
        let request = DigestRequest {
            method: "GET",
            uri: "/dir/index.html",
            body: b"",
        };
        let c = credentials_for(
            &challenge,
            "Mufasa",
            "CircleOfLife",
            &request,
            NonceCount::new(1),
            "unused",
        )
        .unwrap();
        assert_eq!(c.qop, None);
        assert_eq!(c.nc, None);
        assert_eq!(c.cnonce, None);
        assert_eq!(c.response, "1949323746fe6a43ef61f9606e7febea");
    }

    #[test]
    fn userhash_hides_the_username() {
        let challenge = Challenge::parse(
            r#"Digest realm="api@example.org", nonce="n", qop="auth", algorithm=SHA-256, userhash=true"#,
        )
        .unwrap();
        let request = DigestRequest {
            method: "GET",
            uri: "/",
            body: b"",
        };
        let c =
            credentials_for(&challenge, "alice", "pw", &request, NonceCount::new(1), "c").unwrap();
        assert!(c.userhash);
        assert_eq!(
            c.username,
            Algorithm::Sha256.hash(&[b"alice", b"api@example.org"])
        );
        // The response still hashes the real username.
        let ha1 = Algorithm::Sha256.ha1("alice", "api@example.org", "pw");
        let expected = Algorithm::Sha256.response(
            &ha1,
            "n",
            QopInput::Auth {
                nc: NonceCount::new(1),
                cnonce: "c",
            },
            "GET",
            "/",
            b"",
        );
        assert_eq!(c.response, expected);
    }

    #[test]
    fn refuses_line_breaks_and_unusable_challenges() {
        let mut state = ClientNonceState::new();
        let ch = [r#"Digest realm="r", nonce="n", qop="auth""#];
        assert_eq!(
            answer_challenges(
                &mut state,
                &ch,
                "REGISTER",
                "sip:r",
                "a\r\nVia: x",
                "p",
                b""
            ),
            Err(AuthError::InvalidCredential)
        );
        assert_eq!(
            answer_challenges(
                &mut state,
                &["Basic realm=\"r\""],
                "REGISTER",
                "sip:r",
                "a",
                "p",
                b""
            ),
            Err(AuthError::NoUsableChallenge)
        );
        assert_eq!(
            answer_challenges(&mut state, &[], "REGISTER", "sip:r", "a", "p", b""),
            Err(AuthError::NoUsableChallenge)
        );
    }

    #[test]
    fn cnonce_is_fresh_and_nc_grows() {
        let mut client = DigestClient::new("alice", "pw");
        let ch = [r#"Digest realm="r", nonce="n", qop="auth", algorithm=MD5"#];
        let a = Credentials::parse(&client.answer(&ch, "REGISTER", "sip:r", b"").unwrap()).unwrap();
        let b = Credentials::parse(&client.answer(&ch, "REGISTER", "sip:r", b"").unwrap()).unwrap();
        assert_ne!(a.cnonce, b.cnonce);
        assert_eq!(a.nc.map(NonceCount::value), Some(1));
        assert_eq!(b.nc.map(NonceCount::value), Some(2));
        assert_eq!(
            a.algorithm,
            Some(AlgorithmParam::Known(Algorithm::Md5)),
            "algorithm echoed"
        );
        assert!(!format!("{client:?}").contains("pw"));
    }
}
