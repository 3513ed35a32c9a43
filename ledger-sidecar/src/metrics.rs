//! The sidecar's Prometheus metrics and its `/metrics`, `/healthz`, `/readyz`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
    exponential_buckets,
};
use serde::{Deserialize, Serialize};

/// Every metric of `aether-ledger ship`.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Bytes of local WAL segments not yet in the store (the open one included).
    pub backlog_bytes: IntGauge,
    /// Local WAL segments not yet in the store (the open one included).
    pub backlog_segments: IntGauge,
    /// Age of the oldest sealed segment not yet in the store.
    pub lag: Gauge,
    /// Time to upload one object.
    pub upload_duration: Histogram,
    /// Bytes uploaded, by kind (`segment`, `snapshot`).
    pub uploaded_bytes: IntCounterVec,
    /// Segments recorded in the manifest.
    pub segments: IntCounter,
    /// Snapshots recorded in the manifest.
    pub snapshots: IntCounter,
    /// Ops in shipped segments.
    pub ops: IntCounter,
    /// Highest shipped segment.
    pub shipped_segment: IntGauge,
    /// Unix time of the last successful upload.
    pub last_upload: Gauge,
    /// Failed shipping cycles.
    pub errors: IntCounter,
    /// Manifest updates that lost a race and were retried.
    pub conflicts: IntCounter,
    /// Duration of the restore that built this data directory (from `ledger/restore.json`).
    pub restore_duration: Gauge,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let r = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone())).expect("unique metric names");
            c
        }
        Metrics {
            backlog_bytes: reg(
                &r,
                IntGauge::new("aether_ledger_backlog_bytes", "Local WAL bytes not yet in object storage").unwrap(),
            ),
            backlog_segments: reg(
                &r,
                IntGauge::new("aether_ledger_backlog_segments", "Local WAL segments not yet in object storage")
                    .unwrap(),
            ),
            lag: reg(
                &r,
                Gauge::new("aether_ledger_lag_seconds", "Age of the oldest sealed segment not yet in object storage")
                    .unwrap(),
            ),
            upload_duration: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("aether_ledger_upload_duration_seconds", "Time to upload one object")
                        .buckets(exponential_buckets(1e-3, 2.0, 16).expect("valid buckets")),
                )
                .unwrap(),
            ),
            uploaded_bytes: reg(
                &r,
                IntCounterVec::new(Opts::new("aether_ledger_uploaded_bytes_total", "Bytes uploaded"), &["kind"])
                    .unwrap(),
            ),
            segments: reg(
                &r,
                IntCounter::new("aether_ledger_shipped_segments_total", "Segments recorded in the manifest").unwrap(),
            ),
            snapshots: reg(
                &r,
                IntCounter::new("aether_ledger_shipped_snapshots_total", "Snapshots recorded in the manifest").unwrap(),
            ),
            ops: reg(&r, IntCounter::new("aether_ledger_shipped_ops_total", "Ops in shipped segments").unwrap()),
            shipped_segment: reg(
                &r,
                IntGauge::new("aether_ledger_shipped_segment", "Highest segment confirmed in object storage").unwrap(),
            ),
            last_upload: reg(
                &r,
                Gauge::new("aether_ledger_last_upload_timestamp_seconds", "Unix time of the last successful upload")
                    .unwrap(),
            ),
            errors: reg(&r, IntCounter::new("aether_ledger_errors_total", "Failed shipping cycles").unwrap()),
            conflicts: reg(
                &r,
                IntCounter::new("aether_ledger_manifest_conflicts_total", "Manifest updates retried after a race")
                    .unwrap(),
            ),
            restore_duration: reg(
                &r,
                Gauge::new("aether_ledger_restore_duration_seconds", "Duration of the restore that built the data dir")
                    .unwrap(),
            ),
            registry: r,
        }
    }

    /// Records one upload.
    pub fn observe_upload(&self, took: Duration, bytes: u64, kind: &str) {
        self.upload_duration.observe(took.as_secs_f64());
        self.uploaded_bytes.with_label_values(&[kind]).inc_by(bytes);
    }

    /// Exports the duration of the restore recorded in `data_dir`, if any.
    pub fn load_restore_report(&self, data_dir: &Path) {
        if let Ok(raw) = std::fs::read(data_dir.join(RESTORE_REPORT))
            && let Ok(r) = serde_json::from_slice::<RestoreReport>(&raw)
        {
            self.restore_duration.set(r.duration_seconds);
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding");
        String::from_utf8(out).expect("UTF-8 exposition")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Written by `restore` into the data directory, read by `ship` for its metric.
pub const RESTORE_REPORT: &str = "ledger/restore.json";

/// What a restore did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreReport {
    /// Wall time of the restore.
    pub duration_seconds: f64,
    /// Ops read (snapshot entries and segment ops).
    pub ops: u64,
    /// Bytes downloaded.
    pub bytes: u64,
    /// The point in time restored to, when `--at` was given.
    pub at: Option<String>,
    /// When it finished (RFC 3339).
    pub finished_at: String,
}

/// The shipper's health: the last cycle's error, if it failed.
#[derive(Default)]
pub struct Health {
    last_error: Mutex<Option<String>>,
}

impl Health {
    /// The last cycle succeeded.
    pub fn ok(&self) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The last cycle failed.
    pub fn failed(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }
}

type Ctx = (Metrics, Arc<Health>);

/// Serves `/metrics`, `/healthz` and `/readyz` (503 with the error while shipping fails).
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics, health: Arc<Health>) {
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state((metrics, health));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics server stopped");
    }
}

async fn metrics_page(State((m, _)): State<Ctx>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.render()).into_response()
}

async fn readyz(State((_, h)): State<Ctx>) -> Response {
    match h.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("shipping failing: {e}\n")).into_response(),
    }
}
