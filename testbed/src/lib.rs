//! The real parts that xup's end-to-end tests and its benchmark run against: a throwaway Prosody
//! on loopback ports ([`Prosody`]) and the `xup` binary itself ([`Xup`]).
//!
//! Both are killed when their handle drops, and every wait has a deadline ([`WAIT`]), so nothing
//! outlives a test run and nothing hangs it. Failures panic with a message naming what was awaited:
//! this is harness code, and a panic is how a test or the benchmark reports that its world is broken.

mod prosody;
mod xup;

use std::time::Duration;

use tokio::{sync::mpsc, time::timeout};

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

/// A port that was free a moment ago on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The first item from `items` that `matches`, skipping the others; panics (naming `what`) if
/// the sender ends or nothing matches within [`WAIT`].
pub async fn first_matching<T>(
    items: &mut mpsc::UnboundedReceiver<T>,
    what: &str,
    matches: impl Fn(&T) -> bool,
) -> T {
    let found = async {
        while let Some(item) = items.recv().await {
            if matches(&item) {
                return Some(item);
            }
        }
        None
    };
    match timeout(WAIT, found).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("the process ended before {what}"),
        Err(_) => panic!("no {what} within {WAIT:?}"),
    }
}

/// Wait until something accepts connections on `port` (the only readiness signal Prosody gives).
pub async fn wait_for_port(port: u16) {
    let ready = async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    timeout(WAIT, ready)
        .await
        .unwrap_or_else(|_| panic!("nothing listens on port {port}"));
}
