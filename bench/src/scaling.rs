//! `xup-bench scaling`: one xup on SQLite, one on PostgreSQL, and two on one PostgreSQL with the
//! load spread over both HTTP ports (a standby hands its pushes to the leader, `cluster.rs`), on
//! one Prosody, with the same endpoints and the same load.
//!
//! Each setup reports throughput, HTTP latency, lost and duplicated pushes, and the CPU time per
//! push of each part (the xup instances together, Prosody, PostgreSQL's server with its backends,
//! and the load tool), which says where the limit is. Tokens are stateless and every instance
//! shares the registration secrets, so the endpoints registered once serve every setup.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tokio::sync::watch;
use xup_testbed::{COMPONENT, Postgres, Prosody, Server, Xup, XupSettings};

use crate::{
    ARRIVAL_GRACE, Provider, cpu_seconds,
    ledger::Ledger,
    load::{self, Load, Target},
    procstat::{self, Proc},
    register,
    report::{Run, percentile},
    session::Session,
};

#[derive(Args)]
pub struct ScalingArgs {
    /// Client sessions, each a distributor on its own c2s connection.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Registered endpoints, spread over the sessions.
    #[arg(long, default_value_t = 256)]
    endpoints: usize,
    /// Messages POSTed per setup.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Requests in flight at once, spread over the setup's instances.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Unmeasured messages before each measured run.
    #[arg(long, default_value_t = 500)]
    warmup: u64,
    /// Append one JSON line per setup here.
    #[arg(long, default_value = "target/xup-bench.jsonl")]
    json: std::path::PathBuf,
}

/// One way of running xup.
struct Setup {
    name: &'static str,
    instances: usize,
    postgres: bool,
}

const SETUPS: [Setup; 3] = [
    Setup {
        name: "1 xup, SQLite",
        instances: 1,
        postgres: false,
    },
    Setup {
        name: "1 xup, PostgreSQL",
        instances: 1,
        postgres: true,
    },
    Setup {
        name: "2 xup, PostgreSQL",
        instances: 2,
        postgres: true,
    },
];

