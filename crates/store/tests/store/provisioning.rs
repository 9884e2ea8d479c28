use store::{ApiKeySpec, BlockingStore, DeviceSpec, StoreError, User};

use crate::support::{provisioned, sample, store_fresh, store_provisioned, ACCT, REALM, USER};
use store::SqliteStore;

async fn first_apply_creates_everything() {
    let (_db, store) = store_fresh().await;
    let report = store.apply_provisioning(&sample(), REALM).await.unwrap();
    assert_eq!(report.accounts.created, 1);
    assert_eq!(report.api_keys.created, 1);
    assert_eq!(report.users.created, 1);
    assert_eq!(report.devices.created, 2);
    assert_eq!(report.trunks.created, 2);
    assert_eq!(report.numbers.created, 1);
    assert_eq!(report.total_updated(), 0);

    let account = store.account(ACCT).await.unwrap().unwrap();
    assert_eq!(account.region, "US");
    assert_eq!(account.allowed_prefixes, vec!["+1".to_owned()]);
    let user = store.user(USER).await.unwrap().unwrap();
    assert_eq!(user.extension.as_deref(), Some("1001"));
    assert_eq!(
        store.user_by_agent_id(ACCT, 42).await.unwrap(),
        Some(user.clone())
    );
    assert_eq!(
        store.user_by_extension(ACCT, "1001").await.unwrap(),
        Some(user)
    );
    let devices = store.devices_for_user(USER).await.unwrap();
    assert_eq!(
        devices
            .iter()
            .map(|d| d.username.as_str())
            .collect::<Vec<_>>(),
        ["alice-desk", "alice-soft"]
    );
    assert!(devices
        .iter()
        .all(|d| d.id.starts_with("dev_") && d.realm == REALM));
    let number = store.number("+14155551234").await.unwrap().unwrap();
    assert_eq!(number.owner_user_id.as_deref(), Some(USER));
    let shared = store.trunk("shared").await.unwrap().unwrap();
    assert!(shared.emergency);
    assert_eq!(shared.account_id, None);
}

#[test]
fn second_apply_changes_nothing() {
    let (dir, store) = provisioned();
    let devices_before = store.devices_for_user(USER).unwrap();
    let report = store.apply_provisioning(&sample(), REALM).unwrap();
    assert!(report.is_noop(), "{report}");
    assert_eq!(report.total_created() + report.total_updated(), 0);
    assert_eq!(report.devices.unchanged, 2);
    assert_eq!(report.trunks.unchanged, 2);
    // Device ids are stable.
    assert_eq!(store.devices_for_user(USER).unwrap(), devices_before);
    drop(store);

    // And after a restart.
    let store = SqliteStore::open(&dir.url()).unwrap();
    let report = store.apply_provisioning(&sample(), REALM).unwrap();
    assert!(report.is_noop(), "{report}");
}

async fn changes_are_reported_as_updates() {
    let (_db, store) = store_provisioned().await;
    let mut prov = sample();
    prov.users[0].name = "Alice A. Agent".into();
    prov.users[0].devices[1].password = "new-soft-pass".into();
    prov.trunks[0].password = Some("rotated".into());
    let report = store.apply_provisioning(&prov, REALM).await.unwrap();
    assert_eq!(report.users.updated, 1);
    assert_eq!(report.devices.updated, 1);
    assert_eq!(report.devices.unchanged, 1);
    assert_eq!(report.trunks.updated, 1);
    assert_eq!(report.accounts.unchanged, 1);
    assert_eq!(
        store.user(USER).await.unwrap().unwrap().name,
        "Alice A. Agent"
    );
    let soft = store
        .device_by_username("alice-soft")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        soft.ha1_md5,
        store::secret::ha1_md5("alice-soft", REALM, &"new-soft-pass".into())
    );
    assert_eq!(
        store
            .trunk("carrier")
            .await
            .unwrap()
            .unwrap()
            .password
            .unwrap()
            .expose(),
        "rotated"
    );
}

