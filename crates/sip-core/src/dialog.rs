//! SIP dialogs (RFC 3261 §12, §13.2.2.4, §14, §15): the peer-to-peer relationship that an
//! INVITE sets up between two user agents, and the state that requests inside it are built
//! from and checked against.
//!
//! A [`Dialog`] is sans-IO: it is fed the messages of its call ([`Dialog::receive_request`],
//! [`Dialog::receive_response`], [`Dialog::confirm`]) and asked to build the requests that go
//! out inside it ([`Dialog::new_request`], [`Dialog::ack_for_2xx`]). It owns no socket, no
//! timer and no transaction; the endpoint adds the Via, Max-Forwards and User-Agent of every
//! request it sends, and sends it to [`Dialog::next_hop`].
//!
//! What is where in RFC 3261:
//! - §12.1.1 / §12.1.2: the dialog state a UAS ([`Dialog::uas`]) and a UAC ([`Dialog::uac`])
//!   take from the dialog-creating INVITE and its response.
//! - §12.2.1.1: the Request-URI, Route set, From/To/Call-ID/CSeq of requests sent inside the
//!   dialog, loose (`;lr`) and strict routers.
//! - §12.2.1.2 / §12.2.2: responses and requests received inside the dialog: target refresh,
//!   CSeq ordering (500 for an out-of-order request), 481/408 ending the dialog.
//! - §13.2.2.4: a 2xx confirms an early dialog (its route set is recomputed from the 2xx) and is
//!   acknowledged with an ACK carrying the INVITE's CSeq number.
//! - §14: a re-INVITE (or an UPDATE, RFC 3311) is a target refresh request.
//! - §15: BYE ends the dialog.
//!
//! What it does not do: send, retransmit or time anything (the transaction layer and the
//! endpoint do); hold the offer/answer state (the call does); remember the credentials of the
//! INVITE for the ACK (§13.2.2.4 asks the ACK to carry the INVITE's Authorization and
//! Proxy-Authorization: the caller copies them).

use bytes::Bytes;
use std::fmt;

use crate::message::{
    HeaderAccess, HeaderName, Method, NameAddr, ParseError, Request, Response, Uri,
};

/// The largest CSeq sequence number (RFC 3261 §8.1.1.5: less than 2**31).
const MAX_CSEQ: u32 = (1 << 31) - 1;

/// Errors of the dialog layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    /// The response (or request) carries no To tag, so it neither creates nor belongs to a
    /// dialog.
    #[error("no To tag: the message does not belong to a dialog")]
    MissingToTag,
    /// A dialog-creating message without a Contact: the remote target is unknown.
    #[error("no Contact: the remote target is unknown")]
    MissingContact,
    /// A header the dialog needs is missing or malformed.
    #[error("missing or malformed {0} header")]
    BadHeader(&'static str),
    /// A request whose CSeq is not above the last one received in the dialog (§12.2.2);
    /// the UAS answers 500.
    #[error("CSeq {got} is not above the last remote CSeq {last}")]
    CSeqOutOfOrder { got: u32, last: u32 },
    /// A response that cannot create a dialog (100, or a final non-2xx).
    #[error("a {0} response does not create a dialog")]
    NotDialogCreating(u16),
    /// A response that cannot confirm a dialog (not 2xx).
    #[error("a {0} response does not confirm a dialog")]
    NotSuccess(u16),
    /// The message's Call-ID or tags are not those of this dialog (or the response does not
    /// answer the request given with it).
    #[error("the message belongs to another dialog")]
    NotThisDialog,
    /// The dialog has ended; a request for it is answered 481.
    #[error("the dialog is terminated")]
    Terminated,
}

fn header<T>(r: Result<T, ParseError>, name: &'static str) -> Result<T, DialogError> {
    r.map_err(|_| DialogError::BadHeader(name))
}

fn tag_of(na: &NameAddr) -> Option<String> {
    view_tag(na.tag())
}

fn view_tag(tag: Option<&[u8]>) -> Option<String> {
    tag.map(|t| String::from_utf8_lossy(t).into_owned())
}

/// Call-ID, To tag and From tag of a message (the From tag empty when absent, §12.1.1).
/// `None` when the To tag is missing or the Call-ID is unusable.
fn call_id_and_tags(m: &impl HeaderAccess) -> Option<(String, String, String)> {
    let to_tag = view_tag(m.view_to().ok()?.tag())?;
    let from_tag = m
        .view_from()
        .ok()
        .and_then(|f| view_tag(f.tag()))
        .unwrap_or_default();
    let call_id = String::from_utf8_lossy(&m.call_id().ok()?).into_owned();
    Some((call_id, to_tag, from_tag))
}

/// A URI that holds its own text. One parsed from a received message points into that
/// message's buffer, and would keep the whole datagram alive for as long as the dialog lasts
/// (hours, for a held call); its own copy is a few dozen bytes.
fn detached(uri: Uri) -> Uri {
    let text = Bytes::from(uri.to_string());
    Uri::parse_in(&text, &text).unwrap_or(uri)
}

/// A name-addr that holds its own text (see [`detached`]).
fn detached_name_addr(na: NameAddr) -> NameAddr {
    let text = Bytes::from(na.to_string());
    NameAddr::parse_single(&text, &text).unwrap_or(na)
}

fn detached_routes(routes: Vec<NameAddr>) -> Vec<NameAddr> {
    routes.into_iter().map(detached_name_addr).collect()
}

/// A name-addr without its tag, always written with `<>` so that header parameters added
/// later cannot be read as URI parameters.
fn without_tag(mut na: NameAddr) -> NameAddr {
    na.params.remove("tag");
    na.bracketed = true;
    na
}

/// A name-addr without tag as the dialog keeps it: its text ([`without_tag`] wrote its
/// parameters out again, so a tag added later goes last, as `Params::set` would put it).
fn name_addr_text(na: NameAddr) -> Box<str> {
    without_tag(na).to_string().into_boxed_str()
}

fn with_tag(na: &str, tag: &str) -> String {
    if tag.is_empty() {
        na.to_owned()
    } else {
        format!("{na};tag={tag}")
    }
}

/// A URI as it may stand in a Request-URI: without the `?headers` part and the `method`
/// parameter (RFC 3261 §19.1.1, table 1; §12.2.1.1 "stripping any parameters that are not
/// allowed in a Request-URI").
fn as_request_uri(uri: &Uri) -> Uri {
    let mut uri = uri.clone();
    if let Some(sip) = uri.as_sip_mut() {
        sip.headers = None;
        sip.params.remove("method");
    }
    uri
}

/// Whether a route set entry is a loose router (`;lr`, RFC 3261 §16.12.1.1). A non-SIP URI
/// in a route set is treated as a strict router.
fn is_loose_router(route: &NameAddr) -> bool {
    route
        .uri
        .as_sip()
        .map(|u| u.params.contains("lr"))
        .unwrap_or(false)
}

