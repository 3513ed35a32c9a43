//! TLS for `wss://`, `https://` and QUIC: rustls with the *ring* provider
//! only (no aws-lc), trusting the Mozilla roots (webpki-roots) plus the PEM
//! certificates of an optional CA file (the relay's dev mode writes its
//! self-signed QUIC certificate to `<data-dir>/quic-cert.pem`).

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::error::Error;

/// ALPN of the native protocol over QUIC.
pub const ALPN_QUIC: &[u8] = b"aether/1";

/// TLS trust for every transport (rustls, *ring*): built once per client
/// from the Mozilla roots and an optional CA file.
#[derive(Clone)]
pub struct Tls {
    /// For WebSocket over TLS and HTTPS (ALPN `http/1.1`).
    pub(crate) tcp: Arc<rustls::ClientConfig>,
    /// For QUIC (TLS 1.3, ALPN `aether/1`).
    pub(crate) quic: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

impl Tls {
    /// Trusts webpki-roots and, when given, every certificate in `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<Tls, Error> {
        let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(path) = ca_file {
            let certs = load_pem_certs(path)?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(Error::Tls(format!("{}: no usable certificate", path.display())));
            }
        }
        let roots = Arc::new(roots);
        let build = |alpn: &[u8], tls13_only: bool| -> Result<Arc<rustls::ClientConfig>, Error> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider);
            let builder = if tls13_only {
                builder.with_protocol_versions(&[&rustls::version::TLS13])
            } else {
                builder.with_safe_default_protocol_versions()
            }
            .map_err(|e| Error::Tls(e.to_string()))?;
            let mut config = builder.with_root_certificates(roots.clone()).with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(config))
        };
        Ok(Tls { tcp: build(b"http/1.1", false)?, quic: build(ALPN_QUIC, true)? })
    }
}

/// Reads every certificate of a PEM file.
fn load_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let fail = |why: String| Error::Tls(format!("CA file {}: {why}", path.display()));
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| fail(e.to_string()))?;
    let certs = iter.collect::<Result<Vec<_>, _>>().map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The TLS server name for `host` (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(host.to_string()).map_err(|e| Error::Tls(format!("server name {host:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        assert!(Tls::new(Some(&missing)).unwrap_err().to_string().contains("nope.pem"));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        assert!(Tls::new(Some(&empty)).unwrap_err().to_string().contains("no PEM certificate"));
        let tls = Tls::new(None).unwrap();
        assert_eq!(tls.quic.alpn_protocols, vec![b"aether/1".to_vec()]);
        assert!(server_name("127.0.0.1").is_ok() && server_name("relay.example.com").is_ok());
        assert!(server_name("bad name").is_err());
    }
}
