//! OPTIONS health checks (`[[trunks]] options_interval_secs`): every interval, one OPTIONS
//! to each target of each checked trunk. Any final response but `503` counts as an answer;
//! no response within the interval (at most 5 s), a transport error or a `503` as a failure.
//! [`super::health`] turns them into up and down.

use std::sync::{Arc, Weak};
use std::time::Duration;

use sip_core::endpoint::{new_tag, ClientEvent, Destination, Endpoint};
use sip_core::message::{HeaderName, Host, Method, Request, SipUri, Uri};
use tokio::time::Instant;

use super::{Answer, Trunks};

/// How often the checks that are due are started.
const TICK: Duration = Duration::from_millis(250);
/// How often the list of trunks is read again from the store (trunks added or changed
/// through the API are checked from then on).
const RELIST: Duration = Duration::from_secs(2);

/// Starts the checks; they stop when the [`Trunks`] is dropped.
pub fn spawn(
    trunks: Weak<Trunks>,
    endpoint: Endpoint,
    domain: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut list: Vec<store::Trunk> = Vec::new();
        let mut listed_at: Option<Instant> = None;
        loop {
            tick.tick().await;
            let Some(t) = trunks.upgrade() else { return };
            let now = Instant::now();
            if listed_at.is_none_or(|at| now.saturating_duration_since(at) >= RELIST) {
                match t.store.list_trunks().await {
                    Ok(l) => {
                        list = l;
                        listed_at = Some(now);
                    }
                    Err(e) => tracing::debug!(error = %e, "trunk checks: store not readable"),
                }
            }
            for trunk in list.iter().cloned() {
                let secs = trunk.routing.options_interval_secs;
                if secs == 0 {
                    continue;
                }
                let rt = t.runtime(&trunk.name);
                {
                    let Ok(mut next) = rt.next_check.lock() else {
                        continue;
                    };
                    if next.is_some_and(|n| n > now) {
                        continue;
                    }
                    *next = Some(now + Duration::from_secs(u64::from(secs)));
                }
                let t = Arc::clone(&t);
                let endpoint = endpoint.clone();
                let domain = domain.clone();
                tokio::spawn(async move { check_trunk(t, endpoint, domain, trunk).await });
            }
        }
    })
}

async fn check_trunk(t: Arc<Trunks>, endpoint: Endpoint, domain: String, trunk: store::Trunk) {
    let res = match t.resolution(&trunk).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(trunk = %trunk.name, error = %e, "trunk checks: not resolved");
            return;
        }
    };
    let wait = Duration::from_secs(u64::from(trunk.routing.options_interval_secs.clamp(1, 5)));
    let host = match res.uri_host.parse::<std::net::IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Domain(bytes::Bytes::from(res.uri_host.clone())),
    };
    let uri = Uri::Sip(SipUri::new(None, host, res.uri_port));
    let checks = res.all_addrs().into_iter().map(|addr| {
        let dest = Destination {
            transport: res.transport,
            addr,
            conn: None,
        };
        let req = options(&uri, &domain);
        let endpoint = endpoint.clone();
        async move { (addr, check_target(&endpoint, req, dest, wait).await) }
    });
    for (addr, result) in futures_join(checks).await {
        t.checked(&trunk, addr, result);
    }
}

/// Runs the checks side by side.
async fn futures_join<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

fn options(uri: &Uri, domain: &str) -> Request {
    let mut r = Request::new(Method::Options, uri.clone());
    r.headers.add(
        HeaderName::From,
        format!("<sip:dialbridge@{domain}>;tag={}", new_tag()),
    );
    r.headers.add(HeaderName::To, format!("<{uri}>"));
    r.headers
        .add(HeaderName::CallId, format!("{}@{domain}", new_tag()));
    r.headers.add(HeaderName::CSeq, "1 OPTIONS");
    r.headers.add(HeaderName::Accept, "application/sdp");
    r
}

/// One OPTIONS: `Ok((code, rtt))` for a final response, else why not.
async fn check_target(
    endpoint: &Endpoint,
    req: Request,
    dest: Destination,
    wait: Duration,
) -> Result<(u16, Duration), Answer> {
    let sent = Instant::now();
    let mut ct = endpoint
        .send_request(req, Some(dest))
        .await
        .map_err(|_| Answer::TransportError)?;
    let got = tokio::time::timeout(wait, async {
        while let Some(ev) = ct.next().await {
            match ev {
                ClientEvent::Response(r) if r.status >= 200 => return Ok(r.status),
                ClientEvent::Response(_) => {}
                ClientEvent::Timeout => return Err(Answer::Timeout),
                ClientEvent::TransportError => return Err(Answer::TransportError),
            }
        }
        Err(Answer::TransportError)
    })
    .await
    .map_err(|_| Answer::Timeout)??;
    Ok((got, sent.elapsed()))
}
