//! Runs the `wire` block of docs/protocol.md against a real relay process.

mod common;

use std::collections::HashMap;

#[path = "common/native.rs"]
mod native;

use common::{Client, Relay, tempdir};
use native::{Native, NativeEvent};
use serde_json::Value;

const PROTOCOL_MD: &str = include_str!("../../docs/protocol.md");

fn wire_block() -> Vec<String> {
    block("wire")
}

fn block(name: &str) -> Vec<String> {
    let fence = format!("```{name}\n");
    let start =
        PROTOCOL_MD.find(&fence).unwrap_or_else(|| panic!("docs/protocol.md has a {fence} block")) + fence.len();
    let len = PROTOCOL_MD[start..].find("```").expect("wire block is closed");
    PROTOCOL_MD[start..start + len]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// Compares `actual` with `expected`, resolving `$uuid:NAME`, `$color`,
/// `$u64`, `$any`, `$bind:NAME` and `$val:NAME`.
fn matches(expected: &Value, actual: &Value, ids: &mut HashMap<String, String>, path: &str) -> Result<(), String> {
    match (expected, actual) {
        (Value::String(e), _) if e == "$any" => Ok(()),
        (Value::String(e), Value::String(a)) if e == "$u64" => {
            a.parse::<u64>().map(drop).map_err(|_| format!("{path}: {a:?} is not a decimal u64"))
        }
        (Value::String(e), Value::String(a)) if e.starts_with("$bind:") => {
            let name = &e["$bind:".len()..];
            match ids.get(name) {
                Some(bound) if bound != a => Err(format!("{path}: {name} was {bound}, now {a}")),
                Some(_) => Ok(()),
                None => {
                    ids.insert(name.to_string(), a.clone());
                    Ok(())
                }
            }
        }
        (Value::String(e), Value::String(a)) if e.starts_with("$val:") => match ids.get(&e["$val:".len()..]) {
            Some(bound) if bound == a => Ok(()),
            other => Err(format!("{path}: got {a:?}, expected {e} = {other:?}")),
        },
        (Value::String(e), Value::String(a)) if e.starts_with("$uuid:") => {
            uuid::Uuid::parse_str(a).map_err(|_| format!("{path}: {a:?} is not a UUID"))?;
            let name = &e["$uuid:".len()..];
            match ids.get(name) {
                Some(bound) if bound != a => Err(format!("{path}: {name} was {bound}, now {a}")),
                Some(_) => Ok(()),
                None => {
                    if let Some((other, _)) = ids.iter().find(|(_, v)| *v == a) {
                        return Err(format!("{path}: {name} has the same id as {other}"));
                    }
                    ids.insert(name.to_string(), a.clone());
                    Ok(())
                }
            }
        }
        (Value::String(e), Value::String(a)) if e == "$color" => {
            let hue = a.strip_prefix("hsl(").and_then(|r| r.strip_suffix(", 70%, 55%)"));
            match hue.and_then(|h| h.parse::<u16>().ok()) {
                Some(h) if h < 360 => Ok(()),
                _ => Err(format!("{path}: {a:?} is not hsl(H, 70%, 55%)")),
            }
        }
        (Value::Object(e), Value::Object(a)) => {
            let mut ek: Vec<_> = e.keys().collect();
            let mut ak: Vec<_> = a.keys().collect();
            ek.sort();
            ak.sort();
            if ek != ak {
                return Err(format!("{path}: keys {ak:?}, expected exactly {ek:?}"));
            }
            e.iter().try_for_each(|(k, ev)| matches(ev, &a[k], ids, &format!("{path}.{k}")))
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            e.iter().zip(a).enumerate().try_for_each(|(i, (ev, av))| matches(ev, av, ids, &format!("{path}[{i}]")))
        }
        _ if expected == actual => Ok(()),
        _ => Err(format!("{path}: got {actual}, expected {expected}")),
    }
}

#[tokio::test]
async fn wire_block_matches_the_running_relay() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &[]);
    let script = wire_block();
    assert!(script.len() > 20, "the wire block is suspiciously short");
    let mut clients: HashMap<String, Client> = HashMap::new();
    let mut ids = HashMap::new();
    for (n, line) in script.iter().enumerate() {
        let (who, rest) = line.split_once(' ').expect("CLIENT ACTION ...");
        let ctx = format!("wire line {} {line:?}", n + 1);
        if let Some(query) = rest.strip_prefix("connects ") {
            clients.insert(who.into(), Client::connect(&relay.ws_url(query)).await);
        } else if rest == "closes" {
            let mut c = clients.remove(who).unwrap_or_else(|| panic!("{ctx}: no client {who}"));
            c.ws.close(None).await.expect("close");
            while !matches!(c.next_event().await, common::Event::Gone | common::Event::Close(..)) {}
        } else if let Some(json) = rest.strip_prefix("-> ") {
            let c = clients.get_mut(who).unwrap_or_else(|| panic!("{ctx}: no client {who}"));
            c.send_text(json).await;
        } else if let Some(json) = rest.strip_prefix("<- ") {
            let expected: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{ctx}: bad JSON {e}"));
            let c = clients.get_mut(who).unwrap_or_else(|| panic!("{ctx}: no client {who}"));
            let actual = c.recv().await;
            if let Err(e) = matches(&expected, &actual, &mut ids, "$") {
                panic!("{ctx}: {e}");
            }
        } else {
            panic!("{ctx}: unknown action");
        }
    }
}

