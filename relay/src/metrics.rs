//! Prometheus metrics, `aether_` prefix, base units (seconds, bytes).

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder, exponential_buckets,
};

/// Every metric the relay exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Ops accepted, by kind (`set`, `delete`).
    pub ops: IntCounterVec,
    /// Time from receiving a write to acknowledging it to its writer.
    pub op_latency: HistogramVec,
    /// `op_latency{ack="durable"}`, resolved once.
    pub op_latency_durable: Histogram,
    /// `op_latency{ack="memory"}`, resolved once.
    pub op_latency_memory: Histogram,
    /// `ops{kind="set"}`, resolved once.
    pub ops_set: IntCounter,
    /// `ops{kind="delete"}`, resolved once.
    pub ops_delete: IntCounter,
    /// Time to hand one op to every subscriber's queue.
    pub fanout_latency: Histogram,
    /// Subscribers one op was delivered to.
    pub fanout_size: Histogram,
    /// Presence messages relayed.
    pub presence: IntCounter,
    /// Reads of `--clouds-file` that found it unusable (the last good list stays in service).
    pub clouds_file_errors: IntCounter,
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// Connections refused or closed by the relay, by reason.
    pub disconnects: IntCounterVec,
    /// `error` replies sent, by code.
    pub errors: IntCounterVec,
    /// Duration of each WAL fdatasync.
    pub wal_fsync: Histogram,
    /// Records covered by one WAL sync (group commit batch size).
    pub wal_batch_ops: Histogram,
    /// Bytes appended to the WAL.
    pub wal_bytes: IntCounter,
    /// Segments currently on disk.
    pub wal_segments: IntGauge,
    /// The configured bound on a segment's age before it is sealed (the
    /// ledger's recovery point objective, shipping time aside); 0 when off.
    pub wal_seal_after: Gauge,
    /// Bytes of WAL segments not yet confirmed in object storage (ledger sidecar mode).
    pub ledger_backlog_bytes: IntGauge,
    /// WAL segments not yet confirmed in object storage (ledger sidecar mode).
    pub ledger_backlog_segments: IntGauge,
    /// How long the oldest sealed, unshipped segment has waited (0: none waits).
    pub ledger_lag: Gauge,
    /// 1 while the backlog is over `--ledger-backlog-max-bytes` and writes are refused.
    pub ledger_backlog_full: IntGauge,
    /// Snapshots written.
    pub snapshots: IntCounter,
    /// Duration of writing one snapshot.
    pub snapshot_duration: Histogram,
    /// Spaces held in memory.
    pub spaces: IntGauge,
    /// Ops applied from the mesh, by source (`replicate`, `forwarded`).
    pub mesh_ops: IntCounterVec,
    /// Anti-entropy passes and failed sessions, by result.
    pub anti_entropy: IntCounterVec,
    /// Ops moved by anti-entropy, by direction (`fetched`, `pushed`).
    pub anti_entropy_ops: IntCounterVec,
    /// Shards this relay owns.
    pub shards_owned: IntGauge,
    /// Members in the current view, this relay included.
    pub members: IntGauge,
    /// Shards with data here that this relay no longer owns.
    pub shards_held: IntGauge,
    /// Held shards that some owner still lacks data of (0: safe to stop this relay).
    pub handoff_pending: IntGauge,
    /// Ops not yet durable at a peer, by peer.
    pub replication_pending: IntGaugeVec,
    /// Age of the oldest op not yet durable at a peer (replication lag), by peer.
    pub replication_lag: GaugeVec,
    /// Ops dropped from a full peer queue (left to anti-entropy), by peer.
    pub replication_dropped: IntGaugeVec,
    /// 1 while the replication stream to a peer is open, by peer.
    pub peer_connected: IntGaugeVec,
}

