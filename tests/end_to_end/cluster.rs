//! Two xup instances on one PostgreSQL and one XMPP server: one leads (holds the component link),
//! the other stands by and hands its pushes over; either may die, and so may PostgreSQL.
//!
//! Under load, the ledger of what senders were told (`201` with a TTL) is checked against what
//! the client received: nothing accepted may be missing, and nothing may arrive twice beyond the
//! at-least-once rule (a push in flight when the link died, whose answer was lost with it).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::{sync::watch, task::JoinSet};

use crate::harness::*;

/// Concurrent senders in the load tests; each has at most one push in flight.
const SENDERS: usize = 4;
/// How long the leader's successor may take to hold the link (issue 14).
const TAKEOVER: Duration = Duration::from_secs(10);

/// One XMPP server, one PostgreSQL, and two instances started in order: `first` leads.
struct Pair {
    server: Server,
    postgres: Postgres,
    first: Xup,
    second: Xup,
    _stores: [tempfile::TempDir; 2],
}

impl Pair {
    async fn start() -> Pair {
        let server = Server::start().await;
        let postgres = Postgres::start().await;
        let stores = [(); 2].map(|_| tempfile::tempdir().expect("store dir"));
        let settings = |store: &tempfile::TempDir| {
            let mut settings = XupSettings::new(store.path());
            settings.store_url = Some(postgres.url());
            settings.without_rate_limits();
            // Held messages are the point here: none may be dropped to stay within a bound.
            settings.delivery = vec![("max_held_per_registration", serde_json::json!(100_000))];
            settings
        };
        let first = Xup::start(xup_binary(), server.component_port(), &settings(&stores[0])).await;
        let second =
            Xup::start_standby(xup_binary(), server.component_port(), &settings(&stores[1])).await;
        Pair {
            server,
            postgres,
            first,
            second,
            _stores: stores,
        }
    }
}

/// `endpoint` (issued with `from`'s public URL) as served by `to`: behind a load balancer both
/// would share one URL.
fn via(endpoint: &str, from: &Xup, to: &Xup) -> String {
    endpoint.replacen(&from.base_url, &to.base_url, 1)
}

async fn health(xup: &Xup) -> (u16, Value) {
    let (status, body) = get(&format!("{}/health", xup.base_url)).await;
    (status, serde_json::from_str(&body).expect("health is JSON"))
}

/// `xup_leading` on `xup`'s `/metrics`.
async fn leading(xup: &Xup) -> f64 {
    let (status, page) = get(&format!("{}/metrics", xup.base_url)).await;
    assert_eq!(status, 200, "{page}");
    sample(&page, "xup_leading")
}

#[tokio::test]
async fn pushes_to_either_instance_arrive_and_a_revocation_holds_on_both_at_once() {
    let pair = Pair::start().await;
    let (status, leader) = health(&pair.first).await;
    assert_eq!((status, leader["role"].as_str()), (200, Some("leader")));
    let (status, standby) = health(&pair.second).await;
    assert_eq!(
        (
            status,
            standby["role"].as_str(),
            standby["component_link"].as_str()
        ),
        (200, Some("standby"), Some("down")),
        "a standby serves HTTP without the link"
    );
    assert_eq!(leading(&pair.first).await, 1.0);
    assert_eq!(leading(&pair.second).await, 0.0);

    let mut phone = Peer::connect(&pair.server, "juliet", DOMAIN, "phone").await;
    let one = phone.register(APP, INSTANCE).await.endpoint;
    let two = phone.register(&other_app(), INSTANCE).await.endpoint;
    assert_delivered(&one, &mut phone, b"through the leader").await;
    let one_via_standby = via(&one, &pair.first, &pair.second);
    assert_delivered(&one_via_standby, &mut phone, b"through the standby").await;

    // The client says the first app is gone in answer to a push that came in through the standby:
    // the sender hears 404 there, and neither instance relays to that endpoint again.
    phone.answer_for(APP, "item-not-found").await;
    assert_eq!(post(&one_via_standby, "gone?").await.status(), 404);
    assert_eq!(post(&one, "after").await.status(), 404);
    assert_eq!(post(&one_via_standby, "after").await.status(), 404);

    // The second app, revoked through the leader, is dead on the standby at once.
    phone.answer_for(&other_app(), "item-not-found").await;
    let two_via_standby = via(&two, &pair.first, &pair.second);
    assert_eq!(post(&two, "gone?").await.status(), 404);
    assert_eq!(post(&two_via_standby, "after").await.status(), 404);
    assert!(
        phone.pushes_so_far().len() == 2,
        "only the two revoking pushes reached the client after the revocations"
    );
    let kept = pair.postgres.psql("SELECT count(*) FROM revocations");
    assert_eq!(kept, "2", "both revocations are in the shared store");
}

