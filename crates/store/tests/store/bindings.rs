use store::{Binding, BlockingStore, SqliteStore, StoreError};

use crate::support::{provisioned, store_provisioned, REALM, USER};

const NOW: i64 = 1_700_000_000;

fn binding(device: &str, contact: &str, expires_at: i64) -> Binding {
    Binding {
        device_username: device.into(),
        user_id: USER.into(),
        contact: contact.into(),
        source: "127.0.0.1:5062".into(),
        transport: "udp".into(),
        local: "127.0.0.1:5060".into(),
        expires_at,
        q: Some(0.5),
        call_id: format!("reg-{contact}"),
        cseq: 1,
        instance: Some("<urn:uuid:00000000-0000-1000-8000-000A95A0E128>".into()),
        reg_id: Some(1),
        user_agent: Some("test-phone/1.0".into()),
        updated_at: NOW,
        path: Vec::new(),
    }
}

async fn bindings_crud() {
    let (_db, store) = store_provisioned().await;
    let a = binding("alice-desk", "sip:alice@127.0.0.1:5062", NOW + 3600);
    let b = binding(
        "alice-desk",
        "sip:alice@[::1]:5062;transport=tcp",
        NOW + 600,
    );
    let mut c = binding("alice-soft", "sip:soft@127.0.0.1:5070", NOW + 60);
    // Registered through an edge proxy: its Path comes back as stored.
    c.path = vec![
        "<sip:127.0.0.2:5060;lr;received=sip:127.0.0.1:5070>".into(),
        "<sip:edge2.example;lr>".into(),
    ];
    for x in [&a, &b, &c] {
        store.upsert_binding(x).await.unwrap();
    }
    let desk = store.bindings_for_device("alice-desk", NOW).await.unwrap();
    assert_eq!(desk.len(), 2);
    assert!(desk.contains(&a) && desk.contains(&b));
    let all = store.bindings_for_user(USER, NOW).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.contains(&c), "{all:?}");

    // A refresh replaces, it does not add.
    let mut refreshed = a.clone();
    refreshed.expires_at = NOW + 7200;
    refreshed.cseq = 2;
    refreshed.q = None;
    store.upsert_binding(&refreshed).await.unwrap();
    let desk = store.bindings_for_device("alice-desk", NOW).await.unwrap();
    assert_eq!(desk.len(), 2);
    assert!(desk.contains(&refreshed));

    assert!(store
        .remove_binding("alice-desk", &b.contact)
        .await
        .unwrap());
    assert!(!store
        .remove_binding("alice-desk", &b.contact)
        .await
        .unwrap());
    assert_eq!(
        store.bindings_for_device("alice-desk", NOW).await.unwrap(),
        vec![refreshed]
    );

    assert_eq!(store.remove_all_bindings("alice-desk").await.unwrap(), 1);
    assert_eq!(store.bindings_for_user(USER, NOW).await.unwrap(), vec![c]);
}

async fn expired_bindings_are_hidden_then_swept() {
    let (_db, store) = store_provisioned().await;
    store
        .upsert_binding(&binding("alice-desk", "sip:a@127.0.0.1:1", NOW + 10))
        .await
        .unwrap();
    store
        .upsert_binding(&binding("alice-desk", "sip:b@127.0.0.1:2", NOW + 20))
        .await
        .unwrap();
    store
        .upsert_binding(&binding("alice-soft", "sip:c@127.0.0.1:3", NOW + 30))
        .await
        .unwrap();

    // At exactly expires_at a binding is gone (RFC 3261 §10.3: expired when the time is up).
    assert_eq!(
        store.bindings_for_user(USER, NOW + 10).await.unwrap().len(),
        2
    );
    assert_eq!(store.count_bindings(NOW).await.unwrap(), 3);
    assert_eq!(store.count_bindings(NOW + 10).await.unwrap(), 2);
    assert_eq!(store.sweep_expired(NOW + 9).await.unwrap(), 0);
    assert_eq!(store.sweep_expired(NOW + 20).await.unwrap(), 2);
    let left = store.bindings_for_user(USER, NOW).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].contact, "sip:c@127.0.0.1:3");
    assert_eq!(store.sweep_expired(NOW + 20).await.unwrap(), 0);
}

#[test]
fn bindings_survive_a_restart() {
    let (dir, store) = provisioned();
    let b = binding("alice-desk", "sip:alice@127.0.0.1:5062", NOW + 3600);
    store.upsert_binding(&b).unwrap();
    drop(store);
    let store = SqliteStore::open(&dir.url()).unwrap();
    assert_eq!(store.bindings_for_user(USER, NOW).unwrap(), vec![b]);
}

