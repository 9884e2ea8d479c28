use serde_json::json;
use store::{
    AccountLimits, Admission, AdmitRequest, BlockingStore, CallFilter, CallRecord, CallStatus,
    SqliteStore, Store, StoreError, TimelineEntry,
};

use crate::support::{provisioned, store_provisioned, stores_on_one_database, ACCT, USER};

const OTHER: &str = "acct_01h2xcejqtf2nbrexx3vqjhp50";
const T0: i64 = 1_700_000_000_000;

fn call(n: i64, created_at_ms: i64) -> CallRecord {
    let mut c = CallRecord::new(
        format!("call_01h2xcejqtf2nbrexx3vq{n:06}"),
        ACCT.into(),
        format!("+1415555{n:04}"),
        created_at_ms,
    );
    c.user_id = Some(USER.into());
    c
}

/// 25 calls of ACCT at distinct times, plus 3 sharing one millisecond (straddling the first
/// page boundary at 12 per page), plus one of OTHER.
async fn seed(store: &dyn Store) -> Vec<CallRecord> {
    let mut all = Vec::new();
    for n in 0..25 {
        let mut c = call(n, T0 + n * 1000);
        if n % 5 == 0 {
            c.status = CallStatus::Completed;
        }
        store.insert_call(&c).await.unwrap();
        all.push(c);
    }
    for n in 100..103 {
        let c = call(n, T0 + 14_500);
        store.insert_call(&c).await.unwrap();
        all.push(c);
    }
    let mut foreign = call(999, T0 + 50_000);
    foreign.account_id = OTHER.into();
    store.insert_call(&foreign).await.unwrap();
    all.sort_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));
    all
}

async fn pages_are_newest_first_and_cover_everything_once() {
    let (_db, store) = store_provisioned().await;
    let expected = seed(&*store).await;
    let mut filter = CallFilter::new(ACCT, 12);
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (page, next) = store.list_calls(&filter).await.unwrap();
        assert!(page.len() <= 12);
        seen.extend(page);
        pages += 1;
        match next {
            Some(cursor) => filter.cursor = Some(cursor),
            None => break,
        }
        assert!(pages < 10, "pagination does not terminate");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, expected);
}

async fn an_exact_last_page_has_no_next_cursor() {
    let (_db, store) = store_provisioned().await;
    for n in 0..4 {
        store.insert_call(&call(n, T0 + n)).await.unwrap();
    }
    let (page, next) = store.list_calls(&CallFilter::new(ACCT, 4)).await.unwrap();
    assert_eq!(page.len(), 4);
    assert_eq!(next, None);
    let (page, next) = store.list_calls(&CallFilter::new(ACCT, 3)).await.unwrap();
    assert_eq!(page.len(), 3);
    let mut f = CallFilter::new(ACCT, 3);
    f.cursor = next;
    let (page, next) = store.list_calls(&f).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].created_at_ms, T0);
    assert_eq!(next, None);
}

async fn filters() {
    let (_db, store) = store_provisioned().await;
    seed(&*store).await;
    let mut f = CallFilter::new(ACCT, 100);
    f.status = Some(CallStatus::Completed);
    let (page, _) = store.list_calls(&f).await.unwrap();
    assert_eq!(page.len(), 5);
    assert!(page.iter().all(|c| c.status == CallStatus::Completed));

    let mut f = CallFilter::new(ACCT, 100);
    f.since_ms = Some(T0 + 10_000);
    f.until_ms = Some(T0 + 15_000);
    let (page, _) = store.list_calls(&f).await.unwrap();
    // 10, 11, 12, 13, 14 and the three at 14.5 s.
    assert_eq!(page.len(), 8);

    let mut f = CallFilter::new(ACCT, 100);
    f.user_id = Some("user_01h2xcejqtf2nbrexx3vqjhp99".into());
    assert!(store.list_calls(&f).await.unwrap().0.is_empty());

    let (page, _) = store
        .list_calls(&CallFilter::new(OTHER, 100))
        .await
        .unwrap();
    assert_eq!(page.len(), 1);

    let mut f = CallFilter::new(ACCT, 0);
    f.cursor = Some("not-a-cursor".into());
    assert!(matches!(
        store.list_calls(&f).await,
        Err(StoreError::Invalid {
            field: "cursor",
            ..
        })
    ));
    // limit 0 is clamped to 1.
    let (page, next) = store.list_calls(&CallFilter::new(ACCT, 0)).await.unwrap();
    assert_eq!(page.len(), 1);
    assert!(next.is_some());
}

