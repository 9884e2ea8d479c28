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
//! - Each write under way is marked on the entry until it settles (or fails, or a lifetime
//!   has passed: its REGISTER went away and its store call has long ended). A read made
//!   while another write of the device is under way may have missed it: it is not kept.
//! - A write decided on bindings that nothing else touched (no write of the device under way
//!   when they were read, no other REGISTER of the device since) and that nothing touched
//!   while it ran knows the result without reading it back: the bindings it decided on with
//!   its own changes applied in order ([`BindingViews::untrust_after`],
//!   [`BindingViews::settle_written`]). Anything else reads the store after the write.
//! - A read for a device with no entry makes one only when it settles, and only if no entry
//!   was dropped for room meanwhile ([`BindingViews::peek`]).

use sip_core::map::Map;
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
    /// Not 0: the device had no entry ([`BindingViews::peek`]); the evictions then, plus one.
    absent: u64,
}

impl Seen {
    /// What a registrar that keeps nothing sees.
    pub(crate) const NOTHING: Seen = Seen {
        stamp: 0,
        trusted: None,
        quiet: false,
        writing: false,
        absent: 0,
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
    /// The writes under way ([`BindingViews::untrust`]): each one's stamp and when (unix
    /// seconds) it began, until it settles or is abandoned. A mark older than the entries'
    /// lifetime is taken for a write whose REGISTER went away (its store call has long
    /// ended) and no longer counts.
    writers: Vec<(u64, u64)>,
}

/// Whether a write that began at `since` still counts as under way at `now`.
fn under_way(since: u64, now: u64, ttl: u64) -> bool {
    now.saturating_sub(since) < ttl
}

impl Entry {
    /// Forgets the marks of writes that began a lifetime ago or more.
    fn prune(&mut self, now: u64, ttl: u64) {
        self.writers
            .retain(|&(_, since)| under_way(since, now, ttl));
    }

    /// No write under way but, if `own`, the one with that stamp.
    fn no_writer_but(&self, own: Option<u64>) -> bool {
        self.writers.iter().all(|&(w, _)| Some(w) == own)
    }

    fn drop_writer(&mut self, stamp: u64) {
        self.writers.retain(|&(w, _)| w != stamp);
    }
}

/// Each device's bindings as this registrar last read or wrote them.
#[derive(Debug)]
pub(crate) struct BindingViews {
    entries: Map<String, Entry>,
    next_stamp: u64,
    ttl_secs: u64,
    capacity: usize,
    /// How many times entries were dropped to stay within the capacity: a read made when
    /// its device had no entry is kept only if none was dropped since.
    evictions: u64,
}

impl BindingViews {
    /// Entries trusted for at most `ttl` after they were read from the store (zero: nothing
    /// is ever kept, every REGISTER reads the store); at most `capacity` devices are kept
    /// (past it the memory starts over).
    pub(crate) fn new(ttl: Duration, capacity: usize) -> BindingViews {
        BindingViews {
            entries: Map::default(),
            next_stamp: 1,
            ttl_secs: ttl.as_secs(),
            capacity: capacity.max(1),
            evictions: 0,
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

    /// Runs `f` on the entry of `device`, created (untrusted) when there is none, after
    /// forgetting its marks of writes older than the lifetime.
    fn with_entry<R>(&mut self, device: &str, now: u64, f: impl FnOnce(&mut Entry) -> R) -> R {
        let ttl = self.ttl_secs;
        if let Some(e) = self.entries.get_mut(device) {
            e.prune(now, ttl);
            return f(e);
        }
        if self.entries.len() >= self.capacity {
            // Writes under way stay known: a REGISTER must not take a device for quiet while
            // one of its writes has not settled.
            self.entries.retain(|_, e| {
                e.prune(now, ttl);
                !e.writers.is_empty()
            });
            self.evictions += 1;
        }
        let stamp = self.stamp();
        f(self.entries.entry(device.to_owned()).or_insert(Entry {
            bindings: None,
            stamp,
            read_at: 0,
            generation: 0,
            writers: Vec::new(),
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
        self.with_entry(device, now, |e| {
            let fresh = e.generation == generation && now.saturating_sub(e.read_at) < ttl;
            let quiet = e.writers.is_empty();
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
                            quiet,
                            writing: false,
                            absent: 0,
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
                            quiet,
                            writing: false,
                            absent: 0,
                        },
                    )
                }
            }
        })
    }

    /// The bindings of `device` unexpired at `now` when its entry is trusted (`generation`:
    /// the store's provisioning generation now), without touching the entry: what a call's
    /// fork reads ([`crate::registrar::Registrar::bindings_for_user`]).
    pub(crate) fn kept(
        &self,
        device: &str,
        now: u64,
        generation: u64,
    ) -> Option<Arc<Vec<Binding>>> {
        let e = self.entries.get(device)?;
        let b = e.bindings.as_ref()?;
        if e.generation != generation || now.saturating_sub(e.read_at) >= self.ttl_secs {
            return None;
        }
        let at = now as i64;
        Some(if b.iter().all(|b| b.expires_at > at) {
            Arc::clone(b)
        } else {
            Arc::new(b.iter().filter(|b| b.expires_at > at).cloned().collect())
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
                // One more than the evictions so far: what a settle checks.
                absent: self.evictions + 1,
            }),
            Some(e) => {
                let fresh = e.generation == generation
                    && now.saturating_sub(e.read_at) < self.ttl_secs
                    && e.bindings.is_some();
                (!fresh).then_some(Seen {
                    stamp: e.stamp,
                    trusted: None,
                    quiet: !e
                        .writers
                        .iter()
                        .any(|&(_, since)| under_way(since, now, self.ttl_secs)),
                    writing: false,
                    absent: 0,
                })
            }
        }
    }

