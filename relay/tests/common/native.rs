//! A native-protocol client for tests: `/v1/ws` in either encoding (include
//! it next to the kit: `#[path = "common/native.rs"] mod native;`). Frames
//! can be sent and read as JSON text (the JSON mapping; translated with the
//! relay's own codec on the protobuf encoding) or as prost messages.

#![allow(dead_code)]

use std::net::SocketAddr;

use aether_proto::client::v1 as pb;
use aether_relay::gateway::native::json;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::DEADLINE;

/// The top bit marks client actors.
pub const CLIENT: u64 = 1 << 63;

/// A `/v1/ws` connection.
pub struct Native {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// JSON mapping (`aether.v1.json`) rather than protobuf.
    pub json: bool,
}

/// What ended a read: a frame, a close, or the socket going away.
#[derive(Debug)]
pub enum NativeEvent {
    Frame(pb::ServerFrame),
    Close(u16),
    Gone,
}

impl Native {
    /// Connects to `ws://addr/v1/ws` offering one subprotocol.
    pub async fn connect(addr: SocketAddr, json: bool) -> Native {
        let mut req = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
        let proto = if json { "aether.v1.json" } else { "aether.v1.proto" };
        req.headers_mut().insert("sec-websocket-protocol", proto.parse().unwrap());
        let (ws, resp) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect timeout")
            .expect("connect");
        assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), proto);
        Native { ws, json }
    }

    /// Connects and says hello as `actor`; returns the welcome.
    pub async fn hello(addr: SocketAddr, json: bool, actor: u64, token: &str) -> (Native, pb::Welcome) {
        let mut c = Native::connect(addr, json).await;
        let hello = pb::Hello { version: 1, token: token.into(), actor, ..Default::default() };
        c.send(pb::client_frame::Msg::Hello(hello)).await;
        match c.recv().await {
            pb::server_frame::Msg::Welcome(w) => (c, w),
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    /// Sends a frame (encoded as this connection negotiated).
    pub async fn send(&mut self, msg: pb::client_frame::Msg) {
        let frame = pb::ClientFrame { msg: Some(msg) };
        let m = if self.json { Message::text(client_json(&frame)) } else { Message::binary(frame.encode_to_vec()) };
        self.ws.send(m).await.expect("send");
    }

    /// Sends a frame given as JSON-mapping text.
    pub async fn send_json(&mut self, text: &str) {
        let m = if self.json {
            Message::text(text.to_owned())
        } else {
            let frame = json::decode(text).unwrap_or_else(|e| panic!("bad frame {text}: {e}"));
            Message::binary(frame.encode_to_vec())
        };
        self.ws.send(m).await.expect("send");
    }

    /// The next frame, close or EOF, within [`DEADLINE`].
    pub async fn next_event(&mut self) -> NativeEvent {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let msg = tokio::time::timeout_at(until, self.ws.next()).await.expect("no frame before the deadline");
            return match msg {
                Some(Ok(Message::Binary(b))) if !self.json => {
                    NativeEvent::Frame(pb::ServerFrame::decode(b).expect("relay sent a protobuf frame"))
                }
                Some(Ok(Message::Text(t))) if self.json => NativeEvent::Frame(server_from_json(&t)),
                Some(Ok(Message::Close(c))) => NativeEvent::Close(c.map_or(1005, |c| c.code.into())),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(other)) => panic!("frame of the wrong kind: {other:?}"),
                Some(Err(_)) | None => NativeEvent::Gone,
            };
        }
    }

    /// The next frame; panics on close.
    pub async fn recv(&mut self) -> pb::server_frame::Msg {
        match self.next_event().await {
            NativeEvent::Frame(f) => f.msg.expect("empty frame"),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame as JSON-mapping text, parsed.
    pub async fn recv_json(&mut self) -> Value {
        if self.json {
            let until = tokio::time::Instant::now() + DEADLINE;
            loop {
                let msg = tokio::time::timeout_at(until, self.ws.next()).await.expect("no frame before the deadline");
                match msg {
                    Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("relay sent JSON"),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("expected a JSON frame, got {other:?}"),
                }
            }
        }
        let frame = pb::ServerFrame { msg: Some(self.recv().await) };
        serde_json::from_str(&json::encode(&frame)).expect("the mapping is JSON")
    }

    /// Subscribes (from scratch) and reads the whole catchup; returns its ops and final chunk.
    pub async fn subscribe(&mut self, sub: pb::Subscribe) -> (Vec<pb::Op>, pb::Catchup) {
        self.send(pb::client_frame::Msg::Subscribe(sub)).await;
        self.catchup().await
    }

    /// Reads catchup chunks until the last; returns every op and the last chunk.
    pub async fn catchup(&mut self) -> (Vec<pb::Op>, pb::Catchup) {
        let mut ops = Vec::new();
        loop {
            match self.recv().await {
                pb::server_frame::Msg::Catchup(mut c) => {
                    ops.append(&mut c.ops);
                    if c.done {
                        return (ops, c);
                    }
                }
                other => panic!("expected a catchup chunk, got {other:?}"),
            }
        }
    }
}

/// A client frame in the JSON mapping (for the typed API on a JSON connection).
fn client_json(frame: &pb::ClientFrame) -> String {
    use pb::client_frame::Msg;
    let s = |s: &pb::Stamp| serde_json::json!({"wallNs": s.wall_ns.to_string(), "counter": s.counter, "actor": s.actor.to_string()});
    let v = match frame.msg.as_ref().expect("a frame") {
        Msg::Hello(h) => {
            serde_json::json!({"hello": {"version": h.version, "token": h.token, "actor": h.actor.to_string()}})
        }
        Msg::Subscribe(x) => {
            use base64::Engine as _;
            let b = &base64::engine::general_purpose::STANDARD;
            serde_json::json!({"subscribe": {"space": x.space, "epoch": b.encode(&x.epoch), "seq": x.seq.to_string(),
                "buckets": x.buckets, "digests": b.encode(&x.digests), "presence": x.presence}})
        }
        Msg::Unsubscribe(u) => serde_json::json!({"unsubscribe": {"space": u.space}}),
        Msg::Write(w) => {
            let ops: Vec<Value> = w
                .ops
                .iter()
                .map(|o| {
                    let mut op = serde_json::json!({"key": o.key, "stamp": o.stamp.as_ref().map(s)});
                    if o.delete {
                        op["delete"] = true.into();
                    } else {
                        op["value"] = serde_json::from_slice(&o.value).expect("values are JSON");
                    }
                    op
                })
                .collect();
            serde_json::json!({"write": {"id": w.id.to_string(), "space": w.space, "ops": ops}})
        }
        Msg::Presence(p) => {
            let state: Value = if p.state.is_empty() { Value::Null } else { serde_json::from_slice(&p.state).unwrap() };
            serde_json::json!({"presence": {"space": p.space, "state": state}})
        }
        Msg::Ping(p) => serde_json::json!({"ping": {"nonce": p.nonce.to_string()}}),
    };
    v.to_string()
}

/// Reads a server frame from the JSON mapping back into prost (tests only:
/// the relay never decodes server frames).
fn server_from_json(text: &str) -> pb::ServerFrame {
    use pb::server_frame::Msg;
    let v: Value = serde_json::from_str(text).expect("relay sent JSON");
    let (kind, body) = v.as_object().and_then(|o| o.iter().next()).expect("one key");
    let u = |v: &Value| v.as_str().map_or(0, |s| s.parse::<u64>().expect("decimal string"));
    let st = |v: &Value| pb::Stamp {
        wall_ns: u(&v["wallNs"]),
        counter: v["counter"].as_u64().unwrap_or(0) as u32,
        actor: u(&v["actor"]),
    };
    let op = |v: &Value| pb::Op {
        key: v["key"].as_str().unwrap().to_owned(),
        delete: v["delete"].as_bool().unwrap_or(false),
        value: v.get("value").map(|x| x.to_string().into()).unwrap_or_default(),
        stamp: Some(st(&v["stamp"])),
    };
    let ops = |v: &Value| v.as_array().map(|a| a.iter().map(op).collect()).unwrap_or_default();
    let b64 = |v: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or("")).unwrap().into()
    };
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let msg = match kind.as_str() {
        "welcome" => Msg::Welcome(pb::Welcome {
            version: body["version"].as_u64().unwrap() as u32,
            relay: s(&body["relay"]),
            now_ns: u(&body["nowNs"]),
            max_skew_ns: u(&body["maxSkewNs"]),
            session: s(&body["session"]),
            color: s(&body["color"]),
            limits: None,
        }),
        "catchup" => Msg::Catchup(pb::Catchup {
            space: s(&body["space"]),
            kind: match body["kind"].as_str() {
                Some("DELTA") => 1,
                Some("BUCKETS") => 2,
                _ => 0,
            },
            ops: ops(&body["ops"]),
            done: body["done"].as_bool().unwrap_or(false),
            epoch: b64(&body["epoch"]),
            seq: u(&body["seq"]),
            total: u(&body["total"]),
        }),
        "changes" => {
            Msg::Changes(pb::Changes { space: s(&body["space"]), ops: ops(&body["ops"]), seq: u(&body["seq"]) })
        }
        "ack" => Msg::Ack(pb::Ack { id: u(&body["id"]) }),
        "superseded" => Msg::Superseded(pb::Superseded {
            id: u(&body["id"]),
            space: s(&body["space"]),
            key: s(&body["key"]),
            yours: Some(st(&body["yours"])),
            winner: Some(op(&body["winner"])),
        }),
        "presence" => Msg::Presence(pb::PresenceEvent {
            space: s(&body["space"]),
            session: s(&body["session"]),
            color: s(&body["color"]),
            state: body.get("state").map(|x| x.to_string().into()).unwrap_or_default(),
        }),
        "error" => Msg::Error(pb::Error {
            id: u(&body["id"]),
            space: s(&body["space"]),
            code: s(&body["code"]),
            message: s(&body["message"]),
            fatal: body["fatal"].as_bool().unwrap_or(false),
        }),
        "pong" => Msg::Pong(pb::Pong { nonce: u(&body["nonce"]), now_ns: u(&body["nowNs"]) }),
        other => panic!("unknown server frame {other}"),
    };
    pb::ServerFrame { msg: Some(msg) }
}

/// A set of `key` to the JSON text `value` stamped (wall_ns, 0, actor).
pub fn set(key: &str, value: &str, wall_ns: u64, actor: u64) -> pb::Op {
    pb::Op {
        key: key.into(),
        value: value.as_bytes().to_vec().into(),
        delete: false,
        stamp: Some(pb::Stamp { wall_ns, counter: 0, actor }),
    }
}

/// A write frame.
pub fn write(id: u64, space: &str, ops: Vec<pb::Op>) -> pb::client_frame::Msg {
    pb::client_frame::Msg::Write(pb::Write { id, space: space.into(), ops })
}