async fn update_and_get_are_scoped_to_the_account() {
    let (_db, store) = store_provisioned().await;
    let mut c = call(1, T0);
    c.metadata = json!({"crm_id": "lead-7"});
    c.request_id = Some("req-1".into());
    store.insert_call(&c).await.unwrap();
    assert!(matches!(
        store.insert_call(&c).await,
        Err(StoreError::AlreadyExists { kind: "call", .. })
    ));
    assert_eq!(store.get_call(ACCT, &c.id).await.unwrap(), Some(c.clone()));
    assert_eq!(store.get_call(OTHER, &c.id).await.unwrap(), None);
    assert_eq!(
        store.call_by_request_id(ACCT, "req-1").await.unwrap(),
        Some(c.clone())
    );

    c.status = CallStatus::InProgress;
    c.answered_at_ms = Some(T0 + 4_000);
    c.ended_at_ms = Some(T0 + 65_900);
    c.sip_code = Some(200);
    c.legs = json!({"agent": {"call_id": "a@x"}, "customer": {"call_id": "c@y"}});
    c.stats = json!({"agent": {"packets": 3000}});
    store.update_call(&c).await.unwrap();
    let got = store.get_call(ACCT, &c.id).await.unwrap().unwrap();
    assert_eq!(got, c);
    assert_eq!(got.duration_secs(), Some(61));

    let mut foreign = c.clone();
    foreign.account_id = OTHER.into();
    assert!(matches!(
        store.update_call(&foreign).await,
        Err(StoreError::NotFound { kind: "call", .. })
    ));
}

