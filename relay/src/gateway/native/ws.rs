//! `GET /v1/ws`: the native protocol over WebSocket. Subprotocol
//! `aether.v1.proto` carries protobuf frames (binary), `aether.v1.json` (or
//! none) their JSON mapping (text).

use std::net::SocketAddr;
use std::sync::Arc;

use aether_proto::client::v1 as pb;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite;

use super::channel::Channel;
use super::{Fatal, Inbound, Out, accept_hello, first_frame, json};
use crate::gateway::GatewayCtx;
use crate::gateway::ws_json::{CLOSE_GRACE, READ_BUFFER_BYTES, close, close_label};
use crate::limits::client_ip;

/// Subprotocol of the protobuf encoding.
pub const PROTO: &str = "aether.v1.proto";
/// Subprotocol of the JSON mapping.
pub const JSON: &str = "aether.v1.json";
/// Frames decoded ahead of the channel.
const INBOUND_QUEUE: usize = 16;

/// `GET /v1/ws`: upgrades to the native protocol.
pub async fn handler(
    State(ctx): State<Arc<GatewayCtx>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !ctx.relay.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "relay is not ready").into_response();
    }
    let offered = headers.contains_key("sec-websocket-protocol");
    let ws = ws.protocols([PROTO, JSON]);
    let json = match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(PROTO) => false,
        Some(_) => true,
        None if !offered => true,
        None => {
            let msg = format!("unknown subprotocol; offer {PROTO} or {JSON}");
            return (StatusCode::BAD_REQUEST, msg).into_response();
        }
    };
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let ip = client_ip(peer.ip(), forwarded, &ctx.limits.trusted_proxies);
    let slot = ctx.caps.acquire(ip);
    let limit = ctx.limits.limit_frame_bytes;
    ws.max_frame_size(limit).max_message_size(limit).read_buffer_size(READ_BUFFER_BYTES).on_upgrade(
        move |socket| async move {
            let (sink, stream) = socket.split();
            let mut out = Out::Ws { sink, json };
            let metrics = ctx.relay.metrics().clone();
            let _slot = match slot {
                Ok(slot) => slot,
                Err(cap) => {
                    let (reason, label) = cap.reason_and_label();
                    metrics.disconnects.with_label_values(&[label]).inc();
                    out.close(close::TRY_AGAIN_LATER, reason).await;
                    return;
                }
            };
            let (tx, mut inbound) = mpsc::channel(INBOUND_QUEUE);
            let mut reader = tokio::spawn(read(stream, json, tx));
            metrics.connections.inc();
            let end = serve(&ctx, &mut inbound, &mut out).await;
            metrics.connections.dec();
            drop(inbound);
            if let Some((code, reason)) = end {
                metrics.disconnects.with_label_values(&[close_label(code)]).inc();
                out.close(code, reason).await;
                // The reader ends when the peer answers the close (so the frame is not lost to a reset).
                let _ = tokio::time::timeout(CLOSE_GRACE, &mut reader).await;
            }
            reader.abort();
        },
    )
}

/// Hello, then the channel.
async fn serve(ctx: &Arc<GatewayCtx>, inbound: &mut mpsc::Receiver<Inbound>, out: &mut Out) -> super::End {
    let first = match tokio::time::timeout(ctx.auth_timeout, first_frame(inbound)).await {
        Err(_) => Err(Fatal::new("hello-required", "no hello in time", close::POLICY)),
        Ok(None) => return None,
        Ok(Some(r)) => r,
    };
    let accepted = first.and_then(|frame| accept_hello(ctx, frame, true));
    let (id, welcome) = match accepted {
        Ok(a) => a,
        Err(f) if f.code.is_empty() => return None,
        Err(f) => {
            ctx.relay.metrics().errors.with_label_values(&[f.code]).inc();
            let _ = super::send_all(out, &[super::error_frame(0, "", f.code, &f.message, true)], CLOSE_GRACE).await;
            return Some((f.close, f.code));
        }
    };
    if super::send_all(out, &[welcome], ctx.limits.idle_timeout).await.is_err() {
        return None;
    }
    Channel::new(ctx.clone(), id).run(inbound, out).await
}

/// Decodes frames from the socket until it ends or sends something unacceptable.
async fn read(mut stream: SplitStream<WebSocket>, json: bool, tx: mpsc::Sender<Inbound>) {
    while let Some(msg) = stream.next().await {
        let item = match msg {
            Err(e) => Inbound::Fatal(read_error(e)),
            Ok(Message::Close(_)) => return,
            Ok(Message::Ping(_) | Message::Pong(_)) => Inbound::Alive,
            Ok(Message::Binary(b)) if !json => match pb::ClientFrame::decode(b) {
                Ok(f) => Inbound::Frame(f),
                Err(e) => Inbound::Fatal(Fatal::new("bad-frame", format!("undecodable frame: {e}"), close::POLICY)),
            },
            Ok(Message::Text(t)) if json => match json::decode(&t) {
                Ok(f) => Inbound::Frame(f),
                Err(e) => Inbound::Fatal(Fatal::new("bad-frame", format!("undecodable frame: {e}"), close::POLICY)),
            },
            Ok(_) => {
                let msg = if json { "binary frame on aether.v1.json" } else { "text frame on aether.v1.proto" };
                Inbound::Fatal(Fatal::new("bad-frame", msg, close::POLICY))
            }
        };
        let fatal = matches!(item, Inbound::Fatal(_));
        if tx.send(item).await.is_err() || fatal {
            return;
        }
    }
}

fn read_error(e: axum::Error) -> Fatal {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Fatal::new("bad-frame", "frame too large", close::TOO_BIG),
        Some(tungstenite::Error::Utf8(_)) => Fatal::new("bad-frame", "invalid UTF-8", close::INVALID_DATA),
        Some(tungstenite::Error::Protocol(_)) => Fatal::new("bad-frame", "WebSocket protocol error", close::POLICY),
        _ => Fatal::gone(),
    }
}
