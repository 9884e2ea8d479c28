//! The call event journal: how call events reach the store, off the call path.
//!
//! ```text
//!  call tasks ──on_event──► queue (memory) ──► writer thread ──► one transaction per batch:
//!   (never wait on the store)                 (its own OS       timeline entries, the calls'
//!                                              thread)          records, their callbacks
//!                                                  │ committed
//!                                                  ▼
//!                          live event stream, metrics, callback dispatcher
//! ```
//!
//! - A call task hands its event over and goes on: the hand-over is a push onto an in-memory
//!   queue, never a database statement, and the writer is an OS thread of its own, so no
//!   runtime thread ever waits on the store for a call event.
//! - The writer takes everything queued (up to [`MAX_BATCH`] events, letting a burst gather
//!   for [`GATHER`] after its first event) and writes it as **one transaction** ([`store::Store::write_call_batch`]): each event's timeline entry, each
//!   touched call's record once, and the callbacks the events cause. A callback's outbox row
//!   is committed together with the event that caused it, so a crash never keeps one without
//!   the other. Under load batches grow by themselves (group commit); idle, an event is written
//!   as soon as it arrives.
//! - When the store refuses a batch (disk full, I/O error, database gone) nothing of it was
//!   written; the writer keeps it, says the store is unavailable ([`StoreHealth`]), and tries
//!   the same batch again with backoff (10 ms doubling to 1 s) until it is accepted. The calls
//!   go on; their events wait in the queue. While more than [`BACKLOG_LIMIT`] events wait,
//!   new calls are refused with `503` (the API checks [`Journal::backlog`]), which bounds the
//!   queue: only calls already running add to it.
//! - On a store of this node alone (SQLite) new calls are admitted in the batches too
//!   ([`Journal::admit`], [`admit_call`]): the API handler queues the new record with the
//!   account's limits and awaits the batch's commit; the writer judges each admission at
//!   the start of the batch, so that it shares the commit (and its pages) with the events
//!   of the calls before it instead of paying a transaction of its own on a store thread.
//!   A refused admission writes nothing; a store error in one fails the batch. The record
//!   is durable before the `202`, as before; the request waits for the batch's gathering
//!   time. A batch that fails answers its admissions with the error at once (`503`); they
//!   are not retried with it, and the events are. On
//!   PostgreSQL the handler admits its call itself, in a transaction of its own on the
//!   pool: admissions there go on side by side on their own connections, where on the
//!   writer they would wait for one another.
//! - The writer keeps the records of the calls it is writing (read once from the store),
//!   changed only when a batch commits, and forgets a call when its final state is written,
//!   or, once answered, when no event of it came for [`KEEP_ANSWERED`] (on a store of this
//!   node alone; on a shared one at once).
//! - [`recover_interrupted`] runs before the server takes calls: the calls that a previous
//!   run of this node left unfinished (a crash, SIGKILL, power loss) end `failed` with reason
//!   `interrupted`, at the time of their last event, with their final callback — through the
//!   same code, in one transaction. [`end_calls_of_lost_node`] does the same for the calls
//!   of another node sharing the database whose lease lapsed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use b2bua::calls::{CallEvent, CallEventKind, Leg, Outcome};
use serde_json::{json, Value};
use sip_core::map::Map;
use store::{
    Admission, AdmitRequest, CallRecord, CallStatus, CallWrite, OutboxEntry, StoreError,
    TimelineEntry, TypeId,
};
use tokio::sync::oneshot;

use crate::events::CallData;
use crate::hooks::{apply, callback_stage, timeline_parts, EVENT_PREFIX};
use crate::state::Shared;
use crate::time::{now_ms, rfc3339_ms};

/// Most events written in one transaction.
pub const MAX_BATCH: usize = 1024;

/// How long the writer lets events gather after the first of a batch: a call's events come
/// in bursts (a SIP step and its consequences), and one transaction for a burst costs
/// about what one costs for a single event. It is also how long a new call's admission
/// waits at most before its commit (on SQLite), and so part of the time to its `202`.
/// Against 5 ms, 10 ms costs 3-4 ms more to the `202` and to the agent's INVITE and saves
/// about 10 % of the server's CPU per call at 500 calls/s: half as many commits, and the
/// calls a batch admits start together in one turn of the runtime (`docs/benchmarks.md`).
pub const GATHER: Duration = Duration::from_millis(10);

/// Events waiting beyond which new calls are refused (`503`): about 500 calls' worth of
/// events with the store stalled.
pub const BACKLOG_LIMIT: usize = 20_000;

/// Longest wait between two attempts at a refused batch.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How long the writer keeps an answered call's record after the call's last event, on a
/// store of this node alone (SQLite: nothing else writes its calls). A call's events come
/// in bursts a few seconds apart while it is being connected (the agent answers, the
/// customer's leg rings and answers, a short call ends); after a longer quiet (a call that
/// stays up) the next may be minutes away (usually the end), and the record is read back
/// then instead of held meanwhile, so that a held call costs no record in memory (`docs/
/// benchmarks.md`, bytes per live call). Queued and ringing calls are kept until they are
/// answered or end (their ring time bounds that). On a shared store (PostgreSQL) an
/// answered call's record is read back at each of its events, as another node that takes
/// over this node's lapsed lease ends its calls there.
pub(crate) const KEEP_ANSWERED: Duration = Duration::from_secs(5);

