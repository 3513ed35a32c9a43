//! A minimal HTTP/1.1 GET (`Connection: close`) over TCP or TLS, for the
//! relay's small JSON endpoints (`/v1/clouds/{cloud}`, `/v1/spaces`). The
//! response parser is a pure function; bodies are bounded.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::error::Error;
use crate::tls::{Tls, server_name};

/// Largest response read (headers and body).
pub const MAX_RESPONSE_BYTES: usize = 2 << 20;

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The (de-chunked) body.
    pub body: Vec<u8>,
}

/// `GET url` with extra headers, all of it within `timeout`.
pub async fn get(url: &str, tls: &Tls, headers: &[(&str, String)], timeout: Duration) -> Result<Response, Error> {
    let fail = |reason: String| Error::Http { url: url.to_string(), reason, unreachable: false };
    let uri: Uri = url.parse().map_err(|e| fail(format!("invalid URL: {e}")))?;
    let secure = match uri.scheme_str() {
        Some("http" | "ws") => false,
        Some("https" | "wss") => true,
        _ => return Err(fail("only http:// and https:// are supported".into())),
    };
    let host = uri.host().ok_or_else(|| fail("missing host".into()))?;
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\nUser-Agent: aether-client/{}\r\n",
        uri.authority().map(|a| a.as_str()).unwrap_or(host),
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");

    // Err((reason, unreachable)): unreachable when no connection was made.
    let exchange = async {
        let tcp = TcpStream::connect((bare_host, port)).await.map_err(|e| (format!("connecting: {e}"), true))?;
        let answer = async {
            let raw = if secure {
                let name = server_name(bare_host).map_err(|e| e.to_string())?;
                let mut s = tokio_rustls::TlsConnector::from(tls.tcp.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                s.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
                read_bounded(&mut s).await?
            } else {
                let mut s = tcp;
                s.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
                read_bounded(&mut s).await?
            };
            parse_response(&raw)
        };
        answer.await.map_err(|reason| (reason, false))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err((reason, unreachable))) => Err(Error::Http { url: url.to_string(), reason, unreachable }),
        Err(_) => Err(Error::Http {
            url: url.to_string(),
            reason: format!("no answer within {timeout:?}"),
            unreachable: true,
        }),
    }
}

async fn read_bounded<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut limited = s.take(MAX_RESPONSE_BYTES as u64 + 1);
    match limited.read_to_end(&mut out).await {
        Ok(_) => {}
        // Servers that close TLS without close_notify: keep what came.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    if out.len() > MAX_RESPONSE_BYTES {
        return Err(format!("response larger than {MAX_RESPONSE_BYTES} bytes"));
    }
    Ok(out)
}

/// Parses a complete HTTP/1.1 response (the connection was closed after it).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let head_end = find(raw, b"\r\n\r\n").ok_or("truncated response (no end of headers)")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "response headers are not UTF-8")?;
    let rest = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x response: {status_line:?}"));
    }
    let status: u16 = code.parse().map_err(|_| format!("bad status line {status_line:?}"))?;
    let (mut chunked, mut length) = (false, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| format!("bad Content-Length {value:?}"))?);
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n).ok_or_else(|| format!("truncated body: {} of {n} bytes", rest.len()))?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or("truncated chunked body")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size")?;
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or("truncated chunk")?;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_close_delimited_bodies() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 2\r\n\r\n{}junk")
            .unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"{}"[..]));
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\n{\"a\r\n2\r\n\":\r\n1\r\n1\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!((r.status, &r.body[..]), (404, &b"{\"a\":1"[..]));
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\nabc").unwrap();
        assert_eq!(&r.body[..], b"abc");
    }

    #[test]
    fn refuses_malformed_responses() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"[..],
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        ] {
            assert!(parse_response(raw).is_err(), "{:?}", String::from_utf8_lossy(raw));
        }
    }
}
