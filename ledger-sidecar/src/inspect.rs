//! `aether-ledger inspect`: prints the ops of a ledger object as JSON lines.

use anyhow::Context;
use clap::Args;
use object_store::ObjectStoreExt;
use serde_json::json;
use serde_json::value::RawValue;

use crate::format;
use crate::restore::rfc3339;
use crate::store::{StoreArgs, join};

/// `aether-ledger inspect` flags.
#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// Store settings.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The object, relative to the store URL: e.g. `default/relay-0/wal/00000000000000000003-<random>.seg`,
    /// or a snapshot file.
    pub object: String,
}

/// Prints one JSON line per op; fails (after printing the good ones) at the first damaged record.
pub async fn run(args: InspectArgs) -> anyhow::Result<()> {
    let store = args.store.open()?;
    let mut object = store.root.clone();
    for part in args.object.split('/').filter(|p| !p.is_empty()) {
        object = join(&object, part);
    }
    let data = store
        .store
        .get(&object)
        .await
        .with_context(|| format!("reading {object}"))?
        .bytes()
        .await
        .with_context(|| format!("reading {object}"))?;
    let kind = format::kind_of(&data).map_err(|d| anyhow::anyhow!("{object}: {d}"))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut write_err = None;
    let stats = format::for_each_op(&data, |space, op, offset| {
        if write_err.is_some() {
            return;
        }
        let line = json!({
            "offset": offset,
            "space": space,
            "key": String::from_utf8_lossy(op.key),
            "value": op.value.map(value_json),
            "deleted": op.value.is_none(),
            "stamp": format::stamp_string(&op.stamp),
            "time": rfc3339(op.stamp.wall_ns),
            "origin": format!("{:016x}", op.origin),
        });
        if let Err(e) = serde_json::to_writer(&mut out, &line).map_err(std::io::Error::other).and_then(|_| {
            use std::io::Write;
            out.write_all(b"\n")
        }) {
            write_err = Some(e);
        }
    });
    use std::io::Write;
    out.flush()?;
    if let Some(e) = write_err {
        return Err(e).context("writing to stdout");
    }
    let stats = stats.map_err(|d| anyhow::anyhow!("{object} is damaged at {d}"))?;
    eprintln!("{object}: {kind:?}, {} ops, {} bytes, CRC32C {:08x}", stats.ops, stats.bytes, stats.crc32c);
    Ok(())
}

/// A value as JSON: as itself when it is JSON text (the relays store JSON), else as a string.
fn value_json(v: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(v).ok().and_then(|s| serde_json::from_str::<&RawValue>(s).ok()) {
        Some(raw) => serde_json::from_str(raw.get()).unwrap_or(serde_json::Value::Null),
        None => serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
    }
}