    /// Marks `device`'s entry untrusted before a write of its bindings; returns what to settle
    /// (or [`Self::abandon`]) it with after the write and the read that follows it.
    pub(crate) fn untrust(&mut self, device: &str, now: u64) -> Seen {
        self.untrust_after(device, Seen::NOTHING, now).0
    }

    /// [`Self::untrust`] for a write decided on the bindings `seen` saw; also whether they
    /// are the device's bindings as they stand: no write of the device was under way when
    /// they were read and nothing changed the entry since. Only then may the write's result be
    /// made from them ([`Self::settle_written`]).
    pub(crate) fn untrust_after(&mut self, device: &str, seen: Seen, now: u64) -> (Seen, bool) {
        if !self.enabled() {
            return (Seen::NOTHING, false);
        }
        let stamp = self.stamp();
        let current = self.with_entry(device, now, |e| {
            let current = seen.quiet && e.stamp == seen.stamp && e.writers.is_empty();
            e.bindings = None;
            e.stamp = stamp;
            e.writers.push((stamp, now));
            current
        });
        (
            Seen {
                stamp,
                trusted: None,
                quiet: false,
                writing: true,
                absent: 0,
            },
            current,
        )
    }

    /// A write marked by [`Self::untrust`] that failed or whose result is not read: it is no
    /// longer under way, and the entry stays untrusted.
    pub(crate) fn abandon(&mut self, device: &str, write: Seen, now: u64) {
        if !self.enabled() || !write.writing {
            return;
        }
        let stamp = self.stamp();
        self.with_entry(device, now, |e| {
            e.drop_writer(write.stamp);
            e.bindings = None;
            e.stamp = stamp;
        });
    }

