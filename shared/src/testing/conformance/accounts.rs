//! The account store: uploads, callback secrets, keys, tenants' limits, rate windows and
//! budgets, each decided by one conditional write.

use super::*;

/// Every rule of `AccountStore` that authentication, rate limits and budgets rely on.
pub async fn account_store_suite<S: AccountStore>(store: &S) {
    keys_are_created_once_read_back_and_revoked(store).await;
    keys_carry_their_tenants_limits(store).await;
    keys_created_during_limit_changes_carry_the_last(store).await;
    tenant_limits_are_set_and_replaced(store).await;
    rate_windows_admit_exactly_the_limit(store).await;
    budgets_reserve_atomically_and_settle_to_the_actual_cost(store).await;
    uploads_are_created_once_and_read_back(store).await;
    callback_secrets_are_made_once(store).await;
}

pub(super) async fn uploads_are_created_once_and_read_back<S: AccountStore>(store: &S) {
    let upload = UploadRecord {
        id: UploadId::generate(),
        tenant: fresh_tenant(),
        kind: ImageKind::Jpeg,
        size: 3 * 1024 * 1024,
        created_at: NOW,
        expires_at: NOW.unix_seconds() + 86_400,
    };
    store.put_upload(&upload).await.expect("put_upload");
    assert_eq!(
        store.get_upload(&upload.id).await.expect("get_upload"),
        Some(upload.clone()),
        "get_upload: a slot reads back as created"
    );
    assert!(
        store.put_upload(&upload).await.is_err(),
        "put_upload: a slot id that exists is never overwritten"
    );
    assert_eq!(
        store
            .get_upload(&UploadId::generate())
            .await
            .expect("get_upload"),
        None
    );
}

pub(super) async fn callback_secrets_are_made_once<S: AccountStore>(store: &S) {
    let tenant = fresh_tenant();
    let candidates: Vec<String> = (0..8).map(|i| format!("whsec_candidate{i}")).collect();
    let answers = futures_util::future::join_all(
        candidates
            .iter()
            .map(|candidate| store.callback_secret(&tenant, candidate)),
    )
    .await;
    let answers: Vec<String> = answers
        .into_iter()
        .map(|a| a.expect("callback_secret"))
        .collect();
    assert!(
        candidates.contains(&answers[0]) && answers.iter().all(|a| *a == answers[0]),
        "callback_secret: first callers at once agree on one secret: {answers:?}"
    );
    assert_eq!(
        store
            .callback_secret(&tenant, "whsec_later")
            .await
            .expect("callback_secret"),
        answers[0],
        "callback_secret: a stored secret is kept"
    );
    assert_ne!(
        store
            .callback_secret(&fresh_tenant(), "whsec_other")
            .await
            .expect("callback_secret"),
        answers[0],
        "callback_secret: each tenant has its own"
    );
}

pub(super) fn fresh_tenant() -> TenantId {
    TenantId::parse(&format!("t-{}", unique())).unwrap_or_else(|e| panic!("{e}"))
}

pub(super) async fn keys_are_created_once_read_back_and_revoked<S: AccountStore>(store: &S) {
    let key = ApiKey::generate();
    let record = KeyRecord::new(&key, fresh_tenant(), NOW);
    store
        .create_key(&record)
        .await
        .unwrap_or_else(|e| panic!("create_key: {e}"));
    assert_eq!(
        store.get_key(&record.id).await.ok().flatten(),
        Some(StoredKey {
            record: record.clone(),
            limits: CarriedLimits::Carried(None),
        }),
        "get_key: a key reads back exactly as created, carrying no limits of a tenant with none"
    );
    assert!(
        store.create_key(&record).await.is_err(),
        "create_key: a key id that exists is never overwritten"
    );
    let unknown = ApiKey::generate().hash().key_id();
    assert_eq!(
        store.get_key(&unknown).await.ok().flatten(),
        None,
        "get_key: an unknown id is None"
    );
    assert!(
        matches!(
            store.revoke_key(&record.id, NOW.plus(ms(5))).await,
            Ok(true)
        ),
        "revoke_key: a known key is revoked"
    );
    assert!(
        matches!(
            store.revoke_key(&record.id, NOW.plus(ms(9))).await,
            Ok(true)
        ),
        "revoke_key: revoking again succeeds"
    );
    assert_eq!(
        store
            .get_key(&record.id)
            .await
            .ok()
            .flatten()
            .and_then(|k| k.record.revoked_at),
        Some(NOW.plus(ms(5))),
        "revoke_key: the first revocation time is kept"
    );
    assert!(
        matches!(store.revoke_key(&unknown, NOW).await, Ok(false)),
        "revoke_key: an unknown key is not created by revoking it"
    );
    assert_eq!(
        store.get_key(&unknown).await.ok().flatten(),
        None,
        "revoke_key: revoking an unknown key stores nothing"
    );
}

