//! The store's own threads: a [`BlockingStore`] (SQLite) offered as an async [`Store`].
//!
//! ```text
//!  runtime tasks ──job──► bounded queue ──► store threads (N, OS threads of their own)
//!  (await the answer)     (async send:        each job: one call on the backend,
//!                          back-pressure)      answer through a oneshot channel
//! ```
//!
//! - A caller on a tokio worker thread never blocks: it queues a job (waiting
//!   asynchronously while the queue is full) and awaits the answer, while a store thread
//!   does the SQLite work and whatever waiting on locks and on the disk that takes.
//! - These are dedicated threads, not tokio's blocking pool (`spawn_blocking`): that pool
//!   is shared with everything else that blocks, grows to hundreds of threads under load,
//!   and has no queue bound, so a slow disk would turn into hundreds of threads queued on
//!   SQLite's one writer instead of a bounded queue that pushes back on its callers. A fixed
//!   set of threads also keeps the number of concurrent SQLite calls at what one database
//!   file can use.
//! - A job whose caller has gone away (a dropped request) still runs to its end: a write
//!   that was queued is made, as it would have been by a synchronous call.
//! - A panic inside a job is caught on the store thread, which goes on; the caller gets
//!   [`StoreError::Crashed`].
//! - The threads end when the last handle is dropped, after the jobs already queued.
//! - The queue wakes one store thread per job, and only when one is idle: the idle threads
//!   wait on one condition variable, not in turn for a lock around a channel (which cost two
//!   more wake-ups per job: `docs/benchmarks.md`, "The store threads' queue").
//! - Two kinds of call are gathered into one job (`StoreThreads::gathered`): a new
//!   contact's write and the first read of a device not seen lately. The first of a group
//!   queues the job [`GATHER`] later, and the job serves all that joined by then, the writes
//!   in one transaction: a burst of registrations shares wake-ups and commits. A group
//!   holds `MAX_GATHERED` at most; past it a call is queued as a job of its own.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Semaphore};

use crate::model::*;
use crate::provision::{ProvisionReport, Provisioning};
use crate::{BlockingStore, Secret, Store, StoreError};

/// One call on the backend, run on a store thread.
type Job<B> = Box<dyn FnOnce(&B) + Send + 'static>;

/// The jobs waiting for a store thread.
struct Queue<B> {
    state: Mutex<Waiting<B>>,
    /// Signalled when a job is queued while a thread is idle, and when the queue closes.
    ready: Condvar,
    /// Free places in the queue: a caller takes one before queueing (waiting asynchronously
    /// while none is free); a store thread gives it back when it takes the job.
    room: Semaphore,
}

struct Waiting<B> {
    jobs: VecDeque<Job<B>>,
    /// Store threads waiting on [`Queue::ready`].
    idle: usize,
    /// No more jobs come: the threads end once `jobs` is empty.
    closed: bool,
}

