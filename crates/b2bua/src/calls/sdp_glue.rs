//! SDP as the call engine uses it: offers that point at the relay, the peer address each
//! leg's SDP announces, and pass-through rewriting. Built on `sip_core::sdp`.

use bytes::Bytes;
use media::srtp::{SrtpKey, SDES_SUITE};
use media::{LegStats, SessionStats};
use serde_json::json;
use sip_core::sdp::{accepted_codecs, audio_offer, AcceptedCodec, Codec, SessionDescription};
use std::net::SocketAddr;

/// Our `o=` line on one leg: one session id, a version bumped on every change (RFC 3264 §8).
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    id: u64,
    version: u64,
}

impl Origin {
    pub(crate) fn new() -> Origin {
        let id = u64::from(rand::random::<u32>()) + 1;
        Origin { id, version: id }
    }

    fn stamp(&mut self, sdp: &mut SessionDescription, changed: bool) {
        if changed {
            self.version += 1;
        }
        sdp.origin.username = "dialbridge".into();
        sdp.origin.session_id = self.id.to_string();
        sdp.origin.session_version = self.version;
    }
}

/// The offer to the agent: every codec dialbridge passes through, at the relay's agent port.
pub(crate) fn agent_offer(relay: SocketAddr, origin: &mut Origin) -> Bytes {
    let mut sdp = audio_offer(relay.ip(), relay.port(), origin.id, Codec::DEFAULTS);
    origin.stamp(&mut sdp, false);
    sdp.to_bytes()
}

/// The codecs the agent's answer accepted of our offer, as [`customer_offer`] read them,
/// with the two descriptions they were read from: [`realign_agent`] takes them instead of
/// reading both again, unless either has changed since.
#[derive(Debug, Clone)]
pub(crate) struct AgentAccepted {
    offer: Bytes,
    answer: Bytes,
    codecs: Vec<AcceptedCodec>,
}

/// The offer to the customer: the codecs the agent accepted (in the agent's order of
/// preference), at the relay's customer port. Falls back to every codec when the agent's
/// answer cannot be read. With it, what the agent accepted (`None` when either description
/// could not be read).
pub(crate) fn customer_offer(
    relay: SocketAddr,
    origin: &mut Origin,
    agent_offer: &Bytes,
    agent_answer: &Bytes,
) -> (Bytes, Option<AgentAccepted>) {
    let mut sdp = audio_offer(relay.ip(), relay.port(), origin.id, Codec::DEFAULTS);
    let mut kept = None;
    if let (Ok(o), Ok(a)) = (
        SessionDescription::parse(agent_offer),
        SessionDescription::parse(agent_answer),
    ) {
        let accepted = accepted_codecs(&o, &a);
        if !accepted.is_empty() {
            let mut narrowed = sdp.clone();
            if narrowed.retain_audio_codecs(&accepted) {
                sdp = narrowed;
            }
        }
        kept = Some(AgentAccepted {
            offer: agent_offer.clone(),
            answer: agent_answer.clone(),
            codecs: accepted,
        });
    }
    origin.stamp(&mut sdp, false);
    (sdp.to_bytes(), kept)
}

/// When the customer accepted fewer codecs than the agent (the agent could send one the
/// customer does not take), the new offer for the agent: our last offer narrowed to the
/// customer's codecs, as a new version. `None` when nothing must change. `kept`: what
/// [`customer_offer`] read of the agent's side, used when the agent's offer and answer are
/// still the ones it read.
pub(crate) fn realign_agent(
    agent_offer: &Bytes,
    agent_answer: &Bytes,
    kept: Option<AgentAccepted>,
    customer_offer: &[u8],
    customer_answer: &[u8],
    origin: &mut Origin,
) -> Option<Bytes> {
    let co = SessionDescription::parse(customer_offer).ok()?;
    let ca = SessionDescription::parse(customer_answer).ok()?;
    let customer = accepted_codecs(&co, &ca);
    if customer.is_empty() {
        return None;
    }
    let mut ao = None;
    let agent = match kept.filter(|k| k.offer == *agent_offer && k.answer == *agent_answer) {
        Some(k) => k.codecs,
        None => {
            let o = SessionDescription::parse(agent_offer).ok()?;
            let a = SessionDescription::parse(agent_answer).ok()?;
            let agent = accepted_codecs(&o, &a);
            ao = Some(o);
            agent
        }
    };
    let all_taken = agent.iter().all(|a| {
        customer
            .iter()
            .any(|c| c.same_codec(&a.encoding, a.clock_rate))
    });
    if all_taken {
        return None;
    }
    let mut offer = match ao {
        Some(o) => o,
        None => SessionDescription::parse(agent_offer).ok()?,
    };
    if !offer.retain_audio_codecs(&customer) {
        return None;
    }
    origin.stamp(&mut offer, true);
    Some(offer.to_bytes())
}