/// How often the writer lets go of the answered calls' records kept longer than
/// [`KEEP_ANSWERED`].
const EVICT_EVERY: Duration = Duration::from_secs(1);

/// Whether the store takes writes, as last seen by the writer or a health probe.
#[derive(Debug, Default)]
pub struct StoreHealth {
    failure: Mutex<Option<String>>,
    last_probe: Mutex<Option<Instant>>,
}

impl StoreHealth {
    /// Records a refused write.
    pub fn failed(&self, reason: &str) {
        if let Ok(mut f) = self.failure.lock() {
            if f.is_none() {
                tracing::error!(
                    reason,
                    "the store refuses writes; call events wait in memory"
                );
            }
            *f = Some(reason.to_owned());
        }
    }

    /// Records an accepted write.
    pub fn ok(&self) {
        if let Ok(mut f) = self.failure.lock() {
            if f.take().is_some() {
                tracing::info!("the store takes writes again");
            }
        }
    }

    /// Why the store is unavailable, if it is.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Whether a probe write is due (at most one a second while the store is failing).
    pub(crate) fn probe_due(&self) -> bool {
        let Ok(mut last) = self.last_probe.lock() else {
            return false;
        };
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            *last = Some(Instant::now());
        }
        due
    }
}

/// A new call's admission waiting for the writer's next batch, and where its outcome goes.
type AdmitJob = (AdmitRequest, oneshot::Sender<Result<Admission, StoreError>>);

/// The events handed over and not yet taken by the writer.
#[derive(Debug, Default)]
struct Pending {
    events: VecDeque<CallEvent>,
    /// New calls to admit in the next batch ([`Journal::admit`]).
    admissions: Vec<AdmitJob>,
    /// The writer waits on [`Journal::ready`] for a first event: only then does a push wake
    /// it. While it gathers or writes it comes back for the queue by itself, and a wake-up
    /// (a system call on the pushing thread, a context switch) would buy nothing.
    writer_waiting: bool,
}

/// The queue between the call tasks and the writer thread.
#[derive(Debug, Default)]
pub struct Journal {
    queue: Mutex<Pending>,
    /// Records of calls this node has just inserted, taken by the writer at their first
    /// event instead of reading them back from the store.
    born: Mutex<Map<String, CallRecord>>,
    ready: Condvar,
    /// Events queued and not yet committed (the batch being written included).
    backlog: AtomicUsize,
    stopping: AtomicBool,
    /// A writer runs that admits new calls in its batches (the store is this node's alone).
    admitting: AtomicBool,
}

impl Journal {
    /// Hands an event over to the writer; never waits on the store.
    pub fn push(&self, ev: CallEvent) {
        let wake = match self.queue.lock() {
            Ok(mut q) => {
                q.events.push_back(ev);
                self.backlog.fetch_add(1, Ordering::SeqCst);
                std::mem::replace(&mut q.writer_waiting, false)
            }
            Err(_) => false,
        };
        // After the lock is let go: the writer woken does not then wait for it.
        if wake {
            self.ready.notify_one();
        }
    }

    /// Admits a new call in the writer's next batch (its record and first timeline entry,
    /// under the account's limits: [`store::Store::admit_call`]), which commits it together
    /// with the events of the calls before it instead of in a transaction of its own; the
    /// outcome comes once the batch is committed. Gives the request back when no writer
    /// takes admissions (none runs, it is stopping, or the store is PostgreSQL, where
    /// admissions go side by side on the pool): admit it through the store then.
    pub async fn admit(
        &self,
        req: AdmitRequest,
    ) -> Result<Result<Admission, StoreError>, AdmitRequest> {
        if !self.admitting.load(Ordering::SeqCst) {
            return Err(req);
        }
        let (tx, rx) = oneshot::channel();
        let wake = match self.queue.lock() {
            Ok(mut q) if !self.stopping.load(Ordering::SeqCst) => {
                q.admissions.push((req, tx));
                std::mem::replace(&mut q.writer_waiting, false)
            }
            _ => return Err(req),
        };
        if wake {
            self.ready.notify_one();
        }
        // The writer answers every admission it takes, or drops it when it stops.
        Ok(rx.await.unwrap_or(Err(StoreError::Stopped)))
    }

    /// Answers every admission waiting for the next batch with `error` (the store refused
    /// the batch before it).
    fn refuse_admissions(&self, error: &StoreError) {
        let waiting = match self.queue.lock() {
            Ok(mut q) => std::mem::take(&mut q.admissions),
            Err(_) => return,
        };
        for (_, reply) in waiting {
            let _ = reply.send(Err(error.for_batch()));
        }
    }

