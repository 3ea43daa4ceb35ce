//! Lambda `fetch-result`: GET /v1/predictions/{id}. Configuration and clients are built once per
//! cold start; the handler lives in `imagegen_shared::app`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    imagegen_shared::bootstrap::run_lambda(|app, request| app.fetch(request)).await
}
