//! The browser JSON protocol (Aether-Core compatible): parsing client messages
//! and encoding relay messages. Pure functions; the socket lives in `ws_json`.
//!
//! Values are kept as the exact JSON text the client sent (validated by
//! serde_json), so the relay never re-serializes them.

use axum::extract::ws::Utf8Bytes;
use serde::Deserialize;
use serde::de::Deserializer;
use serde_json::value::RawValue;

/// A parsed client message.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMsg<'a> {
    /// `{"type":"set","key":K,"value":V}`; `value` is JSON text (may be `null`).
    Set {
        /// The key.
        key: &'a str,
        /// The value's JSON text.
        value: &'a str,
    },
    /// `{"type":"delete","key":K}`.
    Delete {
        /// The key.
        key: &'a str,
    },
    /// `{"type":"presence","x":int,"y":int}`.
    Presence {
        /// Cursor x.
        x: i64,
        /// Cursor y.
        y: i64,
    },
    /// `{"type":"auth","token":T}`.
    Auth {
        /// The token.
        token: String,
    },
}

/// Why a client message was rejected: a stable `code` and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Stable machine-readable code (see docs/protocol.md).
    pub code: &'static str,
    /// Human-readable detail.
    pub message: String,
}

impl Reject {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// Size limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct WireLimits {
    /// Largest message (bytes of JSON text).
    pub message_bytes: usize,
    /// Largest key (UTF-8 bytes).
    pub key_bytes: usize,
    /// Largest value (bytes of its JSON text).
    pub value_bytes: usize,
}

/// Distinguishes a present `null` from an absent field.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    key: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    value: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    x: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    y: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    token: Option<&'a RawValue>,
}

fn string_field<'a>(raw: Option<&'a RawValue>, name: &str) -> Result<std::borrow::Cow<'a, str>, Reject> {
    let raw = raw.ok_or_else(|| Reject::new("missing-field", format!("field {name:?} is required")))?;
    // Borrow when the string has no escapes; decode into a new String otherwise.
    if let Ok(s) = serde_json::from_str::<&'a str>(raw.get()) {
        return Ok(std::borrow::Cow::Borrowed(s));
    }
    serde_json::from_str::<String>(raw.get())
        .map(std::borrow::Cow::Owned)
        .map_err(|_| Reject::new("invalid-field", format!("field {name:?} must be a string")))
}

fn int_field(raw: Option<&RawValue>, name: &str) -> Result<i64, Reject> {
    let raw = raw.ok_or_else(|| Reject::new("missing-field", format!("field {name:?} is required")))?;
    serde_json::from_str::<i64>(raw.get())
        .map_err(|_| Reject::new("invalid-field", format!("field {name:?} must be an integer")))
}

/// Parses one text message from a client.
///
/// Keys are borrowed from `text` when they contain no JSON escapes and are
/// decoded into `scratch` otherwise.
pub fn parse<'a>(text: &'a str, limits: &WireLimits, scratch: &'a mut String) -> Result<ClientMsg<'a>, Reject> {
    if text.len() > limits.message_bytes {
        return Err(Reject::new(
            "message-too-large",
            format!("message of {} bytes exceeds the limit of {} bytes", text.len(), limits.message_bytes),
        ));
    }
    // serde would also read a struct from a JSON array; the protocol only has objects.
    if !text.trim_start().starts_with('{') {
        return Err(Reject::new("invalid-json", "a message must be a JSON object"));
    }
    let env: Envelope<'a> =
        serde_json::from_str(text).map_err(|e| Reject::new("invalid-json", format!("not a JSON object: {e}")))?;
    let kind = string_field(env.kind, "type")?;
    let key = |scratch: &'a mut String| -> Result<&'a str, Reject> {
        let key = string_field(env.key, "key")?;
        if key.len() > limits.key_bytes {
            return Err(Reject::new(
                "key-too-large",
                format!("key of {} bytes exceeds the limit of {} bytes", key.len(), limits.key_bytes),
            ));
        }
        Ok(match key {
            std::borrow::Cow::Borrowed(k) => k,
            std::borrow::Cow::Owned(k) => {
                *scratch = k;
                scratch.as_str()
            }
        })
    };
    match &*kind {
        "set" => {
            let key = key(scratch)?;
            let value = env.value.ok_or_else(|| Reject::new("missing-field", "field \"value\" is required"))?;
            let value = value.get();
            if value.len() > limits.value_bytes {
                return Err(Reject::new(
                    "value-too-large",
                    format!("value of {} bytes exceeds the limit of {} bytes", value.len(), limits.value_bytes),
                ));
            }
            Ok(ClientMsg::Set { key, value })
        }
        "delete" => Ok(ClientMsg::Delete { key: key(scratch)? }),
        "presence" => Ok(ClientMsg::Presence { x: int_field(env.x, "x")?, y: int_field(env.y, "y")? }),
        "auth" => Ok(ClientMsg::Auth { token: string_field(env.token, "token")?.into_owned() }),
        other => Err(Reject::new("unknown-type", format!("unknown message type {other:?}"))),
    }
}

