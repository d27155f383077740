//! The `exchange` Lambda function: the app-backend routes behind API Gateway (HTTP API):
//! `POST /token`, `POST /handoff`, `GET`/`DELETE /grants…`, authorized by the API key or, with
//! `SPKEEPER_TOKEN_AUTH=iam`, by API Gateway's IAM authorizer.

use std::sync::Arc;

use axum::Router;
use spkeeper::aws::iam::IamAuth;
use spkeeper::config::{Program, TokenAuth};
use spkeeper::http::{
    ApiKeyAuth, TokenAuthorizer, finish, grants_router, health_router, refreshing_secrets,
    token_router,
};
use spkeeper::service::exchange::TokenService;
use spkeeper::service::grants::GrantsService;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    spkeeper::logging::init_lambda();
    let (ctx, _aws) = spkeeper::aws::init_context(Program::Exchange)
        .await
        .inspect_err(|e| tracing::error!(error = %e, "cannot start"))?;
    let auth: Arc<dyn TokenAuthorizer> = match (ctx.settings.token_auth, &ctx.secrets.get().api_key)
    {
        (TokenAuth::Iam, _) => Arc::new(IamAuth),
        (TokenAuth::ApiKey, Some(_)) => Arc::new(ApiKeyAuth(ctx.secrets.clone())),
        (TokenAuth::ApiKey, None) => {
            return Err("SPKEEPER_API_KEY: is required unless SPKEEPER_TOKEN_AUTH=iam".into());
        }
    };
    let tokens = Arc::new(TokenService::for_context(&ctx));
    let grants = Arc::new(GrantsService::new(Arc::clone(&ctx)));
    let app = finish(
        refreshing_secrets(
            Router::new()
                .merge(token_router(tokens, Arc::clone(&auth)))
                .merge(grants_router(grants, auth))
                .merge(health_router()),
            ctx.secrets.clone(),
        ),
        &ctx.settings,
    );
    lambda_http::run(app).await
}
