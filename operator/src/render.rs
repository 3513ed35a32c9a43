//! `aether-operator render -f FILE...`: every object the operator would apply
//! for the given resources, without a cluster.

use std::path::PathBuf;

use anyhow::{Context, bail};
use kube::ResourceExt;

use crate::build;
use crate::crd::{ClientQuota, Mesh, Node};
use crate::validate;

/// Resources read from YAML files.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Meshes.
    pub meshes: Vec<Mesh>,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Client quotas.
    pub quotas: Vec<ClientQuota>,
}

/// Parses every YAML document in `text` that is a Mesh, Node or ClientQuota;
/// anything else is an error naming it.
pub fn parse(text: &str, origin: &str, into: &mut Inputs) -> anyhow::Result<()> {
    // YAML 1.2 booleans only: `name: n` or `cloud: no` are names, not `false`.
    let options = serde_saphyr::options! { strict_booleans: true };
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_str_multiple_with_options::<serde_json::Value, Vec<_>>(text, options)
            .with_context(|| format!("{origin}: not YAML"))?;
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let kind = doc.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_owned();
        let api = doc.get("apiVersion").and_then(|k| k.as_str()).unwrap_or("").to_owned();
        if api != "aethermesh.io/v1alpha1" {
            bail!("{origin} document {}: apiVersion {api:?} is not aethermesh.io/v1alpha1", i + 1);
        }
        let ctx = || format!("{origin} document {} ({kind})", i + 1);
        let fill_ns = |mut v: serde_json::Value| {
            if v.pointer("/metadata/namespace").is_none()
                && let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut())
            {
                m.insert("namespace".into(), "default".into());
            }
            v
        };
        match kind.as_str() {
            "Mesh" => into.meshes.push(serde_json::from_value(fill_ns(doc)).with_context(ctx)?),
            "Node" => into.nodes.push(serde_json::from_value(fill_ns(doc)).with_context(ctx)?),
            "ClientQuota" => into.quotas.push(serde_json::from_value(fill_ns(doc)).with_context(ctx)?),
            other => bail!("{origin} document {}: kind {other:?} is not Mesh, Node or ClientQuota", i + 1),
        }
    }
    Ok(())
}

/// Validates the inputs and builds every child, as JSON objects in apply order.
pub fn render(inputs: &Inputs) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut problems = Vec::new();
    for n in &inputs.nodes {
        match inputs.meshes.iter().find(|m| m.name_any() == n.spec.mesh && m.namespace() == n.namespace()) {
            None => problems.push(format!("Node {}: no Mesh {:?} in its namespace", n.name_any(), n.spec.mesh)),
            Some(m) => problems.extend(validate::node(n, m).into_iter().map(|p| format!("Node {}: {p}", n.name_any()))),
        }
    }
    for m in &inputs.meshes {
        problems.extend(validate::mesh(m).into_iter().map(|p| format!("Mesh {}: {p}", m.name_any())));
    }
    for q in &inputs.quotas {
        problems.extend(validate::quota(q).into_iter().map(|p| format!("ClientQuota {}: {p}", q.name_any())));
    }
    if !problems.is_empty() {
        bail!("invalid resources:\n  {}", problems.join("\n  "));
    }
    let nodes: Vec<&Node> = inputs.nodes.iter().collect();
    let quotas: Vec<&ClientQuota> = inputs.quotas.iter().collect();
    let mut out = Vec::new();
    for m in &inputs.meshes {
        let same_ns = |n: &&Node| n.namespace() == m.namespace();
        let nodes: Vec<&Node> = nodes.iter().copied().filter(same_ns).collect();
        out.extend(build::build_all(m, &nodes, &quotas).to_values());
    }
    Ok(out)
}

/// Reads `files` and prints every object as YAML documents.
pub fn run(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut inputs = Inputs::default();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        parse(&text, &f.display().to_string(), &mut inputs)?;
    }
    if inputs.meshes.is_empty() {
        bail!("no Mesh in the given files: nothing to render");
    }
    for obj in render(&inputs)? {
        print!("---\n{}", serde_saphyr::to_string(&obj).context("encoding YAML")?);
    }
    Ok(())
}
