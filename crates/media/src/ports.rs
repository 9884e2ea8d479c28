//! The relay's port range: even RTP port + odd RTCP port pairs (RFC 3550 §11), handed out
//! round-robin so that a port just released is not reused at once (late packets of the old
//! call must not reach a new one). A closed session's pairs are usually not released here
//! at once: its forwarding thread parks its sockets, and a new session takes them after a
//! rest of their own (`crate::Relay::allocate_session`).

/// Number of even/odd pairs in `[min, max]`.
pub(crate) fn pair_count(min: u16, max: u16) -> usize {
    let first = u32::from(min) + u32::from(min) % 2;
    let max = u32::from(max);
    if first + 1 > max {
        0
    } else {
        ((max - first - 1) / 2 + 1) as usize
    }
}

/// Book-keeping of the pairs in use.
#[derive(Debug)]
pub(crate) struct PortAllocator {
    first: u16,
    in_use: Vec<bool>,
    next: usize,
    used: usize,
}

impl PortAllocator {
    pub(crate) fn new(min: u16, max: u16) -> Self {
        PortAllocator {
            first: min.saturating_add(min % 2),
            in_use: vec![false; pair_count(min, max)],
            next: 0,
            used: 0,
        }
    }

    /// Tries every free pair once, in round-robin order, with `bind(rtp_port)`; the first
    /// success marks the pair used. Pairs that fail to bind (taken by another program) are
    /// skipped. `None` when no pair could be had.
    pub(crate) fn allocate_with<T, E>(
        &mut self,
        mut bind: impl FnMut(u16) -> Result<T, E>,
    ) -> Option<(u16, T)> {
        let n = self.in_use.len();
        for _ in 0..n {
            let i = self.next;
            self.next = (self.next + 1) % n;
            if self.in_use[i] {
                continue;
            }
            let port = self.port_of(i);
            if let Ok(v) = bind(port) {
                self.in_use[i] = true;
                self.used += 1;
                return Some((port, v));
            }
        }
        None
    }

    fn port_of(&self, i: usize) -> u16 {
        // i < pair_count(first, max) keeps this within u16.
        (usize::from(self.first) + 2 * i) as u16
    }

    /// Gives an RTP port (and its RTCP port) back.
    pub(crate) fn release(&mut self, rtp_port: u16) {
        let Some(off) = rtp_port.checked_sub(self.first) else {
            return;
        };
        let i = usize::from(off / 2);
        if off % 2 == 0 {
            if let Some(slot) = self.in_use.get_mut(i) {
                if *slot {
                    *slot = false;
                    self.used -= 1;
                }
            }
        }
    }

    /// Pairs in the range.
    pub(crate) fn pairs_total(&self) -> usize {
        self.in_use.len()
    }

    /// Pairs currently handed out.
    pub(crate) fn pairs_in_use(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_pairs() {
        assert_eq!(pair_count(20000, 20003), 2);
        assert_eq!(pair_count(20001, 20003), 1);
        assert_eq!(pair_count(20000, 20000), 0);
        assert_eq!(pair_count(20000, 29999), 5000);
        assert_eq!(pair_count(65534, 65535), 1);
    }

    #[test]
    fn round_robin_skips_failures_and_exhausts() {
        let mut p = PortAllocator::new(20001, 20009); // pairs 20002, 20004, 20006, 20008
        let ok = |port: u16| -> Result<u16, ()> { Ok(port) };
        assert_eq!(p.allocate_with(ok).map(|x| x.0), Some(20002));
        // 20004 is busy elsewhere: skipped.
        let got = p.allocate_with(|port| if port == 20004 { Err(()) } else { Ok(port) });
        assert_eq!(got.map(|x| x.0), Some(20006));
        assert_eq!(p.allocate_with(ok).map(|x| x.0), Some(20008));
        assert_eq!(p.allocate_with(ok).map(|x| x.0), Some(20004));
        assert_eq!(p.allocate_with(ok), None);
        assert_eq!(p.pairs_in_use(), 4);
        p.release(20006);
        p.release(20006);
        p.release(20007); // odd: not an RTP port, ignored
        assert_eq!(p.pairs_in_use(), 3);
        assert_eq!(p.allocate_with(ok).map(|x| x.0), Some(20006));
    }
}
