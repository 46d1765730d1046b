//! The `xup` binary: command line, logging, and the shutdown signal. Everything else is in the library.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use xup::{config::Config, store::Schema};

/// The version and the git revision it was built from (see build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("XUP_GIT_REVISION"),
    ")"
);

/// A UnifiedPush push provider for XMPP, run as an external component (XEP-0114) of your XMPP server.
///
/// XMPP clients (Conversations and other distributors) register app instances with the component
/// and get an HTTP endpoint; application servers POST messages there (RFC 8030), and xup relays
/// each to its client over XMPP and answers with the client's verdict, holding messages for
/// clients that are away. It also speaks sum7's `unifiedpush.org` dialect, serves the Java `up`'s
/// endpoints, is a Matrix push gateway, and is a XEP-0357 app server.
#[derive(Parser)]
#[command(
    version = VERSION,
    about,
    long_about,
    after_long_help = "Secrets can stay out of the config file: XUP_COMPONENT_SECRET, \
        XUP_REGISTRATION_SECRETS (whitespace-separated, the first encrypts new endpoints), \
        XUP_LEGACY_UP_SECRET and XUP_STORE_URL stand for component.secret, \
        registration.secrets, registration.legacy_up_secret and store.url. RUST_LOG sets what \
        is logged (e.g. xup=debug).\n\n\
        Files: the configuration (config.json unless --config says otherwise), and the store \
        in store.path unless store.url names a PostgreSQL database.\n\n\
        Every key of the configuration is described in docs/CONFIGURE.md."
)]
struct Cli {
    /// Path of the JSON configuration file (see config.example.json).
    #[arg(short, long, global = true, default_value = "config.json")]
    config: PathBuf,

