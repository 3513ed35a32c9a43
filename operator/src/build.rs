//! Pure builders: validated `Mesh`, `Node`s and `ClientQuota`s in, every child
//! object out. No I/O; `render` and the reconciler both use them, and unit
//! tests check them from the YAML fixtures in `deploy/examples/`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SecretEnvSource, SecretKeySelector, SecretVolumeSource, SecurityContext, Service,
    ServicePort, ServiceSpec, TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde::Serialize;

use crate::crd::{ClientQuota, Mesh, Node};

/// Client port (WebSocket, HTTP, metrics) of every relay.
pub const CLIENT_PORT: i32 = 8080;
/// Relay-to-relay gRPC port.
pub const MESH_PORT: i32 = 7070;
/// The ledger sidecar's metrics port.
pub const LEDGER_PORT: i32 = 9180;
/// Where the mesh ConfigMap is mounted.
const CONFIG_DIR: &str = "/etc/aether/config";
/// Where TLS material is mounted.
const TLS_DIR: &str = "/etc/aether/tls";
/// The data volume's mount point.
const DATA_DIR: &str = "/data";
/// Label keys.
pub const LABEL_MESH: &str = "aethermesh.io/mesh";
/// The Node a pod belongs to.
pub const LABEL_NODE: &str = "aethermesh.io/node";
/// The cloud a pod serves.
pub const LABEL_CLOUD: &str = "aethermesh.io/cloud";
/// Field manager for server-side apply.
pub const MANAGER: &str = "aether-operator";

/// Name of the mesh-wide ConfigMap (membership, endpoint lists, quotas).
pub fn config_map_name(mesh: &str) -> String {
    format!("{mesh}-mesh")
}

/// The admin URL of pod `ordinal` of `node` (its hand-off state).
pub fn admin_shards_url(mesh: &Mesh, node: &str, ordinal: i32) -> String {
    let ns = mesh.namespace().unwrap_or_else(|| "default".into());
    let scheme = if mesh.spec.tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{node}-{ordinal}.{}.{ns}.svc:{CLIENT_PORT}/v1/admin/shards", headless_name(node))
}

/// Name of a Node's headless Service (pod DNS names for the mesh).
pub fn headless_name(node: &str) -> String {
    format!("{node}-mesh")
}

/// Labels of a Node's pods.
pub fn pod_labels(mesh: &Mesh, node: &Node) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "aether-relay".into()),
        ("app.kubernetes.io/instance".into(), node.name_any()),
        ("app.kubernetes.io/managed-by".into(), MANAGER.into()),
        (LABEL_MESH.into(), mesh.name_any()),
        (LABEL_NODE.into(), node.name_any()),
        (LABEL_CLOUD.into(), node.spec.cloud.clone()),
    ])
}

fn selector_labels(node: &Node) -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".into(), "aether-relay".into()), (LABEL_NODE.into(), node.name_any())])
}

/// An owner reference to `owner`, when it came from the API server (it has a uid).
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    owner.controller_owner_ref(&())
}

fn meta<K: Resource<DynamicType = ()>>(name: String, owner: &K, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: owner.meta().namespace.clone(),
        labels: Some(labels),
        owner_references: owner_ref(owner).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// Every pod of every Node of the mesh, as the relays' membership file
/// (`NAME=HOST:PORT`, pod DNS names through each Node's headless Service).
/// Pods at or above `draining[node]` are left out (they are handing off).
pub fn membership(mesh: &Mesh, nodes: &[&Node], draining: &BTreeMap<String, i32>) -> String {
    let ns = mesh.namespace().unwrap_or_else(|| "default".into());
    let mut out = String::from("# Written by aether-operator: every relay of the mesh, NAME=HOST:PORT.\n");
    let mut sorted: Vec<&&Node> = nodes.iter().collect();
    sorted.sort_by_key(|n| n.name_any());
    for node in sorted {
        let name = node.name_any();
        let keep = draining.get(&name).copied().unwrap_or(node.spec.replicas);
        for i in 0..keep.min(node.spec.replicas).max(0) {
            out.push_str(&format!("{name}-{i}={name}-{i}.{}.{ns}.svc:{MESH_PORT}\n", headless_name(&name)));
        }
    }
    out
}

/// One endpoint in a cloud's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Base URL.
    pub url: String,
    /// Its cloud.
    pub cloud: String,
}

/// The endpoints clients of `node`'s cloud reach it by: its public endpoints,
/// or its in-cluster client Service.
fn node_endpoints(node: &Node, ns: &str) -> Vec<String> {
    if node.spec.public_endpoints.is_empty() {
        vec![format!("ws://{}.{ns}.svc:{CLIENT_PORT}", node.name_any())]
    } else {
        node.spec.public_endpoints.clone()
    }
}

