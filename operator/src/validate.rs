//! The first step of every reconcile: a resource that is not valid is reported
//! (status condition, event, log), never built. The API server enforces the
//! schema and CEL rules on writes; these checks also cover objects stored
//! before a CRD update and rules across resources.

use kube::ResourceExt;

use crate::crd::{ClientQuota, Mesh, Node};

/// Problems with `mesh`, empty when it is valid.
pub fn mesh(mesh: &Mesh) -> Vec<String> {
    let mut out = Vec::new();
    if let Err(e) = mesh.validate_cel() {
        out.push(e.to_string());
    }
    let s = &mesh.spec;
    if s.write_quorum > s.replication_factor {
        out.push(format!("writeQuorum {} exceeds replicationFactor {}", s.write_quorum, s.replication_factor));
    }
    let names: Vec<&str> = s.clouds.iter().map(|c| c.name.as_str()).collect();
    for (i, c) in s.clouds.iter().enumerate() {
        if names[..i].contains(&c.name.as_str()) {
            out.push(format!("cloud {:?} is listed twice", c.name));
        }
        for p in &c.proximity {
            if !names.contains(&p.as_str()) {
                out.push(format!("cloud {:?}: proximity names unknown cloud {p:?}", c.name));
            }
        }
    }
    if let Some(auth) = &s.auth
        && auth.mesh_token_secret.is_none()
        && s.tls.is_none()
    {
        out.push("auth without tls: set auth.meshTokenSecret or tls so relays authenticate each other".into());
    }
    out
}

/// Problems with `node` as a member of `mesh`.
pub fn node(node: &Node, mesh: &Mesh) -> Vec<String> {
    let mut out = Vec::new();
    // `<name>-mesh` is a Service and `<name>-<ordinal>` pod names: a DNS-1035 label with room.
    let name = node.name_any();
    let label = name.len() <= 47
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !label {
        out.push(format!("name {name:?} must be a DNS-1035 label of at most 47 characters (a-z, 0-9, '-')"));
    }
    if let Err(e) = node.validate_cel() {
        out.push(e.to_string());
    }
    if !mesh.spec.clouds.is_empty() && !mesh.spec.clouds.iter().any(|c| c.name == node.spec.cloud) {
        out.push(format!("cloud {:?} is not one of mesh {}'s clouds", node.spec.cloud, mesh.name_any()));
    }
    for e in &node.spec.public_endpoints {
        if !["ws://", "wss://", "http://", "https://"].iter().any(|p| e.starts_with(p)) {
            out.push(format!("public endpoint {e:?} is not a ws(s):// or http(s):// URL"));
        }
    }
    out
}

/// Problems with `quota`.
pub fn quota(quota: &ClientQuota) -> Vec<String> {
    let mut out = Vec::new();
    if let Err(e) = quota.validate_cel() {
        out.push(e.to_string());
    }
    if quota.spec.subject.uid.is_some() == quota.spec.subject.parent_uid.is_some() {
        out.push("set exactly one of subject.uid and subject.parentUid".into());
    }
    out
}
