//! The custom resources of `aethermesh.io/v1alpha1`: `Mesh`, `Node`, `ClientQuota`.
//!
//! Defaults, ranges and CEL rules live here, in the schema the API server
//! enforces; `aether-operator crdgen` prints the CRDs built from these types
//! (checked in under `crds/`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "aethermesh.io";

/// A mesh of relays: placement, durability, security and the clouds its
/// relays serve. Relays themselves come from `Node`s that name the mesh.
#[derive(CustomResource, KubeSchema, Clone, Debug, Serialize, Deserialize, PartialEq)]
#[kube(
    group = "aethermesh.io",
    version = "v1alpha1",
    kind = "Mesh",
    namespaced,
    cel,
    status = "MeshStatus",
    shortname = "amesh",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Shards","type":"integer","jsonPath":".spec.shards"}"#,
    printcolumn = r#"{"name":"RF","type":"integer","jsonPath":".spec.replicationFactor"}"#,
    printcolumn = r#"{"name":"W","type":"integer","jsonPath":".spec.writeQuorum"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.spec.writeQuorum <= self.spec.replicationFactor").message("writeQuorum cannot exceed replicationFactor")
)]
#[serde(rename_all = "camelCase")]
pub struct MeshSpec {
    /// Shards the spaces are hashed into. Immutable: changing it would move every space.
    #[serde(default = "default_shards")]
    #[schemars(range(min = 1, max = 65536))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("shards is immutable"))]
    pub shards: u32,
    /// Owners per shard.
    #[serde(default = "default_replication")]
    #[schemars(range(min = 1, max = 16))]
    pub replication_factor: u32,
    /// Owners (this relay included) that must hold a write durably before it is acknowledged.
    #[serde(default = "default_write_quorum")]
    #[schemars(range(min = 1, max = 16))]
    pub write_quorum: u32,
    /// Relay image (it holds `aether-relay` and `aether-ledger`).
    #[serde(default = "default_image")]
    pub image: String,
    /// Where each relay's ledger is shipped; without it relays keep their ledger on their volume only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_storage: Option<ObjectStorage>,
    /// Client and device authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// TLS for clients and for the mesh (mutual TLS between relays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// Client limits applied by every relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// The clouds (regions, zones) of the mesh and, for each, the others by proximity.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub clouds: Vec<Cloud>,
    /// Stop changing child objects (deletion still proceeds).
    #[serde(default)]
    pub paused: bool,
}

impl Default for MeshSpec {
    /// The defaults an empty spec gets from the schema.
    fn default() -> Self {
        MeshSpec {
            shards: default_shards(),
            replication_factor: default_replication(),
            write_quorum: default_write_quorum(),
            image: default_image(),
            object_storage: None,
            auth: None,
            tls: None,
            limits: None,
            clouds: Vec::new(),
            paused: false,
        }
    }
}

fn default_shards() -> u32 {
    256
}
fn default_replication() -> u32 {
    3
}
fn default_write_quorum() -> u32 {
    1
}
fn default_image() -> String {
    "ghcr.io/aethermesh/aether-relay:0.1.0".into()
}

/// Object storage for the ledger sidecar.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStorage {
    /// `s3://bucket/prefix`, `gs://…`, `az://…`.
    #[x_kube(validation = Rule::new("self.matches('^(s3|s3a|gs|az|azure|abfs|abfss|file)://.+')").message("url must be s3://, gs://, az:// or file://"))]
    pub url: String,
    /// A Secret whose keys become the sidecar's environment (`AWS_ACCESS_KEY_ID`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// S3-compatible endpoint (MinIO, Ceph, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3 region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Allow a plain `http://` endpoint.
    #[serde(default)]
    pub allow_http: bool,
    /// Point-in-time restore window kept by compaction (e.g. `168h`).
    #[serde(default = "default_retain")]
    pub retain: String,
}

fn default_retain() -> String {
    "168h".into()
}

/// A key of a Secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKey {
    /// Secret name (same namespace).
    pub name: String,
    /// Key in the Secret.
    #[serde(default = "default_secret_key")]
    pub key: String,
}

