//! RFC 3263 §4 (locating a SIP server) for a trunk's `address`, and the RFC 2782 order of
//! SRV records.
//!
//! - An IP literal (with or without a port) is used as it is (port 5060 when absent, 5061
//!   for TLS).
//! - A domain with a port: A/AAAA of the domain (§4.2).
//! - A domain without a port: NAPTR of the domain (§4.1), keeping the records whose service is
//!   the trunk's transport (`SIP+D2U` for UDP, `SIP+D2T` for TCP, `SIPS+D2T` for TLS) with
//!   the `s` flag, in order/preference; then SRV of each replacement (§4.2). Without a
//!   usable NAPTR: SRV of `_sip._udp.<domain>` / `_sip._tcp.<domain>` /
//!   `_sips._tcp.<domain>`. Without SRV either: A/AAAA of the domain, port 5060 (5061).
//! - Each SRV target is looked up for A/AAAA; every address of it is a target.
//!
//! What DNS says is kept for the records' TTL ([`Resolution::valid_until`], the shortest TTL
//! met on the way). The order of SRV records of the same priority is drawn at each call
//! ([`Resolution::ordered`], RFC 2782's weighted selection), so that the weights spread calls.
//!
//! The DNS client is hickory-resolver (see `docs/ARCHITECTURE.md`): `[dns] servers` replaces
//! the system resolver.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};
use rand::seq::SliceRandom;
use rand::Rng;
use sip_core::transport::Transport;
use tokio::time::Instant;

/// Why a trunk address could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("address {0:?} is not host, host:port or an IP address")]
    BadAddress(String),
    #[error("DNS lookup of {name} failed: {source}")]
    Lookup {
        name: String,
        #[source]
        source: ResolveError,
    },
    #[error("{0} has no address")]
    NoAddress(String),
    #[error("cannot read the system resolver configuration: {0}")]
    SystemConfig(#[source] ResolveError),
}

/// One SRV record (or the single pseudo-record of an A/AAAA lookup) with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub priority: u16,
    pub weight: u16,
    /// The SRV target host (or the trunk's host), for the logs.
    pub host: String,
    /// Its addresses, in the order DNS gave them.
    pub addrs: Vec<SocketAddr>,
}

/// The port of a target given without one (RFC 3261 §19.1.2).
fn default_port(transport: Transport) -> u16 {
    if transport == Transport::Tls {
        5061
    } else {
        5060
    }
}

/// What DNS said about one trunk address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub transport: Transport,
    /// The host for the Request-URI (the trunk's domain, or the IP literal).
    pub uri_host: String,
    /// The port for the Request-URI: `Some` when the address had one.
    pub uri_port: Option<u16>,
    pub targets: Vec<SrvTarget>,
    /// When this stops being valid (the shortest TTL of the records used).
    pub valid_until: Instant,
    /// How it was found, for the logs: `ip`, `a`, `srv`, `naptr`.
    pub via: &'static str,
}

impl Resolution {
    /// The addresses in the order calls try them: SRV priority (lower first), within a
    /// priority RFC 2782's weighted random order, then each target's addresses.
    pub fn ordered(&self, rng: &mut impl Rng) -> Vec<SocketAddr> {
        order_srv(&self.targets, rng)
            .into_iter()
            .flat_map(|t| t.addrs.iter().copied())
            .collect()
    }

    /// Every address, in a stable order (for health checks and the API).
    pub fn all_addrs(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for t in &self.targets {
            for a in &t.addrs {
                if !out.contains(a) {
                    out.push(*a);
                }
            }
        }
        out
    }
}

