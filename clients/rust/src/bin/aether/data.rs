//! `put`, `get`, `del`, `watch`, `snapshot`, `spaces`, `clouds`.

use std::future::Future;
use std::io::Write;

use aether_client::{CloudSource, Endpoint, Error as ClientError, Tls, clouds};
use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::args::Global;
use crate::{EXIT_FAILURE, EXIT_USAGE, connect, fail};

/// Runs `f` within `--timeout`.
async fn within<T>(g: &Global, what: &str, f: impl Future<Output = Result<T, ClientError>>) -> anyhow::Result<T> {
    match tokio::time::timeout(g.timeout, f).await {
        Ok(r) => r.with_context(|| what.to_string()),
        Err(_) => Err(fail(EXIT_FAILURE, format!("{what}: no answer within {:?}", g.timeout))),
    }
}

/// Writes one line to stdout; a closed pipe (`| head`) ends quietly.
fn emit(line: &str) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

pub async fn put(g: &Global, space: &str, key: &str, json: &str) -> anyhow::Result<()> {
    let value: Box<RawValue> =
        serde_json::from_str(json).map_err(|e| fail(EXIT_USAGE, format!("the value is not JSON: {e}")))?;
    let client = connect(g).await?;
    let handle = client.space(space)?;
    // Catching up first makes the clock follow every stamp the relay has,
    // so this write orders after everything the space already holds.
    within(g, "catching up", handle.ready()).await?;
    let acked = within(g, "waiting for the ack", handle.set(key, &value)).await?;
    if acked.superseded {
        eprintln!("aether: {key:?} holds a newer write; this one lost (last writer wins)");
    }
    client.close().await?;
    Ok(())
}

pub async fn get(g: &Global, space: &str, key: &str) -> anyhow::Result<()> {
    let client = connect(g).await?;
    let handle = client.space(space)?;
    within(g, "catching up", handle.ready()).await?;
    let raw = handle.get_raw(key);
    client.close().await?;
    match raw {
        Some(text) => {
            emit(String::from_utf8_lossy(&text).trim())?;
            Ok(())
        }
        None => Err(fail(EXIT_FAILURE, format!("key {key:?} not found in space {space:?}"))),
    }
}

pub async fn del(g: &Global, space: &str, key: &str) -> anyhow::Result<()> {
    let client = connect(g).await?;
    let handle = client.space(space)?;
    within(g, "catching up", handle.ready()).await?;
    within(g, "waiting for the ack", handle.delete(key)).await?;
    client.close().await?;
    Ok(())
}

/// One `watch` line: `{"key":K,"value":V}` or `{"key":K,"deleted":true}`.
#[derive(Serialize)]
struct Line<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

fn line(key: &str, value: Option<&Value>) -> anyhow::Result<String> {
    Ok(serde_json::to_string(&Line { key, value, deleted: value.is_none() })?)
}

pub async fn watch(g: &Global, space: &str, from_now: bool) -> anyhow::Result<()> {
    let client = connect(g).await?;
    let handle = client.space(space)?;
    within(g, "catching up", handle.ready()).await?;
    let (snapshot, mut changes) = handle.snapshot_and_watch();
    if !from_now {
        for (key, value) in &snapshot {
            if !emit(&line(key, Some(value))?)? {
                return Ok(());
            }
        }
    }
    drop(snapshot);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            change = changes.recv() => match change {
                Some(c) => {
                    if !emit(&line(&c.key, c.value.as_ref())?)? {
                        break;
                    }
                }
                None => {
                    if let Some(n) = changes.lagged() {
                        return Err(fail(EXIT_FAILURE, format!("fell {n} changes behind; run watch again")));
                    }
                    break;
                }
            },
        }
    }
    client.close().await?;
    Ok(())
}

pub async fn snapshot(g: &Global, space: &str) -> anyhow::Result<()> {
    let client = connect(g).await?;
    let handle = client.space(space)?;
    within(g, "catching up", handle.ready()).await?;
    let all = handle.snapshot();
    client.close().await?;
    emit(&serde_json::to_string(&all)?)?;
    Ok(())
}

/// The HTTP base to ask: the first `--relay` that has one, else the `--cloud` relay.
fn http_base(g: &Global) -> anyhow::Result<String> {
    for url in &g.relays {
        if let Some(base) = Endpoint::parse(url)?.http_base() {
            return Ok(base);
        }
    }
    if let Some(cloud) = &g.cloud {
        let source = CloudSource::new(cloud, g.cloud_name.as_deref())?;
        if let Some((base, _)) = source.url.split_once("/v1/clouds/") {
            return Ok(base.to_string());
        }
    }
    Err(fail(EXIT_USAGE, "needs a ws(s):// or http(s):// --relay, or --cloud"))
}

pub async fn spaces(g: &Global, json: bool) -> anyhow::Result<()> {
    let base = http_base(g)?;
    let tls = Tls::new(g.ca_file.as_deref())?;
    let list = clouds::list_spaces(&base, g.token.as_deref(), &tls, g.timeout).await?;
    if json {
        emit(&serde_json::to_string(&serde_json::json!({ "spaces": list }))?)?;
        return Ok(());
    }
    for s in &list {
        if !emit(&format!("{}\t{}", s.name, s.entries))? {
            break;
        }
    }
    Ok(())
}

pub async fn clouds(g: &Global, json: bool) -> anyhow::Result<()> {
    let Some(cloud) = &g.cloud else {
        return Err(fail(EXIT_USAGE, "clouds needs --cloud URL (and --cloud-name NAME unless the URL names it)"));
    };
    let source = CloudSource::new(cloud, g.cloud_name.as_deref())?;
    let tls = Tls::new(g.ca_file.as_deref())?;
    let list = clouds::fetch_endpoints(&source, &tls, g.timeout).await?;
    if json {
        emit(&serde_json::to_string(&list)?)?;
        return Ok(());
    }
    for e in &list.endpoints {
        if !emit(&format!("{}\t{}", e.url, e.cloud))? {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_lines_put_the_key_first_and_keep_null_values() {
        assert_eq!(line("k", Some(&serde_json::json!({"a": 1}))).unwrap(), r#"{"key":"k","value":{"a":1}}"#);
        assert_eq!(line("k", Some(&Value::Null)).unwrap(), r#"{"key":"k","value":null}"#);
        assert_eq!(line("k", None).unwrap(), r#"{"key":"k","deleted":true}"#);
    }
}
