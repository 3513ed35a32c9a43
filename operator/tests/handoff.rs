//! The operator's hand-off probe against a real relay's `/v1/admin/shards`.

#[path = "../../relay/tests/common/mod.rs"]
mod relay;

use aether_operator::controller::{Handoff, HandoffState, HttpHandoff};
use relay::{Relay, eventually, free_port, tempdir};

#[tokio::test]
async fn a_relay_out_of_the_membership_with_nothing_held_is_safe_to_stop() {
    let dir = tempdir();
    let members = dir.path().join("members");
    let port = free_port();
    std::fs::write(&members, format!("r1=127.0.0.1:{port}\n")).unwrap();
    let data = tempdir();
    let r1 = Relay::start_member(
        "r1",
        port,
        &[],
        data.path(),
        &["--membership-file", members.to_str().unwrap(), "--membership-poll", "100ms"],
    );
    let url = format!("http://{}/v1/admin/shards", r1.addr);
    let state = HttpHandoff.state(url.clone(), None).await.unwrap();
    assert!(state.in_membership, "{state:?}");
    assert!(state.replication_healthy());
    // The operator drops it from the membership file: it leaves, holding nothing.
    std::fs::write(&members, "# drained\n").unwrap();
    eventually("the relay to leave the membership", || async {
        match HttpHandoff.state(url.clone(), None).await {
            Ok(HandoffState { in_membership: false, pending_shards: 0, .. }) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Unreachable relays are an error, not "done".
    drop(r1);
    assert!(HttpHandoff.state(url, None).await.is_err());
}

/// A TLS mesh: the probe verifies the relay against the mesh's CA (and
/// refuses without it).
#[tokio::test]
async fn the_probe_speaks_tls_verified_by_the_mesh_ca() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    let dir = tempdir();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let port = free_port();
    let data = tempdir();
    let r1 = Relay::start_member(
        "r1",
        port,
        &[format!("r1=127.0.0.1:{port}")],
        data.path(),
        &["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()],
    );
    let url = format!("https://{}/v1/admin/shards", r1.addr);
    let ca = std::sync::Arc::new(ca_cert.pem().into_bytes());
    let state = HttpHandoff.state(url.clone(), Some(ca)).await.unwrap();
    assert!(state.in_membership && state.replication_healthy(), "{state:?}");
    let err = HttpHandoff.state(url.clone(), None).await.unwrap_err();
    assert!(err.contains("ca.crt"), "{err}");
    // Another CA does not vouch for this relay.
    let other = rcgen::generate_simple_self_signed(vec!["elsewhere".to_string()]).unwrap();
    let err = HttpHandoff.state(url, Some(std::sync::Arc::new(other.cert.pem().into_bytes()))).await.unwrap_err();
    assert!(err.contains("TLS"), "{err}");
}
