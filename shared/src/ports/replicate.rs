//! The Replicate API as the use cases need it: create, get, cancel, list, the webhook
//! secret, a model. The HTTP client (`adapters::replicate`) implements it; so does the
//! fake (`testing::fakes`).

use std::future::Future;
use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::domain::replicate::{
    Deadline, Model, ModelRef, Prediction, PredictionPage, ReplicateError, WebhookTarget,
};
use crate::domain::signing::SigningSecret;

/// The calls this service makes to Replicate. Handlers depend on this, not on HTTP, so they
/// can be tested with an in-memory implementation.
pub trait ReplicateApi: Send + Sync {
    /// Ready to call Replicate: whatever the client sets up on first use (its token) is
    /// set up, or why not. A submit asks before it reserves or stores anything.
    fn ready(&self) -> impl Future<Output = Result<(), ReplicateError>> + Send {
        async { Ok(()) }
    }

    /// Creates a prediction that Replicate ends by `deadline` (`Cancel-After`): every
    /// prediction of this service ends within 30 minutes, which its give-ups rely on.
    fn create_prediction(
        &self,
        model: &ModelRef,
        input: &Map<String, Value>,
        webhook: Option<&WebhookTarget>,
        deadline: Deadline,
    ) -> impl Future<Output = Result<Prediction, ReplicateError>> + Send;

    fn get_prediction(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Prediction, ReplicateError>> + Send;

    fn cancel_prediction(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Prediction, ReplicateError>> + Send;

    /// One page of `GET /predictions` filtered to [created_after, created_before), newest first.
    /// `page` is None for the first page, else the `next` URL of the previous page.
    fn list_predictions(
        &self,
        created_after: SystemTime,
        created_before: SystemTime,
        page: Option<&str>,
    ) -> impl Future<Output = Result<PredictionPage, ReplicateError>> + Send;

    fn webhook_secret(&self) -> impl Future<Output = Result<SigningSecret, ReplicateError>> + Send;

    fn get_model(
        &self,
        owner: &str,
        name: &str,
    ) -> impl Future<Output = Result<Model, ReplicateError>> + Send;
}
