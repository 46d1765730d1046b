//! What xup counts, for Prometheus: pushes by outcome, IQ round trips, registrations, the
//! component link, and rate-limit hits.
//!
//! The metrics live in one process-wide [`METRICS`], because every part of xup counts something
//! and a process has exactly one set; threading a handle through every constructor would say no
//! more. Gauges that are a reading of state (pushes in flight, messages held, the link) are not
//! updated as things happen: `status` reads them from their owners at each scrape and hands them
//! to [`Metrics::encode`], so they can never drift.

use std::sync::LazyLock;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Every counter xup keeps.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// How a push request ended, as the sender saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The client took it: `201`.
    Delivered,
    /// Written to the store for an unreachable client: `201`.
    Held,
    /// `TTL: 0` and the client could not take it now: `201`, not kept.
    Dropped,
    /// Handed to the XMPP server as a `<message>` (sum7's dialect), which nobody answers: `201`.
    Sent,
    /// The client said the app is gone: `404`.
    Revoked,
    /// Unknown, forged, expired or revoked token: `404`.
    NotFound,
    /// `400`: a malformed header, an empty or unreadable body, or (sum7's dialect) not text.
    BadRequest,
    /// `401`: a VAPID header that does not verify, or none where the endpoint needs one.
    Unauthorized,
    /// `403`: a VAPID key the endpoint is not bound to, or one the operator blocked.
    Forbidden,
    /// `408`: the body did not arrive in time.
    Timeout,
    /// `413`.
    TooLarge,
    /// `429`: over a rate limit.
    RateLimited,
    /// `503`: too many pushes in flight.
    Busy,
    /// `503`: `delivery.max_held` messages are held.
    Full,
    /// `503`: the store failed.
    Internal,
    /// `503`: the component link is down and the message cannot be held (sum7's dialect).
    LinkDown,
}

impl PushOutcome {
    fn label(self) -> &'static str {
        match self {
            PushOutcome::Delivered => "delivered",
            PushOutcome::Held => "held",
            PushOutcome::Dropped => "dropped",
            PushOutcome::Sent => "sent",
            PushOutcome::Revoked => "revoked",
            PushOutcome::NotFound => "not_found",
            PushOutcome::BadRequest => "bad_request",
            PushOutcome::Unauthorized => "unauthorized",
            PushOutcome::Forbidden => "forbidden",
            PushOutcome::Timeout => "timeout",
            PushOutcome::TooLarge => "too_large",
            PushOutcome::RateLimited => "rate_limited",
            PushOutcome::Busy => "busy",
            PushOutcome::Full => "full",
            PushOutcome::Internal => "internal",
            PushOutcome::LinkDown => "link_down",
        }
    }
}

/// Labels are written the Prometheus way, in snake case, which the derive cannot do for enums.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PushLabels {
    outcome: &'static str,
}

/// How a `<register>` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOutcome {
    Registered,
    /// Malformed, not allowed, too long, or over the account's limit.
    Refused,
}

impl RegisterOutcome {
    fn label(self) -> &'static str {
        match self {
            RegisterOutcome::Registered => "registered",
            RegisterOutcome::Refused => "refused",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegisterLabels {
    outcome: &'static str,
}

/// Which rate limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    PerEndpoint,
    PerAddress,
    PerVapidKey,
    ForgedTokens,
    Registrations,
    Publishes,
}

impl Limit {
    fn label(self) -> &'static str {
        match self {
            Limit::PerEndpoint => "per_endpoint",
            Limit::PerAddress => "per_address",
            Limit::PerVapidKey => "per_vapid_key",
            Limit::ForgedTokens => "forged_tokens_per_address",
            Limit::Registrations => "registrations_per_account",
            Limit::Publishes => "publishes_per_node",
        }
    }
}

