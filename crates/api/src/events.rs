//! The live event stream behind `GET /v1/events` (Server-Sent Events).
//!
//! Every call event gets an id from one counter that starts at the process's start time in
//! microseconds, so ids keep increasing across restarts. The last [`RING_CAPACITY`] events
//! are kept in a ring so a client that reconnects with `Last-Event-ID` gets what it missed;
//! live events go through a broadcast channel. A subscriber that falls behind the channel is
//! disconnected and resumes from the ring with its `Last-Event-ID`.
//!
//! A call event's JSON is written when a subscriber first reads it ([`StreamEvent::data`]),
//! once, from the parts the journal hands over ([`CallData`]): a server nobody watches does
//! not write it at all.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use store::Detail;
use tokio::sync::broadcast;

use crate::time::Rfc3339Ms;

/// Events kept for `Last-Event-ID` resume.
pub const RING_CAPACITY: usize = 10_000;

/// One event as sent on the stream.
#[derive(Debug)]
pub struct StreamEvent {
    pub id: u64,
    pub account_id: String,
    /// The user whose call the event is of, if any: a subscriber scoped to one user sees
    /// only that user's events.
    pub user_id: Option<String>,
    /// The SSE `event:` name (`ringing`, `in_progress`, `ended`, `sip`, ...).
    pub name: &'static str,
    body: Body,
    /// The JSON `data:`, written from `body` when first read.
    text: OnceLock<String>,
}

#[derive(Debug)]
enum Body {
    Text(String),
    Call(Box<CallData>),
}

/// A call event's parts, as the stream tells them.
#[derive(Debug)]
pub struct CallData {
    pub at_ms: i64,
    pub call_id: String,
    pub detail: Detail,
    pub leg: Option<&'static str>,
    /// The call's status after the event.
    pub status: &'static str,
}

/// The JSON of a call event (the fields in the order a JSON object of them has always had).
#[derive(serde::Serialize)]
struct CallJson<'a> {
    at: Rfc3339Ms,
    call_id: &'a str,
    detail: &'a Detail,
    leg: Option<&'static str>,
    status: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    user_id: &'a Option<String>,
}

impl StreamEvent {
    /// The JSON `data:`.
    pub fn data(&self) -> &str {
        let c = match &self.body {
            Body::Text(t) => return t,
            Body::Call(c) => c,
        };
        self.text.get_or_init(|| {
            // Written into a buffer of about its size (the detail is most of it).
            let mut out = Vec::with_capacity(192 + c.detail.as_str().len());
            let _ = serde_json::to_writer(
                &mut out,
                &CallJson {
                    at: Rfc3339Ms(c.at_ms),
                    call_id: &c.call_id,
                    detail: &c.detail,
                    leg: c.leg,
                    status: c.status,
                    kind: self.name,
                    user_id: &self.user_id,
                },
            );
            String::from_utf8(out).unwrap_or_default()
        })
    }
}

/// Publishes events to subscribers and keeps the ring.
#[derive(Debug)]
pub struct EventHub {
    next_id: AtomicU64,
    ring: Mutex<VecDeque<Arc<StreamEvent>>>,
    capacity: usize,
    tx: broadcast::Sender<Arc<StreamEvent>>,
}

impl EventHub {
    /// A hub whose ids start above `first_id`.
    pub fn new(first_id: u64, capacity: usize) -> EventHub {
        let (tx, _) = broadcast::channel(1024);
        EventHub {
            next_id: AtomicU64::new(first_id),
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity: capacity.max(1),
            tx,
        }
    }

    /// Assigns an id, keeps the event in the ring and sends it to live subscribers.
    pub fn publish(&self, account_id: String, name: &'static str, data: String) -> u64 {
        self.publish_body(account_id, None, name, Body::Text(data))
    }

    /// [`EventHub::publish`] for an event of a call of `user_id`'s (if any), whose JSON is
    /// written from `data` when a subscriber first reads it.
    pub fn publish_call(
        &self,
        account_id: String,
        user_id: Option<String>,
        name: &'static str,
        data: CallData,
    ) -> u64 {
        self.publish_body(account_id, user_id, name, Body::Call(Box::new(data)))
    }

    fn publish_body(
        &self,
        account_id: String,
        user_id: Option<String>,
        name: &'static str,
        body: Body,
    ) -> u64 {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        // Taking the id under the ring's lock keeps the ring and the channel in id order.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let ev = Arc::new(StreamEvent {
            id,
            account_id,
            user_id,
            name,
            body,
            text: OnceLock::new(),
        });
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(ev.clone());
        let _ = self.tx.send(ev);
        id
    }

    /// Subscribes to live events and returns, atomically with it, the ring's events of
    /// `account_id` after `last_id`. Without `last_id` (a fresh subscriber) the backlog is
    /// empty: only live events follow.
    pub fn subscribe(
        &self,
        account_id: &str,
        last_id: Option<u64>,
    ) -> (Vec<Arc<StreamEvent>>, broadcast::Receiver<Arc<StreamEvent>>) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let backlog = match last_id {
            Some(last) => ring
                .iter()
                .filter(|e| e.id > last && e.account_id == account_id)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        (backlog, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_ring_is_bounded() {
        let hub = EventHub::new(100, 3);
        let ids: Vec<u64> = (0..5)
            .map(|i| hub.publish("a".into(), "x", format!("{i}")))
            .collect();
        assert_eq!(ids, vec![101, 102, 103, 104, 105]);
        let (backlog, _) = hub.subscribe("a", Some(0));
        let kept: Vec<u64> = backlog.iter().map(|e| e.id).collect();
        assert_eq!(kept, vec![103, 104, 105]);
    }

    #[test]
    fn a_call_events_json_is_written_once_when_first_read() {
        let hub = EventHub::new(0, 10);
        let detail = Detail::from_json(r#"{"sip_code":180}"#.to_owned()).unwrap();
        let (_, mut rx) = hub.subscribe("a", None);
        hub.publish_call(
            "a".into(),
            Some("user_1".into()),
            "ringing",
            CallData {
                at_ms: 1_796_480_169_841,
                call_id: "call_1".into(),
                detail,
                leg: Some("agent"),
                status: "ringing",
            },
        );
        let ev = rx.try_recv().unwrap();
        assert_eq!(ev.user_id.as_deref(), Some("user_1"));
        assert!(ev.text.get().is_none(), "not written before it is read");
        assert_eq!(
            ev.data(),
            r#"{"at":"2026-12-05T14:16:09.841Z","call_id":"call_1","detail":{"sip_code":180},"leg":"agent","status":"ringing","type":"ringing","user_id":"user_1"}"#
        );
        // Read again (another subscriber, the ring): the same text, not written again.
        assert!(std::ptr::eq(ev.data(), ev.data()));
        let (backlog, _) = hub.subscribe("a", Some(0));
        assert!(std::ptr::eq(backlog[0].data(), ev.data()));
    }

    #[test]
    fn resume_filters_by_account_and_id() {
        let hub = EventHub::new(0, 100);
        hub.publish("a".into(), "x", "1".into());
        hub.publish("b".into(), "x", "2".into());
        hub.publish("a".into(), "x", "3".into());
        let (backlog, mut rx) = hub.subscribe("a", Some(1));
        assert_eq!(backlog.len(), 1);
        assert_eq!(backlog[0].data(), "3");
        let (fresh, _) = hub.subscribe("a", None);
        assert!(fresh.is_empty());
        hub.publish("a".into(), "x", "4".into());
        assert_eq!(rx.try_recv().unwrap().data(), "4");
    }
}
