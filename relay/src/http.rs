//! Plain HTTP endpoints: health, readiness, metrics and the dev landing page.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use crate::gateway::GatewayCtx;

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 while the relay accepts clients, 503 when shutting down
/// or when the WAL has failed.
pub async fn readyz(State(ctx): State<Arc<GatewayCtx>>) -> Response {
    if ctx.relay.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(ctx): State<Arc<GatewayCtx>>) -> Response {
    if let Some(mesh) = ctx.relay.mesh() {
        let m = ctx.relay.metrics();
        for p in mesh.peer_status() {
            m.replication_pending.with_label_values(&[&p.name]).set(p.pending_ops as i64);
            m.replication_lag.with_label_values(&[&p.name]).set(p.lag_seconds);
            m.replication_dropped.with_label_values(&[&p.name]).set(p.dropped_ops as i64);
            m.peer_connected.with_label_values(&[&p.name]).set(i64::from(p.connected));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], ctx.relay.metrics().render()).into_response()
}

/// `GET /`: a small page that syncs a shared note and cursors between tabs.
pub async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

/// `GET /v1/admin/shards`: membership, the owner of every shard, this
/// relay's shards, and replication state per peer, as JSON.
pub async fn admin_shards(State(ctx): State<Arc<GatewayCtx>>) -> Response {
    let Some(mesh) = ctx.relay.mesh() else {
        return (StatusCode::NOT_FOUND, "not in a mesh (dev mode)\n").into_response();
    };
    let v = mesh.view();
    let table: Vec<serde_json::Value> =
        (0..v.shards).map(|s| serde_json::json!({ "shard": s, "owners": v.owners(s).collect::<Vec<_>>() })).collect();
    let handoff =
        mesh.handoff().map(|(held, pending)| serde_json::json!({ "held_shards": held, "pending_shards": pending }));
    axum::Json(serde_json::json!({
        "member": v.me,
        "in_membership": v.is_member(),
        "handoff": handoff,
        "shards": v.shards,
        "replication": v.replication,
        "write_quorum": mesh.write_quorum,
        "members": v.members,
        "owned": v.owned(),
        "peers": mesh.peer_status(),
        "edge_spaces": mesh.edge_spaces().iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "table": table,
    }))
    .into_response()
}

/// `GET /v1/admin/spaces`: every space this relay holds, with its shard,
/// role (`owner`, `held`: logged but no longer owned, `edge`: cache) and
/// digest, so replicas can be compared.
pub async fn admin_spaces(State(ctx): State<Arc<GatewayCtx>>) -> Response {
    let view = ctx.relay.mesh().map(|m| m.view());
    let spaces: Vec<serde_json::Value> = ctx
        .relay
        .hubs()
        .iter()
        .map(|h| {
            let (digest, entries) = {
                let inner = h.lock();
                (inner.space.digest(), inner.space.len())
            };
            let shard = view.as_ref().map(|v| v.shard_of(h.name()));
            let role = match (&view, shard) {
                _ if h.is_cache() => "edge",
                (Some(v), Some(s)) if !v.is_owner(s) => "held",
                _ => "owner",
            };
            let hex: String = digest.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
            serde_json::json!({ "space": h.name().to_string(), "shard": shard, "role": role, "entries": entries, "digest": hex })
        })
        .collect();
    axum::Json(serde_json::json!({ "spaces": spaces })).into_response()
}
