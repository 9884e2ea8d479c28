//! The live event stream behind `GET /v1/events` (Server-Sent Events).
//!
//! Every call event gets an id from one counter that starts at the process's start time in
//! microseconds, so ids keep increasing across restarts. The last [`RING_CAPACITY`] events
//! are kept in a ring so a client that reconnects with `Last-Event-ID` gets what it missed;
//! live events go through a broadcast channel. A subscriber that falls behind the channel is
//! disconnected and resumes from the ring with its `Last-Event-ID`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// Events kept for `Last-Event-ID` resume.
pub const RING_CAPACITY: usize = 10_000;

/// One event as sent on the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    pub id: u64,
    pub account_id: String,
    /// The SSE `event:` name (`ringing`, `in_progress`, `ended`, `sip`, ...).
    pub name: &'static str,
    /// The JSON `data:`.
    pub data: String,
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
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        // Taking the id under the ring's lock keeps the ring and the channel in id order.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let ev = Arc::new(StreamEvent {
            id,
            account_id,
            name,
            data,
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
    fn resume_filters_by_account_and_id() {
        let hub = EventHub::new(0, 100);
        hub.publish("a".into(), "x", "1".into());
        hub.publish("b".into(), "x", "2".into());
        hub.publish("a".into(), "x", "3".into());
        let (backlog, mut rx) = hub.subscribe("a", Some(1));
        assert_eq!(backlog.len(), 1);
        assert_eq!(backlog[0].data, "3");
        let (fresh, _) = hub.subscribe("a", None);
        assert!(fresh.is_empty());
        hub.publish("a".into(), "x", "4".into());
        assert_eq!(rx.try_recv().unwrap().data, "4");
    }
}
