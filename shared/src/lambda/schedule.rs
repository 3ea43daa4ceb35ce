//! The scheduled reconciler: each invocation (an EventBridge schedule event, whose detail
//! does not matter; or any event, from an operator's `aws lambda invoke`) runs one
//! reconcile pass within the invocation's time, and returns its report.

use std::future::Future;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{LambdaEvent, service_fn};
use tracing::Instrument;

use super::work_deadline;
use crate::app::App;
use crate::ports::Ports;

pub async fn run_reconciler<P, E>(
    init: impl Future<Output = Result<&'static App<P>, E>>,
) -> Result<(), lambda_runtime::Error>
where
    P: Ports,
    E: Into<lambda_runtime::Error>,
{
    let app = init.await.map_err(Into::into)?;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            let trigger = serde_json::from_value::<EventBridgeEvent>(event.payload)
                .map_or_else(|_| "invoked".to_owned(), |e| e.detail_type);
            let span = tracing::info_span!(
                "reconcile",
                request_id = %event.context.request_id,
                trigger = %trigger
            );
            let deadline = work_deadline(&event.context);
            let report = app.reconcile(Some(deadline)).instrument(span).await;
            Ok::<_, lambda_runtime::Error>(serde_json::to_value(report)?)
        },
    ))
    .await
}