/// RFC 2782 "Usage rules": by priority, and within a priority the weighted random selection
/// — zero-weight records first, a running sum over the rest, a uniform number in
/// `0..=sum`, the first record whose running sum reaches it is next; repeat with the rest.
pub fn order_srv<'a>(targets: &'a [SrvTarget], rng: &mut impl Rng) -> Vec<&'a SrvTarget> {
    let mut prios: Vec<u16> = targets.iter().map(|t| t.priority).collect();
    prios.sort_unstable();
    prios.dedup();
    let mut out = Vec::with_capacity(targets.len());
    for p in prios {
        // "In any order, except that all those with weight 0 are placed at the beginning":
        // shuffled, so that equal records (all zero, say) share the calls too.
        let mut group: Vec<&SrvTarget> = targets.iter().filter(|t| t.priority == p).collect();
        group.shuffle(rng);
        group.sort_by_key(|t| t.weight != 0);
        while !group.is_empty() {
            let sum: u32 = group.iter().map(|t| u32::from(t.weight)).sum();
            let pick = rng.gen_range(0..=sum);
            let mut running = 0u32;
            let mut chosen = group.len() - 1;
            for (i, t) in group.iter().enumerate() {
                running += u32::from(t.weight);
                if running >= pick {
                    chosen = i;
                    break;
                }
            }
            out.push(group.remove(chosen));
        }
    }
    out
}

/// The parts of a trunk address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrunkAddress {
    Ip(IpAddr, Option<u16>),
    Domain(String, Option<u16>),
}

impl TrunkAddress {
    pub fn parse(address: &str) -> Option<TrunkAddress> {
        let address = address.trim();
        if let Ok(sa) = address.parse::<SocketAddr>() {
            return Some(TrunkAddress::Ip(sa.ip(), Some(sa.port())));
        }
        if let Ok(ip) = address.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Some(TrunkAddress::Ip(ip, None));
        }
        let (host, port) = match address.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().ok()?)),
            None => (address, None),
        };
        let host = host.trim_end_matches('.');
        let ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        ok.then(|| TrunkAddress::Domain(host.to_ascii_lowercase(), port))
    }
}

/// The DNS client.
pub struct Dns {
    resolver: TokioResolver,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns").finish_non_exhaustive()
    }
}

/// Shortest TTL a result is kept for, so that a zero TTL does not mean a lookup per call
/// while calls arrive by the hundred.
const MIN_KEEP: Duration = Duration::from_secs(1);

