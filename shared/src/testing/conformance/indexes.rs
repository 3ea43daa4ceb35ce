//! The indexes: a tenant's predictions newest first, the open ones oldest first, each
//! paged without gaps or repeats; and an ended record stays open until its callback is
//! queued.

use super::*;

/// Whether `list_open` lists `id` (created before `created_before`).
pub(super) async fn is_listed_open<S: RecordStore>(
    store: &S,
    id: &PredictionId,
    created_before: Timestamp,
) -> bool {
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_open(open_shard(id), created_before, cursor.as_deref(), 100)
            .await
            .expect("list_open");
        if page.entries.iter().any(|e| e.id == *id) {
            return true;
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return false,
        }
    }
}

/// An ended record that still owes its `completed` callback stays in the open index until
/// the callback is noted as queued; attempts count, and set the status only of the event
/// the record shows.
pub(super) async fn callbacks_keep_an_ended_record_open_until_queued<S: RecordStore>(store: &S) {
    let created_at = NOW.minus(ms(3_600_000));
    let record = PredictionRecord {
        callback: Some(CallbackState::new(CallbackTarget {
            url: "https://hooks.example.com/in".to_owned(),
            events: vec![CallbackEvent::Start, CallbackEvent::Completed],
        })),
        ..bare_record(PredictionId::generate(), created_at)
    };
    insert(store, &record).await;
    assert!(
        store
            .callback_queued(&record.id, CallbackEvent::Start)
            .await
            .expect("callback_queued"),
        "callback_queued: the first note of an event changes the record"
    );
    assert!(
        !store
            .callback_queued(&record.id, CallbackEvent::Start)
            .await
            .expect("callback_queued"),
        "callback_queued: an event already noted changes nothing"
    );
    let ended = Advance {
        keep_open: true,
        completed_at: Some(created_at.plus(ms(5))),
        ..advance_to(PredictionStatus::Failed)
    };
    assert!(store.advance(&record.id, &ended).await.expect("advance"));
    assert!(
        is_listed_open(store, &record.id, created_at.plus(ms(1))).await,
        "advance: a terminal advance with keep_open leaves the record in the open index"
    );
    store
        .callback_attempted(&record.id, CallbackEvent::Start, CallbackStatus::Delivered)
        .await
        .expect("callback_attempted");
    assert!(
        store
            .callback_queued(&record.id, CallbackEvent::Completed)
            .await
            .expect("callback_queued")
    );
    assert!(
        !is_listed_open(store, &record.id, created_at.plus(ms(1))).await,
        "callback_queued: noting `completed` takes the record out of the open index"
    );
    // A late attempt of `start` counts, but the status is `completed`'s.
    store
        .callback_attempted(&record.id, CallbackEvent::Start, CallbackStatus::Delivered)
        .await
        .expect("callback_attempted");
    let callback = stored(store, &record.id)
        .await
        .callback
        .expect("a callback");
    assert_eq!(
        (callback.event, callback.status, callback.attempts),
        (
            Some(CallbackEvent::Completed),
            Some(CallbackStatus::Pending),
            2
        ),
        "callback_attempted: attempts of every event count; only the shown event's set the status"
    );
    store
        .callback_attempted(&record.id, CallbackEvent::Completed, CallbackStatus::Failed)
        .await
        .expect("callback_attempted");
    let callback = stored(store, &record.id)
        .await
        .callback
        .expect("a callback");
    assert_eq!(
        (callback.status, callback.attempts),
        (Some(CallbackStatus::Failed), 3)
    );
    // An attempt that got in before the note: the note keeps its status, the record still
    // leaves the index, and a delivered event never goes back to pending.
    let quick = PredictionRecord {
        id: PredictionId::generate(),
        ..record.clone()
    };
    insert(store, &quick).await;
    assert!(store.advance(&quick.id, &ended).await.expect("advance"));
    store
        .callback_attempted(
            &quick.id,
            CallbackEvent::Completed,
            CallbackStatus::Delivered,
        )
        .await
        .expect("callback_attempted");
    assert!(
        !store
            .callback_queued(&quick.id, CallbackEvent::Completed)
            .await
            .expect("callback_queued"),
        "callback_queued: an event an attempt already set is not noted again"
    );
    assert!(
        !is_listed_open(store, &quick.id, created_at.plus(ms(1))).await,
        "callback_queued: the record leaves the open index even when already noted"
    );
    store
        .callback_attempted(&quick.id, CallbackEvent::Completed, CallbackStatus::Pending)
        .await
        .expect("callback_attempted");
    store
        .callback_attempted(&quick.id, CallbackEvent::Start, CallbackStatus::Failed)
        .await
        .expect("callback_attempted");
    let callback = stored(store, &quick.id).await.callback.expect("a callback");
    assert_eq!(
        (callback.event, callback.status, callback.attempts),
        (
            Some(CallbackEvent::Completed),
            Some(CallbackStatus::Delivered),
            3
        ),
        "callback_attempted: delivered stays delivered; a start never hides completed"
    );
    let plain = bare_record(PredictionId::generate(), created_at);
    insert(store, &plain).await;
    assert!(
        !store
            .callback_queued(&plain.id, CallbackEvent::Completed)
            .await
            .expect("callback_queued"),
        "callback_queued: a record without a callback is not changed"
    );
}

