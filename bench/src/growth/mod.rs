//! `xup-bench growth`: how xup's costs grow with what it keeps and with the load it is under, on
//! the embedded SQLite store and on PostgreSQL, each point measured on a real xup behind a real
//! Prosody (and a real PostgreSQL) from a store prepared for it.
//!
//! Four curves per engine:
//! - **held messages** (`--sizes`, spread ten to a registration over accounts that do not exist,
//!   plus a 1 000-message backlog for one real client): the store's size, xup's start-up time
//!   and memory once it has offered everything it holds, and how long the returning client
//!   takes to receive its backlog;
//! - **revocations kept** (`--sizes`): start-up time, memory, and the CPU a push costs;
//! - **concurrency** (`--concurrency`): registrations per second over XMPP and pushes per second
//!   with that many requests in flight;
//! - **the Matrix gateway**: notifies per second with 1 and with 20 pushkeys each.
//!
//! Every point is printed, appended as a JSON line to `--json`, and drawn into `--plot` (SVG,
//! log-log, `plot.rs`), which docs/BENCHMARKS.md and the README link to.

mod plot;
mod seed;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;
use tokio::sync::watch;
use xup::store::{Engine, postgres, sqlite::Sqlite};
use xup_testbed::{COMPONENT, DOMAIN, PASSWORD, Postgres, Prosody, Server, Xup, XupSettings};

use crate::{
    ARRIVAL_GRACE, Output, Provider,
    ledger::Ledger,
    load::{self, Load, Target},
    procstat::{self, Proc},
    register,
    report::{Run, percentile},
    session::Session,
};

#[derive(Args)]
pub struct GrowthArgs {
    /// Held messages, and revocations, at each point of their curves.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000, 30_000, 100_000, 300_000, 1_000_000])]
    sizes: Vec<usize>,
    /// Requests in flight at each point of the concurrency curves.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4, 16, 64, 256, 1024])]
    concurrency: Vec<usize>,
    /// Store engines to measure: sqlite, postgres.
    #[arg(long, value_delimiter = ',', default_values_t = ["sqlite".to_owned(), "postgres".to_owned()])]
    engines: Vec<String>,
    /// Pushes per measured run (a Matrix run sends this many pushes, in notifies of 1 or 20).
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Unmeasured pushes before each measured run.
    #[arg(long, default_value_t = 500)]
    warmup: u64,
    /// Registrations at each point of the concurrency curve (at least four per slot in flight).
    #[arg(long, default_value_t = 2_000)]
    registrations: usize,
    /// Client sessions, each a distributor on its own c2s connection.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Endpoints the pushes go to, spread over the sessions.
    #[arg(long, default_value_t = 256)]
    endpoints: usize,
    /// Append one JSON line per point here.
    #[arg(long, default_value = "target/xup-bench.jsonl")]
    json: PathBuf,
    /// Draw every curve here (SVG).
    #[arg(long, default_value = "target/growth.svg")]
    plot: PathBuf,
}

/// Messages in the returning client's backlog.
const BACKLOG: usize = 1_000;
/// Concurrency of the push runs of the revocation and Matrix curves.
const CONCURRENCY: usize = 64;
/// Pushkeys per notify on the Matrix curve.
const PUSHKEYS: [usize; 2] = [1, 20];

/// One measured point: which engine, which curve, where on it, and what was measured there.
pub struct Point {
    pub engine: &'static str,
    pub curve: &'static str,
    pub x: f64,
    pub values: Vec<(&'static str, f64)>,
}

impl Point {
    pub fn value(&self, metric: &str) -> Option<f64> {
        self.values
            .iter()
            .find(|(name, _)| *name == metric)
            .map(|(_, v)| *v)
    }
}

/// What every point shares: the servers, the client sessions and where their arrivals go.
struct World {
    xup_binary: PathBuf,
    prosody: Server,
    postgres: Option<Postgres>,
    sessions: Vec<Session>,
    ledgers: watch::Sender<Arc<Ledger>>,
    epoch: Instant,
    next_run: u32,
    next_store: usize,
}

/// A store engine the curves are drawn for.
#[derive(Clone, Copy)]
enum Kind {
    Sqlite,
    Postgres,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sqlite => "SQLite",
            Kind::Postgres => "PostgreSQL",
        }
    }
}

