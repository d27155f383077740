//! `spkeeper serve`: every route on one server, the sweep on a timer, and notice delivery.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use chrono::Utc;

use spkeeper::clients::WebhookSender;
use spkeeper::config::TokenAuth;
use spkeeper::http::{
    ApiKeyAuth, TokenAuthorizer, finish, grants_router, health_router, launch_router, renew_router,
    signin_router, status_router, token_router,
};
use spkeeper::ports::Outbox;
use spkeeper::service::deliver::Deliverer;
use spkeeper::service::exchange::TokenService;
use spkeeper::service::grants::GrantsService;
use spkeeper::service::launch::LaunchService;
use spkeeper::service::signin::SignInService;
use spkeeper::service::sweep::SweepService;

use crate::Failure;
use crate::dev::Sim;
use crate::setup::{self, Backend, Mode};

/// How often the delivery loop looks for notices: "delivered within seconds".
const DELIVERY_POLL: Duration = Duration::from_secs(1);

pub async fn run(addr: SocketAddr, dev: bool, sweep_interval: u64) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::Runtime(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::Runtime(format!("cannot read the listening address: {e}")))?;
    let reachable = if local.ip().is_unspecified() {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), local.port())
    } else {
        local
    };
    let listening = format!("http://{reachable}");
    let mode = if dev {
        Mode::DevServe {
            listening: listening.clone(),
        }
    } else {
        Mode::Plain
    };
    let loaded = setup::load(mode).await?;
    let ctx = loaded.ctx;

    if ctx.settings.token_auth == TokenAuth::Iam {
        return Err(Failure::Usage(
            "SPKEEPER_TOKEN_AUTH: iam needs API Gateway's IAM authorizer; use api_key with spkeeper serve".into(),
        ));
    }
    if ctx.secrets.get().api_key.is_none() {
        return Err(Failure::Usage("SPKEEPER_API_KEY: is required".into()));
    }
    let auth: Arc<dyn TokenAuthorizer> = Arc::new(ApiKeyAuth(ctx.secrets.clone()));
    let tokens = Arc::new(TokenService::for_context(&ctx));
    let launch = Arc::new(LaunchService::new(Arc::clone(&ctx), Arc::clone(&tokens)));
    let sweep = Arc::new(SweepService::new(Arc::clone(&ctx)));
    let signin = Arc::new(SignInService::new(Arc::clone(&ctx), tokens.entra()));

    let mut app = Router::new()
        .merge(launch_router(launch))
        .merge(status_router(Arc::clone(&ctx)))
        .merge(renew_router(Arc::clone(&signin)))
        .merge(signin_router(signin))
        .merge(token_router(tokens, Arc::clone(&auth)))
        .merge(grants_router(
            Arc::new(GrantsService::new(Arc::clone(&ctx))),
            auth,
        ))
        .merge(health_router());
    if let Some(values) = loaded.dev {
        let sim = Sim::new(
            Arc::clone(&ctx),
            Arc::clone(&loaded.clock),
            values,
            match &loaded.backend {
                Backend::Sqlite(store) => Some(store.clone() as Arc<dyn Outbox>),
                Backend::Aws(_) => None,
            },
            Arc::clone(&sweep),
        )
        .map_err(Failure::Runtime)?;
        app = app.merge(crate::dev::router(Arc::new(sim)));
    }
    let app = finish(app, &ctx.settings);

    tokio::spawn(sweep_loop(
        Arc::clone(&sweep),
        Arc::clone(&ctx),
        Duration::from_secs(sweep_interval),
    ));
    let secrets = ctx.secrets.get();
    match (&ctx.settings.webhook_url, &secrets.webhook_secret) {
        (Some(url), Some(_)) => {
            let sender =
                WebhookSender::new(ctx.http.clone(), url.clone(), &secrets.webhook_secrets())
                    .map_err(|e| Failure::Usage(format!("SPKEEPER_WEBHOOK_SECRET: {e}")))?;
            match &loaded.backend {
                Backend::Sqlite(store) => {
                    tokio::spawn(delivery_loop(Deliverer::new(store.clone(), sender)));
                }
                Backend::Aws(aws) => {
                    tokio::spawn(sqs_delivery_loop(aws.queue.clone(), sender));
                }
            }
            tracing::info!(webhook = %url, "delivering notices");
        }
        _ => tracing::warn!(
            "SPKEEPER_WEBHOOK_URL is not set: notices stay queued (see `spkeeper notices`)"
        ),
    }

    println!("spkeeper listening on {listening}");
    println!(
        "launch URL to register in SharePoint: {}",
        ctx.settings.launch_url()
    );
    if dev {
        println!("open {listening}/dev/sharepoint and click \"Launch add-in\"");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| Failure::Runtime(format!("server failed: {e}")))?;
    tracing::info!("stopped");
    Ok(())
}

async fn sweep_loop(
    sweep: Arc<SweepService>,
    ctx: Arc<spkeeper::context::Context>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The sweep logs its own summary ("sweep done").
        if let Err(e) = sweep.run(ctx.now(), false).await {
            tracing::error!(error = %e, "sweep failed; will try again at the next tick");
        }
    }
}

async fn delivery_loop(deliverer: Deliverer) {
    loop {
        if let Err(e) = deliverer.deliver_ready(Utc::now()).await {
            tracing::error!(error = %e, "notice delivery pass failed");
        }
        tokio::time::sleep(DELIVERY_POLL).await;
    }
}

/// On DynamoDB the queue is SQS: receive, deliver, delete (what fails comes back after the
/// queue's visibility timeout, and ends in its dead-letter queue).
async fn sqs_delivery_loop(queue: spkeeper::aws::sqs::SqsQueue, sender: WebhookSender) {
    loop {
        if let Err(e) = spkeeper::aws::consume_once(&queue, &sender, 1).await {
            tracing::error!(error = %e, "receiving notices from SQS failed");
            tokio::time::sleep(DELIVERY_POLL).await;
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
