//! Lambda `fetch-result`: GET /v1/predictions/{id}, GET /v1/predictions, GET /v1/usage, GET /v1/webhooks/secret and GET /openapi.json. Configuration and clients are built once per cold start
//! (`bootstrap`); the routes live in `imagegen_shared::http`, the use cases in `app`.

use imagegen_shared::{bootstrap, http, lambda};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    lambda::run_http(bootstrap::init(), http::read).await
}
