//! Media time-out: no packet from either leg of a started session for `media.timeout_secs`.
//! Pure state, driven by the `now` its owner passes in.

use std::time::{Duration, Instant};

/// The media time-out of one session.
///
/// Armed by [`crate::MediaSession::start`] (the call is up), disarmed by `stop` (hold). The
/// silence is measured from the later of the arming time and the last packet of either leg;
/// it fires once, and again only after being re-armed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaTimeout {
    timeout: Duration,
    armed_at: Option<Instant>,
    fired: bool,
}

impl MediaTimeout {
    /// A disarmed time-out of the given length.
    pub fn new(timeout: Duration) -> Self {
        MediaTimeout {
            timeout,
            armed_at: None,
            fired: false,
        }
    }

    /// Starts watching for silence from `now`.
    pub fn arm(&mut self, now: Instant) {
        self.armed_at = Some(now);
        self.fired = false;
    }

    /// Stops watching.
    pub fn disarm(&mut self) {
        self.armed_at = None;
    }

    /// When the time-out fires if nothing arrives, given the last packet time.
    pub fn deadline(&self, last_rx: Option<Instant>) -> Option<Instant> {
        let armed = self.armed_at?;
        if self.fired {
            return None;
        }
        let from = last_rx.map_or(armed, |t| t.max(armed));
        Some(from + self.timeout)
    }

    /// Returns true exactly once when the deadline has passed at `now`.
    pub fn poll(&mut self, now: Instant, last_rx: Option<Instant>) -> bool {
        match self.deadline(last_rx) {
            Some(d) if now >= d => {
                self.fired = true;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn silent_call_times_out_once() {
        let t0 = Instant::now();
        let mut m = MediaTimeout::new(T);
        m.arm(t0);
        assert!(!m.poll(t0 + T - Duration::from_millis(1), None));
        assert!(m.poll(t0 + T, None));
        assert!(!m.poll(t0 + T * 2, None));
    }

    #[test]
    fn packets_push_the_deadline() {
        let t0 = Instant::now();
        let mut m = MediaTimeout::new(T);
        m.arm(t0);
        let last = t0 + Duration::from_secs(20);
        assert!(!m.poll(t0 + T, Some(last)));
        assert_eq!(m.deadline(Some(last)), Some(last + T));
        assert!(m.poll(last + T, Some(last)));
    }

    #[test]
    fn disarmed_never_fires_and_packets_before_arming_do_not_count() {
        let t0 = Instant::now();
        let mut m = MediaTimeout::new(T);
        assert!(!m.poll(t0 + T * 10, None));
        // Early media long before the answer does not shorten the time-out.
        let armed = t0 + T * 10;
        m.arm(armed);
        assert_eq!(m.deadline(Some(t0)), Some(armed + T));
        m.disarm();
        assert!(!m.poll(armed + T * 2, Some(t0)));
        // Re-arming after a fire allows another.
        m.arm(armed);
        assert!(m.poll(armed + T, None));
        m.arm(armed + T);
        assert!(m.poll(armed + T * 2, None));
    }
}