pub(super) async fn list_tenant_pages_newest_first_without_gaps_or_repeats<S: RecordStore>(
    store: &S,
) {
    let tenant = TenantId::parse(&format!("list-{}", unique())).unwrap_or_else(|e| panic!("{e}"));
    let other = TenantId::parse(&format!("list-{}", unique())).unwrap_or_else(|e| panic!("{e}"));
    let mut ours = Vec::new();
    // Ties in creation time too: paging must neither lose nor repeat either of a tie.
    for (offset, owner) in [
        (0, &tenant),
        (1, &tenant),
        (1, &tenant),
        (2, &other),
        (3, &tenant),
        (3, &tenant),
        (5, &tenant),
        (6, &other),
        (9, &tenant),
    ] {
        let record = PredictionRecord {
            tenant: Some(owner.clone()),
            status: if offset % 2 == 0 {
                PredictionStatus::Succeeded
            } else {
                PredictionStatus::Starting
            },
            ..bare_record(PredictionId::generate(), NOW.plus(ms(offset)))
        };
        insert(store, &record).await;
        if owner == &tenant {
            ours.push(record);
        }
    }
    for limit in [1, 2, 3, 100] {
        let mut seen: Vec<OpenEntry> = Vec::new();
        let mut cursor = None;
        for page_number in 0.. {
            assert!(
                page_number < 100,
                "list_tenant limit {limit}: the cursors never end"
            );
            let page = store
                .list_tenant(&tenant, cursor.as_ref(), limit)
                .await
                .unwrap_or_else(|e| panic!("list_tenant: {e}"));
            assert!(
                page.entries.len() <= limit,
                "list_tenant: a page over its limit"
            );
            let empty = page.entries.is_empty();
            seen.extend(page.entries);
            match page.next {
                None => break,
                Some(next) => {
                    assert!(
                        !empty,
                        "list_tenant limit {limit}: an empty page with a cursor"
                    );
                    cursor = Some(next);
                }
            }
        }
        for pair in seen.windows(2) {
            assert!(
                pair[0].created_at >= pair[1].created_at,
                "list_tenant limit {limit}: not newest first"
            );
        }
        let mut seen_ids: Vec<&PredictionId> = seen.iter().map(|e| &e.id).collect();
        let mut expected: Vec<&PredictionId> = ours.iter().map(|r| &r.id).collect();
        seen_ids.sort();
        expected.sort();
        assert_eq!(
            seen_ids, expected,
            "list_tenant limit {limit}: exactly the tenant's predictions, each once"
        );
        for entry in &seen {
            let record = ours.iter().find(|r| r.id == entry.id);
            assert_eq!(
                record.map(|r| r.created_at),
                Some(entry.created_at),
                "list_tenant: an entry carries its record's creation time"
            );
        }
    }
}

