//! xup: a UnifiedPush push provider for XMPP.
//!
//! xup is an XMPP external component (XEP-0114). Clients (Conversations and other XMPP distributors)
//! register app instances with it and get an HTTP endpoint back; application servers POST messages
//! to that endpoint, and xup relays each one to the registering client as an IQ and answers the HTTP
//! request from the client's verdict. See `docs/DESIGN.md` for the flow and who owns each step.

pub mod component;
pub mod config;
pub mod held;
pub mod http;
pub mod protocol;
pub mod register;
pub mod relay;
pub mod store;
pub mod token;

use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    relay::{Answers, Relay},
    store::Store,
    token::KeyRing,
};

/// How often revocations that can no longer kill a token are forgotten.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Run xup with `config`, serving HTTP on `listener`, until `shutdown` is cancelled.
///
/// Shutdown order: stop accepting HTTP and let in-flight requests finish (each is bounded by
/// `delivery.timeout`), then close the XMPP stream.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = Arc::new(Store::open(&config.store.path)?);
    let jid = config.component.jid.clone();
    let keys = Arc::new(KeyRing::new(&config.registration.secrets, jid.as_str())?);
    let answers = Answers::default();
    let registrar = Arc::new(register::Registrar::new(&config, keys.clone()));

    let link_shutdown = CancellationToken::new();
    let (link, link_task) = component::start(
        config.component,
        component::Router {
            jid: jid.clone(),
            registrar,
            answers: answers.clone(),
        },
        link_shutdown.clone(),
    );
    let relay = Arc::new(Relay::new(
        link,
        answers,
        store.clone(),
        jid,
        config.delivery.timeout,
        config.registration.lifetime,
    ));
    let pruner = tokio::spawn(prune_forever(store.clone()));

    tracing::info!("listening for pushes on http://{}", listener.local_addr()?);
    let state = Arc::new(http::AppState { keys, store, relay });
    let served = http::serve(listener, http::router(state), shutdown).await;

    link_shutdown.cancel();
    pruner.abort();
    link_task.await?;
    served?;
    Ok(())
}

async fn prune_forever(store: Arc<Store>) {
    let mut interval = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        interval.tick().await;
        match store.prune(std::time::SystemTime::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(forgotten = n, "pruned expired revocations"),
            Err(e) => tracing::warn!(error = %e, "cannot prune revocations"),
        }
    }
}
