//! The notices instances send each other through PostgreSQL, sealed so that only an xup of this
//! deployment can write or read them, and taken once each.
//!
//! A `NOTIFY` is no private line: any role that can connect to the database (PostgreSQL grants
//! `CONNECT` to `PUBLIC` by default, and channels have no privileges of their own) can `LISTEN` on
//! a channel and read what crosses it, or `NOTIFY` on it and be heard. So every notice is a PASETO
//! v4.local token under the ring's issuing key (`token.rs`, [`Purpose::Cluster`]): encrypted, so a
//! listener reads neither a push's body nor whom it is for, and authenticated, so only a holder of
//! `registration.secrets` can say anything an instance acts on. Inside, beside the message, are
//! the channel it is meant for (a notice for one channel is worthless on another), the sender's
//! instance id, a number the sender never used before, and when it was sealed.
//!
//! A sealed notice can still be recorded and sent again. [`Opener`] takes each at most once:
//! - it drops a notice sealed more than [`FRESHNESS`] ago or ahead (every instance's clock must be
//!   within that of the others: NTP), and one sealed before its session began to listen, which it
//!   could never have heard the first time ([`CLOCK_TOLERANCE`] allows for the clocks' skew);
//! - for each sender it has heard within [`FRESHNESS`] it remembers the highest number and which of
//!   the [`WINDOW`] numbers below it came, so a notice comes once, a little out of order at most.
//!
//! A sender is forgotten once it has been silent for [`FRESHNESS`]: anything it ever sealed is then
//! stale. So what the opener keeps is bounded by the instances that really spoke in that time.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    metrics::{ClusterRejection, METRICS},
    store::micros,
    token::{KeyRing, Purpose},
};

/// How old (or how far ahead) a notice may be. Every notice answers a push that waits
/// `delivery.answer_within` at most, and clocks are kept within a second by NTP: this is ample.
pub const FRESHNESS: Duration = Duration::from_secs(30);
/// How far behind this instance's clock another's may be at the start of a session.
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(2);
/// How far out of order one sender's notices may arrive. They are queued in order and sent by
/// one task, so only those sealed at the same moment by two tasks swap places.
pub const WINDOW: u64 = 128;

/// What crosses the database, before sealing.
#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    channel: String,
    from: String,
    seq: u64,
    sealed_at_us: i64,
    message: T,
}

/// Seals this instance's notices. One per instance: its numbers are never used twice.
pub struct Sealer {
    keys: Arc<KeyRing>,
    from: String,
    next: AtomicU64,
}

impl Sealer {
    pub fn new(keys: Arc<KeyRing>, from: String) -> Sealer {
        Sealer {
            keys,
            from,
            next: AtomicU64::new(0),
        }
    }

    /// `message` sealed for `channel`; `None` only if it cannot be written as JSON.
    pub fn seal<T: Serialize>(&self, channel: &str, message: &T) -> Option<String> {
        self.seal_at(channel, message, SystemTime::now())
    }

    fn seal_at<T: Serialize>(&self, channel: &str, message: &T, now: SystemTime) -> Option<String> {
        let envelope = Envelope {
            channel: channel.to_owned(),
            from: self.from.clone(),
            seq: self.next.fetch_add(1, Ordering::Relaxed),
            sealed_at_us: micros(now),
            message,
        };
        let payload = serde_json::to_vec(&envelope).ok()?;
        self.keys.seal(Purpose::Cluster, &payload).ok()
    }
}

/// What one sender has been heard to say: its highest number, and which of the [`WINDOW`] below
/// it came (bit `i` for `highest - 1 - i`).
struct Heard {
    highest: u64,
    below: u128,
    latest_us: i64,
}

impl Heard {
    /// Whether `seq` is new; it is remembered from now on.
    fn take(&mut self, seq: u64) -> bool {
        if seq > self.highest {
            let shift = seq - self.highest;
            self.below = match shift {
                s if s > u64::from(u128::BITS) => 0,
                s if s == u64::from(u128::BITS) => 1 << (u128::BITS - 1),
                s => (self.below << s) | (1 << (s - 1)),
            };
            self.highest = seq;
            return true;
        }
        let back = self.highest - seq;
        if back == 0 || back > WINDOW {
            return false;
        }
        let bit = 1u128 << (back - 1);
        let new = self.below & bit == 0;
        self.below |= bit;
        new
    }
}

/// Opens the notices one session hears, each once. Not shared: the session's task owns it.
pub struct Opener {
    keys: Arc<KeyRing>,
    listening_since_us: i64,
    heard: HashMap<String, Heard>,
    rejections: Rejections,
}

