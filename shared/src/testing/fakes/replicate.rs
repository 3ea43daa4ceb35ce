//! Replicate in memory.

use super::*;

/// A create call as the fake received it.
#[derive(Debug, Clone)]
pub struct CreatedCall {
    pub model: ModelRef,
    pub input: Map<String, Value>,
    pub webhook: Option<WebhookTarget>,
    pub deadline: Deadline,
}

/// Replicate, in memory: creates answer `starting` predictions with ids `rep-1`, `rep-2`, …
/// stamped with the real time; tests set what `get` answers and queue errors. `list`
/// pages through every prediction it holds, `LIST_PAGE_SIZE` at a time.
#[derive(Default)]
pub struct FakeReplicate {
    cancel_calls: Mutex<usize>,
    created: Mutex<Vec<CreatedCall>>,
    predictions: Mutex<HashMap<String, Prediction>>,
    create_errors: Mutex<VecDeque<ReplicateError>>,
    lost_answers: Mutex<usize>,
    get_errors: Mutex<HashMap<String, VecDeque<ReplicateError>>>,
    gets: Mutex<usize>,
    lists: Mutex<usize>,
    secret: Mutex<Option<SigningSecret>>,
    secret_calls: Mutex<usize>,
    /// Why the client cannot be set up (its token unreadable), if it cannot.
    setup_error: Mutex<Option<String>>,
}

/// Replicate's page size for `GET /predictions`.
const LIST_PAGE_SIZE: usize = 100;

impl FakeReplicate {
    /// From now on the client cannot be set up: every call fails before reaching Replicate,
    /// as when the token cannot be read.
    pub fn fail_setup(&self, reason: &str) {
        *lock(&self.setup_error) = Some(reason.to_owned());
    }

    fn set_up(&self) -> Result<(), ReplicateError> {
        match lock(&self.setup_error).clone() {
            Some(cause) => Err(ReplicateError::Transport { cause }),
            None => Ok(()),
        }
    }

    pub fn created(&self) -> Vec<CreatedCall> {
        lock(&self.created).clone()
    }

    pub fn get_calls(&self) -> usize {
        *lock(&self.gets)
    }

    /// Calls of `webhook_secret`.
    pub fn cancel_calls(&self) -> usize {
        *lock(&self.cancel_calls)
    }

    pub fn secret_calls(&self) -> usize {
        *lock(&self.secret_calls)
    }

    /// Makes the next `get_prediction(id)` fail with `err` (errors queue up per id).
    pub fn fail_next_get(&self, id: &str, err: ReplicateError) {
        lock(&self.get_errors)
            .entry(id.to_owned())
            .or_default()
            .push_back(err);
    }

    /// Calls of `list_predictions`, pages included.
    pub fn list_calls(&self) -> usize {
        *lock(&self.lists)
    }

    /// Makes the next create fail without creating anything (errors queue up in order).
    pub fn fail_next_create(&self, err: ReplicateError) {
        lock(&self.create_errors).push_back(err);
    }

    /// Makes the next create succeed at Replicate but lose its answer: the prediction is
    /// created (and `created`, get and list see it) while the caller gets
    /// `CreateOutcomeUnknown`, as after a gateway error or a timeout. Calls add up.
    pub fn lose_next_create_answer(&self) {
        *lock(&self.lost_answers) += 1;
    }

    fn take_lost_answer(&self) -> bool {
        let mut lost = lock(&self.lost_answers);
        let take = *lost > 0;
        *lost = lost.saturating_sub(1);
        take
    }

    /// The stored predictions created in [after, before), newest first (ties: latest
    /// `rep-N` first), as the list shows them.
    fn listed(&self, after: Timestamp, before: Timestamp) -> Vec<Prediction> {
        let mut listed: Vec<(Timestamp, u64, Prediction)> = lock(&self.predictions)
            .values()
            .filter_map(|p| {
                let created = p.created_at.as_deref().and_then(Timestamp::parse_rfc3339)?;
                (after..before)
                    .contains(&created)
                    .then(|| (created, creation_number(&p.id), p.clone()))
            })
            .collect();
        listed.sort_by_key(|(created, number, _)| std::cmp::Reverse((*created, *number)));
        listed.into_iter().map(|(_, _, p)| p).collect()
    }

    /// Sets what `get_prediction` answers for `prediction.id`.
    pub fn set_prediction(&self, prediction: Prediction) {
        lock(&self.predictions).insert(prediction.id.clone(), prediction);
    }

    /// Makes `get_prediction` answer 404 for `id`, as for a prediction Replicate deleted.
    pub fn forget(&self, id: &str) {
        lock(&self.predictions).remove(id);
    }

    pub fn set_secret(&self, secret: SigningSecret) {
        *lock(&self.secret) = Some(secret);
    }

    pub fn prediction(id: &str, status: PredictionStatus, output: Vec<String>) -> Prediction {
        Prediction {
            id: id.to_owned(),
            model: String::new(),
            version: None,
            input: Map::new(),
            output,
            error: None,
            logs: None,
            status,
            data_removed: false,
            created_at: Some("2025-01-01T00:00:00.000Z".to_owned()),
            started_at: None,
            completed_at: None,
            urls: Default::default(),
            metrics: Default::default(),
            deadline: None,
        }
    }
}

