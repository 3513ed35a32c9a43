//! Plain HTTP endpoints: health, readiness, metrics, admin views.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::gateway::GatewayCtx;

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 while the relay accepts clients, 503 when shutting down,
/// when the WAL has failed, or while the ledger backlog is over its bound
/// (writes are refused then). With a ledger sidecar, a 200 body says
/// `degraded` when a sealed segment has waited for the store for over a minute.
pub async fn readyz(State(ctx): State<Arc<GatewayCtx>>) -> Response {
    let wal = ctx.relay.wal();
    if !ctx.relay.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response();
    }
    let Some(b) = wal.ledger_backlog() else { return (StatusCode::OK, "ready\n").into_response() };
    let detail = format!(
        "ledger backlog {} bytes in {} segments, oldest sealed segment waiting {:.0}s",
        b.bytes,
        b.segments,
        b.oldest_sealed.as_secs_f64()
    );
    if wal.is_backlog_full() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {detail} (over --ledger-backlog-max-bytes)\n"))
            .into_response()
    } else if b.oldest_sealed >= LEDGER_DEGRADED_AFTER {
        (StatusCode::OK, format!("ready, degraded: {detail}\n")).into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

/// A sealed segment waiting longer than this for object storage marks `/readyz` degraded.
const LEDGER_DEGRADED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

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

/// `GET /v1/spaces`: the spaces this relay holds in memory, for clients (the
/// CLI's `spaces`), with `Authorization: Bearer TOKEN` when the relay has a
/// client token.
pub async fn spaces(State(ctx): State<Arc<GatewayCtx>>, headers: axum::http::HeaderMap) -> Response {
    if ctx.auth_token.is_some() {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !ctx.token_ok(given) {
            let body = axum::Json(serde_json::json!({ "error": "auth failed: send Authorization: Bearer TOKEN" }));
            return (StatusCode::UNAUTHORIZED, body).into_response();
        }
    }
    let spaces: Vec<serde_json::Value> = ctx
        .relay
        .hubs()
        .iter()
        .map(|h| {
            let (entries, live) = {
                let inner = h.lock();
                (inner.space.len(), inner.space.live_len())
            };
            serde_json::json!({ "name": h.name().to_string(), "entries": entries, "live": live })
        })
        .collect();
    axum::Json(serde_json::json!({ "spaces": spaces })).into_response()
}