/// An empty store for one point: the settings an xup on it runs with, and the engine to fill it
/// through before xup starts (dropped by then).
struct Fresh {
    settings: XupSettings,
    engine: Arc<dyn Engine>,
    _dir: tempfile::TempDir,
}

pub async fn run(args: GrowthArgs, xup_binary: PathBuf) -> anyhow::Result<bool> {
    procstat::raise_open_files_limit();
    let kinds: Vec<Kind> = args
        .engines
        .iter()
        .map(|name| match name.as_str() {
            "sqlite" => Ok(Kind::Sqlite),
            "postgres" => Ok(Kind::Postgres),
            other => bail!("unknown engine {other:?} (sqlite, postgres)"),
        })
        .collect::<anyhow::Result<_>>()?;
    let prosody = Server::Prosody(Prosody::start().await);
    prosody.add_user("back", DOMAIN).await;
    let postgres = match kinds.iter().any(|k| matches!(k, Kind::Postgres)) {
        true => Some(Postgres::start().await),
        false => None,
    };
    let epoch = Instant::now();
    let (ledgers, ledger) = watch::channel(Arc::new(Ledger::new(0, 0, epoch)));
    let sessions = Session::connect_many(&prosody, "growth", args.clients, &ledger).await?;
    let mut world = World {
        xup_binary,
        prosody,
        postgres,
        sessions,
        ledgers,
        epoch,
        next_run: 1,
        next_store: 0,
    };
    let mut out = Output::open(&args.json)?;
    let mut points = Vec::new();
    let mut sound = true;

    println!("xup-bench growth: held messages (ten per registration, plus a backlog of {BACKLOG})");
    println!(
        "  {:<11} {:>9} {:>10} {:>9} {:>9} {:>9} {:>11}",
        "engine", "held", "store MiB", "start s", "RSS MiB", "peak MiB", "backlog s"
    );
    for &kind in &kinds {
        for &size in &args.sizes {
            let point = held_point(&mut world, kind, size).await?;
            println!(
                "  {:<11} {:>9} {:>10.1} {:>9.2} {:>9.1} {:>9.1} {:>11.2}",
                kind.name(),
                size,
                point.value("store_mib").unwrap_or_default(),
                point.value("start_s").unwrap_or_default(),
                point.value("rss_mib").unwrap_or_default(),
                point.value("peak_rss_mib").unwrap_or_default(),
                point.value("backlog_s").unwrap_or_default(),
            );
            out.line(point_json(&point))?;
            points.push(point);
        }
    }

    println!("\nrevocations kept (pushes at C = {CONCURRENCY})");
    println!(
        "  {:<11} {:>9} {:>10} {:>9} {:>9} {:>10} {:>9}",
        "engine", "kept", "store MiB", "start s", "RSS MiB", "pushes/s", "xup µs"
    );
    for &kind in &kinds {
        for &size in &args.sizes {
            let (point, run) = revocations_point(&mut world, kind, size, &args).await?;
            sound &= run.is_sound();
            println!(
                "  {:<11} {:>9} {:>10.1} {:>9.2} {:>9.1} {:>10.0} {:>9.1}",
                kind.name(),
                size,
                point.value("store_mib").unwrap_or_default(),
                point.value("start_s").unwrap_or_default(),
                point.value("rss_mib").unwrap_or_default(),
                point.value("pushes_per_second").unwrap_or_default(),
                point.value("xup_us_per_push").unwrap_or_default(),
            );
            out.line(point_json(&point))?;
            points.push(point);
        }
    }

    println!("\nconcurrency (registrations over XMPP; pushes) and the Matrix gateway");
    println!(
        "  {:<11} {:>6} {:>10} {:>10} {:>9} {:>9}",
        "engine", "C", "regs/s", "pushes/s", "p99 ms", "xup µs"
    );
    for &kind in &kinds {
        let (curves, fine) = load_points(&mut world, kind, &args).await?;
        sound &= fine;
        for point in curves {
            match point.curve {
                "concurrency" => println!(
                    "  {:<11} {:>6} {:>10.0} {:>10.0} {:>9.2} {:>9.1}",
                    kind.name(),
                    point.x,
                    point.value("registrations_per_second").unwrap_or_default(),
                    point.value("pushes_per_second").unwrap_or_default(),
                    point.value("p99_ms").unwrap_or_default(),
                    point.value("xup_us_per_push").unwrap_or_default(),
                ),
                _ => println!(
                    "  {:<11} Matrix, {:>2} pushkeys: {:>7.0} notifies/s, {:>7.0} pushes/s, \
                     {:.1} xup µs per push; lost {}",
                    kind.name(),
                    point.x,
                    point.value("notifies_per_second").unwrap_or_default(),
                    point.value("pushes_per_second").unwrap_or_default(),
                    point.value("xup_us_per_push").unwrap_or_default(),
                    point.value("lost").unwrap_or_default(),
                ),
            }
            out.line(point_json(&point))?;
            points.push(point);
        }
    }

    plot::write(&args.plot, &points)?;
    println!(
        "\nJSON lines appended to {}; curves drawn in {}",
        args.json.display(),
        args.plot.display()
    );
    Ok(sound)
}

