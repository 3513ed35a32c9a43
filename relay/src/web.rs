//! The web pages and the browser client, served to browsers: `/` (the
//! topology diagrammer) and `/demos/…` in `dev` mode, and in every mode
//! `/client/aether.js` (an ES module exporting `Aether`). Built into the binary by `build.rs`; with
//! `--web-assets-dir` read from a checkout instead, for editing them live.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::gateway::GatewayCtx;

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// Fallback handler: an embedded asset by URL path, or 404.
pub async fn asset(State(ctx): State<Arc<GatewayCtx>>, method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into_response();
    }
    let path = uri.path();
    if !ctx.web_pages && !path.starts_with("/client/") {
        return not_found();
    }
    let found = ASSETS.iter().find(|(url, _, _)| *url == path).map(|&(_, source, bytes)| (source.to_owned(), bytes));
    let body = match &ctx.web_assets_dir {
        // Embedded: served without a copy.
        None => match &found {
            Some((_, bytes)) => Bytes::from_static(bytes),
            None => return not_found(),
        },
        // From the checkout: also files added since the build.
        Some(dir) => {
            let Some(source) = found.as_ref().map(|(s, _)| s.clone()).or_else(|| source_of(path)) else {
                return not_found();
            };
            match tokio::fs::read(dir.join(&source)).await {
                Ok(bytes) => Bytes::from(bytes),
                Err(e) => match &found {
                    Some((_, bytes)) => {
                        tracing::warn!(path = %dir.join(&source).display(), error = %e, "--web-assets-dir: serving the built-in copy");
                        Bytes::from_static(bytes)
                    }
                    None => return not_found(),
                },
            }
        }
    };
    let source = found.map(|(s, _)| s).or_else(|| source_of(path)).unwrap_or_default();
    let mut res = body.into_response();
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&source)));
    // Pages and the client change with the relay: always revalidate.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    res
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// Where a URL path's file is in the checkout (for files newer than the build):
/// `/client/NAME` in `clients/js/src`, anything else under `relay/web`. Only
/// plain names: no `..`, no hidden files.
fn source_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    let plain = |p: &str| p.split('/').all(|c| !c.is_empty() && !c.starts_with('.') && !c.contains('\\'));
    if let Some(name) = rest.strip_prefix("client/") {
        return (plain(name) && !name.contains('/')).then(|| format!("clients/js/src/{name}"));
    }
    let rest = if rest.is_empty() || rest.ends_with('/') { format!("{rest}index.html") } else { rest.to_owned() };
    plain(&rest).then(|| format!("relay/web/{rest}"))
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

    #[test]
    fn files_newer_than_the_build_map_into_the_checkout_and_nowhere_else() {
        assert_eq!(source_of("/").as_deref(), Some("relay/web/index.html"));
        assert_eq!(source_of("/demos/new.js").as_deref(), Some("relay/web/demos/new.js"));
        assert_eq!(source_of("/demos/").as_deref(), Some("relay/web/demos/index.html"));
        assert_eq!(source_of("/client/react.js").as_deref(), Some("clients/js/src/react.js"));
        for bad in ["/../Cargo.toml", "/demos/../../x", "/.git/config", "/client/../x", "//etc/passwd", "/a\\b"] {
            assert_eq!(source_of(bad), None, "{bad}");
        }
    }
}