/// The per-cloud endpoint lists (the relays' `--clouds-file`): for every
/// cloud, its own Nodes' endpoints, then those of the clouds in its
/// proximity order, then any remaining cloud's (alphabetically).
pub fn endpoint_lists(mesh: &Mesh, nodes: &[&Node]) -> serde_json::Value {
    let ns = mesh.namespace().unwrap_or_else(|| "default".into());
    let mut by_cloud: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut sorted: Vec<&&Node> = nodes.iter().collect();
    sorted.sort_by_key(|n| n.name_any());
    for n in sorted {
        by_cloud.entry(n.spec.cloud.clone()).or_default().extend(node_endpoints(n, &ns));
    }
    let mut clouds: Vec<String> = mesh.spec.clouds.iter().map(|c| c.name.clone()).collect();
    for c in by_cloud.keys() {
        if !clouds.contains(c) {
            clouds.push(c.clone());
        }
    }
    let mut lists = serde_json::Map::new();
    for cloud in &clouds {
        let proximity =
            mesh.spec.clouds.iter().find(|c| &c.name == cloud).map(|c| c.proximity.clone()).unwrap_or_default();
        let mut order = vec![cloud.clone()];
        order.extend(proximity.into_iter().filter(|c| c != cloud));
        let mut rest: Vec<String> = clouds.iter().filter(|c| !order.contains(c)).cloned().collect();
        rest.sort();
        order.extend(rest);
        let mut list = Vec::new();
        for c in order {
            for url in by_cloud.get(&c).into_iter().flatten() {
                list.push(Endpoint { url: url.clone(), cloud: c.clone() });
            }
        }
        lists.insert(cloud.clone(), serde_json::to_value(list).expect("plain data"));
    }
    serde_json::json!({ "version": 1, "mesh": mesh.name_any(), "clouds": lists })
}

/// The compiled quotas document relays load (`quotas.json`).
pub fn quotas(mesh: &Mesh, quotas: &[&ClientQuota]) -> serde_json::Value {
    let mut sorted: Vec<&&ClientQuota> = quotas.iter().collect();
    sorted.sort_by_key(|q| q.name_any());
    let items: Vec<serde_json::Value> = sorted
        .iter()
        .map(|q| {
            serde_json::json!({
                "name": q.name_any(),
                "uid": q.spec.subject.uid,
                "parentUid": q.spec.subject.parent_uid,
                "limits": q.spec.limits,
                "warningThresholdPercent": q.spec.warning_threshold_percent,
            })
        })
        .collect();
    serde_json::json!({ "version": 1, "mesh": mesh.name_any(), "quotas": items })
}

/// The mesh-wide ConfigMap: membership file, endpoint lists, quotas.
pub fn build_config_map(
    mesh: &Mesh,
    nodes: &[&Node],
    client_quotas: &[&ClientQuota],
    draining: &BTreeMap<String, i32>,
) -> ConfigMap {
    let labels =
        BTreeMap::from([("app.kubernetes.io/managed-by".into(), MANAGER.into()), (LABEL_MESH.into(), mesh.name_any())]);
    let pretty = |v: serde_json::Value| serde_json::to_string_pretty(&v).expect("plain data");
    let mut metadata = meta(config_map_name(&mesh.name_any()), mesh, labels);
    // Relays mount it: it must outlive the Mesh while any of its Nodes (and their pods) remain.
    if let Some(owners) = metadata.owner_references.as_mut() {
        for n in nodes {
            if let Some(mut o) = owner_ref(*n) {
                o.controller = Some(false);
                o.block_owner_deletion = None;
                owners.push(o);
            }
        }
    }
    ConfigMap {
        metadata,
        data: Some(BTreeMap::from([
            ("members".into(), membership(mesh, nodes, draining)),
            ("clouds.json".into(), pretty(endpoint_lists(mesh, nodes))),
            ("quotas.json".into(), pretty(quotas(mesh, client_quotas))),
        ])),
        ..ConfigMap::default()
    }
}

fn http_probe(path: &str, port: i32, period: i32, failures: i32) -> Probe {
    probe(path, port, period, failures, false)
}

/// An HTTP(S) probe; `https` when the relay serves its client port over TLS.
fn probe(path: &str, port: i32, period: i32, failures: i32, https: bool) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            scheme: https.then(|| "HTTPS".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn secret_env(name: &str, secret: &crate::crd::SecretKey) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn pod_name_env() -> EnvVar {
    EnvVar {
        name: "POD_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..SecurityContext::default()
    }
}

/// Pods run as a fixed non-root user with the runtime's default seccomp profile
/// (Pod Security "restricted"); the data volume is group-owned by it.
fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        fs_group: Some(65532),
        ..PodSecurityContext::default()
    }
}

/// `aether-ledger` store flags and the credentials, for the sidecar and the init container.
fn ledger_args(mesh: &Mesh) -> Option<(Vec<String>, Vec<EnvFromSource>)> {
    let os = mesh.spec.object_storage.as_ref()?;
    let mut args =
        vec!["--mesh".into(), mesh.name_any(), "--node".into(), "$(POD_NAME)".into(), "--store".into(), os.url.clone()];
    if let Some(e) = &os.endpoint {
        args.extend(["--s3-endpoint".into(), e.clone()]);
    }
    if let Some(r) = &os.region {
        args.extend(["--s3-region".into(), r.clone()]);
    }
    if os.allow_http {
        args.push("--allow-http".into());
    }
    let env_from = os
        .credentials_secret
        .iter()
        .map(|s| EnvFromSource {
            secret_ref: Some(SecretEnvSource { name: s.clone(), optional: Some(false) }),
            ..EnvFromSource::default()
        })
        .collect();
    Some((args, env_from))
}