fn registered<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone())).expect("metric names are unique and valid");
    c
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let r = Registry::new();
        let latency_buckets = exponential_buckets(10e-6, 2.0, 18).expect("valid buckets"); // 10 µs .. 1.3 s
        let count_buckets = exponential_buckets(1.0, 2.0, 16).expect("valid buckets"); // 1 .. 32768
        let ops = registered(&r, IntCounterVec::new(Opts::new("aether_ops_total", "Ops accepted"), &["kind"]).unwrap());
        let op_latency = registered(
            &r,
            HistogramVec::new(
                HistogramOpts::new("aether_op_latency_seconds", "Receive to writer acknowledgement")
                    .buckets(latency_buckets.clone()),
                &["ack"],
            )
            .unwrap(),
        );
        Self {
            ops_set: ops.with_label_values(&["set"]),
            ops_delete: ops.with_label_values(&["delete"]),
            op_latency_durable: op_latency.with_label_values(&["durable"]),
            op_latency_memory: op_latency.with_label_values(&["memory"]),
            ops,
            op_latency,
            fanout_latency: registered(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("aether_fanout_latency_seconds", "Time to queue one op to every subscriber")
                        .buckets(exponential_buckets(1e-6, 2.0, 18).expect("valid buckets")),
                )
                .unwrap(),
            ),
            fanout_size: registered(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("aether_fanout_deliveries", "Subscribers one op was delivered to")
                        .buckets(count_buckets.clone()),
                )
                .unwrap(),
            ),
            presence: registered(&r, IntCounter::new("aether_presence_total", "Presence messages relayed").unwrap()),
            clouds_file_errors: registered(
                &r,
                IntCounter::new(
                    "aether_clouds_file_errors_total",
                    "Reads of --clouds-file that found it unusable (the last good list stays in service)",
                )
                .unwrap(),
            ),
            connections: registered(&r, IntGauge::new("aether_connections", "Open WebSocket connections").unwrap()),
            disconnects: registered(
                &r,
                IntCounterVec::new(
                    Opts::new("aether_disconnects_total", "Connections refused or closed by the relay"),
                    &["reason"],
                )
                .unwrap(),
            ),
            errors: registered(
                &r,
                IntCounterVec::new(Opts::new("aether_client_errors_total", "error replies sent"), &["code"]).unwrap(),
            ),
            wal_fsync: registered(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("aether_wal_fsync_seconds", "WAL fdatasync duration").buckets(latency_buckets),
                )
                .unwrap(),
            ),
            wal_batch_ops: registered(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("aether_wal_batch_records", "Records made durable by one fdatasync")
                        .buckets(count_buckets),
                )
                .unwrap(),
            ),
            wal_bytes: registered(&r, IntCounter::new("aether_wal_bytes_total", "Bytes appended to the WAL").unwrap()),
            wal_segments: registered(&r, IntGauge::new("aether_wal_segments", "WAL segments on disk").unwrap()),
            wal_seal_after: registered(
                &r,
                Gauge::new("aether_wal_seal_after_seconds", "Most time a WAL segment with data stays open (0: off)")
                    .unwrap(),
            ),
            ledger_backlog_bytes: registered(
                &r,
                IntGauge::new("aether_ledger_backlog_bytes", "WAL bytes not yet confirmed in object storage").unwrap(),
            ),
            ledger_backlog_segments: registered(
                &r,
                IntGauge::new("aether_ledger_backlog_segments", "WAL segments not yet confirmed in object storage")
                    .unwrap(),
            ),
            ledger_lag: registered(
                &r,
                Gauge::new(
                    "aether_ledger_lag_seconds",
                    "Age of the oldest sealed WAL segment not yet in object storage",
                )
                .unwrap(),
            ),
            ledger_backlog_full: registered(
                &r,
                IntGauge::new("aether_ledger_backlog_full", "1 while the ledger backlog is over its bound").unwrap(),
            ),
            snapshots: registered(&r, IntCounter::new("aether_snapshots_total", "Snapshots written").unwrap()),
            snapshot_duration: registered(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("aether_snapshot_duration_seconds", "Time to write one snapshot")
                        .buckets(exponential_buckets(1e-3, 2.0, 16).expect("valid buckets")),
                )
                .unwrap(),
            ),
            spaces: registered(&r, IntGauge::new("aether_spaces", "Spaces held in memory").unwrap()),
            mesh_ops: registered(
                &r,
                IntCounterVec::new(Opts::new("aether_mesh_ops_total", "Ops applied from the mesh"), &["source"])
                    .unwrap(),
            ),
            anti_entropy: registered(
                &r,
                IntCounterVec::new(
                    Opts::new("aether_anti_entropy_total", "Anti-entropy passes and failed sessions"),
                    &["result"],
                )
                .unwrap(),
            ),
            anti_entropy_ops: registered(
                &r,
                IntCounterVec::new(
                    Opts::new("aether_anti_entropy_ops_total", "Ops moved by anti-entropy"),
                    &["direction"],
                )
                .unwrap(),
            ),
            shards_owned: registered(&r, IntGauge::new("aether_shards_owned", "Shards this relay owns").unwrap()),
            members: registered(&r, IntGauge::new("aether_mesh_members", "Members in the current view").unwrap()),
            shards_held: registered(
                &r,
                IntGauge::new("aether_shards_held", "Shards with data here that this relay no longer owns").unwrap(),
            ),
            handoff_pending: registered(
                &r,
                IntGauge::new("aether_handoff_pending_shards", "Held shards some owner still lacks data of").unwrap(),
            ),
            replication_pending: registered(
                &r,
                IntGaugeVec::new(
                    Opts::new("aether_replication_pending_ops", "Ops not yet durable at a peer"),
                    &["peer"],
                )
                .unwrap(),
            ),
            replication_lag: registered(
                &r,
                GaugeVec::new(
                    Opts::new("aether_replication_lag_seconds", "Age of the oldest op not yet durable at a peer"),
                    &["peer"],
                )
                .unwrap(),
            ),
            replication_dropped: registered(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "aether_replication_dropped_ops",
                        "Ops dropped from a full peer queue, left to anti-entropy",
                    ),
                    &["peer"],
                )
                .unwrap(),
            ),
            peer_connected: registered(
                &r,
                IntGaugeVec::new(
                    Opts::new("aether_peer_connected", "1 while the replication stream to a peer is open"),
                    &["peer"],
                )
                .unwrap(),
            ),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
