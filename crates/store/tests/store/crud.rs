use store::{Number, StoreError, Transport, Trunk, User};

use crate::support::{store_provisioned, ACCT, REALM, USER};

const BOB: &str = "user_01h2xcejqtf2nbrexx3vqjhp43";

fn bob() -> User {
    User {
        id: BOB.into(),
        account_id: ACCT.into(),
        name: "Bob".into(),
        extension: Some("1002".into()),
        agent_id: Some(43),
    }
}

async fn users() {
    let (_db, store) = store_provisioned().await;
    store.create_user(&bob()).await.unwrap();
    assert_eq!(store.user(BOB).await.unwrap(), Some(bob()));
    assert_eq!(store.users_for_account(ACCT).await.unwrap().len(), 2);

    let mut dup = bob();
    dup.id = "user_01h2xcejqtf2nbrexx3vqjhp44".into();
    assert!(matches!(
        store.create_user(&dup).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    dup.extension = None;
    dup.agent_id = None;
    dup.account_id = "acct_01h2xcejqtf2nbrexx3vqjhp50".into();
    assert!(matches!(
        store.create_user(&dup).await,
        Err(StoreError::NotFound {
            kind: "account",
            ..
        })
    ));
    let mut bad = bob();
    bad.id = "usr_x".into();
    assert!(matches!(
        store.create_user(&bad).await,
        Err(StoreError::Invalid {
            field: "user.id",
            ..
        })
    ));

    let mut renamed = bob();
    renamed.name = "Robert".into();
    renamed.extension = Some("1001".into());
    assert!(matches!(
        store.update_user(&renamed).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    renamed.extension = Some("1003".into());
    store.update_user(&renamed).await.unwrap();
    assert_eq!(
        store.user_by_extension(ACCT, "1003").await.unwrap(),
        Some(renamed)
    );
    assert_eq!(store.user_by_extension(ACCT, "1002").await.unwrap(), None);

    store
        .create_device(BOB, "bob-desk", &"pw".into(), REALM)
        .await
        .unwrap();
    assert!(!store
        .delete_user("acct_01h2xcejqtf2nbrexx3vqjhp50", BOB)
        .await
        .unwrap());
    assert!(store.delete_user(ACCT, BOB).await.unwrap());
    assert!(store.user(BOB).await.unwrap().is_none());
    assert!(store
        .device_by_username("bob-desk")
        .await
        .unwrap()
        .is_none());
}

async fn devices() {
    let (_db, store) = store_provisioned().await;
    let d = store
        .create_device(USER, "alice-mobile", &"pw1".into(), REALM)
        .await
        .unwrap();
    assert!(d.id.starts_with("dev_"));
    assert_eq!(
        store.device_by_username("alice-mobile").await.unwrap(),
        Some(d.clone())
    );
    assert!(matches!(
        store
            .create_device(USER, "alice-mobile", &"pw".into(), REALM)
            .await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        store.create_device(BOB, "bob-x", &"pw".into(), REALM).await,
        Err(StoreError::NotFound { kind: "user", .. })
    ));
    assert!(matches!(
        store
            .create_device(USER, "has space", &"pw".into(), REALM)
            .await,
        Err(StoreError::Invalid { .. })
    ));
    assert!(matches!(
        store
            .create_device(USER, "empty-pw", &"".into(), REALM)
            .await,
        Err(StoreError::Invalid { .. })
    ));
    let changed = store
        .set_device_password("alice-mobile", &"pw2".into(), REALM)
        .await
        .unwrap();
    assert_eq!(changed.id, d.id);
    assert_ne!(changed.ha1_md5, d.ha1_md5);
    assert!(matches!(
        store
            .set_device_password("nobody", &"pw".into(), REALM)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(store.delete_device("alice-mobile").await.unwrap());
    assert!(!store.delete_device("alice-mobile").await.unwrap());
}

async fn numbers() {
    let (_db, store) = store_provisioned().await;
    let n = Number {
        number: "+14155550000".into(),
        account_id: ACCT.into(),
        owner_user_id: None,
    };
    store.create_number(&n).await.unwrap();
    assert!(matches!(
        store.create_number(&n).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let mut bad = n.clone();
    bad.number = "4155550000".into();
    assert!(matches!(
        store.create_number(&bad).await,
        Err(StoreError::Invalid {
            field: "number",
            ..
        })
    ));
    let mut foreign = n.clone();
    foreign.number = "+14155550001".into();
    foreign.account_id = "acct_01h2xcejqtf2nbrexx3vqjhp50".into();
    foreign.owner_user_id = Some(USER.into());
    assert!(matches!(
        store.create_number(&foreign).await,
        Err(StoreError::Invalid {
            field: "number.owner",
            ..
        })
    ));
    let mut ghost = n.clone();
    ghost.owner_user_id = Some(BOB.into());
    assert!(matches!(
        store.update_number(&ghost).await,
        Err(StoreError::NotFound { kind: "user", .. })
    ));
    let mut owned = n.clone();
    owned.owner_user_id = Some(USER.into());
    store.update_number(&owned).await.unwrap();
    assert_eq!(store.number(&n.number).await.unwrap(), Some(owned));
    assert_eq!(store.numbers_for_account(ACCT).await.unwrap().len(), 2);
    // Deleting the owner clears the owner, keeps the number.
    assert!(store.delete_user(ACCT, USER).await.unwrap());
    assert_eq!(
        store
            .number(&n.number)
            .await
            .unwrap()
            .unwrap()
            .owner_user_id,
        None
    );
    assert!(store.delete_number(ACCT, &n.number).await.unwrap());
    assert!(store.number(&n.number).await.unwrap().is_none());
}

async fn trunks() {
    let (_db, store) = store_provisioned().await;
    let t = Trunk {
        name: "backup".into(),
        account_id: Some(ACCT.into()),
        address: "[::1]:5090".into(),
        transport: Transport::Tcp,
        username: None,
        password: None,
        emergency: false,
        dial_prefix: Some("9".into()),
        from_domain: Some("acme.example".into()),
        routing: store::TrunkRouting {
            priority: 5,
            failover_codes: vec![503],
            max_calls: Some(4),
            ..Default::default()
        },
    };
    store.create_trunk(&t).await.unwrap();
    let names: Vec<String> = store
        .trunks_for_account(ACCT)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["backup", "carrier", "shared"]);
    let other: Vec<String> = store
        .trunks_for_account("acct_01h2xcejqtf2nbrexx3vqjhp50")
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(other, ["shared"]);

    let mut bad = t.clone();
    bad.address = "not an address".into();
    match store.update_trunk(&bad).await {
        Err(StoreError::Invalid { reason, .. }) => assert!(reason.contains("address"), "{reason}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    let mut moved = t.clone();
    moved.emergency = true;
    store.update_trunk(&moved).await.unwrap();
    assert_eq!(store.trunk("backup").await.unwrap(), Some(moved));
    let mut ghost = t.clone();
    ghost.name = "ghost".into();
    assert!(matches!(
        store.update_trunk(&ghost).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(store.delete_trunk("backup").await.unwrap());
    assert_eq!(store.list_trunks().await.unwrap().len(), 2);
}

/// Every provisioning write through a store moves its generation (what the in-memory read
/// caches compare); reads and call writes do not.
async fn provisioning_writes_move_the_generation() {
    let (_db, store) = store_provisioned().await;
    let mut g = store.provisioning_generation();
    let mut moved = |what: &str| {
        let now = store.provisioning_generation();
        assert!(now > g, "{what} did not move the generation");
        g = now;
    };
    store.create_user(&bob()).await.unwrap();
    moved("create_user");
    let mut b = bob();
    b.name = "Robert".into();
    store.update_user(&b).await.unwrap();
    moved("update_user");
    let n = Number {
        number: "+14155550000".into(),
        account_id: ACCT.into(),
        owner_user_id: None,
    };
    store.create_number(&n).await.unwrap();
    moved("create_number");
    let mut owned = n.clone();
    owned.owner_user_id = Some(BOB.into());
    store.update_number(&owned).await.unwrap();
    moved("update_number");
    assert!(store.delete_number(ACCT, &n.number).await.unwrap());
    moved("delete_number");
    let mut t = store.trunk("carrier").await.unwrap().unwrap();
    t.name = "second".into();
    store.create_trunk(&t).await.unwrap();
    moved("create_trunk");
    t.routing.priority = 3;
    store.update_trunk(&t).await.unwrap();
    moved("update_trunk");
    assert!(store.delete_trunk("second").await.unwrap());
    moved("delete_trunk");
    let mut a = store.account(ACCT).await.unwrap().unwrap();
    a.name = "Renamed".into();
    store.update_account(&a).await.unwrap();
    moved("update_account");
    store.set_account_limits(ACCT, &a.limits).await.unwrap();
    moved("set_account_limits");
    assert!(store.delete_user(ACCT, BOB).await.unwrap());
    moved("delete_user");
    // Reads do not.
    store.numbers_for_account(ACCT).await.unwrap();
    store.trunks_for_account(ACCT).await.unwrap();
    assert_eq!(store.provisioning_generation(), g);
}

both!(
    users,
    devices,
    numbers,
    trunks,
    provisioning_writes_move_the_generation,
);
