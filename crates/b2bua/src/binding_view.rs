//! The registrar's memory of each device's bindings: what it last read from the store or
//! wrote to it, so that a refresh (a REGISTER that changes only the expiry of a binding as it
//! stands) needs no store read.
//!
//! Coherence with the store:
//! - Only this process writes the bindings it keeps here (the registrar is the one writer of
//!   bindings; the sweep removes only expired ones, which a lookup leaves out anyway). A store
//!   other processes write (several nodes on one PostgreSQL database) is not kept here at all:
//!   the registrar builds this with a lifetime of zero for it.
//! - An entry is trusted while the store's provisioning generation is the one read before the
//!   entry was read from the store (a device deleted or changed through this node drops its
//!   bindings' entry) and for at most the lifetime since that read: whatever else changed the
//!   store (a device deleted by another process on the same file) is seen within it.
//! - Every change of an entry gives it a new stamp. A REGISTER notes the stamp it decided
//!   with; its result is kept only when the stamp is still the same when it is applied,
//!   otherwise (another REGISTER of the same device changed the entry meanwhile) the entry is
//!   dropped and the next REGISTER reads the store again.
//! - A write to the store (a new, changed or removed contact) first marks the entry untrusted,
//!   so that a write whose REGISTER goes away before it ends never leaves a stale entry.
//! - A write decided on bindings that nothing else touched (no other write of the device under
//!   way when they were read, no other REGISTER of the device since) and that nothing
//!   touched while it ran knows the result without reading it back: the bindings it decided
//!   on with its own changes laid over them ([`BindingViews::untrust_after`],
//!   [`BindingViews::settle_written`]). Anything else reads the store after the write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use store::Binding;

/// What [`BindingViews::get`] saw of one device: its stamp, and whether it read the bindings
/// from memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    stamp: u64,
    /// `Some((read_at, generation))` of the entry when it was trusted.
    trusted: Option<(u64, u64)>,
    /// No write of the device was under way.
    quiet: bool,
    /// What a write saw: its own stamp ([`BindingViews::untrust_after`]).
    writing: bool,
    /// The device had no entry ([`BindingViews::peek`]).
    absent: bool,
}

impl Seen {
    /// What a registrar that keeps nothing sees.
    pub(crate) const NOTHING: Seen = Seen {
        stamp: 0,
        trusted: None,
        quiet: false,
        writing: false,
        absent: false,
    };

    /// Whether the bindings came from memory.
    pub(crate) fn was_kept(&self) -> bool {
        self.trusted.is_some()
    }
}

#[derive(Debug)]
struct Entry {
    /// `None`: not to be trusted (a write is under way, or failed); read the store.
    bindings: Option<Arc<Vec<Binding>>>,
    stamp: u64,
    /// When (unix seconds) the bindings were last read from the store.
    read_at: u64,
    /// The store's provisioning generation read before that read.
    generation: u64,
    /// The stamp of the write under way ([`BindingViews::untrust`]) until it settles.
    writer: Option<u64>,
}

/// Each device's bindings as this registrar last read or wrote them.
#[derive(Debug)]
pub(crate) struct BindingViews {
    entries: HashMap<String, Entry>,
    next_stamp: u64,
    ttl_secs: u64,
    capacity: usize,
}

impl BindingViews {
    /// Entries trusted for at most `ttl` after they were read from the store (zero: nothing
    /// is ever trusted, every REGISTER reads the store); at most `capacity` devices are kept
    /// (past it the memory starts over).
    pub(crate) fn new(ttl: Duration, capacity: usize) -> BindingViews {
        BindingViews {
            entries: HashMap::new(),
            next_stamp: 1,
            ttl_secs: ttl.as_secs(),
            capacity: capacity.max(1),
        }
    }

