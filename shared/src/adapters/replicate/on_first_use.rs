//! Replicate's client, set up on first use: in AWS its token is an SSM read, and only a
//! process that calls Replicate should pay for it (a fetch of an ended prediction, a copy,
//! a callback never do). The setup is bounded in time; a failed one is remembered for a few
//! seconds, so a flood of requests during an SSM outage does not become a flood of reads.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use super::ReplicateClient;
use crate::domain::replicate::{
    Deadline, Model, ModelRef, Prediction, PredictionPage, ReplicateError, WebhookTarget,
};
use crate::domain::signing::SigningSecret;
use crate::ports::replicate::ReplicateApi;

/// Longest a setup may take (an SSM read, in AWS).
const SETUP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a failed setup answers for itself before the next try.
const FAILURE_BACKOFF: Duration = Duration::from_secs(10);

/// Why a setup failed (for logs: it names no secret).
#[derive(Debug, Clone)]
pub enum SetupError {
    /// The token could not be read now (SSM unreachable, throttled, …): try again later.
    Transient(String),
    /// The client cannot be built as configured: no retry helps.
    Permanent(String),
}

/// Sets the client up: reads the token and builds the client with it.
pub type Setup = Box<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<ReplicateClient, SetupError>> + Send>>
        + Send
        + Sync,
>;

pub struct OnFirstUse {
    setup: Setup,
    timeout: Duration,
    client: OnceCell<ReplicateClient>,
    failed: Mutex<Option<(Instant, SetupError)>>,
}

impl OnFirstUse {
    pub fn new(setup: Setup) -> Self {
        Self::with_timeout(setup, SETUP_TIMEOUT)
    }

    fn with_timeout(setup: Setup, timeout: Duration) -> Self {
        Self {
            setup,
            timeout,
            client: OnceCell::new(),
            failed: Mutex::new(None),
        }
    }

    /// The client, set up now if it is not yet. Nothing reached Replicate if this fails.
    async fn client(&self) -> Result<&ReplicateClient, ReplicateError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let remembered = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|(at, _)| at.elapsed() < FAILURE_BACKOFF);
        if let Some((_, err)) = remembered {
            return Err(setup_failed(err));
        }
        let setup = async {
            match tokio::time::timeout(self.timeout, (self.setup)()).await {
                Ok(result) => result,
                Err(_) => Err(SetupError::Transient(
                    "reading the token took too long".to_owned(),
                )),
            }
        };
        match self.client.get_or_try_init(|| setup).await {
            Ok(client) => Ok(client),
            Err(err) => {
                tracing::error!(error = ?err, "the Replicate client could not be set up");
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), err.clone()));
                Err(setup_failed(err))
            }
        }
    }
}

fn setup_failed(err: SetupError) -> ReplicateError {
    match err {
        SetupError::Transient(cause) => ReplicateError::Transport {
            cause: format!("the Replicate client could not be set up: {cause}"),
        },
        SetupError::Permanent(reason) => ReplicateError::Unconfigured { reason },
    }
}

impl ReplicateApi for OnFirstUse {
    async fn ready(&self) -> Result<(), ReplicateError> {
        self.client().await.map(|_| ())
    }

    async fn create_prediction(
        &self,
        model: &ModelRef,
        input: &Map<String, Value>,
        webhook: Option<&WebhookTarget>,
        deadline: Deadline,
    ) -> Result<Prediction, ReplicateError> {
        self.client()
            .await?
            .create_prediction(model, input, webhook, deadline)
            .await
    }

    async fn get_prediction(&self, id: &str) -> Result<Prediction, ReplicateError> {
        self.client().await?.get_prediction(id).await
    }

    async fn cancel_prediction(&self, id: &str) -> Result<Prediction, ReplicateError> {
        self.client().await?.cancel_prediction(id).await
    }

    async fn list_predictions(
        &self,
        created_after: SystemTime,
        created_before: SystemTime,
        page: Option<&str>,
    ) -> Result<PredictionPage, ReplicateError> {
        self.client()
            .await?
            .list_predictions(created_after, created_before, page)
            .await
    }

    async fn webhook_secret(&self) -> Result<SigningSecret, ReplicateError> {
        self.client().await?.webhook_secret().await
    }

    async fn get_model(&self, owner: &str, name: &str) -> Result<Model, ReplicateError> {
        self.client().await?.get_model(owner, name).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::adapters::replicate::{ApiToken, ClientConfig};

    fn counting(
        result: impl Fn() -> Result<ReplicateClient, SetupError> + Send + Sync + 'static,
    ) -> (OnFirstUse, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let result = Arc::new(result);
        let client = OnFirstUse::new(Box::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let result = result.clone();
            Box::pin(async move { result() })
        }));
        (client, calls)
    }

    #[tokio::test]
    async fn a_failed_setup_is_remembered_and_a_good_one_kept() {
        let (failing, calls) = counting(|| Err(SetupError::Transient("SSM is down".into())));
        for _ in 0..5 {
            let err = failing.ready().await.unwrap_err();
            assert!(err.retry_later().is_some(), "{err}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one read per backoff");

        let (bad, _) = counting(|| Err(SetupError::Permanent("bad token".into())));
        let err = bad.ready().await.unwrap_err();
        assert!(matches!(err, ReplicateError::Unconfigured { .. }), "{err}");
        assert!(err.retry_later().is_none());

        let (good, calls) = counting(|| {
            ReplicateClient::new(ClientConfig::new(
                "http://127.0.0.1:9/v1",
                ApiToken::new("r8_x"),
            ))
            .map_err(|e| SetupError::Permanent(e.to_string()))
        });
        good.ready().await.unwrap();
        good.ready().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "set up once");
    }

    #[tokio::test]
    async fn a_setup_that_hangs_gives_up_in_time() {
        let client = OnFirstUse::with_timeout(
            Box::new(|| {
                Box::pin(async {
                    std::future::pending::<()>().await;
                    Err(SetupError::Transient("never".into()))
                })
            }),
            Duration::from_millis(50),
        );
        let err = client.ready().await.unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
    }
}
