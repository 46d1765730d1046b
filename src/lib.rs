//! xup: a UnifiedPush push provider for XMPP.
//!
//! xup is an XMPP external component (XEP-0114). Clients (Conversations and other XMPP distributors)
//! register app instances with it and get an HTTP endpoint back; application servers POST messages
//! to that endpoint, and xup relays each one to the registering client as an IQ and answers the HTTP
//! request from the client's verdict. See `docs/DESIGN.md` for the flow and who owns each step.

pub mod address;
pub mod adhoc;
pub mod app_server;
pub mod cluster;
pub mod component;
pub mod config;
pub mod deliver;
pub mod held;
pub mod http;
pub mod import;
pub mod limits;
pub mod listener;
pub mod matrix;
pub mod metrics;
pub mod overview;
pub mod pending;
pub mod presence;
pub mod protocol;
pub mod push;
pub mod register;
pub mod relay;
pub mod resolve;
pub mod status;
pub mod store;
pub mod sum7;
pub mod token;
pub mod webpush;

use std::{sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::Semaphore, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Config, StoreConfig},
    held::HeldMessages,
    limits::Limits,
    pending::InFlight,
    presence::Presence,
    relay::Relay,
    store::Store,
    token::KeyRing,
};

/// How often revocations that can no longer kill a token, and expired messages, are forgotten.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Run xup with `config`, serving HTTP on `listener`, until `shutdown` is cancelled.
///
/// Shutdown order: stop accepting HTTP and let in-flight requests finish (each is bounded by
/// `delivery.answer_within`, after which its message is held), stop offering held messages, then
/// close the XMPP stream.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started = start(&config).await?;
    tracing::info!("listening for pushes on http://{}", listener.local_addr()?);
    let pushes = started.router.clone();
    match config.metrics.listen {
        None => {
            let router = pushes.merge(started.status.clone());
            // In-flight pushes finish here: each is bounded by `delivery.answer_within`, then held.
            listener::serve(listener, router, &config.http, shutdown).await;
        }
        Some(address) => {
            let status_listener = TcpListener::bind(address)
                .await
                .map_err(|e| anyhow::anyhow!("metrics.listen: cannot listen on {address}: {e}"))?;
            tracing::info!("serving /health and /metrics on http://{address}");
            tokio::join!(
                listener::serve(listener, pushes, &config.http, shutdown.clone()),
                listener::serve(
                    status_listener,
                    started.status.clone(),
                    &config.http,
                    shutdown
                ),
            );
        }
    }
    started.stop().await
}

/// xup with everything but the HTTP listener running: the component link, the deliverer and the
/// housekeeping tasks, and the router that HTTP requests go to.
pub struct Started {
    /// The push endpoints.
    pub router: axum::Router,
    /// `/health` and `/metrics`.
    pub status: axum::Router,
    link_shutdown: CancellationToken,
    link_task: JoinHandle<()>,
    deliverer: JoinHandle<()>,
    /// With PostgreSQL: the session that leads or stands by, released last.
    cluster_task: Option<JoinHandle<()>>,
    cluster_shutdown: CancellationToken,
    housekeeping: Vec<JoinHandle<()>>,
}