/// The relay container's arguments.
pub fn relay_args(mesh: &Mesh, node: &Node) -> Vec<String> {
    let ns = mesh.namespace().unwrap_or_else(|| "default".into());
    let s = &mesh.spec;
    let mut a: Vec<String> = vec![
        "run".into(),
        "--name".into(),
        "$(POD_NAME)".into(),
        "--listen".into(),
        format!("0.0.0.0:{CLIENT_PORT}"),
        "--mesh-listen".into(),
        format!("0.0.0.0:{MESH_PORT}"),
        "--mesh-advertise".into(),
        format!("$(POD_NAME).{}.{ns}.svc:{MESH_PORT}", headless_name(&node.name_any())),
        "--membership-file".into(),
        format!("{CONFIG_DIR}/members"),
        "--clouds-file".into(),
        format!("{CONFIG_DIR}/clouds.json"),
        "--data-dir".into(),
        DATA_DIR.into(),
        "--shards".into(),
        s.shards.to_string(),
        "--replication".into(),
        s.replication_factor.to_string(),
        "--write-quorum".into(),
        s.write_quorum.to_string(),
        "--log-format".into(),
        "json".into(),
    ];
    match &s.tls {
        Some(_) => a.extend([
            "--mesh-tls-cert".into(),
            format!("{TLS_DIR}/tls.crt"),
            "--mesh-tls-key".into(),
            format!("{TLS_DIR}/tls.key"),
            "--mesh-tls-ca".into(),
            format!("{TLS_DIR}/ca.crt"),
            "--tls-cert".into(),
            format!("{TLS_DIR}/tls.crt"),
            "--tls-key".into(),
            format!("{TLS_DIR}/tls.key"),
        ]),
        None => a.push("--mesh-plaintext".into()),
    }
    if s.object_storage.is_some() {
        a.push("--ledger-sidecar".into());
    }
    if let Some(l) = &s.limits {
        for (flag, v) in [
            ("--limit-msgs-per-sec", l.msgs_per_sec),
            ("--limit-burst", l.burst),
            ("--limit-conns", l.connections),
            ("--limit-conns-per-ip", l.connections_per_ip),
            ("--limit-value-bytes", l.value_bytes),
        ] {
            if let Some(v) = v {
                a.extend([flag.into(), v.to_string()]);
            }
        }
        // A value travels inside a message inside a frame: both must hold it.
        if let Some(v) = l.value_bytes.filter(|v| *v > 48 * 1024) {
            let room = v.saturating_add(16 * 1024);
            a.extend(["--limit-message-bytes".into(), room.to_string()]);
            a.extend(["--limit-frame-bytes".into(), room.max(256 * 1024).to_string()]);
        }
    }
    a
}