fn point_json(point: &Point) -> serde_json::Value {
    let values: serde_json::Map<String, serde_json::Value> = point
        .values
        .iter()
        .map(|(name, value)| (name.to_string(), json!(value)))
        .collect();
    json!({
        "kind": "growth", "engine": point.engine, "curve": point.curve, "x": point.x,
        "values": values,
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    })
}

impl World {
    /// An empty store of `kind`, and settings for an xup on it that measure xup, not its limits.
    async fn fresh(&mut self, kind: Kind) -> anyhow::Result<Fresh> {
        let dir = tempfile::tempdir()?;
        let mut settings = XupSettings::new(dir.path());
        settings.log_filter = "xup=info";
        settings.without_rate_limits();
        settings.http = vec![
            ("max_connections", json!(50_000)),
            ("max_in_flight", json!(50_000)),
        ];
        settings.delivery = vec![
            ("max_held", json!(10_000_000)),
            ("max_held_per_account", json!(10_000_000)),
            ("max_held_per_domain", json!(10_000_000)),
            ("max_held_per_registration", json!(BACKLOG)),
        ];
        self.next_store += 1;
        let engine: Arc<dyn Engine> = match kind {
            Kind::Sqlite => Arc::new(Sqlite::open(dir.path())?),
            Kind::Postgres => {
                let server = self.postgres.as_ref().context("no PostgreSQL started")?;
                let url = server.create_database(&format!("growth{}", self.next_store));
                settings.store_url = Some(url.clone());
                Arc::new(postgres::Postgres::connect(&postgres::Target::new(&url, None)?, 4).await?)
            }
        };
        Ok(Fresh {
            settings,
            engine,
            _dir: dir,
        })
    }

    /// Start xup on `settings`; it and how long it took to serve HTTP with its link up.
    async fn start(&self, settings: &XupSettings) -> anyhow::Result<(Xup, Proc, f64)> {
        let started = Instant::now();
        let xup = Xup::start(&self.xup_binary, self.prosody.component_port(), settings).await;
        let took = started.elapsed().as_secs_f64();
        let process = Proc::Pid(xup.pid().context("xup's pid")?);
        Ok((xup, process, took))
    }

    fn run_number(&mut self) -> u32 {
        self.next_run += 1;
        self.next_run
    }

    /// Register the push runs' endpoints with the xup listening on `port`.
    async fn target(&self, port: u16, count: usize) -> anyhow::Result<Target> {
        let provider = provider(port);
        let (endpoints, _) = register(&self.sessions, &provider, count, usize::MAX).await?;
        let urls: Vec<String> = endpoints.into_iter().map(|(url, _)| url).collect();
        Target::new(provider.http, &urls)
    }

    /// `warmup` pushes, then `messages` at `concurrency` to `target`, tallied with xup's CPU.
    async fn pushes(
        &mut self,
        target: &Arc<Target>,
        xup: Proc,
        (warmup, messages): (u64, u64),
        concurrency: usize,
    ) -> anyhow::Result<(Run, f64)> {
        let mut load = Load {
            run: self.run_number(),
            messages: warmup,
            concurrency,
            body_len: 256,
            epoch: self.epoch,
            zero_ttl_every: 0,
            until: None,
        };
        self.arrive(target, &load, 1).await;
        load.run = self.run_number();
        load.messages = messages;
        let before = xup.cpu_seconds()?;
        let (samples, ledger) = self.arrive(target, &load, 1).await;
        let cpu = xup.cpu_seconds()? - before;
        let run = Run::tally("xup", &load, &samples, &ledger);
        Ok((run, cpu))
    }