/// How a XEP-0357 publish to the app server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// The push service took the wake-up (2xx), or it shared one that did.
    Delivered,
    /// The push service said the endpoint is gone (404, 410): the node is revoked.
    Gone,
    /// 408, 429, 5xx, a timeout or a network failure: a `wait` error.
    Failed,
    /// Any other answer from the push service: refused for good.
    Refused,
    /// The node is unknown, expired or revoked.
    UnknownNode,
    /// A wrong secret, or a publisher of another domain.
    Forbidden,
    /// Malformed, or over `limits.publishes_per_node`.
    Rejected,
}

impl PublishOutcome {
    fn label(self) -> &'static str {
        match self {
            PublishOutcome::Delivered => "delivered",
            PublishOutcome::Gone => "gone",
            PublishOutcome::Failed => "failed",
            PublishOutcome::Refused => "refused",
            PublishOutcome::UnknownNode => "unknown_node",
            PublishOutcome::Forbidden => "forbidden",
            PublishOutcome::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishLabels {
    outcome: &'static str,
}

/// Why a notice from the database was not acted on (`cluster/notice.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterRejection {
    /// Not sealed by an xup with these secrets, or for another channel.
    Forged,
    /// Sealed too long ago, in the future, or before this session listened.
    Stale,
    /// Heard before.
    Replayed,
    /// A revocation notice whose revocation is not in the store.
    Unfounded,
}

impl ClusterRejection {
    pub fn label(self) -> &'static str {
        match self {
            ClusterRejection::Forged => "forged",
            ClusterRejection::Stale => "stale",
            ClusterRejection::Replayed => "replayed",
            ClusterRejection::Unfounded => "unfounded",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pushes: Family<PushLabels, Counter>,
    registrations: Family<RegisterLabels, Counter>,
    rate_limited: Family<LimitLabels, Counter>,
    publishes: Family<PublishLabels, Counter>,
    cluster_rejected: Family<ReasonLabels, Counter>,
    iq_round_trip: Histogram,
    push_iqs: Counter,
    link_events_dropped: Counter,
    link_connects: Counter,
    link_up: Gauge,
    leads: Gauge,
    in_flight: Gauge,
    held: Gauge,
    offline: Gauge,
    awaiting: Gauge,
    bodies: Gauge,
}

/// A request body being read, counted until dropped ([`Metrics::reading_body`]).
pub struct ReadingBody(Gauge);

impl Drop for ReadingBody {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The state the gauges report, read at the moment of a scrape.
pub struct Readings {
    pub link_up: bool,
    /// Whether this instance may hold the link: always alone, while it leads among several.
    pub leads: bool,
    pub in_flight: usize,
    pub held: usize,
    pub offline: usize,
    pub awaiting: usize,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("xup");
        let pushes = Family::<PushLabels, Counter>::default();
        registry.register("pushes", "Push requests, by how they ended", pushes.clone());
        let registrations = Family::<RegisterLabels, Counter>::default();
        registry.register(
            "registrations",
            "<register> requests, by how they ended",
            registrations.clone(),
        );
        let rate_limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by limit",
            rate_limited.clone(),
        );
        let publishes = Family::<PublishLabels, Counter>::default();
        registry.register(
            "app_server_publishes",
            "XEP-0357 publishes to the app server, by how they ended",
            publishes.clone(),
        );
        let cluster_rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "cluster_rejected",
            "Notices heard from PostgreSQL that no instance of this deployment sent, or sent \
             before, and so were dropped, by reason",
            cluster_rejected.clone(),
        );
        // 1 ms to about 16 s: a phone on the same network to one that answers at the timeout.
        let iq_round_trip = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "iq_round_trip_seconds",
            "From sending a <push> IQ to the client's answer",
            iq_round_trip.clone(),
        );
        let push_iqs = Counter::default();
        registry.register(
            "push_iqs_sent",
            "<push> IQs sent to clients, first offers and offers of held messages alike",
            push_iqs.clone(),
        );
        let link_events_dropped = Counter::default();
        registry.register(
            "link_events_dropped",
            "What the link learnt about clients (presence, answers) that the deliverer had no room \
             for: above 0, a flood of stanzas outran it",
            link_events_dropped.clone(),
        );
        let link_connects = Counter::default();
        registry.register(
            "component_connects",
            "Component handshakes completed; more than one means the link was lost and made again",
            link_connects.clone(),
        );
        let link_up = Gauge::default();
        registry.register(
            "component_link_up",
            "1 while the component link to the XMPP server is up",
            link_up.clone(),
        );
        let leads = Gauge::default();
        registry.register(
            "leading",
            "1 while this instance may hold the component link: always when it runs alone, while it \
             leads when several share PostgreSQL (0: a standby that hands its pushes over)",
            leads.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "pushes_in_flight",
            "Push requests waiting for their client's answer",
            in_flight.clone(),
        );
        let held = Gauge::default();
        registry.register(
            "held_messages",
            "Messages held for clients that could not take them",
            held.clone(),
        );
        let offline = Gauge::default();
        registry.register(
            "clients_known_offline",
            "Clients whose server said they went away: their pushes are held without an IQ",
            offline.clone(),
        );
        let awaiting = Gauge::default();
        registry.register(
            "pushes_awaiting_answer",
            "<push> IQs sent and not yet answered, including those whose sender was already answered",
            awaiting.clone(),
        );
        // Counted as it happens, by a guard that cannot forget to count down: no owner holds the
        // bodies being read, so there is nothing to read at a scrape.
        let bodies = Gauge::default();
        registry.register(
            "request_bodies_being_read",
            "Request bodies being read, before a push takes a slot among those in flight",
            bodies.clone(),
        );
        Metrics {
            registry,
            pushes,
            registrations,
            rate_limited,
            publishes,
            cluster_rejected,
            iq_round_trip,
            push_iqs,
            link_events_dropped,
            link_connects,
            link_up,
            leads,
            in_flight,
            held,
            offline,
            awaiting,
            bodies,
        }
    }

    /// Count a request body as being read until the guard drops.
    pub fn reading_body(&self) -> ReadingBody {
        self.bodies.inc();
        ReadingBody(self.bodies.clone())
    }

    pub fn push(&self, outcome: PushOutcome) {
        let outcome = outcome.label();
        self.pushes.get_or_create(&PushLabels { outcome }).inc();
    }

    pub fn publish(&self, outcome: PublishOutcome) {
        self.publishes
            .get_or_create(&PublishLabels {
                outcome: outcome.label(),
            })
            .inc();
    }

    pub fn registration(&self, outcome: RegisterOutcome) {
        let outcome = outcome.label();
        self.registrations
            .get_or_create(&RegisterLabels { outcome })
            .inc();
    }

    pub fn rate_limited(&self, limit: Limit) {
        let limit = limit.label();
        self.rate_limited
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    pub fn cluster_rejected(&self, reason: ClusterRejection) {
        let reason = reason.label();
        self.cluster_rejected
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn iq_answered(&self, round_trip: std::time::Duration) {
        self.iq_round_trip.observe(round_trip.as_secs_f64());
    }

    pub fn push_iq_sent(&self) {
        self.push_iqs.inc();
    }

    pub fn link_event_dropped(&self) {
        self.link_events_dropped.inc();
    }

    pub fn link_connected(&self) {
        self.link_connects.inc();
    }

    /// Everything, in Prometheus' text format, with the gauges set to `readings`.
    pub fn encode(&self, readings: Readings) -> String {
        let as_gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.link_up.set(i64::from(readings.link_up));
        self.leads.set(i64::from(readings.leads));
        self.in_flight.set(as_gauge(readings.in_flight));
        self.held.set(as_gauge(readings.held));
        self.offline.set(as_gauge(readings.offline));
        self.awaiting.set(as_gauge(readings.awaiting));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