/// A Node's StatefulSet: restore init container, relay, ledger sidecar.
pub fn build_statefulset(mesh: &Mesh, node: &Node) -> StatefulSet {
    let labels = pod_labels(mesh, node);
    let name = node.name_any();
    let image = mesh.spec.image.clone();
    let mut relay_env = vec![pod_name_env()];
    if let Some(auth) = &mesh.spec.auth {
        if let Some(t) = &auth.token_secret {
            relay_env.push(secret_env("AETHER_AUTH_TOKEN", t));
        }
        if let Some(t) = &auth.mesh_token_secret {
            relay_env.push(secret_env("AETHER_MESH_TOKEN", t));
        }
    }
    let mut mounts = vec![
        VolumeMount { name: "data".into(), mount_path: DATA_DIR.into(), ..VolumeMount::default() },
        VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ];
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map_name(&mesh.name_any()),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    if let Some(tls) = &mesh.spec.tls {
        mounts.push(VolumeMount {
            name: "tls".into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.secret_name.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let relay = Container {
        name: "relay".into(),
        image: Some(image.clone()),
        command: Some(vec!["aether-relay".into()]),
        args: Some(relay_args(mesh, node)),
        env: Some(relay_env),
        ports: Some(vec![
            ContainerPort { name: Some("client".into()), container_port: CLIENT_PORT, ..ContainerPort::default() },
            ContainerPort { name: Some("mesh".into()), container_port: MESH_PORT, ..ContainerPort::default() },
        ]),
        // Boot replays the ledger, which can take a while on a large volume. With TLS the
        // client port speaks HTTPS only (the kubelet does not verify the certificate).
        startup_probe: Some(probe("/healthz", CLIENT_PORT, 5, 120, mesh.spec.tls.is_some())),
        readiness_probe: Some(probe("/readyz", CLIENT_PORT, 5, 2, mesh.spec.tls.is_some())),
        liveness_probe: Some(probe("/healthz", CLIENT_PORT, 10, 6, mesh.spec.tls.is_some())),
        resources: node.spec.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(restricted()),
        ..Container::default()
    };
    let mut containers = vec![relay];
    let mut init_containers = Vec::new();
    if let Some((store, env_from)) = ledger_args(mesh) {
        let data = vec![VolumeMount { name: "data".into(), mount_path: DATA_DIR.into(), ..VolumeMount::default() }];
        let mut ship = vec![
            "ship".into(),
            "--data-dir".into(),
            DATA_DIR.into(),
            "--listen".into(),
            format!("0.0.0.0:{LEDGER_PORT}"),
        ];
        ship.extend(store.iter().cloned());
        // No readiness probe: a store outage must not take the relay out of its Service
        // (the relay bounds the backlog itself; see docs/ledger.md).
        containers.push(Container {
            name: "ledger".into(),
            image: Some(image.clone()),
            command: Some(vec!["aether-ledger".into()]),
            args: Some(ship),
            env: Some(vec![pod_name_env()]),
            env_from: Some(env_from.clone()),
            ports: Some(vec![ContainerPort {
                name: Some("ledger-metrics".into()),
                container_port: LEDGER_PORT,
                ..ContainerPort::default()
            }]),
            liveness_probe: Some(http_probe("/healthz", LEDGER_PORT, 10, 6)),
            volume_mounts: Some(data.clone()),
            security_context: Some(restricted()),
            ..Container::default()
        });
        let mut restore =
            vec!["restore".into(), "--data-dir".into(), DATA_DIR.into(), "--if-empty".into(), "--allow-missing".into()];
        restore.extend(store);
        init_containers.push(Container {
            name: "restore".into(),
            image: Some(image),
            command: Some(vec!["aether-ledger".into()]),
            args: Some(restore),
            env: Some(vec![pod_name_env()]),
            env_from: Some(env_from),
            volume_mounts: Some(data),
            security_context: Some(restricted()),
            ..Container::default()
        });
    }
    let sched = &node.spec.scheduling;
    let spread = if sched.topology_spread_constraints.is_empty() {
        vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "topology.kubernetes.io/zone".into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(node)),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        }]
    } else {
        sched.topology_spread_constraints.clone()
    };
    let pod = PodSpec {
        init_containers: (!init_containers.is_empty()).then_some(init_containers),
        containers,
        volumes: Some(volumes),
        node_selector: (!sched.node_selector.is_empty()).then(|| sched.node_selector.clone()),
        affinity: sched.affinity.clone(),
        tolerations: (!sched.tolerations.is_empty()).then(|| sched.tolerations.clone()),
        topology_spread_constraints: Some(spread),
        priority_class_name: sched.priority_class_name.clone(),
        // Room for the relay to flush and hand off on SIGTERM.
        termination_grace_period_seconds: Some(60),
        security_context: Some(pod_security()),
        ..PodSpec::default()
    };
    let pvc = PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some("data".into()), ..ObjectMeta::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: node.spec.storage.class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), Quantity(node.spec.storage.size.clone()))])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    StatefulSet {
        metadata: meta(name.clone(), node, labels.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(node.spec.replicas),
            service_name: Some(headless_name(&name)),
            selector: LabelSelector { match_labels: Some(selector_labels(node)), ..LabelSelector::default() },
            // One pod at a time, in order: a roll never takes two owners of a shard at once,
            // and scale-down removes the highest ordinals (the ones the operator drained).
            pod_management_policy: Some("OrderedReady".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                // Every pod held: the operator releases them one by one while replication is healthy.
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(node.spec.replicas),
                    ..Default::default()
                }),
            }),
            // A scaled-down pod's volume is kept: it still holds shards until handed off.
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some("Retain".into()),
                when_scaled: Some("Retain".into()),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(pod),
            },
            volume_claim_templates: Some(vec![pvc]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// A Service port forwarding to the container port of the same name.
fn named_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        ..ServicePort::default()
    }
}