async fn a_new_realm_recomputes_every_ha1() {
    let (_db, store) = store_provisioned().await;
    let report = store
        .apply_provisioning(&sample(), "other.test")
        .await
        .unwrap();
    assert_eq!(report.devices.updated, 2);
    let desk = store
        .device_by_username("alice-desk")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(desk.realm, "other.test");
    assert_eq!(
        desk.ha1_sha256,
        store::secret::ha1_sha256("alice-desk", "other.test", &"s3cret-desk".into())
    );
}

async fn api_key_list_is_authoritative_per_account() {
    let (_db, store) = store_provisioned().await;
    let mut prov = sample();
    prov.accounts[0].api_keys = vec![ApiKeySpec {
        key: "ak_test_2".into(),
        secret: "sk_test_2".into(),
    }];
    let report = store.apply_provisioning(&prov, REALM).await.unwrap();
    assert_eq!(report.api_keys.created, 1);
    assert_eq!(report.api_keys.removed, 1);
    assert!(store
        .account_by_api_secret("sk_test_1")
        .await
        .unwrap()
        .is_none());
    assert!(store
        .account_by_api_secret("sk_test_2")
        .await
        .unwrap()
        .is_some());
    let keys = store.api_keys_for_account(ACCT).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].key, "ak_test_2");
}

async fn devices_added_through_the_api_survive_provisioning() {
    let (_db, store) = store_provisioned().await;
    store
        .create_device(USER, "alice-mobile", &"mob-pass".into(), REALM)
        .await
        .unwrap();
    let report = store.apply_provisioning(&sample(), REALM).await.unwrap();
    assert!(report.is_noop());
    assert_eq!(store.devices_for_user(USER).await.unwrap().len(), 3);
}

async fn invalid_provisioning_is_refused_and_writes_nothing() {
    let (_db, store) = store_fresh().await;
    let mut prov = sample();
    prov.numbers[0].number = "+1415".into();
    prov.users[0].devices.push(DeviceSpec {
        username: "alice-desk".into(),
        password: "x".into(),
    });
    match store.apply_provisioning(&prov, REALM).await {
        Err(StoreError::InvalidProvisioning(issues)) => {
            let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
            assert!(keys.contains(&"numbers[0].number"), "{issues:?}");
            assert!(keys.contains(&"users[0].devices[2].username"), "{issues:?}");
            let msg = StoreError::InvalidProvisioning(issues).to_string();
            assert!(msg.contains("\"+1415\" is not an E.164 number"), "{msg}");
        }
        other => panic!("expected InvalidProvisioning, got {other:?}"),
    }
    assert!(store.list_accounts().await.unwrap().is_empty());
}

async fn clash_with_a_row_in_the_store_rolls_back_and_names_the_key() {
    let (_db, store) = store_fresh().await;
    let mut accounts_only = sample();
    accounts_only.users.clear();
    accounts_only.numbers.clear();
    store
        .apply_provisioning(&accounts_only, REALM)
        .await
        .unwrap();
    store
        .create_user(&User {
            id: "user_01h2xcejqtf2nbrexx3vqjhp77".into(),
            account_id: ACCT.into(),
            name: "Bob".into(),
            extension: Some("1001".into()),
            agent_id: None,
        })
        .await
        .unwrap();
    let mut prov = sample();
    prov.trunks[1].address = "changed.example".into();
    match store.apply_provisioning(&prov, REALM).await {
        Err(StoreError::ProvisioningConflict { key, reason }) => {
            assert_eq!(key, "users[0]");
            assert!(reason.contains("extension"), "{reason}");
        }
        other => panic!("expected ProvisioningConflict, got {other:?}"),
    }
    assert!(store.user(USER).await.unwrap().is_none());
    assert!(store
        .device_by_username("alice-desk")
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.users_for_account(ACCT).await.unwrap().len(), 1);
    // Earlier statements of the same transaction were rolled back too.
    assert_eq!(
        store.trunk("shared").await.unwrap().unwrap().address,
        "sip.carrier.example"
    );
}

