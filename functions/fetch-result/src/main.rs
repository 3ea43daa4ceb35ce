//! Lambda `fetch-result`: GET /v1/predictions/{id} and GET /v1/usage. Configuration and
//! clients are built once per cold start; the handlers live in `imagegen_shared::app`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    imagegen_shared::bootstrap::run_lambda(|app, request| app.read(request)).await
}
