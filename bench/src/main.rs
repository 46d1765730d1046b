//! xup-bench: xup side by side with Prosody's own `mod_unified_push`, in one run on one machine.
//!
//! One throwaway Prosody hosts both providers: xup as an external component and
//! `mod_unified_push` (Debian's `prosody-modules`, storage backend) as an internal one; with
//! `--server ejabberd`, an ejabberd hosts xup alone. P client
//! sessions register K endpoints with each, then M numbered messages are POSTed at concurrency C
//! to each provider in turn, for every C asked for. Each run reports throughput, HTTP and delivery
//! latency, refusals, lost and duplicated pushes, and the CPU and peak memory of xup, of the XMPP
//! server and of the load tool itself. After that, for xup alone: the same load with a share of the
//! registrations never answering (fairness under faults), registrations per second (over XMPP,
//! and the token code alone), and what clients that never answer cost: the senders' wait and
//! xup's memory with many pushes to them at once.
//!
//! Everything runs on loopback, is bounded in count and time, and stops by itself. The table goes
//! to stdout, one JSON line per measurement to `--json`. The exit code is 1 if any run lost or
//! duplicated a push.

mod growth;
mod ledger;
mod load;
mod procstat;
mod report;
mod scaling;
mod session;
mod soak;
mod tokens;
mod vapid;

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Parser, ValueEnum};
use futures::future::{join_all, try_join_all};
use serde_json::{Value, json};
use tokio::sync::watch;
use xmpp_parsers::jid::Jid;
use xup_testbed::{COMPONENT, Ejabberd, Prosody, Server, Xup, XupSettings, wait_for_port};

use crate::{
    ledger::Ledger,
    load::{Load, Target, Transport},
    procstat::Proc,
    report::{Run, Usage},
    session::Session,
};

/// mod_unified_push as an internal component beside xup, its endpoints on Prosody's HTTP port.
const MOD_UNIFIED_PUSH: &str = r#"
Component "push.localhost" "unified_push"
  -- Prosody 0.12 has no util.paseto: the storage backend is what 0.12 users run.
  unified_push_backend = "storage"
  http_host = "localhost"
  http_external_url = "http://localhost:@HTTP_PORT@/"
"#;
const MOD_UNIFIED_PUSH_JID: &str = "push.localhost";

/// How long after the last HTTP answer a pushed message may still arrive before it counts as lost.
const ARRIVAL_GRACE: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    version,
    about = "Benchmark xup against Prosody's mod_unified_push (or soak it: `xup-bench soak`)",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The xup binary to measure [default: `xup` beside this program]
    #[arg(long, global = true)]
    xup: Option<PathBuf>,
    /// Client sessions (P), each a distributor on its own c2s connection.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Registered endpoints (K) per provider, spread over the sessions.
    #[arg(long, default_value_t = 256)]
    endpoints: usize,
    /// Messages (M) POSTed per provider and concurrency.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Concurrencies (C) to run at, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 64])]
    concurrency: Vec<usize>,
    /// Bytes per message body (at least 16).
    #[arg(long, default_value_t = 256)]
    body: usize,
    /// Unmeasured messages before each measured run.
    #[arg(long, default_value_t = 500)]
    warmup: u64,
    /// Registrations per provider for the registration rate (at least --endpoints).
    #[arg(long, default_value_t = 2_000)]
    registrations: usize,
    /// Iterations for the in-process token code rate (0 skips it).
    #[arg(long, default_value_t = 20_000)]
    token_iterations: u64,
    /// Percent of xup's registrations that never answer in the run under faults (0 skips it).
    #[arg(long, default_value_t = 10)]
    faulty_percent: usize,
    /// Concurrency of the runs with and without faults.
    #[arg(long, default_value_t = 64)]
    faulty_concurrency: usize,
    /// Pushes to clients that never answer, for the senders' wait and xup's memory (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    in_flight: u64,
    /// Transports for the in-flight figure: http2 (all at once, multiplexed over 100
    /// connections), http1 (1000 keep-alive connections, xup's default connection cap, each
    /// sending its pushes one after the other), http1-per-push (all at once, a connection each).
    #[arg(long, value_delimiter = ',', default_values_t = ["http2".to_owned(), "http1".to_owned()])]
    in_flight_over: Vec<String>,
    /// Sign every push to xup with VAPID (RFC 8292): `reused` sends one header all run, as a
    /// sender that keeps its JWT does; `fresh` cycles through more headers than xup remembers, as
    /// a sender that signs every push does. For the cost of verifying, against a run without.
    #[arg(long)]
    vapid: Option<VapidHeaders>,
    /// The XMPP server xup is a component of and the clients log in to. `mod_unified_push` is
    /// Prosody's own, so behind ejabberd only xup is measured.
    #[arg(long, value_enum, default_value_t = ServerKind::Prosody)]
    server: ServerKind,
    /// Providers to measure, in this order.
    #[arg(long, value_delimiter = ',', default_values_t = ["xup".to_owned(), "mod_unified_push".to_owned()])]
    providers: Vec<String>,
    /// Append one JSON line per measurement here.
    #[arg(long, default_value = "target/xup-bench.jsonl")]
    json: PathBuf,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum ServerKind {
    Prosody,
    Ejabberd,
}