/// Open the store and start everything but the HTTP listener. Must be called within a Tokio
/// runtime.
pub async fn start(config: &Config) -> anyhow::Result<Started> {
    let store = Arc::new(Store::new(store::open(&config.store).await?).await?);
    let held = Arc::new(
        HeldMessages::open(
            store.engine(),
            held::Bounds {
                per_registration: config.delivery.max_held_per_registration,
                per_account: config.delivery.max_held_per_account,
                per_domain: config.delivery.max_held_per_domain,
                total: config.delivery.max_held,
            },
        )
        .await?,
    );
    if held.total() > 0 {
        tracing::info!(held = held.total(), "messages held from before the restart");
    }
    let jid = config.component.jid.clone();
    let mut keys = KeyRing::new(&config.registration.secrets, jid.as_str())?;
    if let Some(legacy) = &config.registration.legacy_up {
        keys = keys.with_legacy_up_secret(&legacy.secret)?;
    }
    let keys = Arc::new(keys);
    let in_flight_pushes = InFlight::default();
    let presence = Arc::new(Presence::default());
    let limits = Arc::new(Limits::new(&config.limits));
    let registrar = Arc::new(register::Registrar::new(
        config,
        keys.clone(),
        limits.clone(),
    ));
    let (link_events, link_events_receiver) = tokio::sync::mpsc::channel(component::LINK_EVENTS);
    let in_flight = Arc::new(Semaphore::new(config.http.max_in_flight));

    let app_server = match config.app_server.enabled {
        false => None,
        true => {
            let vapid = store
                .vapid_key(
                    config.app_server.vapid_key_generation,
                    webpush::WebPush::new_vapid_secret,
                )
                .await?;
            let web_push = webpush::WebPush::new(
                &vapid,
                config.app_server.vapid_contact.clone(),
                config.app_server.allow_private_endpoints.clone(),
                config.app_server.proxy.as_ref(),
            )?;
            Some(Arc::new(app_server::AppServer::new(app_server::Parts {
                component: config.component.jid.clone(),
                keys: keys.clone(),
                store: store.clone(),
                limits: limits.clone(),

                web_push: Arc::new(web_push),
                node_lifetime: config.app_server.node_lifetime,
            })))
        }
    };
    // With PostgreSQL, several instances may share the store: the link is this one's only while
    // it leads.
    let cluster = match &config.store {
        StoreConfig::Sqlite { .. } => None,
        StoreConfig::Postgres { url, ca_file, .. } => Some(Arc::new(cluster::Cluster::new(
            store::postgres::Target::new(url, ca_file.as_deref())?,
            config.delivery.answer_within,
            keys.clone(),
        ))),
    };
    let permit = match &cluster {
        Some(cluster) => cluster.watch_leads(),
        None => tokio::sync::watch::channel(true).1,
    };
    let link_shutdown = CancellationToken::new();
    let (link, link_task) = component::start(
        config.component.clone(),
        component::Router {
            jid,
            registrar: registrar.clone(),
            sum7: sum7::Registry {
                registrar: registrar.clone(),
                store: store.clone(),
                revocations_live: config.registration.longest_token_life(),
            },
            commands: Arc::new(adhoc::Commands {
                component: config.component.jid.clone(),
                registrar: registrar.clone(),
                app_server: app_server.clone(),
                store: store.clone(),
                held: held.clone(),
                revocations_live: config.registration.longest_token_life(),
            }),
            app_server,
            in_flight: in_flight_pushes.clone(),
            events: link_events,
        },
        permit,
        link_shutdown.clone(),
    );
    let link_up = link.watch_up();
    let status = Arc::new(status::Status {
        link_up: link_up.clone(),
        held: held.clone(),
        presence: presence.clone(),
        awaiting: in_flight_pushes.clone(),
        in_flight: in_flight.clone(),
        max_in_flight: config.http.max_in_flight,
        started: std::time::Instant::now(),
        cluster: cluster.clone(),
    });
    let sum7 = sum7::Sender::new(link.clone(), config.component.jid.clone());
    let (relay, notices) = Relay::new(
        relay::Parts {
            link,
            in_flight: in_flight_pushes.clone(),
            presence: presence.clone(),
            store: store.clone(),
            held: held.clone(),
        },
        config,
    );
    let relay = Arc::new(relay);
    let (handed, handed_receiver) = tokio::sync::mpsc::unbounded_channel();
    let cluster_shutdown = CancellationToken::new();
    let cluster_task = cluster.clone().map(|cluster| {
        tokio::spawn(cluster.run(
            cluster::Parts {
                store: store.clone(),
                held: held.clone(),
                notices: relay.notices(),
                handed,
            },
            cluster_shutdown.clone(),
        ))
    });
    let deliverer = tokio::spawn(deliver::run(
        deliver::Parts {
            relay: relay.clone(),
            held: held.clone(),
            in_flight: in_flight_pushes,
            presence,
            link_up,
        },
        deliver::Inputs {
            link_events: link_events_receiver,
            notices,
        },
        config.delivery.retry_interval,
        link_shutdown.clone(),
    ));
    let housekeeping = vec![
        tokio::spawn(prune_forever(store.clone(), held)),
        tokio::spawn(forget_idle_forever(limits.clone())),
    ];
    let pushes = Arc::new(push::Pushes {
        keys,
        store,
        relay,
        sum7,
        limits,
        in_flight,
        cluster: cluster.clone(),
    });
    if let Some(cluster) = cluster {
        tokio::spawn(push::serve_handed(pushes.clone(), cluster, handed_receiver));
    }
    let gateway = Arc::new(matrix::Gateway {
        pushes: pushes.clone(),
        body_timeout: config.http.body_timeout,
        trusted_proxies: config.http.trusted_proxies.clone(),
        endpoint_prefix: format!("{}/push/", config.http.public_url),
        legacy: config
            .registration
            .legacy_up
            .as_ref()
            .map(matrix::LegacyPrefix::of),
    });
    let state = Arc::new(http::AppState {
        pushes,
        body_timeout: config.http.body_timeout,
        trusted_proxies: config.http.trusted_proxies.clone(),
    });
    let legacy = config.registration.legacy_up.as_ref().map(|l| &l.route);
    Ok(Started {
        router: http::router(state, legacy).merge(matrix::router(gateway)),
        status: status::router(status),
        link_shutdown,
        link_task,
        deliverer,
        cluster_task,
        cluster_shutdown,
        housekeeping,
    })
}

impl Started {
    /// Stop offering held messages, then close the XMPP stream. HTTP must have stopped first.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.link_shutdown.cancel();
        for task in &self.housekeeping {
            task.abort();
        }
        self.deliverer.await?;
        self.link_task.await?;
        // Only now may another instance lead: this one's link is closed.
        self.cluster_shutdown.cancel();
        if let Some(cluster) = self.cluster_task {
            cluster.await?;
        }
        Ok(())
    }
}

/// Forget, hourly, revocations that can no longer kill a token and messages past their TTL.
async fn prune_forever(store: Arc<Store>, held: Arc<HeldMessages>) {
    let mut interval = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        interval.tick().await;
        let now = std::time::SystemTime::now();
        match store.prune(now).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(forgotten = n, "pruned expired revocations"),
            Err(e) => tracing::warn!(error = %e, "cannot prune revocations"),
        }
        match held.prune(now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "dropped held messages whose TTL ran out"),
            Err(e) => tracing::warn!(error = %e, "cannot prune held messages"),
        }
    }
}

/// Drop rate-limit buckets that have filled up again, so they cost memory only while in use.
async fn forget_idle_forever(limits: Arc<Limits>) {
    let mut interval = tokio::time::interval(limits::FORGET_INTERVAL);
    loop {
        interval.tick().await;
        limits.forget_idle();
    }
}