/// Where a leg's peer wants its media (a hint for the relay, which latches anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerMedia {
    pub(crate) rtp: SocketAddr,
    pub(crate) rtcp: Option<SocketAddr>,
    pub(crate) mux: bool,
    pub(crate) clock_rate: u32,
}

/// The peer media of an SDP body, `None` when it has no usable audio stream (rejected,
/// or held with `c=0.0.0.0`).
pub(crate) fn peer_of(body: &[u8]) -> Option<PeerMedia> {
    let sdp = SessionDescription::parse(body).ok()?;
    let audio = sdp.first_audio()?;
    if audio.is_rejected() {
        return None;
    }
    let ip = sdp.connection_of(audio)?.ip()?;
    if ip.is_unspecified() {
        return None;
    }
    let rtcp = audio
        .rtcp()
        .map(|(port, addr)| SocketAddr::new(addr.unwrap_or(ip), port));
    let clock_rate = audio
        .payload_types()
        .next()
        .and_then(|pt| audio.codec(pt).map(|c| c.clock_rate))
        .unwrap_or(8000);
    Some(PeerMedia {
        rtp: SocketAddr::new(ip, audio.port),
        rtcp,
        mux: audio.rtcp_mux(),
        clock_rate,
    })
}

/// What the relay needs to play a prompt to a peer and hear its DTMF, from the SDP it
/// answered: the G.711 law to send (its first G.711 codec; PCMU when it took none) and the
/// payload type of its telephone-events, if it took them.
pub(crate) fn prompt_media(body: &[u8]) -> (media::g711::G711, Option<u8>) {
    use media::g711::G711;
    let Ok(sdp) = SessionDescription::parse(body) else {
        return (G711::Pcmu, None);
    };
    let Some(audio) = sdp.first_audio() else {
        return (G711::Pcmu, None);
    };
    let mut law = None;
    let mut events = None;
    for pt in audio.payload_types() {
        let Some(c) = audio.codec(pt) else { continue };
        if c.encoding.eq_ignore_ascii_case("telephone-event") {
            events.get_or_insert(pt);
        } else if c.encoding.eq_ignore_ascii_case("PCMU") {
            law.get_or_insert(G711::Pcmu);
        } else if c.encoding.eq_ignore_ascii_case("PCMA") {
            law.get_or_insert(G711::Pcma);
        }
    }
    (law.unwrap_or(G711::Pcmu), events)
}

/// SDES (RFC 4568) on the first audio stream: `RTP/SAVP` and our `a=crypto:1
/// AES_CM_128_HMAC_SHA1_80 inline:<key>` (what we send is encrypted with `key`), or, with
/// no key, plain `RTP/AVP` without `a=crypto` (the relay ends SRTP: keys never pass from one
/// leg to the other).
fn set_sdes(sdp: &mut SessionDescription, key: Option<&SrtpKey>) {
    let Some(i) = sdp.first_audio_index() else {
        return;
    };
    let m = &mut sdp.media[i];
    m.remove_attributes("crypto");
    match key {
        Some(k) => {
            m.proto = "RTP/SAVP".into();
            m.attributes.push(sip_core::sdp::Attribute::new(
                "crypto",
                &format!("1 {SDES_SUITE} inline:{}", k.to_inline()),
            ));
        }
        None => {
            if m.proto.eq_ignore_ascii_case("RTP/SAVP") {
                m.proto = "RTP/AVP".into();
            }
        }
    }
}

