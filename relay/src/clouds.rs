//! Per-cloud endpoint lists: `GET /v1/clouds` and `GET /v1/clouds/{cloud}`.
//!
//! The operator compiles, for every cloud of a mesh, the ordered list of relay
//! endpoints its clients should use (its own Node's first, then the other
//! clouds by proximity) into a JSON document in a ConfigMap, mounted into every
//! relay pod. The relay serves it as is, re-reading the file every
//! `--clouds-poll`; a malformed update is logged and the last good document
//! stays in service. The format is in `docs/protocol.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::gateway::GatewayCtx;

/// Most bytes read from the clouds file.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most endpoints per cloud.
pub const MAX_ENDPOINTS: usize = 1024;

/// The document the operator writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudsDoc {
    /// Format version (1).
    pub version: u32,
    /// The mesh.
    #[serde(default)]
    pub mesh: String,
    /// Endpoint lists by cloud name, each in the order clients should try them.
    pub clouds: BTreeMap<String, Vec<Endpoint>>,
}

/// One relay endpoint as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Base URL: `wss://host[:port]` (the relay serves `/ws` and `/v1/ws` under it).
    pub url: String,
    /// The cloud the endpoint is in.
    pub cloud: String,
}

/// Parses and checks a clouds document.
pub fn parse(raw: &[u8]) -> Result<CloudsDoc, String> {
    let doc: CloudsDoc = serde_json::from_slice(raw).map_err(|e| format!("not a clouds document: {e}"))?;
    if doc.version != 1 {
        return Err(format!("version {} is not supported (1 is)", doc.version));
    }
    for (cloud, endpoints) in &doc.clouds {
        if cloud.is_empty() || cloud.len() > 63 || !cloud.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("cloud name {cloud:?}: use 1-63 letters, digits or '-'"));
        }
        if endpoints.len() > MAX_ENDPOINTS {
            return Err(format!("cloud {cloud}: {} endpoints, at most {MAX_ENDPOINTS}", endpoints.len()));
        }
        for e in endpoints {
            let ok = ["ws://", "wss://", "http://", "https://"].iter().any(|p| e.url.starts_with(p));
            if !ok || e.url.len() > 2048 {
                return Err(format!("cloud {cloud}: endpoint {:?} is not a ws(s):// or http(s):// URL", e.url));
            }
        }
    }
    Ok(doc)
}

/// The document in service, shared with the HTTP handlers.
#[derive(Debug, Default)]
pub struct Clouds {
    doc: RwLock<Option<Arc<CloudsDoc>>>,
}

impl Clouds {
    /// Reads `path` once (failing on a bad first document, so a typo shows at start) and
    /// returns the holder plus the task that keeps it current (counting unusable reads in `errors`).
    pub fn load(
        path: PathBuf,
        poll: Duration,
        errors: prometheus::IntCounter,
    ) -> anyhow::Result<(Arc<Clouds>, impl Future<Output = ()>)> {
        let (doc, raw) = read(&path).map_err(|e| anyhow::anyhow!("--clouds-file {}: {e}", path.display()))?;
        let clouds = Arc::new(Clouds { doc: RwLock::new(Some(Arc::new(doc))) });
        let watcher = clouds.clone().watch(path, poll, raw, errors);
        Ok((clouds, watcher))
    }

    /// The document in service.
    pub fn get(&self) -> Option<Arc<CloudsDoc>> {
        self.doc.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn watch(self: Arc<Self>, path: PathBuf, poll: Duration, mut last: Vec<u8>, errors: prometheus::IntCounter) {
        let mut tick = tokio::time::interval(poll);
        tick.tick().await;
        let mut last_error = None;
        loop {
            tick.tick().await;
            let p = path.clone();
            let Ok(result) = tokio::task::spawn_blocking(move || read(&p)).await else { continue };
            match result {
                Ok((_, raw)) if raw == last => last_error = None,
                Ok((doc, raw)) => {
                    tracing::info!(path = %path.display(), clouds = doc.clouds.len(), "clouds file changed");
                    *self.doc.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(doc));
                    last = raw;
                    last_error = None;
                }
                Err(e) => {
                    errors.inc();
                    if last_error.as_ref() != Some(&e) {
                        tracing::warn!(path = %path.display(), error = %e, "clouds file unusable; serving the last good one");
                    }
                    last_error = Some(e);
                }
            }
        }
    }
}

fn read(path: &Path) -> Result<(CloudsDoc, Vec<u8>), String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut raw).map_err(|e| e.to_string())?;
    if raw.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    Ok((parse(&raw)?, raw))
}

fn json_error(status: StatusCode, message: String) -> Response {
    (status, cors(), Json(serde_json::json!({ "error": message }))).into_response()
}

/// Any origin may read endpoint lists (browsers fetch them cross-origin).
fn cors() -> [(header::HeaderName, &'static str); 1] {
    [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")]
}

/// `GET /v1/clouds`: the mesh and its cloud names.
pub async fn list(State(ctx): State<Arc<GatewayCtx>>) -> Response {
    let Some(doc) = ctx.clouds.as_ref().and_then(|c| c.get()) else {
        return json_error(StatusCode::NOT_FOUND, "this relay has no clouds file (--clouds-file)".into());
    };
    let names: Vec<&String> = doc.clouds.keys().collect();
    (cors(), Json(serde_json::json!({ "mesh": doc.mesh, "clouds": names }))).into_response()
}

/// `GET /v1/clouds/{cloud}`: the ordered endpoint list of one cloud.
pub async fn one(State(ctx): State<Arc<GatewayCtx>>, UrlPath(cloud): UrlPath<String>) -> Response {
    let Some(doc) = ctx.clouds.as_ref().and_then(|c| c.get()) else {
        return json_error(StatusCode::NOT_FOUND, "this relay has no clouds file (--clouds-file)".into());
    };
    match doc.clouds.get(&cloud) {
        Some(endpoints) => {
            (cors(), Json(serde_json::json!({ "mesh": doc.mesh, "cloud": cloud, "endpoints": endpoints })))
                .into_response()
        }
        None => json_error(StatusCode::NOT_FOUND, format!("no cloud {cloud:?} in this mesh")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_checked() {
        let good = br#"{"version":1,"mesh":"m","clouds":{"eu-west":[{"url":"wss://a.example","cloud":"eu-west"},{"url":"wss://b.example","cloud":"us"}]}}"#;
        let doc = parse(good).unwrap();
        assert_eq!(doc.clouds["eu-west"][1].cloud, "us");
        for (bad, why) in [
            (&br#"{"version":2,"clouds":{}}"#[..], "version"),
            (br#"{"version":1,"clouds":{"bad name":[]}}"#, "cloud name"),
            (br#"{"version":1,"clouds":{"eu":[{"url":"ftp://x","cloud":"eu"}]}}"#, "not a ws"),
            (br#"{"version":1,"clouds":{},"extra":1}"#, "unknown field"),
            (b"not json", "not a clouds document"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
