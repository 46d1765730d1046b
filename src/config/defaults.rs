//! The defaults and floors of the config, each with the reason it has that value: the numbers the
//! outside world (Conversations' renewals, Mastodon's timeouts, RFC 8030) holds xup to.

use std::time::Duration;

/// Conversations renews an endpoint once less than 24 h remain, checking hourly; anything at or
/// below a day would re-register (and change the URL) every hour, so two days is the floor.
pub const MIN_LIFETIME: Duration = Duration::from_secs(2 * 24 * 3600);

/// A week, as the Java `up` provider uses: few renewals, and a revocation is remembered at most this long.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// The longest the Java `up` made its endpoints live (a day in its first releases, a week since):
/// the tokens it issued are honoured until they expire, so their revocations are kept this long.
pub const LEGACY_UP_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a push waits for the client's answer at all. A later `result` still removes the held
/// copy; the sender is long gone by then (`DEFAULT_ANSWER_WITHIN`).
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a sender waits for the client's verdict before it is answered anyway (`201`, the
/// message held). Mastodon's HTTP client gives up reading after 10 s and Sidekiq then retries the
/// job, so a sender kept waiting longer turns one silent phone into duplicate notifications; a
/// phone that is awake answers in well under a second.
pub const DEFAULT_ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// How long a message is held for an unreachable client when the sender sent no `TTL`: RFC 8030
/// makes the header mandatory, but UnifiedPush application servers often omit it (a 400 would
/// lose their notifications), and a day covers a phone that is off overnight.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The longest xup holds any message, whatever the sender asks: a week-old notification is stale.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Held messages per registration: a chat app's backlog after a weekend offline, not a mailbox.
pub const DEFAULT_MAX_HELD_PER_REGISTRATION: usize = 100;

/// Held messages in all, so a flood for phones that never come back cannot fill the disk.
pub const DEFAULT_MAX_HELD: usize = 100_000;

/// One account may hold at most this fraction (1/25: 4 %) of `delivery.max_held` unless told
/// otherwise: a flood for one user never fills what every other user's messages need.
pub const HELD_SHARE_OF_ACCOUNT: usize = 25;

/// One domain may hold at most half of `delivery.max_held` unless told otherwise, so a server
/// whose users all stay away (or one that registers for a domain it invents, under `allow: ["*"]`)
/// leaves room for the others. A provider for one domain alone raises it to `max_held`.
pub const HELD_SHARE_OF_DOMAIN: usize = 2;

/// The longest a held message that was not taken waits before it is offered again, and how often
/// every registration that is due is looked at.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(300);

/// Open HTTP connections at once. Each costs a file descriptor and hyper's buffers (about 16 KB
/// over HTTP/1.1); systemd's default soft limit on descriptors is 1024.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;

/// One address may hold at most this fraction (1/10) of `http.max_connections` unless told
/// otherwise: a busy homeserver needs a few connections (HTTP/2 multiplexes), and no one address
/// can take them all.
pub const CONNECTION_SHARE_OF_ADDRESS: usize = 10;

/// Pushes waiting for a client's answer at once: each keeps its body and a request's state (about
/// 6 KB over HTTP/2, see docs/BENCHMARKS.md), so this bounds the memory a slow client population
/// can pin. Past it a push gets `503` with `Retry-After`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;

/// How long a connection may take to send a request's head, and how long an idle HTTP/1.1
/// connection is kept open between requests.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request may take to send its body (at most 4096 bytes).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Per endpoint: what FCM allows one device (240 a minute; about 5 000 an hour), and never less: a
/// burst of 240, then four a second (14 400 an hour). A busy Matrix room or a Mastodon thread
/// pushes a message per event, and a chat app must never meet this limit.
pub const DEFAULT_PER_ENDPOINT: (u32, Duration) = (240, Duration::from_millis(250));

/// Per sender address: generous, because one Matrix homeserver or Mastodon instance pushes for
/// thousands of users from one address. 500 a second, after a burst of 2000.
pub const DEFAULT_PER_ADDRESS: (u32, Duration) = (2000, Duration::from_millis(2));

/// Per sender address, tokens that fail to decrypt: a sender only ever has tokens xup issued, so
/// forgeries mean someone is guessing. 100, then one every 10 s.
pub const DEFAULT_FORGED_PER_ADDRESS: (u32, Duration) = (100, Duration::from_secs(10));

/// Per account, `<register>` requests: a distributor registering every app after a reinstall,
/// then one every 20 s.
pub const DEFAULT_REGISTRATIONS_PER_ACCOUNT: (u32, Duration) = (30, Duration::from_secs(20));

/// Per app-server node, XEP-0357 publishes: a busy chat wakes the phone once a message, and the
/// server coalesces; one a second after a burst of 60.
pub const DEFAULT_PUBLISHES_PER_NODE: (u32, Duration) = (60, Duration::from_secs(1));

/// How long an app-server node lives. Clients do not renew a node (p2 and mod_push nodes live
/// forever); a month bounds what a leaked node is worth, and a client that enables push at each
/// login registers again long before.
pub const DEFAULT_NODE_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
