//! Lambda `submit`: POST /v1/predictions and POST /v1/predictions/{id}/cancel. Configuration
//! and clients are built once per cold start; the handlers live in `imagegen_shared::app`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    imagegen_shared::bootstrap::run_lambda(|app, request| app.write(request)).await
}
