//! When a customer leg goes on to its next attempt.
//!
//! The walk itself is the call machine's (`calls::machine`, one stage of its plan per
//! attempt): an attempt that sends nothing — not even `100 Trying` — within its trunk's
//! `invite_timeout_ms`, or whose transport fails, is given up for the next; so is one that
//! answers with one of its trunk's `failover_codes` ([`after_final`]); any other final
//! answer is the customer's and ends the leg. Before its INVITE an attempt takes a channel
//! of its trunk ([`super::Trunks::acquire`]); a trunk at its limit is skipped.

use super::Attempt;

/// What the leg does after an attempt's final response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Give this target up and try the next attempt.
    Try,
    /// The answer stands: the leg ends with it.
    End,
}

/// Whether a final response is given up for the next attempt (one of the trunk's
/// `failover_codes`) or is the customer's answer (486, 404, 603, ...).
pub fn after_final(attempt: &Attempt, code: u16) -> Next {
    if (300..700).contains(&code) && attempt.failover_codes.contains(&code) {
        Next::Try
    } else {
        Next::End
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trunks::{AttemptResult, TargetState, Trunks, TrunksConfig};
    use sip_core::endpoint::Destination;
    use sip_core::transport::Transport;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    fn trunks() -> Arc<Trunks> {
        let store: Arc<dyn store::Store> = Arc::new(store::StoreThreads::inline(
            store::SqliteStore::open_in_memory().unwrap(),
        ));
        // A server that is never asked: these tests use no domain.
        let cfg = TrunksConfig {
            dns_servers: vec!["127.0.0.1:9".parse().unwrap()],
        };
        Arc::new(Trunks::new(&cfg, store))
    }

    fn attempt(trunk: &str, port: u16, max_calls: Option<u32>) -> Attempt {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Attempt {
            trunk: trunk.into(),
            label: format!("trunk {trunk} udp:{addr}"),
            request_uri: sip_core::message::Uri::Sip(sip_core::message::SipUri::new(
                Some("+15550100"),
                sip_core::message::Host::Ip(addr.ip()),
                Some(port),
            )),
            dest: Destination {
                transport: Transport::Udp,
                addr,
                conn: None,
            },
            credentials: None,
            invite_timeout: Duration::from_millis(2000),
            failover_codes: store::TrunkRouting::DEFAULT_FAILOVER_CODES.to_vec(),
            max_calls,
            calls_per_second: None,
            checked: false,
            down_after: 3,
            srtp: store::Srtp::None,
        }
    }

    #[test]
    fn failover_codes_go_on_the_customers_answers_end() {
        let a = attempt("t", 1, None);
        for code in [408, 500, 502, 503, 504] {
            assert_eq!(after_final(&a, code), Next::Try, "{code}");
        }
        for code in [404, 480, 486, 487, 600, 603, 200] {
            assert_eq!(after_final(&a, code), Next::End, "{code}");
        }
        let mut only_503 = a.clone();
        only_503.failover_codes = vec![503];
        assert_eq!(after_final(&only_503, 500), Next::End);
        assert_eq!(after_final(&only_503, 503), Next::Try);
    }

    #[tokio::test(start_paused = true)]
    async fn time_outs_are_counted_and_only_checked_trunks_go_down_by_them() {
        let t = trunks();
        let a = attempt("a", 5001, None);
        let mut checked = attempt("c", 5002, None);
        checked.checked = true;
        checked.down_after = 2;
        for _ in 0..2 {
            t.report(&a, AttemptResult::Timeout);
            t.report(&checked, AttemptResult::Timeout);
        }
        let (_, attempts) = t.metric_lines();
        assert!(attempts.contains(&("{trunk=\"a\",code=\"timeout\"}".into(), 2)));
        let addr = |p| SocketAddr::from(([127, 0, 0, 1], p));
        assert_eq!(
            t.target_state("a", &t.runtime("a"), addr(5001)),
            TargetState::Up
        );
        assert_eq!(
            t.target_state("c", &t.runtime("c"), addr(5002)),
            TargetState::Down
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_holds_the_target_down_for_its_time() {
        let t = trunks();
        let a = attempt("a", 5001, None);
        t.report(
            &a,
            AttemptResult::Final {
                code: 503,
                retry_after: Some(Duration::from_secs(30)),
                rtt: None,
            },
        );
        let rt = t.runtime("a");
        let addr = SocketAddr::from(([127, 0, 0, 1], 5001));
        assert_eq!(t.target_state("a", &rt, addr), TargetState::Down);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(t.target_state("a", &rt, addr), TargetState::Down);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.target_state("a", &rt, addr), TargetState::Up);
        // A 503 without Retry-After is only remembered.
        t.report(
            &a,
            AttemptResult::Final {
                code: 503,
                retry_after: None,
                rtt: None,
            },
        );
        assert_eq!(t.target_state("a", &rt, addr), TargetState::Up);
    }

    #[tokio::test(start_paused = true)]
    async fn max_calls_counts_the_channels_held() {
        let t = trunks();
        let small = attempt("small", 5001, Some(1));
        let held = t.acquire(&small).expect("the one channel");
        assert!(t.acquire(&small).is_none(), "at its limit");
        // Another trunk is not affected.
        assert!(t.acquire(&attempt("big", 6001, None)).is_some());
        drop(held);
        assert!(t.acquire(&small).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn calls_per_second_skips_a_trunk_for_the_rest_of_the_second() {
        let t = trunks();
        let mut a = attempt("rated", 5001, None);
        a.calls_per_second = Some(1);
        let g = t.acquire(&a);
        assert!(g.is_some());
        assert!(t.acquire(&a).is_none(), "second call in the same second");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(t.acquire(&a).is_some());
    }
}