fn is_sips(uri: &Uri) -> bool {
    uri.as_sip().map(|u| u.secure).unwrap_or(false)
}

/// Whether `method` is a target refresh request, one that may change the remote target
/// (and carries the local Contact): INVITE (RFC 3261 §12.2, §14), UPDATE (RFC 3311 §5.1),
/// SUBSCRIBE and NOTIFY (RFC 6665 §4.1.2, §4.1.3).
pub fn is_target_refresh(method: &Method) -> bool {
    matches!(
        method,
        Method::Invite | Method::Update | Method::Subscribe | Method::Notify
    )
}

/// The dialog identifier (RFC 3261 §12): Call-ID, local tag and remote tag, seen from one
/// side. The two sides of a dialog hold the same Call-ID with the tags swapped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    pub call_id: String,
    pub local_tag: String,
    /// Empty when an RFC 2543 peer sent no From tag (§12.1.1: "a value of null").
    pub remote_tag: String,
}

impl DialogId {
    /// The id of the dialog a received request belongs to (§12.2.2): local tag = To tag,
    /// remote tag = From tag (empty when absent). `None` when the To tag is missing (the
    /// request is outside any dialog) or the Call-ID is unusable.
    pub fn for_uas_request(req: &Request) -> Option<DialogId> {
        let (call_id, to_tag, from_tag) = call_id_and_tags(req)?;
        Some(DialogId {
            call_id,
            local_tag: to_tag,
            remote_tag: from_tag,
        })
    }

    /// The id of the dialog a response to a request sent by this side belongs to
    /// (§12.1.2, §12.2.1.2): local tag = From tag, remote tag = To tag. `None` when the To
    /// tag is missing (a 100, or a response from outside any dialog).
    pub fn for_uac_response(resp: &Response) -> Option<DialogId> {
        let (call_id, to_tag, from_tag) = call_id_and_tags(resp)?;
        Some(DialogId {
            call_id,
            local_tag: from_tag,
            remote_tag: to_tag,
        })
    }

    /// The same dialog seen from the other side.
    pub fn reversed(&self) -> DialogId {
        DialogId {
            call_id: self.call_id.clone(),
            local_tag: self.remote_tag.clone(),
            remote_tag: self.local_tag.clone(),
        }
    }
}

impl fmt::Display for DialogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{};local-tag={};remote-tag={}",
            self.call_id, self.local_tag, self.remote_tag
        )
    }
}

/// Which side of the dialog-creating INVITE this dialog was made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sent the INVITE (§12.1.2).
    Uac,
    /// Received the INVITE (§12.1.1).
    Uas,
}

/// The state of a dialog (RFC 3261 §12; the names are the RFC's):
///
/// ```text
///                    INVITE sent / received
///                      |                |
///      1xx with To tag |                | 2xx
///                      V                |
///                    Early -------------|-------------+
///                      |                |             | non-2xx final
///                  2xx |                |             | response to the INVITE
///                      V                |             V
///                  Confirmed <----------+         Terminated
///                      |                              ^
///                      | BYE received, or sent and    |
///                      | answered; 481 / 408 to a     |
///                      | request in the dialog        |
///                      +------------------------------+
/// ```
///
/// A UAS dialog is Early from the moment the UAS sends a 1xx with its tag and Confirmed
/// when it sends the 2xx ([`Dialog::confirm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    Early,
    Confirmed,
    Terminated,
}

/// One dialog, seen from one side (RFC 3261 §12).
///
/// The local CSeq of a UAS dialog starts at 0, so the first request it sends carries CSeq 1
/// (§12.1.1 leaves it empty and §8.1.1.5 allows any start below 2**31; 1 keeps traces easy to
/// read and leaves the whole space ahead). A UAC dialog continues from the INVITE's CSeq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    id: DialogId,
    role: Role,
    state: DialogState,
    /// From / To without tag, as text: 16 bytes where a parsed name-addr takes 240 (a live
    /// call holds two dialogs for hours; `docs/benchmarks.md`, bytes per live call).
    local: Box<str>,
    remote: Box<str>,
    local_seq: u32,
    remote_seq: Option<u32>,
    remote_target: Uri,
    route_set: Vec<NameAddr>,
    local_contact: Uri,
    secure: bool,
}

impl Dialog {
    /// The UAC side of a dialog created by `response` (a 1xx with a To tag: Early; a 2xx:
    /// Confirmed) to `invite`, the request as this side sent it (§12.1.2):
    /// route set = the response's Record-Route in reverse order, remote target = the
    /// response's Contact, remote tag = its To tag, local CSeq = the INVITE's, remote CSeq
    /// empty. `secure` when the Request-URI is a SIPS URI.
    ///
    /// Each forked 2xx or 1xx with a different To tag creates its own dialog.
    pub fn uac(
        invite: &Request,
        response: &Response,
        local_contact: Uri,
    ) -> Result<Dialog, DialogError> {
        let status = response.status;
        if !(101..300).contains(&status) {
            return Err(DialogError::NotDialogCreating(status));
        }
        let from = header(invite.from(), "From")?;
        let to = header(invite.to(), "To")?;
        let cseq = header(invite.cseq(), "CSeq")?;
        let call_id = header(invite.call_id(), "Call-ID")?;
        let resp_to = header(response.to(), "To")?;
        let remote_tag = tag_of(&resp_to).ok_or(DialogError::MissingToTag)?;
        let resp_from = header(response.from(), "From")?;
        let resp_cseq = header(response.cseq(), "CSeq")?;
        if header(response.call_id(), "Call-ID")? != call_id
            || resp_from.tag() != from.tag()
            || resp_cseq != cseq
        {
            return Err(DialogError::NotThisDialog);
        }
        let remote_target = detached(
            header(response.contact(), "Contact")?
                .ok_or(DialogError::MissingContact)?
                .uri,
        );
        let mut route_set = detached_routes(header(response.record_routes(), "Record-Route")?);
        route_set.reverse();
        Ok(Dialog {
            id: DialogId {
                call_id: String::from_utf8_lossy(&call_id).into_owned(),
                local_tag: tag_of(&from).unwrap_or_default(),
                remote_tag,
            },
            role: Role::Uac,
            state: if response.is_success() {
                DialogState::Confirmed
            } else {
                DialogState::Early
            },
            local: name_addr_text(from),
            remote: name_addr_text(to),
            local_seq: cseq.seq,
            remote_seq: None,
            remote_target,
            route_set,
            local_contact,
            secure: is_sips(invite.uri()),
        })
    }