/// Follows `next` cursors from the first page to the end, checking every page.
pub(super) async fn walk_open<S: RecordStore>(
    store: &S,
    shard: &str,
    created_before: Timestamp,
    limit: usize,
) -> Vec<OpenEntry> {
    let mut seen: Vec<OpenEntry> = Vec::new();
    let mut cursor: Option<String> = None;
    for page_number in 0.. {
        assert!(
            page_number < 10_000,
            "list_open {shard} limit {limit}: the cursors never end"
        );
        let page = store
            .list_open(shard, created_before, cursor.as_deref(), limit)
            .await
            .unwrap_or_else(|e| panic!("list_open {shard} limit {limit}: {e}"));
        assert!(
            page.entries.len() <= limit,
            "list_open {shard}: a page of {} entries for limit {limit}",
            page.entries.len()
        );
        for entry in &page.entries {
            assert_eq!(
                open_shard(&entry.id),
                shard,
                "list_open {shard}: {} belongs to another shard",
                entry.id
            );
            assert!(
                entry.created_at < created_before,
                "list_open {shard}: {} was created at {:?}, not before {created_before:?}",
                entry.id,
                entry.created_at
            );
        }
        let empty = page.entries.is_empty();
        seen.extend(page.entries);
        match page.next {
            None => break,
            Some(next) => {
                // DynamoDB may end a full last page with a cursor; the page after it is
                // empty and has none. An empty page with a cursor would loop forever.
                assert!(
                    !empty,
                    "list_open {shard} limit {limit}: an empty page with a `next` cursor"
                );
                assert_ne!(
                    cursor.as_deref(),
                    Some(next.as_str()),
                    "list_open {shard} limit {limit}: the cursor did not move"
                );
                cursor = Some(next);
            }
        }
    }
    for pair in seen.windows(2) {
        assert!(
            pair[0].created_at <= pair[1].created_at,
            "list_open {shard} limit {limit}: not oldest first: {} ({:?}) before {} ({:?})",
            pair[0].id,
            pair[0].created_at,
            pair[1].id,
            pair[1].created_at
        );
    }
    let mut ids = HashSet::new();
    for entry in &seen {
        assert!(
            ids.insert(entry.id.clone()),
            "list_open {shard} limit {limit}: {} listed twice",
            entry.id
        );
    }
    seen
}

/// Of the entries a walk saw, those among `ours`, checked to be exactly `expected` (each
/// once, terminal records never) with their records' creation times.
pub(super) fn check_ours(
    seen: &[OpenEntry],
    ours: &HashMap<PredictionId, PredictionRecord>,
    expected: &[&PredictionId],
    context: &str,
) {
    let listed: Vec<&OpenEntry> = seen.iter().filter(|e| ours.contains_key(&e.id)).collect();
    for entry in &listed {
        assert_eq!(
            Some(entry.created_at),
            ours.get(&entry.id).map(|r| r.created_at),
            "{context}: an entry carries its record's creation time"
        );
    }
    let mut listed_ids: Vec<&PredictionId> = listed.iter().map(|e| &e.id).collect();
    let mut expected_ids = expected.to_vec();
    listed_ids.sort();
    expected_ids.sort();
    assert_eq!(
        listed_ids, expected_ids,
        "{context}: exactly the open records of the shard created before the bound, each once"
    );
}

