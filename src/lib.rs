//! xup: a UnifiedPush push provider for XMPP.
//!
//! xup is an XMPP external component (XEP-0114). Clients (Conversations and other XMPP distributors)
//! register app instances with it and get an HTTP endpoint back; application servers POST messages
//! to that endpoint, and xup relays each one to the registering client as an IQ and answers the HTTP
//! request from the client's verdict. See `docs/DESIGN.md` for the flow and who owns each step.

pub mod admin;
pub mod app_server;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod dialects;
pub mod http;
pub mod limits;
pub mod message;
pub mod metrics;
pub mod push;
pub mod registrar;
pub mod store;
pub mod tasks;
pub mod token;
pub mod trace;
pub mod vapid;
pub mod xmpp;

use std::{sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use xmpp_parsers::ns;

use crate::{
    app_server::AppServer,
    cluster::Cluster,
    commands::Commands,
    config::Config,
    dialects::{conversations, sum7},
    limits::Limits,
    push::{Deliver, Dialects, Pushes},
    registrar::Registrar,
    store::{Store, held::HeldMessages},
    tasks::Tasks,
    token::{Dialect, KeyRing, Opened},
    trace::Traces,
    vapid::Vapid,
    xmpp::{Events, Router, pending::InFlight, presence::Presence},
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
            http::listener::serve(listener, router, &config.http, shutdown).await;
        }
        Some(address) => {
            let status_listener = TcpListener::bind(address)
                .await
                .map_err(|e| anyhow::anyhow!("metrics.listen: cannot listen on {address}: {e}"))?;
            tracing::info!("serving /health and /metrics on http://{address}");
            tokio::join!(
                http::listener::serve(listener, pushes, &config.http, shutdown.clone()),
                http::listener::serve(
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
    /// The link, the deliverer and the housekeeping: stopped first.
    link: Tasks,
    /// With PostgreSQL: the session that leads or stands by, and the pushes standbys hand over;
    /// stopped last, once the link is closed.
    cluster: Tasks,
}

/// Open the store and start everything but the HTTP listener. Must be called within a Tokio
/// runtime.
pub async fn start(config: &Config) -> anyhow::Result<Started> {
    let opened = store::engines::open(&config.store).await?;
    let store = Arc::new(Store::new(opened.engine).await?);
    let delivery = &config.delivery;
    let bounds = store::Bounds {
        per_registration: delivery.max_held_per_registration,
        per_account: delivery.max_held_per_account,
        per_domain: delivery.max_held_per_domain,
        total: delivery.max_held,
    };
    let held = Arc::new(HeldMessages::open(store.engine(), bounds).await?);
    if held.total() > 0 {
        tracing::info!(held = held.total(), "messages held from before the restart");
    }
    let jid = config.component.jid.clone();
    let mut keys = KeyRing::new(&config.registration.secrets, jid.as_str())?;
    if let Some(legacy) = &config.registration.legacy_up {
        keys = keys.with_legacy_up_secret(&legacy.secret)?;
    }
    let keys = Arc::new(keys);
    let limits = Arc::new(Limits::new(&config.limits));
    let registrar = Arc::new(Registrar::new(
        config,
        keys.clone(),
        limits.clone(),
        store.clone(),
    ));
    let revocations_live = config.registration.longest_token_life();
    let app_server = match config.app_server.enabled {
        false => None,
        true => Some(start_app_server(config, &store, &keys, &limits).await?),
    };
    // With PostgreSQL, several instances may share the store: the link is this one's only while
    // it leads.
    let cluster = opened
        .shared
        .map(|database| Arc::new(Cluster::new(database, delivery.answer_within, keys.clone())));
    let permit = match &cluster {
        Some(cluster) => cluster.watch_leads(),
        None => tokio::sync::watch::channel(true).1,
    };

    // The XMPP side: every role that answers requests, by namespace.
    let (events, link_events) = Events::channel();
    let awaiting = InFlight::default();
    let presence = Arc::new(Presence::default());
    let traces = Arc::new(Traces::default());
    let (link, unstarted) = xmpp::link();
    let router = xmpp_router(Roles {
        jid: jid.clone(),
        registrar: registrar.clone(),
        store: store.clone(),
        held: held.clone(),
        revocations_live,
        app_server,
        awaiting: awaiting.clone(),
        presence: presence.clone(),
        traces: traces.clone(),
        link: link.clone(),
        events,
    });
    let link_tasks = Tasks::default();
    let link_task = xmpp::start(
        config.component.clone(),
        router,
        unstarted,
        permit,
        link_tasks.token(),
    );
    link_tasks.spawn(async move {
        let _ = link_task.await;
    });

    // The pushes: each dialect's deliverer, behind the cluster when there is one.
    let (relay, notices) = conversations::relay::Relay::new(
        conversations::relay::Parts {
            link: link.clone(),
            in_flight: awaiting.clone(),
            presence: presence.clone(),
            store: store.clone(),
            held: held.clone(),
            traces: traces.clone(),
        },
        config,
    );
    let relay = Arc::new(relay);
    let dialects: Arc<dyn Deliver> = Arc::new(
        Dialects::default()
            .with(Dialect::Conversations, relay.clone())
            .with(
                Dialect::Sum7,
                Arc::new(sum7::Sender::new(link.clone(), jid.clone(), traces.clone())),
            ),
    );
    let in_flight = Arc::new(Semaphore::new(config.http.max_in_flight));
    let route = match &cluster {
        None => dialects.clone(),
        Some(cluster) => Arc::new(cluster::Forward {
            cluster: cluster.clone(),
            here: dialects.clone(),
        }),
    };
    let pushes = Arc::new(Pushes {
        keys,
        opened: Opened::default(),
        store: store.clone(),
        limits: limits.clone(),
        vapid: Vapid::new(config.http.origin()),
        blocked: config.limits.blocked_vapid_keys.iter().copied().collect(),
        in_flight: in_flight.clone(),
        route,
    });
    let link_up = link.watch_up();
    link_tasks.spawn(conversations::deliver::run(
        conversations::deliver::Parts {
            relay: relay.clone(),
            held: held.clone(),
            in_flight: awaiting.clone(),
            presence: presence.clone(),
            link_up: link_up.clone(),
        },
        conversations::deliver::Inputs {
            link_events,
            notices,
        },
        delivery.retry_interval,
        link_tasks.token(),
    ));
    link_tasks.spawn(prune_forever(
        store.clone(),
        held.clone(),
        traces.clone(),
        link_tasks.token(),
    ));
    link_tasks.spawn(forget_idle_forever(limits, link_tasks.token()));

    let cluster_tasks = Tasks::default();
    if let Some(cluster) = &cluster {
        let (handed, handed_receiver) = tokio::sync::mpsc::unbounded_channel();
        cluster_tasks.spawn(cluster.clone().run(
            cluster::Parts {
                store,
                held: held.clone(),
                notices: relay.notices(),
                handed,
            },
            cluster_tasks.token(),
        ));
        cluster_tasks.spawn(cluster::serve_handed(
            pushes.clone(),
            dialects,
            cluster.clone(),
            handed_receiver,
        ));
    }

    // The HTTP side.
    let max_in_flight = config.http.max_in_flight;
    let readings = {
        let (link_up, cluster) = (link_up.clone(), cluster.clone());
        move || metrics::Readings {
            link_up: *link_up.borrow(),
            leads: cluster.as_ref().is_none_or(|cluster| cluster.leads()),
            in_flight: max_in_flight.saturating_sub(in_flight.available_permits()),
            held: held.total(),
            offline: presence.offline_count(),
            awaiting: awaiting.len(),
        }
    };
    let status = Arc::new(http::status::Status {
        link_up,
        readings: Box::new(readings),
        started: std::time::Instant::now(),
        cluster,
    });
    Ok(Started {
        router: doors(config, pushes),
        status: http::status::router(status),
        link: link_tasks,
        cluster: cluster_tasks,
    })
}

/// The doors pushes come in by: the RFC 8030 endpoints (the Java `up`'s route too) and the
/// Matrix gateway, on one router.
fn doors(config: &Config, pushes: Arc<Pushes>) -> axum::Router {
    let gateway = Arc::new(http::matrix::Gateway {
        pushes: pushes.clone(),
        body_timeout: config.http.body_timeout,
        trusted_proxies: config.http.trusted_proxies.clone(),
        endpoint_prefix: format!("{}/push/", config.http.public_url),
        legacy: config
            .registration
            .legacy_up
            .as_ref()
            .map(http::matrix::LegacyPrefix::of),
    });
    let state = Arc::new(http::rfc8030::AppState {
        pushes,
        body_timeout: config.http.body_timeout,
        trusted_proxies: config.http.trusted_proxies.clone(),
    });
    let legacy = config.registration.legacy_up.as_ref().map(|l| &l.route);
    http::rfc8030::router(state, legacy).merge(http::matrix::router(gateway))
}

/// What the roles on the component work with.
pub struct Roles {
    pub jid: xmpp_parsers::jid::BareJid,
    pub registrar: Arc<Registrar>,
    pub store: Arc<Store>,
    pub held: Arc<HeldMessages>,
    /// How long a revocation is kept: as long as the longest token it can kill lives.
    pub revocations_live: Duration,
    /// The XEP-0357 app server, unless `app_server.enabled` is off.
    pub app_server: Option<Arc<AppServer>>,
    pub awaiting: InFlight,
    pub presence: Arc<Presence>,
    pub traces: Arc<Traces>,
    /// The link, before it runs: a command pings the client through it.
    pub link: xmpp::Link,
    pub events: Events,
}

/// The stanza router with every role on it, by the namespace of the requests it answers: the one
/// place a role (a dialect's requests, the ad-hoc commands, the app server) is put on the
/// component. Public for the fuzz target, which routes stanzas without a server.
pub fn xmpp_router(roles: Roles) -> Router {
    let Roles {
        jid,
        registrar,
        store,
        held,
        revocations_live,
        app_server,
        awaiting,
        presence,
        traces,
        link,
        events,
    } = roles;
    let mut commands: Vec<Arc<dyn commands::AdHoc>> = Vec::new();
    if let Some(app_server) = &app_server {
        commands.extend(app_server::commands::all(app_server));
    }
    commands.push(Arc::new(commands::revoke_all::RevokeAll {
        store: store.clone(),
        held: held.clone(),
        revocations_live,
    }));
    commands.push(Arc::new(commands::trace::DeliveryTrace {
        traces: traces.clone(),
    }));
    commands.push(Arc::new(commands::check::CheckMyPush::new(
        jid.clone(),
        link,
        awaiting.clone(),
        presence.clone(),
        held.clone(),
    )));
    commands.push(Arc::new(commands::registrations::Registrations {
        store: store.clone(),
        registrar: registrar.clone(),
        held,
        traces,
        revocations_live,
    }));
    let commands = Commands::new(jid.clone(), registrar.clone(), commands);
    let mut router = Router::new(jid, awaiting, presence, events.clone())
        .with(
            conversations::NS,
            Arc::new(conversations::register::Registry {
                registrar: registrar.clone(),
                events,
            }),
        )
        .with(
            sum7::NS,
            Arc::new(sum7::Registry {
                registrar,
                store,
                revocations_live,
            }),
        )
        .with(
            commands::NS,
            Arc::new(commands::Dispatch(Arc::new(commands))),
        );
    if let Some(app_server) = app_server {
        router = router.with(
            ns::PUBSUB,
            Arc::new(app_server::commands::Publishes(app_server)),
        );
    }
    router
}

/// The XEP-0357 app server, with its VAPID key (made once and kept in the store).
async fn start_app_server(
    config: &Config,
    store: &Arc<Store>,
    keys: &Arc<KeyRing>,
    limits: &Arc<Limits>,
) -> anyhow::Result<Arc<AppServer>> {
    let settings = &config.app_server;
    let vapid = store
        .vapid_key(
            settings.vapid_key_generation,
            app_server::webpush::WebPush::new_vapid_secret,
        )
        .await?;
    let web_push = app_server::webpush::WebPush::new(
        &vapid,
        settings.vapid_contact.clone(),
        settings.allow_private_endpoints.clone(),
        settings.proxy.as_ref(),
    )?;
    Ok(Arc::new(AppServer::new(app_server::Parts {
        component: config.component.jid.clone(),
        keys: keys.clone(),
        store: store.clone(),
        limits: limits.clone(),
        web_push: Arc::new(web_push),
        node_lifetime: settings.node_lifetime,
    })))
}

impl Started {
    /// Stop offering held messages, then close the XMPP stream. HTTP must have stopped first.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.link.stop().await;
        // Only now may another instance lead: this one's link is closed.
        self.cluster.stop().await;
        Ok(())
    }
}

/// Forget, hourly, revocations that can no longer kill a token and messages past their TTL.
async fn prune_forever(
    store: Arc<Store>,
    held: Arc<HeldMessages>,
    traces: Arc<Traces>,
    stop: CancellationToken,
) {
    let mut interval = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = std::time::SystemTime::now();
        match store.prune(now).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(forgotten = n, "pruned expired revocations"),
            Err(e) => tracing::warn!(error = %e, "cannot prune revocations"),
        }
        match held.prune(now).await {
            Ok(pruned) if pruned.count == 0 => {}
            Ok(pruned) => {
                tracing::info!(
                    expired = pruned.count,
                    "dropped held messages whose TTL ran out"
                );
                for (subject, application, id) in &pruned.named {
                    traces.record(subject, application, id, trace::Event::Expired);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot prune held messages"),
        }
    }
}

/// Drop rate-limit buckets that have filled up again, so they cost memory only while in use.
async fn forget_idle_forever(limits: Arc<Limits>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(limits::FORGET_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        limits.forget_idle();
    }
}