impl Dns {
    /// The system resolver (`/etc/resolv.conf`) when `servers` is empty, else those servers
    /// (UDP, falling back to TCP for truncated answers).
    pub fn new(servers: &[SocketAddr]) -> Result<Dns, DnsError> {
        let provider = TokioConnectionProvider::default();
        let mut builder = if servers.is_empty() {
            TokioResolver::builder(provider).map_err(DnsError::SystemConfig)?
        } else {
            let mut cfg = ResolverConfig::new();
            for s in servers {
                cfg.add_name_server(NameServerConfig::new(*s, Protocol::Udp));
                cfg.add_name_server(NameServerConfig::new(*s, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(cfg, provider)
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        Ok(Dns {
            resolver: builder.build(),
        })
    }

    /// RFC 3263 §4 for one trunk address (see the module doc).
    pub async fn resolve(
        &self,
        address: &str,
        transport: Transport,
    ) -> Result<Resolution, DnsError> {
        let now = Instant::now();
        let parsed =
            TrunkAddress::parse(address).ok_or_else(|| DnsError::BadAddress(address.into()))?;
        let far = now + Duration::from_secs(24 * 3600);
        match parsed {
            TrunkAddress::Ip(ip, port) => Ok(Resolution {
                transport,
                uri_host: ip.to_string(),
                uri_port: port,
                targets: vec![SrvTarget {
                    priority: 0,
                    weight: 0,
                    host: ip.to_string(),
                    addrs: vec![SocketAddr::new(ip, port.unwrap_or(default_port(transport)))],
                }],
                valid_until: far,
                via: "ip",
            }),
            TrunkAddress::Domain(host, Some(port)) => {
                let (addrs, until) = self.addresses(&host, port).await?;
                Ok(Resolution {
                    transport,
                    uri_host: host.clone(),
                    uri_port: Some(port),
                    targets: vec![SrvTarget {
                        priority: 0,
                        weight: 0,
                        host,
                        addrs,
                    }],
                    valid_until: until.max(now + MIN_KEEP),
                    via: "a",
                })
            }
            TrunkAddress::Domain(host, None) => self.naptr_srv(host, transport, now).await,
        }
    }

    async fn naptr_srv(
        &self,
        host: String,
        transport: Transport,
        now: Instant,
    ) -> Result<Resolution, DnsError> {
        let service: &[u8] = match transport {
            Transport::Udp => b"SIP+D2U",
            Transport::Tcp => b"SIP+D2T",
            Transport::Tls => b"SIPS+D2T",
            Transport::Ws => b"SIP+D2W",
            Transport::Wss => b"SIPS+D2W",
        };
        let mut until = now + Duration::from_secs(24 * 3600);
        // NAPTR (§4.1).
        let mut srv_names: Vec<String> = Vec::new();
        match self.resolver.lookup(fqdn(&host), RecordType::NAPTR).await {
            Ok(l) => {
                until = until.min(tokio_instant(l.valid_until()));
                let mut recs: Vec<_> = l
                    .iter()
                    .filter_map(|r| match r {
                        RData::NAPTR(n) => Some(n),
                        _ => None,
                    })
                    .filter(|n| {
                        n.flags().eq_ignore_ascii_case(b"s")
                            && n.services().eq_ignore_ascii_case(service)
                    })
                    .collect();
                recs.sort_by_key(|n| (n.order(), n.preference()));
                srv_names = recs.iter().map(|n| n.replacement().to_string()).collect();
            }
            Err(e) if e.is_no_records_found() => {}
            Err(source) => {
                return Err(DnsError::Lookup {
                    name: host.clone(),
                    source,
                })
            }
        }
        let via = if srv_names.is_empty() {
            srv_names.push(match transport {
                Transport::Udp => format!("_sip._udp.{host}"),
                Transport::Tcp => format!("_sip._tcp.{host}"),
                Transport::Tls | Transport::Wss => format!("_sips._tcp.{host}"),
                Transport::Ws => format!("_sip._tcp.{host}"),
            });
            "srv"
        } else {
            "naptr"
        };
        // SRV (§4.2).
        let mut targets = Vec::new();
        for name in &srv_names {
            let srv = match self.resolver.srv_lookup(fqdn(name)).await {
                Ok(s) => s,
                Err(e) if e.is_no_records_found() => continue,
                Err(source) => {
                    return Err(DnsError::Lookup {
                        name: name.clone(),
                        source,
                    })
                }
            };
            until = until.min(tokio_instant(srv.as_lookup().valid_until()));
            for r in srv.iter() {
                let target = r.target().to_string();
                if target == "." {
                    continue; // "service not available at this domain" (RFC 2782)
                }
                // A target that does not resolve is skipped; the others still serve.
                match self.addresses(target.trim_end_matches('.'), r.port()).await {
                    Ok((addrs, t)) => {
                        until = until.min(t);
                        targets.push(SrvTarget {
                            priority: r.priority(),
                            weight: r.weight(),
                            host: target.trim_end_matches('.').to_owned(),
                            addrs,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(srv = %name, target = %target, error = %e, "SRV target has no address")
                    }
                }
            }
            if !targets.is_empty() {
                break; // the first NAPTR record that leads somewhere is used (§4.1)
            }
        }
        if targets.is_empty() {
            // No SRV: A/AAAA of the domain, port 5060 (5061 for TLS).
            let (addrs, t) = self.addresses(&host, default_port(transport)).await?;
            return Ok(Resolution {
                transport,
                uri_host: host.clone(),
                uri_port: None,
                targets: vec![SrvTarget {
                    priority: 0,
                    weight: 0,
                    host,
                    addrs,
                }],
                valid_until: t.max(now + MIN_KEEP),
                via: "a",
            });
        }
        Ok(Resolution {
            transport,
            uri_host: host,
            uri_port: None,
            targets,
            valid_until: until.max(now + MIN_KEEP),
            via,
        })
    }

    /// A/AAAA of `host` (an IP literal as it is).
    async fn addresses(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(Vec<SocketAddr>, Instant), DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok((
                vec![SocketAddr::new(ip, port)],
                Instant::now() + Duration::from_secs(24 * 3600),
            ));
        }
        let l = self
            .resolver
            .lookup_ip(fqdn(host))
            .await
            .map_err(|source| DnsError::Lookup {
                name: host.to_owned(),
                source,
            })?;
        let addrs: Vec<SocketAddr> = l.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(DnsError::NoAddress(host.to_owned()));
        }
        Ok((addrs, tokio_instant(l.valid_until())))
    }
}

/// A name with its final dot, so that no search domain is tried.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

fn tokio_instant(t: std::time::Instant) -> Instant {
    Instant::now() + t.saturating_duration_since(std::time::Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn srv(priority: u16, weight: u16, port: u16) -> SrvTarget {
        SrvTarget {
            priority,
            weight,
            host: format!("edge{port}"),
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], port))],
        }
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            TrunkAddress::parse("127.0.0.1:5080"),
            Some(TrunkAddress::Ip([127, 0, 0, 1].into(), Some(5080)))
        );
        assert_eq!(
            TrunkAddress::parse("[::1]:5090"),
            Some(TrunkAddress::Ip("::1".parse().unwrap(), Some(5090)))
        );
        assert_eq!(
            TrunkAddress::parse("::1"),
            Some(TrunkAddress::Ip("::1".parse().unwrap(), None))
        );
        assert_eq!(
            TrunkAddress::parse("Carrier.Test"),
            Some(TrunkAddress::Domain("carrier.test".into(), None))
        );
        assert_eq!(
            TrunkAddress::parse("sip.carrier.test:5070"),
            Some(TrunkAddress::Domain("sip.carrier.test".into(), Some(5070)))
        );
        assert_eq!(TrunkAddress::parse("bad host"), None);
        assert_eq!(TrunkAddress::parse("host:99999"), None);
    }