/// Admissions inside a batch of call writes (the journal's path on SQLite): each is judged
/// under the limits the admissions before it in the batch left, one refused or malformed
/// leaves nothing of itself and the rest of the batch is written, and a batch that fails as
/// a whole (its own writes, or an admission's) writes none of its admissions.
#[test]
fn admissions_in_a_batch_are_judged_in_order_and_alone() {
    let (_dir, store) = provisioned();
    let limits = AccountLimits {
        calls_per_second: 1000.0,
        burst: 1000,
        max_concurrent: 2,
    };
    let running = call(1, T0);
    store.insert_call(&running).unwrap();
    let req = |c: &CallRecord| AdmitRequest {
        writes: admission(c),
        limits,
        now_ms: T0,
    };
    let broken = AdmitRequest {
        writes: admission(&call(4, T0))[1..].to_vec(),
        limits,
        now_ms: T0,
    };
    // Call 1 is live: call 2 takes the second slot, call 3 is over the limit, the request
    // without a new call is invalid; the batch's own write (an entry of call 1) goes in.
    let entry = store::CallWrite::Timeline {
        call_id: running.id.clone(),
        entry: TimelineEntry {
            at_ms: T0 + 1,
            kind: "sip.response".into(),
            leg: Some("agent".into()),
            detail: json!({}).into(),
        },
    };
    let outcomes = store
        .write_call_batch_admitting(
            &[req(&call(2, T0)), req(&call(3, T0)), broken],
            std::slice::from_ref(&entry),
        )
        .unwrap();
    assert_eq!(outcomes.len(), 3);
    assert_eq!(outcomes[0].as_ref().unwrap(), &Admission::Admitted);
    assert_eq!(outcomes[1].as_ref().unwrap(), &Admission::Concurrency);
    assert!(
        matches!(outcomes[2], Err(StoreError::Invalid { .. })),
        "{:?}",
        outcomes[2]
    );
    assert!(store.get_call(ACCT, &call(2, T0).id).unwrap().is_some());
    assert_eq!(store.timeline(&call(2, T0).id).unwrap().len(), 1);
    assert!(store.get_call(ACCT, &call(3, T0).id).unwrap().is_none());
    assert_eq!(store.timeline(&running.id).unwrap().len(), 1);
    // A batch whose own writes fail (an entry of a call that does not exist) writes none of
    // its admissions either.
    let orphan = store::CallWrite::Timeline {
        call_id: "call_01h2xcejqtf2nbrexx3vqnope00".into(),
        entry: TimelineEntry {
            at_ms: T0,
            kind: "x".into(),
            leg: None,
            detail: json!({}).into(),
        },
    };
    let mut done = running.clone();
    done.status = CallStatus::Completed;
    done.ended_at_ms = Some(T0 + 5);
    store.update_call(&done).unwrap();
    assert!(store
        .write_call_batch_admitting(&[req(&call(5, T0))], std::slice::from_ref(&orphan))
        .is_err());
    assert!(store.get_call(ACCT, &call(5, T0).id).unwrap().is_none());
    // An admission whose own writes fail (its new call, then an entry of a call that does
    // not exist) fails the batch: the admission before it and the batch's writes are not
    // written either, and the account's live calls are as they were (the admission below
    // takes the freed slot).
    let mut failing = admission(&call(6, T0));
    failing.push(orphan);
    let roomy = |writes| AdmitRequest {
        writes,
        limits: at_most(10),
        now_ms: T0,
    };
    let before = store.timeline(&running.id).unwrap().len();
    assert!(store
        .write_call_batch_admitting(
            &[roomy(admission(&call(5, T0))), roomy(failing)],
            std::slice::from_ref(&entry)
        )
        .is_err());
    assert!(store.get_call(ACCT, &call(5, T0).id).unwrap().is_none());
    assert!(store.get_call(ACCT, &call(6, T0).id).unwrap().is_none());
    assert_eq!(store.timeline(&running.id).unwrap().len(), before);
    // The slot call 1 freed is there for the next batch.
    let outcomes = store
        .write_call_batch_admitting(&[req(&call(5, T0))], &[])
        .unwrap();
    assert_eq!(outcomes[0].as_ref().unwrap(), &Admission::Admitted);
}

#[tokio::test]
async fn timeline_keeps_time_then_insertion_order() {
    let (dir, store) = provisioned();
    let c = call(1, T0);
    store.insert_call(&c).unwrap();
    let entries = [
        (T0 + 5, "sip.invite.sent", Some("agent")),
        (T0, "api.request", None),
        (T0 + 5, "sip.invite.sent", Some("agent")),
        (T0 + 9, "sip.response", Some("agent")),
    ];
    for (i, (at, kind, leg)) in entries.iter().enumerate() {
        store
            .append_timeline(
                &c.id,
                &TimelineEntry {
                    at_ms: *at,
                    kind: (*kind).into(),
                    leg: leg.map(Into::into),
                    detail: json!({"n": i}).into(),
                },
            )
            .unwrap();
    }
    drop(store);
    let store = SqliteStore::open(&dir.url()).unwrap();
    let t = store.timeline(&c.id).unwrap();
    let order: Vec<i64> = t
        .iter()
        .map(|e| e.detail.get("n").and_then(|n| n.as_i64()).unwrap())
        .collect();
    assert_eq!(order, [1, 0, 2, 3]);
    assert_eq!(t[0].leg, None);
    assert_eq!(t[3].leg.as_deref(), Some("agent"));
    let err = store
        .append_timeline(
            "call_nope",
            &TimelineEntry {
                at_ms: T0,
                kind: "x".into(),
                leg: None,
                detail: json!(null).into(),
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { kind: "call", .. }),
        "{err:?}"
    );
}

#[test]
fn status_text_round_trips() {
    for s in CallStatus::ALL {
        assert_eq!(s.as_str().parse::<CallStatus>().unwrap(), s);
        assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
    }
    assert!("in_progress".parse::<CallStatus>().is_err());
    assert!(CallStatus::Canceled.is_final());
    assert!(!CallStatus::InProgress.is_final());
}