    /// How log lines are written to stderr: `text` for people, `json` (one object per line) for
    /// log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration file, say exactly what is wrong with it, and exit.
    Check {
        /// Also connect to the XMPP server and complete the component handshake once.
        #[arg(long)]
        connect: bool,
    },
    /// Write a complete xup config (on stdout) from the config.json of the Java `up`, so the
    /// endpoints it issued keep working; says on stderr what it could not map.
    ImportUpConfig {
        /// The Java `up`'s config.json.
        up_config: PathBuf,
    },
    /// Copy everything the configured store keeps (revocations, held messages, VAPID keys, the
    /// app server's nodes) into another store, e.g. from SQLite to PostgreSQL before pointing
    /// `store.url` at it. Stop xup first.
    ///
    /// The target is `--to`, or the first line of the file `--to-file`, or else the environment
    /// variable XUP_COPY_TO. A URL with a password is refused from `--to`: every user of the
    /// machine can read a command line.
    CopyStore {
        /// The target: a directory for a SQLite store, or a PostgreSQL URL without a password.
        #[arg(long, conflicts_with = "to_file")]
        to: Option<String>,
        /// A file that holds the target: a PostgreSQL URL with its password.
        #[arg(long)]
        to_file: Option<PathBuf>,
    },
    /// Say what the store holds: held messages (in all, the oldest, how many registrations hold
    /// how many), revocations kept, the endpoint keys and the store's size. Reads only; safe
    /// while xup runs.
    Status {
        /// One JSON object instead of lines of text, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Write the manual pages (`xup.1`, one per subcommand) and the shell completions (bash,
    /// zsh, fish) into a directory, generated from this very command line; for packaging.
    #[command(hide = true)]
    GenerateDocs {
        /// Where to write them; made if missing.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // By default a line that cannot be written is reported with `eprintln!`, which panics
        // when stderr itself is what failed: the task that logged would die. A log collector
        // that goes away must cost the logs, never the pushes or the shutdown.
        .log_internal_errors(false);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }

    match &cli.command {
        Some(Command::ImportUpConfig { up_config }) => return import_up_config(up_config),
        Some(Command::GenerateDocs { dir }) => return generate_docs(dir),
        _ => {}
    }
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("xup: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Check { connect }) => return check(&cli.config, &config, connect),
        Some(Command::CopyStore { to, to_file }) => {
            return match copy_target(to, to_file, std::env::var("XUP_COPY_TO").ok()) {
                Ok(target) => copy_store(&config, &target),
                Err(e) => {
                    eprintln!("xup: copy-store: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::Status { json }) => return status(&config, json),
        _ => {}
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One thread: a push costs xup far less CPU than it costs the XMPP server to route it (see
/// docs/BENCHMARKS.md), so one core already outruns the server, and on one thread no task is ever
/// woken across cores. Blocking store writes still go to tokio's blocking pool.
#[tokio::main(flavor = "current_thread")]
async fn run(config: Config) -> anyhow::Result<()> {
    if let Some(exposure) = config.metrics_exposure() {
        tracing::warn!("{exposure}");
    }
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.http.listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    xup::run(config, listener, shutdown).await
}

/// `xup check`: the config at `path` is valid (or xup would not be here); with `connect`, also
/// try the component handshake once.
fn check(path: &std::path::Path, config: &Config, connect: bool) -> ExitCode {
    say(format_args!("{}: configuration is valid", path.display()));
    if let Some(exposure) = config.metrics_exposure() {
        say(format_args!("note: {exposure}"));
    }
    let store = config.store.describe();
    let known = xup::store::SCHEMA_VERSION;
    match read_schema(&config.store) {
        Ok(Schema::Missing) => say(format_args!(
            "{store}: no store yet; the first start creates it (schema {known})"
        )),
        Ok(Schema::Current) => say(format_args!("{store}: store at schema {known}, this xup's")),
        Ok(Schema::Older(found)) => say(format_args!(
            "{store}: store at schema {found}; the next start upgrades it to {known}"
        )),
        Ok(Schema::Newer(found)) => {
            eprintln!(
                "xup: {store}: the store is at schema {found}, newer than this xup knows \
                 ({known}): run the xup that wrote it, or restore a backup"
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("xup: {store}: cannot read the store: {e}");
            return ExitCode::FAILURE;
        }
    }
    if !connect {
        return ExitCode::SUCCESS;
    }
    match check_connection(config) {
        Ok(()) => {
            say(format_args!(
                "{}: component handshake as {} succeeded",
                config.component.server, config.component.jid
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xup: {}: {e}", config.component.server);
            ExitCode::FAILURE
        }
    }
}

/// A line of a subcommand's answer on stdout. A reader that stopped early (`xup status | head -1`)
/// is not a failure of the command, so the rest is dropped where `println!` would panic; any other
/// error is (`xup import-up-config > config.json` on a full disk must not look as if it worked).
fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{line}") {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => {
            eprintln!("xup: cannot write the answer to stdout: {e}");
            std::process::exit(1);
        }
    }
}

/// `value` on stdout as indented JSON.
fn print_json(value: &impl serde::Serialize) -> ExitCode {
    match serde_json::to_string_pretty(value) {
        Ok(text) => {
            say(text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xup: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `xup status`: the overview on stdout.
fn status(config: &Config, json: bool) -> ExitCode {
    match gather_overview(config) {
        Ok(overview) if json => print_json(&overview),
        Ok(overview) => {
            say(overview.text().trim_end_matches('\n'));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xup: {}: {e}", config.store.describe());
            ExitCode::FAILURE
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn gather_overview(
    config: &Config,
) -> Result<xup::admin::overview::Overview, xup::admin::overview::OverviewError> {
    xup::admin::overview::gather(config).await
}

/// `xup generate-docs`: the manual pages and completions, from the same definition as `--help`.
fn generate_docs(dir: &std::path::Path) -> ExitCode {
    let written = std::fs::create_dir_all(dir).and_then(|()| {
        clap_mangen::generate_to(Cli::command(), dir)?;
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            clap_complete::generate_to(shell, &mut Cli::command(), "xup", dir)?;
        }
        Ok(())
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xup: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

/// The store `copy-store` copies into: from `--to`, `--to-file` or `from_env`, in that order. A
/// password is taken only from a file or the environment, never from an argument.
fn copy_target(
    to: Option<String>,
    to_file: Option<PathBuf>,
    from_env: Option<String>,
) -> Result<xup::config::StoreConfig, String> {
    let (target, from_argument) = match (to, to_file, from_env) {
        (Some(to), _, _) => (to, true),
        (None, Some(file), _) => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let first = text.lines().next().unwrap_or_default().trim().to_owned();
            (first, false)
        }
        (None, None, Some(from_env)) => (from_env.trim().to_owned(), false),
        (None, None, None) => {
            return Err("say where to copy to: --to, --to-file or XUP_COPY_TO".into());
        }
    };
    if target.is_empty() {
        return Err("the target is empty".into());
    }
    if !(target.starts_with("postgres://") || target.starts_with("postgresql://")) {
        return Ok(xup::config::StoreConfig::Sqlite {
            path: target.into(),
        });
    }
    let parsed = target
        .parse::<tokio_postgres::Config>()
        .map_err(|_| "the target is not a PostgreSQL URL that xup can read".to_owned())?;
    if from_argument && parsed.get_password().is_some() {
        return Err(
            "the target's URL holds a password, which every user of this machine can \
                    read on a command line: put the URL in a file for --to-file, or in \
                    XUP_COPY_TO"
                .into(),
        );
    }
    Ok(xup::config::StoreConfig::Postgres {
        url: target,
        pool_size: 2,
        ca_file: None,
    })
}

/// `xup copy-store`: what was copied on stdout; the target is named without its password.
fn copy_store(config: &Config, target: &xup::config::StoreConfig) -> ExitCode {
    let (from, into) = (config.store.describe(), target.describe());
    match copy_between(&config.store, target) {
        Ok(copied) => {
            say(format_args!(
                "copied from {from} to {into}: {} revocations, {} held messages ({} there \
                 already), {} VAPID keys, {} app-server nodes, {} registrations",
                copied.revocations,
                copied.held,
                copied.held_already,
                copied.vapid_keys,
                copied.nodes,
                copied.registrations
            ));
            if copied.vapid_conflicts.is_empty() {
                return ExitCode::SUCCESS;
            }
            eprintln!(
                "xup: {into} already has a different VAPID key for generation(s) {:?} and kept \
                 it; the subscriptions made with {from}'s key would not verify with it: copy \
                 into a store that has no key of that generation",
                copied.vapid_conflicts
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xup: copying from {from} to {into}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn copy_between(
    from: &xup::config::StoreConfig,
    to: &xup::config::StoreConfig,
) -> Result<xup::store::copy::Copied, xup::store::StoreError> {
    let (from, to) = (
        xup::store::engines::open(from).await?,
        xup::store::engines::open(to).await?,
    );
    xup::store::copy::copy(from.engine.as_ref(), to.engine.as_ref()).await
}

/// `xup import-up-config`: the new config on stdout, what the operator must know on stderr.
fn import_up_config(path: &std::path::Path) -> ExitCode {
    let imported = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
        .and_then(|text| xup::admin::import::from_up_config(&text).map_err(|e| e.to_string()));
    match imported {
        Ok(imported) => {
            for note in &imported.notes {
                eprintln!("xup: {note}");
            }
            print_json(&imported.config)
        }
        Err(e) => {
            eprintln!("xup: {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn read_schema(store: &xup::config::StoreConfig) -> Result<Schema, xup::store::StoreError> {
    xup::store::engines::schema_of(store).await
}

#[tokio::main(flavor = "current_thread")]
async fn check_connection(config: &Config) -> Result<(), xup::xmpp::ConnectError> {
    xup::xmpp::probe(&config.component).await
}

/// SIGINT or SIGTERM (systemd's stop) both mean a clean shutdown.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
