//! The scheduled reconciler: each invocation (an EventBridge schedule event, whose detail
//! does not matter) runs one reconcile pass within the invocation's time, and returns its
//! report.

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
        move |event: LambdaEvent<EventBridgeEvent>| async move {
            let span = tracing::info_span!(
                "reconcile",
                request_id = %event.context.request_id,
                schedule = %event.payload.detail_type
            );
            let deadline = work_deadline(&event.context);
            let report = app.reconcile(Some(deadline)).instrument(span).await;
            Ok::<_, lambda_runtime::Error>(serde_json::to_value(report)?)
        },
    ))
    .await
}
