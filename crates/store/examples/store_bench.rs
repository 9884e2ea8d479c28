//! Throughput of the SQLite store on the operations of the call path.
//!
//! Method: a fresh database file in the system temp directory (WAL, `synchronous=NORMAL`, as
//! in production), 10 000 users with one device each and 20 000 calls (then 10 000 more
//! live, for the admission under load). Each operation is run
//! `n` times in a loop on one thread on the SQLite backend itself (`BlockingStore`, without the store
//! threads' hand-over) and timed with
//! `Instant`; the table shows the mean per operation and operations per second. Writes are one
//! transaction each (autocommit), as the registrar and the call logic issue them.
//!
//! Run: `cargo run --release -p store --example store_bench`

use std::time::Instant;

use store::{
    Binding, BlockingStore, CallFilter, CallRecord, OutboxEntry, Provisioning, TimelineEntry,
    TypeId, User,
};

const ACCT: &str = "acct_01h2xcejqtf2nbrexx3vqjhp41";
const REALM: &str = "dialbridge.test";
const USERS: usize = 10_000;
const CALLS: usize = 20_000;
/// Live calls of the account when admission is measured under load.
const LIVE: usize = 10_000;

fn provisioning() -> Result<Provisioning, Box<dyn std::error::Error>> {
    Ok(toml::from_str(
        r#"
[[accounts]]
id = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Acme"
region = "US"
api_keys = [{ key = "ak_bench", secret = "sk_bench_0123456789abcdef" }]
webhook_secret = "whsec_bench"
"#,
    )?)
}

fn measure(name: &str, n: usize, mut op: impl FnMut(usize)) {
    let start = Instant::now();
    for i in 0..n {
        op(i);
    }
    let elapsed = start.elapsed();
    let per = elapsed.as_secs_f64() / n as f64;
    println!(
        "{name:<44} {n:>7} ops  {:>9.1} µs/op  {:>10.0} ops/s",
        per * 1e6,
        1.0 / per
    );
}