/// `N` of a fake id `rep-N` (0 for other ids): the order creates happened in.
fn creation_number(id: &str) -> u64 {
    id.strip_prefix("rep-")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The fake's `next` links: `page:2`, `page:3`, …
fn list_page_number(page: Option<&str>) -> Result<usize, ReplicateError> {
    let Some(link) = page else { return Ok(1) };
    link.strip_prefix("page:")
        .and_then(|n| n.parse().ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| ReplicateError::InvalidResponse {
            status: 200,
            message: format!("not a next link of this fake: {link}"),
        })
}

impl ReplicateApi for FakeReplicate {
    async fn ready(&self) -> Result<(), ReplicateError> {
        self.set_up()
    }

    async fn create_prediction(
        &self,
        model: &ModelRef,
        input: &Map<String, Value>,
        webhook: Option<&WebhookTarget>,
        deadline: Deadline,
    ) -> Result<Prediction, ReplicateError> {
        self.set_up()?;
        if let Some(err) = lock(&self.create_errors).pop_front() {
            return Err(err);
        }
        let mut created = lock(&self.created);
        created.push(CreatedCall {
            model: model.clone(),
            input: input.clone(),
            webhook: webhook.cloned(),
            deadline,
        });
        let mut prediction = Self::prediction(
            &format!("rep-{}", created.len()),
            PredictionStatus::Starting,
            vec![],
        );
        prediction.model = model.path();
        prediction.version = model.version.as_ref().map(|v| v.to_string());
        prediction.input = input.clone();
        // The real time, so a list over a window around "now" finds it.
        prediction.created_at = Some(Timestamp::now().rfc3339());
        lock(&self.predictions).insert(prediction.id.clone(), prediction.clone());
        if self.take_lost_answer() {
            return Err(ReplicateError::CreateOutcomeUnknown {
                reason: "the answer was lost (simulated)".to_owned(),
            });
        }
        Ok(prediction)
    }

    async fn list_predictions(
        &self,
        created_after: std::time::SystemTime,
        created_before: std::time::SystemTime,
        page: Option<&str>,
    ) -> Result<crate::domain::replicate::PredictionPage, ReplicateError> {
        *lock(&self.lists) += 1;
        let number = list_page_number(page)?;
        // Like the client's query, the end is rounded up to a whole millisecond.
        let listed = self.listed(
            Timestamp::from_system(created_after),
            Timestamp::from_system(created_before + std::time::Duration::from_nanos(999_999)),
        );
        let start = (number - 1).saturating_mul(LIST_PAGE_SIZE);
        let results: Vec<Prediction> = listed
            .iter()
            .skip(start)
            .take(LIST_PAGE_SIZE)
            .cloned()
            .collect();
        let more = listed.len() > start.saturating_add(LIST_PAGE_SIZE);
        Ok(crate::domain::replicate::PredictionPage {
            results,
            next: more.then(|| format!("page:{}", number + 1)),
        })
    }

    async fn get_prediction(&self, id: &str) -> Result<Prediction, ReplicateError> {
        *lock(&self.gets) += 1;
        if let Some(err) = lock(&self.get_errors)
            .get_mut(id)
            .and_then(VecDeque::pop_front)
        {
            return Err(err);
        }
        lock(&self.predictions)
            .get(id)
            .cloned()
            .ok_or(ReplicateError::Rejected {
                status: 404,
                problem: Default::default(),
            })
    }

    async fn cancel_prediction(&self, id: &str) -> Result<Prediction, ReplicateError> {
        *lock(&self.cancel_calls) += 1;
        let mut predictions = lock(&self.predictions);
        let prediction = predictions.get_mut(id).ok_or(ReplicateError::Rejected {
            status: 404,
            problem: Default::default(),
        })?;
        if !prediction.status.is_terminal() {
            prediction.status = PredictionStatus::Canceled;
        }
        Ok(prediction.clone())
    }

    async fn webhook_secret(&self) -> Result<SigningSecret, ReplicateError> {
        *lock(&self.secret_calls) += 1;
        lock(&self.secret).clone().ok_or(ReplicateError::Rejected {
            status: 404,
            problem: Default::default(),
        })
    }

    async fn get_model(&self, owner: &str, name: &str) -> Result<Model, ReplicateError> {
        Ok(Model {
            owner: owner.to_owned(),
            name: name.to_owned(),
            is_official: false,
            visibility: Some("public".to_owned()),
            latest_version: None,
        })
    }
}

#[cfg(test)]
mod fake_replicate_tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn model() -> ModelRef {
        ModelRef::parse("black-forest-labs/flux-schnell").unwrap()
    }

    #[tokio::test]
    async fn a_lost_answer_still_creates_and_the_list_pages_newest_first() {
        let fake = FakeReplicate::default();
        let since = SystemTime::now() - Duration::from_secs(1);
        for _ in 0..100 {
            fake.create_prediction(&model(), &Map::new(), None, Deadline::MAX)
                .await
                .unwrap();
        }
        fake.lose_next_create_answer();
        let lost = fake
            .create_prediction(&model(), &Map::new(), None, Deadline::MAX)
            .await;
        assert!(matches!(
            lost,
            Err(ReplicateError::CreateOutcomeUnknown { .. })
        ));
        assert_eq!(fake.created().len(), 101);
        assert!(fake.get_prediction("rep-101").await.is_ok());
        fake.set_prediction(FakeReplicate::prediction(
            "old",
            PredictionStatus::Starting,
            vec![],
        ));

        let until = SystemTime::now();
        let first = fake.list_predictions(since, until, None).await.unwrap();
        assert_eq!(first.results.len(), 100);
        assert_eq!(first.results[0].id, "rep-101", "newest first");
        let next = first.next.expect("a second page");
        let last = fake
            .list_predictions(since, until, Some(&next))
            .await
            .unwrap();
        let ids: Vec<&str> = last.results.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            (ids, last.next),
            (vec!["rep-1"], None),
            "2025's `old` is outside"
        );
        assert!(
            fake.list_predictions(since, until, Some("https://elsewhere/"))
                .await
                .is_err()
        );
        assert_eq!(fake.list_calls(), 3);
    }
}