async fn dialing_permissions_default_and_follow_the_configuration() {
    use store::NumberType;
    let (_db, store) = store_provisioned().await;
    let account = store.account(ACCT).await.unwrap().unwrap();
    assert_eq!(account.allowed_countries, ["US"]);
    assert_eq!(account.blocked_number_types, NumberType::DEFAULT_BLOCKED);

    let mut p = sample();
    p.accounts[0].allowed_countries = Some(vec!["US".into(), "CA".into()]);
    p.accounts[0].blocked_number_types = Some(vec!["premium_rate".into(), "voip".into()]);
    let report = store.apply_provisioning(&p, REALM).await.unwrap();
    assert_eq!(report.accounts.updated, 1);
    let account = store.account(ACCT).await.unwrap().unwrap();
    assert_eq!(account.allowed_countries, ["US", "CA"]);
    assert_eq!(
        account.blocked_number_types,
        [NumberType::PremiumRate, NumberType::Voip]
    );
    // The same again changes nothing.
    let report = store.apply_provisioning(&p, REALM).await.unwrap();
    assert_eq!(report.accounts.unchanged, 1);
}

async fn permissions_the_file_leaves_out_keep_what_the_admin_api_set() {
    use store::NumberType;
    let (_db, store) = store_provisioned().await;
    // The admin API widens the countries and changes the blocked types ...
    let mut account = store.account(ACCT).await.unwrap().unwrap();
    account.allowed_countries = vec!["US".into(), "CA".into()];
    account.blocked_number_types = vec![NumberType::PremiumRate];
    store.update_account(&account).await.unwrap();
    // ... and a restart with a file that does not name them keeps that.
    store.apply_provisioning(&sample(), REALM).await.unwrap();
    let kept = store.account(ACCT).await.unwrap().unwrap();
    assert_eq!(kept.allowed_countries, ["US", "CA"]);
    assert_eq!(kept.blocked_number_types, [NumberType::PremiumRate]);
    // A file that names them is the authority.
    let mut p = sample();
    p.accounts[0].allowed_countries = Some(vec!["US".into()]);
    store.apply_provisioning(&p, REALM).await.unwrap();
    let account = store.account(ACCT).await.unwrap().unwrap();
    assert_eq!(account.allowed_countries, ["US"]);
    assert_eq!(account.blocked_number_types, [NumberType::PremiumRate]);
}