    /// Fire `load` at `target` and wait (up to the grace) until every accepted request's
    /// `per_request` pushes have arrived. Matrix notifies' arrivals carry the notification, not
    /// a message id, so the ledger counts them as strays.
    async fn arrive(
        &self,
        target: &Arc<Target>,
        load: &Load,
        per_request: u64,
    ) -> (Vec<load::Sample>, Arc<Ledger>) {
        let numbered = if target.notify_devices == 0 {
            load.messages as usize
        } else {
            0
        };
        let ledger = Arc::new(Ledger::new(load.run, numbered, load.epoch));
        self.ledgers.send_replace(ledger.clone());
        let samples = load::fire(std::slice::from_ref(target), load).await;
        let accepted = samples.iter().filter(|s| s.ok()).count() as u64;
        let arrived = || match numbered {
            0 => ledger.strays(),
            _ => ledger.distinct(),
        };
        let deadline = Instant::now() + ARRIVAL_GRACE;
        while arrived() < accepted * per_request && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (samples, ledger)
    }
}

fn provider(port: u16) -> Provider {
    Provider {
        name: "xup",
        jid: COMPONENT.parse().expect("the component's JID"),
        http: ([127, 0, 0, 1], port).into(),
        process: None,
        target: None,
        applications: Vec::new(),
    }
}

