//! The JSON mapping of the native protocol (subprotocol `aether.v1.json`):
//! proto3 JSON with the `oneof` as the frame's single key, lowerCamelCase
//! names, 64-bit integers as decimal strings, and values / presence states
//! embedded as JSON (see docs/protocol.md). Sans-IO: text in, prost messages
//! out, and back.

use std::fmt::Write as _;

use aether_proto::client::v1 as pb;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Decodes one client frame from its JSON text.
pub fn decode(text: &str) -> Result<pb::ClientFrame, String> {
    use pb::client_frame::Msg;
    let frame: JClient<'_> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let msg = match frame {
        JClient::Hello(h) => Msg::Hello(pb::Hello {
            version: h.version,
            token: h.token,
            actor: h.actor.0,
            client: h.client,
            uid: h.uid.0,
            proof: h.proof.0,
        }),
        JClient::Subscribe(s) => Msg::Subscribe(pb::Subscribe {
            space: s.space,
            epoch: s.epoch.0,
            seq: s.seq.0,
            buckets: s.buckets,
            digests: s.digests.0,
            presence: s.presence,
        }),
        JClient::Unsubscribe(u) => Msg::Unsubscribe(pb::Unsubscribe { space: u.space }),
        JClient::Write(w) => {
            Msg::Write(pb::Write { id: w.id.0, space: w.space, ops: w.ops.into_iter().map(JOp::into_pb).collect() })
        }
        JClient::Presence(p) => Msg::Presence(pb::Presence {
            space: p.space,
            state: p.state.map_or_else(Bytes::new, |s| Bytes::copy_from_slice(s.get().as_bytes())),
        }),
        JClient::Ping(p) => Msg::Ping(pb::Ping { nonce: p.nonce.0 }),
    };
    Ok(pb::ClientFrame { msg: Some(msg) })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