/// A batch of call writes is one transaction: a failing write leaves nothing of the batch,
/// and the same batch retried whole is written once.
async fn a_call_batch_is_written_whole_or_not_at_all() {
    let (_db, store) = store_provisioned().await;
    let mut c = call(1, T0);
    store.insert_call(&c).await.unwrap();
    c.status = CallStatus::Ringing;
    let entry = TimelineEntry {
        at_ms: T0 + 5,
        kind: "ringing".into(),
        leg: Some("agent".into()),
        detail: json!({"sip_code": 180}).into(),
    };
    let callback = |event: &str, seq: i64| {
        store::OutboxEntry::new(
            event.into(),
            c.id.clone(),
            ACCT.into(),
            seq,
            "http://127.0.0.1:9/cb".into(),
            "{}".into(),
            T0,
        )
    };
    let mut writes = vec![
        store::CallWrite::Timeline {
            call_id: c.id.clone(),
            entry: entry.clone(),
        },
        store::CallWrite::Call(c.clone()),
        store::CallWrite::Callback(callback("evt_1", 1)),
        // The same event id again: the last write fails, so the batch fails whole.
        store::CallWrite::Callback(callback("evt_1", 2)),
    ];
    assert!(store.write_call_batch(&writes).await.is_err());
    assert!(store.timeline(&c.id).await.unwrap().is_empty());
    assert_eq!(
        store.get_call(ACCT, &c.id).await.unwrap().unwrap().status,
        CallStatus::Queued
    );
    assert!(store.callbacks_for_call(&c.id).await.unwrap().is_empty());
    // Retried without the bad write: everything, once.
    writes.pop();
    store.write_call_batch(&writes).await.unwrap();
    assert_eq!(store.timeline(&c.id).await.unwrap(), vec![entry]);
    assert_eq!(
        store.get_call(ACCT, &c.id).await.unwrap().unwrap().status,
        CallStatus::Ringing
    );
    assert_eq!(store.callbacks_for_call(&c.id).await.unwrap().len(), 1);
    assert_eq!(store.next_callback_seq(&c.id).await.unwrap(), 2);
    // The call is not final: it is among the unfinished calls (recovery after a crash).
    let unfinished = store.unfinished_calls().await.unwrap();
    assert_eq!(
        unfinished.iter().map(|r| &r.id).collect::<Vec<_>>(),
        [&c.id]
    );
    store.probe_write(T0).await.unwrap();
}

/// The writes of a new call: its record and its first timeline entry.
fn admission(c: &CallRecord) -> Vec<store::CallWrite> {
    vec![
        store::CallWrite::NewCall(c.clone()),
        store::CallWrite::Timeline {
            call_id: c.id.clone(),
            entry: TimelineEntry {
                at_ms: c.created_at_ms,
                kind: "api.request".into(),
                leg: None,
                detail: json!({}).into(),
            },
        },
    ]
}

/// Limits with room for every call but `max_concurrent` of them at once.
fn at_most(max_concurrent: u32) -> AccountLimits {
    AccountLimits {
        calls_per_second: 1000.0,
        burst: 1000,
        max_concurrent,
    }
}

async fn admission_counts_the_live_calls_of_the_account() {
    let (_db, store) = store_provisioned().await;
    let two = at_most(2);
    let admit = |c: CallRecord| {
        let store = store.clone();
        async move { store.admit_call(&admission(&c), &two, T0).await.unwrap() }
    };
    assert_eq!(admit(call(1, T0)).await, Admission::Admitted);
    assert_eq!(admit(call(2, T0)).await, Admission::Admitted);
    assert_eq!(admit(call(3, T0)).await, Admission::Concurrency);
    assert!(store
        .get_call(ACCT, &call(3, T0).id)
        .await
        .unwrap()
        .is_none());
    assert!(store.timeline(&call(3, T0).id).await.unwrap().is_empty());
    assert_eq!(store.timeline(&call(1, T0).id).await.unwrap().len(), 1);
    // A batch without a new call is refused.
    assert!(matches!(
        store
            .admit_call(&admission(&call(5, T0))[1..], &two, T0)
            .await,
        Err(StoreError::Invalid { .. })
    ));
    // Another account's calls do not count.
    let mut foreign = call(4, T0);
    foreign.account_id = OTHER.into();
    assert_eq!(admit(foreign).await, Admission::Admitted);
    // A call that ended frees its slot.
    let mut done = call(1, T0);
    done.status = CallStatus::Completed;
    done.ended_at_ms = Some(T0 + 5);
    store.update_call(&done).await.unwrap();
    assert_eq!(admit(call(3, T0)).await, Admission::Admitted);
}

