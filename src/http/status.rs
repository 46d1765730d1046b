//! `/health` and `/metrics`: what an operator's monitoring asks of xup.
//!
//! `/health` is `200` only while the component link is up, because without the link no push can
//! be delivered (they are held), and that is what a load balancer or an alert should see. One of
//! several instances on PostgreSQL (`cluster/`) that stands by is healthy while it has its
//! session, through which it hands pushes to the leader: it says `"role": "standby"`. Both
//! routes are served on the main listener, or on `metrics.listen` alone when that is set, so they
//! need not be reachable from the internet.

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tokio::sync::watch;

use crate::{
    cluster::Cluster,
    metrics::{METRICS, Readings},
};

/// The state that `/health` and `/metrics` report.
pub struct Status {
    pub link_up: watch::Receiver<bool>,
    /// The gauges xup's parts keep, read at each scrape: handed in by whoever wires them, so this
    /// door reads the link's and the store's state without knowing either.
    pub readings: Box<dyn Fn() -> Readings + Send + Sync>,
    pub started: Instant,
    pub cluster: Option<Arc<Cluster>>,
}

pub fn router(status: Arc<Status>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(status)
}

async fn health(State(status): State<Arc<Status>>) -> Response {
    let link_up = *status.link_up.borrow();
    let (role, up) = match &status.cluster {
        None => ("single", link_up),
        Some(cluster) if cluster.leads() => ("leader", link_up),
        Some(cluster) => ("standby", cluster.in_session()),
    };
    let body = json!({
        "status": if up { "ok" } else { "unavailable" },
        "role": role,
        "component_link": if link_up { "up" } else { "down" },
        "uptime_seconds": status.started.elapsed().as_secs(),
    });
    let code = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn metrics(State(status): State<Arc<Status>>) -> Response {
    let readings = (status.readings)();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        METRICS.encode(readings),
    )
        .into_response()
}