enum JClient<'a> {
    Hello(JHello),
    Subscribe(JSubscribe),
    Unsubscribe(JUnsubscribe),
    #[serde(borrow)]
    Write(JWrite<'a>),
    #[serde(borrow)]
    Presence(JPresence<'a>),
    Ping(JPing),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JHello {
    #[serde(default)]
    version: u32,
    #[serde(default)]
    token: String,
    #[serde(default)]
    actor: U64,
    #[serde(default)]
    client: String,
    #[serde(default)]
    uid: B64Bytes,
    #[serde(default)]
    proof: B64Bytes,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JSubscribe {
    space: String,
    #[serde(default)]
    epoch: B64Bytes,
    #[serde(default)]
    seq: U64,
    #[serde(default)]
    buckets: u32,
    #[serde(default)]
    digests: B64Bytes,
    #[serde(default)]
    presence: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JUnsubscribe {
    space: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JWrite<'a> {
    #[serde(default)]
    id: U64,
    space: String,
    #[serde(borrow, default)]
    ops: Vec<JOp<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JOp<'a> {
    /// Missing or malformed op fields are the op's problem (`bad-op`, not
    /// fatal): they decode to what the op check refuses.
    #[serde(default)]
    key: String,
    /// Present (even `null`) for a set.
    #[serde(borrow, default, deserialize_with = "present")]
    value: Option<&'a RawValue>,
    #[serde(default)]
    delete: bool,
    #[serde(default)]
    stamp: Option<JStamp>,
}

impl JOp<'_> {
    /// A set without a value becomes an empty value, a delete with one keeps
    /// it: both are refused by the op check (`bad-op`).
    fn into_pb(self) -> pb::Op {
        let value = self.value.map_or_else(Bytes::new, |v| Bytes::copy_from_slice(v.get().as_bytes()));
        let stamp = self.stamp.map(|s| pb::Stamp { wall_ns: s.wall_ns.0, counter: s.counter, actor: s.actor.0 });
        pb::Op { key: self.key, value, delete: self.delete, stamp }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JStamp {
    wall_ns: U64,
    #[serde(default)]
    counter: u32,
    actor: U64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JPresence<'a> {
    space: String,
    #[serde(borrow, default, deserialize_with = "present")]
    state: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JPing {
    #[serde(default)]
    nonce: U64,
}

/// A field that is present, `null` included (plain `Option` would read `null` as absent).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A 64-bit integer: a decimal string (numbers are accepted too).
#[derive(Default)]
struct U64(u64);

impl<'de> Deserialize<'de> for U64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<'a> {
            Num(u64),
            Str(#[serde(borrow)] std::borrow::Cow<'a, str>),
        }
        match Either::deserialize(d)? {
            Either::Num(n) => Ok(U64(n)),
            Either::Str(s) => {
                s.parse().map(U64).map_err(|_| de::Error::custom(format!("{s:?} is not a 64-bit unsigned integer")))
            }
        }
    }
}

/// Bytes as base64.
#[derive(Default)]
struct B64Bytes(Bytes);

impl<'de> Deserialize<'de> for B64Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        B64.decode(s.as_bytes()).map(|v| B64Bytes(v.into())).map_err(|e| de::Error::custom(format!("bad base64: {e}")))
    }
}

/// Encodes one server frame as JSON text.
pub fn encode(frame: &pb::ServerFrame) -> String {
    use pb::server_frame::Msg;
    let mut o = String::with_capacity(128);
    match &frame.msg {
        None => o.push_str("{}"),
        Some(Msg::Welcome(w)) => {
            let l = w.limits.unwrap_or_default();
            let _ = write!(
                o,
                r#"{{"welcome":{{"version":{},"relay":{},"nowNs":"{}","maxSkewNs":"{}","session":{},"color":{},"limits":{{"maxFrameBytes":{},"maxOpsPerWrite":{},"maxKeyBytes":{},"maxValueBytes":{},"maxSpaces":{},"opsPerSec":{},"burst":{}}}}}}}"#,
                w.version,
                q(&w.relay),
                w.now_ns,
                w.max_skew_ns,
                q(&w.session),
                q(&w.color),
                l.max_frame_bytes,
                l.max_ops_per_write,
                l.max_key_bytes,
                l.max_value_bytes,
                l.max_spaces,
                // A positive, finite rate (`parse_rate`): JSON has no NaN or infinity to fear.
                l.ops_per_sec,
                l.burst
            );
        }
        Some(Msg::Catchup(c)) => {
            let kind = match pb::catchup::Kind::try_from(c.kind) {
                Ok(pb::catchup::Kind::Delta) => "DELTA",
                Ok(pb::catchup::Kind::Buckets) => "BUCKETS",
                _ => "FULL",
            };
            let _ = write!(o, r#"{{"catchup":{{"space":{},"kind":"{kind}","ops":"#, q(&c.space));
            ops(&mut o, &c.ops);
            if c.done {
                let _ = write!(
                    o,
                    r#","done":true,"epoch":"{}","seq":"{}","total":"{}""#,
                    B64.encode(&c.epoch),
                    c.seq,
                    c.total
                );
            }
            o.push_str("}}");
        }
        Some(Msg::Changes(c)) => {
            let _ = write!(o, r#"{{"changes":{{"space":{},"ops":"#, q(&c.space));
            ops(&mut o, &c.ops);
            let _ = write!(o, r#","seq":"{}"}}}}"#, c.seq);
        }
        Some(Msg::Ack(a)) => {
            let _ = write!(o, r#"{{"ack":{{"id":"{}"}}}}"#, a.id);
        }
        Some(Msg::Superseded(s)) => {
            let _ =
                write!(o, r#"{{"superseded":{{"id":"{}","space":{},"key":{},"yours":"#, s.id, q(&s.space), q(&s.key));
            stamp(&mut o, s.yours.as_ref());
            o.push_str(r#","winner":"#);
            match &s.winner {
                Some(w) => op(&mut o, w),
                None => o.push_str("null"),
            }
            o.push_str("}}");
        }
        Some(Msg::Presence(p)) => {
            let _ = write!(
                o,
                r#"{{"presence":{{"space":{},"session":{},"color":{}"#,
                q(&p.space),
                q(&p.session),
                q(&p.color)
            );
            if !p.state.is_empty() {
                o.push_str(r#","state":"#);
                o.push_str(std::str::from_utf8(&p.state).unwrap_or("null"));
            }
            o.push_str("}}");
        }
        Some(Msg::Error(e)) => {
            let _ = write!(
                o,
                r#"{{"error":{{"id":"{}","space":{},"code":{},"message":{},"fatal":{}}}}}"#,
                e.id,
                q(&e.space),
                q(&e.code),
                q(&e.message),
                e.fatal
            );
        }
        Some(Msg::Pong(p)) => {
            let _ = write!(o, r#"{{"pong":{{"nonce":"{}","nowNs":"{}"}}}}"#, p.nonce, p.now_ns);
        }
    }
    o
}

fn q(s: &str) -> String {
    #[derive(Serialize)]
    struct S<'a>(&'a str);
    serde_json::to_string(&S(s)).unwrap_or_else(|_| "\"\"".to_owned())
}

fn ops(o: &mut String, ops: &[pb::Op]) {
    o.push('[');
    for (i, x) in ops.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        op(o, x);
    }
    o.push(']');
}

fn op(o: &mut String, x: &pb::Op) {
    let _ = write!(o, r#"{{"key":{}"#, q(&x.key));
    if x.delete {
        o.push_str(r#","delete":true"#);
    } else {
        // Values were checked to be JSON text before they were stored.
        o.push_str(r#","value":"#);
        o.push_str(std::str::from_utf8(&x.value).unwrap_or("null"));
    }
    o.push_str(r#","stamp":"#);
    stamp(o, x.stamp.as_ref());
    o.push('}');
}

fn stamp(o: &mut String, s: Option<&pb::Stamp>) {
    let s = s.copied().unwrap_or_default();
    let _ = write!(o, r#"{{"wallNs":"{}","counter":{},"actor":"{}"}}"#, s.wall_ns, s.counter, s.actor);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::client_frame::Msg;

    #[test]
    fn a_write_decodes_with_embedded_values_and_string_integers() {
        let f = decode(
            r#"{"write":{"id":"7","space":"b","ops":[{"key":"k","value":{"a":[1,null]},"stamp":{"wallNs":"18446744073709551615","counter":2,"actor":"9223372036854775809"}},{"key":"n","value":null,"stamp":{"wallNs":1,"actor":"1"}},{"key":"d","delete":true,"stamp":{"wallNs":"1","actor":"1"}}]}}"#,
        )
        .unwrap();
        let Some(Msg::Write(w)) = f.msg else { panic!("not a write") };
        assert_eq!(w.id, 7);
        assert_eq!(&w.ops[0].value[..], br#"{"a":[1,null]}"#);
        assert_eq!(w.ops[0].stamp.unwrap(), pb::Stamp { wall_ns: u64::MAX, counter: 2, actor: (1 << 63) | 1 });
        assert_eq!(&w.ops[1].value[..], b"null", "a null value is a set of null");
        assert!(!w.ops[1].delete);
        assert!(w.ops[2].delete && w.ops[2].value.is_empty());
    }

    #[test]
    fn malformed_frames_are_refused_with_a_reason() {
        for bad in [
            r#"{"hello":{"version":1,"extra":true}}"#,
            r#"{"hello":{"actor":"-1"}}"#,
            r#"{"subscribe":{"space":"s","epoch":"!!"}}"#,
            r#"{"nope":{}}"#,
            r#"{"hello":{},"ping":{}}"#,
            r#"[1]"#,
            "",
        ] {
            assert!(decode(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn op_mistakes_decode_to_ops_the_op_check_refuses_and_escapes_are_read() {
        let f = decode(
            r#"{"write":{"id":"4\u0032","space":"b","ops":[{"key":"k"},{"key":"d","delete":true,"value":1},{"value":2}]}}"#,
        )
        .unwrap();
        let Some(Msg::Write(w)) = f.msg else { panic!("not a write") };
        assert_eq!(w.id, 42, "an escaped digit is still a digit");
        assert!(!w.ops[0].delete && w.ops[0].value.is_empty(), "a set without a value: empty, not JSON");
        assert!(w.ops[1].delete && &w.ops[1].value[..] == b"1", "a delete with a value keeps it");
        assert!(w.ops[2].key.is_empty());
        let s = decode(r#"{"subscribe":{"space":"s","epoch":"AQI\u003d"}}"#).unwrap();
        let Some(Msg::Subscribe(s)) = s.msg else { panic!("not a subscribe") };
        assert_eq!(&s.epoch[..], &[1, 2]);
    }

    #[test]
    fn server_frames_encode_as_parseable_json() {
        use pb::server_frame::Msg as S;
        let op = pb::Op {
            key: "k\"".into(),
            value: Bytes::from_static(br#"{"x":1}"#),
            delete: false,
            stamp: Some(pb::Stamp { wall_ns: u64::MAX, counter: 1, actor: 2 }),
        };
        let del = pb::Op { key: "d".into(), value: Bytes::new(), delete: true, stamp: None };
        let frames = [
            S::Changes(pb::Changes { space: "s".into(), ops: vec![op.clone(), del], seq: 9 }),
            S::Catchup(pb::Catchup {
                space: "s".into(),
                kind: 1,
                ops: vec![op.clone()],
                done: true,
                epoch: Bytes::from_static(&[1, 2]),
                seq: 3,
                total: 1,
            }),
            S::Superseded(pb::Superseded {
                id: 4,
                space: "s".into(),
                key: "k".into(),
                yours: op.stamp,
                winner: Some(op),
            }),
            S::Error(pb::Error {
                id: 1,
                space: String::new(),
                code: "bad-op".into(),
                message: "x\n".into(),
                fatal: false,
            }),
        ];
        let texts: Vec<serde_json::Value> = frames
            .into_iter()
            .map(|m| serde_json::from_str(&encode(&pb::ServerFrame { msg: Some(m) })).unwrap())
            .collect();
        assert_eq!(texts[0]["changes"]["ops"][0]["value"]["x"], 1);
        assert_eq!(texts[0]["changes"]["ops"][0]["stamp"]["wallNs"], "18446744073709551615");
        assert_eq!(texts[0]["changes"]["ops"][1]["delete"], true);
        assert_eq!(texts[0]["changes"]["seq"], "9");
        assert_eq!(texts[1]["catchup"]["kind"], "DELTA");
        assert_eq!(texts[1]["catchup"]["epoch"], "AQI=");
        assert_eq!(texts[2]["superseded"]["winner"]["key"], "k\"");
        assert_eq!(texts[3]["error"]["message"], "x\n");
    }
}