/// The limits a stored key carries (`None`: no such key).
async fn carried<S: AccountStore>(store: &S, key: &KeyRecord) -> Option<CarriedLimits> {
    store
        .get_key(&key.id)
        .await
        .unwrap_or_else(|e| panic!("get_key: {e}"))
        .map(|k| k.limits)
}

pub(super) async fn keys_carry_their_tenants_limits<S: AccountStore>(store: &S) {
    let tenant = fresh_tenant();
    let update = |rate: Option<u32>, budget: Option<Option<u64>>| {
        LimitsUpdate::new(tenant.clone(), rate, budget).unwrap_or_else(|e| panic!("{e}"))
    };
    let limits = |rate: u32, budget: Option<u64>| {
        TenantLimits::new(tenant.clone(), rate, budget).unwrap_or_else(|e| panic!("{e}"))
    };
    let create = |record: KeyRecord| async move {
        store
            .create_key(&record)
            .await
            .unwrap_or_else(|e| panic!("create_key: {e}"));
        record
    };
    let early = create(KeyRecord::new(&ApiKey::generate(), tenant.clone(), NOW)).await;
    store
        .update_tenant(&update(Some(7), Some(Some(5))))
        .await
        .unwrap_or_else(|e| panic!("update_tenant: {e}"));
    assert_eq!(
        carried(store, &early).await,
        Some(CarriedLimits::Carried(Some(limits(7, Some(5))))),
        "update_tenant: a key made before the tenant had limits carries them once it has"
    );
    let late = create(KeyRecord::new(&ApiKey::generate(), tenant.clone(), NOW)).await;
    assert_eq!(
        carried(store, &late).await,
        Some(CarriedLimits::Carried(Some(limits(7, Some(5))))),
        "create_key: a new key carries its tenant's limits as they are"
    );
    store
        .update_tenant(&update(Some(9), Some(None)))
        .await
        .unwrap_or_else(|e| panic!("update_tenant: {e}"));
    for key in [&early, &late] {
        assert_eq!(
            carried(store, key).await,
            Some(CarriedLimits::Carried(Some(limits(9, None)))),
            "update_tenant: every key of the tenant carries the change, a removed budget too"
        );
    }
    // Another tenant's change reaches none of them.
    let other = fresh_tenant();
    let stranger = create(KeyRecord::new(&ApiKey::generate(), other.clone(), NOW)).await;
    store
        .update_tenant(
            &LimitsUpdate::new(other.clone(), Some(3), Some(Some(1)))
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .await
        .unwrap_or_else(|e| panic!("update_tenant: {e}"));
    assert_eq!(
        carried(store, &late).await,
        Some(CarriedLimits::Carried(Some(limits(9, None)))),
        "update_tenant: another tenant's keys are untouched"
    );
    assert_eq!(
        carried(store, &stranger).await,
        Some(CarriedLimits::Carried(Some(
            TenantLimits::new(other, 3, Some(1)).unwrap_or_else(|e| panic!("{e}"))
        ))),
        "update_tenant: the other tenant's key carries its own"
    );
    // A revoked key is still revoked whatever it carries.
    store
        .revoke_key(&late.id, NOW)
        .await
        .unwrap_or_else(|e| panic!("revoke_key: {e}"));
    store
        .update_tenant(&update(Some(11), None))
        .await
        .unwrap_or_else(|e| panic!("update_tenant: {e}"));
    let revoked = store
        .get_key(&late.id)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("the revoked key is still stored"));
    assert_eq!(
        revoked.record.revoked_at,
        Some(NOW),
        "update_tenant: carrying limits never unrevokes a key"
    );
}