/// A Node's headless Service: stable pod DNS names for membership and gRPC.
pub fn build_headless_service(mesh: &Mesh, node: &Node) -> Service {
    Service {
        metadata: meta(headless_name(&node.name_any()), node, pod_labels(mesh, node)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Peers must reach a relay while it boots, before it is Ready.
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(node)),
            ports: Some(vec![named_port("mesh", MESH_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// A Node's client Service (expose it with an Ingress or a LoadBalancer of your choice).
pub fn build_client_service(mesh: &Mesh, node: &Node) -> Service {
    Service {
        metadata: meta(node.name_any(), node, pod_labels(mesh, node)),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(node)),
            ports: Some(vec![named_port("client", CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The mesh's PodDisruptionBudget: one relay of the whole mesh down at a time
/// (two relays of different Nodes may own the same shard); none when the mesh
/// has a single relay, where it would block node drains forever.
pub fn build_pdb(mesh: &Mesh, nodes: &[&Node]) -> Option<PodDisruptionBudget> {
    let relays: i32 = nodes.iter().map(|n| n.spec.replicas).sum();
    let labels =
        BTreeMap::from([("app.kubernetes.io/managed-by".into(), MANAGER.into()), (LABEL_MESH.into(), mesh.name_any())]);
    (relays > 1).then(|| PodDisruptionBudget {
        metadata: meta(format!("{}-relays", mesh.name_any()), mesh, labels),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/name".into(), "aether-relay".into()),
                    (LABEL_MESH.into(), mesh.name_any()),
                ])),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// A Node's NetworkPolicy: clients may reach the client port and metrics from
/// anywhere; the mesh port only from relays of the same mesh.
pub fn build_network_policy(mesh: &Mesh, node: &Node) -> NetworkPolicy {
    let port = |p: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    NetworkPolicy {
        metadata: meta(node.name_any(), node, pod_labels(mesh, node)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(selector_labels(node)), ..LabelSelector::default() }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule { ports: Some(vec![port(CLIENT_PORT), port(LEDGER_PORT)]), from: None },
                NetworkPolicyIngressRule {
                    ports: Some(vec![port(MESH_PORT)]),
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(LABEL_MESH.into(), mesh.name_any())])),
                            ..LabelSelector::default()
                        }),
                        ..NetworkPolicyPeer::default()
                    }]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// A Node's ServiceMonitor (prometheus-operator), applied only when its CRD exists.
pub fn build_service_monitor(mesh: &Mesh, node: &Node) -> serde_json::Value {
    let owners = owner_ref(node).map(|o| vec![o]);
    let mut endpoint = serde_json::json!({ "port": "client", "path": "/metrics", "interval": "30s" });
    if let Some(tls) = &mesh.spec.tls {
        // Relays' certificates name their pods; Prometheus scrapes by IP, so it checks the CA only.
        endpoint["scheme"] = "https".into();
        endpoint["tlsConfig"] = serde_json::json!({
            "ca": { "secret": { "name": tls.secret_name, "key": "ca.crt" } },
            "insecureSkipVerify": false,
            "serverName": format!("{}-0.{}.{}.svc", node.name_any(), headless_name(&node.name_any()), node.namespace().unwrap_or_default()),
        });
    }
    serde_json::json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {
            "name": node.name_any(),
            "namespace": node.namespace(),
            "labels": pod_labels(mesh, node),
            "ownerReferences": owners,
        },
        "spec": {
            "selector": { "matchLabels": selector_labels(node) },
            "endpoints": [endpoint],
        },
    })
}

/// The mesh's ledger compaction: a daily CronJob running `aether-ledger compact`
/// with the mesh's retention, one at a time (`concurrencyPolicy: Forbid`, as
/// compaction requires). Only with `objectStorage`.
pub fn build_compaction(mesh: &Mesh) -> Option<k8s_openapi::api::batch::v1::CronJob> {
    use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
    let os = mesh.spec.object_storage.as_ref()?;
    let (store, env_from) = ledger_args(mesh)?;
    // `--node` belongs to a relay's own ledger; compaction covers the whole mesh.
    let mut args = vec!["compact".to_string(), "--retain".into(), os.retain.clone()];
    let mut it = store.into_iter();
    while let Some(a) = it.next() {
        if a == "--node" {
            it.next();
            continue;
        }
        args.push(a);
    }
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".into(), "aether-ledger-compact".into()),
        ("app.kubernetes.io/managed-by".into(), MANAGER.into()),
        (LABEL_MESH.into(), mesh.name_any()),
    ]);
    let pod = PodSpec {
        restart_policy: Some("OnFailure".into()),
        containers: vec![Container {
            name: "compact".into(),
            image: Some(mesh.spec.image.clone()),
            command: Some(vec!["aether-ledger".into()]),
            args: Some(args),
            env_from: Some(env_from),
            // Folding writes a snapshot to a temporary directory; the root filesystem is read-only.
            env: Some(vec![EnvVar { name: "TMPDIR".into(), value: Some("/tmp".into()), ..EnvVar::default() }]),
            volume_mounts: Some(vec![VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            }]),
            security_context: Some(restricted()),
            ..Container::default()
        }],
        volumes: Some(vec![Volume {
            name: "tmp".into(),
            empty_dir: Some(k8s_openapi::api::core::v1::EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]),
        security_context: Some(pod_security()),
        ..PodSpec::default()
    };
    Some(CronJob {
        metadata: meta(format!("{}-compact", mesh.name_any()), mesh, labels.clone()),
        spec: CronJobSpec {
            schedule: "17 3 * * *".into(),
            concurrency_policy: Some("Forbid".into()),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: None,
                spec: Some(JobSpec {
                    backoff_limit: Some(3),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                        spec: Some(pod),
                    },
                    ..JobSpec::default()
                }),
            },
            ..CronJobSpec::default()
        },
        ..CronJob::default()
    })
}