    /// Tells the writer the record of a call just inserted (before its first event), so it
    /// need not read the call back: a new call has no callbacks yet.
    fn born(&self, rec: CallRecord) {
        if let Ok(mut b) = self.born.lock() {
            b.insert(rec.id.clone(), rec);
        }
    }

    /// [`Journal::born`] with the record of an admitted call's writes (which have it).
    fn born_from(&self, writes: Vec<CallWrite>) {
        if let Some(rec) = writes.into_iter().find_map(|w| match w {
            CallWrite::NewCall(rec) => Some(rec),
            _ => None,
        }) {
            self.born(rec);
        }
    }

    /// Takes back [`Journal::born`] for a call that did not start (it will have no event).
    pub fn stillborn(&self, call_id: &str) {
        if let Ok(mut b) = self.born.lock() {
            b.remove(call_id);
        }
    }

    fn take_born(&self, call_id: &str) -> Option<CallRecord> {
        self.born.lock().ok().and_then(|mut b| b.remove(call_id))
    }

    /// Events not yet committed to the store.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::SeqCst)
    }

    /// Whether new calls should be refused because too many events wait.
    pub fn over_limit(&self) -> bool {
        self.backlog() > BACKLOG_LIMIT
    }

    /// Moves up to [`MAX_BATCH`] events into `batch` and the waiting admissions into
    /// `admits` (both emptied first; their allocations are reused from batch to batch),
    /// waiting for the first (up to `wait`), then letting others gather for [`GATHER`]
    /// unless the batch is already full.
    fn take(&self, wait: Duration, batch: &mut Vec<CallEvent>, admits: &mut Vec<AdmitJob>) {
        batch.clear();
        admits.clear();
        {
            let Ok(mut q) = self.queue.lock() else {
                return;
            };
            if q.events.is_empty()
                && q.admissions.is_empty()
                && !self.stopping.load(Ordering::SeqCst)
            {
                q.writer_waiting = true;
                q = match self.ready.wait_timeout(q, wait) {
                    Ok((q, _)) => q,
                    Err(_) => return,
                };
                q.writer_waiting = false;
            }
            let n = q.events.len();
            if (n == 0 && q.admissions.is_empty())
                || n >= MAX_BATCH
                || self.stopping.load(Ordering::SeqCst)
            {
                batch.extend(q.events.drain(..n.min(MAX_BATCH)));
                admits.append(&mut q.admissions);
                return;
            }
        }
        std::thread::sleep(GATHER);
        let Ok(mut q) = self.queue.lock() else {
            return;
        };
        let n = q.events.len().min(MAX_BATCH);
        batch.extend(q.events.drain(..n));
        admits.append(&mut q.admissions);
    }

    /// Waits (at most `limit`) until every event handed over so far is in the store; false
    /// when time ran out (the store refuses writes, or no writer runs).
    pub fn flush(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.backlog() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Asks the writer to write what is queued and stop.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.ready.notify_all();
    }
}

/// Admits a new call (its record and first timeline entry, under the account's limits): in
/// the journal's next batch where its writer takes admissions ([`Journal::admit`]), else in
/// a transaction of its own ([`store::Store::admit_call`]). An admitted call's record is
/// handed to the writer ([`Journal::born`]) either way, before the caller hears of it.
pub(crate) async fn admit_call(
    shared: &Shared,
    writes: Vec<CallWrite>,
    limits: &store::AccountLimits,
    now_ms: i64,
) -> Result<Admission, StoreError> {
    let req = AdmitRequest {
        writes,
        limits: *limits,
        now_ms,
    };
    match shared.journal.admit(req).await {
        Ok(outcome) => outcome,
        Err(req) => {
            let outcome = shared
                .store
                .admit_call(&req.writes, &req.limits, req.now_ms)
                .await;
            if matches!(outcome, Ok(Admission::Admitted)) {
                shared.journal.born_from(req.writes);
            }
            outcome
        }
    }
}

/// A call as the writer knows it.
#[derive(Debug, Clone)]
struct Known {
    rec: CallRecord,
    next_seq: i64,
    /// When the writer last committed an event of the call (or read its record).
    kept_at: Instant,
    /// The status the store holds: the record's status when it was read or last committed
    /// ([`Known::new`]; a record changes only inside a batch, and becomes a new `Known`
    /// when the batch commits). The batch's write names a status change as such
    /// (`CallWrite::CallStatus`).
    stored: CallStatus,
}

impl Known {
    /// Whether the writer still keeps this record at `now`: a call not yet answered
    /// always, an answered one for [`KEEP_ANSWERED`] after its last event when
    /// `keep_answered` (a store of this node alone), else not.
    fn still_kept(&self, now: Instant, keep_answered: bool) -> bool {
        matches!(self.rec.status, CallStatus::Queued | CallStatus::Ringing)
            || (keep_answered && now.saturating_duration_since(self.kept_at) < KEEP_ANSWERED)
    }