impl Opener {
    /// For a session that began to listen at `since`.
    pub fn new(keys: Arc<KeyRing>, since: SystemTime) -> Opener {
        Opener {
            keys,
            listening_since_us: micros(since),
            heard: HashMap::new(),
            rejections: Rejections::default(),
        }
    }

    /// The message of a notice heard on `channel` at `now`, if an instance of this deployment
    /// sealed it for that channel and it was not heard before. A rejection is counted and logged
    /// (once per burst).
    pub fn open<T: DeserializeOwned>(
        &mut self,
        channel: &str,
        notice: &str,
        now: SystemTime,
    ) -> Option<T> {
        match self.check(channel, notice, now) {
            Ok(message) => Some(message),
            Err(why) => {
                self.reject(why);
                None
            }
        }
    }

    /// Count and log a notice dropped for `why`, here or by the caller.
    pub fn reject(&mut self, why: ClusterRejection) {
        self.rejections.count(why);
    }

    fn check<T: DeserializeOwned>(
        &mut self,
        channel: &str,
        notice: &str,
        now: SystemTime,
    ) -> Result<T, ClusterRejection> {
        let payload = self
            .keys
            .unseal(Purpose::Cluster, notice)
            .map_err(|_| ClusterRejection::Forged)?;
        // Authenticated from here on: only an xup with these secrets wrote it.
        let envelope: Envelope<T> =
            serde_json::from_str(&payload).map_err(|_| ClusterRejection::Forged)?;
        if envelope.channel != channel {
            return Err(ClusterRejection::Forged);
        }
        let now_us = micros(now);
        let freshness = micros_of(FRESHNESS);
        if envelope.sealed_at_us.abs_diff(now_us) > freshness.unsigned_abs() {
            return Err(ClusterRejection::Stale);
        }
        match self.heard.get_mut(&envelope.from) {
            Some(heard) => {
                if !heard.take(envelope.seq) {
                    return Err(ClusterRejection::Replayed);
                }
                heard.latest_us = heard.latest_us.max(envelope.sealed_at_us);
            }
            None => {
                if envelope.sealed_at_us < self.listening_since_us - micros_of(CLOCK_TOLERANCE) {
                    return Err(ClusterRejection::Stale);
                }
                // Whoever has been silent since before the freshness bound can only be replayed.
                self.heard
                    .retain(|_, heard| heard.latest_us >= now_us - freshness);
                self.heard.insert(
                    envelope.from,
                    Heard {
                        highest: envelope.seq,
                        below: 0,
                        latest_us: envelope.sealed_at_us,
                    },
                );
            }
        }
        Ok(envelope.message)
    }

    /// How many senders are remembered, for tests of the bound.
    #[cfg(test)]
    fn senders(&self) -> usize {
        self.heard.len()
    }
}

