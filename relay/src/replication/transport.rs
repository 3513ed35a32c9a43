//! How relays reach each other: tonic channels (plaintext or mutual TLS,
//! cached per address) and the metadata every call carries (the caller's
//! member name and the mesh token).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_proto::v1::mesh_client::MeshClient;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::config::MeshArgs;

/// Metadata key naming the calling member.
pub const MEMBER_HEADER: &str = "aether-member";

/// Largest gRPC message accepted from a peer.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Client side of the mesh: channels and request metadata.
#[derive(Clone)]
pub struct MeshTransport {
    me: MetadataValue<tonic::metadata::Ascii>,
    bearer: Option<MetadataValue<tonic::metadata::Ascii>>,
    tls: Option<ClientTlsConfig>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

/// Server side: who may call.
#[derive(Clone)]
pub struct MeshAuth {
    token_digest: Option<ring::digest::Digest>,
}

/// TLS settings for both sides, read once at boot.
pub struct MeshTls {
    /// For the gRPC server.
    pub server: ServerTlsConfig,
    /// For outgoing calls.
    pub client: ClientTlsConfig,
}

/// Loads the mesh certificates, if configured.
pub fn load_tls(args: &MeshArgs) -> anyhow::Result<Option<MeshTls>> {
    let (Some(cert), Some(key), Some(ca)) = (&args.mesh_tls_cert, &args.mesh_tls_key, &args.mesh_tls_ca) else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()));
    let identity = Identity::from_pem(read(cert)?, read(key)?);
    let ca = Certificate::from_pem(read(ca)?);
    Ok(Some(MeshTls {
        server: ServerTlsConfig::new().identity(identity.clone()).client_ca_root(ca.clone()),
        client: ClientTlsConfig::new().identity(identity).ca_certificate(ca),
    }))
}

impl MeshTransport {
    /// A transport calling as member `me`.
    pub fn new(me: &str, token: Option<&str>, tls: Option<ClientTlsConfig>) -> anyhow::Result<Self> {
        let bearer = match token {
            Some(t) => Some(
                format!("Bearer {t}").parse().map_err(|_| anyhow::anyhow!("the mesh token must be printable ASCII"))?,
            ),
            None => None,
        };
        Ok(Self { me: me.parse()?, bearer, tls, channels: Arc::default() })
    }

    /// A client for the relay at `addr` (`HOST:PORT`); connects lazily and
    /// reconnects by itself.
    pub fn client(&self, addr: &str) -> Result<MeshClient<Channel>, tonic::Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
                    .map_err(|e| tonic::Status::invalid_argument(format!("bad peer address {addr:?}: {e}")))?
                    .connect_timeout(Duration::from_secs(3))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .keep_alive_while_idle(true);
                if let Some(tls) = &self.tls {
                    ep = ep.tls_config(tls.clone()).map_err(|e| tonic::Status::internal(e.to_string()))?;
                }
                let c = ep.connect_lazy();
                channels.insert(addr.to_owned(), c.clone());
                c
            }
        };
        Ok(MeshClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Wraps `inner` in a request carrying this member's name, the token and
    /// the current trace context.
    pub fn request<T>(&self, inner: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(inner);
        req.metadata_mut().insert(MEMBER_HEADER, self.me.clone());
        if let Some(b) = &self.bearer {
            req.metadata_mut().insert("authorization", b.clone());
        }
        crate::telemetry::inject(&mut req);
        req
    }
}

impl MeshAuth {
    /// Requires `token` when set.
    pub fn new(token: Option<&str>) -> Self {
        Self { token_digest: token.map(|t| ring::digest::digest(&ring::digest::SHA256, t.as_bytes())) }
    }

    /// Checks a call's token (in constant time) and returns the caller's member name.
    pub fn check<T>(&self, req: &tonic::Request<T>) -> Result<String, tonic::Status> {
        if let Some(want) = &self.token_digest {
            let got = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let ok = got.is_some_and(|t| {
                let d = ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
                bool::from(d.as_ref().ct_eq(want.as_ref()))
            });
            if !ok {
                return Err(tonic::Status::unauthenticated("missing or wrong mesh token"));
            }
        }
        let member = req.metadata().get(MEMBER_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
        crate::config::parse_member_name(member).map_err(tonic::Status::invalid_argument)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_and_member_name_are_checked() {
        let auth = MeshAuth::new(Some("s3cret"));
        let good = MeshTransport::new("r1", Some("s3cret"), None).unwrap();
        let bad = MeshTransport::new("r1", Some("guess"), None).unwrap();
        let none = MeshTransport::new("r1", None, None).unwrap();
        assert_eq!(auth.check(&good.request(())).unwrap(), "r1");
        for req in [bad.request(()), none.request(())] {
            assert_eq!(auth.check(&req).unwrap_err().code(), tonic::Code::Unauthenticated);
        }
        // Without a token configured, any caller with a valid member name is accepted.
        assert!(MeshAuth::new(None).check(&none.request(())).is_ok());
        let mut nameless = tonic::Request::new(());
        nameless.metadata_mut().insert("authorization", "Bearer s3cret".parse().unwrap());
        assert_eq!(auth.check(&nameless).unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