/// Twenty admissions at once under a limit of 3 (as from several nodes): exactly 3 pass.
async fn racing_admissions_respect_the_limit() {
    let (_db, store) = store_provisioned().await;
    let mut tasks = Vec::new();
    for n in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .admit_call(&admission(&call(n, T0 + n)), &at_most(3), T0 + n)
                .await
                .unwrap()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap() == Admission::Admitted);
    }
    assert_eq!(admitted, 3);
}

/// The call rate on the store's clock (`now_ms` passed in): the bucket is born full, a call
/// refused for the rate writes nothing and takes no token, one refused for concurrency takes
/// no token either, and each account has its own bucket.
async fn the_rate_is_a_token_bucket_per_account() {
    let (_db, store) = store_provisioned().await;
    let limits = AccountLimits {
        calls_per_second: 2.0,
        burst: 3,
        max_concurrent: 100,
    };
    let admit = |c: CallRecord, now: i64, l: AccountLimits| {
        let store = store.clone();
        async move { store.admit_call(&admission(&c), &l, now).await.unwrap() }
    };
    for n in 0..3 {
        assert_eq!(admit(call(n, T0), T0, limits).await, Admission::Admitted);
    }
    assert_eq!(
        admit(call(3, T0), T0, limits).await,
        Admission::Rate {
            retry_after_secs: 1
        }
    );
    assert!(store
        .get_call(ACCT, &call(3, T0).id)
        .await
        .unwrap()
        .is_none());
    // Another account has its own (full) bucket.
    let mut foreign = call(50, T0);
    foreign.account_id = OTHER.into();
    assert_eq!(admit(foreign, T0, limits).await, Admission::Admitted);
    // Half a second later one token is back; a call refused for concurrency does not take it.
    let full = AccountLimits {
        max_concurrent: 3,
        ..limits
    };
    assert_eq!(
        admit(call(4, T0), T0 + 500, full).await,
        Admission::Concurrency
    );
    assert_eq!(
        admit(call(5, T0), T0 + 500, limits).await,
        Admission::Admitted
    );
    assert!(matches!(
        admit(call(6, T0), T0 + 500, limits).await,
        Admission::Rate { .. }
    ));
    // A slower rate asks for a longer wait.
    let slow = AccountLimits {
        calls_per_second: 0.1,
        ..limits
    };
    assert_eq!(
        admit(call(7, T0), T0 + 500, slow).await,
        Admission::Rate {
            retry_after_secs: 10
        }
    );
}

/// Two stores on one database (two nodes): admissions split between them, all at once, at
/// three moments. The account's rate holds across both: in all, exactly burst + rate ×
/// elapsed calls pass, never more.
async fn the_rate_holds_across_stores_on_one_database() {
    let (_db, stores) = stores_on_one_database(2).await;
    let limits = AccountLimits {
        calls_per_second: 10.0,
        burst: 20,
        max_concurrent: 10_000,
    };
    let mut admitted = Vec::new();
    let mut n = 0;
    // At T0 the full bucket (20), 500 ms later 5 tokens, 1 s after that 10 more.
    for at in [T0, T0 + 500, T0 + 1500] {
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let store = stores[(n % 2) as usize].clone();
            let c = call(n, at);
            n += 1;
            tasks.push(tokio::spawn(async move {
                store.admit_call(&admission(&c), &limits, at).await.unwrap()
            }));
        }
        let mut passed = 0;
        for t in tasks {
            match t.await.unwrap() {
                Admission::Admitted => passed += 1,
                Admission::Rate { retry_after_secs } => assert_eq!(retry_after_secs, 1),
                Admission::Concurrency => panic!("no concurrency limit was reached"),
            }
        }
        admitted.push(passed);
    }
    assert_eq!(admitted, [20, 5, 10]);
    // What passed is what the database holds.
    let (page, _) = stores[1]
        .list_calls(&CallFilter::new(ACCT, 100))
        .await
        .unwrap();
    assert_eq!(page.len(), 35);
}

