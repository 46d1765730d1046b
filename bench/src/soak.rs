//! `xup-bench soak`: minutes of steady load while clients drop off and come back and the XMPP
//! server is killed and restarted, then the ledger is checked: every message answered `201` with a
//! `TTL` above 0 must have reached its client.
//!
//! One message in five is sent with `TTL: 0` ("now or never"); those may be dropped while their
//! client is away. A message can reach its client twice only when the XMPP server dies after
//! handing it over and before passing back the client's `result`, so the duplicates allowed are at
//! most the requests in flight at each kill.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use futures::future::try_join_all;
use serde_json::json;
use tokio::sync::watch;
use xup_testbed::{COMPONENT, DOMAIN, PASSWORD, Prosody, Xup, XupSettings};

use crate::{
    Provider,
    ledger::Ledger,
    load::{self, Load, Target},
    procstat::{self, Proc},
    register,
    session::Session,
};

/// How long a client stays offline each time.
const OFFLINE_FOR: Duration = Duration::from_secs(3);

#[derive(Args)]
pub struct SoakArgs {
    /// How long to keep the load and the trouble going, in minutes.
    #[arg(long, default_value_t = 3.0)]
    minutes: f64,
    /// Client sessions; one at a time goes offline for a while.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Endpoints, spread over the sessions.
    #[arg(long, default_value_t = 16)]
    endpoints: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Seconds between one client going offline and the next.
    #[arg(long, default_value_t = 7)]
    offline_every: u64,
    /// Seconds between kills of the XMPP server.
    #[arg(long, default_value_t = 40)]
    kill_every: u64,
}