fn push_json_str(out: &mut String, s: &str) {
    // Writing a &str into a String cannot fail.
    let quoted = serde_json::to_string(s).expect("strings always serialize");
    out.push_str(&quoted);
}

/// `{"type":"set","key":K,"value":V}` or `{"type":"delete","key":K}`.
pub fn encode_op(key: &[u8], value: Option<&[u8]>) -> Utf8Bytes {
    // Keys and values were validated (UTF-8 / JSON text) before they were stored.
    let key = String::from_utf8_lossy(key);
    let mut out = String::with_capacity(32 + key.len() + value.map_or(0, <[u8]>::len));
    match value {
        Some(v) => {
            out.push_str(r#"{"type":"set","key":"#);
            push_json_str(&mut out, &key);
            out.push_str(r#","value":"#);
            out.push_str(&String::from_utf8_lossy(v));
            out.push('}');
        }
        None => {
            out.push_str(r#"{"type":"delete","key":"#);
            push_json_str(&mut out, &key);
            out.push('}');
        }
    }
    out.into()
}

/// `{"type":"hello","id":ID,"color":C}`.
pub fn encode_hello(id: &str, color: &str) -> Utf8Bytes {
    serde_json::json!({"type": "hello", "id": id, "color": color}).to_string().into()
}

/// `{"type":"presence","id":ID,"color":C,"x":X,"y":Y}`.
pub fn encode_presence(id: &str, color: &str, x: i64, y: i64) -> Utf8Bytes {
    serde_json::json!({"type": "presence", "id": id, "color": color, "x": x, "y": y}).to_string().into()
}

/// `{"type":"presence-leave","id":ID}`.
pub fn encode_presence_leave(id: &str) -> Utf8Bytes {
    serde_json::json!({"type": "presence-leave", "id": id}).to_string().into()
}

/// `{"type":"error","code":C,"message":M}`.
pub fn encode_error(code: &str, message: &str) -> Utf8Bytes {
    serde_json::json!({"type": "error", "code": code, "message": message}).to_string().into()
}

/// `{"type":"snapshot","data":{K:V,...}}` from live keys and their JSON texts.
pub fn encode_snapshot<'a>(entries: impl Iterator<Item = (&'a [u8], &'a [u8])>, size_hint: usize) -> Utf8Bytes {
    let mut out = String::with_capacity(32 + size_hint);
    out.push_str(r#"{"type":"snapshot","data":{"#);
    let mut first = true;
    for (k, v) in entries {
        if !first {
            out.push(',');
        }
        first = false;
        push_json_str(&mut out, &String::from_utf8_lossy(k));
        out.push(':');
        out.push_str(&String::from_utf8_lossy(v));
    }
    out.push_str("}}");
    out.into()
}

/// The color shown for a client: `hsl(H, 70%, 55%)` with a hue from its id.
pub fn color_for(id: &uuid::Uuid) -> String {
    let b = id.as_bytes();
    let hue = u16::from_le_bytes([b[0], b[1]]) % 360;
    format!("hsl({hue}, 70%, 55%)")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: WireLimits = WireLimits { message_bytes: 1024, key_bytes: 8, value_bytes: 16 };

    fn p(text: &str) -> Result<String, Reject> {
        let mut scratch = String::new();
        parse(text, &LIMITS, &mut scratch).map(|m| format!("{m:?}"))
    }

    fn code(text: &str) -> &'static str {
        let mut scratch = String::new();
        parse(text, &LIMITS, &mut scratch).unwrap_err().code
    }

    #[test]
    fn parses_every_client_message() {
        assert_eq!(
            p(r#"{"type":"set","key":"k","value":{"a": [1, 2]}}"#).unwrap(),
            r#"Set { key: "k", value: "{\"a\": [1, 2]}" }"#
        );
        assert_eq!(p(r#"{"type":"set","key":"k","value":null}"#).unwrap(), r#"Set { key: "k", value: "null" }"#);
        assert_eq!(p(r#"{"type":"delete","key":"k","extra":1}"#).unwrap(), r#"Delete { key: "k" }"#);
        assert_eq!(p(r#"{"type":"presence","x":-3,"y":4}"#).unwrap(), "Presence { x: -3, y: 4 }");
        assert_eq!(p(r#"{"type":"auth","token":"t"}"#).unwrap(), r#"Auth { token: "t" }"#);
        assert_eq!(p(r#"{"type":"set","key":"\u00e9\n","value":1}"#).unwrap(), "Set { key: \"é\\n\", value: \"1\" }");
    }

    #[test]
    fn rejects_bad_input_with_codes() {
        assert_eq!(code("{"), "invalid-json");
        assert_eq!(code("[1]"), "invalid-json");
        assert_eq!(code(r#"{"key":"k"}"#), "missing-field");
        assert_eq!(code(r#"{"type":5}"#), "invalid-field");
        assert_eq!(code(r#"{"type":"nope"}"#), "unknown-type");
        assert_eq!(code(r#"{"type":"set","key":"k"}"#), "missing-field");
        assert_eq!(code(r#"{"type":"set","key":7,"value":1}"#), "invalid-field");
        assert_eq!(code(r#"{"type":"set","key":"123456789","value":1}"#), "key-too-large");
        assert_eq!(code(r#"{"type":"set","key":"k","value":"12345678901234567"}"#), "value-too-large");
        assert_eq!(code(r#"{"type":"presence","x":1.5,"y":0}"#), "invalid-field");
        assert_eq!(code(r#"{"type":"presence","x":1}"#), "missing-field");
        assert_eq!(code(r#"{"type":"set","key":"k","value":NaN}"#), "invalid-json");
        assert_eq!(code(&format!(r#"{{"type":"set","key":"k","value":"{}"}}"#, "x".repeat(2000))), "message-too-large");
    }

    #[test]
    fn encodes_ops_and_snapshots() {
        assert_eq!(encode_op(b"a\"b", Some(b"[1]")).as_str(), r#"{"type":"set","key":"a\"b","value":[1]}"#);
        assert_eq!(encode_op(b"k", None).as_str(), r#"{"type":"delete","key":"k"}"#);
        let snap = encode_snapshot([(&b"x"[..], &b"null"[..]), (b"y", b"2")].into_iter(), 0);
        assert_eq!(snap.as_str(), r#"{"type":"snapshot","data":{"x":null,"y":2}}"#);
        let v: serde_json::Value = serde_json::from_str(encode_error("c", "m\"").as_str()).unwrap();
        assert_eq!(v["message"], "m\"");
    }

    proptest::proptest! {
        /// Arbitrary text never panics the parser, and anything accepted as a
        /// write is within the limits.
        #[test]
        fn parse_never_panics(text in "\\PC{0,200}") {
            let mut scratch = String::new();
            if let Ok(ClientMsg::Set { key, value }) = parse(&text, &LIMITS, &mut scratch) {
                proptest::prop_assert!(key.len() <= LIMITS.key_bytes && value.len() <= LIMITS.value_bytes);
                proptest::prop_assert!(serde_json::from_str::<serde_json::Value>(value).is_ok());
            }
        }

        /// Any key and JSON value survive parse → encode_op → JSON unchanged.
        #[test]
        fn set_roundtrips(key in "\\PC{0,8}", n in proptest::prelude::any::<i64>(), s in "\\PC{0,4}") {
            let value = serde_json::json!({"n": n, "s": s});
            let msg = serde_json::json!({"type": "set", "key": key, "value": value}).to_string();
            let mut scratch = String::new();
            match parse(&msg, &WireLimits { value_bytes: 1024, ..LIMITS }, &mut scratch) {
                Ok(ClientMsg::Set { key: k, value: v }) => {
                    let out: serde_json::Value = serde_json::from_str(encode_op(k.as_bytes(), Some(v.as_bytes())).as_str()).unwrap();
                    proptest::prop_assert_eq!(out, serde_json::json!({"type": "set", "key": key, "value": value}));
                }
                Err(r) => proptest::prop_assert_eq!(r.code, "key-too-large"),
                Ok(other) => proptest::prop_assert!(false, "parsed as {:?}", other),
            }
        }
    }

    #[test]
    fn colors_are_hsl() {
        let c = color_for(&uuid::Uuid::new_v4());
        assert!(c.starts_with("hsl(") && c.ends_with(", 70%, 55%)"), "{c}");
    }
}