/// Wait until xup has nothing left to do: its CPU time grows by less than 1 % of a core over a
/// second. Offering a large store's held messages to clients that are gone takes a while after
/// start-up, and xup says nothing when it is through; its CPU does.
async fn settle(xup: Proc) -> anyhow::Result<()> {
    const QUIET: f64 = 0.01;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = xup.cpu_seconds()?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = xup.cpu_seconds()?;
        if now - last < QUIET {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("xup still busy 300 s after it started");
        }
        last = now;
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn store_mib(engine: &dyn Engine) -> anyhow::Result<f64> {
    Ok(engine.size().await? as f64 / (1024.0 * 1024.0))
}

/// One point of the held-message curve.
async fn held_point(world: &mut World, kind: Kind, size: usize) -> anyhow::Result<Point> {
    let fresh = world.fresh(kind).await?;
    let run = world.run_number();
    let subject = format!("back@{DOMAIN}/bench");
    let backlog = seed::Backlog {
        subject: &subject,
        run,
        messages: BACKLOG,
    };
    seed::held(fresh.engine.as_ref(), size, &backlog).await?;
    let store = store_mib(fresh.engine.as_ref()).await?;
    drop(fresh.engine);

    let (mut xup, process, start) = world.start(&fresh.settings).await?;
    settle(process).await?;
    let rss = mib(process.rss_kib()?);
    let peak = mib(process.peak_rss_kib()?);

    let ledger = Arc::new(Ledger::new(run, BACKLOG, world.epoch));
    world.ledgers.send_replace(ledger.clone());
    let client = Session::connect(
        world.prosody.c2s_port(),
        "back",
        DOMAIN,
        PASSWORD,
        world.ledgers.subscribe(),
    )
    .await?;
    let back = Instant::now();
    client.announce(COMPONENT).await?;
    let deadline = back + Duration::from_secs(300);
    while ledger.distinct() < BACKLOG as u64 {
        if Instant::now() > deadline {
            bail!(
                "the returning client got {} of its {BACKLOG} held messages in 300 s",
                ledger.distinct()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let backlog = back.elapsed().as_secs_f64();
    drop(client);
    xup.stop().await;
    Ok(Point {
        engine: kind.name(),
        curve: "held",
        x: size as f64,
        values: vec![
            ("store_mib", store),
            ("start_s", start),
            ("rss_mib", rss),
            ("peak_rss_mib", peak),
            ("backlog_s", backlog),
        ],
    })
}

/// One point of the revocation curve, and its push run.
async fn revocations_point(
    world: &mut World,
    kind: Kind,
    size: usize,
    args: &GrowthArgs,
) -> anyhow::Result<(Point, Run)> {
    let fresh = world.fresh(kind).await?;
    seed::revocations(fresh.engine.as_ref(), size).await?;
    let store = store_mib(fresh.engine.as_ref()).await?;
    drop(fresh.engine);

    let (mut xup, process, start) = world.start(&fresh.settings).await?;
    settle(process).await?;
    let rss = mib(process.rss_kib()?);
    let target = Arc::new(
        world
            .target(fresh.settings.http_port, args.endpoints)
            .await?,
    );
    let (run, cpu) = world
        .pushes(&target, process, (args.warmup, args.messages), CONCURRENCY)
        .await?;
    xup.stop().await;
    let point = Point {
        engine: kind.name(),
        curve: "revocations",
        x: size as f64,
        values: vec![
            ("store_mib", store),
            ("start_s", start),
            ("rss_mib", rss),
            ("pushes_per_second", run.pushes_per_second()),
            ("xup_us_per_push", cpu * 1e6 / run.accepted.max(1) as f64),
        ],
    };
    Ok((point, run))
}

/// The concurrency curve and the Matrix points of one engine, on one xup; whether no push was
/// lost or duplicated.
async fn load_points(
    world: &mut World,
    kind: Kind,
    args: &GrowthArgs,
) -> anyhow::Result<(Vec<Point>, bool)> {
    let fresh = world.fresh(kind).await?;
    drop(fresh.engine);
    let (mut xup, process, _) = world.start(&fresh.settings).await?;
    let port = fresh.settings.http_port;
    let target = Arc::new(world.target(port, args.endpoints).await?);
    let mut points = Vec::new();
    let mut sound = true;
    for &concurrency in &args.concurrency {
        // Enough registrations that every one of `concurrency` slots is used a few times.
        let count = (4 * concurrency).max(args.registrations);
        let (_, registrations) = register(&world.sessions, &provider(port), count, concurrency)
            .await
            .with_context(|| format!("registering at C = {concurrency}"))?;
        let (run, cpu) = world
            .pushes(&target, process, (args.warmup, args.messages), concurrency)
            .await?;
        sound &= run.is_sound();
        points.push(Point {
            engine: kind.name(),
            curve: "concurrency",
            x: concurrency as f64,
            values: vec![
                ("registrations_per_second", registrations),
                ("pushes_per_second", run.pushes_per_second()),
                ("p99_ms", percentile(&run.http, 0.99) as f64 / 1e6),
                ("xup_us_per_push", cpu * 1e6 / run.accepted.max(1) as f64),
            ],
        });
    }
    for pushkeys in PUSHKEYS {
        let notify = Arc::new(Target {
            addr: target.addr,
            host: target.host.clone(),
            paths: target.paths.clone(),
            authorization: Vec::new(),
            notify_devices: pushkeys,
        });
        let load = Load {
            run: world.run_number(),
            messages: (args.messages / pushkeys as u64).max(1),
            concurrency: CONCURRENCY,
            body_len: 256,
            epoch: world.epoch,
            zero_ttl_every: 0,
            until: None,
        };
        let before = process.cpu_seconds()?;
        let (samples, ledger) = world.arrive(&notify, &load, pushkeys as u64).await;
        let answered = samples.iter().map(|s| s.end).max().unwrap_or_default();
        let first = samples.iter().map(|s| s.start).min().unwrap_or_default();
        let wall = (answered.saturating_sub(first) as f64 / 1e9).max(1e-9);
        let cpu = process.cpu_seconds()? - before;
        let accepted = samples.iter().filter(|s| s.ok()).count() as u64;
        let expected = accepted * pushkeys as u64;
        let lost = expected.saturating_sub(ledger.strays());
        sound &= lost == 0 && accepted == load.messages;
        points.push(Point {
            engine: kind.name(),
            curve: "matrix",
            x: pushkeys as f64,
            values: vec![
                ("notifies_per_second", accepted as f64 / wall),
                ("pushes_per_second", expected as f64 / wall),
                ("xup_us_per_push", cpu * 1e6 / expected.max(1) as f64),
                ("lost", lost as f64),
            ],
        });
    }
    xup.stop().await;
    Ok((points, sound))
}