/// Replaces every `"$val:NAME"` string in a frame to send with NAME's binding.
fn substitute(v: &mut Value, ids: &HashMap<String, String>, ctx: &str) {
    match v {
        Value::String(s) if s.starts_with("$val:") => {
            let name = &s["$val:".len()..];
            *s = ids.get(name).unwrap_or_else(|| panic!("{ctx}: {name} is not bound")).clone();
        }
        Value::Object(o) => o.values_mut().for_each(|x| substitute(x, ids, ctx)),
        Value::Array(a) => a.iter_mut().for_each(|x| substitute(x, ids, ctx)),
        _ => {}
    }
}

/// Runs the `wire-v1` block over `/v1/ws` in one encoding.
async fn native_script(json: bool) {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &[]);
    let script = block("wire-v1");
    assert!(script.len() > 30, "the wire-v1 block is suspiciously short");
    let mut clients: HashMap<String, Native> = HashMap::new();
    let mut ids = HashMap::new();
    for (n, line) in script.iter().enumerate() {
        let (who, rest) = line.split_once(' ').expect("CLIENT ACTION ...");
        let ctx = format!("wire-v1 line {} ({}) {line:?}", n + 1, if json { "json" } else { "proto" });
        if rest == "connects" {
            clients.insert(who.into(), Native::connect(relay.addr, json).await);
        } else if rest == "closes" {
            let mut c = clients.remove(who).unwrap_or_else(|| panic!("{ctx}: no client {who}"));
            c.ws.close(None).await.expect("close");
            while !matches!(c.next_event().await, NativeEvent::Gone | NativeEvent::Close(..)) {}
        } else if let Some(text) = rest.strip_prefix("-> ") {
            let mut v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{ctx}: bad JSON {e}"));
            substitute(&mut v, &ids, &ctx);
            let c = clients.get_mut(who).unwrap_or_else(|| panic!("{ctx}: no client {who}"));
            c.send_json(&v.to_string()).await;
        } else if let Some(text) = rest.strip_prefix("<- ") {
            let expected: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{ctx}: bad JSON {e}"));
            let c = clients.get_mut(who).unwrap_or_else(|| panic!("{ctx}: no client {who}"));
            let actual = c.recv_json().await;
            if let Err(e) = matches(&expected, &actual, &mut ids, "$") {
                panic!("{ctx}: {e}");
            }
        } else {
            panic!("{ctx}: unknown action");
        }
    }
}

#[tokio::test]
async fn wire_v1_block_matches_the_relay_over_json() {
    native_script(true).await;
}

#[tokio::test]
async fn wire_v1_block_matches_the_relay_over_protobuf() {
    native_script(false).await;
}

#[test]
fn matcher_binds_and_checks_values() {
    let mut ids = HashMap::new();
    let e = serde_json::json!({"epoch": "$bind:E", "seq": "$u64", "m": "$any"});
    assert_eq!(matches(&e, &serde_json::json!({"epoch": "abc", "seq": "12", "m": [1]}), &mut ids, "$"), Ok(()));
    assert!(matches(&e, &serde_json::json!({"epoch": "xyz", "seq": "12", "m": 1}), &mut ids, "$").is_err());
    assert!(matches(&serde_json::json!("$u64"), &serde_json::json!("-1"), &mut ids, "$").is_err());
    assert_eq!(matches(&serde_json::json!("$val:E"), &serde_json::json!("abc"), &mut ids, "$"), Ok(()));
    let mut sent = serde_json::json!({"subscribe": {"epoch": "$val:E"}});
    substitute(&mut sent, &ids, "test");
    assert_eq!(sent["subscribe"]["epoch"], "abc");
}

#[test]
fn matcher_rejects_extra_keys_and_rebinding() {
    let mut ids = HashMap::new();
    let id = uuid::Uuid::new_v4().to_string();
    let expected: Value = serde_json::json!({"type":"hello","id":"$uuid:A","color":"$color"});
    let ok = serde_json::json!({"type":"hello","id":id,"color":"hsl(12, 70%, 55%)"});
    assert_eq!(matches(&expected, &ok, &mut ids, "$"), Ok(()));
    let extra = serde_json::json!({"type":"hello","id":id,"color":"hsl(12, 70%, 55%)","v":1});
    assert!(matches(&expected, &extra, &mut ids, "$").is_err());
    let other = serde_json::json!({"type":"hello","id":uuid::Uuid::new_v4().to_string(),"color":"hsl(1, 70%, 55%)"});
    assert!(matches(&expected, &other, &mut ids, "$").is_err());
    let bad_color = serde_json::json!({"type":"hello","id":id,"color":"red"});
    assert!(matches(&expected, &bad_color, &mut ids, "$").is_err());
}