/// A renewal through either leader returns the same endpoint, and an endpoint past its first
/// lifetime is alive at the standby as long as the shared store says it was renewed.
#[tokio::test]
async fn an_endpoint_stays_the_same_whoever_leads_and_lives_at_both_while_renewed() {
    let mut pair = Pair::start().await;
    let mut phone = Peer::connect(&pair.server, "juliet", DOMAIN, "phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    assert_eq!(phone.register(APP, INSTANCE).await.endpoint, endpoint);

    // A token a week and a day old, renewed (as the row says) until tomorrow.
    let now = std::time::SystemTime::now();
    let (day, week) = (Duration::from_secs(86400), Duration::from_secs(7 * 86400));
    let issued = now - week - day;
    let old = xup::token::KeyRing::new(&[SECRET_A.to_owned()], COMPONENT)
        .expect("keys")
        .issue(&xup::token::claims_for(
            &phone.jid,
            APP,
            &other_app(),
            issued,
            week,
        ))
        .expect("token");
    let old = format!("{}/push/{old}", pair.second.base_url);
    assert_eq!(post(&old, "not renewed").await.status(), 404);
    let key = xup::store::registration_key_of(&phone.jid, APP, &other_app());
    pair.postgres.psql(&format!(
        "INSERT INTO registrations
         (registration, account, issued_at_us, renewed_at_us, expires_at_us, kept)
         VALUES (decode('{}', 'hex'), 'juliet@{DOMAIN}', {}, {}, {}, 'not needed')",
        xup::store::key_to_hex(&key),
        xup::store::micros(issued),
        xup::store::micros(now),
        xup::store::micros(now + day),
    ));
    assert_delivered(&old, &mut phone, b"renewed, through the standby").await;

    pair.first.kill().await;
    pair.second.wait_log("component link up").await;
    // Each instance here has its own public URL; behind one load balancer they would share it.
    let endpoint = via(&endpoint, &pair.first, &pair.second);
    assert_eq!(
        phone.register(APP, INSTANCE).await.endpoint,
        endpoint,
        "the new leader hands out the same endpoint"
    );
    assert_delivered(&endpoint, &mut phone, b"through the new leader").await;
}

/// What the senders were told, and what the client received.
#[derive(Default)]
struct Ledger {
    /// Every body POSTed, answered or not (its instance may have died after delivering it).
    sent: HashSet<String>,
    /// Body → status, for every request that got an HTTP answer.
    answered: HashMap<String, u16>,
    received: HashMap<String, usize>,
}

impl Ledger {
    fn accepted(&self) -> Vec<&String> {
        let mut accepted: Vec<_> = self
            .answered
            .iter()
            .filter(|(_, status)| **status == 201)
            .map(|(body, _)| body)
            .collect();
        accepted.sort();
        accepted
    }
}

/// `SENDERS` senders POSTing numbered messages with a TTL, each to the two endpoints in turn,
/// until `stop`. A request that gets no HTTP answer (its instance is dead) is not in the ledger.
fn load(
    endpoints: [String; 2],
    ledger: Arc<Mutex<Ledger>>,
    stop: watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut senders = JoinSet::new();
    for sender in 0..SENDERS {
        let (endpoints, ledger, stop) = (endpoints.clone(), ledger.clone(), stop.clone());
        senders.spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("client");
            let mut n = 0usize;
            while !*stop.borrow() {
                let body = format!("s{sender}-m{n}");
                let endpoint = &endpoints[n % 2];
                n += 1;
                ledger.lock().expect("ledger").sent.insert(body.clone());
                let sent = client
                    .post(endpoint)
                    .header("TTL", "600")
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        ledger.lock().expect("ledger").answered.insert(body, status);
                    }
                    // The instance is gone: a load balancer would send the next one elsewhere.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
    }
    senders
}

/// Note the next push `phone` receives in the ledger.
async fn take(phone: &mut Peer, ledger: &Mutex<Ledger>) {
    let body = String::from_utf8(phone.next_push().await.data).expect("utf-8");
    *ledger
        .lock()
        .expect("ledger")
        .received
        .entry(body)
        .or_default() += 1;
}

/// Take pushes into the ledger until every accepted message is there (each wait for the next is
/// bounded by `WAIT`), then check it: nothing that was never sent, few twice.
async fn settle(phone: &mut Peer, ledger: &Mutex<Ledger>) {
    loop {
        let missing = {
            let ledger = ledger.lock().expect("ledger");
            ledger
                .accepted()
                .into_iter()
                .filter(|body| !ledger.received.contains_key(*body))
                .count()
        };
        if missing == 0 {
            break;
        }
        take(phone, ledger).await;
    }
    for push in phone.pushes_so_far() {
        let body = String::from_utf8(push.data).expect("utf-8");
        *ledger
            .lock()
            .expect("ledger")
            .received
            .entry(body)
            .or_default() += 1;
    }
    let ledger = ledger.lock().expect("ledger");
    let twice: usize = ledger.received.values().map(|n| n - 1).sum();
    assert!(
        twice <= SENDERS,
        "{twice} deliveries beyond the first; at most one per push in flight ({SENDERS})"
    );
    for body in ledger.received.keys() {
        assert!(ledger.sent.contains(body), "{body} was never sent");
    }
}

/// A phone, and the load of [`load`] on its endpoint through both instances.
struct UnderLoad {
    phone: Peer,
    ledger: Arc<Mutex<Ledger>>,
    stop: watch::Sender<bool>,
    senders: JoinSet<()>,
}

impl UnderLoad {
    /// Register a phone through the leader and load both instances until 100 pushes are answered.
    async fn start(pair: &Pair) -> UnderLoad {
        let mut phone = Peer::connect(&pair.server, "juliet", DOMAIN, "phone").await;
        let endpoint = phone.register(APP, INSTANCE).await.endpoint;
        let endpoints = [endpoint.clone(), via(&endpoint, &pair.first, &pair.second)];
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (stop, stopped) = watch::channel(false);
        let senders = load(endpoints, ledger.clone(), stopped);
        let mut loaded = UnderLoad {
            phone,
            ledger,
            stop,
            senders,
        };
        loaded.answer_more(100).await;
        loaded
    }

    /// Take pushes until `more` requests than now have been answered.
    async fn answer_more(&mut self, more: usize) {
        let answered = |ledger: &Mutex<Ledger>| ledger.lock().expect("ledger").answered.len();
        let target = answered(&self.ledger) + more;
        while answered(&self.ledger) < target {
            take(&mut self.phone, &self.ledger).await;
        }
    }

    /// Stop the load, take every accepted message, check the ledger, and return it.
    async fn finish(mut self) -> Arc<Mutex<Ledger>> {
        self.stop.send_replace(true);
        while self.senders.join_next().await.is_some() {}
        settle(&mut self.phone, &self.ledger).await;
        self.ledger
    }
}

#[tokio::test]
async fn the_standby_takes_the_link_when_the_leader_is_killed_and_nothing_accepted_is_lost() {
    let mut pair = Pair::start().await;
    // Load is flowing through both instances before the kill.
    let mut loaded = UnderLoad::start(&pair).await;
    pair.first.kill().await;
    let killed = Instant::now();
    pair.second.wait_log("component link up").await;
    let takeover = killed.elapsed();
    assert!(
        takeover < TAKEOVER,
        "the standby took {takeover:?} to hold the link"
    );
    let (status, health) = health(&pair.second).await;
    assert_eq!((status, health["role"].as_str()), (200, Some("leader")));
    assert_eq!(leading(&pair.second).await, 1.0);

    // Load goes on through the new leader for a while, then stops.
    loaded.answer_more(100).await;
    let ledger = loaded.finish().await;
    let ledger = ledger.lock().expect("ledger");
    let refused: Vec<_> = ledger.answered.values().filter(|s| **s != 201).collect();
    assert!(refused.is_empty(), "every push was accepted: {refused:?}");
    eprintln!(
        "takeover in {takeover:?}; {} accepted, {} delivered more than once",
        ledger.accepted().len(),
        ledger.received.values().filter(|n| **n > 1).count()
    );
}

#[tokio::test]
async fn pushes_are_held_or_refused_while_postgres_restarts_and_the_pair_recovers_by_itself() {
    let mut pair = Pair::start().await;
    let mut loaded = UnderLoad::start(&pair).await;
    pair.postgres.restart().await;
    // Some instance leads again, without being restarted, and pushes flow through both.
    let recovered = Instant::now();
    'recovery: loop {
        for xup in [&pair.first, &pair.second] {
            let (status, health) = health(xup).await;
            if status == 200 && health["role"] == "leader" && health["component_link"] == "up" {
                break 'recovery;
            }
        }
        assert!(
            recovered.elapsed() < WAIT,
            "no instance leads again within {WAIT:?} of PostgreSQL's restart"
        );
        // Polled: leadership is only visible through /health.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loaded.answer_more(100).await;
    let ledger = loaded.finish().await;
    let ledger = ledger.lock().expect("ledger");
    let other: Vec<_> = ledger
        .answered
        .values()
        .filter(|s| **s != 201 && **s != 503)
        .collect();
    assert!(
        other.is_empty(),
        "only 201 or 503 while PostgreSQL restarts: {other:?}"
    );
    eprintln!(
        "{} accepted, {} refused with 503, {} delivered more than once",
        ledger.accepted().len(),
        ledger.answered.values().filter(|s| **s == 503).count(),
        ledger.received.values().filter(|n| **n > 1).count()
    );
}

#[tokio::test]
async fn what_either_instance_held_is_delivered_once_by_whoever_leads_next() {
    let mut pair = Pair::start().await;
    let mut phone = Peer::connect(&pair.server, "juliet", DOMAIN, "phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    phone.quit().await;
    let doors = [endpoint.clone(), via(&endpoint, &pair.first, &pair.second)];
    let bodies: Vec<String> = (0..6).map(|i| format!("held {i}")).collect();
    for (i, body) in bodies.iter().enumerate() {
        let response = post_with(&doors[i % 2], &[("TTL", "600")], body.clone()).await;
        assert_eq!(response.status(), 201, "{body}");
        assert_eq!(response.headers()["ttl"], "600", "{body}: held");
    }
    assert_eq!(pair.postgres.psql("SELECT count(*) FROM held"), "6");

    pair.first.kill().await;
    pair.second.wait_log("component link up").await;
    let mut phone = Peer::connect(&pair.server, "juliet", DOMAIN, "phone").await;
    phone.announce().await;
    for body in &bodies {
        let push = phone.next_push().await;
        assert_eq!(String::from_utf8(push.data).expect("utf-8"), *body);
    }
    let survivor = via(&endpoint, &pair.first, &pair.second);
    assert_delivered(&survivor, &mut phone, b"and nothing else").await;
    assert_eq!(pair.postgres.psql("SELECT count(*) FROM held"), "0");
}

#[tokio::test]
async fn the_store_can_be_reached_over_tls_and_an_untrusted_certificate_is_refused() {
    let server = Server::start().await;
    let mut postgres = Postgres::start().await;
    let certificate = postgres.enable_tls().await;
    let store = tempfile::tempdir().expect("store dir");
    let mut settings = XupSettings::new(store.path());
    settings.store_url = Some(format!("{}?sslmode=require", postgres.url()));

    // The server's certificate is self-signed: without it trusted, xup does not start.
    let mut untrusting = Xup::spawn(xup_binary(), server.component_port(), &settings);
    let refused = untrusting.wait_log("certificate").await;
    assert!(refused.contains("TLS"), "{refused}");
    assert!(!untrusting.stop().await.success());

    settings.store_ca_file = Some(certificate);
    let xup = Xup::start(xup_binary(), server.component_port(), &settings).await;
    let encrypted = postgres.psql(
        "SELECT count(*) FILTER (WHERE ssl) || '/' || count(*) FROM pg_stat_ssl
         JOIN pg_stat_activity USING (pid)
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
           AND client_addr IS NOT NULL AND usename = 'xup' AND application_name = ''",
    );
    let (tls, all) = encrypted.split_once('/').expect("two counts");
    assert!(
        all != "0" && tls == all,
        "xup's connections over TLS: {encrypted}"
    );
    let mut phone = Peer::connect(&server, "juliet", DOMAIN, "phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    assert_delivered(&endpoint, &mut phone, b"through a store over TLS").await;
    drop(xup);
}

/// How many notices `xup` dropped for `reason` (`cluster/notice.rs`); 0 before the first.
async fn rejected(xup: &Xup, reason: &str) -> f64 {
    let (status, page) = get(&format!("{}/metrics", xup.base_url)).await;
    assert_eq!(status, 200, "{page}");
    let name = format!("xup_cluster_rejected_total{{reason=\"{reason}\"}}");
    match page.contains(&name) {
        true => sample(&page, &name),
        false => 0.0,
    }
}

/// Wait until `xup` has dropped at least one notice for `reason`.
async fn await_rejected(xup: &Xup, reason: &str) {
    let deadline = Instant::now() + WAIT;
    while rejected(xup, reason).await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no notice dropped as {reason} at {} within {WAIT:?}",
            xup.base_url
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Another role of the same database (PostgreSQL grants `CONNECT` to `PUBLIC` by default, and
/// channels have no privileges) listens on the instances' channels and speaks on them, as an
/// attacker would: it reads neither a push's body nor whom it is for, and nothing it says is acted
/// on: not a recorded hand-off played again, not a hand-off of its own, not a revocation.
#[tokio::test]
async fn another_database_role_can_neither_read_nor_forge_what_the_instances_say() {
    let pair = Pair::start().await;
    pair.postgres.psql("CREATE ROLE mallory LOGIN");
    let mallory_url = format!("postgres://mallory@127.0.0.1:{}/xup", pair.postgres.port);
    let (mallory, mut connection) = tokio_postgres::connect(&mallory_url, tokio_postgres::NoTls)
        .await
        .expect("any role may connect");
    let (overheard, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let _listening = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = overheard.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    mallory
        .batch_execute("LISTEN xup_push; LISTEN xup_held; LISTEN xup_revoked;")
        .await
        .expect("any role may listen");

    let mut phone = Peer::connect(&pair.server, "juliet", DOMAIN, "phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    let via_standby = via(&endpoint, &pair.first, &pair.second);
    assert_delivered(&via_standby, &mut phone, b"meet me at midnight").await;
    let (_, handed) = first_matching(&mut heard, "the hand-off, overheard", |(channel, _)| {
        channel == "xup_push"
    })
    .await;
    for secret in ["meet me", "bWVldCBtZSBhdCBtaWRuaWdodA", "juliet", APP] {
        assert!(
            !handed.contains(secret),
            "a listener reads {secret:?} in {handed}"
        );
    }

    let notify = |channel: &'static str, payload: String| {
        let mallory = &mallory;
        async move {
            mallory
                .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
                .await
                .expect("any role may notify");
        }
    };
    // The recording, played again: the leader would relay the push a second time.
    notify("xup_push", handed).await;
    await_rejected(&pair.first, "replayed").await;
    // A hand-off of its own, as the instances' notices looked before they were sealed.
    let now_us = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_micros(),
    )
    .expect("fits");
    let forged = serde_json::json!({
        "reply_to": "0000000000000000",
        "ticket": 0,
        "claims": {
            "subject": phone.jid, "application": APP, "instance": INSTANCE,
            "issued_at_us": now_us, "expires_at_us": now_us + 86_400_000_000_i64, "sum7": false,
        },
        "body": "Zm9yZ2Vk",
        "ttl": 60,
        "topic": null,
        "urgency": "normal",
        "waited_ms": 0,
    });
    notify("xup_push", forged.to_string()).await;
    await_rejected(&pair.first, "forged").await;
    // A revocation of the phone's registration, which nobody made.
    let key = xup::store::registration_key_of(&phone.jid, APP, INSTANCE);
    let revocation = format!(
        "{} {} {}",
        xup::store::key_to_hex(&key),
        now_us + 60_000_000,
        now_us + 86_400_000_000_i64
    );
    notify("xup_revoked", revocation).await;
    await_rejected(&pair.first, "unfounded").await;
    await_rejected(&pair.second, "unfounded").await;

    // Nothing reached the phone meanwhile, and the endpoint lives behind both doors.
    assert_delivered(&endpoint, &mut phone, b"after the attack").await;
    assert_delivered(&via_standby, &mut phone, b"and through the standby").await;
    assert!(
        phone.pushes_so_far().is_empty(),
        "nothing else reached the phone"
    );
}
