//! Replicate's client, set up on first use: in AWS its token is an SSM read, and only a
//! process that calls Replicate should pay for it (a fetch of an ended prediction, a copy,
//! a callback never do). A failed setup is tried again by the next call.

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use super::ReplicateClient;
use crate::domain::replicate::{
    Deadline, Model, ModelRef, Prediction, PredictionPage, ReplicateError, WebhookTarget,
};
use crate::domain::signing::SigningSecret;
use crate::ports::replicate::ReplicateApi;

/// Sets the client up: reads the token and builds the client with it. `Err` says why not
/// (for logs; it names no secret).
pub type Setup = Box<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<ReplicateClient, String>> + Send>> + Send + Sync,
>;

pub struct OnFirstUse {
    setup: Setup,
    client: OnceCell<ReplicateClient>,
}

impl OnFirstUse {
    pub fn new(setup: Setup) -> Self {
        Self {
            setup,
            client: OnceCell::new(),
        }
    }

    /// The client, set up now if it is not yet. Nothing reached Replicate if this fails.
    async fn client(&self) -> Result<&ReplicateClient, ReplicateError> {
        self.client
            .get_or_try_init(|| (self.setup)())
            .await
            .map_err(|cause| ReplicateError::Transport {
                cause: format!("the Replicate client could not be set up: {cause}"),
            })
    }
}

impl ReplicateApi for OnFirstUse {
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