/// Keys created while the tenant's limits change all end up carrying the last change,
/// whatever order the two kinds of write interleave in.
pub(super) async fn keys_created_during_limit_changes_carry_the_last<S: AccountStore>(store: &S) {
    let tenant = fresh_tenant();
    let keys: Vec<KeyRecord> = (0..6)
        .map(|_| KeyRecord::new(&ApiKey::generate(), tenant.clone(), NOW))
        .collect();
    let creates = keys.iter().map(|key| async move {
        store
            .create_key(key)
            .await
            .unwrap_or_else(|e| panic!("create_key: {e}"));
    });
    let changes = (1..=6u32).map(|rate| {
        let change =
            LimitsUpdate::new(tenant.clone(), Some(rate), None).unwrap_or_else(|e| panic!("{e}"));
        async move {
            store
                .update_tenant(&change)
                .await
                .unwrap_or_else(|e| panic!("update_tenant: {e}"));
        }
    });
    let creates = futures_util::future::join_all(creates);
    let changes = futures_util::future::join_all(changes);
    futures_util::future::join(creates, changes).await;
    let last = store
        .get_tenant(&tenant)
        .await
        .unwrap_or_else(|e| panic!("get_tenant: {e}"));
    assert!(last.is_some(), "the changes stored limits");
    for key in &keys {
        assert_eq!(
            carried(store, key).await,
            Some(CarriedLimits::Carried(last.clone())),
            "create_key racing update_tenant: every key carries the tenant's last limits"
        );
    }
}

pub(super) async fn tenant_limits_are_set_and_replaced<S: AccountStore>(store: &S) {
    let tenant = fresh_tenant();
    assert_eq!(
        store.get_tenant(&tenant).await.ok().flatten(),
        None,
        "get_tenant: an unknown tenant is None"
    );
    let update = |rate, budget| {
        let change =
            LimitsUpdate::new(tenant.clone(), rate, budget).unwrap_or_else(|e| panic!("{e}"));
        async move {
            store
                .update_tenant(&change)
                .await
                .unwrap_or_else(|e| panic!("update_tenant: {e}"))
        }
    };
    let limits = |rate, budget| TenantLimits {
        tenant: tenant.clone(),
        rate_per_minute: rate,
        monthly_budget: budget,
    };
    assert_eq!(
        update(None, None).await,
        limits(DEFAULT_RATE_PER_MINUTE, None),
        "update_tenant: a new tenant gets the default rate and no budget"
    );
    assert_eq!(
        update(None, Some(Some(7_500_000))).await,
        limits(DEFAULT_RATE_PER_MINUTE, Some(7_500_000)),
        "update_tenant: a budget alone leaves the rate"
    );
    assert_eq!(
        update(Some(42), None).await,
        limits(42, Some(7_500_000)),
        "update_tenant: a rate alone leaves the budget"
    );
    assert_eq!(
        store.get_tenant(&tenant).await.ok().flatten(),
        Some(limits(42, Some(7_500_000))),
        "get_tenant: limits read back as updated"
    );
    assert_eq!(
        update(None, Some(None)).await,
        limits(42, None),
        "update_tenant: a budget can be removed"
    );
    // Two changes at once, one of the rate and one of the budget: both hold.
    futures_util::future::join(update(Some(9), None), update(None, Some(Some(1_000)))).await;
    assert_eq!(
        store.get_tenant(&tenant).await.ok().flatten(),
        Some(limits(9, Some(1_000))),
        "update_tenant: concurrent changes of different limits are both kept"
    );
}

