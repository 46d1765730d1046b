//! What one measured run found, as a table row for people and a JSON line for tools.

use serde_json::{Value, json};

use crate::{
    ledger::Ledger,
    load::{Load, Sample},
};

/// CPU seconds and peak memory of one process over one run.
#[derive(Clone, Copy, Default)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
}

/// One provider at one concurrency.
pub struct Run {
    pub provider: &'static str,
    pub concurrency: usize,
    pub messages: u64,
    pub body_len: usize,
    pub wall_seconds: f64,
    pub accepted: u64,
    pub refused: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub strays: u64,
    /// HTTP request latency and POST→client arrival, in nanoseconds, sorted.
    pub http: Vec<u64>,
    pub delivery: Vec<u64>,
    /// `None` for a process that takes no part in this provider's path.
    pub xup: Option<Usage>,
    /// The XMPP server's process (Prosody, or ejabberd's Erlang VM).
    pub server: Usage,
    pub tool: Usage,
}

impl Run {
    /// Tally `samples` against what the clients recorded in `ledger`.
    pub fn tally(provider: &'static str, load: &Load, samples: &[Sample], ledger: &Ledger) -> Run {
        let accepted = samples.iter().filter(|s| s.ok()).count() as u64;
        let mut http: Vec<u64> = samples.iter().map(|s| s.end - s.start).collect();
        let mut delivery: Vec<u64> = samples
            .iter()
            .filter_map(|s| Some(ledger.arrived_at(s.seq)?.saturating_sub(s.start)))
            .collect();
        http.sort_unstable();
        delivery.sort_unstable();
        let first = samples.iter().map(|s| s.start).min().unwrap_or(0);
        let last = samples.iter().map(|s| s.end).max().unwrap_or(0);
        Run {
            provider,
            concurrency: load.concurrency,
            messages: load.messages,
            body_len: load.body_len,
            wall_seconds: (last - first) as f64 / 1e9,
            accepted,
            refused: samples.len() as u64 - accepted,
            lost: samples
                .iter()
                .filter(|s| s.ok() && ledger.arrived_at(s.seq).is_none())
                .count() as u64,
            duplicated: samples.iter().filter(|s| ledger.copies(s.seq) > 1).count() as u64,
            strays: ledger.strays(),
            http,
            delivery,
            xup: None,
            server: Usage::default(),
            tool: Usage::default(),
        }
    }

    pub fn pushes_per_second(&self) -> f64 {
        self.accepted as f64 / self.wall_seconds.max(1e-9)
    }

    /// Whether the run kept the promise every provider must keep: nothing lost, nothing twice.
    pub fn is_sound(&self) -> bool {
        self.lost == 0 && self.duplicated == 0
    }

    fn micros_per_push(&self, usage: Usage) -> f64 {
        usage.cpu_seconds * 1e6 / self.accepted.max(1) as f64
    }

    /// The load tool's CPU as a share of one core over the run (100 = one core busy).
    fn tool_cpu_percent(&self) -> f64 {
        self.tool.cpu_seconds * 100.0 / self.wall_seconds.max(1e-9)
    }

    pub fn json(&self, context: &Value) -> Value {
        let ms = |sorted: &[u64], q: f64| percentile(sorted, q) as f64 / 1e6;
        let usage = |u: Usage| {
            json!({
                "cpu_us_per_push": self.micros_per_push(u),
                "cpu_seconds": u.cpu_seconds,
                "peak_rss_mib": u.peak_rss_kib as f64 / 1024.0,
            })
        };
        json!({
            "kind": "push",
            "context": context,
            "provider": self.provider,
            "concurrency": self.concurrency,
            "messages": self.messages,
            "body_bytes": self.body_len,
            "wall_seconds": self.wall_seconds,
            "pushes_per_second": self.pushes_per_second(),
            "http_ms": {
                "p50": ms(&self.http, 0.50), "p90": ms(&self.http, 0.90),
                "p99": ms(&self.http, 0.99), "max": ms(&self.http, 1.0),
            },
            "delivery_ms": { "p50": ms(&self.delivery, 0.50), "p99": ms(&self.delivery, 0.99) },
            "non_2xx": self.refused,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "strays": self.strays,
            "xup": self.xup.map(usage),
            "server": usage(self.server),
            "load_tool_cpu_percent_of_one_core": self.tool_cpu_percent(),
        })
    }

    pub const HEADER: &'static str = "provider          C   push/s   http p50    p90    p99    max (ms) | deliv p50   p99 | non2xx lost dup | µs/push xup  server | MiB xup  server | tool CPU";

    pub fn row(&self) -> String {
        let ms = |sorted: &[u64], q: f64| percentile(sorted, q) as f64 / 1e6;
        let xup_us = self.xup.map_or("-".to_owned(), |u| {
            format!("{:.1}", self.micros_per_push(u))
        });
        let xup_mib = self.xup.map_or("-".to_owned(), |u| {
            format!("{:.1}", u.peak_rss_kib as f64 / 1024.0)
        });
        format!(
            "{:<16} {:>3} {:>8.0} {:>10.2} {:>6.2} {:>6.2} {:>6.2}      | {:>9.2} {:>5.2} | {:>6} {:>4} {:>3} | {:>11} {:>8.1} | {:>7} {:>7.1} | {:>6.0}%",
            self.provider,
            self.concurrency,
            self.pushes_per_second(),
            ms(&self.http, 0.50),
            ms(&self.http, 0.90),
            ms(&self.http, 0.99),
            ms(&self.http, 1.0),
            ms(&self.delivery, 0.50),
            ms(&self.delivery, 0.99),
            self.refused,
            self.lost,
            self.duplicated,
            xup_us,
            self.micros_per_push(self.server),
            xup_mib,
            self.server.peak_rss_kib as f64 / 1024.0,
            self.tool_cpu_percent(),
        )
    }
}

/// Nearest-rank percentile of an ascending slice (`q` = 1.0 is the maximum); 0 when empty.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.50), 50);
        assert_eq!(percentile(&values, 0.99), 99);
        assert_eq!(percentile(&values, 1.0), 100);
        assert_eq!(percentile(&[7], 0.5), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
