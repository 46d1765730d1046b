//! The real parts that xup's end-to-end tests and its benchmark run against: a throwaway XMPP
//! server on loopback ports ([`Server`]: [`Prosody`], or [`Ejabberd`] when `XUP_TEST_SERVER` is
//! `ejabberd`) and the `xup` binary itself ([`Xup`]), and a throwaway PostgreSQL cluster
//! ([`Postgres`]) for the shared store.
//!
//! Both are killed when their handle drops, and every wait has a deadline ([`WAIT`]), so nothing
//! outlives a test run and nothing hangs it. Failures panic with a message naming what was awaited:
//! this is harness code, and a panic is how a test or the benchmark reports that its world is broken.

mod ejabberd;
mod postgres;
mod prosody;
mod xup;

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use tokio::{sync::mpsc, time::timeout};

pub use ejabberd::Ejabberd;
pub use postgres::Postgres;
pub use prosody::Prosody;
pub use xup::{Xup, XupSettings};

pub const DOMAIN: &str = "localhost";
/// A second host on the same server, outside xup's default access list.
pub const OTHER_DOMAIN: &str = "elsewhere.test";
pub const COMPONENT: &str = "up.localhost";
pub const COMPONENT_SECRET: &str = "component-secret-for-tests";
pub const PASSWORD: &str = "password";
pub const SECRET_A: &str = "endpoint-secret-A-0123456789";
pub const SECRET_B: &str = "endpoint-secret-B-0123456789";

/// Bound on anything the harness waits for: generous for a loaded CI machine, yet nothing hangs.
pub const WAIT: Duration = Duration::from_secs(20);

/// A server's config template with its `@NAME@` placeholders filled in: the names every test
/// server shares (domains, component, secret), then the server's own `more`.
fn fill_template(template: &str, more: &[(&str, String)]) -> String {
    let shared = [
        ("DOMAIN", DOMAIN),
        ("OTHER_DOMAIN", OTHER_DOMAIN),
        ("COMPONENT", COMPONENT),
        ("COMPONENT_SECRET", COMPONENT_SECRET),
    ];
    let names = shared
        .into_iter()
        .chain(more.iter().map(|(name, value)| (*name, value.as_str())));
    names.fold(template.to_owned(), |text, (name, value)| {
        text.replace(&format!("@{name}@"), value)
    })
}

/// A port that was free a moment ago on loopback, for a server to listen on.
///
/// It is taken from below the kernel's ephemeral range (where the outgoing connections of every
/// other test get their local ports), so no client can take it in the moment between this check
/// and the server binding it. ejabberd takes a second or so to bind, long enough for that to
/// happen under the load of the other tests. Ports are handed out in turn, starting from a point
/// set by the process id, so concurrent tests in one process never get the same one. The point is
/// a hash of the id, not the id: processes started together have ids a few apart, and counting
/// on from neighbouring points they would soon try the same ports, each before the other's server
/// had bound them. (Two processes can still meet; the benchmark's smoke tests, the one place that
/// runs two port-choosing processes, take turns.)
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = (10_000, ephemeral_start().max(10_001));
    let span = high - low;
    // SplitMix64's finalizer spreads neighbouring ids across the range.
    let mut x = u64::from(std::process::id()).wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let offset = ((x ^ (x >> 31)) % u64::from(span)) as u32;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + (offset + n) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below the ephemeral range")
}

/// The first port of the kernel's ephemeral range (Linux's default is 32768).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// The first item from `items` that `matches`, skipping the others; panics (naming `what`) if
/// the sender ends or nothing matches within [`WAIT`].
pub async fn first_matching<T>(
    items: &mut mpsc::UnboundedReceiver<T>,
    what: &str,
    matches: impl Fn(&T) -> bool,
) -> T {
    first_matching_within(items, what, matches, WAIT).await
}

/// [`first_matching`], within `deadline`.
pub async fn first_matching_within<T>(
    items: &mut mpsc::UnboundedReceiver<T>,
    what: &str,
    matches: impl Fn(&T) -> bool,
    deadline: Duration,
) -> T {
    let found = async {
        while let Some(item) = items.recv().await {
            if matches(&item) {
                return Some(item);
            }
        }
        None
    };
    match timeout(deadline, found).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("the process ended before {what}"),
        Err(_) => panic!("no {what} within {deadline:?}"),
    }
}

/// Wait until something accepts connections on `port` (the only readiness signal Prosody gives).
pub async fn wait_for_port(port: u16) {
    if !listening(port).await {
        panic!("nothing listens on port {port}");
    }
}

/// Whether something accepts connections on `port` within [`WAIT`].
pub async fn listening(port: u16) -> bool {
    let ready = async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    timeout(WAIT, ready).await.is_ok()
}

/// A failing test shows what the server logged last, beside xup's own lines: the server's side
/// of a stanza that never arrived is often the half of the story that explains it.
impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the XMPP server's log, last lines:\n{}", self.log_tail(60));
        }
    }
}

/// The XMPP server a test runs against: Prosody, or ejabberd when the environment variable
/// `XUP_TEST_SERVER` is `ejabberd`, so one suite proves xup against both.
pub enum Server {
    Prosody(Prosody),
    Ejabberd(Ejabberd),
}

impl Server {
    pub async fn start() -> Server {
        match std::env::var("XUP_TEST_SERVER").as_deref() {
            Ok("ejabberd") => Server::Ejabberd(Ejabberd::start().await),
            Ok("prosody") | Err(_) => Server::Prosody(Prosody::start().await),
            Ok(other) => panic!("XUP_TEST_SERVER is prosody or ejabberd, not {other:?}"),
        }
    }

    pub fn c2s_port(&self) -> u16 {
        match self {
            Server::Prosody(p) => p.c2s_port,
            Server::Ejabberd(e) => e.c2s_port,
        }
    }

    pub fn component_port(&self) -> u16 {
        match self {
            Server::Prosody(p) => p.component_port,
            Server::Ejabberd(e) => e.component_port,
        }
    }

    /// The process that does the server's work, for reading its CPU time and memory.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Server::Prosody(p) => p.pid(),
            Server::Ejabberd(e) => e.pid(),
        }
    }

    /// Create `user@domain` with the shared test password.
    pub async fn add_user(&self, user: &str, domain: &str) {
        match self {
            Server::Prosody(p) => p.add_user(user, domain),
            Server::Ejabberd(e) => e.add_user(user, domain).await,
        }
    }

    /// Kill the server hard, as a crash or an OOM kill would.
    pub async fn kill(&mut self) {
        match self {
            Server::Prosody(p) => p.kill().await,
            Server::Ejabberd(e) => e.kill().await,
        }
    }

    pub async fn restart(&mut self) {
        match self {
            Server::Prosody(p) => p.restart().await,
            Server::Ejabberd(e) => e.restart().await,
        }
    }

    /// The server's log file.
    fn log_path(&self) -> std::path::PathBuf {
        match self {
            Server::Prosody(p) => p.log_path(),
            Server::Ejabberd(e) => e.log_path(),
        }
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Wait until the server's own log says `needle` (a server's own signal that it acted on
    /// something, where it offers no other); panics with the log if it does not within [`WAIT`].
    pub async fn wait_log(&self, needle: &str) {
        let path = self.log_path();
        let said = async {
            while !std::fs::read_to_string(&path).is_ok_and(|log| log.contains(needle)) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if timeout(WAIT, said).await.is_err() {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            panic!("the server never logged {needle:?}; its log:\n{log}");
        }
    }
}