/// Everything the operator applies for one mesh.
#[derive(Debug, Clone)]
pub struct Children {
    /// The mesh ConfigMap.
    pub config_map: ConfigMap,
    /// Per Node.
    pub statefulsets: Vec<StatefulSet>,
    /// Headless and client Services.
    pub services: Vec<Service>,
    /// The mesh-wide PDB (more than one relay).
    pub pdbs: Vec<PodDisruptionBudget>,
    /// NetworkPolicies.
    pub network_policies: Vec<NetworkPolicy>,
    /// ServiceMonitors (applied only when the CRD exists).
    pub service_monitors: Vec<serde_json::Value>,
    /// The ledger compaction CronJob (with object storage).
    pub compaction: Option<k8s_openapi::api::batch::v1::CronJob>,
}

/// Builds every child of `mesh` from its Nodes and ClientQuotas (those that name it).
pub fn build_all(mesh: &Mesh, nodes: &[&Node], client_quotas: &[&ClientQuota]) -> Children {
    build_all_draining(mesh, nodes, client_quotas, &BTreeMap::new())
}

/// [`build_all`] during a scale-down: pods of `draining[node]` and above are
/// left out of the membership (so they hand their shards off) while their
/// StatefulSet keeps them (the caller sets its replicas).
pub fn build_all_draining(
    mesh: &Mesh,
    nodes: &[&Node],
    client_quotas: &[&ClientQuota],
    draining: &BTreeMap<String, i32>,
) -> Children {
    let mine: Vec<&Node> = nodes.iter().copied().filter(|n| n.spec.mesh == mesh.name_any()).collect();
    let quotas: Vec<&ClientQuota> = client_quotas.iter().copied().filter(|q| q.spec.mesh == mesh.name_any()).collect();
    let mut c = Children {
        config_map: build_config_map(mesh, &mine, &quotas, draining),
        statefulsets: Vec::new(),
        services: Vec::new(),
        pdbs: Vec::new(),
        network_policies: Vec::new(),
        service_monitors: Vec::new(),
        compaction: build_compaction(mesh),
    };
    c.pdbs.extend(build_pdb(mesh, &mine));
    for n in &mine {
        c.statefulsets.push(build_statefulset(mesh, n));
        c.services.push(build_headless_service(mesh, n));
        c.services.push(build_client_service(mesh, n));
        c.network_policies.push(build_network_policy(mesh, n));
        c.service_monitors.push(build_service_monitor(mesh, n));
    }
    c
}