impl<B> Queue<B> {
    fn new() -> Queue<B> {
        Queue {
            state: Mutex::new(Waiting {
                jobs: VecDeque::new(),
                idle: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            room: Semaphore::new(QUEUE),
        }
    }

    /// Queues `job`, waiting while the queue is full.
    async fn push(&self, job: Job<B>) -> Result<(), StoreError> {
        self.room
            .acquire()
            .await
            .map_err(|_| StoreError::Stopped)?
            .forget();
        let wake = {
            let mut w = self.state.lock().map_err(|_| StoreError::Poisoned)?;
            if w.closed {
                return Err(StoreError::Stopped);
            }
            w.jobs.push_back(job);
            w.idle > 0
        };
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The next job; `None` once the queue is closed and empty.
    fn take(&self) -> Option<Job<B>> {
        let mut w = self.state.lock().ok()?;
        loop {
            if let Some(job) = w.jobs.pop_front() {
                self.room.add_permits(1);
                return Some(job);
            }
            if w.closed {
                return None;
            }
            w.idle += 1;
            w = self.ready.wait(w).ok()?;
            w.idle -= 1;
        }
    }

    fn close(&self) {
        if let Ok(mut w) = self.state.lock() {
            w.closed = true;
        }
        self.room.close();
        self.ready.notify_all();
    }

    fn len(&self) -> usize {
        self.state.lock().map_or(0, |w| w.jobs.len())
    }
}

/// How long the first of a group of requests that are served together (`Gathering`)
/// waits for others before its job is queued. Each job costs a store thread's wake-up and,
/// for writes, a transaction and its commit; a burst of registrations (a restart of many
/// phones) shares them, for a first registration's answer about this much later.
pub const GATHER: Duration = Duration::from_millis(2);

/// Requests in one gathered group at most; past it a request is queued as a job of its own.
const MAX_GATHERED: usize = 256;

/// Requests of one kind waiting to be served together by one job on a store thread, each
/// with where its answer goes ([`StoreThreads::gathered`]).
struct Gathering<T, R> {
    waiting: Mutex<Vec<Waiter<T, R>>>,
}

type Waiter<T, R> = (T, oneshot::Sender<Result<R, StoreError>>);

impl<T, R> Default for Gathering<T, R> {
    fn default() -> Self {
        Gathering {
            waiting: Mutex::new(Vec::new()),
        }
    }
}

impl<T, R> Gathering<T, R> {
    fn take(&self) -> Vec<Waiter<T, R>> {
        self.waiting
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiting.lock().map_or(0, |w| w.len())
    }
}

/// [`Store::device_and_bindings`]'s answer.
type DeviceAndBindings = (Option<Device>, Vec<Binding>);

/// Serves a gathered group on a store thread: one answer per request, in their order.
type Serve<B, T, R> = fn(&B, Vec<T>) -> Vec<Result<R, StoreError>>;

/// A [`BlockingStore`] run on dedicated store threads, offered as a [`Store`].
pub struct StoreThreads<B: BlockingStore> {
    backend: Arc<B>,
    /// Bindings to write together ([`Store::upsert_binding`]): one transaction and its
    /// commit for the new contacts of a burst of registrations.
    upserts: Arc<Gathering<Binding, ()>>,
    /// Devices not seen lately, read together with their bindings
    /// ([`Store::device_and_bindings`]): the first REGISTER of each phone in a burst.
    first_sights: Arc<Gathering<(String, UnixSecs), DeviceAndBindings>>,
    /// `None`: calls run inline on the caller's thread ([`StoreThreads::inline`]).
    queue: Option<Arc<Queue<B>>>,
    threads: usize,
    /// [`Store::provisioning_generation`].
    generation: crate::Generation,
}

impl<B: BlockingStore> std::fmt::Debug for StoreThreads<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreThreads")
            .field("backend", &self.backend)
            .field("threads", &self.threads)
            .finish()
    }
}

/// Store threads for SQLite: its one writer serialises writes anyway, and a second thread
/// lets reads go on while one call waits on the disk.
pub const DEFAULT_THREADS: usize = 2;

/// Jobs that may wait for a store thread before callers wait to queue more.
pub const QUEUE: usize = 4096;

impl<B: BlockingStore> StoreThreads<B> {
    /// Starts `threads` (at least one) store threads running `backend`.
    pub fn new(backend: B, threads: usize) -> Result<StoreThreads<B>, StoreError> {
        let backend = Arc::new(backend);
        let queue = Arc::new(Queue::new());
        let threads = threads.max(1);
        for i in 0..threads {
            let (backend, rx) = (Arc::clone(&backend), Arc::clone(&queue));
            let started = std::thread::Builder::new()
                .name(format!("store-{i}"))
                .spawn(move || serve(&*backend, &rx));
            if let Err(e) = started {
                queue.close();
                return Err(StoreError::Threads(e));
            }
        }
        Ok(StoreThreads {
            backend,
            upserts: Arc::default(),
            first_sights: Arc::default(),
            queue: Some(queue),
            threads,
            generation: crate::Generation::default(),
        })
    }

    /// No store threads: each call runs on the caller's thread, blocking it. Only for tests
    /// on tokio's paused clock, which jumps to the next timer whenever every task waits — and
    /// a task waiting for a store thread's answer counts as waiting, so timers would fire
    /// in the middle of a store call.
    pub fn inline(backend: B) -> StoreThreads<B> {
        StoreThreads {
            backend: Arc::new(backend),
            upserts: Arc::default(),
            first_sights: Arc::default(),
            queue: None,
            threads: 0,
            generation: crate::Generation::default(),
        }
    }

    /// Opens the backend on a thread of its own (opening runs the migrations, which may take
    /// a while) and then starts the store threads.
    pub async fn start(
        open: impl FnOnce() -> Result<B, StoreError> + Send + 'static,
        threads: usize,
    ) -> Result<StoreThreads<B>, StoreError> {
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("store-open".into())
            .spawn(move || {
                let _ = tx.send(open());
            })
            .map_err(StoreError::Threads)?;
        let backend = rx.await.map_err(|_| StoreError::Crashed)??;
        StoreThreads::new(backend, threads)
    }

    /// The backend itself, for code that runs on a thread of its own and for tests.
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// Jobs waiting for a store thread now.
    pub fn queued(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.len())
    }

