//! Plumbing shared by the four machines: the armed timers and the output
//! queues.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

use super::{Timer, TxEvent};

/// The deadlines of the armed timers, one slot per [`Timer`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Timers {
    deadlines: [Option<Instant>; Timer::ALL.len()],
}

impl Timers {
    /// Arms `timer` to fire at `deadline`, replacing any earlier deadline.
    pub(crate) fn set(&mut self, timer: Timer, deadline: Instant) {
        self.deadlines[timer.index()] = Some(deadline);
    }

    /// Disarms `timer`.
    pub(crate) fn stop(&mut self, timer: Timer) {
        self.deadlines[timer.index()] = None;
    }

    /// Disarms every timer.
    pub(crate) fn stop_all(&mut self) {
        self.deadlines = Default::default();
    }

    /// The deadline of `timer`, if armed.
    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.deadlines[timer.index()]
    }

    /// The earliest deadline of all armed timers.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// The timers due at `now`, earliest deadline first (ties in [`Timer`]
    /// order). A snapshot: firing one timer may stop or re-arm others, so the
    /// caller checks each is still armed with the same deadline before firing
    /// it (see [`Timers::take_if_due`]).
    pub(crate) fn due(&self, now: Instant) -> Due {
        let mut due = Due {
            slots: [None; Timer::ALL.len()],
            len: 0,
            next: 0,
        };
        for timer in Timer::ALL {
            if let Some(deadline) = self.get(timer) {
                if deadline <= now {
                    due.slots[due.len] = Some((deadline, timer));
                    due.len += 1;
                }
            }
        }
        due.slots[..due.len].sort_unstable();
        due
    }

    /// Disarms `timer` and returns `true` if it is still armed at `deadline`.
    pub(crate) fn take_if_due(&mut self, timer: Timer, deadline: Instant) -> bool {
        if self.get(timer) == Some(deadline) {
            self.stop(timer);
            true
        } else {
            false
        }
    }
}

/// A snapshot of due timers, see [`Timers::due`].
#[derive(Debug)]
pub(crate) struct Due {
    slots: [Option<(Instant, Timer)>; Timer::ALL.len()],
    len: usize,
    next: usize,
}

impl Iterator for Due {
    type Item = (Instant, Timer);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.len {
            return None;
        }
        let item = self.slots[self.next];
        self.next += 1;
        item
    }
}

/// What a machine wants sent and what it wants the TU told, in order.
#[derive(Debug, Default)]
pub(crate) struct Outputs {
    transmits: VecDeque<Bytes>,
    events: VecDeque<TxEvent>,
}

impl Outputs {
    pub(crate) fn transmit(&mut self, bytes: Bytes) {
        self.transmits.push_back(bytes);
    }

    pub(crate) fn event(&mut self, event: TxEvent) {
        self.events.push_back(event);
    }

    pub(crate) fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    pub(crate) fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn due_timers_come_out_earliest_first_and_only_when_due() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.set(Timer::B, t0 + Duration::from_secs(32));
        timers.set(Timer::A, t0 + Duration::from_millis(500));
        timers.set(Timer::D, t0 + Duration::from_secs(40));
        assert_eq!(
            timers.next_deadline(),
            Some(t0 + Duration::from_millis(500))
        );

        let due: Vec<Timer> = timers
            .due(t0 + Duration::from_secs(32))
            .map(|(_, t)| t)
            .collect();
        assert_eq!(due, vec![Timer::A, Timer::B]);
        assert_eq!(timers.due(t0).count(), 0);
    }

    #[test]
    fn take_if_due_refuses_a_rearmed_or_stopped_timer() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.set(Timer::G, t0);
        timers.set(Timer::H, t0);
        let due: Vec<_> = timers.due(t0).collect();
        timers.set(Timer::G, t0 + Duration::from_secs(1));
        timers.stop(Timer::H);
        for (deadline, timer) in due {
            assert!(!timers.take_if_due(timer, deadline));
        }
        assert_eq!(timers.get(Timer::G), Some(t0 + Duration::from_secs(1)));
        timers.stop_all();
        assert_eq!(timers.next_deadline(), None);
    }
}