/// Run the soak; `Ok(false)` if a message answered 201 with a TTL was lost, or too many came twice.
pub async fn run(args: SoakArgs, xup_binary: std::path::PathBuf) -> anyhow::Result<bool> {
    procstat::raise_open_files_limit();
    let mut prosody = Prosody::start().await;
    let store = tempfile::tempdir()?;
    let mut settings = XupSettings::new(store.path());
    settings.timeout = "5s";
    settings.log_filter = "xup=info";
    // Clients that miss their own presence (a kill between reconnect and announce) still get theirs.
    // The load is unthrottled, so an outage holds thousands of messages per registration: the
    // per-registration bound (which drops the oldest by design) is lifted, and so are the
    // account's and domain's (a few accounts on one domain), to test what the soak is about, that
    // nothing answered 201 is lost to a crash.
    settings.delivery = vec![
        ("retry_interval", json!("10s")),
        ("max_held_per_registration", json!(1_000_000)),
        ("max_held", json!(10_000_000)),
        ("max_held_per_account", json!(10_000_000)),
        ("max_held_per_domain", json!(10_000_000)),
    ];
    settings.without_rate_limits();
    let xup = Xup::start(&xup_binary, prosody.component_port, &settings).await;
    let provider = Provider {
        name: "xup",
        jid: COMPONENT.parse()?,
        http: ([127, 0, 0, 1], settings.http_port).into(),
        process: xup.pid().map(Proc::Pid),
        target: None,
        applications: Vec::new(),
    };

    let epoch = Instant::now();
    let deadline = epoch + Duration::from_secs_f64(args.minutes * 60.0);
    // Room for far more messages than a loopback run can send in the time.
    let capacity = (args.minutes * 60.0 * 20_000.0) as usize;
    let ledger = Arc::new(Ledger::new(1, capacity, epoch));
    let (_ledgers, watched) = watch::channel(ledger.clone());
    let users: Vec<String> = (0..args.clients).map(|i| format!("soak{i}")).collect();
    for user in &users {
        prosody.add_user(user, DOMAIN);
    }
    let connect = |port: u16, user: String, watched: watch::Receiver<Arc<Ledger>>| async move {
        let session = Session::connect(port, &user, DOMAIN, PASSWORD, watched).await?;
        session.announce(COMPONENT).await?;
        anyhow::Ok(session)
    };
    let sessions = try_join_all(
        users
            .iter()
            .map(|u| connect(prosody.c2s_port, u.clone(), watched.clone())),
    )
    .await?;
    let (endpoints, _) = register(&sessions, &provider, args.endpoints, usize::MAX).await?;
    let endpoints: Vec<String> = endpoints.into_iter().map(|(url, _)| url).collect();
    let mut sessions: Vec<Option<Session>> = sessions.into_iter().map(Some).collect();
    let target = Arc::new(Target::new(provider.http, &endpoints)?);

    let load = Load {
        run: 1,
        messages: capacity as u64,
        concurrency: args.concurrency,
        body_len: 256,
        epoch,
        zero_ttl_every: 5,
        until: Some(deadline),
    };
    println!(
        "xup-bench soak: {:.1} min, {} clients, {} endpoints, {} in flight; a client offline every {} s, Prosody killed every {} s",
        args.minutes,
        args.clients,
        args.endpoints,
        args.concurrency,
        args.offline_every,
        args.kill_every
    );
    let firing = tokio::spawn(async move { load::fire(&[target], &load).await });

    // The trouble: clients off and on line, the XMPP server killed and started again.
    let mut kills = 0;
    let mut next_kill = Instant::now() + Duration::from_secs(args.kill_every);
    let mut next_client = 0;
    while Instant::now() + Duration::from_secs(args.offline_every) + OFFLINE_FOR < deadline {
        tokio::time::sleep(Duration::from_secs(args.offline_every)).await;
        if Instant::now() >= next_kill {
            prosody.restart().await;
            kills += 1;
            next_kill = Instant::now() + Duration::from_secs(args.kill_every);
            println!("  killed and restarted Prosody ({kills})");
        } else {
            let i = next_client % sessions.len();
            next_client += 1;
            // Offline: the connection closes, and pushes for it are bounced (and held) meanwhile.
            sessions[i] = None;
            tokio::time::sleep(OFFLINE_FOR).await;
            println!("  {} was offline for {OFFLINE_FOR:?}", users[i]);
        }
        for (i, session) in sessions.iter_mut().enumerate() {
            if !session.as_ref().is_some_and(Session::is_alive) {
                let back = connect(prosody.c2s_port, users[i].clone(), watched.clone())
                    .await
                    .with_context(|| format!("{} coming back", users[i]))?;
                *session = Some(back);
            }
        }
    }
    let samples = firing.await?;

    // Everyone back and announced; give held messages time to go out.
    for (i, session) in sessions.iter_mut().enumerate() {
        match session {
            Some(alive) if alive.is_alive() => alive.announce(COMPONENT).await?,
            _ => {
                *session =
                    Some(connect(prosody.c2s_port, users[i].clone(), watched.clone()).await?);
            }
        }
    }
    let owed: Vec<u64> = samples
        .iter()
        .filter(|s| s.status == 201 && !load.is_now_or_never(s.seq))
        .map(|s| s.seq)
        .collect();
    let settle = Instant::now() + Duration::from_secs(60);
    while owed.iter().any(|seq| ledger.arrived_at(*seq).is_none()) && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let lost = owed
        .iter()
        .filter(|seq| ledger.arrived_at(**seq).is_none())
        .count();
    let twice = samples.iter().filter(|s| ledger.copies(s.seq) > 1).count();
    let mut statuses = std::collections::BTreeMap::new();
    for sample in &samples {
        *statuses.entry(sample.status).or_insert(0u64) += 1;
    }
    let unexpected: u64 = statuses
        .iter()
        .filter(|(status, _)| ![201, 503].contains(*status))
        .map(|(_, n)| n)
        .sum();
    let allowed_twice = kills * args.concurrency;
    println!(
        "\n{} requests: {statuses:?} (status: count); {} owed delivery (201, TTL > 0): {lost} lost; {twice} delivered twice (allowed: {allowed_twice}, the requests in flight at {kills} kills)",
        samples.len(),
        owed.len(),
    );
    println!(
        "{}",
        json!({
            "kind": "soak", "minutes": args.minutes, "requests": samples.len(),
            "owed": owed.len(), "lost": lost, "twice": twice, "kills": kills,
            "unexpected_statuses": unexpected,
        })
    );
    Ok(lost == 0 && unexpected == 0 && twice <= allowed_twice)
}
