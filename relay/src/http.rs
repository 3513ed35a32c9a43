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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], ctx.relay.metrics().render()).into_response()
}

/// `GET /`: a small page that syncs a shared note and cursors between tabs.
pub async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}