fn default_secret_key() -> String {
    "token".into()
}

/// Authentication.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    /// Token clients present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<SecretKey>,
    /// Token relays present to each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_token_secret: Option<SecretKey>,
    /// Master key devices' keys are derived from (used by the device protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_master_key_secret: Option<SecretKey>,
}

/// TLS material: a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`, `ca.crt`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tls {
    /// The Secret.
    pub secret_name: String,
}

/// Client limits (see the relay's `--limit-*` flags).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Sustained messages per second per connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub msgs_per_sec: Option<u32>,
    /// Burst per connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<u32>,
    /// Connections per relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub connections: Option<u32>,
    /// Connections per client IP per relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub connections_per_ip: Option<u32>,
    /// Largest value in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub value_bytes: Option<u32>,
}

/// One cloud and the others, nearest first.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cloud {
    /// Name (1-63 letters, digits, '-').
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$')").message("cloud names are DNS labels"))]
    pub name: String,
    /// The other clouds, nearest first: clients fail over in this order.
    #[serde(default)]
    pub proximity: Vec<String>,
}

/// Observed state of a mesh.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshStatus {
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Relays per cloud.
    #[serde(default)]
    pub clouds: Vec<CloudStatus>,
}

/// Relays of one cloud.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudStatus {
    /// The cloud.
    pub name: String,
    /// Relays wanted.
    pub relays: i32,
    /// Relays ready.
    pub ready_relays: i32,
}

/// A group of relay pods serving one cloud of a mesh: one StatefulSet.
/// `kubectl get nodes.aethermesh.io` (short name `anode`; plain `nodes` are the cluster's).
#[derive(CustomResource, KubeSchema, Clone, Debug, Serialize, Deserialize, PartialEq)]
#[kube(
    group = "aethermesh.io",
    version = "v1alpha1",
    kind = "Node",
    namespaced,
    cel,
    status = "NodeStatus",
    shortname = "anode",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Mesh","type":"string","jsonPath":".spec.mesh"}"#,
    printcolumn = r#"{"name":"Cloud","type":"string","jsonPath":".spec.cloud"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// The `Mesh` (same namespace). Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("mesh is immutable"))]
    pub mesh: String,
    /// The cloud this Node serves (one of the Mesh's clouds). Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("cloud is immutable"))]
    pub cloud: String,
    /// Relay pods.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Resources of the relay container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Each pod's data volume.
    #[serde(default)]
    pub storage: Storage,
    /// Where pods run.
    #[serde(default)]
    pub scheduling: Scheduling,
    /// Addresses clients use for this Node (`wss://eu.example.com`), in the endpoint lists.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub public_endpoints: Vec<String>,
}

impl Default for NodeSpec {
    fn default() -> Self {
        NodeSpec {
            mesh: String::new(),
            cloud: String::new(),
            replicas: default_replicas(),
            resources: None,
            storage: Storage::default(),
            scheduling: Scheduling::default(),
            public_endpoints: Vec::new(),
        }
    }
}

fn default_replicas() -> i32 {
    3
}

/// A pod's data volume.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Size (a Kubernetes quantity).
    #[serde(default = "default_storage_size")]
    pub size: String,
    /// StorageClass (cluster default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

impl Default for Storage {
    fn default() -> Self {
        Storage { size: default_storage_size(), class: None }
    }
}

fn default_storage_size() -> String {
    "10Gi".into()
}

/// Pod placement.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    /// Node labels pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Affinity rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Spread constraints (a zone spread is added when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// PriorityClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Observed state of a Node.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Ready relay pods.
    #[serde(default)]
    pub ready_replicas: i32,
}