    /// Whether anything is ever kept.
    pub(crate) fn enabled(&self) -> bool {
        self.ttl_secs > 0
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    /// Runs `f` on the entry of `device`, created (untrusted) when there is none.
    fn with_entry<R>(&mut self, device: &str, f: impl FnOnce(&mut Entry) -> R) -> R {
        if let Some(e) = self.entries.get_mut(device) {
            return f(e);
        }
        if self.entries.len() >= self.capacity {
            // Writes under way stay known: a REGISTER must not take a device for quiet while
            // one of its writes has not settled.
            self.entries.retain(|_, e| e.writer.is_some());
        }
        let stamp = self.stamp();
        f(self.entries.entry(device.to_owned()).or_insert(Entry {
            bindings: None,
            stamp,
            read_at: 0,
            generation: 0,
            writer: None,
        }))
    }

    /// The bindings of `device` unexpired at `now` when its entry is trusted (`generation`:
    /// the store's provisioning generation now), and what was seen, to hand back to
    /// [`Self::settle`].
    pub(crate) fn get(
        &mut self,
        device: &str,
        now: u64,
        generation: u64,
    ) -> (Option<Arc<Vec<Binding>>>, Seen) {
        let ttl = self.ttl_secs;
        if ttl == 0 {
            return (None, Seen::NOTHING);
        }
        self.with_entry(device, |e| {
            let fresh = e.generation == generation && now.saturating_sub(e.read_at) < ttl;
            match &e.bindings {
                Some(b) if fresh => {
                    let now = now as i64;
                    let live = if b.iter().all(|b| b.expires_at > now) {
                        Arc::clone(b)
                    } else {
                        Arc::new(b.iter().filter(|b| b.expires_at > now).cloned().collect())
                    };
                    (
                        Some(live),
                        Seen {
                            stamp: e.stamp,
                            trusted: Some((e.read_at, e.generation)),
                            quiet: e.writer.is_none(),
                            writing: false,
                            absent: false,
                        },
                    )
                }
                _ => {
                    e.bindings = None;
                    (
                        None,
                        Seen {
                            stamp: e.stamp,
                            trusted: None,
                            quiet: e.writer.is_none(),
                            writing: false,
                            absent: false,
                        },
                    )
                }
            }
        })
    }

    /// What to read `device`'s bindings with when they are not kept (`None`: they are, or
    /// nothing is ever kept), without making an entry for it: an entry is made only when what
    /// was read settles ([`Self::settle`]), so that reads for names that turn out to be no
    /// device leave nothing behind.
    pub(crate) fn peek(&self, device: &str, now: u64, generation: u64) -> Option<Seen> {
        if !self.enabled() {
            return None;
        }
        match self.entries.get(device) {
            None => Some(Seen {
                stamp: 0,
                trusted: None,
                quiet: true,
                writing: false,
                absent: true,
            }),
            Some(e) => {
                let fresh = e.generation == generation
                    && now.saturating_sub(e.read_at) < self.ttl_secs
                    && e.bindings.is_some();
                (!fresh).then_some(Seen {
                    stamp: e.stamp,
                    trusted: None,
                    quiet: e.writer.is_none(),
                    writing: false,
                    absent: false,
                })
            }
        }
    }

    /// Marks `device`'s entry untrusted before a write of its bindings; returns what to settle
    /// it with after the write and the read that follows it.
    pub(crate) fn untrust(&mut self, device: &str) -> Seen {
        self.untrust_after(device, Seen::NOTHING).0
    }

    /// [`Self::untrust`] for a write decided on the bindings `seen` saw; also whether they
    /// are the device's bindings as they stand: no write of the device was under way when
    /// they were read and nothing changed the entry since. Only then may the write's result be
    /// made from them ([`Self::settle_written`]).
    pub(crate) fn untrust_after(&mut self, device: &str, seen: Seen) -> (Seen, bool) {
        if !self.enabled() {
            return (Seen::NOTHING, false);
        }
        let stamp = self.stamp();
        let current = self.with_entry(device, |e| {
            let current = seen.quiet && e.stamp == seen.stamp && e.writer.is_none();
            e.bindings = None;
            e.stamp = stamp;
            e.writer = Some(stamp);
            current
        });
        (
            Seen {
                stamp,
                trusted: None,
                quiet: false,
                writing: true,
                absent: false,
            },
            current,
        )
    }

    /// Marks `device`'s entry untrusted (a failed write of the store's memory), with no write
    /// under way.
    pub(crate) fn forget(&mut self, device: &str) {
        if !self.enabled() {
            return;
        }
        let stamp = self.stamp();
        self.with_entry(device, |e| {
            e.bindings = None;
            e.stamp = stamp;
        });
    }

    /// After a write marked by [`Self::untrust_after`] as decided on the bindings as they
    /// stood (`seen`, what they were read with): when nothing changed the entry while it ran,
    /// keeps and returns `bindings()`, the write's result made in memory. `None`: something
    /// did; read the store (and [`Self::settle`] what was read with `write`).
    pub(crate) fn settle_written(
        &mut self,
        device: &str,
        seen: Seen,
        write: Seen,
        bindings: impl FnOnce() -> Arc<Vec<Binding>>,
        now: u64,
        generation: u64,
    ) -> Option<Arc<Vec<Binding>>> {
        if !self.enabled() {
            return None;
        }
        let stamp = self.stamp();
        let e = self.entries.get_mut(device)?;
        if e.stamp != write.stamp {
            return None;
        }
        let kept = bindings();
        let (read_at, generation) = seen.trusted.unwrap_or((now, generation));
        *e = Entry {
            bindings: Some(Arc::clone(&kept)),
            stamp,
            read_at,
            generation,
            writer: None,
        };
        Some(kept)
    }

    /// Keeps `bindings` as `device`'s when nothing changed its entry since `seen`: read from
    /// the store at `read_at` after the provisioning generation was `generation` (when `seen`
    /// came from the store; an entry from memory keeps its own). Otherwise drops the entry.
    pub(crate) fn settle(
        &mut self,
        device: &str,
        seen: Seen,
        bindings: Arc<Vec<Binding>>,
        read_at: u64,
        generation: u64,
    ) {
        if !self.enabled() {
            return;
        }
        if seen.absent {
            // Read when the device had no entry: kept only if it still has none (anything
            // else that came meanwhile settles on its own).
            if self.entries.contains_key(device) {
                return;
            }
            let stamp = self.stamp();
            self.with_entry(device, |e| {
                *e = Entry {
                    bindings: Some(bindings),
                    stamp,
                    read_at,
                    generation,
                    writer: None,
                };
            });
            return;
        }
        let stamp = self.stamp();
        self.with_entry(device, |e| {
            if e.stamp != seen.stamp {
                e.bindings = None;
                e.stamp = stamp;
                // A write that settles, disturbed, is no longer under way.
                if e.writer == Some(seen.stamp) {
                    e.writer = None;
                }
                return;
            }
            // A read made while a write was under way may have missed it: the write's own
            // result settles instead.
            if e.writer.is_some_and(|w| !(seen.writing && w == seen.stamp)) {
                return;
            }
            let (read_at, generation) = seen.trusted.unwrap_or((read_at, generation));
            *e = Entry {
                bindings: Some(bindings),
                stamp,
                read_at,
                generation,
                writer: None,
            };
        });
    }

    /// How many devices have an entry.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(contact: &str, expires_at: i64) -> Binding {
        Binding {
            device_username: "alice-desk".into(),
            user_id: "user_1".into(),
            contact: contact.into(),
            source: "192.0.2.10:40000".into(),
            transport: "udp".into(),
            local: "127.0.0.1:5060".into(),
            expires_at,
            q: None,
            call_id: "c1".into(),
            cseq: 1,
            instance: None,
            reg_id: None,
            user_agent: None,
            updated_at: 0,
            path: Vec::new(),
        }
    }

