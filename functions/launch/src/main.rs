//! The `launch` Lambda function: `POST /launch`, `GET /connect`, `POST /callback`,
//! `GET /status`, `GET /renew/{grant_id}` and `GET /healthz` behind API Gateway (HTTP API). Only wiring: the routers live in `spkeeper`.

use std::sync::Arc;

use axum::Router;
use spkeeper::config::Program;
use spkeeper::http::{
    finish, health_router, launch_router, refreshing_secrets, renew_router, signin_router,
    status_router,
};
use spkeeper::service::exchange::TokenService;
use spkeeper::service::launch::LaunchService;
use spkeeper::service::signin::SignInService;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    spkeeper::logging::init_lambda();
    // Clients, configuration and keys: once, at init. Fails closed.
    let (ctx, _aws) = spkeeper::aws::init_context(Program::Launch)
        .await
        .inspect_err(|e| tracing::error!(error = %e, "cannot start"))?;
    let tokens = Arc::new(TokenService::for_context(&ctx));
    let signin = Arc::new(SignInService::new(Arc::clone(&ctx), tokens.entra()));
    let launch = Arc::new(LaunchService::new(Arc::clone(&ctx), tokens));
    let app = finish(
        refreshing_secrets(
            Router::new()
                .merge(launch_router(launch))
                .merge(status_router(Arc::clone(&ctx)))
                .merge(renew_router(Arc::clone(&signin)))
                .merge(signin_router(signin))
                .merge(health_router()),
            ctx.secrets.clone(),
        ),
        &ctx.settings,
    );
    lambda_http::run(app).await
}
