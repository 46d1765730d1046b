//! Name lookups for the app server's outbound client, bounded and on threads of their own.
//!
//! The system's resolver (`getaddrinfo`, so `/etc/hosts` and `nsswitch.conf` hold as operators
//! expect) blocks its thread until it has an answer or gives up, which with a DNS server that
//! never answers takes as long as `resolv.conf`'s timeouts allow. tokio's own lookups run it on
//! the runtime's blocking pool, which the SQLite store needs for every write, so a slow DNS server
//! named in a client's endpoint would stall pushes. Here, each lookup runs on a thread of its own,
//! at most [`MAX_LOOKUPS`] at once (one more is refused at once, not queued), and the caller waits
//! [`LOOKUP_TIMEOUT`] at most. A thread that outlives its caller keeps its slot until the system's
//! resolver gives up, so a resolver that never answers costs at most [`MAX_LOOKUPS`] threads, and
//! never one of the store's.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    sync::Arc,
    time::Duration,
};

use tokio::sync::{Semaphore, oneshot};

/// Lookups running at once; past it, a lookup is refused until one ends.
pub const MAX_LOOKUPS: usize = 16;
/// How long a caller waits for an answer. Sending a wake-up has `webpush::SEND_TIMEOUT` in all.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// How a lookup is made; the system's resolver, but for tests.
type Lookup = dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync;

/// Why a name gave no addresses.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ResolveError {
    #[error("too many name lookups at once")]
    Busy,
    #[error("no answer from the name server in time")]
    Timeout,
    #[error("the name does not resolve")]
    NotFound,
}

/// The resolver the outbound client uses. Cheap to share behind an `Arc`.
pub struct Resolver {
    slots: Arc<Semaphore>,
    timeout: Duration,
    lookup: Arc<Lookup>,
}

impl Resolver {
    /// The system's resolver, bounded.
    pub fn system() -> Resolver {
        Resolver::with(MAX_LOOKUPS, LOOKUP_TIMEOUT, |host, port| {
            (host, port).to_socket_addrs().map(Iterator::collect)
        })
    }

    fn with(
        slots: usize,
        timeout: Duration,
        lookup: impl Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) -> Resolver {
        Resolver {
            slots: Arc::new(Semaphore::new(slots)),
            timeout,
            lookup: Arc::new(lookup),
        }
    }

    /// The addresses of `host`, with `port`. Waits [`LOOKUP_TIMEOUT`] at most; dropping the future
    /// leaves the lookup to finish on its thread, holding its slot.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ResolveError::Busy)?;
        let (answer, answered) = oneshot::channel();
        let (lookup, host) = (self.lookup.clone(), host.to_owned());
        std::thread::Builder::new()
            .name("xup-resolve".into())
            .spawn(move || {
                let found = lookup(&host, port);
                drop(slot);
                let _ = answer.send(found);
            })
            .map_err(|_| ResolveError::Busy)?;
        match tokio::time::timeout(self.timeout, answered).await {
            Err(_) => Err(ResolveError::Timeout),
            Ok(Err(_)) | Ok(Ok(Err(_))) => Err(ResolveError::NotFound),
            Ok(Ok(Ok(found))) if found.is_empty() => Err(ResolveError::NotFound),
            Ok(Ok(Ok(found))) => Ok(found),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Mutex, time::Instant};

    use super::*;

    /// A resolver whose name server never answers (until the test ends), as far as a caller sees.
    fn never_answering(slots: usize) -> (Resolver, std::sync::mpsc::Sender<()>) {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        let resolver = Resolver::with(slots, Duration::from_millis(200), move |_, _| {
            // Blocks until the test drops `release`.
            let _ = released.lock().map(|r| r.recv());
            Err(std::io::Error::other("gave up"))
        });
        (resolver, release)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_name_server_that_never_answers_costs_a_bounded_wait_and_never_the_blocking_pool() {
        let (resolver, release) = never_answering(2);
        let started = Instant::now();
        assert_eq!(
            resolver.resolve("push.example.org", 443).await,
            Err(ResolveError::Timeout)
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            resolver.resolve("push.example.org", 443).await,
            Err(ResolveError::Timeout)
        );
        // Both slots are held by lookups that still hang: the next is refused at once.
        let started = Instant::now();
        assert_eq!(
            resolver.resolve("push.example.org", 443).await,
            Err(ResolveError::Busy)
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        // Meanwhile the runtime's blocking pool, the store's, answers as ever.
        let blocking = tokio::task::spawn_blocking(|| 7);
        let answer = tokio::time::timeout(Duration::from_secs(5), blocking).await;
        assert_eq!(answer.ok().and_then(Result::ok), Some(7));
        drop(release);
    }

    #[tokio::test]
    async fn a_name_resolves_and_a_slot_is_given_back() {
        let resolver = Resolver::with(1, Duration::from_secs(5), |host, port| match host {
            "push.example.org" => Ok(vec![SocketAddr::from(([93, 184, 216, 34], port))]),
            _ => Err(std::io::Error::other("no such name")),
        });
        for _ in 0..3 {
            let found = resolver.resolve("push.example.org", 443).await;
            assert_eq!(found, Ok(vec![SocketAddr::from(([93, 184, 216, 34], 443))]));
        }
        assert_eq!(
            resolver.resolve("nowhere.example.org", 443).await,
            Err(ResolveError::NotFound)
        );
    }
}
