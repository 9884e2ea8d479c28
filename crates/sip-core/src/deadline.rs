//! [`DeadlineTimer`]: the one tokio timer of a task that drives a sans-IO machine.
//!
//! A machine (a transaction table, a call) says its next deadline after each input; the task
//! waits for that deadline or its next input. Made afresh at each turn, the task's timer
//! would be registered with the runtime's timer wheel and taken out again for every input;
//! this one is moved only when the deadline moves (`docs/benchmarks.md`, "One timer per
//! task").
//!
//! ```text
//! loop {
//!     timer.set(machine.poll_timeout());
//!     tokio::select! {
//!         input = inbox.recv() => machine.handle(input, now),
//!         () = timer.fired(), if timer.is_armed() => machine.handle_timeout(now),
//!     }
//! }
//! ```

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Where the timer waits while there is no deadline: far enough never to fire in practice,
/// and registered (not stale) so that a paused clock does not stop at an old deadline.
const IDLE: Duration = Duration::from_secs(3600);

/// A task's timer for its machine's next deadline.
#[derive(Debug)]
pub struct DeadlineTimer {
    // Boxed: the timer's state is not carried inline in the task's future.
    sleep: Pin<Box<Sleep>>,
    armed: Option<std::time::Instant>,
}

impl Default for DeadlineTimer {
    fn default() -> Self {
        DeadlineTimer::new()
    }
}

impl DeadlineTimer {
    /// A timer with no deadline (needs a tokio runtime with time enabled).
    pub fn new() -> DeadlineTimer {
        DeadlineTimer {
            sleep: Box::pin(tokio::time::sleep(IDLE)),
            armed: None,
        }
    }

    /// The next deadline: the timer moves only when it differs from the one it waits for.
    pub fn set(&mut self, deadline: Option<std::time::Instant>) {
        if deadline == self.armed {
            return;
        }
        let at = deadline.map_or_else(|| Instant::now() + IDLE, Instant::from_std);
        self.sleep.as_mut().reset(at);
        self.armed = deadline;
    }

    /// Whether there is a deadline to wait for (the `select!` branch's condition).
    pub fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    /// Completes at the deadline. Then the timer has none until the next [`set`], which
    /// arms it again even at the same instant.
    ///
    /// [`set`]: DeadlineTimer::set
    pub async fn fired(&mut self) {
        self.sleep.as_mut().await;
        self.armed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_deadline_moves_with_it_and_waits_without_one() {
        let start = Instant::now();
        let at = |ms: u64| (start + Duration::from_millis(ms)).into_std();
        let mut t = DeadlineTimer::new();
        assert!(!t.is_armed());
        t.set(Some(at(500)));
        t.set(Some(at(200))); // earlier: moved
        t.fired().await;
        assert_eq!(start.elapsed(), Duration::from_millis(200));
        assert!(!t.is_armed());
        // The same instant again, now past: armed again, fires at once.
        t.set(Some(at(200)));
        assert!(t.is_armed());
        t.fired().await;
        assert_eq!(start.elapsed(), Duration::from_millis(200));
        // Later; then no deadline: a wait that is not polled lets time go by without it.
        t.set(Some(at(900)));
        t.set(None);
        assert!(!t.is_armed());
        tokio::time::sleep(Duration::from_secs(5)).await;
        t.set(Some(at(6_000)));
        t.fired().await;
        assert_eq!(start.elapsed(), Duration::from_secs(6));
    }
}
