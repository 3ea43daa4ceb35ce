//! Lambda `submit`: POST /v1/predictions, POST /v1/predictions/{id}/cancel and POST /v1/uploads. Configuration and clients are built once per cold start
//! (`bootstrap`); the routes live in `imagegen_shared::http`, the use cases in `app`.

use imagegen_shared::{bootstrap, http, lambda};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    lambda::run_http(bootstrap::init(), http::write).await
}