/// A new call record and its first timeline entry are one transaction: the same call again
/// is refused whole.
async fn a_new_call_and_its_first_entry_go_in_one_batch() {
    let (_db, store) = store_provisioned().await;
    let c = call(1, T0);
    let entry = TimelineEntry {
        at_ms: T0,
        kind: "api.request".into(),
        leg: None,
        detail: json!({"dial_string": "+14155550100"}).into(),
    };
    let writes = vec![
        store::CallWrite::NewCall(c.clone()),
        store::CallWrite::Timeline {
            call_id: c.id.clone(),
            entry: entry.clone(),
        },
    ];
    store.write_call_batch(&writes).await.unwrap();
    assert_eq!(store.get_call(ACCT, &c.id).await.unwrap().unwrap(), c);
    assert_eq!(store.timeline(&c.id).await.unwrap(), vec![entry.clone()]);
    // The same call again is refused, and nothing of that batch is written.
    let err = store.write_call_batch(&writes).await.unwrap_err();
    assert!(
        matches!(err, store::StoreError::AlreadyExists { kind: "call", .. }),
        "{err:?}"
    );
    assert_eq!(store.timeline(&c.id).await.unwrap(), vec![entry]);
}

/// A call's timeline reads back in time order whatever batches wrote it: several entries of
/// one call in one batch (interleaved with another call's), an entry written alone, and a
/// later batch with an entry older than the one before it.
async fn a_timeline_reads_back_in_time_order_across_batches() {
    let (_db, store) = store_provisioned().await;
    let (a, b) = (call(1, T0), call(2, T0));
    store.insert_call(&a).await.unwrap();
    store.insert_call(&b).await.unwrap();
    let entry = |at: i64, kind: &str, leg: Option<&str>| TimelineEntry {
        at_ms: T0 + at,
        kind: kind.into(),
        leg: leg.map(str::to_owned),
        detail: json!({ "n": at, "text": "quote \" and \\ slash" }).into(),
    };
    let on = |c: &CallRecord, e: &TimelineEntry| store::CallWrite::Timeline {
        call_id: c.id.clone(),
        entry: e.clone(),
    };
    let (a1, a2, a3) = (
        entry(1, "sip", Some("agent")),
        entry(2, "ringing", Some("agent")),
        entry(7, "sip", None),
    );
    let (b1, b2) = (entry(3, "sip", Some("customer")), entry(4, "sip", None));
    store
        .write_call_batch(&[
            on(&a, &a1),
            on(&b, &b1),
            on(&a, &a2),
            on(&b, &b2),
            on(&a, &a3),
        ])
        .await
        .unwrap();
    let alone = entry(5, "callback", None);
    store.append_timeline(&a.id, &alone).await.unwrap();
    // Older than `a3` (events of one call can reach the journal out of time order), and one
    // of the same time as `a3`, written after it.
    let (a4, a5) = (entry(6, "sip", Some("customer")), entry(7, "ended", None));
    store
        .write_call_batch(&[on(&a, &a4), on(&a, &a5)])
        .await
        .unwrap();
    assert_eq!(
        store.timeline(&a.id).await.unwrap(),
        vec![a1, a2, alone, a4, a3, a5]
    );
    assert_eq!(store.timeline(&b.id).await.unwrap(), vec![b1, b2]);
    // Entries of a call the store does not have: the batch fails whole, naming the call.
    let nope = call(3, T0);
    let err = store
        .write_call_batch(&[
            on(&b, &entry(8, "sip", None)),
            on(&nope, &entry(8, "sip", None)),
            on(&nope, &entry(9, "sip", None)),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { kind: "call", .. }),
        "{err:?}"
    );
    assert_eq!(store.timeline(&b.id).await.unwrap().len(), 2);
}