    /// Runs `f` on a store thread and waits (asynchronously) for its answer.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&B) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let Some(queue) = &self.queue else {
            return f(&self.backend);
        };
        let (tx, rx) = oneshot::channel();
        let job: Job<B> = Box::new(move |b: &B| {
            let _ = tx.send(f(b));
        });
        queue.push(job).await?;
        rx.await.map_err(|_| StoreError::Crashed)?
    }

    /// Serves `item` with the others of `group` that come within [`GATHER`] of the first or
    /// before a store thread takes their job: the first queues the job (after [`GATHER`]),
    /// and the job serves whatever has gathered by then, in one call of `serve`. A group
    /// holds [`MAX_GATHERED`] at most.
    async fn gathered<T: Send + 'static, R: Send + 'static>(
        &self,
        group: &Arc<Gathering<T, R>>,
        item: T,
        serve: Serve<B, T, R>,
    ) -> Result<R, StoreError> {
        let Some(queue) = &self.queue else {
            return serve(&self.backend, vec![item])
                .pop()
                .unwrap_or(Err(StoreError::Crashed));
        };
        let (tx, rx) = oneshot::channel();
        // `Err`: the group is full and `item` comes back.
        let joined = {
            let mut w = group.waiting.lock().map_err(|_| StoreError::Poisoned)?;
            if w.len() >= MAX_GATHERED {
                Err(item)
            } else {
                w.push((item, tx));
                Ok(w.len() == 1)
            }
        };
        let first = match joined {
            Ok(first) => first,
            // A full group: this one takes a place in the bounded queue like any call, so
            // that a flood waits there instead of growing the group.
            Err(item) => {
                return self
                    .run(move |s| {
                        serve(s, vec![item])
                            .pop()
                            .unwrap_or(Err(StoreError::Crashed))
                    })
                    .await
            }
        };
        if first {
            let taken = Arc::clone(group);
            let job: Job<B> = Box::new(move |s: &B| {
                let (items, replies): (Vec<T>, Vec<_>) = taken.take().into_iter().unzip();
                let mut answers = serve(s, items).into_iter();
                for reply in replies {
                    let _ = reply.send(answers.next().unwrap_or(Err(StoreError::Crashed)));
                }
            });
            // Queued by a task of its own: the requests that join this one wait for the job
            // even when this caller goes away meanwhile.
            let (queue, group) = (Arc::clone(queue), Arc::clone(group));
            tokio::spawn(async move {
                tokio::time::sleep(GATHER).await;
                if let Err(e) = queue.push(job).await {
                    // The store is stopping: whoever waits hears so.
                    for (_, reply) in group.take() {
                        let _ = reply.send(Err(e.for_batch()));
                    }
                }
            });
        }
        rx.await.map_err(|_| StoreError::Crashed)?
    }
}

impl<B: BlockingStore> Drop for StoreThreads<B> {
    fn drop(&mut self) {
        if let Some(q) = &self.queue {
            q.close();
        }
    }
}

/// A store thread: takes jobs until every handle is gone.
fn serve<B: BlockingStore>(backend: &B, queue: &Queue<B>) {
    while let Some(job) = queue.take() {
        if std::panic::catch_unwind(AssertUnwindSafe(|| job(backend))).is_err() {
            tracing::error!("a store call panicked; the store thread goes on");
        }
    }
}

