//! The ledger of one measured run: which messages reached a client, when, and how many times.
//!
//! Every POSTed body starts with a [`MessageId`] (a magic, the run number and a sequence number),
//! so a client can tell this run's messages from stragglers of an earlier one, and the benchmark
//! can count lost and duplicated pushes exactly instead of trusting the providers' answers.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Instant,
};

const MAGIC: &[u8; 4] = b"xupb";

/// Bytes a body needs to carry a [`MessageId`].
pub const ID_LEN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MessageId {
    pub run: u32,
    pub seq: u64,
}

impl MessageId {
    /// A body of `len` bytes (at least [`ID_LEN`]) that carries this id.
    pub fn body(self, len: usize) -> Vec<u8> {
        let mut body = vec![0x5a; len.max(ID_LEN)];
        body[..4].copy_from_slice(MAGIC);
        body[4..8].copy_from_slice(&self.run.to_le_bytes());
        body[8..16].copy_from_slice(&self.seq.to_le_bytes());
        body
    }

    pub fn from_body(body: &[u8]) -> Option<MessageId> {
        if body.len() < ID_LEN || &body[..4] != MAGIC {
            return None;
        }
        Some(MessageId {
            run: u32::from_le_bytes(body[4..8].try_into().ok()?),
            seq: u64::from_le_bytes(body[8..16].try_into().ok()?),
        })
    }
}

/// Arrivals of one run's messages, indexed by sequence number; shared by all client sessions.
pub struct Ledger {
    run: u32,
    epoch: Instant,
    /// Nanoseconds after `epoch` of the first arrival, plus one (0: never arrived).
    arrived_at: Vec<AtomicU64>,
    copies: Vec<AtomicU32>,
    distinct: AtomicU64,
    strays: AtomicU64,
}

impl Ledger {
    pub fn new(run: u32, messages: usize, epoch: Instant) -> Ledger {
        Ledger {
            run,
            epoch,
            arrived_at: (0..messages).map(|_| AtomicU64::new(0)).collect(),
            copies: (0..messages).map(|_| AtomicU32::new(0)).collect(),
            distinct: AtomicU64::new(0),
            strays: AtomicU64::new(0),
        }
    }

    /// Note one arrival; anything not of this run counts as a stray.
    pub fn record(&self, id: Option<MessageId>) {
        let Some(id) = id.filter(|id| id.run == self.run && (id.seq as usize) < self.copies.len())
        else {
            self.strays.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let seq = id.seq as usize;
        if self.copies[seq].fetch_add(1, Ordering::Relaxed) == 0 {
            let at = self.epoch.elapsed().as_nanos() as u64 + 1;
            self.arrived_at[seq].store(at, Ordering::Relaxed);
            self.distinct.fetch_add(1, Ordering::Release);
        }
    }

    /// When message `seq` first arrived, in nanoseconds after the epoch.
    pub fn arrived_at(&self, seq: u64) -> Option<u64> {
        match self.arrived_at.get(seq as usize)?.load(Ordering::Acquire) {
            0 => None,
            at => Some(at - 1),
        }
    }

    pub fn copies(&self, seq: u64) -> u32 {
        self.copies
            .get(seq as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// How many different messages of this run have arrived.
    pub fn distinct(&self) -> u64 {
        self.distinct.load(Ordering::Acquire)
    }

    pub fn strays(&self) -> u64 {
        self.strays.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_a_body_and_foreign_bodies_are_not_ids() {
        let id = MessageId {
            run: 7,
            seq: 123_456,
        };
        let body = id.body(256);
        assert_eq!(body.len(), 256);
        assert_eq!(MessageId::from_body(&body), Some(id));
        assert_eq!(
            MessageId::from_body(b"hello, this is not a benchmark"),
            None
        );
        assert_eq!(MessageId::from_body(&body[..ID_LEN - 1]), None);
    }

    #[test]
    fn the_ledger_counts_copies_and_strays() {
        let ledger = Ledger::new(1, 4, Instant::now());
        ledger.record(Some(MessageId { run: 1, seq: 2 }));
        ledger.record(Some(MessageId { run: 1, seq: 2 }));
        ledger.record(Some(MessageId { run: 0, seq: 1 }));
        ledger.record(Some(MessageId { run: 1, seq: 9 }));
        ledger.record(None);
        assert_eq!(ledger.distinct(), 1);
        assert_eq!(ledger.copies(2), 2);
        assert!(ledger.arrived_at(2).is_some());
        assert_eq!(ledger.arrived_at(1), None);
        assert_eq!(ledger.strays(), 3);
    }
}