/// A batch writes a call's progress (what its events change) over the stored record, and
/// leaves what was fixed when the call was placed as it is; a status that stays is matched,
/// one that changes is written, and the call's live count follows it.
async fn a_batch_writes_a_calls_progress_and_leaves_its_placement() {
    let (_db, store) = store_provisioned().await;
    let mut c = call(7, T0);
    c.metadata = json!({"ticket": "T-1"});
    c.callback_url = Some("http://127.0.0.1:9/cb".into());
    store.insert_call(&c).await.unwrap();
    let mut progress = c.clone();
    // Not the journal's to change: kept as placed.
    progress.metadata = json!({"ticket": "changed"});
    progress.callback_url = None;
    progress.dial_string = "+19999999999".into();
    // The events' changes.
    progress.legs = json!({"agent": {"sip_call_id": "a@x", "answered_at": "t"}});
    store
        .write_call_batch(&[store::CallWrite::Call(progress.clone())])
        .await
        .unwrap();
    // A status change named as such is written; named so when the status stays, it
    // still ends right.
    progress.status = CallStatus::Ringing;
    for _ in 0..2 {
        store
            .write_call_batch(&[store::CallWrite::CallStatus(progress.clone())])
            .await
            .unwrap();
        let got = store.get_call(ACCT, &c.id).await.unwrap().unwrap();
        assert_eq!(got.status, CallStatus::Ringing);
        assert_eq!(got.legs, progress.legs);
        assert_eq!(got.metadata, c.metadata);
        assert_eq!(store.unfinished_calls().await.unwrap().len(), 1);
    }
    // A change not named as such (the writer's word is only a hint) is written too.
    progress.status = CallStatus::Completed;
    progress.end_leg = Some("customer".into());
    progress.sip_code = Some(200);
    progress.answered_at_ms = Some(T0 + 1_000);
    progress.ended_at_ms = Some(T0 + 9_000);
    progress.stats = json!({"agent": {"packets_in": 1}});
    progress.recording = json!({"state": "ready"});
    store
        .write_call_batch(&[store::CallWrite::Call(progress.clone())])
        .await
        .unwrap();
    let got = store.get_call(ACCT, &c.id).await.unwrap().unwrap();
    assert_eq!(got.metadata, c.metadata);
    assert_eq!(got.callback_url, c.callback_url);
    assert_eq!(got.dial_string, c.dial_string);
    assert_eq!(got.legs, progress.legs);
    assert_eq!(got.status, CallStatus::Completed);
    assert_eq!(got.end_leg.as_deref(), Some("customer"));
    assert_eq!(got.sip_code, Some(200));
    assert_eq!(got.answered_at_ms, Some(T0 + 1_000));
    assert_eq!(got.ended_at_ms, Some(T0 + 9_000));
    assert_eq!(got.stats, progress.stats);
    assert_eq!(got.recording, progress.recording);
    assert!(store.unfinished_calls().await.unwrap().is_empty());
    // The progress of a call that is not there is refused.
    let mut ghost = call(8, T0);
    ghost.status = CallStatus::Ringing;
    assert!(store
        .write_call_batch(&[store::CallWrite::Call(ghost.clone())])
        .await
        .is_err());
    assert!(store
        .write_call_batch(&[store::CallWrite::CallStatus(ghost)])
        .await
        .is_err());
}

both!(
    a_batch_writes_a_calls_progress_and_leaves_its_placement,
    admission_counts_the_live_calls_of_the_account,
    racing_admissions_respect_the_limit,
    the_rate_is_a_token_bucket_per_account,
    the_rate_holds_across_stores_on_one_database,
    a_new_call_and_its_first_entry_go_in_one_batch,
    a_call_batch_is_written_whole_or_not_at_all,
    a_timeline_reads_back_in_time_order_across_batches,
    pages_are_newest_first_and_cover_everything_once,
    an_exact_last_page_has_no_next_cursor,
    filters,
    update_and_get_are_scoped_to_the_account,
);
