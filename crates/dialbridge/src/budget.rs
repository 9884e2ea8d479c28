//! The descriptor budget: how the process's `nofile` limit is shared between the media
//! relay's ports, the store, the REST API's connections and SIP's TCP connections, with a
//! reserve that connections can never take (listeners, log, callbacks, DNS, the journal).
//!
//! At start-up the soft limit is raised to the hard one ([`raise_nofile`]); the budget is
//! planned from what that gives ([`Budget::plan`]) and said in the start-up log and by
//! `check-config`. A media range that does not fit on its own refuses the start: calls
//! would fail at random once the relay ran out of descriptors.

use crate::config::{Config, ConfigError};

/// Descriptors kept for the store (the database, its journal and WAL files).
pub const STORE: u64 = 16;
/// Descriptors of the relay beyond its ports (workers' event queues).
pub const RELAY_OVERHEAD: u64 = 16;
/// The reserve is at least this, and at least 1/32 of the limit.
pub const MIN_RESERVE: u64 = 128;
/// Fewer connections than this in all is no service.
pub const MIN_CONNECTIONS: u64 = 32;

/// The plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The `nofile` limit the plan is for.
    pub nofile: u64,
    pub relay: u64,
    pub store: u64,
    pub reserve: u64,
    /// SIP TCP connections at once, and from one address.
    pub sip: usize,
    pub sip_per_ip: usize,
    /// REST connections at once, and from one address.
    pub api: usize,
    pub api_per_ip: usize,
}

fn err(key: &str, reason: String) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason,
    }
}

/// A sixteenth of `max`, at least one: one source cannot take a tenth.
fn per_ip(explicit: usize, max: usize) -> usize {
    if explicit > 0 {
        explicit
    } else {
        (max / 16).max(1)
    }
}

impl Budget {
    /// Shares `nofile` descriptors for `cfg` (whose media range is `media_ports`).
    pub fn plan(nofile: u64, cfg: &Config, media_ports: (u16, u16)) -> Result<Budget, ConfigError> {
        let ports = u64::from(media_ports.1.saturating_sub(media_ports.0)) + 1;
        let relay = ports + RELAY_OVERHEAD;
        let reserve = MIN_RESERVE.max(nofile / 32);
        let fixed = relay + STORE + reserve;
        if fixed + MIN_CONNECTIONS > nofile {
            return Err(err(
                "media.ports",
                format!(
                    "the range needs {relay} descriptors; with the store ({STORE}), the reserve \
                     ({reserve}) and at least {MIN_CONNECTIONS} connections that is more than \
                     the {nofile} the process may open (raise the nofile limit, e.g. \
                     LimitNOFILE=, or narrow the range)"
                ),
            ));
        }
        let left = usize::try_from(nofile - fixed).unwrap_or(usize::MAX);
        let (sip, api) = match (cfg.sip.max_connections, cfg.api.max_connections) {
            (0, 0) => {
                let api = left / 4;
                (left - api, api)
            }
            (0, a) => (left.saturating_sub(a), a),
            (s, 0) => (s, left.saturating_sub(s)),
            (s, a) => (s, a),
        };
        if sip == 0 || api == 0 || sip.saturating_add(api) > left {
            let key = if cfg.sip.max_connections > 0 {
                "sip.max_connections"
            } else {
                "api.max_connections"
            };
            return Err(err(
                key,
                format!(
                    "sip.max_connections ({}) and api.max_connections ({}) must fit in the \
                     {left} descriptors the relay ({relay}), the store ({STORE}) and the \
                     reserve ({reserve}) leave of {nofile}, with room for both",
                    cfg.sip.max_connections, cfg.api.max_connections
                ),
            ));
        }
        Ok(Budget {
            nofile,
            relay,
            store: STORE,
            reserve,
            sip,
            sip_per_ip: per_ip(cfg.sip.max_connections_per_ip, sip),
            api,
            api_per_ip: per_ip(cfg.api.max_connections_per_ip, api),
        })
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "descriptors {}: media relay {}, store {}, reserve {}, SIP TCP connections {} \
             ({} per address), REST connections {} ({} per address)",
            self.nofile,
            self.relay,
            self.store,
            self.reserve,
            self.sip,
            self.sip_per_ip,
            self.api,
            self.api_per_ip
        )
    }
}

/// The `nofile` limits (soft, hard).
pub fn nofile() -> std::io::Result<(u64, u64)> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((l.rlim_cur, l.rlim_max))
}

/// Raises the soft `nofile` limit to the hard one; returns (soft before, soft now).
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let (soft, hard) = nofile()?;
    if soft >= hard {
        return Ok((soft, soft));
    }
    let l = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((soft, hard))
}

/// Descriptors the process has open now (Linux; `None` elsewhere).
pub fn open_descriptors() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count().saturating_sub(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    #[test]
    fn the_limit_is_shared_with_a_reserve() {
        let c = cfg("");
        let b = Budget::plan(4096, &c, (40000, 40199)).unwrap();
        assert_eq!(b.relay, 200 + RELAY_OVERHEAD);
        assert_eq!(b.reserve, 128);
        let left = 4096 - b.relay - STORE - 128;
        assert_eq!((b.sip + b.api) as u64, left);
        assert_eq!(b.api as u64, left / 4);
        assert!(b.sip_per_ip * 10 < b.sip, "one source cannot take a tenth");
        assert!(b.api_per_ip * 10 < b.api);
        assert!(b.to_string().contains("reserve 128"), "{b}");
        // A large limit keeps a larger reserve.
        let b = Budget::plan(1 << 20, &c, (20000, 29999)).unwrap();
        assert_eq!(b.reserve, (1 << 20) / 32);
    }

    #[test]
    fn a_media_range_that_does_not_fit_refuses_the_start() {
        let c = cfg("");
        let e = Budget::plan(4096, &c, (20000, 29999)).unwrap_err();
        assert_eq!(e.key, "media.ports");
        assert!(e.reason.contains("10016"), "{e}");
    }

    #[test]
    fn explicit_caps_must_fit() {
        let c = cfg("[sip]\nmax_connections = 1000\nmax_connections_per_ip = 10\n[api]\nmax_connections = 200\n");
        let b = Budget::plan(4096, &c, (40000, 40199)).unwrap();
        assert_eq!(
            (b.sip, b.sip_per_ip, b.api, b.api_per_ip),
            (1000, 10, 200, 12)
        );
        let c = cfg("[sip]\nmax_connections = 5000\n");
        let e = Budget::plan(4096, &c, (40000, 40199)).unwrap_err();
        assert_eq!(e.key, "sip.max_connections");
        // One explicit, the other gets what is left.
        let c = cfg("[api]\nmax_connections = 100\n");
        let b = Budget::plan(4096, &c, (40000, 40199)).unwrap();
        assert_eq!(b.api, 100);
        assert_eq!(b.sip as u64, 4096 - b.relay - STORE - b.reserve - 100);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let (before, now) = raise_nofile().unwrap();
        let (soft, hard) = nofile().unwrap();
        assert!(now >= before);
        assert_eq!((soft, now), (hard, hard));
    }
}
