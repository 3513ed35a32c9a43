//! WebSocket transport: `GET /v1/ws` with subprotocol `aether.v1.proto`, one
//! binary frame per protobuf message, over TCP or TLS (rustls, ring).

use std::time::Instant;

use aether_proto::client::v1::{ClientFrame, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{
    Channels, ConnEvent, Connection, Dial, DialError, Established, Inbound, MAX_FRAME_BYTES, SessionId, Tasks,
    expect_welcome, hello_frame,
};
use crate::endpoint::Scheme;
use crate::tls::server_name;

/// The binary subprotocol of `/v1/ws`.
pub const SUBPROTOCOL: &str = "aether.v1.proto";

/// Frames written per flush at most (the writer batches what is queued).
const WRITE_BATCH: usize = 256;

pub(super) async fn dial(d: Dial<'_>) -> Result<Established, DialError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| DialError::Failed(format!("{what}: {e}"));
    let url = d.endpoint.ws_url().ok_or_else(|| DialError::Failed("not a WebSocket endpoint".into()))?;
    let tcp = TcpStream::connect(d.endpoint.host_port()).await.map_err(|e| DialError::Failed(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    if d.endpoint.scheme() == Scheme::Wss {
        let name = server_name(d.endpoint.host()).map_err(|e| DialError::Failed(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(d.tls.tcp.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| failed("TLS handshake", &e))?;
        handshake(d, &url, tls).await
    } else {
        handshake(d, &url, tcp).await
    }
}

async fn handshake<S>(d: Dial<'_>, url: &str, stream: S) -> Result<Established, DialError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut request = url.into_client_request().map_err(|e| DialError::Failed(format!("bad URL {url}: {e}")))?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(SUBPROTOCOL));
    let config =
        WebSocketConfig::default().max_message_size(Some(MAX_FRAME_BYTES)).max_frame_size(Some(MAX_FRAME_BYTES));
    let (mut ws, response) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| DialError::Failed(format!("WebSocket handshake: {e}")))?;
    let chosen = response.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok());
    if chosen != Some(SUBPROTOCOL) {
        return Err(DialError::Failed(format!(
            "the relay did not accept subprotocol {SUBPROTOCOL} (got {chosen:?}); does it serve the native protocol?"
        )));
    }

    let started = Instant::now();
    let hello = hello_frame(d.hello).encode_to_vec();
    ws.send(Message::Binary(hello.into())).await.map_err(|e| DialError::Failed(format!("sending hello: {e}")))?;
    let welcome = loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                let frame = ServerFrame::decode(b).map_err(|e| DialError::Failed(format!("bad frame: {e}")))?;
                break expect_welcome(frame)?;
            }
            Some(Ok(Message::Close(c))) => {
                let why = c.map(|c| format!("{} {}", u16::from(c.code), c.reason)).unwrap_or_default();
                return Err(DialError::Failed(format!("closed by the relay before welcome ({why})")));
            }
            Some(Ok(Message::Text(_))) => return Err(DialError::Failed("text frame on the binary protocol".into())),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(DialError::Failed(e.to_string())),
            None => return Err(DialError::Failed("closed by the relay before welcome".into())),
        }
    };
    let rtt = started.elapsed();

    let (sink, stream) = ws.split();
    let (tx, rx) = mpsc::channel(d.send_queue.max(1));
    let mut tasks = Tasks::default();
    tasks.writers.push(tokio::spawn(write_loop(sink, rx)));
    tasks.readers.push(tokio::spawn(read_loop(stream, d.session, d.inbound)));
    Ok(Established { conn: Connection { channels: Channels::Ws(tx), tasks }, welcome, rtt })
}

async fn write_loop<S>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::Receiver<ClientFrame>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(frame) = rx.recv().await {
        if sink.feed(Message::Binary(frame.encode_to_vec().into())).await.is_err() {
            return;
        }
        let mut batched = 1;
        while batched < WRITE_BATCH {
            let Ok(frame) = rx.try_recv() else { break };
            if sink.feed(Message::Binary(frame.encode_to_vec().into())).await.is_err() {
                return;
            }
            batched += 1;
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    // Every sender is gone: the session is over; say goodbye.
    let _ = sink.close().await;
}

async fn read_loop<S>(
    mut stream: futures_util::stream::SplitStream<WebSocketStream<S>>,
    session: SessionId,
    inbound: mpsc::Sender<Inbound>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let reason = loop {
        match stream.next().await {
            Some(Ok(Message::Binary(b))) => match ServerFrame::decode(b) {
                Ok(frame) => {
                    let ev = Inbound { session, event: ConnEvent::Frame(Box::new(frame)) };
                    if inbound.send(ev).await.is_err() {
                        return;
                    }
                }
                Err(e) => break format!("undecodable frame from the relay: {e}"),
            },
            Some(Ok(Message::Close(c))) => {
                break match c {
                    Some(c) => format!("closed by the relay: {} {}", u16::from(c.code), c.reason),
                    None => "closed by the relay".to_string(),
                };
            }
            Some(Ok(Message::Text(_))) => break "text frame on the binary protocol".to_string(),
            Some(Ok(_)) => {}
            Some(Err(e)) => break e.to_string(),
            None => break "connection closed".to_string(),
        }
    };
    let _ = inbound.send(Inbound { session, event: ConnEvent::Closed(reason) }).await;
}
