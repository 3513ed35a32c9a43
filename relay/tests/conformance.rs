//! Runs the `wire` block of docs/protocol.md against a real relay process.

mod common;

use std::collections::HashMap;

use common::{Client, Relay, tempdir};
use serde_json::Value;

const PROTOCOL_MD: &str = include_str!("../../docs/protocol.md");

fn wire_block() -> Vec<String> {
    let start = PROTOCOL_MD.find("```wire\n").expect("docs/protocol.md has a ```wire block") + "```wire\n".len();
    let len = PROTOCOL_MD[start..].find("```").expect("wire block is closed");
    PROTOCOL_MD[start..start + len]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// Compares `actual` with `expected`, resolving `$uuid:NAME` and `$color`.
fn matches(expected: &Value, actual: &Value, ids: &mut HashMap<String, String>, path: &str) -> Result<(), String> {
    match (expected, actual) {
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
