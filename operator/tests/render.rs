//! The operator's manifests without a cluster: the checked-in CRDs are
//! current, and everything `render` builds from the examples passes the
//! official Kubernetes JSON schemas in strict mode (kubernetes-validate,
//! installed by `.ci/run`).

use std::path::Path;
use std::process::Command;

use aether_operator::render;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root")
}

#[test]
fn checked_in_crds_are_current() {
    let want = aether_operator::crds_yaml().unwrap();
    let have = std::fs::read_to_string(repo().join("crds/aethermesh.io.yaml")).unwrap();
    assert!(
        have == want,
        "crds/aethermesh.io.yaml is stale: run `cargo run -p aether-operator -- crdgen > crds/aethermesh.io.yaml`"
    );
}

fn render_files(files: &[&str]) -> Vec<serde_json::Value> {
    let mut inputs = render::Inputs::default();
    for f in files {
        let p = repo().join("deploy/examples").join(f);
        render::parse(&std::fs::read_to_string(&p).unwrap(), f, &mut inputs).unwrap();
    }
    render::render(&inputs).unwrap()
}

fn kubernetes_validate(file: &Path) {
    let bin = std::env::var("AETHER_KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".into());
    let out = Command::new(&bin)
        .args(["--strict", "-k", "1.36.0"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("running {bin} (pip install kubernetes-validate; .ci/run does): {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{} fails the Kubernetes 1.36 schemas:\n{text}", file.display());
    assert!(!text.contains("ERROR") && text.contains("passed"), "{text}");
}

#[test]
fn rendered_examples_pass_the_official_schemas() {
    let dir = tempfile::tempdir().unwrap();
    for (i, set) in [&["mesh.yaml", "nodes.yaml", "quotas.yaml"][..], &["dev.yaml"][..]].iter().enumerate() {
        let objects = render_files(set);
        let kinds: Vec<&str> = objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert!(kinds.contains(&"StatefulSet") && kinds.contains(&"ConfigMap"), "{kinds:?}");
        // ServiceMonitor is prometheus-operator's, not in the Kubernetes schemas.
        let docs: Vec<String> = objects
            .iter()
            .filter(|o| o["kind"] != "ServiceMonitor")
            .map(|o| serde_saphyr::to_string(o).unwrap())
            .collect();
        let file = dir.path().join(format!("set-{i}.yaml"));
        std::fs::write(&file, docs.join("---\n")).unwrap();
        kubernetes_validate(&file);
    }
    kubernetes_validate(&repo().join("crds/aethermesh.io.yaml"));
    kubernetes_validate(&repo().join("deploy/operator.yaml"));
}

#[test]
fn render_rejects_what_it_cannot_build() {
    let mesh = "apiVersion: aethermesh.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\n";
    let node = "---\napiVersion: aethermesh.io/v1alpha1\nkind: Node\nmetadata: {name: n}\n";
    let cases = [
        (format!("{mesh}spec: {{replicationFactor: 2, writeQuorum: 3}}\n"), "writeQuorum"),
        (
            format!("{mesh}spec: {{clouds: [{{name: eu}}]}}\n{node}spec: {{mesh: m, cloud: us}}\n"),
            "not one of mesh m's clouds",
        ),
        (format!("{mesh}spec: {{}}\n{node}spec: {{mesh: other, cloud: eu}}\n"), "no Mesh \"other\""),
        (
            format!(
                "{mesh}spec: {{}}\n---\napiVersion: aethermesh.io/v1alpha1\nkind: ClientQuota\nmetadata: {{name: q}}\nspec: {{mesh: m, subject: {{uid: a, parentUid: b}}}}\n"
            ),
            "exactly one",
        ),
    ];
    for (yaml, why) in cases {
        let mut inputs = render::Inputs::default();
        render::parse(&yaml, "test", &mut inputs).unwrap();
        let err = format!("{:#}", render::render(&inputs).unwrap_err());
        assert!(err.contains(why), "{why}: {err}");
    }
    let mut inputs = render::Inputs::default();
    let err = render::parse("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n", "t", &mut inputs).unwrap_err();
    assert!(format!("{err:#}").contains("not aethermesh.io/v1alpha1"), "{err:#}");
}
