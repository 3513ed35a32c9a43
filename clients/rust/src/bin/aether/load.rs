//! `aether load`: writes N ops at a fixed rate (open loop: the schedule does
//! not wait for acks) and summarises the ack latency, measured from each
//! op's scheduled time (so a stalled client or a full queue counts against
//! it, instead of hiding as a late start), and the reconnects meanwhile.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use aether_client::{Acked, Error as ClientError};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::task::{JoinError, JoinHandle};

use crate::args::{Global, LoadArgs};
use crate::{EXIT_FAILURE, connect, fail};

/// The summary of a run.
#[derive(Debug, Serialize, PartialEq)]
pub struct Summary {
    pub ops: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    pub ops_per_s: f64,
    pub target_ops_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Acks per endpoint URL (hedged writes count for the relay that acked first).
    pub relays: Vec<(String, u64)>,
    /// Reconnects and failovers during the run.
    pub reconnects: u64,
}

/// Nearest-rank percentile of sorted samples (`p` in 0–100).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Builds the summary from ack latencies.
pub fn summarize(
    mut latencies: Vec<Duration>,
    errors: u64,
    elapsed: Duration,
    target: f64,
    relays: Vec<(String, u64)>,
) -> Summary {
    latencies.sort_unstable();
    let ops = latencies.len() as u64;
    let secs = elapsed.as_secs_f64();
    Summary {
        ops,
        errors,
        elapsed_s: (secs * 1e3).round() / 1e3,
        ops_per_s: if secs > 0.0 { ((ops as f64 / secs) * 10.0).round() / 10.0 } else { 0.0 },
        target_ops_per_s: target,
        p50_ms: ms(percentile(&latencies, 50.0)),
        p90_ms: ms(percentile(&latencies, 90.0)),
        p99_ms: ms(percentile(&latencies, 99.0)),
        max_ms: ms(latencies.last().copied().unwrap_or_default()),
        relays,
        reconnects: 0,
    }
}

/// One op: when it was scheduled, its result, when the result came.
type Outcome = (Instant, Result<Acked, ClientError>, Instant);

/// The latency of an op scheduled at `due`, acked at `acked_at`.
pub fn latency_since_schedule(due: Instant, acked_at: Instant) -> Duration {
    acked_at.saturating_duration_since(due)
}

fn progress(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} acked, {per_sec}, eta {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

pub async fn run(g: &Global, a: &LoadArgs) -> anyhow::Result<()> {
    let client = connect(g).await?;
    let handle = client.space(&a.space)?;
    match tokio::time::timeout(g.timeout, handle.ready()).await {
        Ok(r) => r?,
        Err(_) => return Err(fail(EXIT_FAILURE, format!("catching up: no answer within {:?}", g.timeout))),
    }
    let pad = "x".repeat(a.value_bytes.saturating_sub(24));
    let interval = Duration::from_secs_f64(1.0 / a.rate);
    let bar = progress(a.ops);
    // Each ticket is awaited by a task of its own, which notes when the ack
    // came (not when this loop got round to it).
    let mut inflight: FuturesUnordered<JoinHandle<Outcome>> = FuturesUnordered::new();
    let mut latencies = Vec::with_capacity(a.ops.min(10_000_000) as usize);
    let mut errors = 0u64;
    let mut first_error: Option<String> = None;
    let mut relays: std::collections::BTreeMap<String, u64> = Default::default();
    let mut record = |r: Result<Outcome, JoinError>, bar: &ProgressBar| {
        match r {
            Ok((due, Ok(acked), at)) => {
                latencies.push(latency_since_schedule(due, at));
                *relays.entry(acked.url).or_default() += 1;
            }
            Ok((_, Err(e), _)) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
        bar.inc(1);
    };

    let reconnects_before = client.reconnects();
    let start = Instant::now();
    let mut i = 0u64;
    while i < a.ops {
        let due = start + interval.mul_f64(i as f64);
        tokio::select! {
            Some(r) = inflight.next(), if !inflight.is_empty() => { record(r, &bar); continue; }
            () = tokio::time::sleep_until(due.into()) => {}
        }
        let value = serde_json::json!({ "i": i, "pad": pad });
        match handle.set_nowait(&format!("load/{}", i % a.keys), &value).await {
            Ok(ticket) => inflight.push(tokio::spawn(async move {
                let r = ticket.await;
                (due, r, Instant::now())
            })),
            Err(ClientError::QueueFull { .. }) => {
                // The offline queue is full: wait for an ack, then retry this op.
                match tokio::time::timeout(g.timeout, inflight.next()).await {
                    Ok(Some(r)) => record(r, &bar),
                    _ => return Err(fail(EXIT_FAILURE, "the queue is full and no ack came")),
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        i += 1;
    }
    let drain = async {
        while let Some(r) = inflight.next().await {
            record(r, &bar);
        }
    };
    let drained = tokio::time::timeout(g.timeout, drain).await.is_ok();
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let missing = a.ops.saturating_sub(latencies.len() as u64 + errors);
    let mut summary = summarize(latencies, errors + missing, elapsed, a.rate, relays.into_iter().collect());
    summary.reconnects = client.reconnects().saturating_sub(reconnects_before);
    let _ = client.close().await;
    print_summary(&summary, a.json)?;
    if !drained {
        return Err(fail(EXIT_FAILURE, format!("{missing} ops not acknowledged within {:?}", g.timeout)));
    }
    if let Some(e) = first_error {
        return Err(fail(EXIT_FAILURE, format!("{errors} ops failed; first: {e}")));
    }
    Ok(())
}

fn print_summary(s: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(s)?);
        return Ok(());
    }
    println!("ops       {} acked, {} failed", s.ops, s.errors);
    println!("elapsed   {:.3} s", s.elapsed_s);
    println!("rate      {:.1} ops/s (target {})", s.ops_per_s, s.target_ops_per_s);
    println!(
        "latency   p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
    );
    for (url, n) in &s.relays {
        println!("acked by  {url}: {n}");
    }
    println!("reconnects {}", s.reconnects);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let ms = Duration::from_millis;
        let v: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&v, 50.0), ms(50));
        assert_eq!(percentile(&v, 99.0), ms(99));
        assert_eq!(percentile(&v, 100.0), ms(100));
        assert_eq!(percentile(&v, 0.0), ms(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
        let s = summarize(vec![ms(3), ms(1), ms(2)], 1, Duration::from_secs(2), 10.0, vec![]);
        assert_eq!((s.ops, s.errors, s.ops_per_s, s.p50_ms, s.max_ms), (3, 1, 1.5, 2.0, 3.0));
    }

    #[test]
    fn latency_counts_from_the_schedule() {
        let t0 = Instant::now();
        // Scheduled at t0, enqueued late (t0 + 40ms), acked at t0 + 50ms: 50 ms, not 10.
        assert_eq!(latency_since_schedule(t0, t0 + Duration::from_millis(50)), Duration::from_millis(50));
        assert_eq!(latency_since_schedule(t0 + Duration::from_secs(1), t0), Duration::ZERO);
        let s = summarize(vec![], 0, Duration::from_secs(1), 1.0, vec![]);
        assert_eq!(s.reconnects, 0);
        assert!(serde_json::to_string(&s).unwrap().contains("\"reconnects\":0"));
    }
}
