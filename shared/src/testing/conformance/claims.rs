//! Claims: one holder, replaced only with the token, settled and released only by their
//! guard, and a settlement never shortens a lease.

use super::*;

pub(super) async fn claims_have_one_holder<S: RecordStore>(store: &S) {
    let key = claim_key();
    let first = Claim {
        prediction_id: Some(PredictionId::generate()),
        request_hash: Some(format!("hash-{}", unique())),
        from_cache: true,
        ..claim(&key, "first", NOW.plus(ms(1_000)))
    };
    let second = Claim {
        prediction_id: Some(PredictionId::generate()),
        request_hash: Some("another hash".to_owned()),
        ..claim(&key, "second", NOW.plus(ms(5_000)))
    };
    assert_eq!(
        store.try_claim(&first).await.expect("try_claim"),
        ClaimOutcome::Claimed,
        "try_claim: the first claim of a free key wins"
    );
    assert_eq!(
        store.try_claim(&second).await.expect("try_claim"),
        ClaimOutcome::HeldBy(first.clone()),
        "try_claim: a second claim gets the holder's claim exactly as stored (every field)"
    );
    // An ended lease is not taken over by a claim: only the holder's state (its prediction
    // record) can say whether taking over is safe, so takeover is `replace_claim` with the
    // holder's token, decided by the caller.
    let expired_second = Claim {
        lease_until: NOW.plus(ms(10_000)),
        ..second.clone()
    };
    assert_eq!(
        store.try_claim(&expired_second).await.expect("try_claim"),
        ClaimOutcome::HeldBy(first.clone()),
        "try_claim: a held key is never taken, whatever the holder's lease"
    );
    assert!(
        store
            .replace_claim(&second, &first.token)
            .await
            .expect("replace_claim"),
        "replace_claim: the holder's token takes over"
    );
    assert_eq!(
        peek(store, &key).await,
        Some(second.clone()),
        "replace_claim: the taker's claim replaced the old one"
    );

    // A claim with nothing optional set comes back the same: no field is invented.
    let key = claim_key();
    let bare = claim(&key, "bare", NOW.plus(ms(1_000)));
    assert_eq!(
        store.try_claim(&bare).await.expect("try_claim"),
        ClaimOutcome::Claimed
    );
    assert_eq!(
        store
            .try_claim(&claim(&key, "other", NOW.plus(ms(2_000))))
            .await
            .expect("try_claim"),
        ClaimOutcome::HeldBy(bare),
        "try_claim: a holder without prediction id, request hash or cache flag comes back as stored"
    );
}

pub(super) async fn replace_claim_needs_the_token<S: RecordStore>(store: &S) {
    let key = claim_key();
    let held = claim(&key, "holder", NOW.plus(ms(1_000)));
    assert_eq!(
        store.try_claim(&held).await.expect("try_claim"),
        ClaimOutcome::Claimed
    );
    let replacement = Claim {
        prediction_id: Some(PredictionId::generate()),
        request_hash: Some("h".to_owned()),
        from_cache: true,
        ..claim(&key, "replacement", NOW.plus(ms(2_000)))
    };
    assert!(
        !store
            .replace_claim(&replacement, "not-the-holder")
            .await
            .expect("replace_claim"),
        "replace_claim: refused without the holder's token"
    );
    assert_eq!(
        peek(store, &key).await,
        Some(held),
        "replace_claim: a refused replace changes nothing"
    );
    assert!(
        store
            .replace_claim(&replacement, "holder")
            .await
            .expect("replace_claim"),
        "replace_claim: applies with the holder's token"
    );
    assert_eq!(
        peek(store, &key).await,
        Some(replacement.clone()),
        "replace_claim: the whole claim is replaced"
    );
    assert!(
        !store
            .replace_claim(&claim(&key, "again", NOW), "holder")
            .await
            .expect("replace_claim"),
        "replace_claim: the old token no longer holds the claim"
    );

    let missing = claim_key();
    assert!(
        !store
            .replace_claim(&claim(&missing, "t", NOW.plus(ms(1_000))), "t")
            .await
            .expect("replace_claim"),
        "replace_claim: nothing to replace at a free key"
    );
    assert_eq!(
        peek(store, &missing).await,
        None,
        "replace_claim: a refused replace does not create a claim"
    );
}