#[async_trait::async_trait]
impl<B: BlockingStore> Store for StoreThreads<B> {
    fn provisioning_generation(&self) -> u64 {
        self.generation.get()
    }
    async fn apply_provisioning(
        &self,
        prov: &Provisioning,
        realm: &str,
    ) -> Result<ProvisionReport, StoreError> {
        let (prov, realm) = (prov.to_owned(), realm.to_owned());
        let r = self.run(move |s| s.apply_provisioning(&prov, &realm)).await;
        self.generation.changed(r)
    }
    async fn account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        let id = id.to_owned();
        self.run(move |s| s.account(&id)).await
    }
    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        self.run(move |s| s.list_accounts()).await
    }
    async fn account_by_api_secret(&self, secret: &str) -> Result<Option<Account>, StoreError> {
        let secret = secret.to_owned();
        self.run(move |s| s.account_by_api_secret(&secret)).await
    }
    async fn account_by_key_pair(
        &self,
        key: &str,
        secret: &str,
    ) -> Result<Option<Account>, StoreError> {
        let (key, secret) = (key.to_owned(), secret.to_owned());
        self.run(move |s| s.account_by_key_pair(&key, &secret))
            .await
    }
    async fn api_keys_for_account(&self, account_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let account_id = account_id.to_owned();
        self.run(move |s| s.api_keys_for_account(&account_id)).await
    }
    async fn set_account_limits(
        &self,
        account_id: &str,
        limits: &AccountLimits,
    ) -> Result<bool, StoreError> {
        let (account_id, limits) = (account_id.to_owned(), limits.to_owned());
        let r = self
            .run(move |s| s.set_account_limits(&account_id, &limits))
            .await;
        self.generation.changed(r)
    }
    async fn account_by_publishable_key(&self, key: &str) -> Result<Option<Account>, StoreError> {
        let key = key.to_owned();
        self.run(move |s| s.account_by_publishable_key(&key)).await
    }
    async fn publishable_keys_for_account(
        &self,
        account_id: &str,
    ) -> Result<Vec<PublishableKey>, StoreError> {
        let account_id = account_id.to_owned();
        self.run(move |s| s.publishable_keys_for_account(&account_id))
            .await
    }
    async fn create_publishable_key(&self, key: &PublishableKey) -> Result<(), StoreError> {
        let key = key.to_owned();
        let r = self.run(move |s| s.create_publishable_key(&key)).await;
        self.generation.changed(r)
    }
    async fn delete_publishable_key(
        &self,
        account_id: &str,
        key: &str,
    ) -> Result<bool, StoreError> {
        let (account_id, key) = (account_id.to_owned(), key.to_owned());
        let r = self
            .run(move |s| s.delete_publishable_key(&account_id, &key))
            .await;
        self.generation.changed(r)
    }
    async fn update_account(&self, account: &Account) -> Result<(), StoreError> {
        let account = account.to_owned();
        let r = self.run(move |s| s.update_account(&account)).await;
        self.generation.changed(r)
    }
    async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let id = id.to_owned();
        self.run(move |s| s.user(&id)).await
    }
    async fn user_by_extension(
        &self,
        account_id: &str,
        extension: &str,
    ) -> Result<Option<User>, StoreError> {
        let (account_id, extension) = (account_id.to_owned(), extension.to_owned());
        self.run(move |s| s.user_by_extension(&account_id, &extension))
            .await
    }
    async fn user_by_agent_id(
        &self,
        account_id: &str,
        agent_id: i64,
    ) -> Result<Option<User>, StoreError> {
        let (account_id, agent_id) = (account_id.to_owned(), agent_id);
        self.run(move |s| s.user_by_agent_id(&account_id, agent_id))
            .await
    }
    async fn users_for_account(&self, account_id: &str) -> Result<Vec<User>, StoreError> {
        let account_id = account_id.to_owned();
        self.run(move |s| s.users_for_account(&account_id)).await
    }
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let user = user.to_owned();
        let r = self.run(move |s| s.create_user(&user)).await;
        self.generation.changed(r)
    }
    async fn update_user(&self, user: &User) -> Result<(), StoreError> {
        let user = user.to_owned();
        let r = self.run(move |s| s.update_user(&user)).await;
        self.generation.changed(r)
    }
    async fn delete_user(&self, account_id: &str, id: &str) -> Result<bool, StoreError> {
        let (account_id, id) = (account_id.to_owned(), id.to_owned());
        let r = self.run(move |s| s.delete_user(&account_id, &id)).await;
        self.generation.changed(r)
    }
    async fn device_by_username(&self, username: &str) -> Result<Option<Device>, StoreError> {
        let username = username.to_owned();
        self.run(move |s| s.device_by_username(&username)).await
    }
    async fn devices_for_user(&self, user_id: &str) -> Result<Vec<Device>, StoreError> {
        let user_id = user_id.to_owned();
        self.run(move |s| s.devices_for_user(&user_id)).await
    }
    async fn create_device(
        &self,
        user_id: &str,
        username: &str,
        password: &Secret,
        realm: &str,
    ) -> Result<Device, StoreError> {
        let (user_id, username, password, realm) = (
            user_id.to_owned(),
            username.to_owned(),
            password.to_owned(),
            realm.to_owned(),
        );
        let r = self
            .run(move |s| s.create_device(&user_id, &username, &password, &realm))
            .await;
        self.generation.changed(r)
    }
    async fn set_device_password(
        &self,
        username: &str,
        password: &Secret,
        realm: &str,
    ) -> Result<Device, StoreError> {
        let (username, password, realm) =
            (username.to_owned(), password.to_owned(), realm.to_owned());
        let r = self
            .run(move |s| s.set_device_password(&username, &password, &realm))
            .await;
        self.generation.changed(r)
    }
    async fn delete_device(&self, username: &str) -> Result<bool, StoreError> {
        let username = username.to_owned();
        let r = self.run(move |s| s.delete_device(&username)).await;
        self.generation.changed(r)
    }
    async fn number(&self, number: &str) -> Result<Option<Number>, StoreError> {
        let number = number.to_owned();
        self.run(move |s| s.number(&number)).await
    }
    async fn numbers_for_account(&self, account_id: &str) -> Result<Vec<Number>, StoreError> {
        let account_id = account_id.to_owned();
        self.run(move |s| s.numbers_for_account(&account_id)).await
    }
    async fn create_number(&self, number: &Number) -> Result<(), StoreError> {
        let number = number.to_owned();
        let r = self.run(move |s| s.create_number(&number)).await;
        self.generation.changed(r)
    }
    async fn update_number(&self, number: &Number) -> Result<(), StoreError> {
        let number = number.to_owned();
        let r = self.run(move |s| s.update_number(&number)).await;
        self.generation.changed(r)
    }
    async fn delete_number(&self, account_id: &str, number: &str) -> Result<bool, StoreError> {
        let (account_id, number) = (account_id.to_owned(), number.to_owned());
        let r = self
            .run(move |s| s.delete_number(&account_id, &number))
            .await;
        self.generation.changed(r)
    }
    async fn trunk(&self, name: &str) -> Result<Option<Trunk>, StoreError> {
        let name = name.to_owned();
        self.run(move |s| s.trunk(&name)).await
    }
    async fn trunks_for_account(&self, account_id: &str) -> Result<Vec<Trunk>, StoreError> {
        let account_id = account_id.to_owned();
        self.run(move |s| s.trunks_for_account(&account_id)).await
    }
    async fn list_trunks(&self) -> Result<Vec<Trunk>, StoreError> {
        self.run(move |s| s.list_trunks()).await
    }
    async fn create_trunk(&self, trunk: &Trunk) -> Result<(), StoreError> {
        let trunk = trunk.to_owned();
        let r = self.run(move |s| s.create_trunk(&trunk)).await;
        self.generation.changed(r)
    }
    async fn update_trunk(&self, trunk: &Trunk) -> Result<(), StoreError> {
        let trunk = trunk.to_owned();
        let r = self.run(move |s| s.update_trunk(&trunk)).await;
        self.generation.changed(r)
    }
    async fn delete_trunk(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        let r = self.run(move |s| s.delete_trunk(&name)).await;
        self.generation.changed(r)
    }
    async fn upsert_binding(&self, binding: &Binding) -> Result<(), StoreError> {
        self.gathered(&self.upserts, binding.to_owned(), |s: &B, bindings| {
            s.upsert_bindings(&bindings)
        })
        .await
    }
    async fn remove_binding(
        &self,
        device_username: &str,
        contact: &str,
    ) -> Result<bool, StoreError> {
        let (device_username, contact) = (device_username.to_owned(), contact.to_owned());
        self.run(move |s| s.remove_binding(&device_username, &contact))
            .await
    }
    async fn remove_all_bindings(&self, device_username: &str) -> Result<usize, StoreError> {
        let device_username = device_username.to_owned();
        self.run(move |s| s.remove_all_bindings(&device_username))
            .await
    }
    async fn bindings_for_device(
        &self,
        device_username: &str,
        now: UnixSecs,
    ) -> Result<Vec<Binding>, StoreError> {
        let (device_username, now) = (device_username.to_owned(), now);
        self.run(move |s| s.bindings_for_device(&device_username, now))
            .await
    }
    async fn bindings_for_user(
        &self,
        user_id: &str,
        now: UnixSecs,
    ) -> Result<Vec<Binding>, StoreError> {
        let (user_id, now) = (user_id.to_owned(), now);
        self.run(move |s| s.bindings_for_user(&user_id, now)).await
    }
    async fn device_and_bindings(
        &self,
        username: &str,
        now: UnixSecs,
    ) -> Result<(Option<Device>, Vec<Binding>), StoreError> {
        self.gathered(
            &self.first_sights,
            (username.to_owned(), now),
            |s: &B, asked| {
                asked
                    .iter()
                    .map(|(username, now)| {
                        let Some(device) = s.device_by_username(username)? else {
                            return Ok((None, Vec::new()));
                        };
                        Ok((Some(device), s.bindings_for_device(username, *now)?))
                    })
                    .collect()
            },
        )
        .await
    }
    async fn refresh_binding(&self, binding: &Binding) -> Result<(), StoreError> {
        let binding = binding.to_owned();
        self.run(move |s| s.refresh_binding(&binding)).await
    }
    async fn flush_refreshes(&self) -> Result<usize, StoreError> {
        self.run(move |s| s.flush_refreshes()).await
    }
    fn refresh_binding_here(&self, binding: &Binding) -> Option<Result<(), StoreError>> {
        self.backend
            .refreshes_in_memory()
            .then(|| self.backend.refresh_binding(binding))
    }
    fn shared(&self) -> bool {
        false
    }
    async fn sweep_expired(&self, now: UnixSecs) -> Result<usize, StoreError> {
        self.run(move |s| s.sweep_expired(now)).await
    }
    async fn count_bindings(&self, now: UnixSecs) -> Result<u64, StoreError> {
        self.run(move |s| s.count_bindings(now)).await
    }
    async fn insert_call(&self, call: &CallRecord) -> Result<(), StoreError> {
        let call = call.to_owned();
        self.run(move |s| s.insert_call(&call)).await
    }
    async fn admit_call(
        &self,
        writes: &[CallWrite],
        limits: &AccountLimits,
        now_ms: UnixMs,
    ) -> Result<Admission, StoreError> {
        let writes = writes.to_vec();
        let limits = *limits;
        self.run(move |s| s.admit_call(&writes, &limits, now_ms))
            .await
    }
    async fn update_call(&self, call: &CallRecord) -> Result<(), StoreError> {
        let call = call.to_owned();
        self.run(move |s| s.update_call(&call)).await
    }
    async fn get_call(&self, account_id: &str, id: &str) -> Result<Option<CallRecord>, StoreError> {
        let (account_id, id) = (account_id.to_owned(), id.to_owned());
        self.run(move |s| s.get_call(&account_id, &id)).await
    }
    async fn call_by_request_id(
        &self,
        account_id: &str,
        request_id: &str,
    ) -> Result<Option<CallRecord>, StoreError> {
        let (account_id, request_id) = (account_id.to_owned(), request_id.to_owned());
        self.run(move |s| s.call_by_request_id(&account_id, &request_id))
            .await
    }
    async fn list_calls(
        &self,
        filter: &CallFilter,
    ) -> Result<(Vec<CallRecord>, Option<String>), StoreError> {
        let filter = filter.to_owned();
        self.run(move |s| s.list_calls(&filter)).await
    }
    async fn append_timeline(
        &self,
        call_id: &str,
        entry: &TimelineEntry,
    ) -> Result<(), StoreError> {
        let (call_id, entry) = (call_id.to_owned(), entry.to_owned());
        self.run(move |s| s.append_timeline(&call_id, &entry)).await
    }
    async fn timeline(&self, call_id: &str) -> Result<Vec<TimelineEntry>, StoreError> {
        let call_id = call_id.to_owned();
        self.run(move |s| s.timeline(&call_id)).await
    }
    async fn enqueue_callback(&self, entry: &OutboxEntry) -> Result<(), StoreError> {
        let entry = entry.to_owned();
        self.run(move |s| s.enqueue_callback(&entry)).await
    }
    async fn claim_callbacks(
        &self,
        by: &str,
        now: UnixMs,
        claim_until: UnixMs,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let by = by.to_owned();
        self.run(move |s| s.claim_callbacks(&by, now, claim_until, limit))
            .await
    }
    async fn due_callbacks(&self, now: UnixMs, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        let (now, limit) = (now, limit);
        self.run(move |s| s.due_callbacks(now, limit)).await
    }
    async fn callback_due(&self, event_id: &str, now: UnixMs) -> Result<bool, StoreError> {
        let (event_id, now) = (event_id.to_owned(), now);
        self.run(move |s| s.callback_due(&event_id, now)).await
    }
    async fn mark_delivered(&self, event_id: &str, attempts: u32) -> Result<(), StoreError> {
        let (event_id, attempts) = (event_id.to_owned(), attempts);
        self.run(move |s| s.mark_delivered(&event_id, attempts))
            .await
    }
    async fn reschedule(
        &self,
        event_id: &str,
        attempts: u32,
        next_attempt_at_ms: UnixMs,
        last_error: &str,
    ) -> Result<(), StoreError> {
        let (event_id, attempts, next_attempt_at_ms, last_error) = (
            event_id.to_owned(),
            attempts,
            next_attempt_at_ms,
            last_error.to_owned(),
        );
        self.run(move |s| s.reschedule(&event_id, attempts, next_attempt_at_ms, &last_error))
            .await
    }
    async fn abandon_callback(
        &self,
        event_id: &str,
        attempts: u32,
        last_error: &str,
    ) -> Result<(), StoreError> {
        let (event_id, attempts, last_error) =
            (event_id.to_owned(), attempts, last_error.to_owned());
        self.run(move |s| s.abandon_callback(&event_id, attempts, &last_error))
            .await
    }
    async fn callbacks_for_call(&self, call_id: &str) -> Result<Vec<OutboxEntry>, StoreError> {
        let call_id = call_id.to_owned();
        self.run(move |s| s.callbacks_for_call(&call_id)).await
    }
    async fn next_callback_seq(&self, call_id: &str) -> Result<i64, StoreError> {
        let call_id = call_id.to_owned();
        self.run(move |s| s.next_callback_seq(&call_id)).await
    }
    async fn write_call_batch(&self, writes: &[CallWrite]) -> Result<(), StoreError> {
        let writes = writes.to_owned();
        self.run(move |s| s.write_call_batch(&writes)).await
    }
    fn write_call_batch_admitting_here(
        &self,
        admissions: &[AdmitRequest],
        writes: &[CallWrite],
    ) -> Option<Result<Vec<Result<Admission, StoreError>>, StoreError>> {
        Some(self.backend.write_call_batch_admitting(admissions, writes))
    }
    fn read_call_here(
        &self,
        account_id: &str,
        id: &str,
    ) -> Option<Result<Option<(CallRecord, i64)>, StoreError>> {
        let read = || match self.backend.get_call(account_id, id)? {
            Some(rec) if rec.callback_url.is_none() => Ok(Some((rec, 1))),
            Some(rec) => Ok(Some((rec, self.backend.next_callback_seq(id)?))),
            None => Ok(None),
        };
        Some(read())
    }
    async fn unfinished_calls(&self) -> Result<Vec<CallRecord>, StoreError> {
        self.run(move |s| s.unfinished_calls()).await
    }
    async fn unfinished_calls_of(
        &self,
        node_id: &str,
        with_unowned: bool,
    ) -> Result<Vec<CallRecord>, StoreError> {
        let node_id = node_id.to_owned();
        self.run(move |s| s.unfinished_calls_of(&node_id, with_unowned))
            .await
    }
    async fn acquire_node_lease(
        &self,
        lease: &NodeLease,
        now: UnixMs,
        stale_until: Option<UnixMs>,
    ) -> Result<(), StoreError> {
        let lease = lease.clone();
        self.run(move |s| s.acquire_node_lease(&lease, now, stale_until))
            .await
    }
    async fn renew_node_lease(&self, lease: &NodeLease) -> Result<bool, StoreError> {
        let lease = lease.clone();
        self.run(move |s| s.renew_node_lease(&lease)).await
    }
    async fn claim_lapsed_nodes(
        &self,
        by: &str,
        now: UnixMs,
    ) -> Result<Vec<NodeLease>, StoreError> {
        let by = by.to_owned();
        self.run(move |s| s.claim_lapsed_nodes(&by, now)).await
    }
    async fn node_lease(&self, node_id: &str) -> Result<Option<NodeLease>, StoreError> {
        let node_id = node_id.to_owned();
        self.run(move |s| s.node_lease(&node_id)).await
    }
    async fn release_node_lease(&self, node_id: &str, instance: &str) -> Result<(), StoreError> {
        let (node_id, instance) = (node_id.to_owned(), instance.to_owned());
        self.run(move |s| s.release_node_lease(&node_id, &instance))
            .await
    }
    async fn probe_write(&self, now: UnixMs) -> Result<(), StoreError> {
        self.run(move |s| s.probe_write(now)).await
    }
    async fn put_idempotency(&self, record: &IdempotencyRecord) -> Result<bool, StoreError> {
        let record = record.to_owned();
        self.run(move |s| s.put_idempotency(&record)).await
    }
    async fn get_idempotency(
        &self,
        account_id: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let (account_id, key) = (account_id.to_owned(), key.to_owned());
        self.run(move |s| s.get_idempotency(&account_id, &key))
            .await
    }
    async fn purge_idempotency(&self, before_ms: UnixMs) -> Result<usize, StoreError> {
        self.run(move |s| s.purge_idempotency(before_ms)).await
    }
    async fn complete_idempotency(&self, record: &IdempotencyRecord) -> Result<(), StoreError> {
        let record = record.to_owned();
        self.run(move |s| s.complete_idempotency(&record)).await
    }
    async fn release_idempotency(&self, account_id: &str, key: &str) -> Result<bool, StoreError> {
        let (account_id, key) = (account_id.to_owned(), key.to_owned());
        self.run(move |s| s.release_idempotency(&account_id, &key))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SqliteStore;
    use std::time::Duration;

    fn threads(n: usize) -> StoreThreads<SqliteStore> {
        StoreThreads::new(SqliteStore::open_in_memory().unwrap(), n).unwrap()
    }

    #[tokio::test]
    async fn calls_run_on_the_store_threads() {
        let t = threads(2);
        let name = t
            .run(|_| Ok(std::thread::current().name().map(str::to_owned)))
            .await
            .unwrap();
        assert!(name.is_some_and(|n| n.starts_with("store-")));
        let inline = StoreThreads::inline(SqliteStore::open_in_memory().unwrap());
        let here = std::thread::current().id();
        assert_eq!(
            inline
                .run(|_| Ok(std::thread::current().id()))
                .await
                .unwrap(),
            here
        );
    }

    /// The runtime's one thread goes on with other tasks while a store call is slow.
    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_call_does_not_hold_the_runtime_thread() {
        let t = threads(1);
        let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = Arc::clone(&ticks);
        let ticker = tokio::spawn(async move {
            loop {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        });
        t.run(|_| {
            std::thread::sleep(Duration::from_millis(100));
            Ok(())
        })
        .await
        .unwrap();
        ticker.abort();
        assert!(ticks.load(std::sync::atomic::Ordering::SeqCst) > 10);
    }

    #[tokio::test]
    async fn a_panicking_call_fails_alone_and_the_thread_goes_on() {
        let t = threads(1);
        let r: Result<(), StoreError> = t.run(|_| panic!("boom")).await;
        assert!(matches!(r, Err(StoreError::Crashed)));
        assert!(t.list_accounts().await.unwrap().is_empty());
    }

    /// Jobs queued before the last handle goes still run, and the threads then end.
    #[tokio::test]
    async fn queued_jobs_run_after_the_handle_is_dropped() {
        let t = threads(1);
        let queue = Arc::clone(t.queue.as_ref().unwrap());
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let ran = Arc::new(std::sync::atomic::AtomicU32::new(0));
        // The one thread waits in the first job until the handle is gone.
        let first = queue.push(Box::new(move |_| {
            let _ = gate_rx.recv_timeout(Duration::from_secs(5));
        }));
        first.await.unwrap();
        for _ in 0..3 {
            let ran = Arc::clone(&ran);
            queue
                .push(Box::new(move |_| {
                    ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }))
                .await
                .unwrap();
        }
        drop(t);
        assert!(queue.push(Box::new(|_| {})).await.is_err());
        gate_tx.send(()).unwrap();
        for _ in 0..500 {
            if ran.load(std::sync::atomic::Ordering::SeqCst) == 3 && Arc::strong_count(&queue) == 1
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 3);
        // The store thread ended and let go of the queue.
        assert_eq!(Arc::strong_count(&queue), 1);
    }

    fn binding(device: &str, contact: String) -> Binding {
        Binding {
            device_username: device.into(),
            user_id: String::new(),
            contact,
            source: "127.0.0.1:5062".into(),
            transport: "udp".into(),
            local: "127.0.0.1:5060".into(),
            expires_at: 2_000_000_000,
            q: None,
            call_id: "reg-1".into(),
            cseq: 1,
            instance: None,
            reg_id: None,
            user_agent: None,
            updated_at: 1_700_000_000,
            path: Vec::new(),
        }
    }

    /// Store threads (one) on the sample provisioning, that thread held in a job until the
    /// returned sender is used (or 5 s have passed).
    async fn held_store() -> (Arc<StoreThreads<SqliteStore>>, std::sync::mpsc::Sender<()>) {
        let sqlite = SqliteStore::open_in_memory().unwrap();
        let prov: crate::Provisioning = toml::from_str(crate::provision::tests::SAMPLE).unwrap();
        sqlite.apply_provisioning(&prov, "dialbridge.test").unwrap();
        let t = Arc::new(StoreThreads::new(sqlite, 1).unwrap());
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        t.queue
            .as_ref()
            .unwrap()
            .push(Box::new(move |_| {
                let _ = gate_rx.recv_timeout(Duration::from_secs(5));
            }))
            .await
            .unwrap();
        (t, gate_tx)
    }

    /// New contacts that come while the store thread is busy are written by one job (one
    /// transaction); a contact of a device that does not exist is refused alone.
    #[tokio::test]
    async fn new_contacts_that_come_together_are_written_together() {
        // The one thread waits in a job until the contacts are all queued.
        let (t, gate_tx) = held_store().await;
        let mut set = tokio::task::JoinSet::new();
        for i in 0..50 {
            let t = Arc::clone(&t);
            let device = if i == 7 { "nobody" } else { "alice-desk" };
            let b = binding(device, format!("sip:alice@127.0.0.1:{}", 6000 + i));
            set.spawn(async move { (i, t.upsert_binding(&b).await) });
        }
        for _ in 0..500 {
            if t.upserts.len() == 50 && t.queued() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(t.upserts.len(), 50);
        assert_eq!(t.queued(), 1, "one job for the fifty contacts");
        gate_tx.send(()).unwrap();
        while let Some(r) = set.join_next().await {
            let (i, result) = r.unwrap();
            if i == 7 {
                assert!(
                    matches!(result, Err(StoreError::NotFound { .. })),
                    "{result:?}"
                );
            } else {
                result.unwrap();
            }
        }
        let stored = t.bindings_for_device("alice-desk", 1_700_000_000).await;
        assert_eq!(stored.unwrap().len(), 49);
        // The next contact, alone, is written by a job of its own.
        let b = binding("alice-desk", "sip:alice@127.0.0.1:7000".into());
        t.upsert_binding(&b).await.unwrap();
        assert_eq!(t.upserts.len(), 0);
    }

    /// A group holds [`MAX_GATHERED`] at most: the requests past it wait in the bounded
    /// queue as jobs of their own, and every one is answered.
    #[tokio::test]
    async fn a_full_group_sends_the_next_requests_to_the_queue() {
        let (t, gate_tx) = held_store().await;
        let extra = 20;
        let mut set = tokio::task::JoinSet::new();
        for i in 0..MAX_GATHERED + extra {
            let t = Arc::clone(&t);
            let b = binding("alice-desk", format!("sip:alice@127.0.0.1:{}", 10_000 + i));
            set.spawn(async move { t.upsert_binding(&b).await });
        }
        for _ in 0..500 {
            if t.queued() == 1 + extra {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(t.upserts.len(), MAX_GATHERED);
        assert_eq!(
            t.queued(),
            1 + extra,
            "one job for the group, one for each past it"
        );
        gate_tx.send(()).unwrap();
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
        }
        let stored = t.bindings_for_device("alice-desk", 1_700_000_000).await;
        assert_eq!(stored.unwrap().len(), MAX_GATHERED + extra);
    }

    /// The first REGISTERs of a burst of phones (devices not seen lately) that come within
    /// [`GATHER`] of one another are read by one job: no job is queued until the gathering
    /// time has passed, and each caller gets its own device and bindings.
    #[tokio::test(start_paused = true)]
    async fn devices_seen_first_in_a_burst_are_read_together() {
        let sqlite = SqliteStore::open_in_memory().unwrap();
        let prov: crate::Provisioning = toml::from_str(crate::provision::tests::SAMPLE).unwrap();
        sqlite.apply_provisioning(&prov, "dialbridge.test").unwrap();
        sqlite
            .upsert_binding(&binding("alice-desk", "sip:alice@127.0.0.1:6000".into()))
            .unwrap();
        let t = Arc::new(StoreThreads::new(sqlite, 1).unwrap());
        let mut set = tokio::task::JoinSet::new();
        for i in 0..20 {
            let t = Arc::clone(&t);
            let device = if i % 2 == 0 { "alice-desk" } else { "nobody" };
            set.spawn(async move { (i, t.device_and_bindings(device, 1_700_000_000).await) });
        }
        // This task keeps the clock from moving on while the others join the first.
        for _ in 0..1000 {
            if t.first_sights.len() == 20 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(t.first_sights.len(), 20, "all twenty wait together");
        assert_eq!(t.queued(), 0, "no job before the gathering time");
        while let Some(r) = set.join_next().await {
            let (i, result) = r.unwrap();
            let (device, bindings) = result.unwrap();
            if i % 2 == 0 {
                assert_eq!(device.unwrap().username, "alice-desk");
                assert_eq!(bindings.len(), 1);
                assert_eq!(bindings[0].contact, "sip:alice@127.0.0.1:6000");
            } else {
                assert!(device.is_none() && bindings.is_empty());
            }
        }
        assert_eq!(t.first_sights.len(), 0);
    }

    #[tokio::test]
    async fn many_callers_at_once_are_all_answered() {
        let t = Arc::new(threads(2));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..(QUEUE + 100) {
            let t = Arc::clone(&t);
            set.spawn(async move { t.run(move |_| Ok(i)).await.unwrap() });
        }
        let mut sum = 0usize;
        while let Some(r) = set.join_next().await {
            sum += r.unwrap();
        }
        let n = QUEUE + 100;
        assert_eq!(sum, n * (n - 1) / 2);
        assert_eq!(t.queued(), 0);
    }
}