fn micros_of(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// How long rejections are summed before the next is logged: a flood writes a line a minute.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The log of dropped notices, once per burst: the first is logged at once, the rest of a burst
/// are counted and logged with the next one after [`LOG_EVERY`].
#[derive(Default)]
struct Rejections {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Rejections {
    fn count(&mut self, why: ClusterRejection) {
        METRICS.cluster_rejected(why);
        self.unlogged += 1;
        if self
            .last_logged
            .is_some_and(|logged| logged.elapsed() < LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            reason = why.label(),
            dropped = self.unlogged,
            "dropped notices from PostgreSQL that no instance of this deployment sent, or sent \
             before: another database role may be speaking on xup's channels (see SECURITY.md)"
        );
        self.last_logged = Some(Instant::now());
        self.unlogged = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(secret: &str) -> Arc<KeyRing> {
        Arc::new(KeyRing::new(&[secret.to_owned()], "push.example.org").expect("ring"))
    }

    fn pair() -> (Sealer, Opener) {
        let keys = ring("a secret long enough for the tests");
        let opener = Opener::new(keys.clone(), SystemTime::now());
        (Sealer::new(keys, "a".into()), opener)
    }

    fn open(opener: &mut Opener, channel: &str, notice: &str) -> Result<String, ClusterRejection> {
        opener.check(channel, notice, SystemTime::now())
    }

    #[test]
    fn a_notice_opens_once_on_its_own_channel() {
        let (sealer, mut opener) = pair();
        let notice = sealer.seal("xup_push", &"hello").expect("sealed");
        assert!(!notice.contains("hello"), "the message is encrypted");
        assert_eq!(
            open(&mut opener, "xup_held", &notice),
            Err(ClusterRejection::Forged)
        );
        assert_eq!(open(&mut opener, "xup_push", &notice), Ok("hello".into()));
        assert_eq!(
            open(&mut opener, "xup_push", &notice),
            Err(ClusterRejection::Replayed)
        );
    }

    #[test]
    fn anything_not_sealed_with_these_secrets_is_forged() {
        let (_, mut opener) = pair();
        let stranger = Sealer::new(ring("somebody else's secret"), "a".into());
        let theirs = stranger.seal("xup_push", &"hello").expect("sealed");
        for notice in [
            theirs.as_str(),
            r#"{"reply_to":"a","ticket":0}"#,
            "",
            "v4.local.",
        ] {
            assert_eq!(
                open(&mut opener, "xup_push", notice),
                Err(ClusterRejection::Forged),
                "{notice:?}"
            );
        }
    }

    #[test]
    fn old_future_and_pre_session_notices_are_stale() {
        let keys = ring("a secret long enough for the tests");
        let sealer = Sealer::new(keys.clone(), "a".into());
        let now = SystemTime::now();
        let notice = sealer.seal_at("xup_push", &1, now).expect("sealed");
        let late = now + FRESHNESS + Duration::from_secs(1);
        let mut opener = Opener::new(keys.clone(), now);
        assert_eq!(
            opener.check::<u32>("xup_push", &notice, late),
            Err(ClusterRejection::Stale),
            "too old"
        );
        let early = now - FRESHNESS - Duration::from_secs(1);
        let mut opener = Opener::new(keys.clone(), early);
        assert_eq!(
            opener.check::<u32>("xup_push", &notice, early),
            Err(ClusterRejection::Stale),
            "ahead of the clock"
        );
        let started = now + CLOCK_TOLERANCE + Duration::from_secs(1);
        let mut opener = Opener::new(keys, started);
        assert_eq!(
            opener.check::<u32>("xup_push", &notice, started),
            Err(ClusterRejection::Stale),
            "sealed before this session listened: it can only be a recording"
        );
    }

    #[test]
    fn a_little_out_of_order_is_taken_and_every_number_once() {
        let (sealer, mut opener) = pair();
        let notices: Vec<String> = (0..WINDOW + 10)
            .map(|n| sealer.seal("xup_push", &n.to_string()).expect("sealed"))
            .collect();
        let last = notices.len() - 1;
        assert_eq!(
            open(&mut opener, "xup_push", &notices[1]).map(|_| ()),
            Ok(())
        );
        assert!(
            open(&mut opener, "xup_push", &notices[0]).is_ok(),
            "swapped"
        );
        assert!(open(&mut opener, "xup_push", &notices[last]).is_ok());
        assert_eq!(
            open(&mut opener, "xup_push", &notices[2]),
            Err(ClusterRejection::Replayed),
            "further back than the window"
        );
        assert!(open(&mut opener, "xup_push", &notices[last - 5]).is_ok());
        assert_eq!(
            open(&mut opener, "xup_push", &notices[last - 5]),
            Err(ClusterRejection::Replayed)
        );
        assert!(open(&mut opener, "xup_push", &notices[last - 1]).is_ok());
    }

    #[test]
    fn the_window_slides_by_any_step() {
        for step in [1, 2, 64, 127, 128, 129, 1000] {
            let mut heard = Heard {
                highest: 10,
                below: 0,
                latest_us: 0,
            };
            assert!(heard.take(10 + step), "step {step}");
            assert!(!heard.take(10), "the old highest was heard; step {step}");
            assert_eq!(heard.take(9), step < WINDOW, "step {step}");
            assert!(!heard.take(9), "step {step}");
            assert!(!heard.take(10 + step), "step {step}");
        }
    }

    #[test]
    fn senders_silent_past_the_freshness_bound_are_forgotten() {
        let keys = ring("a secret long enough for the tests");
        let now = SystemTime::now();
        let mut opener = Opener::new(keys.clone(), now);
        for n in 0..50 {
            let sealer = Sealer::new(keys.clone(), format!("instance {n}"));
            let notice = sealer.seal_at("xup_push", &n, now).expect("sealed");
            assert!(opener.check::<u32>("xup_push", &notice, now).is_ok());
        }
        assert_eq!(opener.senders(), 50);
        let later = now + FRESHNESS + Duration::from_secs(1);
        let newcomer = Sealer::new(keys, "a newcomer".into());
        let notice = newcomer.seal_at("xup_push", &0, later).expect("sealed");
        assert!(opener.check::<u32>("xup_push", &notice, later).is_ok());
        assert_eq!(opener.senders(), 1, "only the newcomer can still be heard");
    }
}