    #[test]
    fn a_settled_entry_is_served_until_its_lifetime_or_a_provisioning_change() {
        let mut v = BindingViews::new(Duration::from_secs(30), 10);
        let (none, seen) = v.get("alice-desk", 1000, 7);
        assert!(none.is_none() && !seen.was_kept());
        v.settle(
            "alice-desk",
            seen,
            Arc::new(vec![binding("sip:a@x", 2000)]),
            1000,
            7,
        );
        let (b, seen) = v.get("alice-desk", 1029, 7);
        assert_eq!(b.unwrap()[0].contact, "sip:a@x");
        assert!(seen.was_kept());
        // Past the lifetime since the store was read: read again.
        assert!(v.get("alice-desk", 1030, 7).0.is_none());
        let (_, seen) = v.get("alice-desk", 1030, 7);
        v.settle("alice-desk", seen, Arc::new(vec![]), 1030, 7);
        assert!(v.get("alice-desk", 1031, 7).0.is_some());
        // The provisioning changed: read again.
        assert!(v.get("alice-desk", 1031, 8).0.is_none());
    }

    #[test]
    fn a_refresh_kept_from_memory_keeps_the_time_of_the_read() {
        let mut v = BindingViews::new(Duration::from_secs(30), 10);
        let (_, seen) = v.get("alice-desk", 1000, 1);
        v.settle(
            "alice-desk",
            seen,
            Arc::new(vec![binding("sip:a@x", 2000)]),
            1000,
            1,
        );
        let (_, seen) = v.get("alice-desk", 1020, 1);
        v.settle(
            "alice-desk",
            seen,
            Arc::new(vec![binding("sip:a@x", 3000)]),
            1020,
            1,
        );
        let (b, _) = v.get("alice-desk", 1025, 1);
        assert_eq!(b.unwrap()[0].expires_at, 3000);
        // Still 30 s after the read at 1000, not after the refresh at 1020.
        assert!(v.get("alice-desk", 1030, 1).0.is_none());
    }