    /// The UAS side of a dialog for a received `invite`, answered with a 1xx or 2xx that
    /// carries `local_tag` in its To (§12.1.1): route set = the request's Record-Route in
    /// order, remote target = its Contact, remote CSeq = its CSeq, remote tag = its From tag
    /// (empty when absent), local CSeq = 0. The dialog starts Early; [`Dialog::confirm`] it
    /// with the 2xx when that is sent. `secure` when the Request-URI is a SIPS URI (that the
    /// request also came over TLS is the caller's to check).
    pub fn uas(
        invite: &Request,
        local_tag: &str,
        local_contact: Uri,
    ) -> Result<Dialog, DialogError> {
        let from = header(invite.from(), "From")?;
        let to = header(invite.to(), "To")?;
        let cseq = header(invite.cseq(), "CSeq")?;
        let call_id = header(invite.call_id(), "Call-ID")?;
        let remote_target = detached(
            header(invite.contact(), "Contact")?
                .ok_or(DialogError::MissingContact)?
                .uri,
        );
        let route_set = detached_routes(header(invite.record_routes(), "Record-Route")?);
        Ok(Dialog {
            id: DialogId {
                call_id: String::from_utf8_lossy(&call_id).into_owned(),
                local_tag: local_tag.to_owned(),
                remote_tag: tag_of(&from).unwrap_or_default(),
            },
            role: Role::Uas,
            state: DialogState::Early,
            local: name_addr_text(to),
            remote: name_addr_text(from),
            local_seq: 0,
            remote_seq: Some(cseq.seq),
            remote_target,
            route_set,
            local_contact,
            secure: is_sips(invite.uri()),
        })
    }