pub(super) async fn rate_windows_admit_exactly_the_limit<S: AccountStore>(store: &S) {
    let tenant = fresh_tenant();
    let window = RateWindow::at(&tenant, NOW);
    let next = RateWindow::at(&tenant, window.ends_at);
    let mut admitted = 0;
    for _ in 0..5 {
        if store
            .count_request(&window, 3)
            .await
            .unwrap_or_else(|e| panic!("count_request: {e}"))
        {
            admitted += 1;
        }
    }
    assert_eq!(
        admitted, 3,
        "count_request: a window admits exactly its limit"
    );
    assert!(
        matches!(store.count_request(&next, 3).await, Ok(true)),
        "count_request: the next window starts empty"
    );
    assert!(
        matches!(store.count_request(&window, 4).await, Ok(true)),
        "count_request: a higher limit admits more in the same window"
    );
    // Many at once: the counter is one conditional update, so exactly the limit gets in.
    let burst = RateWindow::at(&fresh_tenant(), NOW);
    let results =
        futures_util::future::join_all((0..24).map(|_| store.count_request(&burst, 7))).await;
    let admitted = results
        .into_iter()
        .filter(|r| matches!(r, Ok(true)))
        .count();
    assert_eq!(
        admitted, 7,
        "count_request: concurrent requests never exceed the limit"
    );
}

pub(super) async fn budgets_reserve_atomically_and_settle_to_the_actual_cost<S: AccountStore>(
    store: &S,
) {
    let tenant = fresh_tenant();
    let month = "2026-11";
    let expires_at = NOW.unix_seconds() + 86_400;
    let usage = |expected: Usage, why: &'static str| {
        let tenant = tenant.clone();
        async move {
            assert_eq!(
                store
                    .usage(&tenant, month)
                    .await
                    .unwrap_or_else(|e| panic!("usage: {e}")),
                expected,
                "{why}"
            );
        }
    };
    usage(Usage::default(), "usage: nothing recorded is zero").await;
    let reserve = |estimate, budget| {
        let tenant = tenant.clone();
        let reservation = Reservation {
            estimate,
            images: 2,
            budget,
            expires_at,
        };
        async move {
            store
                .reserve_cost(&tenant, month, &reservation)
                .await
                .unwrap_or_else(|e| panic!("reserve_cost: {e}"))
        }
    };
    assert!(
        reserve(4_000, Some(10_000)).await,
        "reserve_cost: within the budget"
    );
    assert!(
        reserve(4_000, Some(10_000)).await,
        "reserve_cost: still within"
    );
    assert!(
        !reserve(4_000, Some(10_000)).await,
        "reserve_cost: refused when it would pass the budget"
    );
    assert!(
        reserve(2_000, Some(10_000)).await,
        "reserve_cost: exactly reaching the budget is allowed"
    );
    assert!(
        !reserve(20_000, Some(10_000)).await,
        "reserve_cost: an estimate above the whole budget is refused"
    );
    usage(
        Usage {
            predictions: 3,
            images: 6,
            committed: 10_000,
        },
        "reserve_cost: refusals change nothing",
    )
    .await;
    let settle = |settlement: CostSettlement| {
        let tenant = tenant.clone();
        async move {
            store
                .settle_cost(&tenant, month, &settlement)
                .await
                .unwrap_or_else(|e| panic!("settle_cost: {e}"))
        }
    };
    settle(CostSettlement {
        estimate: 4_000,
        actual: 1_000,
        requested_images: 2,
        stored_images: 1,
        created: true,
    })
    .await;
    settle(CostSettlement {
        estimate: 2_000,
        actual: 0,
        requested_images: 2,
        stored_images: 0,
        created: false,
    })
    .await;
    usage(
        Usage {
            predictions: 2,
            images: 3,
            committed: 5_000,
        },
        "settle_cost: estimates are replaced by actual costs (subtracting too); a \
         never-created prediction is uncounted",
    )
    .await;
    assert!(
        reserve(u64::MAX / 4, None).await,
        "reserve_cost: no budget, no limit"
    );
    // Concurrent reservations against one budget: never more than fits.
    let tight = fresh_tenant();
    let reservation = Reservation {
        estimate: 1_000,
        images: 1,
        budget: Some(5_000),
        expires_at,
    };
    let results = futures_util::future::join_all(
        (0..12).map(|_| store.reserve_cost(&tight, month, &reservation)),
    )
    .await;
    let reserved = results
        .into_iter()
        .filter(|r| matches!(r, Ok(true)))
        .count();
    assert_eq!(
        reserved, 5,
        "reserve_cost: concurrent reservations never pass the budget"
    );
}