async fn binding_needs_a_known_device_and_goes_with_it() {
    let (_db, store) = store_provisioned().await;
    match store
        .upsert_binding(&binding("ghost", "sip:g@127.0.0.1:1", NOW + 10))
        .await
    {
        Err(StoreError::NotFound { kind: "device", id }) => assert_eq!(id, "ghost"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    store
        .upsert_binding(&binding("alice-desk", "sip:a@127.0.0.1:1", NOW + 10))
        .await
        .unwrap();
    assert!(store.delete_device("alice-desk").await.unwrap());
    assert!(store
        .bindings_for_device("alice-desk", NOW)
        .await
        .unwrap()
        .is_empty());
    // Recreating the device does not resurrect old bindings.
    store
        .create_device(USER, "alice-desk", &"pw".into(), REALM)
        .await
        .unwrap();
    assert!(store
        .bindings_for_device("alice-desk", NOW)
        .await
        .unwrap()
        .is_empty());
}

async fn user_id_follows_the_device_owner() {
    let (_db, store) = store_provisioned().await;
    let mut b = binding("alice-desk", "sip:a@127.0.0.1:1", NOW + 10);
    b.user_id = "user_01h2xcejqtf2nbrexx3vqjhp99".into();
    store.upsert_binding(&b).await.unwrap();
    let got = store.bindings_for_device("alice-desk", NOW).await.unwrap();
    assert_eq!(got[0].user_id, USER);
}

#[test]
fn concurrent_registrations_from_several_threads() {
    let (_dir, store) = provisioned();
    let store: std::sync::Arc<dyn BlockingStore> = std::sync::Arc::new(store);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let device = if t % 2 == 0 {
                        "alice-desk"
                    } else {
                        "alice-soft"
                    };
                    let contact = format!("sip:t{t}-{i}@127.0.0.1:{}", 5000 + i);
                    store
                        .upsert_binding(&binding(device, &contact, NOW + 100))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.bindings_for_user(USER, NOW).unwrap().len(), 200);
    assert_eq!(
        store.bindings_for_device("alice-soft", NOW).unwrap().len(),
        100
    );
}

#[test]
fn a_refresh_is_seen_at_once_and_written_by_the_next_flush() {
    let (dir, store) = provisioned();
    let b = binding("alice-desk", "sip:alice@127.0.0.1:5062", NOW + 60);
    store.upsert_binding(&b).unwrap();
    // All that a refresh may change (the trait's contract): expiry, CSeq, Call-ID, source
    // and time.
    let mut refreshed = b.clone();
    refreshed.expires_at = NOW + 3600;
    refreshed.cseq = 2;
    refreshed.call_id = "a-new-call-id@127.0.0.1".into();
    refreshed.source = "127.0.0.1:6000".into();
    refreshed.updated_at = NOW + 30;
    assert_ne!(refreshed.call_id, b.call_id);
    assert_ne!(refreshed.source, b.source);
    store.refresh_binding(&refreshed).unwrap();
    // Seen at once by every read ...
    assert_eq!(
        store.bindings_for_device("alice-desk", NOW).unwrap(),
        vec![refreshed.clone()]
    );
    assert_eq!(
        store.bindings_for_user(USER, NOW).unwrap(),
        vec![refreshed.clone()]
    );
    // ... still alive past the old expiry (the row in the file has not changed yet) ...
    assert_eq!(
        store.bindings_for_user(USER, NOW + 120).unwrap(),
        vec![refreshed.clone()]
    );
    let other = SqliteStore::open(&dir.url()).unwrap();
    assert_eq!(other.bindings_for_user(USER, NOW).unwrap(), vec![b.clone()]);
    // ... and written by the flush, in one go.
    assert_eq!(store.flush_refreshes().unwrap(), 1);
    assert_eq!(store.flush_refreshes().unwrap(), 0);
    assert_eq!(
        other.bindings_for_user(USER, NOW + 120).unwrap(),
        vec![refreshed]
    );
}

#[test]
fn a_removal_or_a_new_write_supersedes_a_waiting_refresh() {
    let (_dir, store) = provisioned();
    let b = binding("alice-desk", "sip:alice@127.0.0.1:5062", NOW + 60);
    store.upsert_binding(&b).unwrap();
    let mut refreshed = b.clone();
    refreshed.expires_at = NOW + 3600;
    store.refresh_binding(&refreshed).unwrap();
    assert!(store
        .remove_binding("alice-desk", "sip:alice@127.0.0.1:5062")
        .unwrap());
    assert_eq!(
        store.bindings_for_device("alice-desk", NOW).unwrap(),
        vec![]
    );
    // Nothing waits any more; a refresh of a row that is gone does not bring it back.
    assert_eq!(store.flush_refreshes().unwrap(), 0);
    store.refresh_binding(&refreshed).unwrap();
    assert_eq!(store.flush_refreshes().unwrap(), 1);
    assert_eq!(store.bindings_for_user(USER, NOW).unwrap(), vec![]);
    // A sweep writes waiting refreshes first, so a refreshed binding is not swept.
    store.upsert_binding(&b).unwrap();
    store.refresh_binding(&refreshed).unwrap();
    assert_eq!(store.sweep_expired(NOW + 120).unwrap(), 0);
    assert_eq!(
        store.bindings_for_user(USER, NOW + 120).unwrap(),
        vec![refreshed]
    );
}

/// A REGISTER of a device not seen lately reads the device and its bindings together.
async fn a_device_and_its_bindings_are_read_together() {
    let (_db, store) = store_provisioned().await;
    let a = binding("alice-desk", "sip:alice@127.0.0.1:5062", NOW + 3600);
    let gone = binding("alice-desk", "sip:alice@127.0.0.1:5064", NOW + 5);
    store.upsert_binding(&a).await.unwrap();
    store.upsert_binding(&gone).await.unwrap();
    let (device, bindings) = store
        .device_and_bindings("alice-desk", NOW + 5)
        .await
        .unwrap();
    assert_eq!(device.unwrap().username, "alice-desk");
    assert_eq!(bindings, vec![a]);
    let (device, bindings) = store.device_and_bindings("alice-soft", NOW).await.unwrap();
    assert_eq!(device.unwrap().username, "alice-soft");
    assert!(bindings.is_empty());
    let (device, bindings) = store.device_and_bindings("ghost", NOW).await.unwrap();
    assert!(device.is_none() && bindings.is_empty());
}

both!(
    bindings_crud,
    a_device_and_its_bindings_are_read_together,
    expired_bindings_are_hidden_then_swept,
    binding_needs_a_known_device_and_goes_with_it,
    user_id_follows_the_device_owner,
);
