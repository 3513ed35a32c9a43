//! The operator's Prometheus metrics (as kube-rs controller-rs exports them).

use std::time::Duration;

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounterVec, Opts, Registry, TextEncoder};

/// Reconcile metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by result (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Time per reconcile.
    pub duration: Histogram,
}

impl Metrics {
    /// A fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles =
            IntCounterVec::new(Opts::new("aether_operator_reconciles_total", "Mesh reconciles by result"), &["result"])
                .expect("valid metric");
        let duration = Histogram::with_opts(
            HistogramOpts::new("aether_operator_reconcile_duration_seconds", "Time per mesh reconcile")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )
        .expect("valid metric");
        registry.register(Box::new(reconciles.clone())).expect("unique");
        registry.register(Box::new(duration.clone())).expect("unique");
        Metrics { registry, reconciles, duration }
    }

    /// Records one reconcile.
    pub fn observe(&self, took: Duration, ok: bool) {
        self.duration.observe(took.as_secs_f64());
        self.reconciles.with_label_values(&[if ok { "ok" } else { "error" }]).inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding");
        String::from_utf8(out).expect("UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
