//! Client and server together: challenges answered by [`DigestClient`]
//! and verified by [`DigestServer`], on a virtual clock.

use super::*;

const REALM: &str = "dialbridge.test";
const URI: &str = "sip:dialbridge.test";
const T0: u64 = 1_700_000_000;

/// A registrar's store: HA1 per base algorithm, never the password.
struct Store {
    md5: String,
    sha256: String,
}

impl Store {
    fn new(username: &str, password: &str) -> Store {
        Store {
            md5: Algorithm::Md5.ha1(username, REALM, password),
            sha256: Algorithm::Sha256.ha1(username, REALM, password),
        }
    }

    fn ha1(&self, algorithm: Algorithm) -> Option<String> {
        match algorithm {
            Algorithm::Md5 => Some(self.md5.clone()),
            Algorithm::Sha256 => Some(self.sha256.clone()),
            _ => None,
        }
    }
}

fn server() -> DigestServer {
    DigestServer::new([7; 32], DigestServerConfig::default()).unwrap()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Challenges at `now`, answered by `client`, parsed back.
fn answer(
    server: &DigestServer,
    client: &mut DigestClient,
    pick: impl Fn(&[String]) -> Vec<String>,
    now: u64,
) -> Credentials {
    let challenges = pick(&server.challenge(REALM, false, now));
    let value = client
        .answer(&refs(&challenges), "REGISTER", URI, b"")
        .unwrap();
    Credentials::parse(&value).unwrap()
}

fn all(v: &[String]) -> Vec<String> {
    v.to_vec()
}

fn only(alg: &'static str) -> impl Fn(&[String]) -> Vec<String> {
    move |v: &[String]| {
        v.iter()
            .filter(|c| c.contains(&format!("algorithm={alg},")))
            .cloned()
            .collect()
    }
}

#[test]
fn challenge_offers_sha256_then_md5_with_qop_auth() {
    let s = server();
    let values = s.challenge(REALM, false, T0);
    assert_eq!(values.len(), 2);
    let a = Challenge::parse(&values[0]).unwrap();
    let b = Challenge::parse(&values[1]).unwrap();
    assert_eq!(a.algorithm, Some(AlgorithmParam::Known(Algorithm::Sha256)));
    assert_eq!(b.algorithm, Some(AlgorithmParam::Known(Algorithm::Md5)));
    for c in [&a, &b] {
        assert_eq!(c.realm, REALM);
        assert_eq!(c.qop, [Qop::Auth]);
        assert!(c.opaque.is_some());
        assert!(!c.stale);
    }
    assert!(values[0].contains(r#"qop="auth""#));
    let stale = s.challenge(REALM, true, T0);
    assert!(stale.iter().all(|v| v.contains("stale=TRUE")));
    // Two challenges in the same second never share a nonce.
    let again = Challenge::parse(&s.challenge(REALM, false, T0)[0]).unwrap();
    assert_ne!(again.nonce, a.nonce);
}

#[test]
fn challenge_values_read_back_as_the_challenges_they_write() {
    let s = server();
    for stale in [false, true] {
        let values = s.challenge_values(REALM, stale, T0, |_| true);
        assert_eq!(values.len(), 2);
        let parsed: Vec<Challenge> = values
            .iter()
            .map(|v| Challenge::parse(v).unwrap())
            .collect();
        for (v, c) in values.iter().zip(&parsed) {
            assert_eq!(&c.to_string(), v, "written as a Challenge writes itself");
            assert_eq!(c.stale, stale);
            assert_eq!(c.realm, REALM);
            assert_eq!(c.qop, [Qop::Auth]);
            assert_eq!(c.nonce, parsed[0].nonce, "one nonce for all");
            assert_eq!(c.opaque, parsed[0].opaque);
        }
    }
    let md5 = s.challenge_values(REALM, false, T0, |a| a == Algorithm::Md5);
    assert_eq!(md5.len(), 1);
    assert_eq!(
        Challenge::parse(&md5[0]).unwrap().algorithm,
        Some(AlgorithmParam::Known(Algorithm::Md5))
    );
}

#[test]
fn client_prefers_sha256_and_server_accepts() {
    let mut s = server();
    let store = Store::new("alice", "secret");
    let mut client = DigestClient::new("alice", "secret");
    let creds = answer(&s, &mut client, all, T0);
    assert_eq!(
        creds.algorithm,
        Some(AlgorithmParam::Known(Algorithm::Sha256))
    );
    assert_eq!(creds.response.len(), 64);
    assert_eq!(
        s.verify(&creds, "REGISTER", REALM, |a| store.ha1(a), T0 + 1),
        Verdict::Ok
    );
}

#[test]
fn md5_round_trip() {
    let mut s = server();
    let store = Store::new("alice", "secret");
    let mut client = DigestClient::new("alice", "secret");
    let creds = answer(&s, &mut client, only("MD5"), T0);
    assert_eq!(creds.algorithm, Some(AlgorithmParam::Known(Algorithm::Md5)));
    assert_eq!(creds.response.len(), 32);
    let mut asked = None;
    let verdict = s.verify(
        &creds,
        "REGISTER",
        REALM,
        |a| {
            asked = Some(a);
            store.ha1(a)
        },
        T0,
    );
    assert_eq!(verdict, Verdict::Ok);
    assert_eq!(asked, Some(Algorithm::Md5));
}

#[test]
fn sha256_round_trip_and_upper_case_response() {
    let mut s = server();
    let store = Store::new("bob", "pw");
    let mut client = DigestClient::new("bob", "pw");
    let mut creds = answer(&s, &mut client, only("SHA-256"), T0);
    creds.response = creds.response.to_ascii_uppercase();
    assert_eq!(
        s.verify(&creds, "REGISTER", REALM, |a| store.ha1(a), T0),
        Verdict::Ok
    );
}

#[test]
fn wrong_password_is_bad_response() {
    let mut s = server();
    let store = Store::new("alice", "secret");
    for pick in [only("MD5"), only("SHA-256")] {
        let mut client = DigestClient::new("alice", "Secret");
        let creds = answer(&s, &mut client, pick, T0);
        assert_eq!(
            s.verify(&creds, "REGISTER", REALM, |a| store.ha1(a), T0),
            Verdict::BadResponse
        );
    }
    // The right password but another method than the one hashed.
    let mut client = DigestClient::new("alice", "secret");
    let creds = answer(&s, &mut client, all, T0);
    assert_eq!(
        s.verify(&creds, "INVITE", REALM, |a| store.ha1(a), T0),
        Verdict::BadResponse
    );
    // A failed attempt does not burn the nonce count.
    assert_eq!(
        s.verify(&creds, "REGISTER", REALM, |a| store.ha1(a), T0),
        Verdict::Ok
    );
}

#[test]
fn unknown_user() {
    let mut s = server();
    let mut client = DigestClient::new("mallory", "x");
    let creds = answer(&s, &mut client, all, T0);
    assert_eq!(
        s.verify(&creds, "REGISTER", REALM, |_| None, T0),
        Verdict::UnknownUser
    );
}

#[test]
fn expired_nonce_is_stale_then_fresh_nonce_works() {
    let mut s = server();
    let store = Store::new("alice", "secret");
    let mut client = DigestClient::new("alice", "secret");
    let creds = answer(&s, &mut client, all, T0);
    let lifetime = s.config().nonce_lifetime_secs;
    // Still valid at the last second of its lifetime.
    let mut early = creds.clone();
    early.nc = Some(NonceCount::new(1));
    assert_eq!(
        s.verify(&early, "REGISTER", REALM, |a| store.ha1(a), T0 + lifetime),
        Verdict::Ok
    );
    // A later request under the same nonce, one second too late.
    let ch = Challenge {
        nonce: creds.nonce.clone(),
        opaque: creds.opaque.clone(),
        ..Challenge::parse(&s.challenge(REALM, false, T0)[0]).unwrap()
    };
    let late = client
        .answer_again(
            &ch,
            &DigestRequest {
                method: "REGISTER",
                uri: URI,
                body: b"",
            },
        )
        .unwrap();
    assert_eq!(
        s.verify(
            &late,
            "REGISTER",
            REALM,
            |a| store.ha1(a),
            T0 + lifetime + 1
        ),
        Verdict::Stale
    );
    // An expired nonce with a wrong password is still a bad response.
    let mut wrong = DigestClient::new("alice", "guess");
    let bad = wrong.answer_again(
        &ch,
        &DigestRequest {
            method: "REGISTER",
            uri: URI,
            body: b"",
        },
    );
    assert_eq!(
        s.verify(
            &bad.unwrap(),
            "REGISTER",
            REALM,
            |a| store.ha1(a),
            T0 + 10_000
        ),
        Verdict::BadResponse
    );
    // The re-challenge carries stale=TRUE and is answered without asking
    // the user again.
    let now = T0 + lifetime + 1;
    let values = s.challenge(REALM, true, now);
    let fresh =
        Credentials::parse(&client.answer(&refs(&values), "REGISTER", URI, b"").unwrap()).unwrap();
    assert_eq!(fresh.nc.map(NonceCount::value), Some(1));
    assert_eq!(
        s.verify(&fresh, "REGISTER", REALM, |a| store.ha1(a), now),
        Verdict::Ok
    );
}

#[test]
fn replayed_nonce_count_is_refused() {
    let mut s = server();
    let store = Store::new("alice", "secret");
    let mut client = DigestClient::new("alice", "secret");
    let values = s.challenge(REALM, false, T0);
    let first =
        Credentials::parse(&client.answer(&refs(&values), "REGISTER", URI, b"").unwrap()).unwrap();
    assert_eq!(
        s.verify(&first, "REGISTER", REALM, |a| store.ha1(a), T0),
        Verdict::Ok
    );
    assert_eq!(
        s.verify(&first, "REGISTER", REALM, |a| store.ha1(a), T0 + 1),
        Verdict::Replay
    );
    let second =
        Credentials::parse(&client.answer(&refs(&values), "REGISTER", URI, b"").unwrap()).unwrap();
    assert_eq!(second.nc.map(NonceCount::value), Some(2));
    assert_eq!(
        s.verify(&second, "REGISTER", REALM, |a| store.ha1(a), T0 + 2),
        Verdict::Ok
    );
    // Going back to nc=1 under the same nonce, even with a fresh cnonce
    // and a correct response, is a replay.
    let ch = Challenge::parse(&values[0]).unwrap();
    let back = credentials_for(
        &ch,
        "alice",
        "secret",
        &DigestRequest {
            method: "REGISTER",
            uri: URI,
            body: b"",
        },
        NonceCount::new(1),
        "another-cnonce",
    )
    .unwrap();
    assert_eq!(
        s.verify(&back, "REGISTER", REALM, |a| store.ha1(a), T0 + 3),
        Verdict::Replay
    );
    assert_eq!(s.tracked_nonces(), 1);
}

#[test]
fn tampered_foreign_or_malformed_nonce_is_bad_nonce() {
    let mut s = server();
    let store = Store::new("alice", "secret");
    let mut client = DigestClient::new("alice", "secret");
    let values = s.challenge(REALM, false, T0);
    let ch = Challenge::parse(&values[0]).unwrap();
    let request = DigestRequest {
        method: "REGISTER",
        uri: URI,
        body: b"",
    };

    // One hex digit of the issue time changed: the nonce claims to be
    // newer than it is.
    let mut tampered = ch.clone();
    let mut bytes = tampered.nonce.into_bytes();
    bytes[14] = if bytes[14] == b'f' { b'e' } else { b'f' };
    tampered.nonce = String::from_utf8(bytes).unwrap();
    let creds = client.answer_again(&tampered, &request).unwrap();
    assert_eq!(
        s.verify(&creds, "REGISTER", REALM, |a| store.ha1(a), T0),
        Verdict::BadNonce
    );

    // A nonce from a server with another key.
    let other = DigestServer::new([8; 32], DigestServerConfig::default()).unwrap();
    let foreign = Challenge::parse(&other.challenge(REALM, false, T0)[0]).unwrap();
    let creds = client.answer_again(&foreign, &request).unwrap();
    assert_eq!(
        s.verify(&creds, "REGISTER", REALM, |a| store.ha1(a), T0),
        Verdict::BadNonce
    );

    // A nonce issued for another realm, presented in that realm.
    let elsewhere = Challenge::parse(&s.challenge("other.test", false, T0)[0]).unwrap();
    let mut moved = elsewhere.clone();
    moved.realm = REALM.into();
    let creds = client.answer_again(&moved, &request).unwrap();
    assert_eq!(
        s.verify(&creds, "REGISTER", REALM, |a| store.ha1(a), T0),
        Verdict::BadNonce
    );

    // Not hex, wrong length, empty.
    for nonce in ["", "zz", &"g".repeat(64), &"0".repeat(64), &"0".repeat(66)] {
        let mut c = ch.clone();
        c.nonce = nonce.to_owned();
        let creds = client.answer_again(&c, &request).unwrap();
        assert_eq!(
            s.verify(&creds, "REGISTER", REALM, |a| store.ha1(a), T0),
            Verdict::BadNonce,
            "{nonce:?}"
        );
    }
}

#[test]
fn credentials_that_do_not_fit_the_challenge() {
    let mut s = server();
    let store = Store::new("alice", "secret");
    let mut client = DigestClient::new("alice", "secret");
    let good = answer(&s, &mut client, all, T0);
    let check = |s: &mut DigestServer, c: &Credentials| {
        s.verify(c, "REGISTER", REALM, |a| store.ha1(a), T0)
    };

    let mut c = good.clone();
    c.realm = "elsewhere".into();
    assert_eq!(
        check(&mut s, &c),
        Verdict::Unacceptable(Unacceptable::RealmMismatch)
    );

    let mut c = good.clone();
    c.algorithm = Some(AlgorithmParam::Known(Algorithm::Sha512_256));
    assert_eq!(
        check(&mut s, &c),
        Verdict::Unacceptable(Unacceptable::AlgorithmNotOffered)
    );
    c.algorithm = Some(AlgorithmParam::Unknown("SHA-1".into()));
    assert_eq!(
        check(&mut s, &c),
        Verdict::Unacceptable(Unacceptable::AlgorithmNotOffered)
    );

    let mut c = good.clone();
    c.qop = Some(Qop::AuthInt);
    assert_eq!(
        check(&mut s, &c),
        Verdict::Unacceptable(Unacceptable::QopNotOffered)
    );

    let mut c = good.clone();
    c.nc = None;
    assert_eq!(
        check(&mut s, &c),
        Verdict::Unacceptable(Unacceptable::MissingNonceCountOrCnonce)
    );

    let mut c = good.clone();
    c.opaque = None;
    assert_eq!(
        check(&mut s, &c),
        Verdict::Unacceptable(Unacceptable::OpaqueMismatch)
    );
    c.opaque = Some("00".into());
    assert_eq!(
        check(&mut s, &c),
        Verdict::Unacceptable(Unacceptable::OpaqueMismatch)
    );

    // None of the above burnt the nonce count.
    assert_eq!(check(&mut s, &good), Verdict::Ok);
}

#[test]
fn rfc2069_form_only_when_allowed() {
    let store = Store::new("alice", "secret");
    let request = DigestRequest {
        method: "REGISTER",
        uri: URI,
        body: b"",
    };
    let mut strict = server();
    let mut ch = strict.challenges(REALM, false, T0).remove(1);
    ch.qop.clear();
    let creds = credentials_for(&ch, "alice", "secret", &request, NonceCount::new(1), "c").unwrap();
    assert_eq!(creds.qop, None);
    assert_eq!(
        strict.verify(&creds, "REGISTER", REALM, |a| store.ha1(a), T0),
        Verdict::Unacceptable(Unacceptable::QopRequired)
    );

    let mut lenient = DigestServer::new(
        [7; 32],
        DigestServerConfig {
            allow_rfc2069: true,
            ..DigestServerConfig::default()
        },
    )
    .unwrap();
    assert_eq!(
        lenient.verify(&creds, "REGISTER", REALM, |a| store.ha1(a), T0),
        Verdict::Ok
    );
    let mut wrong = creds.clone();
    wrong.uri = "sip:elsewhere".into();
    assert_eq!(
        lenient.verify(&wrong, "REGISTER", REALM, |a| store.ha1(a), T0),
        Verdict::BadResponse
    );
}

#[test]
fn sess_algorithm_round_trip() {
    let config = DigestServerConfig {
        algorithms: vec![Algorithm::Sha256Sess, Algorithm::Md5Sess],
        ..DigestServerConfig::default()
    };
    let mut s = DigestServer::new([1; 32], config).unwrap();
    let store = Store::new("carol", "pw");
    let mut client = DigestClient::new("carol", "pw");
    let creds = answer(&s, &mut client, all, T0);
    assert_eq!(
        creds.algorithm,
        Some(AlgorithmParam::Known(Algorithm::Sha256Sess))
    );
    let mut asked = None;
    let verdict = s.verify(
        &creds,
        "REGISTER",
        REALM,
        |a| {
            asked = Some(a);
            store.ha1(a)
        },
        T0,
    );
    assert_eq!(verdict, Verdict::Ok);
    assert_eq!(
        asked,
        Some(Algorithm::Sha256),
        "the stored HA1 is the base one"
    );
}

#[test]
fn nonce_table_is_bounded_and_evicted_nonces_go_stale() {
    let config = DigestServerConfig {
        max_tracked_nonces: 8,
        ..DigestServerConfig::default()
    };
    let mut s = DigestServer::new([2; 32], config).unwrap();
    let store = Store::new("alice", "secret");
    let mut client = DigestClient::new("alice", "secret");

    // Expired entries are dropped first: fill the table at T0, then
    // verify at T0 + 400, after their lifetime.
    let old: Vec<Credentials> = (0..8).map(|_| answer(&s, &mut client, all, T0)).collect();
    for c in &old {
        assert_eq!(
            s.verify(c, "REGISTER", REALM, |a| store.ha1(a), T0),
            Verdict::Ok
        );
    }
    assert_eq!(s.tracked_nonces(), 8);
    let now = T0 + 400;
    let fresh = answer(&s, &mut client, all, now);
    assert_eq!(
        s.verify(&fresh, "REGISTER", REALM, |a| store.ha1(a), now),
        Verdict::Ok
    );
    assert_eq!(s.tracked_nonces(), 1);

    // All live: the oldest are evicted, and a request under an evicted
    // nonce is answered Stale rather than trusted.
    let mut live = Vec::new();
    for i in 1..=20u64 {
        let t = now + i;
        let c = answer(&s, &mut client, all, t);
        assert_eq!(
            s.verify(&c, "REGISTER", REALM, |a| store.ha1(a), t),
            Verdict::Ok
        );
        assert!(s.tracked_nonces() <= 8);
        live.push(c);
    }
    let first = &live[0];
    let ch = Challenge {
        nonce: first.nonce.clone(),
        opaque: first.opaque.clone(),
        ..Challenge::parse(&s.challenge(REALM, false, now)[0]).unwrap()
    };
    let again = client
        .answer_again(
            &ch,
            &DigestRequest {
                method: "REGISTER",
                uri: URI,
                body: b"",
            },
        )
        .unwrap();
    assert_eq!(
        s.verify(&again, "REGISTER", REALM, |a| store.ha1(a), now + 21),
        Verdict::Stale
    );
    // The newest nonce is still tracked: its replay is caught.
    let last = &live[19];
    assert_eq!(
        s.verify(last, "REGISTER", REALM, |a| store.ha1(a), now + 21),
        Verdict::Replay
    );
}

#[test]
fn a_burst_within_one_second_overflowing_the_table_is_still_accepted() {
    let config = DigestServerConfig {
        max_tracked_nonces: 8,
        ..DigestServerConfig::default()
    };
    let mut s = DigestServer::new([3; 32], config).unwrap();
    let store = Store::new("alice", "secret");
    let mut client = DigestClient::new("alice", "secret");
    let mut accepted = Vec::new();
    for _ in 0..50 {
        let c = answer(&s, &mut client, all, T0);
        assert_eq!(
            s.verify(&c, "REGISTER", REALM, |a| store.ha1(a), T0),
            Verdict::Ok
        );
        accepted.push(c);
    }
    assert!(s.tracked_nonces() <= 8);
    // The earliest, evicted, cannot be replayed: it is sent back for a
    // fresh nonce.
    assert_eq!(
        s.verify(&accepted[0], "REGISTER", REALM, |a| store.ha1(a), T0),
        Verdict::Stale
    );
}

#[test]
fn server_config_is_checked() {
    let empty = DigestServerConfig {
        algorithms: vec![],
        ..DigestServerConfig::default()
    };
    assert_eq!(
        DigestServer::new([0; 32], empty).err(),
        Some(AuthError::NoAlgorithms)
    );
    assert!(DigestServer::with_random_key(DigestServerConfig::default()).is_ok());
}

#[test]
fn a_server_restarted_with_the_same_key_accepts_its_nonces() {
    let store = Store::new("alice", "secret");
    let before = server();
    let mut client = DigestClient::new("alice", "secret");
    let creds = answer(&before, &mut client, all, T0);
    let mut after = server();
    assert_eq!(
        after.verify(&creds, "REGISTER", REALM, |a| store.ha1(a), T0 + 5),
        Verdict::Ok
    );
    let mut random = DigestServer::with_random_key(DigestServerConfig::default()).unwrap();
    assert_eq!(
        random.verify(&creds, "REGISTER", REALM, |a| store.ha1(a), T0 + 5),
        Verdict::BadNonce
    );
}

#[test]
fn hashes_and_nonces_are_written_in_lowercase_hex() {
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(hex_lower(&all), hex::encode(&all));
    assert_eq!(hex_lower(&[]), "");
    // HA1 of RFC 7616 §3.9.1's user, realm and password: the hex of its MD5.
    assert_eq!(
        Algorithm::Md5.hash(&[b"Mufasa", b"http-auth@example.org", b"Circle of Life"]),
        "3d78807defe7de2157e2b0b6573a855f"
    );
}