    pub fn id(&self) -> &DialogId {
        &self.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn state(&self) -> DialogState {
        self.state
    }

    /// The local URI: the From of a UAC, the To of a UAS, without tag (as written in the
    /// requests the dialog builds).
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The remote URI: the To of a UAC, the From of a UAS, without tag (as written in the
    /// requests the dialog builds).
    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// The CSeq number of the last request sent in the dialog (0: none yet, UAS side).
    pub fn local_seq(&self) -> u32 {
        self.local_seq
    }

    /// The CSeq number of the last request received in the dialog.
    pub fn remote_seq(&self) -> Option<u32> {
        self.remote_seq
    }

    /// Where the peer is reached: the URI of its last Contact.
    pub fn remote_target(&self) -> &Uri {
        &self.remote_target
    }

    /// The route set, in the order the Route headers of outgoing requests are built from.
    pub fn route_set(&self) -> &[NameAddr] {
        &self.route_set
    }

    /// The Contact this side puts in its target refresh requests.
    pub fn local_contact(&self) -> &Uri {
        &self.local_contact
    }

    /// Changes the local Contact (the next target refresh request tells the peer).
    pub fn set_local_contact(&mut self, contact: Uri) {
        self.local_contact = contact;
    }

    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Ends the dialog (e.g. when the BYE this side sent has timed out).
    pub fn terminate(&mut self) {
        self.state = DialogState::Terminated;
    }

    /// Confirms the dialog with a 2xx to the dialog-creating INVITE (§13.2.2.4, §13.3.1.4):
    /// on the UAC side the 2xx received, on the UAS side the 2xx it sends.
    ///
    /// When a UAC's Early dialog is confirmed, its remote target is taken from the 2xx's
    /// Contact and its route set recomputed from the 2xx's Record-Route (§13.2.2.4: "the route
    /// set for the dialog MUST be recomputed based on the 2xx response"); after that the
    /// route set is frozen, and later responses only refresh the remote target (§12.2.1.2).
    /// Confirming a Confirmed dialog again (a retransmitted 2xx) changes nothing.
    pub fn confirm(&mut self, response: &Response) -> Result<(), DialogError> {
        if self.state == DialogState::Terminated {
            return Err(DialogError::Terminated);
        }
        if !response.is_success() {
            return Err(DialogError::NotSuccess(response.status));
        }
        let id = DialogId::for_uac_response(response).ok_or(DialogError::MissingToTag)?;
        let id = match self.role {
            Role::Uac => id,
            Role::Uas => id.reversed(),
        };
        if id != self.id {
            return Err(DialogError::NotThisDialog);
        }
        if self.state == DialogState::Confirmed {
            return Ok(());
        }
        if self.role == Role::Uac {
            let target = header(response.contact(), "Contact")?
                .ok_or(DialogError::MissingContact)?
                .uri;
            let mut route_set = detached_routes(header(response.record_routes(), "Record-Route")?);
            route_set.reverse();
            self.remote_target = detached(target);
            self.route_set = route_set;
        }
        self.state = DialogState::Confirmed;
        Ok(())
    }

    /// Builds a request inside the dialog (§12.2.1.1): Request-URI and Route from the remote
    /// target and route set (see [`Dialog::next_hop`]), To = remote URI with the remote tag,
    /// From = local URI with the local tag, the dialog's Call-ID, CSeq = the next local
    /// sequence number (ACK and CANCEL reuse the current one), Contact = the local contact
    /// for target refresh requests, and the body with its Content-Type when given. No Via,
    /// Max-Forwards or User-Agent: the endpoint adds them.
    ///
    /// The local sequence number stops at 2**31 - 1 (a dialog does not send two billion
    /// requests).
    pub fn new_request(&mut self, method: Method, body: Option<(&str, Bytes)>) -> Request {
        if !matches!(method, Method::Ack | Method::Cancel) {
            self.local_seq = self.local_seq.saturating_add(1).min(MAX_CSEQ);
        }
        self.build(method, self.local_seq, body)
    }

    /// The ACK for a 2xx to an INVITE (or re-INVITE) of this dialog (§13.2.2.4): built like
    /// any request in the dialog, with the INVITE's CSeq number and method ACK. The caller
    /// adds the INVITE's Authorization / Proxy-Authorization if it had any.
    pub fn ack_for_2xx(&self, invite_cseq: u32, body: Option<(&str, Bytes)>) -> Request {
        self.build(Method::Ack, invite_cseq, body)
    }

    /// The URI a request built by this dialog is sent to (§8.1.2, §12.2.1.1): the first route
    /// of the route set (its Request-URI when it is a strict router, its first Route when a
    /// loose one), else the remote target.
    pub fn next_hop(&self) -> Uri {
        match self.route_set.first() {
            Some(r) => r.uri.clone(),
            None => self.remote_target.clone(),
        }
    }

    /// Request-URI and Route header values per §12.2.1.1.
    fn request_uri_and_routes(&self) -> (Uri, Vec<NameAddr>) {
        match self.route_set.split_first() {
            None => (as_request_uri(&self.remote_target), Vec::new()),
            Some((first, _)) if is_loose_router(first) => {
                (as_request_uri(&self.remote_target), self.route_set.clone())
            }
            Some((first, rest)) => {
                // Strict router: it gets the request in its Request-URI, the remote target
                // travels as the last Route.
                let mut routes = rest.to_vec();
                routes.push(NameAddr::new(self.remote_target.clone()));
                (as_request_uri(&first.uri), routes)
            }
        }
    }

    fn build(&self, method: Method, seq: u32, body: Option<(&str, Bytes)>) -> Request {
        let (uri, routes) = self.request_uri_and_routes();
        let cseq = format!("{seq} {method}");
        let refresh = is_target_refresh(&method);
        let mut req = Request::new(method, uri);
        let h = &mut req.headers;
        for r in &routes {
            h.add(HeaderName::Route, r.to_string());
        }
        h.add(HeaderName::From, with_tag(&self.local, &self.id.local_tag));
        h.add(HeaderName::To, with_tag(&self.remote, &self.id.remote_tag));
        h.add(HeaderName::CallId, self.id.call_id.clone());
        h.add(HeaderName::CSeq, cseq);
        if refresh {
            h.add(HeaderName::Contact, format!("<{}>", self.local_contact));
        }
        if let Some((content_type, body)) = body {
            h.add(HeaderName::ContentType, content_type.to_owned());
            req.body = body;
        }
        req
    }

    /// Takes in a request received inside the dialog (§12.2.2), after the caller matched it
    /// with [`DialogId::for_uas_request`]. A request other than ACK and CANCEL must have a CSeq
    /// above the last one received (else [`DialogError::CSeqOutOfOrder`]: answer 500; an equal
    /// one is a retransmission the transaction layer absorbs); it becomes the remote CSeq. A
    /// target refresh request with a Contact replaces the remote target (RFC 3261 replaces it
    /// on receipt; a failed re-INVITE does not restore it). A BYE terminates the dialog.
    /// A request for a terminated dialog is refused with [`DialogError::Terminated`] (481).
    pub fn receive_request(&mut self, req: &Request) -> Result<(), DialogError> {
        let id = DialogId::for_uas_request(req).ok_or(DialogError::MissingToTag)?;
        if id != self.id {
            return Err(DialogError::NotThisDialog);
        }
        if self.state == DialogState::Terminated {
            return Err(DialogError::Terminated);
        }
        let cseq = header(req.cseq(), "CSeq")?;
        let target = if is_target_refresh(&req.method) {
            header(req.contact(), "Contact")?.map(|c| c.uri)
        } else {
            None
        };
        if !matches!(req.method, Method::Ack | Method::Cancel) {
            if let Some(last) = self.remote_seq {
                if cseq.seq <= last {
                    return Err(DialogError::CSeqOutOfOrder {
                        got: cseq.seq,
                        last,
                    });
                }
            }
            self.remote_seq = Some(cseq.seq);
        }
        if let Some(target) = target {
            self.remote_target = detached(target);
        }
        if req.method == Method::Bye {
            self.state = DialogState::Terminated;
        }
        Ok(())
    }

    /// Takes in a response to a request this side sent inside the dialog (§12.2.1.2,
    /// §13.2.2.4, §15):
    /// - on a UAC's Early dialog, the final response to the INVITE: a 2xx confirms it
    ///   ([`Dialog::confirm`]), any other ends it;
    /// - a 2xx to a target refresh request with a Contact replaces the remote target (the
    ///   route set is not changed);
    /// - a 481 or 408 to any request, and a final response to a BYE, end the dialog.
    pub fn receive_response(&mut self, response: &Response) -> Result<(), DialogError> {
        let id = DialogId::for_uac_response(response).ok_or(DialogError::MissingToTag)?;
        if id != self.id {
            return Err(DialogError::NotThisDialog);
        }
        if self.state == DialogState::Terminated {
            return Err(DialogError::Terminated);
        }
        let cseq = header(response.cseq(), "CSeq")?;
        let status = response.status;
        if matches!(status, 408 | 481) || (cseq.method == Method::Bye && status >= 200) {
            self.state = DialogState::Terminated;
            return Ok(());
        }
        if self.role == Role::Uac
            && self.state == DialogState::Early
            && cseq.method == Method::Invite
        {
            if response.is_success() {
                return self.confirm(response);
            }
            if status >= 300 {
                self.state = DialogState::Terminated;
            }
            return Ok(());
        }
        if response.is_success() && is_target_refresh(&cseq.method) {
            if let Some(contact) = header(response.contact(), "Contact")? {
                self.remote_target = detached(contact.uri);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{parse_message, SipMessage};

    fn parse(s: &str) -> SipMessage {
        parse_message(Bytes::from(s.replace('\n', "\r\n"))).unwrap()
    }

    fn req(s: &str) -> Request {
        match parse(s) {
            SipMessage::Request(r) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn resp(s: &str) -> Response {
        match parse(s) {
            SipMessage::Response(r) => r,
            other => panic!("not a response: {other:?}"),
        }
    }

    /// Encodes, adds the Via an endpoint would, parses again and runs the server-side check.
    fn on_the_wire(mut r: Request) -> Request {
        r.headers.insert_first(
            HeaderName::Via,
            "SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKtest",
        );
        let again = match parse_message(r.encode()).unwrap() {
            SipMessage::Request(r) => r,
            other => panic!("not a request: {other:?}"),
        };
        again.check().unwrap();
        again
    }

    fn uri(s: &str) -> Uri {
        Uri::parse(s).unwrap()
    }

    fn routes(r: &Request) -> Vec<String> {
        r.routes()
            .unwrap()
            .iter()
            .map(|n| n.uri.to_string())
            .collect()
    }

    fn h(r: &Request, name: HeaderName) -> String {
        r.header_str(&name).unwrap_or_default()
    }

    // Alice (UAC, 10.0.0.1) calls Bob (UAS, 10.0.0.2) through two record-routing proxies:
    // p1 next to Alice, p2 next to Bob.

    /// The INVITE as Alice sent it.
    const INVITE_SENT: &str = "INVITE sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK74bf9
Max-Forwards: 70
From: \"Alice\" <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@example.com>
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 314159 INVITE
Contact: <sip:alice@10.0.0.1:5060>
Content-Length: 0

";

    /// The same INVITE as Bob received it: two more Vias, two Record-Routes (p2 on top).
    const INVITE_RECEIVED: &str = "INVITE sip:bob@10.0.0.2:5060 SIP/2.0
Via: SIP/2.0/UDP p2.example.com;branch=z9hG4bKp2
Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKp1
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK74bf9
Max-Forwards: 68
Record-Route: <sip:p2.example.com;lr>
Record-Route: <sip:p1.example.com;lr>
From: \"Alice\" <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@example.com>
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 314159 INVITE
Contact: <sip:alice@10.0.0.1:5060>
Content-Length: 0

";

    /// Bob's 180 as Alice received it.
    const RINGING: &str = "SIP/2.0 180 Ringing
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK74bf9
Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.com;lr>
From: \"Alice\" <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@example.com>;tag=8321234356
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 314159 INVITE
Contact: <sip:bob@10.0.0.2:5060>
Content-Length: 0

";

    /// Bob's 200 as Alice received it.
    const OK: &str = "SIP/2.0 200 OK
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK74bf9
Record-Route: <sip:p2.example.com;lr>
Record-Route: <sip:p1.example.com;lr>
From: \"Alice\" <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@example.com>;tag=8321234356
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 314159 INVITE
Contact: <sip:bob@10.0.0.2:5060;transport=udp>
Content-Length: 0

";

    const BOB_TAG: &str = "8321234356";
    const ALICE_TAG: &str = "9fxced76sl";
    const CALL_ID: &str = "3848276298220188511@atlanta.example.com";

    fn alice() -> Dialog {
        Dialog::uac(&req(INVITE_SENT), &resp(OK), uri("sip:alice@10.0.0.1:5060")).unwrap()
    }

    fn bob() -> Dialog {
        let invite = req(INVITE_RECEIVED);
        let mut d = Dialog::uas(&invite, BOB_TAG, uri("sip:bob@10.0.0.2:5060")).unwrap();
        let mut ok = Response::for_request(&invite, 200);
        ok.set_to_tag(BOB_TAG);
        d.confirm(&ok).unwrap();
        d
    }

    #[test]
    fn uac_dialog_from_180_is_early_with_reversed_route_set() {
        let d = Dialog::uac(&req(INVITE_SENT), &resp(RINGING), uri("sip:alice@10.0.0.1")).unwrap();
        assert_eq!(d.state(), DialogState::Early);
        assert_eq!(d.role(), Role::Uac);
        assert_eq!(
            d.id(),
            &DialogId {
                call_id: CALL_ID.into(),
                local_tag: ALICE_TAG.into(),
                remote_tag: BOB_TAG.into(),
            }
        );
        let rs: Vec<String> = d.route_set().iter().map(|r| r.uri.to_string()).collect();
        assert_eq!(rs, ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]);
        assert_eq!(d.remote_target(), &uri("sip:bob@10.0.0.2:5060"));
        assert_eq!(d.local_seq(), 314159);
        assert_eq!(d.remote_seq(), None);
        assert!(!d.secure());
    }

    #[test]
    fn uac_dialog_from_200_is_confirmed() {
        let d = alice();
        assert_eq!(d.state(), DialogState::Confirmed);
        assert_eq!(
            d.local().to_string(),
            "\"Alice\" <sip:alice@atlanta.example.com>"
        );
        assert_eq!(d.remote().to_string(), "Bob <sip:bob@example.com>");
        assert_eq!(
            d.remote_target(),
            &uri("sip:bob@10.0.0.2:5060;transport=udp")
        );
        assert_eq!(d.next_hop(), uri("sip:p1.example.com;lr"));
    }

    #[test]
    fn uas_dialog_keeps_route_set_in_order() {
        let invite = req(INVITE_RECEIVED);
        let d = Dialog::uas(&invite, BOB_TAG, uri("sip:bob@10.0.0.2:5060")).unwrap();
        assert_eq!(d.state(), DialogState::Early);
        assert_eq!(d.role(), Role::Uas);
        assert_eq!(
            d.id(),
            &DialogId {
                call_id: CALL_ID.into(),
                local_tag: BOB_TAG.into(),
                remote_tag: ALICE_TAG.into(),
            }
        );
        let rs: Vec<String> = d.route_set().iter().map(|r| r.uri.to_string()).collect();
        assert_eq!(rs, ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]);
        assert_eq!(d.remote_target(), &uri("sip:alice@10.0.0.1:5060"));
        assert_eq!(d.remote_seq(), Some(314159));
        assert_eq!(d.local_seq(), 0);
        assert_eq!(d.local().to_string(), "Bob <sip:bob@example.com>");
        assert_eq!(
            d.remote().to_string(),
            "\"Alice\" <sip:alice@atlanta.example.com>"
        );
    }

    #[test]
    fn uas_confirm_checks_the_tag_of_the_2xx() {
        let invite = req(INVITE_RECEIVED);
        let mut d = Dialog::uas(&invite, BOB_TAG, uri("sip:bob@10.0.0.2")).unwrap();
        let mut other = Response::for_request(&invite, 200);
        other.set_to_tag("someone-else");
        assert_eq!(d.confirm(&other), Err(DialogError::NotThisDialog));
        let mut busy = Response::for_request(&invite, 486);
        busy.set_to_tag(BOB_TAG);
        assert_eq!(d.confirm(&busy), Err(DialogError::NotSuccess(486)));
        assert_eq!(d.state(), DialogState::Early);
        let mut ok = Response::for_request(&invite, 200);
        ok.set_to_tag(BOB_TAG);
        d.confirm(&ok).unwrap();
        assert_eq!(d.state(), DialogState::Confirmed);
    }

    #[test]
    fn bye_from_uac_is_built_per_12_2_1_1() {
        let mut d = alice();
        let bye = on_the_wire(d.new_request(Method::Bye, None));
        assert_eq!(bye.method, Method::Bye);
        assert_eq!(*bye.uri(), uri("sip:bob@10.0.0.2:5060;transport=udp"));
        assert_eq!(
            routes(&bye),
            ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
        );
        let from = bye.from().unwrap();
        let to = bye.to().unwrap();
        assert_eq!(from.uri, uri("sip:alice@atlanta.example.com"));
        assert_eq!(from.tag(), Some(ALICE_TAG.as_bytes()));
        assert_eq!(to.uri, uri("sip:bob@example.com"));
        assert_eq!(to.tag(), Some(BOB_TAG.as_bytes()));
        assert_eq!(bye.call_id_str(), CALL_ID);
        let cseq = bye.cseq().unwrap();
        assert_eq!((cseq.seq, cseq.method), (314160, Method::Bye));
        assert_eq!(bye.contact().unwrap(), None);
        assert_eq!(d.local_seq(), 314160);
        // A second request goes on counting.
        let info = d.new_request(Method::Info, None);
        assert_eq!(info.cseq().unwrap().seq, 314161);
    }

    #[test]
    fn bye_from_uas_swaps_tags_and_starts_at_cseq_1() {
        let mut d = bob();
        let bye = on_the_wire(d.new_request(Method::Bye, None));
        assert_eq!(*bye.uri(), uri("sip:alice@10.0.0.1:5060"));
        assert_eq!(
            routes(&bye),
            ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]
        );
        assert_eq!(
            h(&bye, HeaderName::From),
            format!("Bob <sip:bob@example.com>;tag={BOB_TAG}")
        );
        assert_eq!(
            h(&bye, HeaderName::To),
            format!("\"Alice\" <sip:alice@atlanta.example.com>;tag={ALICE_TAG}")
        );
        assert_eq!(h(&bye, HeaderName::CSeq), "1 BYE");
        assert_eq!(d.next_hop(), uri("sip:p2.example.com;lr"));
    }

    #[test]
    fn ack_for_2xx_keeps_the_invite_cseq() {
        let mut d = alice();
        let ack = on_the_wire(d.ack_for_2xx(314159, None));
        assert_eq!(h(&ack, HeaderName::CSeq), "314159 ACK");
        assert_eq!(*ack.uri(), uri("sip:bob@10.0.0.2:5060;transport=udp"));
        assert_eq!(
            routes(&ack),
            ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
        );
        assert_eq!(ack.contact().unwrap(), None);
        assert_eq!(d.local_seq(), 314159);

        // re-INVITE with an offer, then the ACK of its 2xx with the answer.
        let reinvite = d.new_request(
            Method::Invite,
            Some(("application/sdp", Bytes::from_static(b"v=0\r\n"))),
        );
        let reinvite = on_the_wire(reinvite);
        assert_eq!(h(&reinvite, HeaderName::CSeq), "314160 INVITE");
        assert_eq!(
            reinvite.contact().unwrap().map(|c| c.uri),
            Some(uri("sip:alice@10.0.0.1:5060"))
        );
        assert_eq!(reinvite.content_type().as_deref(), Some("application/sdp"));
        assert_eq!(&reinvite.body[..], b"v=0\r\n");
        let ack = d.ack_for_2xx(
            314160,
            Some(("application/sdp", Bytes::from_static(b"v=0\r\n"))),
        );
        assert_eq!(h(&ack, HeaderName::CSeq), "314160 ACK");
        assert_eq!(&ack.body[..], b"v=0\r\n");
        assert_eq!(d.local_seq(), 314160);
        // ACK and CANCEL from new_request do not advance the sequence either.
        let ack = d.new_request(Method::Ack, None);
        assert_eq!(h(&ack, HeaderName::CSeq), "314160 ACK");
        assert_eq!(d.local_seq(), 314160);
    }

    #[test]
    fn update_carries_contact_and_body() {
        let mut d = bob();
        let update = on_the_wire(d.new_request(
            Method::Update,
            Some((
                "application/sdp",
                Bytes::from_static(b"v=0\r\no=- 1 2 IN IP4 10.0.0.2\r\n"),
            )),
        ));
        assert_eq!(
            update.contact().unwrap().map(|c| c.uri),
            Some(uri("sip:bob@10.0.0.2:5060"))
        );
        assert_eq!(update.body.len(), 30);
        let info = d.new_request(Method::Info, None);
        assert_eq!(info.headers.get(&HeaderName::Contact), None);
        assert_eq!(info.headers.get(&HeaderName::ContentType), None);
    }

    #[test]
    fn strict_router_gets_the_request_uri() {
        // p1 (next to Alice) is a strict router: no ;lr.
        let ok = OK.replace(
            "<sip:p1.example.com;lr>",
            "<sip:p1.example.com;maddr=192.0.2.1>",
        );
        let mut d = Dialog::uac(&req(INVITE_SENT), &resp(&ok), uri("sip:alice@10.0.0.1")).unwrap();
        let bye = on_the_wire(d.new_request(Method::Bye, None));
        assert_eq!(*bye.uri(), uri("sip:p1.example.com;maddr=192.0.2.1"));
        assert_eq!(
            routes(&bye),
            [
                "sip:p2.example.com;lr",
                "sip:bob@10.0.0.2:5060;transport=udp"
            ]
        );
        assert_eq!(d.next_hop(), uri("sip:p1.example.com;maddr=192.0.2.1"));

        // A strict router alone: the remote target is the only Route.
        let ok = OK
            .replace("Record-Route: <sip:p2.example.com;lr>\n", "")
            .replace(
                "<sip:p1.example.com;lr>",
                "<sip:p1.example.com;method=INVITE>",
            );
        let mut d = Dialog::uac(&req(INVITE_SENT), &resp(&ok), uri("sip:alice@10.0.0.1")).unwrap();
        let bye = d.new_request(Method::Bye, None);
        assert_eq!(
            *bye.uri(),
            uri("sip:p1.example.com"),
            "method= is not allowed in a R-URI"
        );
        assert_eq!(routes(&bye), ["sip:bob@10.0.0.2:5060;transport=udp"]);
    }

    #[test]
    fn no_route_set_goes_to_the_remote_target() {
        let ok = OK
            .replace("Record-Route: <sip:p2.example.com;lr>\n", "")
            .replace("Record-Route: <sip:p1.example.com;lr>\n", "")
            .replace(
                "Contact: <sip:bob@10.0.0.2:5060;transport=udp>",
                "Contact: <sip:bob@10.0.0.2:5070?Subject=hi>",
            );
        let mut d = Dialog::uac(&req(INVITE_SENT), &resp(&ok), uri("sip:alice@10.0.0.1")).unwrap();
        assert!(d.route_set().is_empty());
        let bye = on_the_wire(d.new_request(Method::Bye, None));
        assert_eq!(*bye.uri(), uri("sip:bob@10.0.0.2:5070"));
        assert_eq!(bye.headers.get(&HeaderName::Route), None);
        assert_eq!(d.next_hop(), uri("sip:bob@10.0.0.2:5070?Subject=hi"));
    }

    #[test]
    fn cseq_out_of_order_is_refused() {
        let mut d = bob();
        let bye = |seq: u32| {
            req(&format!(
                "BYE sip:bob@10.0.0.2:5060 SIP/2.0
Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKb{seq}
From: <sip:alice@atlanta.example.com>;tag={ALICE_TAG}
To: <sip:bob@example.com>;tag={BOB_TAG}
Call-ID: {CALL_ID}
CSeq: {seq} BYE
Content-Length: 0

"
            ))
        };
        let ack = req(&format!(
            "ACK sip:bob@10.0.0.2:5060 SIP/2.0
Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKack
From: <sip:alice@atlanta.example.com>;tag={ALICE_TAG}
To: <sip:bob@example.com>;tag={BOB_TAG}
Call-ID: {CALL_ID}
CSeq: 314159 ACK
Content-Length: 0

"
        ));
        assert_eq!(
            d.receive_request(&bye(314158)),
            Err(DialogError::CSeqOutOfOrder {
                got: 314158,
                last: 314159
            })
        );
        assert_eq!(
            d.receive_request(&bye(314159)),
            Err(DialogError::CSeqOutOfOrder {
                got: 314159,
                last: 314159
            })
        );
        assert_eq!(d.remote_seq(), Some(314159));
        assert_eq!(d.state(), DialogState::Confirmed);
        // The ACK for the 2xx carries the INVITE's number: not out of order.
        d.receive_request(&ack).unwrap();
        assert_eq!(d.remote_seq(), Some(314159));
        d.receive_request(&bye(314200)).unwrap();
        assert_eq!(d.remote_seq(), Some(314200));
        assert_eq!(d.state(), DialogState::Terminated);
        assert_eq!(
            d.receive_request(&bye(314201)),
            Err(DialogError::Terminated)
        );
    }

    #[test]
    fn first_remote_request_sets_the_remote_cseq() {
        let mut d = alice();
        let mut bob = bob();
        bob.new_request(Method::Info, None);
        let bye = bob.new_request(Method::Bye, None);
        d.receive_request(&bye).unwrap();
        assert_eq!(d.remote_seq(), Some(2));
    }

    #[test]
    fn re_invite_refreshes_the_remote_target() {
        let mut d = bob();
        let reinvite = INVITE_RECEIVED
            .replace(
                "To: Bob <sip:bob@example.com>",
                &format!("To: <sip:bob@example.com>;tag={BOB_TAG}"),
            )
            .replace("CSeq: 314159 INVITE", "CSeq: 314160 INVITE")
            .replace(
                "Contact: <sip:alice@10.0.0.1:5060>",
                "Contact: <sip:alice@198.51.100.7:5062>",
            );
        d.receive_request(&req(&reinvite)).unwrap();
        assert_eq!(d.remote_target(), &uri("sip:alice@198.51.100.7:5062"));
        assert_eq!(d.remote_seq(), Some(314160));
        // The route set is not touched by a target refresh.
        assert_eq!(d.route_set().len(), 2);
        assert_eq!(d.route_set()[0].uri, uri("sip:p2.example.com;lr"));
        // An INFO with a Contact is not a target refresh.
        let info = reinvite
            .replace("INVITE sip:", "INFO sip:")
            .replace("CSeq: 314160 INVITE", "CSeq: 314161 INFO")
            .replace("198.51.100.7:5062", "203.0.113.9");
        d.receive_request(&req(&info)).unwrap();
        assert_eq!(d.remote_target(), &uri("sip:alice@198.51.100.7:5062"));
        // The next request goes to the new target.
        assert_eq!(
            *d.new_request(Method::Bye, None).uri(),
            uri("sip:alice@198.51.100.7:5062")
        );
    }

    #[test]
    fn bad_contact_in_a_refresh_changes_nothing() {
        let mut d = bob();
        let reinvite = INVITE_RECEIVED
            .replace(
                "To: Bob <sip:bob@example.com>",
                &format!("To: <sip:bob@example.com>;tag={BOB_TAG}"),
            )
            .replace("CSeq: 314159 INVITE", "CSeq: 314160 INVITE")
            .replace(
                "Contact: <sip:alice@10.0.0.1:5060>",
                "Contact: <sip:alice@10.0.0.1:5060",
            );
        assert_eq!(
            d.receive_request(&req(&reinvite)),
            Err(DialogError::BadHeader("Contact"))
        );
        assert_eq!(d.remote_seq(), Some(314159));
        assert_eq!(d.remote_target(), &uri("sip:alice@10.0.0.1:5060"));
    }

    #[test]
    fn two_xx_to_re_invite_refreshes_target_but_not_route_set() {
        let mut d = alice();
        let reinvite = d.new_request(Method::Invite, None);
        assert_eq!(reinvite.cseq().unwrap().seq, 314160);
        let ok = OK
            .replace("CSeq: 314159 INVITE", "CSeq: 314160 INVITE")
            .replace("Record-Route: <sip:p2.example.com;lr>\n", "")
            .replace(
                "<sip:bob@10.0.0.2:5060;transport=udp>",
                "<sip:bob@198.51.100.20>",
            );
        d.receive_response(&resp(&ok)).unwrap();
        assert_eq!(d.remote_target(), &uri("sip:bob@198.51.100.20"));
        assert_eq!(d.route_set().len(), 2);
        assert_eq!(d.state(), DialogState::Confirmed);
        // A non-2xx to a re-INVITE leaves the target and the dialog alone.
        let busy = ok
            .replace("200 OK", "491 Request Pending")
            .replace("<sip:bob@198.51.100.20>", "<sip:bob@203.0.113.1>");
        d.receive_response(&resp(&busy)).unwrap();
        assert_eq!(d.remote_target(), &uri("sip:bob@198.51.100.20"));
        assert_eq!(d.state(), DialogState::Confirmed);
        // A 2xx to a non-refresh request does not refresh either.
        let info_ok = ok
            .replace("CSeq: 314160 INVITE", "CSeq: 314161 INFO")
            .replace("<sip:bob@198.51.100.20>", "<sip:bob@203.0.113.1>");
        d.receive_response(&resp(&info_ok)).unwrap();
        assert_eq!(d.remote_target(), &uri("sip:bob@198.51.100.20"));
    }

    #[test]
    fn early_dialog_confirmed_by_2xx_recomputes_route_set() {
        let invite = req(INVITE_SENT);
        let ringing = RINGING.replace(
            "Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.com;lr>",
            "Record-Route: <sip:p1.example.com;lr>",
        );
        let mut d = Dialog::uac(&invite, &resp(&ringing), uri("sip:alice@10.0.0.1")).unwrap();
        assert_eq!(d.route_set().len(), 1);
        assert_eq!(d.remote_target(), &uri("sip:bob@10.0.0.2:5060"));
        d.receive_response(&resp(OK)).unwrap();
        assert_eq!(d.state(), DialogState::Confirmed);
        let rs: Vec<String> = d.route_set().iter().map(|r| r.uri.to_string()).collect();
        assert_eq!(rs, ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]);
        assert_eq!(
            d.remote_target(),
            &uri("sip:bob@10.0.0.2:5060;transport=udp")
        );
        // The 2xx retransmitted: nothing changes.
        d.confirm(&resp(OK)).unwrap();
        assert_eq!(d.route_set().len(), 2);
    }

    #[test]
    fn early_dialog_ends_on_a_final_failure() {
        let mut d =
            Dialog::uac(&req(INVITE_SENT), &resp(RINGING), uri("sip:alice@10.0.0.1")).unwrap();
        let busy = RINGING.replace("180 Ringing", "486 Busy Here");
        d.receive_response(&resp(&busy)).unwrap();
        assert_eq!(d.state(), DialogState::Terminated);
        assert_eq!(d.receive_response(&resp(OK)), Err(DialogError::Terminated));
        assert_eq!(d.confirm(&resp(OK)), Err(DialogError::Terminated));
    }

    #[test]
    fn a_forked_response_belongs_to_another_dialog() {
        let mut d =
            Dialog::uac(&req(INVITE_SENT), &resp(RINGING), uri("sip:alice@10.0.0.1")).unwrap();
        let fork = OK.replace(BOB_TAG, "fork-2");
        assert_eq!(
            d.receive_response(&resp(&fork)),
            Err(DialogError::NotThisDialog)
        );
        assert_eq!(d.state(), DialogState::Early);
        let other =
            Dialog::uac(&req(INVITE_SENT), &resp(&fork), uri("sip:alice@10.0.0.1")).unwrap();
        assert_eq!(other.id().remote_tag, "fork-2");
        assert_eq!(other.state(), DialogState::Confirmed);
    }

    #[test]
    fn bye_response_481_and_408_terminate() {
        for status in ["200 OK", "481 Call/Transaction Does Not Exist"] {
            let mut d = alice();
            d.new_request(Method::Bye, None);
            let r = OK
                .replace("200 OK", status)
                .replace("CSeq: 314159 INVITE", "CSeq: 314160 BYE");
            d.receive_response(&resp(&r)).unwrap();
            assert_eq!(d.state(), DialogState::Terminated, "{status}");
        }
        let mut d = alice();
        d.new_request(Method::Info, None);
        let timeout = OK
            .replace("200 OK", "408 Request Timeout")
            .replace("CSeq: 314159 INVITE", "CSeq: 314160 INFO");
        d.receive_response(&resp(&timeout)).unwrap();
        assert_eq!(d.state(), DialogState::Terminated);
        let mut d = alice();
        let provisional = OK
            .replace("200 OK", "100 Trying")
            .replace("CSeq: 314159 INVITE", "CSeq: 314160 BYE");
        d.receive_response(&resp(&provisional)).unwrap();
        assert_eq!(d.state(), DialogState::Confirmed);
    }

    #[test]
    fn ids_match_across_the_two_sides() {
        let mut a = alice();
        let mut b = bob();
        assert_eq!(a.id(), &b.id().reversed());

        // Alice's BYE, as Bob sees it.
        let bye = on_the_wire(a.new_request(Method::Bye, None));
        assert_eq!(DialogId::for_uas_request(&bye).as_ref(), Some(b.id()));
        b.receive_request(&bye).unwrap();
        assert_eq!(b.remote_seq(), Some(314160));

        // Bob's answer to it, as Alice sees it.
        let ok = Response::for_request(&bye, 200);
        assert_eq!(DialogId::for_uac_response(&ok).as_ref(), Some(a.id()));
        a.receive_response(&ok).unwrap();
        assert_eq!(a.state(), DialogState::Terminated);

        // And the other way round.
        let mut a = alice();
        let mut b = bob();
        let bye = on_the_wire(b.new_request(Method::Bye, None));
        assert_eq!(DialogId::for_uas_request(&bye).as_ref(), Some(a.id()));
        assert_ne!(DialogId::for_uas_request(&bye).as_ref(), Some(b.id()));
        a.receive_request(&bye).unwrap();
        assert_eq!(a.state(), DialogState::Terminated);
        assert_eq!(
            b.receive_response(&Response::for_request(&bye, 200)),
            Ok(())
        );
        assert_eq!(b.state(), DialogState::Terminated);
    }

    #[test]
    fn a_request_of_another_dialog_is_not_taken() {
        let mut b = bob();
        let mut a = alice();
        let mut bye = a.new_request(Method::Bye, None);
        bye.headers.set(HeaderName::CallId, "other@call");
        assert_eq!(b.receive_request(&bye), Err(DialogError::NotThisDialog));
        let mut no_tag = a.new_request(Method::Bye, None);
        no_tag.headers.set(HeaderName::To, "<sip:bob@example.com>");
        assert_eq!(DialogId::for_uas_request(&no_tag), None);
        assert_eq!(b.receive_request(&no_tag), Err(DialogError::MissingToTag));
        assert_eq!(b.state(), DialogState::Confirmed);
    }

    #[test]
    fn dialog_creation_errors() {
        let invite = req(INVITE_SENT);
        let contact = uri("sip:alice@10.0.0.1");
        let trying = RINGING
            .replace("180 Ringing", "100 Trying")
            .replace(";tag=8321234356", "");
        assert_eq!(
            Dialog::uac(&invite, &resp(&trying), contact.clone()),
            Err(DialogError::NotDialogCreating(100))
        );
        let busy = RINGING.replace("180 Ringing", "486 Busy Here");
        assert_eq!(
            Dialog::uac(&invite, &resp(&busy), contact.clone()),
            Err(DialogError::NotDialogCreating(486))
        );
        let untagged = RINGING.replace(";tag=8321234356", "");
        assert_eq!(DialogId::for_uac_response(&resp(&untagged)), None);
        assert_eq!(
            Dialog::uac(&invite, &resp(&untagged), contact.clone()),
            Err(DialogError::MissingToTag)
        );
        let no_contact = OK.replace("Contact: <sip:bob@10.0.0.2:5060;transport=udp>\n", "");
        assert_eq!(
            Dialog::uac(&invite, &resp(&no_contact), contact.clone()),
            Err(DialogError::MissingContact)
        );
        let other_call = OK.replace("3848276298220188511@", "1@");
        assert_eq!(
            Dialog::uac(&invite, &resp(&other_call), contact.clone()),
            Err(DialogError::NotThisDialog)
        );
        let other_cseq = OK.replace("CSeq: 314159 INVITE", "CSeq: 1 INVITE");
        assert_eq!(
            Dialog::uac(&invite, &resp(&other_cseq), contact.clone()),
            Err(DialogError::NotThisDialog)
        );
        let bad_rr = OK.replace("<sip:p1.example.com;lr>", "<sip:p1.example.com;lr");
        assert_eq!(
            Dialog::uac(&invite, &resp(&bad_rr), contact.clone()),
            Err(DialogError::BadHeader("Record-Route"))
        );
        let no_contact = INVITE_RECEIVED.replace("Contact: <sip:alice@10.0.0.1:5060>\n", "");
        assert_eq!(
            Dialog::uas(&req(&no_contact), BOB_TAG, contact.clone()),
            Err(DialogError::MissingContact)
        );
        let no_cseq = INVITE_RECEIVED.replace("CSeq: 314159 INVITE\n", "");
        assert_eq!(
            Dialog::uas(&req(&no_cseq), BOB_TAG, contact),
            Err(DialogError::BadHeader("CSeq"))
        );
    }

    #[test]
    fn rfc_2543_caller_without_from_tag() {
        let invite = req(&INVITE_RECEIVED.replace(";tag=9fxced76sl", ""));
        let mut d = Dialog::uas(&invite, BOB_TAG, uri("sip:bob@10.0.0.2")).unwrap();
        assert_eq!(d.id().remote_tag, "");
        let bye = on_the_wire(d.new_request(Method::Bye, None));
        assert_eq!(bye.to().unwrap().tag(), None);
        assert_eq!(
            h(&bye, HeaderName::To),
            "\"Alice\" <sip:alice@atlanta.example.com>"
        );
    }

    #[test]
    fn sips_request_uri_makes_a_secure_dialog() {
        let invite = req(&INVITE_RECEIVED.replace(
            "INVITE sip:bob@10.0.0.2:5060",
            "INVITE sips:bob@10.0.0.2:5061",
        ));
        let d = Dialog::uas(&invite, BOB_TAG, uri("sips:bob@10.0.0.2:5061")).unwrap();
        assert!(d.secure());
        assert!(!bob().secure());
    }

    #[test]
    fn target_refresh_methods() {
        for m in [
            Method::Invite,
            Method::Update,
            Method::Subscribe,
            Method::Notify,
        ] {
            assert!(is_target_refresh(&m), "{m}");
        }
        for m in [
            Method::Bye,
            Method::Info,
            Method::Ack,
            Method::Prack,
            Method::Message,
        ] {
            assert!(!is_target_refresh(&m), "{m}");
        }
    }

    /// A call holds its dialogs for as long as it lasts: From and To are kept as text, not
    /// as parsed name-addrs (240 bytes each).
    #[test]
    fn a_dialog_keeps_from_and_to_as_text() {
        let size = std::mem::size_of::<Dialog>();
        assert!(size <= 480, "Dialog is {size} bytes");
    }
}
