//! `SPKEEPER_TOKEN_AUTH=iam`: API Gateway's IAM authorizer has identified the caller.

use http::request::Parts;
use lambda_http::request::RequestContext;

use crate::http::TokenAuthorizer;

/// Accepts a request only if API Gateway (HTTP API) put an IAM caller in its context. The
/// route's own `AWS_IAM` authorization does the signature check; this refuses the request if
/// that authorization is ever missing.
#[derive(Debug, Default, Clone, Copy)]
pub struct IamAuth;

impl TokenAuthorizer for IamAuth {
    fn authorize(&self, request: &Parts) -> bool {
        let Some(RequestContext::ApiGatewayV2(ctx)) = request.extensions.get::<RequestContext>()
        else {
            return false;
        };
        ctx.authorizer
            .as_ref()
            .and_then(|a| a.iam.as_ref())
            .is_some_and(|iam| {
                iam.user_arn.as_deref().is_some_and(|a| !a.is_empty())
                    || iam.caller_id.as_deref().is_some_and(|c| !c.is_empty())
            })
    }
}

/// API Gateway's id for this request (the `requestId` its access log records), if it is one.
pub fn apigw_request_id(extensions: &http::Extensions) -> Option<String> {
    let Some(RequestContext::ApiGatewayV2(ctx)) = extensions.get::<RequestContext>() else {
        return None;
    };
    ctx.request_id.clone()
}