    fn new(rec: CallRecord, next_seq: i64) -> Known {
        let stored = rec.status;
        Known {
            rec,
            next_seq,
            kept_at: Instant::now(),
            stored,
        }
    }
}

/// What a committed batch sets off outside the store.
struct Effect {
    account_id: String,
    user_id: Option<String>,
    kind: &'static str,
    stream: CallData,
    ended_now: Option<CallStatus>,
}

/// The writer: turns events into writes, commits them, then sets off their effects.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    known: Map<String, Known>,
    /// Answered calls' records are kept a while ([`KEEP_ANSWERED`]): the store is this
    /// node's alone.
    keep_answered: bool,
    /// When the answered calls' records in `known` were last looked over.
    evicted_at: Instant,
    /// One batch's working sets, kept from batch to batch with their capacity: a batch's
    /// writes hold whole call records, and allocating them anew for every batch made each
    /// batch a large allocation (with glibc, one that first consolidates the thread's free
    /// lists: `docs/benchmarks.md`, "The journal's buffers").
    buf: Buffers,
}

/// The writer's reusable working sets; empty between batches.
#[derive(Default)]
struct Buffers {
    staged: Map<String, Known>,
    writes: Vec<CallWrite>,
    touched: Vec<String>,
    /// The callback sequence of each touched call, in the order of `touched`, while its
    /// record is lent to `writes`.
    touched_seq: Vec<i64>,
    effects: Vec<Effect>,
}