pub(super) async fn settle_claim_needs_the_guard_and_never_shortens<S: RecordStore>(store: &S) {
    let key = claim_key();
    let held = Claim {
        request_hash: Some("request".to_owned()),
        ..claim(&key, "holder", NOW.plus(ms(1_000)))
    };
    assert_eq!(
        store.try_claim(&held).await.expect("try_claim"),
        ClaimOutcome::Claimed
    );
    let worker = PredictionId::generate();
    let settle = |lease_until, from_cache, prediction_id| Settlement {
        prediction_id,
        lease_until,
        from_cache,
    };

    assert!(
        !store
            .settle_claim(
                &key,
                ClaimGuard::Token("stranger"),
                &settle(NOW.plus(ms(5_000)), true, &worker)
            )
            .await
            .expect("settle_claim"),
        "settle_claim: refused for another token"
    );
    assert!(
        !store
            .settle_claim(
                &key,
                ClaimGuard::Prediction(&worker),
                &settle(NOW.plus(ms(5_000)), true, &worker)
            )
            .await
            .expect("settle_claim"),
        "settle_claim: refused by prediction when the claim names no prediction"
    );
    assert_eq!(
        peek(store, &key).await,
        Some(held.clone()),
        "settle_claim: refused settles change nothing"
    );

    assert!(
        store
            .settle_claim(
                &key,
                ClaimGuard::Token("holder"),
                &settle(NOW.plus(ms(5_000)), true, &worker)
            )
            .await
            .expect("settle_claim"),
        "settle_claim: applies with the holder's token and a longer lease"
    );
    let settled = Claim {
        prediction_id: Some(worker.clone()),
        lease_until: NOW.plus(ms(5_000)),
        from_cache: true,
        ..held.clone()
    };
    assert_eq!(
        peek(store, &key).await,
        Some(settled.clone()),
        "settle_claim: sets prediction id, lease and cache flag; keeps token, request hash and expiry"
    );

    let other = PredictionId::generate();
    assert!(
        !store
            .settle_claim(
                &key,
                ClaimGuard::Prediction(&worker),
                &settle(NOW.plus(ms(4_999)), false, &other)
            )
            .await
            .expect("settle_claim"),
        "settle_claim: never shortens a longer lease"
    );
    assert_eq!(
        peek(store, &key).await,
        Some(settled.clone()),
        "settle_claim: a settle that would shorten the lease changes nothing"
    );

    assert!(
        store
            .settle_claim(
                &key,
                ClaimGuard::Prediction(&worker),
                &settle(NOW.plus(ms(5_000)), false, &other)
            )
            .await
            .expect("settle_claim"),
        "settle_claim: an equal lease is not a shorter one (`lease_until <= new lease`)"
    );
    let resettled = Claim {
        prediction_id: Some(other.clone()),
        from_cache: false,
        ..settled
    };
    assert_eq!(peek(store, &key).await, Some(resettled.clone()));
    assert!(
        !store
            .settle_claim(
                &key,
                ClaimGuard::Prediction(&worker),
                &settle(NOW.plus(ms(9_000)), true, &worker)
            )
            .await
            .expect("settle_claim"),
        "settle_claim: the prediction the claim no longer names does not hold it"
    );
    assert!(
        store
            .settle_claim(
                &key,
                ClaimGuard::Prediction(&other),
                &settle(NOW.plus(ms(9_000)), true, &other)
            )
            .await
            .expect("settle_claim"),
        "settle_claim: the prediction the claim names holds it"
    );
    assert_eq!(
        peek(store, &key).await,
        Some(Claim {
            lease_until: NOW.plus(ms(9_000)),
            from_cache: true,
            ..resettled
        })
    );

    let missing = claim_key();
    assert!(
        !store
            .settle_claim(
                &missing,
                ClaimGuard::Token("holder"),
                &settle(NOW.plus(ms(5_000)), false, &worker)
            )
            .await
            .expect("settle_claim"),
        "settle_claim: nothing to settle at a free key"
    );
    assert_eq!(
        peek(store, &missing).await,
        None,
        "settle_claim: a refused settle does not create a claim"
    );
}

pub(super) async fn release_claim_needs_the_guard<S: RecordStore>(store: &S) {
    let key = claim_key();
    let worker = PredictionId::generate();
    let held = Claim {
        prediction_id: Some(worker.clone()),
        ..claim(&key, "holder", NOW.plus(ms(1_000)))
    };
    assert_eq!(
        store.try_claim(&held).await.expect("try_claim"),
        ClaimOutcome::Claimed
    );
    assert!(
        !store
            .release_claim(&key, ClaimGuard::Token("stranger"))
            .await
            .expect("release_claim"),
        "release_claim: refused for another token"
    );
    assert!(
        !store
            .release_claim(&key, ClaimGuard::Prediction(&PredictionId::generate()))
            .await
            .expect("release_claim"),
        "release_claim: refused for another prediction"
    );
    assert_eq!(
        peek(store, &key).await,
        Some(held.clone()),
        "release_claim: refused releases change nothing"
    );
    assert!(
        store
            .release_claim(&key, ClaimGuard::Prediction(&worker))
            .await
            .expect("release_claim"),
        "release_claim: the prediction the claim names may release it"
    );
    assert!(
        !store
            .release_claim(&key, ClaimGuard::Prediction(&worker))
            .await
            .expect("release_claim"),
        "release_claim: nothing left to release"
    );
    let next = claim(&key, "next", NOW.plus(ms(1_000)));
    assert_eq!(
        store.try_claim(&next).await.expect("try_claim"),
        ClaimOutcome::Claimed,
        "release_claim: a released key can be claimed at once, though the old lease has not ended"
    );
    assert!(
        store
            .release_claim(&key, ClaimGuard::Token("next"))
            .await
            .expect("release_claim"),
        "release_claim: the holder's token may release it"
    );
    assert_eq!(
        peek(store, &key).await,
        None,
        "release_claim: the claim is gone"
    );
}