/// Limits for one client UID, or for a parent UID and its whole subtree.
#[derive(CustomResource, KubeSchema, Clone, Debug, Serialize, Deserialize, PartialEq)]
#[kube(
    group = "aethermesh.io",
    version = "v1alpha1",
    kind = "ClientQuota",
    namespaced,
    cel,
    status = "ClientQuotaStatus",
    shortname = "aquota",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Mesh","type":"string","jsonPath":".spec.mesh"}"#,
    printcolumn = r#"{"name":"UID","type":"string","jsonPath":".spec.subject.uid"}"#,
    printcolumn = r#"{"name":"Parent","type":"string","jsonPath":".spec.subject.parentUid"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClientQuotaSpec {
    /// The `Mesh` whose relays enforce it.
    pub mesh: String,
    /// Who it applies to.
    pub subject: Subject,
    /// The limits; unset ones are unlimited.
    #[serde(default)]
    pub limits: QuotaLimits,
    /// Percent of a limit at which the parent is warned.
    #[serde(default = "default_warning")]
    #[schemars(range(min = 1, max = 100))]
    pub warning_threshold_percent: u32,
}

impl Default for ClientQuotaSpec {
    fn default() -> Self {
        ClientQuotaSpec {
            mesh: String::new(),
            subject: Subject { uid: None, parent_uid: None },
            limits: QuotaLimits::default(),
            warning_threshold_percent: default_warning(),
        }
    }
}

fn default_warning() -> u32 {
    80
}

/// A client UID, or a parent UID and its subtree: exactly one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.uid) != has(self.parentUid)").message("set exactly one of uid and parentUid"))]
pub struct Subject {
    /// One client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// A parent and every client under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_uid: Option<String>,
}

/// Quota limits.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaLimits {
    /// Ops per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_per_sec: Option<u64>,
    /// Bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<u64>,
    /// Concurrent connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    /// Stored bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    /// Spaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spaces: Option<u64>,
}

/// Observed state of a quota.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientQuotaStatus {
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (compiled into the quotas document) and `UsageReported`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(spec: serde_json::Value) -> Mesh {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "aethermesh.io/v1alpha1", "kind": "Mesh", "metadata": {"name": "m"}, "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn defaults_fill_an_empty_spec() {
        let m = mesh(serde_json::json!({}));
        assert_eq!((m.spec.shards, m.spec.replication_factor, m.spec.write_quorum), (256, 3, 1));
        assert!(m.validate_cel().is_ok());
    }

    #[test]
    fn node_names_must_fit_the_service_and_pod_names_built_from_them() {
        let m = mesh(serde_json::json!({}));
        let node = |name: &str| -> Node {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "aethermesh.io/v1alpha1", "kind": "Node", "metadata": {"name": name},
                "spec": {"mesh": "m", "cloud": "eu"}
            }))
            .unwrap()
        };
        assert!(crate::validate::node(&node("eu-1"), &m).is_empty());
        for bad in ["1eu", "eu.west", "EU", &"a".repeat(48)] {
            let p = crate::validate::node(&node(bad), &m);
            assert!(p.iter().any(|p| p.contains("DNS-1035")), "{bad}: {p:?}");
        }
    }

    #[test]
    fn cel_rules_hold_client_side() {
        let old = mesh(serde_json::json!({"shards": 64}));
        let resharded = mesh(serde_json::json!({"shards": 128}));
        let err = resharded.validate_cel_update(&old).unwrap_err().to_string();
        assert!(err.contains("shards is immutable"), "{err}");
        assert!(mesh(serde_json::json!({"shards": 64, "writeQuorum": 2})).validate_cel_update(&old).is_ok());
        let err = mesh(serde_json::json!({"replicationFactor": 2, "writeQuorum": 3})).validate_cel().unwrap_err();
        assert!(err.to_string().contains("writeQuorum cannot exceed"), "{err}");
        let err = mesh(serde_json::json!({"clouds": [{"name": "EU West"}]})).validate_cel().unwrap_err();
        assert!(err.to_string().contains("DNS labels"), "{err}");
        let quota = |subject: serde_json::Value| -> ClientQuota {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "aethermesh.io/v1alpha1", "kind": "ClientQuota", "metadata": {"name": "q"},
                "spec": {"mesh": "m", "subject": subject}
            }))
            .unwrap()
        };
        assert!(quota(serde_json::json!({"uid": "a"})).validate_cel().is_ok());
        assert!(quota(serde_json::json!({"uid": "a", "parentUid": "b"})).validate_cel().is_err());
        assert!(quota(serde_json::json!({})).validate_cel().is_err());
    }
}