    #[test]
    fn priority_first_then_weights() {
        let targets = [srv(20, 0, 3), srv(10, 10, 1), srv(10, 90, 2), srv(30, 5, 4)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut first = [0u32; 5];
        for _ in 0..10_000 {
            let order: Vec<u16> = order_srv(&targets, &mut rng)
                .iter()
                .map(|t| t.addrs[0].port())
                .collect();
            // Priority 10 before 20 before 30, always.
            assert_eq!(&order[2..], &[3, 4]);
            first[usize::from(order[0])] += 1;
        }
        // Weights 10:90 within priority 10: the heavy one first about 90 % of the time.
        let heavy = f64::from(first[2]) / 10_000.0;
        assert!((0.87..0.93).contains(&heavy), "heavy first {heavy}");
    }

    #[test]
    fn zero_weights_rarely_first_and_all_kept() {
        let targets = [srv(1, 0, 1), srv(1, 0, 2), srv(1, 50, 3)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut zero_first = 0;
        for _ in 0..5_000 {
            let order = order_srv(&targets, &mut rng);
            assert_eq!(order.len(), 3);
            if order[0].weight == 0 {
                zero_first += 1;
            }
        }
        // Only when the draw is exactly 0 out of 0..=50: about 2 %.
        assert!(zero_first < 250, "{zero_first}");
        // All zero: every order is possible, nothing is lost.
        let zeros = [srv(1, 0, 1), srv(1, 0, 2)];
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let o: Vec<u16> = order_srv(&zeros, &mut rng)
                .iter()
                .map(|t| t.addrs[0].port())
                .collect();
            seen.insert(o);
        }
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn ordered_flattens_addresses() {
        let mut a = srv(10, 1, 1);
        a.addrs.push(SocketAddr::from(([127, 0, 0, 2], 1)));
        let r = Resolution {
            transport: Transport::Udp,
            uri_host: "carrier.test".into(),
            uri_port: None,
            targets: vec![srv(20, 1, 9), a],
            valid_until: Instant::now(),
            via: "srv",
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let ports: Vec<String> = r.ordered(&mut rng).iter().map(|a| a.to_string()).collect();
        assert_eq!(ports, ["127.0.0.1:1", "127.0.0.2:1", "127.0.0.1:9"]);
        assert_eq!(r.all_addrs().len(), 3);
    }
}