async fn update_account_writes_the_permissions_and_checks_them() {
    use store::NumberType;
    let (_db, store) = store_provisioned().await;
    let mut account = store.account(ACCT).await.unwrap().unwrap();
    account.allowed_countries = vec!["US".into(), "CA".into(), "JM".into()];
    account.blocked_number_types = vec![NumberType::PremiumRate];
    account.allowed_prefixes = vec!["+1".into(), "+44".into()];
    store.update_account(&account).await.unwrap();
    assert_eq!(store.account(ACCT).await.unwrap().unwrap(), account);
    // The authentication paths read the same columns.
    assert_eq!(
        store
            .account_by_api_secret("sk_test_1")
            .await
            .unwrap()
            .unwrap(),
        account
    );

    let mut bad = account.clone();
    bad.allowed_countries = vec!["USA".into()];
    assert!(matches!(
        store.update_account(&bad).await,
        Err(StoreError::Invalid {
            field: "account.allowed_countries",
            ..
        })
    ));
    let mut missing = account.clone();
    missing.id = "acct_01h2xcejqtf2nbrexx3vqjhp99".into();
    assert!(matches!(
        store.update_account(&missing).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn publishable_keys_follow_the_file_and_keep_those_of_the_admin_api() {
    let (_db, store) = store_provisioned().await;
    let mut prov = sample();
    prov.accounts[0].publishable_keys =
        vec!["pk_test_file_0001".into(), "pk_test_file_0002".into()];
    store.apply_provisioning(&prov, REALM).await.unwrap();
    store
        .create_publishable_key(&store::PublishableKey {
            key: "pk_test_api_00001".into(),
            account_id: ACCT.into(),
            source: "api".into(),
            created_at_ms: 1,
        })
        .await
        .unwrap();
    let account = store
        .account_by_publishable_key("pk_test_file_0002")
        .await
        .unwrap();
    assert_eq!(account.map(|a| a.id), Some(ACCT.to_owned()));
    // The file drops one key: it goes; the key made through the API stays.
    prov.accounts[0].publishable_keys = vec!["pk_test_file_0001".into()];
    store.apply_provisioning(&prov, REALM).await.unwrap();
    let keys: Vec<String> = store
        .publishable_keys_for_account(ACCT)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.key)
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.contains(&"pk_test_file_0001".to_owned()));
    assert!(keys.contains(&"pk_test_api_00001".to_owned()));
    assert!(store
        .account_by_publishable_key("pk_test_file_0002")
        .await
        .unwrap()
        .is_none());
    // A taken key, a malformed key.
    let taken = store
        .create_publishable_key(&store::PublishableKey {
            key: "pk_test_file_0001".into(),
            account_id: ACCT.into(),
            source: "api".into(),
            created_at_ms: 2,
        })
        .await;
    assert!(taken.is_err());
    let bad = store
        .create_publishable_key(&store::PublishableKey {
            key: "sk_not_a_pk".into(),
            account_id: ACCT.into(),
            source: "api".into(),
            created_at_ms: 2,
        })
        .await;
    assert!(matches!(bad, Err(StoreError::Invalid { .. })), "{bad:?}");
    assert!(store
        .delete_publishable_key(ACCT, "pk_test_api_00001")
        .await
        .unwrap());
    assert!(!store
        .delete_publishable_key("acct_other", "pk_test_file_0001")
        .await
        .unwrap());
}

async fn the_platform_of_an_account_is_kept_and_checked() {
    let (_db, store) = store_provisioned().await;
    let mut prov = sample();
    let platform = "acct_01h2xcejqtf2nbrexx3vqjhp99";
    prov.accounts[0].platform = Some(platform.into());
    let report = store.apply_provisioning(&prov, REALM).await.unwrap();
    assert_eq!(report.accounts.updated, 1);
    assert_eq!(
        store
            .account(ACCT)
            .await
            .unwrap()
            .unwrap()
            .platform
            .as_deref(),
        Some(platform)
    );
    assert!(store
        .apply_provisioning(&prov, REALM)
        .await
        .unwrap()
        .is_noop());
    // Refused: not an account id; the account itself; a malformed publishable key.
    for (platform, pk) in [("nope", None), (ACCT, None), (platform, Some("pk_x"))] {
        let mut bad = sample();
        bad.accounts[0].platform = Some(platform.into());
        if let Some(pk) = pk {
            bad.accounts[0].publishable_keys = vec![pk.into()];
        }
        let issues = bad.validate().unwrap_err();
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        let want = if pk.is_some() {
            "accounts[0].publishable_keys[0]"
        } else {
            "accounts[0].platform"
        };
        assert!(keys.contains(&want), "{keys:?}");
    }
}
both!(
    first_apply_creates_everything,
    changes_are_reported_as_updates,
    a_new_realm_recomputes_every_ha1,
    api_key_list_is_authoritative_per_account,
    devices_added_through_the_api_survive_provisioning,
    invalid_provisioning_is_refused_and_writes_nothing,
    clash_with_a_row_in_the_store_rolls_back_and_names_the_key,
    dialing_permissions_default_and_follow_the_configuration,
    permissions_the_file_leaves_out_keep_what_the_admin_api_set,
    update_account_writes_the_permissions_and_checks_them,
    publishable_keys_follow_the_file_and_keep_those_of_the_admin_api,
    the_platform_of_an_account_is_kept_and_checked,
);
