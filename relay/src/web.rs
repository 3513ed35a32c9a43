//! The web pages and the browser client, served to browsers: `/` (the
//! topology diagrammer), `/demos/…`, and `/client/aether.js` (an ES module
//! exporting `Aether`). Built into the binary by `build.rs`; with
//! `--web-assets-dir` read from a checkout instead, for editing them live.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::gateway::GatewayCtx;

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// Fallback handler: an embedded asset by URL path, or 404.
pub async fn asset(State(ctx): State<Arc<GatewayCtx>>, method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into_response();
    }
    let path = uri.path();
    let Some(&(_, source, embedded)) = ASSETS.iter().find(|(url, _, _)| *url == path) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let body = match &ctx.web_assets_dir {
        None => embedded.to_vec(),
        Some(dir) => match tokio::fs::read(dir.join(source)).await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(path = %dir.join(source).display(), error = %e, "--web-assets-dir: serving the built-in copy");
                embedded.to_vec()
            }
        },
    };
    let mut res = body.into_response();
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(source)));
    // Pages and the client change with the relay: always revalidate.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    res
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("ts") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_and_the_pages_are_embedded() {
        let has = |p: &str| ASSETS.iter().any(|(url, _, _)| *url == p);
        for p in ["/", "/index.html", "/client/aether.js", "/demos/kanban.html", "/demos/markdown.html"] {
            assert!(has(p), "{p} is not embedded");
        }
        assert_eq!(content_type("relay/web/index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("clients/js/src/aether.js"), "text/javascript; charset=utf-8");
    }
}