/// Our offer with SDES keyed by `key` (toward a trunk with `srtp = "sdes"`).
pub(crate) fn with_sdes(offer: &[u8], key: &SrtpKey) -> Bytes {
    let Ok(mut sdp) = SessionDescription::parse(offer) else {
        return Bytes::copy_from_slice(offer);
    };
    set_sdes(&mut sdp, Some(key));
    sdp.to_bytes()
}

/// Our offer as a WebRTC browser takes it (RFC 8829 / RFC 8843 basics): the G.711 codecs
/// and telephone-event of `offer` only (no transcoding: RFC 7874's mandatory codecs), profile
/// `UDP/TLS/RTP/SAVPF`, `a=ice-lite` with our ufrag/pwd and one host candidate (the relay
/// port), `a=fingerprint` of the relay's DTLS certificate with `a=setup:actpass` (the
/// browser then takes the DTLS client's role), `a=rtcp-mux`, `a=mid:0` and
/// `a=group:BUNDLE 0`.
pub(crate) fn webrtc_offer(offer: &[u8], w: &super::machine::WebRtcOffer) -> Bytes {
    webrtc_sdp(offer, w, "actpass", "0")
}

/// Our answer to a browser's offer (it called): `sdp` (the other leg's answer rewritten to
/// the relay) made WebRTC's with `a=setup:passive` (the relay is the DTLS server) and the
/// offer's `a=mid`.
pub(crate) fn webrtc_answer(sdp: &[u8], w: &super::machine::WebRtcOffer, offer: &[u8]) -> Bytes {
    let mid = SessionDescription::parse(offer)
        .ok()
        .and_then(|o| {
            o.first_audio()
                .and_then(|m| m.attribute_value("mid"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "0".to_string());
    webrtc_sdp(sdp, w, "passive", &mid)
}

/// Whether an SDP body is a WebRTC endpoint's (a browser): a `SAVPF` profile, or ICE
/// credentials with a DTLS fingerprint.
pub(crate) fn is_webrtc(body: &[u8]) -> bool {
    let Ok(sdp) = SessionDescription::parse(body) else {
        return false;
    };
    let Some(m) = sdp.first_audio() else {
        return false;
    };
    let has = |name: &str| m.has_attribute(name) || sdp.attribute(name).is_some();
    m.proto.to_ascii_uppercase().contains("SAVPF") || (has("fingerprint") && has("ice-ufrag"))
}

/// `sdp` as WebRTC SDP toward a browser (see [`webrtc_offer`]) with `a=setup:<setup>`:
/// `actpass` in our offers, `passive` in our answers (the relay stays the DTLS server).
fn webrtc_sdp(offer: &[u8], w: &super::machine::WebRtcOffer, setup: &str, mid: &str) -> Bytes {
    use sip_core::sdp::Attribute;
    let Ok(mut sdp) = SessionDescription::parse(offer) else {
        return Bytes::copy_from_slice(offer);
    };
    let Some(i) = sdp.first_audio_index() else {
        return Bytes::copy_from_slice(offer);
    };
    let ip = sdp
        .connection_of(&sdp.media[i])
        .and_then(|c| c.ip())
        .or_else(|| sdp.connection.as_ref().and_then(|c| c.ip()));
    sdp.attributes
        .retain(|a| a.name != "ice-lite" && a.name != "group");
    // One stream, bundled with itself (RFC 8843): what browsers' own offers say, and what
    // a peer connection with bundlePolicy max-bundle requires.
    sdp.attributes
        .push(Attribute::with_value("group", format!("BUNDLE {mid}")));
    sdp.attributes.push(Attribute::property("ice-lite"));
    let m = &mut sdp.media[i];
    let mut narrowed = m.clone();
    let kept = narrowed.retain_formats(|_, map| {
        map.is_some_and(|c| {
            ["PCMU", "PCMA", "telephone-event"]
                .iter()
                .any(|e| c.encoding.eq_ignore_ascii_case(e))
        })
    });
    if kept {
        *m = narrowed;
    }
    m.proto = "UDP/TLS/RTP/SAVPF".into();
    for name in [
        "crypto",
        "rtcp",
        "rtcp-mux",
        "ice-ufrag",
        "ice-pwd",
        "fingerprint",
        "setup",
        "mid",
        "candidate",
        "end-of-candidates",
    ] {
        m.remove_attributes(name);
    }
    let port = m.port;
    m.attributes.push(Attribute::new("mid", mid));
    m.attributes.push(Attribute::new("ice-ufrag", &w.ice.ufrag));
    m.attributes.push(Attribute::new("ice-pwd", &w.ice.pwd));
    m.attributes.push(Attribute::with_value(
        "fingerprint",
        w.fingerprint.to_string(),
    ));
    m.attributes.push(Attribute::new("setup", setup));
    m.attributes.push(Attribute::property("rtcp-mux"));
    if let Some(ip) = ip {
        m.attributes.push(Attribute::new(
            "candidate",
            &format!("1 1 udp 2130706431 {ip} {port} typ host"),
        ));
        m.attributes.push(Attribute::property("end-of-candidates"));
    }
    sdp.to_bytes()
}

/// The `a=fingerprint` of a browser's SDP (of its audio stream, else of the session).
pub(crate) fn webrtc_fingerprint(body: &[u8]) -> Option<media::webrtc::Fingerprint> {
    let sdp = SessionDescription::parse(body).ok()?;
    let audio = sdp.first_audio()?;
    audio
        .attribute_value("fingerprint")
        .or_else(|| {
            sdp.attribute("fingerprint")
                .and_then(|a| a.value.as_deref())
        })
        .and_then(media::webrtc::Fingerprint::parse)
}

/// The key of the first `a=crypto` of the first audio stream that uses the suite we speak
/// (the peer's key in its SDP, ours in ours); `None` without one.
pub(crate) fn sdes_key(body: &[u8]) -> Option<SrtpKey> {
    let sdp = SessionDescription::parse(body).ok()?;
    let audio = sdp.first_audio()?;
    audio
        .cryptos()
        .iter()
        .filter(|c| c.suite.eq_ignore_ascii_case(SDES_SUITE))
        .find_map(|c| SrtpKey::from_inline(c.inline))
}

/// One leg's SDP passed to the other leg: the same codecs and direction, pointed at the
/// relay port of the other leg, under our own `o=` line, with SDES as the other leg speaks
/// it (`sdes`: our key on that leg, else plain). Streams other than the first audio one are
/// refused (port 0): the relay carries audio only.
pub(crate) fn rewrite(
    body: &[u8],
    relay: SocketAddr,
    origin: &mut Origin,
    sdes: Option<&SrtpKey>,
) -> Bytes {
    let Ok(mut sdp) = SessionDescription::parse(body) else {
        return Bytes::copy_from_slice(body);
    };
    let first = sdp.first_audio_index();
    sdp.set_connection(relay.ip());
    for (i, m) in sdp.media.iter_mut().enumerate() {
        if Some(i) == first {
            if !m.is_rejected() {
                m.set_port(relay.port());
                if !m.rtcp_mux() {
                    m.set_rtcp(relay.port().saturating_add(1), None);
                }
            }
        } else {
            m.set_port(0);
        }
    }
    strip_webrtc(&mut sdp);
    set_sdes(&mut sdp, sdes);
    origin.stamp(&mut sdp, true);
    sdp.to_bytes()
}

/// What ends at the relay on a WebRTC leg (ICE, DTLS, BUNDLE, the browser's RTP header
/// extensions and feedback) taken out of SDP passed to the other leg, whose profile becomes
/// plain `RTP/AVP` (SDES then applies as that leg speaks it). SDP that is not WebRTC's (no
/// `SAVPF` profile, no ICE credentials, no fingerprint) is left as it is.
fn strip_webrtc(sdp: &mut SessionDescription) {
    let webrtc = sdp.attribute("fingerprint").is_some()
        || sdp.attribute("ice-ufrag").is_some()
        || sdp.media.iter().any(|m| {
            m.proto.to_ascii_uppercase().contains("SAVPF")
                || m.has_attribute("fingerprint")
                || m.has_attribute("ice-ufrag")
        });
    if !webrtc {
        return;
    }
    const ENDS_AT_RELAY: &[&str] = &[
        "ice-ufrag",
        "ice-pwd",
        "ice-options",
        "ice-lite",
        "fingerprint",
        "setup",
        "candidate",
        "end-of-candidates",
        "mid",
        "msid",
        "ssrc",
        "ssrc-group",
        "rtcp-fb",
        "extmap",
        "extmap-allow-mixed",
        "rtcp-rsize",
    ];
    sdp.attributes.retain(|a| {
        !ENDS_AT_RELAY.contains(&a.name.as_ref()) && a.name != "group" && a.name != "msid-semantic"
    });
    for m in &mut sdp.media {
        if m.proto.to_ascii_uppercase().contains("SAVPF")
            || m.proto.eq_ignore_ascii_case("UDP/TLS/RTP/SAVP")
        {
            m.proto = "RTP/AVP".into();
        }
        for name in ENDS_AT_RELAY {
            m.remove_attributes(name);
        }
    }
}

/// `sdp` passed toward a leg whose SDP so far (`local`) is WebRTC: made WebRTC again with the
/// same ICE credentials and fingerprint (no ICE restart, no new DTLS), as an offer
/// (`offer`) or an answer. Unchanged when `local` is not WebRTC.
pub(crate) fn keep_webrtc(sdp: Bytes, local: &[u8], offer: bool) -> Bytes {
    match webrtc_params(local) {
        Some((w, mid)) => webrtc_sdp(&sdp, &w, if offer { "actpass" } else { "passive" }, &mid),
        None => sdp,
    }
}

/// The ICE credentials and fingerprint of our WebRTC SDP on a leg, if it is one.
fn webrtc_params(local: &[u8]) -> Option<(super::machine::WebRtcOffer, String)> {
    let sdp = SessionDescription::parse(local).ok()?;
    let audio = sdp.first_audio()?;
    let mid = audio.attribute_value("mid").unwrap_or("0").to_string();
    Some((
        super::machine::WebRtcOffer {
            ice: media::webrtc::IceCredentials {
                ufrag: audio.attribute_value("ice-ufrag")?.to_string(),
                pwd: audio.attribute_value("ice-pwd")?.to_string(),
            },
            fingerprint: media::webrtc::Fingerprint::parse(audio.attribute_value("fingerprint")?)?,
        },
        mid,
    ))
}

/// Our answer to an offer we take locally (no pass-through): our last SDP with the direction
/// mirrored (sendonly -> recvonly, inactive -> inactive, RFC 3264 §6.1), as a new version
/// when it changed.
pub(crate) fn mirror_direction(offer: &[u8], local: &[u8], origin: &mut Origin) -> Bytes {
    let (Ok(o), Ok(mut ours)) = (
        SessionDescription::parse(offer),
        SessionDescription::parse(local),
    ) else {
        return Bytes::copy_from_slice(local);
    };
    let Some(audio) = o.first_audio() else {
        return Bytes::copy_from_slice(local);
    };
    let want = o.direction_of(audio).reversed();
    let have = ours
        .first_audio()
        .map(|m| ours.direction_of(m))
        .unwrap_or(want);
    if want == have {
        return Bytes::copy_from_slice(local);
    }
    ours.set_direction(want);
    origin.stamp(&mut ours, true);
    ours.to_bytes()
}

/// Our last SDP with the audio direction set to `direction` (hold: `sendonly`, RFC 3264
/// §8.4; resume: `sendrecv`), as a new version.
pub(crate) fn with_direction(
    local: &[u8],
    direction: sip_core::sdp::Direction,
    origin: &mut Origin,
) -> Bytes {
    let Ok(mut sdp) = SessionDescription::parse(local) else {
        return Bytes::copy_from_slice(local);
    };
    sdp.set_direction(direction);
    origin.stamp(&mut sdp, true);
    sdp.to_bytes()
}

/// The direction of the first audio stream of `body` (`None` without one).
pub(crate) fn audio_direction(body: &[u8]) -> Option<sip_core::sdp::Direction> {
    let sdp = SessionDescription::parse(body).ok()?;
    let audio = sdp.first_audio()?;
    Some(sdp.direction_of(audio))
}

/// The payload type a peer sends first (the first format of its audio stream): what the
/// mixer must be able to decode. `None` without a usable audio stream.
pub(crate) fn first_payload_type(body: &[u8]) -> Option<u8> {
    let sdp = SessionDescription::parse(body).ok()?;
    let audio = sdp.first_audio()?;
    if audio.is_rejected() {
        return None;
    }
    let pt = audio.payload_types().next();
    pt
}

/// An offer of one G.711 law (PCMU 0 / PCMA 8) plus RFC 4733 events at `relay`: what a
/// supervisor's phone is offered, in the law the mixer sends it.
pub(crate) fn g711_offer(relay: SocketAddr, payload_type: u8, origin: &mut Origin) -> Bytes {
    let law = if payload_type == 8 {
        Codec::PCMA
    } else {
        Codec::PCMU
    };
    let mut sdp = audio_offer(relay.ip(), relay.port(), origin.id, &[law]);
    origin.stamp(&mut sdp, false);
    sdp.to_bytes()
}

/// The SDP we last sent, again (a session refresh: same version, RFC 4028 §9).
pub(crate) fn refresh(local: &[u8], _origin: &mut Origin) -> Bytes {
    Bytes::copy_from_slice(local)
}

/// Whether `new` is the same session version as `old` (a refresh, not a change: RFC 3264 §8).
pub(crate) fn same_media(new: &[u8], old: &[u8]) -> bool {
    match (
        SessionDescription::parse(new),
        SessionDescription::parse(old),
    ) {
        (Ok(n), Ok(o)) => {
            n.origin.session_id == o.origin.session_id
                && n.origin.session_version == o.origin.session_version
        }
        _ => false,
    }
}

fn leg_json(s: &LegStats) -> serde_json::Value {
    json!({
        "rx_packets": s.rx_packets,
        "rx_bytes": s.rx_bytes,
        "tx_packets": s.tx_packets,
        "tx_bytes": s.tx_bytes,
        "rtcp_rx_packets": s.rx_rtcp_packets,
        "rtcp_tx_packets": s.tx_rtcp_packets,
        "expected": s.expected,
        "lost": s.lost,
        "jitter_ms": s.jitter_duration().as_secs_f64() * 1000.0,
        "remote_rtp": s.remote_rtp.map(|a| a.to_string()),
        "ssrc": s.ssrc,
        "hijack_dropped": s.hijack_dropped,
        "srtp_dropped": s.srtp_dropped,
    })
}

/// The media statistics of a call, per leg, as stored and returned by the API.
pub(crate) fn stats_json(s: &SessionStats) -> serde_json::Value {
    json!({ "agent": leg_json(&s.a), "customer": leg_json(&s.b) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT_ANSWER: &[u8] = b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8 100\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:100 telephone-event/8000\r\n";

    #[test]
    fn offers_point_at_the_relay_and_narrow_codecs() {
        let relay: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mut o = Origin::new();
        let offer = agent_offer(relay, &mut o);
        let p = peer_of(&offer).unwrap();
        assert_eq!(p.rtp, relay);
        let text = String::from_utf8_lossy(&offer).into_owned();
        assert!(
            text.contains("PCMU/8000") && text.contains("opus/48000/2"),
            "{text}"
        );
        let (c, kept) = customer_offer(
            "127.0.0.1:40002".parse().unwrap(),
            &mut Origin::new(),
            &offer,
            &Bytes::from_static(AGENT_ANSWER),
        );
        let kept = kept.unwrap();
        let names: Vec<&str> = kept.codecs.iter().map(|c| c.encoding.as_str()).collect();
        assert_eq!(names, ["PCMA", "telephone-event"]);
        // An answer that cannot be read leaves every codec offered, and nothing kept.
        let (all, none) = customer_offer(
            "127.0.0.1:40002".parse().unwrap(),
            &mut Origin::new(),
            &offer,
            &Bytes::from_static(b"not sdp"),
        );
        assert!(none.is_none());
        assert!(String::from_utf8_lossy(&all).contains("PCMU/8000"));
        let text = String::from_utf8_lossy(&c).into_owned();
        assert!(text.contains("PCMA/8000"), "{text}");
        assert!(text.contains("telephone-event/8000"), "{text}");
        assert!(!text.contains("PCMU") && !text.contains("opus"), "{text}");
    }

    #[test]
    fn agent_is_realigned_to_the_customer_codecs() {
        let mut o = Origin::new();
        let offer = agent_offer("127.0.0.1:40000".parse().unwrap(), &mut o);
        let agent_answer = Bytes::from_static(b"v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n");
        let mut co = Origin::new();
        let (cust_offer, kept) = customer_offer(
            "127.0.0.1:40002".parse().unwrap(),
            &mut co,
            &offer,
            &agent_answer,
        );
        // With what the customer's offer read of the agent kept, and without it: the same.
        for kept in [kept.clone(), None] {
            let mut o = o.clone();
            // The customer takes PCMA (and DTMF) only: the agent must be told.
            let re = realign_agent(
                &offer,
                &agent_answer,
                kept.clone(),
                &cust_offer,
                AGENT_ANSWER,
                &mut o,
            )
            .unwrap();
            let text = String::from_utf8_lossy(&re).into_owned();
            assert!(
                text.contains("PCMA/8000") && !text.contains("PCMU"),
                "{text}"
            );
            // The customer takes everything the agent took: nothing to do.
            assert!(realign_agent(
                &offer,
                &agent_answer,
                kept,
                &cust_offer,
                &agent_answer,
                &mut o
            )
            .is_none());
        }
        // Kept for another answer of the agent's (it took PCMA only since): not used.
        let (_, stale) = customer_offer(
            "127.0.0.1:40002".parse().unwrap(),
            &mut Origin::new(),
            &offer,
            &agent_answer,
        );
        let pcma_only = Bytes::from_static(AGENT_ANSWER);
        assert!(
            realign_agent(&offer, &pcma_only, stale, &cust_offer, AGENT_ANSWER, &mut o).is_none()
        );
    }

    #[test]
    fn hold_is_mirrored() {
        let mut o = Origin::new();
        let ours = agent_offer("127.0.0.1:40000".parse().unwrap(), &mut o);
        let hold = b"v=0\r\no=a 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=sendonly\r\n";
        let ans = mirror_direction(hold, &ours, &mut o);
        let text = String::from_utf8_lossy(&ans).into_owned();
        assert!(
            text.contains("a=recvonly") && !text.contains("a=sendrecv"),
            "{text}"
        );
        // A sendrecv offer leaves our sendrecv SDP as it was.
        assert_eq!(mirror_direction(AGENT_ANSWER, &ours, &mut o), ours);
    }

    #[test]
    fn peer_and_rewrite() {
        let p = peer_of(AGENT_ANSWER).unwrap();
        assert_eq!(p.rtp, "127.0.0.1:6000".parse().unwrap());
        assert_eq!(p.clock_rate, 8000);
        let mut o = Origin::new();
        let r = rewrite(
            AGENT_ANSWER,
            "10.0.0.9:41000".parse().unwrap(),
            &mut o,
            None,
        );
        let q = peer_of(&r).unwrap();
        assert_eq!(q.rtp, "10.0.0.9:41000".parse().unwrap());
        assert_eq!(q.rtcp, Some("10.0.0.9:41001".parse().unwrap()));
        let r2 = rewrite(
            AGENT_ANSWER,
            "10.0.0.9:41000".parse().unwrap(),
            &mut o,
            None,
        );
        assert!(!same_media(&r, &r2), "each rewrite is a new version");
        assert!(same_media(&r2, &r2));
        let held = b"v=0\r\no=a 1 1 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
        assert!(peer_of(held).is_none());
    }

    #[test]
    fn sdes_is_offered_read_back_and_never_passed_between_legs() {
        let key = SrtpKey::random();
        let mut o = Origin::new();
        let plain = agent_offer("10.0.0.9:41000".parse().unwrap(), &mut o);
        let offer = with_sdes(&plain, &key);
        let text = String::from_utf8_lossy(&offer).into_owned();
        assert!(text.contains("m=audio 41000 RTP/SAVP "), "{text}");
        assert!(
            text.contains(&format!(
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}",
                key.to_inline()
            )),
            "{text}"
        );
        assert_eq!(sdes_key(&offer), Some(key.clone()));
        assert_eq!(sdes_key(&plain), None);
        // The carrier's answer, with its key and a suite we do not speak before it.
        let theirs = SrtpKey::random();
        let answer = format!(
            "v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/SAVP 0\r\na=crypto:2 AES_256_CM_HMAC_SHA1_80 inline:AAAA\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}|2^31\r\n",
            theirs.to_inline()
        );
        assert_eq!(sdes_key(answer.as_bytes()), Some(theirs.clone()));
        // Passed to the plain agent leg: no keys, plain RTP/AVP.
        let to_agent = rewrite(
            answer.as_bytes(),
            "10.0.0.9:41002".parse().unwrap(),
            &mut o,
            None,
        );
        let t = String::from_utf8_lossy(&to_agent).into_owned();
        assert!(!t.contains("crypto") && t.contains("RTP/AVP"), "{t}");
        // Passed to the SDES leg: our key, not the other side's.
        let to_carrier = rewrite(
            &plain,
            "10.0.0.9:41000".parse().unwrap(),
            &mut o,
            Some(&key),
        );
        assert_eq!(sdes_key(&to_carrier), Some(key));
    }

    #[test]
    fn the_fingerprint_of_a_browser_answer_is_read() {
        let fp = ["0A"; 32].join(":");
        let media_level = format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 127.0.0.1\r\na=fingerprint:sha-256 {fp}\r\n");
        let session_level = format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=fingerprint:sha-256 {fp}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 127.0.0.1\r\n");
        for body in [media_level, session_level] {
            let got = webrtc_fingerprint(body.as_bytes()).expect("fingerprint");
            assert_eq!(got.to_string(), format!("sha-256 {fp}"));
        }
        assert!(webrtc_fingerprint(
            b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
        )
        .is_none());
    }

    #[test]
    fn sdp_passed_between_a_browser_and_a_plain_leg_is_made_for_each() {
        let w = crate::calls::machine::WebRtcOffer {
            ice: media::webrtc::IceCredentials::random(),
            fingerprint: media::webrtc::Fingerprint::parse(&format!(
                "sha-256 {}",
                ["0B"; 32].join(":")
            ))
            .unwrap(),
        };
        let relay: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let ours = webrtc_offer(&agent_offer(relay, &mut Origin::new()), &w);
        // The carrier's re-offer (hold) toward the browser: WebRTC again, same ICE and DTLS.
        let hold = b"v=0\r\no=c 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 41000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=sendonly\r\n";
        let to_browser = keep_webrtc(rewrite(hold, relay, &mut Origin::new(), None), &ours, true);
        let t = String::from_utf8_lossy(&to_browser).to_string();
        for want in [
            "UDP/TLS/RTP/SAVPF 0 8",
            &format!("a=ice-ufrag:{}", w.ice.ufrag),
            "a=setup:actpass",
            "a=sendonly",
            "a=rtcp-mux",
        ] {
            assert!(t.contains(want), "{want} missing: {t}");
        }
        let answer = keep_webrtc(rewrite(hold, relay, &mut Origin::new(), None), &ours, false);
        assert!(String::from_utf8_lossy(&answer).contains("a=setup:passive"));
        // The browser's re-offer toward the carrier: plain, nothing of ICE or DTLS.
        let from_browser = format!("v=0\r\no=- 4 3 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=msid-semantic: WMS x\r\nm=audio 50000 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 127.0.0.1\r\na=mid:0\r\na=ice-ufrag:brws\r\na=ice-pwd:browserbrowserbrowser12\r\na=fingerprint:sha-256 {}\r\na=setup:active\r\na=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\na=sendonly\r\na=candidate:1 1 udp 1 127.0.0.1 50000 typ host\r\n", ["0A"; 32].join(":"));
        let plain = rewrite(from_browser.as_bytes(), relay, &mut Origin::new(), None);
        let p = String::from_utf8_lossy(&plain).to_string();
        assert!(p.contains("m=audio 40000 RTP/AVP 0"), "{p}");
        for gone in [
            "ice-",
            "fingerprint",
            "setup",
            "candidate",
            "mid",
            "group",
            "msid",
        ] {
            assert!(!p.contains(gone), "{gone} left in {p}");
        }
        assert_eq!(
            keep_webrtc(plain.clone(), hold, true),
            plain,
            "a plain leg stays plain"
        );
    }
}