impl Buffers {
    fn clear(&mut self) {
        self.staged.clear();
        self.writes.clear();
        self.touched.clear();
        self.touched_seq.clear();
        self.effects.clear();
    }
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>) -> Writer {
        let keep_answered = !shared.store.shared();
        Writer {
            shared,
            known: Map::default(),
            keep_answered,
            evicted_at: Instant::now(),
            buf: Buffers::default(),
        }
    }

    /// Runs on the writer's own thread until [`Journal::stop`], then writes what is left
    /// (trying for at most `drain_for`). `rt` is the runtime whose store calls it waits for:
    /// the thread blocks on them, which it may, being no runtime thread.
    pub(crate) fn run(mut self, drain_for: Duration, rt: &tokio::runtime::Handle) {
        let journal = Arc::clone(&self.shared.journal);
        // New calls are admitted in the batches on a store of this node alone (SQLite,
        // whose one writer serialises them anyway); on PostgreSQL the handlers admit theirs
        // side by side on the pool.
        journal
            .admitting
            .store(!self.shared.store.shared(), Ordering::SeqCst);
        let mut stop_deadline: Option<Instant> = None;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut admits = Vec::new();
        loop {
            journal.take(Duration::from_millis(200), &mut batch, &mut admits);
            self.evict(Instant::now());
            let stopping = journal.stopping.load(Ordering::SeqCst);
            if batch.is_empty() && admits.is_empty() {
                if stopping {
                    journal.admitting.store(false, Ordering::SeqCst);
                    // Admissions that came after the last batch: their callers are told.
                    if let Ok(mut q) = journal.queue.lock() {
                        q.admissions.clear();
                    }
                    return;
                }
                continue;
            }
            if stopping {
                stop_deadline.get_or_insert_with(|| Instant::now() + drain_for);
            }
            self.write_with_retry(&batch, &mut admits, stop_deadline, rt);
            journal.backlog.fetch_sub(batch.len(), Ordering::SeqCst);
        }
    }

    /// Writes one batch, trying again with backoff until it is accepted (or `give_up_at`).
    /// The admissions in `admits` are tried with the first attempt only: their outcomes go
    /// back when it commits, and when it fails each gets its error at once (the request is
    /// answered `503`) instead of waiting through the retries.
    fn write_with_retry(
        &mut self,
        batch: &[CallEvent],
        admits: &mut Vec<AdmitJob>,
        give_up_at: Option<Instant>,
        rt: &tokio::runtime::Handle,
    ) {
        let mut backoff = Duration::from_millis(10);
        let (mut requests, mut replies): (Vec<_>, Vec<_>) = admits.drain(..).unzip();
        loop {
            match rt.block_on(self.write(batch, &requests)) {
                Ok(outcomes) => {
                    self.shared.store_health.ok();
                    for ((req, reply), outcome) in
                        requests.drain(..).zip(replies.drain(..)).zip(outcomes)
                    {
                        if matches!(outcome, Ok(Admission::Admitted)) {
                            self.shared.journal.born_from(req.writes);
                        }
                        let _ = reply.send(outcome);
                    }
                    return;
                }
                Err(e) => {
                    requests.clear();
                    for reply in replies.drain(..) {
                        let _ = reply.send(Err(e.for_batch()));
                    }
                    // Admissions queued since this batch was taken would wait for the store
                    // to come back: they get the error now, and those that come during the
                    // wait below get the next attempt's (the API refuses new calls meanwhile).
                    self.shared.journal.refuse_admissions(&e);
                    self.shared.store_health.failed(&e.to_string());
                    self.shared.metrics.store_write_failed();
                    if give_up_at.is_some_and(|t| Instant::now() >= t) {
                        tracing::error!(error = %e, events = batch.len(), "stopping with call events the store did not take");
                        return;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One transaction for `batch`; the writer's own state changes only when it commits.
    pub(crate) async fn write(
        &mut self,
        batch: &[CallEvent],
        admissions: &[AdmitRequest],
    ) -> Result<Vec<Result<Admission, StoreError>>, StoreError> {
        let store = &self.shared.store;
        // Left from a batch the store refused: nothing of it counts.
        self.buf.clear();
        let Buffers {
            staged,
            writes,
            touched,
            touched_seq,
            effects,
        } = &mut self.buf;
        for ev in batch {
            let (kind, leg, detail) = timeline_parts(&ev.kind);
            if !staged.contains_key(&ev.call_id) {
                // Taken out of `known` while staged; put back when the batch commits. When it
                // does not, the call is read back from the store at its next event (the
                // store has exactly what was committed).
                let known = match self.known.remove(&ev.call_id) {
                    Some(k) => Some(k),
                    None => match self.shared.journal.take_born(&ev.call_id) {
                        Some(rec) => Some(Known::new(rec, 1)),
                        None => match store.read_call_here(&ev.account_id, &ev.call_id) {
                            Some(read) => read?.map(|(rec, next_seq)| Known::new(rec, next_seq)),
                            None => store
                                .get_call(&ev.account_id, &ev.call_id)
                                .await?
                                .map(|rec| Known::new(rec, 0)),
                        },
                    },
                };
                let Some(mut known) = known else {
                    // A timeline row would break its foreign key: leave the event out.
                    tracing::warn!(call_id = %ev.call_id, "event for a call that is not in the store");
                    continue;
                };
                if known.next_seq == 0 {
                    known.next_seq = store.next_callback_seq(&ev.call_id).await?;
                }
                staged.insert(ev.call_id.clone(), known);
            }
            let Some(k) = staged.get_mut(&ev.call_id) else {
                continue;
            };
            let was_final = k.rec.status.is_final();
            if apply(&mut k.rec, ev) && !touched.contains(&ev.call_id) {
                touched.push(ev.call_id.clone());
            }
            let callback = callback_for(&k.rec, ev, k.next_seq);
            // The live stream's JSON is written from these parts if a subscriber reads it.
            let stream = CallData {
                at_ms: ev.at_ms,
                call_id: ev.call_id.clone(),
                detail: detail.clone(),
                leg: leg.map(Leg::as_str),
                status: k.rec.status.as_str(),
            };
            writes.push(CallWrite::Timeline {
                call_id: ev.call_id.clone(),
                entry: TimelineEntry {
                    at_ms: ev.at_ms,
                    kind: kind.to_owned(),
                    leg: leg.map(|l| l.as_str().to_owned()),
                    detail,
                },
            });
            if let Some(entry) = callback {
                k.next_seq += 1;
                writes.push(CallWrite::Callback(entry));
            }
            effects.push(Effect {
                account_id: ev.account_id.clone(),
                user_id: k.rec.user_id.clone(),
                kind,
                stream,
                ended_now: match &ev.kind {
                    CallEventKind::Ended { outcome, .. } if !was_final => Some(outcome.status),
                    _ => None,
                },
            });
        }
        // A touched call's record is lent to the writes (no copy) and taken back below.
        for id in touched.iter() {
            if let Some(k) = staged.remove(id) {
                touched_seq.push(k.next_seq);
                writes.push(if k.rec.status == k.stored {
                    CallWrite::Call(k.rec)
                } else {
                    CallWrite::CallStatus(k.rec)
                });
            }
        }
        let mut outcomes = Vec::with_capacity(admissions.len());
        if !admissions.is_empty() || !writes.is_empty() {
            match store.write_call_batch_admitting_here(admissions, writes) {
                Some(result) => outcomes = result?,
                None => {
                    for a in admissions {
                        outcomes.push(store.admit_call(&a.writes, &a.limits, a.now_ms).await);
                    }
                    if !writes.is_empty() {
                        store.write_call_batch(writes).await?;
                    }
                }
            }
        }
        // Committed: the writer's view moves on, and the world hears of it. A call's
        // record is kept until it ends; an answered call's for KEEP_ANSWERED after its last
        // event on a store of this node alone (`Writer::evict`).
        let now = Instant::now();
        let keep_answered = self.keep_answered;
        let keep = |known: &mut Map<String, Known>, id: String, mut k: Known| {
            k.kept_at = now;
            if !k.rec.status.is_final() && k.still_kept(now, keep_answered) {
                known.insert(id, k);
            } else {
                known.remove(&id);
            }
        };
        for (id, k) in staged.drain() {
            keep(&mut self.known, id, k);
        }
        let mut any_callback = false;
        let mut seqs = touched_seq.drain(..);
        for w in writes.drain(..) {
            match w {
                CallWrite::Callback(_) => any_callback = true,
                CallWrite::Call(rec) | CallWrite::CallStatus(rec) => {
                    let next_seq = seqs.next().unwrap_or(0);
                    keep(&mut self.known, rec.id.clone(), Known::new(rec, next_seq));
                }
                _ => {}
            }
        }
        let shared = &self.shared;
        for e in effects.drain(..) {
            if let Some(status) = e.ended_now {
                shared.metrics.call_ended(status);
            }
            shared
                .events
                .publish_call(e.account_id, e.user_id, e.kind, e.stream);
        }
        if any_callback {
            shared.dispatch.notify_one();
        }
        Ok(outcomes)
    }

    /// Lets go of the records of answered calls with no event for [`KEEP_ANSWERED`]; looks
    /// at most every [`EVICT_EVERY`].
    fn evict(&mut self, now: Instant) {
        if now.duration_since(self.evicted_at) < EVICT_EVERY {
            return;
        }
        self.evicted_at = now;
        let keep_answered = self.keep_answered;
        self.known.retain(|_, k| k.still_kept(now, keep_answered));
    }
}

/// The `recording.ready` callback (`recording.failed` when no file could be written): it
/// follows the call's final status callback.
fn recording_callback(rec: &CallRecord, ev: &CallEvent, seq: i64) -> Option<OutboxEntry> {
    let url = rec.callback_url.as_ref()?;
    let state = rec.recording["state"].as_str().unwrap_or("failed");
    let event_id = TypeId::new(EVENT_PREFIX).to_string();
    let body = json!({
        "event": if state == "failed" { "recording.failed" } else { "recording.ready" },
        "event_id": event_id,
        "sequence": seq,
        "call_id": rec.id,
        "status": rec.status.as_str(),
        "timestamp": rfc3339_ms(ev.at_ms),
        "direction": rec.direction,
        "recording": {
            "state": state,
            "url": format!("/v1/calls/{}/recording", rec.id),
            "duration": rec.recording["duration"],
            "size": rec.recording["size"],
            "channels": {"left": "agent", "right": "customer"},
            "error": rec.recording["error"],
        },
        "metadata": rec.metadata,
    });
    Some(OutboxEntry::new(
        event_id,
        rec.id.clone(),
        rec.account_id.clone(),
        seq,
        url.clone(),
        body.to_string(),
        now_ms(),
    ))
}

/// The callback an event causes for a call with a callback URL, numbered `seq`.
fn callback_for(rec: &CallRecord, ev: &CallEvent, seq: i64) -> Option<OutboxEntry> {
    if let Some(name) = ev.kind.callback_event() {
        return live_callback(rec, ev, seq, name);
    }
    if matches!(ev.kind, CallEventKind::Recording { .. }) {
        return recording_callback(rec, ev, seq);
    }
    let (url, (status, leg, sip_code, duration)) =
        (rec.callback_url.as_ref()?, callback_stage(ev)?);
    let event_id = TypeId::new(EVENT_PREFIX).to_string();
    let mut body = json!({
        "event_id": event_id,
        "sequence": seq,
        "call_id": rec.id,
        "status": status.as_str(),
        "duration": duration,
        "timestamp": rfc3339_ms(ev.at_ms),
        "leg": leg.map(Leg::as_str),
        "sip_code": sip_code,
        "direction": crate::views::shown_direction(&rec.direction),
        "origin": crate::views::origin(&rec.direction),
        "from": rec.caller_id,
        "to": rec.destination.as_deref().unwrap_or(&rec.dial_string),
        "metadata": rec.metadata,
    });
    if let CallEventKind::Ended { outcome, .. } = &ev.kind {
        body["reason"] = outcome.reason.clone().into();
    }
    Some(OutboxEntry::new(
        event_id,
        rec.id.clone(),
        rec.account_id.clone(),
        seq,
        url.clone(),
        body.to_string(),
        now_ms(),
    ))
}

/// The callback of a live-control event (`call.held`, `call.transferred`...): the call's
/// fields as in a status callback, `"event"`, and the event's own detail (`to`, `by`,
/// `monitor_id`, `mode`...).
fn live_callback(rec: &CallRecord, ev: &CallEvent, seq: i64, name: &str) -> Option<OutboxEntry> {
    let url = rec.callback_url.as_ref()?;
    let event_id = TypeId::new(EVENT_PREFIX).to_string();
    let (_, leg, detail) = timeline_parts(&ev.kind);
    let mut body = json!({
        "event": name,
        "event_id": event_id,
        "sequence": seq,
        "call_id": rec.id,
        "status": rec.status.as_str(),
        "timestamp": rfc3339_ms(ev.at_ms),
        "leg": leg.map(Leg::as_str),
        "direction": crate::views::shown_direction(&rec.direction),
        "origin": crate::views::origin(&rec.direction),
        "from": rec.caller_id,
        "to": rec.destination.as_deref().unwrap_or(&rec.dial_string),
        "metadata": rec.metadata,
    });
    if let (Some(b), Value::Object(d)) = (body.as_object_mut(), detail.to_value()) {
        for (k, v) in &d {
            // The event's own `to` (a transfer's target) is kept apart from the call's.
            let key = if k == "to" { "transfer_to" } else { k.as_str() };
            b.insert(key.to_string(), v.clone());
        }
        if name == "call.transferred" {
            if let Some(t) = d.get("to") {
                b.insert("to".into(), t.clone());
                b.insert(
                    "call_to".into(),
                    json!(rec.destination.as_deref().unwrap_or(&rec.dial_string)),
                );
            }
        }
    }
    Some(OutboxEntry::new(
        event_id,
        rec.id.clone(),
        rec.account_id.clone(),
        seq,
        url.clone(),
        body.to_string(),
        now_ms(),
    ))
}

/// Ends the calls a previous run of this node left unfinished (and those that record no
/// node, written before nodes were recorded): `failed`, reason `interrupted`, at the time of
/// their last event, with the duration known so far and their final callback; all in one
/// transaction. Returns how many.
pub(crate) async fn recover_interrupted(shared: &Arc<Shared>) -> Result<usize, StoreError> {
    let calls = shared
        .store
        .unfinished_calls_of(&shared.cfg.server_id, true)
        .await?;
    end_unfinished(shared, calls, "interrupted").await
}

/// Ends the live calls of `node_id`, a node whose lease lapsed (it crashed or lost the
/// database): `failed`, with a reason that names the node, and their final callbacks.
/// Returns how many.
pub(crate) async fn end_calls_of_lost_node(
    shared: &Arc<Shared>,
    node_id: &str,
) -> Result<usize, StoreError> {
    let calls = shared.store.unfinished_calls_of(node_id, false).await?;
    let reason = format!("node {node_id} stopped (its lease lapsed)");
    end_unfinished(shared, calls, &reason).await
}

/// Ends `calls` as `failed` with `reason` (see [`recover_interrupted`]).
async fn end_unfinished(
    shared: &Arc<Shared>,
    calls: Vec<CallRecord>,
    reason: &str,
) -> Result<usize, StoreError> {
    let store = &shared.store;
    if calls.is_empty() {
        return Ok(0);
    }
    let mut events = Vec::with_capacity(calls.len());
    for rec in &calls {
        // The call's own last event (callback deliveries are not events of the call).
        let last = store
            .timeline(&rec.id)
            .await?
            .iter()
            .filter(|e| e.kind != "callback")
            .map(|e| e.at_ms)
            .max()
            .unwrap_or(rec.created_at_ms)
            .max(rec.created_at_ms);
        let duration_secs = rec
            .answered_at_ms
            .map_or(0, |a| u64::try_from((last - a).max(0) / 1000).unwrap_or(0));
        events.push(CallEvent {
            call_id: rec.id.clone(),
            account_id: rec.account_id.clone(),
            at_ms: last,
            kind: CallEventKind::Ended {
                outcome: Outcome {
                    status: CallStatus::Failed,
                    leg: None,
                    sip_code: None,
                    q850_cause: None,
                    duration_secs,
                    reason: reason.to_owned(),
                },
                stats: Value::Null,
            },
        });
    }
    let mut writer = Writer::new(Arc::clone(shared));
    writer.write(&events, &[]).await?;
    for rec in &calls {
        tracing::warn!(call_id = %rec.id, was = rec.status.as_str(), node = rec.node_id.as_deref().unwrap_or("-"), reason, "unfinished call ended failed");
    }
    Ok(calls.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use b2bua::calls::Leg;

    fn event(n: i64) -> CallEvent {
        CallEvent {
            call_id: format!("call_{n}"),
            account_id: "acct_1".into(),
            at_ms: n,
            kind: CallEventKind::Ringing {
                leg: Leg::Agent,
                sip_code: 180,
            },
        }
    }

    #[test]
    fn a_push_wakes_a_waiting_writer_and_a_burst_is_taken_together() {
        let journal = Arc::new(Journal::default());
        let j = Arc::clone(&journal);
        // The writer waits for a first event far longer than the test takes: it returns
        // with events only if a push woke it.
        let writer = std::thread::spawn(move || {
            let (mut all, mut batch) = (Vec::new(), Vec::new());
            // A burst is usually one batch; a writer descheduled mid-burst takes the rest next.
            for _ in 0..3 {
                j.take(Duration::from_secs(60), &mut batch, &mut Vec::new());
                all.append(&mut batch);
                if all.len() == 3 {
                    break;
                }
            }
            all
        });
        while !journal.queue.lock().unwrap().writer_waiting {
            std::thread::sleep(Duration::from_millis(1));
        }
        journal.push(event(1));
        journal.push(event(2));
        journal.push(event(3));
        let batch = writer.join().unwrap();
        let at: Vec<i64> = batch.iter().map(|e| e.at_ms).collect();
        assert_eq!(at, [1, 2, 3]);
        assert_eq!(journal.backlog(), 3, "taken, not yet committed");
        assert!(!journal.queue.lock().unwrap().writer_waiting);
    }

    #[test]
    fn an_answered_calls_record_is_let_go_a_while_after_its_last_event() {
        let rec = |status| {
            let mut r = CallRecord::new("call_1".into(), "acct_1".into(), "1001".into(), 0);
            r.status = status;
            Known::new(r, 1)
        };
        let t0 = Instant::now();
        let later = t0 + KEEP_ANSWERED + Duration::from_millis(1);
        for status in [CallStatus::Queued, CallStatus::Ringing] {
            let mut k = rec(status);
            k.kept_at = t0;
            assert!(
                k.still_kept(later, true),
                "{status:?} is kept until answered"
            );
            assert!(
                k.still_kept(later, false),
                "{status:?}, on a shared store too"
            );
        }
        let mut answered = rec(CallStatus::InProgress);
        answered.kept_at = t0;
        assert!(answered.still_kept(t0 + KEEP_ANSWERED - Duration::from_millis(1), true));
        assert!(!answered.still_kept(later, true));
        // An event meanwhile (the batch that wrote it sets `kept_at`) keeps it longer.
        answered.kept_at = t0 + Duration::from_secs(3);
        assert!(answered.still_kept(later, true));
        // On a store other nodes write (PostgreSQL), an answered call is read back.
        assert!(!answered.still_kept(t0 + Duration::from_secs(3), false));
    }

    #[test]
    fn events_pushed_while_the_writer_is_busy_wait_for_it_without_a_wake_up() {
        let journal = Journal::default();
        journal.push(event(1));
        journal.push(event(2));
        let mut batch = Vec::new();
        journal.take(Duration::from_secs(60), &mut batch, &mut Vec::new());
        assert_eq!(batch.len(), 2);
        // Not waiting: the pushes leave the flag alone, the next take finds them at once.
        journal.push(event(3));
        assert!(!journal.queue.lock().unwrap().writer_waiting);
        journal.take(Duration::from_secs(60), &mut batch, &mut Vec::new());
        assert_eq!(batch.iter().map(|e| e.at_ms).collect::<Vec<_>>(), [3]);
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    fn admission() -> AdmitRequest {
        AdmitRequest {
            writes: Vec::new(),
            limits: store::AccountLimits::default(),
            now_ms: 7,
        }
    }

    #[test]
    fn an_admission_wakes_the_writer_and_is_answered_or_given_back() {
        let rt = runtime();
        let journal = Arc::new(Journal::default());
        // No writer takes admissions: the request comes back to be admitted by the store.
        let back = rt.block_on(journal.admit(admission()));
        assert_eq!(back.unwrap_err().now_ms, 7);
        journal.admitting.store(true, Ordering::SeqCst);
        let j = Arc::clone(&journal);
        let writer = std::thread::spawn(move || {
            let (mut batch, mut admits) = (Vec::new(), Vec::new());
            j.take(Duration::from_secs(60), &mut batch, &mut admits);
            assert!(batch.is_empty());
            let n = admits.len();
            for (req, reply) in admits.drain(..) {
                assert_eq!(req.now_ms, 7);
                let _ = reply.send(Ok(Admission::Rate {
                    retry_after_secs: 3,
                }));
            }
            n
        });
        while !journal.queue.lock().unwrap().writer_waiting {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The waiting writer is woken by the admission alone and answers it.
        let outcome = rt.block_on(journal.admit(admission()));
        assert_eq!(
            outcome.unwrap().unwrap(),
            Admission::Rate {
                retry_after_secs: 3
            }
        );
        assert_eq!(writer.join().unwrap(), 1);
        assert_eq!(journal.backlog(), 0, "an admission is no event");
        // A writer that goes away without answering: the caller hears the store stopped.
        let j = Arc::clone(&journal);
        let dropper = std::thread::spawn(move || {
            let (mut batch, mut admits) = (Vec::new(), Vec::new());
            j.take(Duration::from_secs(60), &mut batch, &mut admits);
            admits.len()
        });
        let outcome = rt.block_on(journal.admit(admission()));
        assert!(matches!(outcome, Ok(Err(StoreError::Stopped))));
        assert_eq!(dropper.join().unwrap(), 1);
        // Once the journal stops, admissions go back to the store.
        journal.stop();
        assert!(rt.block_on(journal.admit(admission())).is_err());
    }

    #[test]
    fn admissions_waiting_while_the_store_refuses_a_batch_get_its_error() {
        let rt = runtime();
        let journal = Arc::new(Journal::default());
        journal.admitting.store(true, Ordering::SeqCst);
        let j = Arc::clone(&journal);
        // The writer's retry loop, between two attempts at a refused batch.
        let refuser = std::thread::spawn(move || {
            while j.queue.lock().unwrap().admissions.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
            j.refuse_admissions(&StoreError::Stopped);
        });
        let outcome = rt.block_on(journal.admit(admission())).unwrap();
        refuser.join().unwrap();
        let err = outcome.unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
        assert_eq!(err.to_string(), StoreError::Stopped.to_string());
        assert!(journal.queue.lock().unwrap().admissions.is_empty());
    }
}