impl Children {
    /// Every object as JSON (with `apiVersion` and `kind`), in apply order.
    pub fn to_values(&self) -> Vec<serde_json::Value> {
        let mut out = vec![serde_json::to_value(&self.config_map).expect("serializable")];
        out.extend(self.services.iter().map(|s| serde_json::to_value(s).expect("serializable")));
        out.extend(self.statefulsets.iter().map(|s| serde_json::to_value(s).expect("serializable")));
        out.extend(self.pdbs.iter().map(|s| serde_json::to_value(s).expect("serializable")));
        out.extend(self.network_policies.iter().map(|s| serde_json::to_value(s).expect("serializable")));
        out.extend(self.compaction.iter().map(|c| serde_json::to_value(c).expect("serializable")));
        out.extend(self.service_monitors.iter().cloned());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{Inputs, parse};

    fn inputs(files: &[(&str, &str)]) -> Inputs {
        let mut i = Inputs::default();
        for (name, text) in files {
            parse(text, name, &mut i).unwrap();
        }
        i
    }

    fn prod() -> Inputs {
        inputs(&[
            ("mesh.yaml", include_str!("../../deploy/examples/mesh.yaml")),
            ("nodes.yaml", include_str!("../../deploy/examples/nodes.yaml")),
            ("quotas.yaml", include_str!("../../deploy/examples/quotas.yaml")),
        ])
    }

    fn container<'a>(sts: &'a StatefulSet, name: &str) -> Option<&'a Container> {
        let pod = sts.spec.as_ref()?.template.spec.as_ref()?;
        pod.containers.iter().chain(pod.init_containers.iter().flatten()).find(|c| c.name == name)
    }

    fn args(c: &Container) -> String {
        c.args.as_ref().unwrap().join(" ")
    }

    #[test]
    fn statefulset_runs_relay_sidecar_and_restore_with_the_mesh_settings() {
        let i = prod();
        let (mesh, eu) = (&i.meshes[0], &i.nodes[0]);
        let sts = build_statefulset(mesh, eu);
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("OrderedReady"));
        assert_eq!(spec.service_name.as_deref(), Some("prod-eu-mesh"));
        let relay = args(container(&sts, "relay").unwrap());
        for want in [
            "run --name $(POD_NAME)",
            "--mesh-advertise $(POD_NAME).prod-eu-mesh.aether.svc:7070",
            "--membership-file /etc/aether/config/members",
            "--clouds-file /etc/aether/config/clouds.json",
            "--shards 256 --replication 3 --write-quorum 2",
            "--mesh-tls-cert /etc/aether/tls/tls.crt",
            "--ledger-sidecar",
            "--limit-msgs-per-sec 200",
        ] {
            assert!(relay.contains(want), "relay args lack {want:?}: {relay}");
        }
        assert!(!relay.contains("--mesh-plaintext"));
        let rc = container(&sts, "relay").unwrap();
        let scheme = |p: &Option<Probe>| p.as_ref().unwrap().http_get.as_ref().unwrap().scheme.clone();
        assert_eq!(scheme(&rc.readiness_probe).as_deref(), Some("HTTPS"), "a TLS relay answers HTTPS only");
        assert_eq!(scheme(&rc.startup_probe).as_deref(), Some("HTTPS"));
        // The relay's own command line accepts every flag, as the kubelet expands them.
        for (mesh, node) in [(mesh, eu), (&i.meshes[0], &i.nodes[1])] {
            let argv = relay_args(mesh, node).into_iter().map(|a| a.replace("$(POD_NAME)", "prod-eu-0"));
            use clap::Parser;
            let parsed =
                aether_relay::config::Cli::try_parse_from(std::iter::once("aether-relay".to_string()).chain(argv));
            assert!(parsed.is_ok(), "{}", parsed.unwrap_err());
        }
        let env = container(&sts, "relay").unwrap().env.as_ref().unwrap();
        let secret = |n: &str| {
            env.iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
                .map(|s| s.name.clone())
        };
        assert_eq!(secret("AETHER_AUTH_TOKEN").as_deref(), Some("client-token"));
        assert_eq!(secret("AETHER_MESH_TOKEN").as_deref(), Some("mesh-token"));
        let ship = container(&sts, "ledger").unwrap();
        assert!(args(ship).starts_with("ship --data-dir /data"), "{}", args(ship));
        assert!(args(ship).contains("--store s3://aether-ledger/prod --s3-region eu-west-1"));
        assert!(ship.readiness_probe.is_none(), "a store outage must not unready the relay");
        assert_eq!(ship.env_from.as_ref().unwrap()[0].secret_ref.as_ref().unwrap().name, "ledger-s3");
        // So does aether-ledger's, for the sidecar and the init container.
        for c in ["ledger", "restore"] {
            let argv = container(&sts, c)
                .unwrap()
                .args
                .clone()
                .unwrap()
                .into_iter()
                .map(|a| a.replace("$(POD_NAME)", "prod-eu-0"));
            let parsed = aether_ledger_cli(std::iter::once("aether-ledger".to_string()).chain(argv).collect());
            assert!(parsed.is_ok(), "{c}: {}", parsed.unwrap_err());
        }
        let restore = args(container(&sts, "restore").unwrap());
        assert!(
            restore.contains("restore --data-dir /data --if-empty --allow-missing --mesh prod --node $(POD_NAME)"),
            "{restore}"
        );
        let pvc = &spec.volume_claim_templates.as_ref().unwrap()[0];
        let pvc_spec = pvc.spec.as_ref().unwrap();
        assert_eq!(pvc_spec.storage_class_name.as_deref(), Some("fast-ssd"));
        assert_eq!(pvc_spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0, "50Gi");
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.node_selector.as_ref().unwrap()["topology.kubernetes.io/region"], "eu-west-1");
        // Without a spread of its own, pods spread over zones.
        assert_eq!(pod.topology_spread_constraints.as_ref().unwrap()[0].topology_key, "topology.kubernetes.io/zone");
        assert_eq!(i.nodes[1].spec.scheduling.priority_class_name.as_deref(), Some("aether-relay"));
        let us = build_statefulset(mesh, &i.nodes[1]);
        assert_eq!(us.spec.unwrap().template.spec.unwrap().tolerations.unwrap()[0].key.as_deref(), Some("dedicated"));
    }

    /// `aether-ledger`'s subcommands, parsed with its own argument types.
    fn aether_ledger_cli(argv: Vec<String>) -> Result<(), clap::Error> {
        use clap::{Parser, Subcommand};
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            _command: Cmd,
        }
        #[derive(Subcommand)]
        enum Cmd {
            Ship(aether_ledger::ship::ShipArgs),
            Restore(aether_ledger::restore::RestoreArgs),
        }
        Cli::try_parse_from(argv).map(|_| ())
    }

    #[test]
    fn compaction_runs_daily_one_at_a_time_with_the_mesh_retention() {
        let i = prod();
        let cj = build_compaction(&i.meshes[0]).unwrap();
        let spec = cj.spec;
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        let pod = spec.job_template.spec.unwrap().template.spec.unwrap();
        let a = args(&pod.containers[0]);
        assert!(a.starts_with("compact --retain 168h --mesh prod --store s3://aether-ledger/prod"), "{a}");
        assert!(!a.contains("--node"), "{a}");
        let argv = pod.containers[0].args.clone().unwrap();
        let parsed = aether_ledger_compact(std::iter::once("aether-ledger".to_string()).chain(argv).collect());
        assert!(parsed.is_ok(), "{}", parsed.unwrap_err());
        let dev = inputs(&[("dev.yaml", include_str!("../../deploy/examples/dev.yaml"))]);
        assert!(build_compaction(&dev.meshes[0]).is_none());
    }

    fn aether_ledger_compact(argv: Vec<String>) -> Result<(), clap::Error> {
        use clap::{Parser, Subcommand};
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            _command: Cmd,
        }
        #[derive(Subcommand)]
        enum Cmd {
            Compact(aether_ledger::compact::CompactArgs),
        }
        Cli::try_parse_from(argv).map(|_| ())
    }

    #[test]
    fn a_mesh_without_object_storage_or_tls_runs_the_relay_alone_in_plaintext() {
        let i = inputs(&[("dev.yaml", include_str!("../../deploy/examples/dev.yaml"))]);
        let sts = build_statefulset(&i.meshes[0], &i.nodes[0]);
        assert!(container(&sts, "ledger").is_none() && container(&sts, "restore").is_none());
        let relay = args(container(&sts, "relay").unwrap());
        assert!(relay.contains("--mesh-plaintext") && !relay.contains("--ledger-sidecar"), "{relay}");
        assert!(relay.contains("--shards 16 --replication 1 --write-quorum 1"), "{relay}");
        // One relay in the mesh: no PDB (it would block node drains forever).
        let dev_nodes: Vec<&Node> = i.nodes.iter().collect();
        assert!(build_pdb(&i.meshes[0], &dev_nodes).is_none());
        let p = prod();
        let prod_nodes: Vec<&Node> = p.nodes.iter().collect();
        let pdb = build_pdb(&p.meshes[0], &prod_nodes).unwrap();
        let sel = pdb.spec.unwrap().selector.unwrap().match_labels.unwrap();
        assert_eq!(sel[LABEL_MESH], "prod", "one budget over every relay of the mesh");
    }

    #[test]
    fn membership_lists_every_pod_and_leaves_out_draining_ones() {
        let i = prod();
        let nodes: Vec<&Node> = i.nodes.iter().collect();
        let all = membership(&i.meshes[0], &nodes, &BTreeMap::new());
        let lines: Vec<&str> = all.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], "prod-eu-0=prod-eu-0.prod-eu-mesh.aether.svc:7070");
        // The relay reads it as five members.
        assert_eq!(aether_relay::replication::membership::parse_file(&all).unwrap().len(), 5);
        let draining = BTreeMap::from([("prod-eu".to_string(), 2)]);
        let fewer = membership(&i.meshes[0], &nodes, &draining);
        assert!(!fewer.contains("prod-eu-2=") && fewer.contains("prod-eu-1="), "{fewer}");
    }

    #[test]
    fn endpoint_lists_put_the_own_cloud_first_then_proximity() {
        let i = prod();
        let nodes: Vec<&Node> = i.nodes.iter().collect();
        let doc = endpoint_lists(&i.meshes[0], &nodes);
        let urls = |cloud: &str| -> Vec<String> {
            doc["clouds"][cloud].as_array().unwrap().iter().map(|e| e["url"].as_str().unwrap().to_owned()).collect()
        };
        assert_eq!(urls("eu-west"), ["wss://eu.relay.example.com", "wss://us.relay.example.com"]);
        assert_eq!(urls("us-east"), ["wss://us.relay.example.com", "wss://eu.relay.example.com"]);
        // The relay serves exactly this document (its own parser accepts it).
        let served = aether_relay::clouds::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(served.clouds["eu-west"][1].cloud, "us-east");
        // Without public endpoints, the in-cluster client Service.
        let dev = inputs(&[("dev.yaml", include_str!("../../deploy/examples/dev.yaml"))]);
        let dev_nodes: Vec<&Node> = dev.nodes.iter().collect();
        let doc = endpoint_lists(&dev.meshes[0], &dev_nodes);
        assert_eq!(doc["clouds"]["local"][0]["url"], "ws://dev-local.default.svc:8080");
    }

    #[test]
    fn quotas_compile_into_one_sorted_document() {
        let i = prod();
        let q: Vec<&ClientQuota> = i.quotas.iter().collect();
        let doc = quotas(&i.meshes[0], &q);
        assert_eq!(doc["quotas"][0]["name"], "acme");
        assert_eq!(doc["quotas"][0]["parentUid"], "acme");
        assert_eq!(doc["quotas"][1]["limits"]["opsPerSec"], 10);
        assert_eq!(doc["quotas"][1]["warningThresholdPercent"], 80);
    }

    #[test]
    fn children_are_owned_when_their_owner_came_from_the_api_server() {
        let mut i = prod();
        assert!(build_statefulset(&i.meshes[0], &i.nodes[0]).metadata.owner_references.is_none());
        i.nodes[0].metadata.uid = Some("1234".into());
        let sts = build_statefulset(&i.meshes[0], &i.nodes[0]);
        let owner = &sts.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("Node", "prod-eu", "1234"));
        assert_eq!(owner.controller, Some(true));
    }
}