    /// Marks `device`'s entry untrusted (a failed write of the store's memory), with no write
    /// under way.
    pub(crate) fn forget(&mut self, device: &str, now: u64) {
        if !self.enabled() {
            return;
        }
        let stamp = self.stamp();
        self.with_entry(device, now, |e| {
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
        if e.stamp != write.stamp || !e.no_writer_but(Some(write.stamp)) {
            return None;
        }
        let kept = bindings();
        let (read_at, generation) = seen.trusted.unwrap_or((now, generation));
        *e = Entry {
            bindings: Some(Arc::clone(&kept)),
            stamp,
            read_at,
            generation,
            writers: Vec::new(),
        };
        Some(kept)
    }

    /// Keeps `bindings` as `device`'s when nothing changed its entry since `seen` and no
    /// other write of it is under way: read from the store at `read_at` after the
    /// provisioning generation was `generation` (when `seen` came from the store; an entry
    /// from memory keeps its own). Otherwise leaves the entry untrusted, with a new stamp, so
    /// that what was decided on the entry meanwhile is not kept either.
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
        if seen.absent > 0 {
            // Read when the device had no entry: kept only if it still has none and none was
            // dropped for room meanwhile (one made and dropped since would have been missed).
            if self.entries.contains_key(device) || seen.absent != self.evictions + 1 {
                return;
            }
            let stamp = self.stamp();
            self.with_entry(device, read_at, |e| {
                *e = Entry {
                    bindings: Some(bindings),
                    stamp,
                    read_at,
                    generation,
                    writers: Vec::new(),
                };
            });
            return;
        }
        let stamp = self.stamp();
        self.with_entry(device, read_at, |e| {
            let own = seen.writing.then_some(seen.stamp);
            if let Some(w) = own {
                // This write is no longer under way, kept or not.
                e.drop_writer(w);
            }
            // A read made while another write was under way may have missed it.
            if e.stamp != seen.stamp || !e.no_writer_but(None) {
                e.bindings = None;
                e.stamp = stamp;
                return;
            }
            let (read_at, generation) = seen.trusted.unwrap_or((read_at, generation));
            *e = Entry {
                bindings: Some(bindings),
                stamp,
                read_at,
                generation,
                writers: Vec::new(),
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
        let write = v.untrust("alice-desk", 1001);
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
        let write = v.untrust("alice-desk", 1002);
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
        let (write, current) = v.untrust_after("alice-desk", seen, 1000);
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

    /// A view settled and trusted again, and what a REGISTER decides on it.
    fn trusted(v: &mut BindingViews, now: u64) -> Seen {
        let (_, seen) = v.get("alice-desk", now, 1);
        v.settle("alice-desk", seen, Arc::new(vec![]), now, 1);
        let (b, seen) = v.get("alice-desk", now, 1);
        assert!(b.is_some(), "trusted at {now}");
        seen
    }

    #[test]
    fn a_write_decided_on_bindings_that_changed_meanwhile_reads_them_back() {
        let mut v = BindingViews::new(Duration::from_secs(30), 10);
        // Another REGISTER of the device began a write between the read and this write.
        let seen = trusted(&mut v, 1000);
        let other = v.untrust("alice-desk", 1000);
        let (this, current) = v.untrust_after("alice-desk", seen, 1000);
        assert!(!current);
        v.settle("alice-desk", other, Arc::new(vec![]), 1000, 1);
        v.settle("alice-desk", this, Arc::new(vec![]), 1000, 1);
        // A refresh (kept in the store's memory on the registrar's thread) settles while a
        // write decided on the bindings as they stood runs: the write reads back.
        let seen = trusted(&mut v, 1001);
        let (write, current) = v.untrust_after("alice-desk", seen, 1001);
        assert!(current);
        let (_, refresh) = v.get("alice-desk", 1001, 1);
        v.settle(
            "alice-desk",
            refresh,
            Arc::new(vec![binding("sip:a@x", 9000)]),
            1001,
            1,
        );
        assert!(v.get("alice-desk", 1001, 1).0.is_none());
        let kept = v.settle_written("alice-desk", seen, write, || Arc::new(vec![]), 1001, 1);
        assert!(kept.is_none());
        v.settle("alice-desk", write, Arc::new(vec![]), 1001, 1);
        assert!(v.get("alice-desk", 1001, 1).0.is_none());
        // Quiet again: the next write is decided on bindings as they stand.
        let seen = trusted(&mut v, 1002);
        assert!(v.untrust_after("alice-desk", seen, 1002).1);
    }

    #[test]
    fn overlapping_writes_keep_nothing_until_both_have_settled() {
        let mut v = BindingViews::new(Duration::from_secs(30), 10);
        trusted(&mut v, 1000);
        let first = v.untrust("alice-desk", 1000);
        let second = v.untrust("alice-desk", 1000);
        // The second reads back and settles while the first still runs: its read may miss
        // the first's write.
        v.settle("alice-desk", second, Arc::new(vec![]), 1000, 1);
        assert!(v.get("alice-desk", 1000, 1).0.is_none());
        let (_, seen) = v.get("alice-desk", 1000, 1);
        v.settle("alice-desk", seen, Arc::new(vec![]), 1000, 1);
        assert!(v.get("alice-desk", 1000, 1).0.is_none());
        v.settle("alice-desk", first, Arc::new(vec![]), 1000, 1);
        assert!(v.get("alice-desk", 1000, 1).0.is_none());
        // Both settled: quiet again.
        let seen = trusted(&mut v, 1001);
        let (write, current) = v.untrust_after("alice-desk", seen, 1001);
        assert!(current);
        v.abandon("alice-desk", write, 1001);
        trusted(&mut v, 1001);
    }

    #[test]
    fn a_write_whose_register_went_away_counts_for_a_lifetime_a_failed_one_not_at_all() {
        let mut v = BindingViews::new(Duration::from_secs(30), 10);
        let _gone = v.untrust("alice-desk", 1000);
        // Reads while it may still land are not kept, and writes decided on them read back.
        let (_, seen) = v.get("alice-desk", 1001, 1);
        v.settle("alice-desk", seen, Arc::new(vec![]), 1001, 1);
        assert!(v.get("alice-desk", 1001, 1).0.is_none());
        let (_, seen) = v.get("alice-desk", 1001, 1);
        let (write, current) = v.untrust_after("alice-desk", seen, 1001);
        assert!(!current);
        v.settle("alice-desk", write, Arc::new(vec![]), 1001, 1);
        assert!(v.get("alice-desk", 1001, 1).0.is_none());
        // A lifetime after it began it no longer counts.
        let seen = trusted(&mut v, 1030);
        assert!(v.untrust_after("alice-desk", seen, 1030).1);
        // A write that failed is abandoned at once.
        let (_, seen) = v.get("bob-desk", 1030, 1);
        let failed = v.untrust("bob-desk", 1030);
        v.abandon("bob-desk", failed, 1030);
        let (_, seen2) = v.get("bob-desk", 1030, 1);
        assert_ne!(seen, seen2);
        v.settle("bob-desk", seen2, Arc::new(vec![]), 1030, 1);
        assert!(v.get("bob-desk", 1030, 1).0.is_some());
    }

    #[test]
    fn writes_under_way_outlive_the_memory_starting_over() {
        let mut v = BindingViews::new(Duration::from_secs(30), 2);
        let _abandoned = v.untrust("a", 1000);
        for d in ["b", "c", "d"] {
            let (_, seen) = v.get(d, 1000, 1);
            v.settle(d, seen, Arc::new(vec![]), 1000, 1);
        }
        let (_, seen) = v.get("a", 1000, 1);
        assert!(!v.untrust_after("a", seen, 1000).1);
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
        assert!(v.untrust_after("alice-desk", seen, 1001).1);
        // An entry made meanwhile (here a write under way) wins over the read.
        let seen = v.peek("bob-desk", 1000, 1).unwrap();
        let write = v.untrust("bob-desk", 1000);
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
    fn a_read_for_a_device_without_an_entry_is_not_kept_after_entries_were_dropped() {
        let mut v = BindingViews::new(Duration::from_secs(30), 2);
        let seen = v.peek("carol-desk", 1000, 1).unwrap();
        // Meanwhile an entry of the device was made, written, settled and dropped for room.
        let write = v.untrust("carol-desk", 1000);
        v.settle("carol-desk", write, Arc::new(vec![]), 1000, 1);
        for d in ["a", "b", "c"] {
            let (_, s) = v.get(d, 1000, 1);
            v.settle(d, s, Arc::new(vec![]), 1000, 1);
        }
        assert!(v.peek("carol-desk", 1000, 1).is_some());
        v.settle(
            "carol-desk",
            seen,
            Arc::new(vec![binding("sip:old@x", 2000)]),
            1000,
            1,
        );
        assert!(v.get("carol-desk", 1000, 1).0.is_none());
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
