//! Lambda `submit`: POST /v1/predictions. Configuration and clients are built once per
//! cold start; the handler lives in `imagegen_shared::app`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    imagegen_shared::bootstrap::run_lambda(|app, request| app.submit(request)).await
}