pub(super) async fn list_open_pages_through_each_open_record_once<S: RecordStore>(store: &S) {
    const DIGIT: char = 'c';
    let shard = open_shard(&id_in_shard(DIGIT));
    // A window of creation times of this run's own (other records of the shard may be
    // listed too; they are checked for the page rules but not counted).
    let base = NOW.plus(ms(1_000_000 + fastrand::u64(0..1_000_000_000)));
    let before = base.plus(ms(10));
    let mut ours: HashMap<PredictionId, PredictionRecord> = HashMap::new();
    let mut open = Vec::new();
    // Two pairs share a creation time: paging must not lose or repeat either of a tie.
    for (offset, status) in [
        (0, PredictionStatus::Starting),
        (1, PredictionStatus::Processing),
        (1, PredictionStatus::Starting),
        (2, PredictionStatus::Starting),
        (3, PredictionStatus::Starting),
        (3, PredictionStatus::Processing),
        (9, PredictionStatus::Starting),
    ] {
        let record = PredictionRecord {
            status,
            ..bare_record(id_in_shard(DIGIT), base.plus(ms(offset)))
        };
        insert(store, &record).await;
        open.push(record.id.clone());
        ours.insert(record.id.clone(), record);
    }
    let not_listed = [
        // Terminal when stored.
        PredictionRecord {
            status: PredictionStatus::Succeeded,
            ..bare_record(id_in_shard(DIGIT), base.plus(ms(2)))
        },
        // Created at the bound, and after it.
        bare_record(id_in_shard(DIGIT), before),
        bare_record(id_in_shard(DIGIT), before.plus(ms(1))),
        // Another shard.
        bare_record(id_in_shard('d'), base.plus(ms(1))),
        bare_record(id_in_shard('0'), base.plus(ms(1))),
    ];
    for record in &not_listed {
        insert(store, record).await;
        ours.insert(record.id.clone(), record.clone());
    }
    // Advanced to terminal after it was listed.
    let ended = bare_record(id_in_shard(DIGIT), base.plus(ms(2)));
    insert(store, &ended).await;
    ours.insert(ended.id.clone(), ended.clone());
    let expected: Vec<&PredictionId> = open.iter().chain([&ended.id]).collect();
    for limit in [1, 2, 3, 4, 8, 100] {
        let seen = walk_open(store, shard, before, limit).await;
        check_ours(
            &seen,
            &ours,
            &expected,
            &format!("list_open {shard} limit {limit}"),
        );
    }

    // Moving forward but not to the end keeps a record listed; ending it removes it.
    assert!(
        store
            .advance(&open[0], &advance_to(PredictionStatus::Processing))
            .await
            .expect("advance")
    );
    if let Some(r) = ours.get_mut(&open[0]) {
        r.status = PredictionStatus::Processing;
    }
    assert!(
        store
            .advance(&ended.id, &Advance::failed("ended", base.plus(ms(5))))
            .await
            .expect("advance")
    );
    let expected: Vec<&PredictionId> = open.iter().collect();
    for limit in [1, 3, 100] {
        let seen = walk_open(store, shard, before, limit).await;
        check_ours(
            &seen,
            &ours,
            &expected,
            &format!("list_open {shard} limit {limit} after an advance to `failed`"),
        );
    }

    // A bound between creation times: strictly before it.
    let seen = walk_open(store, shard, base.plus(ms(3)), 2).await;
    let early: Vec<&PredictionId> = open
        .iter()
        .filter(|id| ours[*id].created_at < base.plus(ms(3)))
        .collect();
    check_ours(
        &seen,
        &ours,
        &early,
        &format!("list_open {shard} before base.plus(ms(3))"),
    );

    // The other shards and the legacy shard list none of this shard's records.
    for other in ["open#d", LEGACY_OPEN_SHARD] {
        let seen = walk_open(store, other, before, 100).await;
        assert!(
            seen.iter().all(|e| !open.contains(&e.id)),
            "list_open {other}: lists a record of {shard}"
        );
    }
    let seen = walk_open(store, "open#d", before, 100).await;
    assert!(
        seen.iter().any(|e| e.id == not_listed[3].id),
        "list_open open#d: its own open record is listed"
    );

    assert!(
        store
            .list_open(shard, before, Some("not a cursor"), 10)
            .await
            .is_err(),
        "list_open: a malformed cursor is an error"
    );
}
