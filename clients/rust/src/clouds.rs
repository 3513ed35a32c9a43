//! Endpoint lists: `GET {relay}/v1/clouds/{cloud}` gives the ordered relay
//! endpoints a client of that cloud should try (see docs/protocol.md), and
//! `GET {relay}/v1/spaces` the spaces a relay holds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::http;
use crate::tls::Tls;

/// Where to fetch an endpoint list from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudSource {
    /// The list's URL: `{relay http base}/v1/clouds/{cloud}`.
    pub url: String,
}

impl CloudSource {
    /// From a relay's HTTP base (`http(s)://` or `ws(s)://`) and a cloud name,
    /// or — with `cloud == None` — from the full `…/v1/clouds/NAME` URL.
    pub fn new(url: &str, cloud: Option<&str>) -> Result<CloudSource, Error> {
        let bad = |reason: &str| Error::InvalidUrl { url: url.to_string(), reason: reason.to_string() };
        let url = url.trim().trim_end_matches('/');
        let url = if let Some(rest) = url.strip_prefix("ws://") {
            format!("http://{rest}")
        } else if let Some(rest) = url.strip_prefix("wss://") {
            format!("https://{rest}")
        } else {
            url.to_string()
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad("a cloud URL is an http(s):// (or ws(s)://) relay base"));
        }
        let full = match (cloud, url.contains("/v1/clouds/")) {
            (Some(name), false) => {
                check_cloud_name(name)?;
                format!("{url}/v1/clouds/{name}")
            }
            (None, true) => url,
            (Some(_), true) => return Err(bad("give either a full /v1/clouds/NAME URL or a cloud name, not both")),
            (None, false) => return Err(bad("no cloud name: use …/v1/clouds/NAME or give the cloud name")),
        };
        Ok(CloudSource { url: full })
    }
}

/// Checks a cloud name: 1–63 letters, digits or `-`.
pub fn check_cloud_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 63 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(Error::Config(format!("cloud name {name:?}: use 1-63 letters, digits or '-'")));
    }
    Ok(())
}

/// One endpoint of a cloud's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudEndpoint {
    /// Base URL (`ws(s)://` or `http(s)://`; the client appends `/v1/ws`).
    pub url: String,
    /// The cloud the endpoint is in.
    pub cloud: String,
}

/// The answer of `GET /v1/clouds/{cloud}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudEndpoints {
    /// The mesh.
    #[serde(default)]
    pub mesh: String,
    /// The cloud asked for.
    pub cloud: String,
    /// The endpoints, in the order to try them.
    pub endpoints: Vec<CloudEndpoint>,
}

/// Fetches an endpoint list.
pub async fn fetch_endpoints(source: &CloudSource, tls: &Tls, timeout: Duration) -> Result<CloudEndpoints, Error> {
    let body = get_json_ok(&source.url, tls, &[], timeout).await?;
    let list: CloudEndpoints = serde_json::from_slice(&body).map_err(|e| Error::Http {
        url: source.url.clone(),
        reason: format!("not an endpoint list: {e}"),
        unreachable: false,
    })?;
    if list.endpoints.is_empty() {
        return Err(Error::Http {
            url: source.url.clone(),
            reason: "the endpoint list is empty".into(),
            unreachable: false,
        });
    }
    Ok(list)
}

/// One space a relay holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceInfo {
    /// The space's name.
    pub name: String,
    /// Entries, tombstones included.
    #[serde(default)]
    pub entries: u64,
}

#[derive(Deserialize)]
struct SpaceList {
    spaces: Vec<SpaceInfo>,
}

/// `GET {http_base}/v1/spaces`: the spaces the relay holds (with
/// `Authorization: Bearer TOKEN` when a token is given).
pub async fn list_spaces(
    http_base: &str,
    token: Option<&str>,
    tls: &Tls,
    timeout: Duration,
) -> Result<Vec<SpaceInfo>, Error> {
    let url = format!("{}/v1/spaces", http_base.trim_end_matches('/'));
    let headers: Vec<(&str, String)> = token.map(|t| ("Authorization", format!("Bearer {t}"))).into_iter().collect();
    let body = get_json_ok(&url, tls, &headers, timeout).await?;
    let list: SpaceList = serde_json::from_slice(&body).map_err(|e| Error::Http {
        url,
        reason: format!("not a space list: {e}"),
        unreachable: false,
    })?;
    Ok(list.spaces)
}

/// GETs `url` and returns the body of a 200, or the relay's `{"error": …}` otherwise.
async fn get_json_ok(url: &str, tls: &Tls, headers: &[(&str, String)], timeout: Duration) -> Result<Vec<u8>, Error> {
    let resp = http::get(url, tls, headers, timeout).await?;
    if resp.status == 200 {
        return Ok(resp.body);
    }
    let why = serde_json::from_slice::<serde_json::Value>(&resp.body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&resp.body).chars().take(200).collect());
    let reason = format!("HTTP {}: {why}", resp.status);
    if resp.status == 401 || resp.status == 403 {
        return Err(Error::Refused { relay: url.to_string(), code: "auth-failed".into(), message: reason });
    }
    Err(Error::Http { url: url.to_string(), reason, unreachable: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_urls_from_base_and_name_or_full() {
        let s = CloudSource::new("http://127.0.0.1:8080/", Some("eu-west")).unwrap();
        assert_eq!(s.url, "http://127.0.0.1:8080/v1/clouds/eu-west");
        let s = CloudSource::new("wss://r.example.com/v1/clouds/us", None).unwrap();
        assert_eq!(s.url, "https://r.example.com/v1/clouds/us");
        assert!(CloudSource::new("http://h/v1/clouds/a", Some("b")).is_err());
        assert!(CloudSource::new("http://h", None).is_err());
        assert!(CloudSource::new("quic://h:1", Some("a")).is_err());
        assert!(CloudSource::new("http://h", Some("bad/name")).is_err());
    }

    #[test]
    fn endpoint_list_parses_the_relay_answer() {
        let raw = r#"{"mesh":"prod","cloud":"eu","endpoints":[{"url":"ws://a:1","cloud":"eu"},{"url":"wss://b","cloud":"us"}]}"#;
        let l: CloudEndpoints = serde_json::from_str(raw).unwrap();
        assert_eq!(l.endpoints.len(), 2);
        assert_eq!(l.endpoints[1].url, "wss://b");
    }
}
