//! Just enough of RTP and RTCP (RFC 3550) to count, latch and demultiplex: the relay reads a
//! few header fields in place and never rewrites a packet.
//!
//! ```text
//!  RFC 3550 §5.1, the fixed RTP header
//!   0                   1                   2                   3
//!   0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//!  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!  |V=2|P|X|  CC   |M|     PT      |       sequence number         |
//!  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!  |                           timestamp                           |
//!  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!  |           synchronization source (SSRC) identifier            |
//!  +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
//!
//!  RFC 3550 §6.4.1, the start of every RTCP packet
//!  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!  |V=2|P|   RC    |   PT=SR=200   |             length            |
//!  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!  |                         SSRC of sender                        |
//!  +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
//! ```

/// The fields of an RTP header the relay uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// Payload type (7 bits), e.g. 0 = PCMU, 8 = PCMA, 101 = telephone-event by convention.
    pub payload_type: u8,
    /// Marker bit.
    pub marker: bool,
    /// Sequence number.
    pub sequence: u16,
    /// RTP timestamp, in units of the payload's clock rate.
    pub timestamp: u32,
    /// Synchronization source.
    pub ssrc: u32,
}

/// What a datagram on a media port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet {
    /// An RTP packet.
    Rtp(RtpHeader),
    /// An RTCP compound packet; `ssrc` is the sender SSRC of its first packet.
    Rtcp {
        /// SSRC of the sender.
        ssrc: u32,
    },
    /// Anything else (STUN, DTLS, garbage): relayed as is, not counted as RTP.
    Other,
}

impl Packet {
    /// The SSRC carried by the packet, if it is RTP or RTCP.
    pub fn ssrc(&self) -> Option<u32> {
        match self {
            Packet::Rtp(h) => Some(h.ssrc),
            Packet::Rtcp { ssrc } => Some(*ssrc),
            Packet::Other => None,
        }
    }

    /// True for RTCP.
    pub fn is_rtcp(&self) -> bool {
        matches!(self, Packet::Rtcp { .. })
    }
}

/// Classifies a datagram.
///
/// RTP and RTCP sharing one port (rtcp-mux) are told apart as RFC 5761 §4 says: the second
/// octet of an RTCP packet (its packet type, 200–204 today) falls in 192–223, a range that RTP
/// payload types (with the marker bit) avoid.
pub fn classify(buf: &[u8]) -> Packet {
    if buf.len() < 8 || buf[0] >> 6 != 2 {
        return Packet::Other;
    }
    if (192..=223).contains(&buf[1]) {
        return Packet::Rtcp {
            ssrc: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        };
    }
    if buf.len() < 12 {
        return Packet::Other;
    }
    Packet::Rtp(RtpHeader {
        payload_type: buf[1] & 0x7f,
        marker: buf[1] & 0x80 != 0,
        sequence: u16::from_be_bytes([buf[2], buf[3]]),
        timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
    })
}

/// The STUN magic cookie (RFC 5389 §6), at bytes 4..8 of every STUN message.
pub const STUN_MAGIC_COOKIE: u32 = 0x2112_a442;

/// True for a STUN message (RFC 5389 §6): at least the 20-byte header, the two most
/// significant bits zero, and the magic cookie at bytes 4..8. ICE connectivity checks and
/// consent/keep-alive binding requests (RFC 7675) look like this; RTP and RTCP start with
/// version bits `10`, so the two never collide.
pub fn is_stun(buf: &[u8]) -> bool {
    buf.len() >= 20
        && buf[0] >> 6 == 0
        && u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) == STUN_MAGIC_COOKIE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_stun_by_its_cookie() {
        let mut req = [0u8; 20];
        req[1] = 0x01; // Binding request
        req[4..8].copy_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
        assert!(is_stun(&req));
        assert!(!is_stun(&req[..19]));
        let mut rtp = req;
        rtp[0] = 0x80;
        assert!(!is_stun(&rtp));
        let mut no_cookie = req;
        no_cookie[4] = 0;
        assert!(!is_stun(&no_cookie));
    }

    #[test]
    fn parses_rtp_header() {
        let pkt = [
            0x80,
            0x80 | 101,
            0x12,
            0x34,
            0,
            0,
            0x01,
            0x40,
            0xde,
            0xad,
            0xbe,
            0xef,
            1,
            2,
            3,
        ];
        assert_eq!(
            classify(&pkt),
            Packet::Rtp(RtpHeader {
                payload_type: 101,
                marker: true,
                sequence: 0x1234,
                timestamp: 320,
                ssrc: 0xdead_beef,
            })
        );
    }

    #[test]
    fn tells_rtcp_from_rtp_on_a_muxed_port() {
        // RTCP receiver report (PT 201), sender SSRC 7.
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 7];
        assert_eq!(classify(&rr), Packet::Rtcp { ssrc: 7 });
        // RTP PT 0 with the marker set is 0x80, outside 192..=223.
        let mut rtp = [0u8; 12];
        rtp[0] = 0x80;
        rtp[1] = 0x80;
        assert!(matches!(classify(&rtp), Packet::Rtp(_)));
    }

    #[test]
    fn other_traffic_is_not_rtp() {
        // A STUN binding request starts with two zero bits.
        let stun = [0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0];
        assert_eq!(classify(&stun), Packet::Other);
        assert_eq!(classify(&[0x80, 0]), Packet::Other);
        // RTP-looking but shorter than the fixed header.
        assert_eq!(classify(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0]), Packet::Other);
    }
}