/// How the pushes of a signed run carry their VAPID headers.
#[derive(Clone, Copy, clap::ValueEnum)]
enum VapidHeaders {
    Reused,
    Fresh,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Minutes of load while clients go off and on line and Prosody is killed; then check that
    /// every message answered 201 with a TTL reached its client.
    Soak(soak::SoakArgs),
    /// One xup on SQLite, one on PostgreSQL, and two on one PostgreSQL with the load spread over
    /// both: throughput, latency and the CPU per push of each part.
    Scaling(scaling::ScalingArgs),
    /// How xup's costs grow with what it keeps (held messages, revocations) and with the load
    /// (concurrency, Matrix pushkeys), on SQLite and PostgreSQL; the curves drawn as an SVG.
    Growth(growth::GrowthArgs),
}

/// A push provider under test.
struct Provider {
    name: &'static str,
    jid: Jid,
    /// Where its endpoints are served.
    http: SocketAddr,
    /// Its own process, when it has one (xup); `mod_unified_push` lives inside Prosody.
    process: Option<Proc>,
    target: Option<Arc<Target>>,
    /// The application of each of the target's endpoints, in the same order.
    applications: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = Args::parse();
    let outcome = match args.command.take() {
        Some(Command::Soak(soak)) => soak::run(soak, xup_binary(&args)).await,
        Some(Command::Scaling(scaling)) => scaling::run(scaling, xup_binary(&args)).await,
        Some(Command::Growth(growth)) => growth::run(growth, xup_binary(&args)).await,
        None => run(args).await,
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("xup-bench: pushes were lost or duplicated (see above)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("xup-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The whole benchmark; `Ok(false)` when a run lost or duplicated a push.
async fn run(args: Args) -> anyhow::Result<bool> {
    if args.body < ledger::ID_LEN || args.clients == 0 || args.endpoints == 0 {
        bail!("--body must be at least 16, --clients and --endpoints at least 1");
    }
    if args.server == ServerKind::Ejabberd && args.providers.iter().any(|p| p != "xup") {
        bail!("behind ejabberd only xup can be measured: add --providers xup");
    }
    let open_files = procstat::raise_open_files_limit();
    let xup_binary = xup_binary(&args);
    let context = json!({
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "clients": args.clients,
        "endpoints": args.endpoints,
        "xup": xup_binary,
        "server": args.server.to_possible_value().map(|v| v.get_name().to_owned()),
    });
    let mut out = Output::open(&args.json)?;

    let server = match args.server {
        ServerKind::Prosody => {
            let prosody = Prosody::start_with(MOD_UNIFIED_PUSH).await;
            wait_for_port(prosody.http_port).await;
            Server::Prosody(prosody)
        }
        ServerKind::Ejabberd => Server::Ejabberd(Ejabberd::start().await),
    };
    let server_process = Proc::Pid(server.pid().context("the XMPP server's pid")?);
    let store = tempfile::tempdir()?;
    let mut settings = XupSettings::new(store.path());
    // Long enough for the in-flight measurement to fill up before the first answer is due.
    settings.timeout = "60s";
    settings.log_filter = "xup=info";
    // The bench measures xup, not its limits: one address, a few endpoints, and (over HTTP/1.1)
    // one connection per push in flight.
    settings.without_rate_limits();
    settings.http = vec![
        ("max_connections", json!(50_000)),
        ("max_in_flight", json!(50_000)),
    ];
    let xup = Xup::start(&xup_binary, server.component_port(), &settings).await;

    let epoch = Instant::now();
    let (ledgers, ledger) = watch::channel(Arc::new(Ledger::new(0, 0, epoch)));
    let sessions = Session::connect_many(&server, "bench", args.clients, &ledger).await?;

    let mut providers = Vec::new();
    for name in &args.providers {
        providers.push(match name.as_str() {
            "xup" => Provider {
                name: "xup",
                jid: COMPONENT.parse()?,
                http: ([127, 0, 0, 1], settings.http_port).into(),
                process: Some(Proc::Pid(xup.pid().context("xup's pid")?)),
                target: None,
                applications: Vec::new(),
            },
            "mod_unified_push" => Provider {
                name: "mod_unified_push",
                jid: MOD_UNIFIED_PUSH_JID.parse()?,
                http: match &server {
                    Server::Prosody(prosody) => ([127, 0, 0, 1], prosody.http_port).into(),
                    Server::Ejabberd(_) => bail!("mod_unified_push is Prosody's"),
                },
                process: None,
                target: None,
                applications: Vec::new(),
            },
            other => bail!("unknown provider {other:?} (xup, mod_unified_push)"),
        });
    }

    println!(
        "xup-bench: {} client sessions, {} endpoints per provider, {} messages of {} bytes per run",
        args.clients, args.endpoints, args.messages, args.body
    );
    println!(
        "\nregistrations over XMPP ({} per provider):",
        args.registrations.max(args.endpoints)
    );
    for provider in &mut providers {
        let (endpoints, per_second) = register(
            &sessions,
            provider,
            args.registrations.max(args.endpoints),
            usize::MAX,
        )
        .await?;
        println!("  {:<16} {per_second:>8.0} registrations/s", provider.name);
        out.line(json!({
            "kind": "registrations", "context": context, "provider": provider.name,
            "count": endpoints.len(), "registrations_per_second": per_second,
        }))?;
        let (urls, applications): (Vec<String>, Vec<String>) =
            endpoints.into_iter().take(args.endpoints).unzip();
        let mut target = Target::new(provider.http, &urls)?;
        if let Some(headers) = args.vapid
            && provider.name == "xup"
        {
            let origin = format!("http://{}", target.host);
            let signer = vapid::Signer::new();
            let count = match headers {
                VapidHeaders::Reused => 1,
                VapidHeaders::Fresh => vapid::MORE_THAN_REMEMBERED,
            };
            target.authorization = (0..count)
                .map(|_| signer.header(&origin))
                .collect::<anyhow::Result<_>>()?;
        }
        provider.target = Some(Arc::new(target));
        provider.applications = applications;
    }
    if args.token_iterations > 0 {
        let rates = tokens::measure(args.token_iterations)?;
        let rate = |name: &str| rates[name].as_f64().unwrap_or_default();
        println!(
            "  in process: {:.0} token issues/s, {:.0} token opens/s, {:.0} VAPID verifications/s",
            rate("token_issues_per_second"),
            rate("token_opens_per_second"),
            rate("vapid_verifications_per_second"),
        );
        out.line(json!({ "context": context, "measurement": rates }))?;
    }

    println!("\npushes:\n{}", Run::HEADER);
    let mut sound = true;
    let mut next_run = 1;
    for &concurrency in &args.concurrency {
        for provider in &providers {
            let mut load = Load {
                run: next_run,
                messages: args.warmup,
                concurrency,
                body_len: args.body,
                epoch,
                zero_ttl_every: 0,
                until: None,
            };
            if args.warmup > 0 {
                measure(provider, &load, &ledgers, server_process, |_| true).await?;
            }
            load.run += 1;
            load.messages = args.messages;
            next_run += 2;
            let run = measure(provider, &load, &ledgers, server_process, |_| true).await?;
            println!("{}", run.row());
            out.line(run.json(&context))?;
            sound &= run.is_sound();
        }
    }

    let xup_provider = providers.iter().find(|p| p.name == "xup");
    if args.in_flight > 0
        && let Some(xup_provider) = xup_provider
    {
        println!(
            "\nxup with {} pushes to clients that never answer (sender's wait, then xup's memory):",
            args.in_flight
        );
        // Keep HTTP/2 first: memory freed after an HTTP/1.1 run is not all returned to the system.
        for name in &args.in_flight_over {
            let transport = match name.as_str() {
                // 100 connections of at most 128 streams each (xup's cap) admit all 10 000 at once.
                "http2" => Transport::Http2 { connections: 100 },
                "http1" => Transport::Http1KeepAlive { connections: 1000 },
                "http1-per-push" => Transport::Http1PerMessage,
                other => bail!("unknown --in-flight-over {other:?} (http2, http1, http1-per-push)"),
            };
            // Over HTTP/1.1 with a connection per push the load tool holds one socket per message
            // and xup one more.
            let messages = match transport {
                Transport::Http1PerMessage => args.in_flight.min(open_files.saturating_sub(256)),
                _ => args.in_flight,
            };
            let load = Load {
                run: next_run,
                messages,
                concurrency: messages as usize,
                body_len: args.body,
                epoch,
                zero_ttl_every: 0,
                until: None,
            };
            next_run += 1;
            let result = unanswered(xup_provider, &load, transport, &sessions, &ledgers).await?;
            println!(
                "  {:<40} sender p50 {:.0} / p99 {:.0} / max {:.0} ms; xup peak {:.1} MiB ({:.1} before); {} of {} answered 2xx; lost {}, dup {}",
                format!("{transport:?}"),
                result["sender_ms"]["p50"].as_f64().unwrap_or_default(),
                result["sender_ms"]["p99"].as_f64().unwrap_or_default(),
                result["sender_ms"]["max"].as_f64().unwrap_or_default(),
                result["peak_rss_mib"].as_f64().unwrap_or_default(),
                result["rss_before_mib"].as_f64().unwrap_or_default(),
                result["accepted"],
                messages,
                result["lost"],
                result["duplicated"],
            );
            sound &= result["lost"] == 0 && result["duplicated"] == 0;
            out.line(json!({ "kind": "in_flight", "context": context, "result": result }))?;
        }
    }
    // Last: its stuck registrations keep messages held that would stand in any later run's way.
    if args.faulty_percent > 0
        && let Some(xup_provider) = xup_provider
    {
        let runs = under_faults(
            xup_provider,
            &args,
            &sessions,
            &ledgers,
            server_process,
            &mut next_run,
            epoch,
        )
        .await?;
        let [healthy, faulty] = &runs;
        println!(
            "\nxup with {}% of its registrations never answering (C = {}; both runs count the \
             registrations that stay healthy):\n{}",
            args.faulty_percent,
            args.faulty_concurrency,
            Run::HEADER
        );
        for run in &runs {
            println!("{}", run.row());
        }
        let ms = |run: &Run| report::percentile(&run.http, 0.99) as f64 / 1e6;
        println!(
            "  healthy throughput {:.1}% of the all-healthy run, p99 {:.2} against {:.2} ms",
            faulty.pushes_per_second() * 100.0 / healthy.pushes_per_second().max(1e-9),
            ms(faulty),
            ms(healthy),
        );
        for (run, which) in runs.iter().zip(["all_healthy", "faulty"]) {
            sound &= run.is_sound();
            let mut line = run.json(&context);
            line["kind"] = json!("faults");
            line["faults"] = json!({ "run": which, "silent_percent": args.faulty_percent });
            out.line(line)?;
        }
    }

    println!("\nJSON lines appended to {}", args.json.display());
    Ok(sound)
}

/// The xup to run: `--xup`, or the `xup` built beside this program.
fn xup_binary(args: &Args) -> PathBuf {
    args.xup.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .map(|me| me.with_file_name("xup"))
            .unwrap_or_else(|_| PathBuf::from("xup"))
    })
}

/// Register `count` endpoints with `provider`, spread evenly over the sessions and pipelined on
/// each, at most `in_flight` at a time in all; returns them with their applications, interleaved
/// by session (endpoint i belongs to session i mod P), and the rate.
async fn register(
    sessions: &[Session],
    provider: &Provider,
    count: usize,
    in_flight: usize,
) -> anyhow::Result<(Vec<(String, String)>, f64)> {
    let random_digest = || {
        let bytes: [u8; 32] = rand::random();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let gate = tokio::sync::Semaphore::new(in_flight.clamp(1, tokio::sync::Semaphore::MAX_PERMITS));
    let started = Instant::now();
    let per_session = try_join_all(sessions.iter().enumerate().map(|(i, session)| {
        let mine = (i..count).step_by(sessions.len()).count();
        try_join_all((0..mine).map(|_| async {
            let _turn = gate.acquire().await?;
            let application = random_digest();
            let endpoint = session
                .register(provider.jid.as_str(), application.clone(), random_digest())
                .await?;
            anyhow::Ok((endpoint, application))
        }))
    }))
    .await
    .with_context(|| format!("registering with {}", provider.name))?;
    let per_second = count as f64 / started.elapsed().as_secs_f64();
    let mut endpoints = Vec::with_capacity(count);
    for round in 0.. {
        let before = endpoints.len();
        endpoints.extend(
            per_session
                .iter()
                .filter_map(|mine| mine.get(round).cloned()),
        );
        if endpoints.len() == before {
            break;
        }
    }
    Ok((endpoints, per_second))
}

/// One run: fire the load at `provider`, then tally what the clients received and what it cost.
/// Only the messages whose sequence number is `counted` are tallied (a run under faults counts
/// the healthy registrations only).
async fn measure(
    provider: &Provider,
    load: &Load,
    ledgers: &watch::Sender<Arc<Ledger>>,
    server: Proc,
    counted: impl Fn(u64) -> bool,
) -> anyhow::Result<Run> {
    let target = provider.target.clone().context("no endpoints registered")?;
    let ledger = Arc::new(Ledger::new(load.run, load.messages as usize, load.epoch));
    ledgers.send_replace(ledger.clone());
    let watched: Vec<Proc> = provider.process.into_iter().chain([server]).collect();
    for process in &watched {
        // Without the right to reset it, the peak covers the process's whole life instead.
        let _ = process.reset_peak();
    }
    let cpu_before = cpu_seconds(&watched)?;
    let tool_before = Proc::Myself.cpu_seconds()?;

    let mut samples = load::fire(&[target], load).await;
    samples.retain(|sample| counted(sample.seq));
    let accepted = samples.iter().filter(|s| s.ok()).count() as u64;
    let deadline = Instant::now() + ARRIVAL_GRACE;
    while ledger.distinct() < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let tool = Proc::Myself.cpu_seconds()? - tool_before;
    let cpu_after = cpu_seconds(&watched)?;
    let mut run = Run::tally(provider.name, load, &samples, &ledger);
    let usage = |i: usize| -> anyhow::Result<Usage> {
        Ok(Usage {
            cpu_seconds: cpu_after[i] - cpu_before[i],
            peak_rss_kib: watched[i].peak_rss_kib()?,
        })
    };
    if provider.process.is_some() {
        run.xup = Some(usage(0)?);
        run.server = usage(1)?;
    } else {
        run.server = usage(0)?;
    }
    run.tool = Usage {
        cpu_seconds: tool,
        peak_rss_kib: 0,
    };
    Ok(run)
}

pub(crate) fn cpu_seconds(processes: &[Proc]) -> anyhow::Result<Vec<f64>> {
    processes
        .iter()
        .map(|p| p.cpu_seconds().context("reading CPU time from /proc"))
        .collect()
}

/// The same load at `--faulty-concurrency` twice: every registration healthy, then with
/// `--faulty-percent` of them never answering (their sessions leave those apps' pushes alone), on
/// the same sessions, so a stuck app shares a phone with healthy ones. Both runs count the
/// messages of the registrations that stay healthy, so they compare like with like; the faulty
/// run's warm-up lets every silent registration's first push run into
/// `delivery.answer_within`, as happens once per stuck app.
async fn under_faults(
    xup: &Provider,
    args: &Args,
    sessions: &[Session],
    ledgers: &watch::Sender<Arc<Ledger>>,
    server: Proc,
    next_run: &mut u32,
    epoch: Instant,
) -> anyhow::Result<[Run; 2]> {
    let endpoints = xup.applications.len() as u64;
    let every = (100 / args.faulty_percent.clamp(1, 100)) as u64;
    let silent = move |seq: u64| (seq % endpoints).is_multiple_of(every);
    let mut load = Load {
        run: *next_run,
        messages: args.warmup,
        concurrency: args.faulty_concurrency,
        body_len: args.body,
        epoch,
        zero_ttl_every: 0,
        until: None,
    };
    let mut runs = Vec::new();
    for faulty in [false, true] {
        let applications: HashSet<String> = match faulty {
            false => HashSet::new(),
            true => (0..endpoints)
                .filter(|&i| silent(i))
                .map(|i| xup.applications[i as usize].clone())
                .collect(),
        };
        try_join_all(sessions.iter().map(|s| s.silence(applications.clone()))).await?;
        // Both runs count the same registrations: the ones that stay healthy.
        let counted = move |seq: u64| !silent(seq);
        // Long enough for every silent registration's first push to wait out answer_within.
        load.messages = if faulty {
            args.warmup.max(args.faulty_concurrency as u64 * 20)
        } else {
            args.warmup
        };
        measure(xup, &load, ledgers, server, counted).await?;
        load.run += 1;
        load.messages = args.messages;
        runs.push(measure(xup, &load, ledgers, server, counted).await?);
        load.run += 1;
    }
    try_join_all(sessions.iter().map(|s| s.silence(HashSet::new()))).await?;
    *next_run = load.run;
    let [healthy, faulty]: [Run; 2] = runs.try_into().map_err(|_| anyhow::anyhow!("two runs"))?;
    Ok([healthy, faulty])
}

/// What clients that never answer cost: `load.messages` pushes over `transport` to clients that
/// hold every answer, each sender answered at `delivery.answer_within` (the message held); the
/// senders' waits, and xup's peak memory meanwhile. Then the clients answer them all (late
/// answers: the held copies go) and every message must have reached a client exactly once.
async fn unanswered(
    xup: &Provider,
    load: &Load,
    transport: Transport,
    sessions: &[Session],
    ledgers: &watch::Sender<Arc<Ledger>>,
) -> anyhow::Result<Value> {
    let process = xup.process.context("xup's process")?;
    let target = xup.target.clone().context("no endpoints registered")?;
    let ledger = Arc::new(Ledger::new(load.run, load.messages as usize, load.epoch));
    ledgers.send_replace(ledger.clone());
    try_join_all(sessions.iter().map(|s| s.hold(true))).await?;
    let _ = process.reset_peak();
    let rss_before = process.rss_kib()?;

    let samples = match transport {
        Transport::Http1KeepAlive { connections } => {
            let load = Load {
                concurrency: connections,
                ..*load
            };
            load::fire(&[target], &load).await
        }
        _ => load::fire_all_at_once(target, load, transport, 256).await?,
    };
    let peak = process.peak_rss_kib()?;
    join_all(sessions.iter().map(|s| s.hold(false))).await;
    // The answers are late ones now: once they have removed every held copy, nothing of this
    // run stands in the next one's way.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = held_messages(xup.http).await?;
        if held == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("xup still holds {held} messages 30 s after their clients answered");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let run = Run::tally(xup.name, load, &samples, &ledger);
    let ms = |q: f64| report::percentile(&run.http, q) as f64 / 1e6;
    Ok(json!({
        "messages": load.messages,
        "transport": format!("{transport:?}"),
        "sender_ms": { "p50": ms(0.5), "p99": ms(0.99), "max": ms(1.0) },
        "rss_before_mib": rss_before as f64 / 1024.0,
        "peak_rss_mib": peak as f64 / 1024.0,
        "accepted": run.accepted,
        "non_2xx": run.refused,
        "lost": run.lost,
        "duplicated": run.duplicated,
    }))
}

/// How many messages xup holds, from its `/metrics` page.
async fn held_messages(xup: SocketAddr) -> anyhow::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(xup).await?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: xup\r\nConnection: close\r\n\r\n")
        .await?;
    let mut page = String::new();
    tcp.read_to_string(&mut page).await?;
    page.lines()
        .find_map(|line| line.strip_prefix("xup_held_messages "))
        .and_then(|value| value.trim().parse().ok())
        .context("no xup_held_messages on /metrics")
}

/// Where JSON lines go; the directory is made if need be.
struct Output {
    file: std::fs::File,
}

impl Output {
    fn open(path: &std::path::Path) -> anyhow::Result<Output> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Output { file })
    }

    fn line(&mut self, value: Value) -> anyhow::Result<()> {
        use std::io::Write;
        writeln!(self.file, "{value}")?;
        Ok(())
    }
}