/// A new call's admission writes: its record (in `status`) and its first timeline entry.
fn admission(id: &str, at_ms: i64, status: store::CallStatus) -> [store::CallWrite; 2] {
    let mut c = CallRecord::new(id.to_owned(), ACCT.into(), "+14155550100".into(), at_ms);
    c.status = status;
    [
        store::CallWrite::NewCall(c),
        store::CallWrite::Timeline {
            call_id: id.to_owned(),
            entry: TimelineEntry {
                at_ms,
                kind: "api.request".into(),
                leg: None,
                detail: serde_json::json!({}).into(),
            },
        },
    ]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("dialbridge-store-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}", dir.join("bench.db").display());
    let store = store::SqliteStore::open(&url)?;
    store.apply_provisioning(&provisioning()?, REALM)?;

    let user_ids: Vec<String> = (0..USERS)
        .map(|_| TypeId::new("user").to_string())
        .collect();
    measure("create_user", USERS, |i| {
        let user = User {
            id: user_ids[i].clone(),
            account_id: ACCT.into(),
            name: format!("Agent {i}"),
            extension: Some(format!("{}", 10_000 + i)),
            agent_id: Some(i as i64 + 1),
        };
        store.create_user(&user).ok();
    });
    measure("create_device (2 HA1 + insert)", USERS, |i| {
        store
            .create_device(&user_ids[i], &format!("dev-{i}"), &"pw".into(), REALM)
            .ok();
    });
    measure("device_by_username", 100_000, |i| {
        let _ = store.device_by_username(&format!("dev-{}", (i * 7919) % USERS));
    });
    measure("user_by_extension", 100_000, |i| {
        let _ = store.user_by_extension(ACCT, &format!("{}", 10_000 + (i * 7919) % USERS));
    });
    measure("account_by_api_secret (HMAC + lookup)", 100_000, |_| {
        let _ = store.account_by_api_secret("sk_bench_0123456789abcdef");
    });
    let now = 1_700_000_000;
    measure("upsert_binding", 20_000, |i| {
        let u = i % USERS;
        let b = Binding {
            device_username: format!("dev-{u}"),
            user_id: user_ids[u].clone(),
            contact: format!("sip:dev-{u}@10.0.{}.{}:5060", i / 256 % 256, i % 256),
            source: "10.0.0.1:5060".into(),
            transport: "udp".into(),
            local: "127.0.0.1:5060".into(),
            expires_at: now + (i % 3600) as i64,
            q: None,
            call_id: format!("reg-{i}"),
            cseq: i as u32,
            instance: None,
            reg_id: None,
            user_agent: Some("bench".into()),
            updated_at: now,
            path: Vec::new(),
        };
        store.upsert_binding(&b).ok();
    });
    // A registrar's refreshes: each changes a binding's expiry, Call-ID, CSeq, source and
    // time, waits in memory and is written at the next flush, 2,000 to a flush (measured
    // per refresh, the flush's share included).
    const PER_FLUSH: usize = 2_000;
    let mut b = store
        .bindings_for_device("dev-1", now)?
        .into_iter()
        .next()
        .expect("dev-1 has a binding");
    measure("refresh_binding + flush, 2 000 a flush", 40_000, |i| {
        let u = i % PER_FLUSH;
        b.device_username = format!("dev-{u}");
        b.contact = format!("sip:dev-{u}@10.0.{}.{}:5060", u / 256 % 256, u % 256);
        b.expires_at = now + 3600 + i as i64;
        b.call_id = format!("reg-{u}");
        b.cseq = 100 + i as u32;
        store.refresh_binding(&b).ok();
        if u + 1 == PER_FLUSH {
            store.flush_refreshes().ok();
        }
    });
    measure("bindings_for_user", 100_000, |i| {
        let _ = store.bindings_for_user(&user_ids[(i * 7919) % USERS], now);
    });
    let t0 = 1_700_000_000_000i64;
    let call_ids: Vec<String> = (0..CALLS)
        .map(|_| TypeId::new("call").to_string())
        .collect();
    measure("insert_call", CALLS, |i| {
        let mut c = CallRecord::new(
            call_ids[i].clone(),
            ACCT.into(),
            "+14155550100".into(),
            t0 + i as i64,
        );
        c.user_id = Some(user_ids[i % USERS].clone());
        c.metadata = serde_json::json!({"crm": i});
        store.insert_call(&c).ok();
    });
    measure("append_timeline", CALLS, |i| {
        let e = TimelineEntry {
            at_ms: t0 + i as i64,
            kind: "sip.response".into(),
            leg: Some("agent".into()),
            detail: serde_json::json!({"status": 180}).into(),
        };
        store.append_timeline(&call_ids[i], &e).ok();
    });
    measure("update_call", CALLS, |i| {
        if let Ok(Some(mut c)) = store.get_call(ACCT, &call_ids[i]) {
            c.status = store::CallStatus::Completed;
            store.update_call(&c).ok();
        }
    });
    // Admission of a click-to-call (the REST path): the record and its first timeline entry
    // in one transaction, the account's limits checked in it, with the 20 000 calls above
    // in the log. The admitted calls end at once (as most of a busy log has).
    let limits = store::AccountLimits {
        calls_per_second: 100_000.0,
        burst: 1_000_000,
        max_concurrent: 1_000_000,
    };
    let admit_ids: Vec<String> = (0..CALLS)
        .map(|_| TypeId::new("call").to_string())
        .collect();
    let batch_ids: Vec<String> = (0..CALLS)
        .map(|_| TypeId::new("call").to_string())
        .collect();
    // The same writes without the limits: what admission adds is the difference.
    measure("write_call_batch (record + entry)", 5_000, |i| {
        let writes = admission(&batch_ids[i], t0 + i as i64, store::CallStatus::Completed);
        store.write_call_batch(&writes).ok();
    });
    measure("admit_call (record + entry, limits)", 5_000, |i| {
        let writes = admission(&admit_ids[i], t0 + i as i64, store::CallStatus::Completed);
        store.admit_call(&writes, &limits, t0 + i as i64).ok();
    });
    // Admissions inside the call event journal's batch (its path on SQLite), each under a
    // savepoint: alone, and five to a batch (the figure is per batch).
    let alone_ids: Vec<String> = (0..5_000)
        .map(|_| TypeId::new("call").to_string())
        .collect();
    measure("admissions in a batch, 1 a batch", 5_000, |i| {
        let req = store::AdmitRequest {
            writes: admission(&alone_ids[i], t0 + i as i64, store::CallStatus::Completed).to_vec(),
            limits,
            now_ms: t0 + i as i64,
        };
        store.write_call_batch_admitting(&[req], &[]).ok();
    });
    let five_ids: Vec<String> = (0..5_000)
        .map(|_| TypeId::new("call").to_string())
        .collect();
    measure("admissions in a batch, 5 a batch (per batch)", 1_000, |i| {
        let reqs: Vec<store::AdmitRequest> = (0..5)
            .map(|k| store::AdmitRequest {
                writes: admission(
                    &five_ids[i * 5 + k],
                    t0 + i as i64,
                    store::CallStatus::Completed,
                )
                .to_vec(),
                limits,
                now_ms: t0 + i as i64,
            })
            .collect();
        store.write_call_batch_admitting(&reqs, &[]).ok();
    });
    // The same admission with 10 000 of the account's calls live (long calls at a high
    // rate), each admitted call then ended (its status leaves the live set).
    let live_ids: Vec<String> = (0..LIVE).map(|_| TypeId::new("call").to_string()).collect();
    for chunk in live_ids.chunks(500) {
        let writes: Vec<store::CallWrite> = chunk
            .iter()
            .map(|id| {
                let mut c = CallRecord::new(id.clone(), ACCT.into(), "+14155550100".into(), t0);
                c.status = store::CallStatus::InProgress;
                store::CallWrite::NewCall(c)
            })
            .collect();
        store.write_call_batch(&writes)?;
    }
    let busy_ids: Vec<String> = (0..5_000)
        .map(|_| TypeId::new("call").to_string())
        .collect();
    measure("admit_call, 10 000 live calls", 5_000, |i| {
        let writes = admission(&busy_ids[i], t0 + i as i64, store::CallStatus::Queued);
        store.admit_call(&writes, &limits, t0 + i as i64).ok();
    });
    // Five live calls' records in a batch (as the journal writes them), spread over the
    // live calls, their status as stored (a leg ringing or answered changes only the legs).
    measure("write_call_batch (5 live, same status)", 2_000, |i| {
        let writes: Vec<store::CallWrite> = (0..5)
            .map(|k| {
                let mut c = CallRecord::new(
                    live_ids[(i * 7 + k * 1_999) % LIVE].clone(),
                    ACCT.into(),
                    "+14155550100".into(),
                    t0,
                );
                c.status = store::CallStatus::InProgress;
                c.sip_code = Some(180 + (i % 20) as u16);
                store::CallWrite::Call(c)
            })
            .collect();
        store.write_call_batch(&writes).ok();
    });
    measure("write_call_batch (a live call ends)", 5_000, |i| {
        let mut c = CallRecord::new(
            busy_ids[i].clone(),
            ACCT.into(),
            "+14155550100".into(),
            t0 + i as i64,
        );
        c.status = store::CallStatus::Completed;
        store.write_call_batch(&[store::CallWrite::Call(c)]).ok();
    });
    measure("list_calls first page (limit 50)", 2_000, |_| {
        let _ = store.list_calls(&CallFilter::new(ACCT, 50));
    });
    let mut deep = CallFilter::new(ACCT, 50);
    deep.cursor = {
        let mut f = CallFilter::new(ACCT, 1000);
        let mut cursor = None;
        for _ in 0..15 {
            f.cursor = cursor;
            cursor = store.list_calls(&f)?.1;
        }
        cursor
    };
    measure("list_calls page after 15 000 (limit 50)", 2_000, |_| {
        let _ = store.list_calls(&deep);
    });
    measure("enqueue_callback", CALLS, |i| {
        let e = OutboxEntry::new(
            format!("evt_{i}"),
            call_ids[i].clone(),
            ACCT.into(),
            1,
            "http://127.0.0.1:9/cb".into(),
            "{}".into(),
            t0 + i as i64,
        );
        store.enqueue_callback(&e).ok();
    });
    measure("due_callbacks (limit 100, 20 000 pending)", 2_000, |_| {
        let _ = store.due_callbacks(t0 + CALLS as i64, 100);
    });
    // Both read the whole bindings table (20,000 rows): no index on the expiry.
    measure("sweep_expired (nothing to sweep)", 200, |_| {
        let _ = store.sweep_expired(now - 1);
    });
    measure("count_bindings", 200, |_| {
        let _ = store.count_bindings(now);
    });
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