/// Run every setup; `Ok(false)` if one lost, duplicated or refused a push.
pub async fn run(args: ScalingArgs, xup_binary: std::path::PathBuf) -> anyhow::Result<bool> {
    procstat::raise_open_files_limit();
    let prosody = Server::Prosody(Prosody::start().await);
    let postgres = Postgres::start().await;
    let prosody_process = Proc::Pid(prosody.pid().context("Prosody's pid")?);
    let postgres_process = Proc::Tree(postgres.pid().context("PostgreSQL's pid")?);
    let epoch = Instant::now();
    let (ledgers, ledger) = watch::channel(Arc::new(Ledger::new(0, 0, epoch)));
    let sessions = Session::connect_many(&prosody, "scale", args.clients, &ledger).await?;
    let stores: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let settings: Vec<XupSettings> = stores
        .iter()
        .map(|store| {
            let mut settings = XupSettings::new(store.path());
            settings.log_filter = "xup=info";
            settings.without_rate_limits();
            settings
        })
        .collect();

    println!(
        "xup-bench scaling: {} client sessions, {} endpoints, {} messages at C = {} per setup\n",
        args.clients, args.endpoints, args.messages, args.concurrency
    );
    println!(
        "{:<20} {:>9} {:>8} {:>8} {:>6} {:>5} {:>9} {:>9} {:>9} {:>9}",
        "setup",
        "pushes/s",
        "p50 ms",
        "p99 ms",
        "lost",
        "dup",
        "xup µs",
        "Prosody",
        "Postgres",
        "tool"
    );
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.json)
        .with_context(|| format!("opening {}", args.json.display()))?;
    let mut paths: Option<Vec<String>> = None;
    let mut sound = true;
    let mut run_number = 1;
    for setup in &SETUPS {
        let mut instances = Vec::new();
        for (i, settings) in settings.iter().take(setup.instances).enumerate() {
            let mut settings = settings.clone();
            settings.store_url = setup.postgres.then(|| postgres.url());
            let xup = match i {
                0 => Xup::start(&xup_binary, prosody.component_port(), &settings).await,
                _ => Xup::start_standby(&xup_binary, prosody.component_port(), &settings).await,
            };
            instances.push((xup, settings.http_port));
        }
        let provider = Provider {
            name: "xup",
            jid: COMPONENT.parse()?,
            http: ([127, 0, 0, 1], instances[0].1).into(),
            process: None,
            target: None,
            applications: Vec::new(),
        };
        // Registered once, through the first setup's xup; every later one accepts them.
        let endpoints = match &paths {
            Some(paths) => paths.clone(),
            None => {
                let (registered, _) =
                    register(&sessions, &provider, args.endpoints, usize::MAX).await?;
                let urls: Vec<String> = registered.into_iter().map(|(url, _)| url).collect();
                paths = Some(urls.clone());
                urls
            }
        };
        let targets: Vec<Arc<Target>> = instances
            .iter()
            .map(|(_, port)| Target::new(([127, 0, 0, 1], *port).into(), &endpoints).map(Arc::new))
            .collect::<anyhow::Result<_>>()?;
        let xups: Vec<Proc> = instances
            .iter()
            .map(|(xup, _)| xup.pid().map(Proc::Pid).context("xup's pid"))
            .collect::<anyhow::Result<_>>()?;

        let mut load = Load {
            run: run_number,
            messages: args.warmup,
            concurrency: args.concurrency,
            body_len: 256,
            epoch,
            zero_ttl_every: 0,
            until: None,
        };
        if args.warmup > 0 {
            fire(&targets, &load, &ledgers).await;
        }
        load.run += 1;
        load.messages = args.messages;
        run_number += 2;
        let parts: Vec<Proc> = [prosody_process, postgres_process, Proc::Myself]
            .into_iter()
            .chain(xups.iter().copied())
            .collect();
        let before = cpu_seconds(&parts)?;
        let (samples, ledger) = fire(&targets, &load, &ledgers).await;
        let after = cpu_seconds(&parts)?;
        let spent: Vec<f64> = before.iter().zip(&after).map(|(b, a)| a - b).collect();
        let run = Run::tally("xup", &load, &samples, &ledger);
        let per_push = |seconds: f64| seconds * 1e6 / run.accepted.max(1) as f64;
        let xup_seconds: f64 = spent[3..].iter().sum();
        let ms = |q| percentile(&run.http, q) as f64 / 1e6;
        println!(
            "{:<20} {:>9.0} {:>8.2} {:>8.2} {:>6} {:>5} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
            setup.name,
            run.pushes_per_second(),
            ms(0.5),
            ms(0.99),
            run.lost,
            run.duplicated,
            per_push(xup_seconds),
            per_push(spent[0]),
            if setup.postgres {
                per_push(spent[1])
            } else {
                0.0
            },
            per_push(spent[2]),
        );
        use std::io::Write;
        writeln!(
            out,
            "{}",
            json!({
                "kind": "scaling", "setup": setup.name, "instances": setup.instances,
                "postgres": setup.postgres, "messages": load.messages,
                "concurrency": load.concurrency, "accepted": run.accepted,
                "non_2xx": run.refused, "lost": run.lost, "duplicated": run.duplicated,
                "pushes_per_second": run.pushes_per_second(),
                "http_ms": { "p50": ms(0.5), "p99": ms(0.99) },
                "cpu_us_per_push": {
                    "xup": per_push(xup_seconds), "prosody": per_push(spent[0]),
                    "postgres": if setup.postgres { per_push(spent[1]) } else { 0.0 },
                    "tool": per_push(spent[2]),
                },
            })
        )?;
        sound &= run.is_sound();
        // The leader goes last, so the standby never takes the link over mid-teardown.
        for (mut xup, _) in instances.into_iter().rev() {
            xup.stop().await;
        }
    }
    println!(
        "\nCPU columns: µs of CPU time per push accepted. JSON lines appended to {}",
        args.json.display()
    );
    Ok(sound)
}

/// Fire `load` at `targets` and wait until every accepted message has arrived (or the grace has
/// passed); the samples, and the ledger they were recorded in.
async fn fire(
    targets: &[Arc<Target>],
    load: &Load,
    ledgers: &watch::Sender<Arc<Ledger>>,
) -> (Vec<load::Sample>, Arc<Ledger>) {
    let ledger = Arc::new(Ledger::new(load.run, load.messages as usize, load.epoch));
    ledgers.send_replace(ledger.clone());
    let samples = load::fire(targets, load).await;
    let accepted = samples.iter().filter(|s| s.ok()).count() as u64;
    let deadline = Instant::now() + ARRIVAL_GRACE;
    while ledger.distinct() < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (samples, ledger)
}