    #[test]
    fn expired_bindings_are_left_out() {
        let mut v = BindingViews::new(Duration::from_secs(30), 10);
        let (_, seen) = v.get("alice-desk", 1000, 1);
        v.settle(
            "alice-desk",
            seen,
            Arc::new(vec![binding("sip:a@x", 1010), binding("sip:b@x", 2000)]),
            1000,
            1,
        );
        let b = v.get("alice-desk", 1010, 1).0.unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].contact, "sip:b@x");
    }

    #[test]
    fn a_result_decided_on_a_view_changed_meanwhile_drops_the_view() {
        let mut v = BindingViews::new(Duration::from_secs(30), 10);
        let (_, seen) = v.get("alice-desk", 1000, 1);
        v.settle(
            "alice-desk",
            seen,
            Arc::new(vec![binding("sip:a@x", 2000)]),
            1000,
            1,
        );
        // Two REGISTERs of the device decide on the same view.
        let (_, first) = v.get("alice-desk", 1001, 1);
        let (_, second) = v.get("alice-desk", 1001, 1);
        v.settle(
            "alice-desk",
            first,
            Arc::new(vec![binding("sip:a@x", 3000)]),
            1001,
            1,
        );
        v.settle(
            "alice-desk",
            second,
            Arc::new(vec![binding("sip:a@x", 2500)]),
            1001,
            1,
        );
        assert!(v.get("alice-desk", 1002, 1).0.is_none());
        // Two reads from the store that race: the later one to settle drops the view.
        let (_, first) = v.get("alice-desk", 1002, 1);
        let (_, second) = v.get("alice-desk", 1002, 1);
        v.settle(
            "alice-desk",
            first,
            Arc::new(vec![binding("sip:a@x", 3000)]),
            1002,
            1,
        );
        v.settle(
            "alice-desk",
            second,
            Arc::new(vec![binding("sip:a@x", 3000)]),
            1002,
            1,
        );
        assert!(v.get("alice-desk", 1003, 1).0.is_none());
    }

    #[test]
    fn a_write_under_way_makes_the_view_untrusted_until_it_settles() {
        let mut v = BindingViews::new(Duration::from_secs(30), 10);
        let (_, seen) = v.get("alice-desk", 1000, 1);
        v.settle(
            "alice-desk",
            seen,
            Arc::new(vec![binding("sip:a@x", 2000)]),
            1000,
            1,
        );
        let (_, refresh) = v.get("alice-desk", 1001, 1);
        let write = v.untrust("alice-desk");
        // Meanwhile nobody is served from memory, and a refresh decided before is refused.
        assert!(v.get("alice-desk", 1001, 1).0.is_none());
        v.settle(
            "alice-desk",
            refresh,
            Arc::new(vec![binding("sip:a@x", 9000)]),
            1001,
            1,
        );
        assert!(v.get("alice-desk", 1001, 1).0.is_none());
        // The write's own result, read from the store after it, is not kept either: the
        // refused refresh changed the entry after the write began.
        v.settle("alice-desk", write, Arc::new(vec![]), 1001, 1);
        assert!(v.get("alice-desk", 1001, 1).0.is_none());
        // A write that settles undisturbed is kept.
        let write = v.untrust("alice-desk");
        v.settle(
            "alice-desk",
            write,
            Arc::new(vec![binding("sip:b@x", 2000)]),
            1002,
            1,
        );
        assert_eq!(
            v.get("alice-desk", 1003, 1).0.unwrap()[0].contact,
            "sip:b@x"
        );
    }

    #[test]
    fn a_write_on_bindings_as_they_stand_keeps_its_own_result() {
        let mut v = BindingViews::new(Duration::from_secs(30), 10);
        let (_, seen) = v.get("alice-desk", 1000, 1);
        let (write, current) = v.untrust_after("alice-desk", seen);
        assert!(current);
        let kept = v.settle_written(
            "alice-desk",
            seen,
            write,
            || Arc::new(vec![binding("sip:a@x", 2000)]),
            1000,
            1,
        );
        assert_eq!(kept.unwrap()[0].contact, "sip:a@x");
        let (b, seen) = v.get("alice-desk", 1001, 1);
        assert_eq!(b.unwrap()[0].contact, "sip:a@x");
        assert!(seen.was_kept());
        // Kept from memory, the entry keeps the time of the read it came from.
        assert!(v.get("alice-desk", 1030, 1).0.is_none());
    }

    #[test]
    fn a_write_decided_on_bindings_that_changed_or_were_being_written_reads_them_back() {
        let mut v = BindingViews::new(Duration::from_secs(30), 10);
        // Another REGISTER of the device came between the read and the write.
        let (_, seen) = v.get("alice-desk", 1000, 1);
        let other = v.untrust("alice-desk");
        let (_, current) = v.untrust_after("alice-desk", seen);
        assert!(!current);
        v.settle("alice-desk", other, Arc::new(vec![]), 1000, 1);
        // Read while a write was under way (one whose REGISTER went away): that read is
        // not kept, and a write decided on it must read back.
        let _abandoned = v.untrust("alice-desk");
        let (_, seen) = v.get("alice-desk", 1001, 1);
        v.settle(
            "alice-desk",
            seen,
            Arc::new(vec![binding("sip:a@x", 2000)]),
            1001,
            1,
        );
        assert!(v.get("alice-desk", 1001, 1).0.is_none());
        let (_, seen) = v.get("alice-desk", 1001, 1);
        let (write, current) = v.untrust_after("alice-desk", seen);
        assert!(!current);
        // Its own read back settles, and the device is quiet again.
        v.settle(
            "alice-desk",
            write,
            Arc::new(vec![binding("sip:a@x", 2000)]),
            1001,
            1,
        );
        let (b, seen) = v.get("alice-desk", 1002, 1);
        assert!(b.is_some());
        let (write, current) = v.untrust_after("alice-desk", seen);
        assert!(current);
        // Something changed the entry while the write ran: no result from memory.
        let (_, racing) = v.get("alice-desk", 1002, 1);
        let _ = v.untrust_after("alice-desk", racing);
        let kept = v.settle_written("alice-desk", seen, write, || Arc::new(vec![]), 1002, 1);
        assert!(kept.is_none());
    }

    #[test]
    fn writes_under_way_outlive_the_memory_starting_over() {
        let mut v = BindingViews::new(Duration::from_secs(30), 2);
        let _abandoned = v.untrust("a");
        for d in ["b", "c", "d"] {
            let (_, seen) = v.get(d, 1000, 1);
            v.settle(d, seen, Arc::new(vec![]), 1000, 1);
        }
        let (_, seen) = v.get("a", 1000, 1);
        assert!(!v.untrust_after("a", seen).1);
    }

    #[test]
    fn a_read_for_a_device_without_an_entry_makes_one_only_when_it_settles() {
        let mut v = BindingViews::new(Duration::from_secs(30), 10);
        let seen = v.peek("alice-desk", 1000, 1).unwrap();
        assert_eq!(v.len(), 0);
        v.settle(
            "alice-desk",
            seen,
            Arc::new(vec![binding("sip:a@x", 2000)]),
            1000,
            1,
        );
        assert!(v.peek("alice-desk", 1001, 1).is_none());
        let (b, seen) = v.get("alice-desk", 1001, 1);
        assert_eq!(b.unwrap()[0].contact, "sip:a@x");
        assert!(v.untrust_after("alice-desk", seen).1);
        // An entry made meanwhile (here a write under way) wins over the read.
        let seen = v.peek("bob-desk", 1000, 1).unwrap();
        let write = v.untrust("bob-desk");
        v.settle("bob-desk", seen, Arc::new(vec![]), 1000, 1);
        assert!(v.get("bob-desk", 1000, 1).0.is_none());
        v.settle("bob-desk", write, Arc::new(vec![]), 1000, 1);
        assert!(v.get("bob-desk", 1000, 1).0.is_some());
        // Stale entries are read again; nothing is read when nothing is kept.
        assert!(v.peek("alice-desk", 1030, 1).is_some());
        assert!(v.peek("alice-desk", 1001, 2).is_some());
        assert!(BindingViews::new(Duration::ZERO, 10)
            .peek("alice-desk", 1000, 1)
            .is_none());
    }

    #[test]
    fn a_zero_lifetime_keeps_nothing() {
        let mut v = BindingViews::new(Duration::ZERO, 10);
        let (_, seen) = v.get("alice-desk", 1000, 1);
        v.settle(
            "alice-desk",
            seen,
            Arc::new(vec![binding("sip:a@x", 2000)]),
            1000,
            1,
        );
        assert!(v.get("alice-desk", 1001, 1).0.is_none());
        assert_eq!(v.len(), 0);
    }

    #[test]
    fn past_the_capacity_the_memory_starts_over() {
        let mut v = BindingViews::new(Duration::from_secs(30), 2);
        for d in ["a", "b", "c"] {
            let (_, seen) = v.get(d, 1000, 1);
            v.settle(d, seen, Arc::new(vec![binding("sip:a@x", 2000)]), 1000, 1);
        }
        assert!(v.len() <= 2);
        assert!(v.get("c", 1001, 1).0.is_some());
    }
}
