//! Reconcile flows against the kube-rs ecosystem's in-memory API server
//! (kube-fake-client): the exact children, their removal, status, events,
//! invalid and paused meshes, deletion.

use std::sync::Arc;

use aether_operator::controller::{self, Context, FINALIZER, Handoff, HandoffState};
use aether_operator::crd::{ClientQuota, Mesh, Node};
use aether_operator::metrics::Metrics;
use aether_operator::render::{Inputs, parse};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use kube_fake_client::ClientBuilder;

fn examples() -> Inputs {
    let mut i = Inputs::default();
    for (name, text) in [
        ("mesh.yaml", include_str!("../../deploy/examples/mesh.yaml")),
        ("nodes.yaml", include_str!("../../deploy/examples/nodes.yaml")),
        ("quotas.yaml", include_str!("../../deploy/examples/quotas.yaml")),
    ] {
        parse(text, name, &mut i).unwrap();
    }
    i
}

/// The in-memory API server with the operator's kinds and their status subresources.
fn builder() -> ClientBuilder {
    ClientBuilder::new()
        .with_resource::<Mesh>()
        .with_resource::<Node>()
        .with_resource::<ClientQuota>()
        .with_status_subresource::<Mesh>()
        .with_status_subresource::<Node>()
        .with_status_subresource::<ClientQuota>()
}

async fn cluster(inputs: Inputs) -> Client {
    let mut b = builder().with_status_subresource::<StatefulSet>();
    for m in inputs.meshes {
        b = b.with_object(m);
    }
    for n in inputs.nodes {
        b = b.with_object(n);
    }
    for q in inputs.quotas {
        b = b.with_object(q);
    }
    b.build().await.unwrap()
}

/// Reads the mesh as the controller would get it, and reconciles it.
async fn reconcile(client: &Client, name: &str) -> Result<kube::runtime::controller::Action, controller::Error> {
    reconcile_with(client, name, Arc::new(Scripted::default())).await
}

async fn reconcile_with(
    client: &Client,
    name: &str,
    handoff: Arc<Scripted>,
) -> Result<kube::runtime::controller::Action, controller::Error> {
    let mesh = Api::<Mesh>::namespaced(client.clone(), "aether").get(name).await.unwrap();
    let mut ctx = Context::new(client.clone(), Metrics::new());
    ctx.handoff = handoff;
    controller::reconcile(Arc::new(mesh), Arc::new(ctx)).await
}

fn handed_off_relays() -> Arc<Scripted> {
    let r = Arc::new(Scripted::default());
    *r.state.lock().unwrap() = Some(HandoffState { in_membership: false, pending_shards: 0, ..Default::default() });
    r
}

/// Relays' hand-off answers, scripted: every asked URL is recorded.
#[derive(Default)]
struct Scripted {
    state: std::sync::Mutex<Option<HandoffState>>,
    asked: std::sync::Mutex<Vec<String>>,
    cas: std::sync::Mutex<Vec<Option<Vec<u8>>>>,
}

impl Handoff for Scripted {
    fn state(&self, url: String, ca: Option<Arc<Vec<u8>>>) -> controller::StateFuture<'_> {
        self.asked.lock().unwrap().push(url);
        self.cas.lock().unwrap().push(ca.map(|c| c.to_vec()));
        let s = *self.state.lock().unwrap();
        Box::pin(async move { s.ok_or_else(|| "connection refused".to_string()) })
    }
}

async fn names<K>(client: &Client) -> Vec<String>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let mut v: Vec<String> = Api::<K>::namespaced(client.clone(), "aether")
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .map(|o| o.name_any())
        .collect();
    v.sort();
    v
}

fn condition<'a>(mesh: &'a Mesh, type_: &str) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    mesh.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == type_).unwrap()
}

#[tokio::test]
async fn a_mesh_becomes_its_children_status_follows_readiness_and_orphans_go() {
    let client = cluster(examples()).await;
    let meshes = Api::<Mesh>::namespaced(client.clone(), "aether");
    // The first pass adds the finalizer and builds nothing; the next one applies.
    reconcile(&client, "prod").await.unwrap();
    assert_eq!(meshes.get("prod").await.unwrap().finalizers(), [FINALIZER.to_string()]);
    assert!(names::<StatefulSet>(&client).await.is_empty());
    reconcile(&client, "prod").await.unwrap();

    assert_eq!(names::<StatefulSet>(&client).await, ["prod-eu", "prod-us"]);
    assert_eq!(names::<Service>(&client).await, ["prod-eu", "prod-eu-mesh", "prod-us", "prod-us-mesh"]);
    assert_eq!(names::<PodDisruptionBudget>(&client).await, ["prod-relays"]);
    assert_eq!(names::<NetworkPolicy>(&client).await, ["prod-eu", "prod-us"]);
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "aether").get("prod-mesh").await.unwrap();
    let data = cm.data.unwrap();
    assert_eq!(data["members"].lines().filter(|l| !l.starts_with('#')).count(), 5);
    assert!(data["clouds.json"].contains("wss://eu.relay.example.com"));
    assert!(data["quotas.json"].contains("kiosk-17"));
    let sts_api = Api::<StatefulSet>::namespaced(client.clone(), "aether");
    let eu = sts_api.get("prod-eu").await.unwrap();
    assert_eq!(eu.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(eu.owner_references()[0].kind, "Node");

    let mesh = meshes.get("prod").await.unwrap();
    assert_eq!(mesh.status.as_ref().unwrap().observed_generation, mesh.metadata.generation);
    assert_eq!(condition(&mesh, "Ready").status, "False");
    assert_eq!(condition(&mesh, "Ready").message, "0/5 relays ready");
    assert_eq!(condition(&mesh, "Progressing").status, "True");
    assert_eq!(condition(&mesh, "Degraded").status, "False");
    assert!(reasons(&client).await.contains(&"Applied".to_string()), "{:?}", reasons(&client).await);

    // The relays come up.
    for (name, ready) in [("prod-eu", 3), ("prod-us", 2)] {
        let patch = serde_json::json!({ "status": { "replicas": ready, "readyReplicas": ready, "updatedReplicas": ready,
            "currentRevision": "r1", "updateRevision": "r1" } });
        sts_api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    }
    reconcile(&client, "prod").await.unwrap();
    let mesh = meshes.get("prod").await.unwrap();
    assert_eq!(condition(&mesh, "Ready").status, "True", "{:?}", mesh.status);
    assert_eq!(condition(&mesh, "Progressing").status, "False");
    let clouds = &mesh.status.as_ref().unwrap().clouds;
    assert_eq!((clouds[0].name.as_str(), clouds[0].ready_relays, clouds[0].relays), ("eu-west", 3, 3));
    let node = Api::<Node>::namespaced(client.clone(), "aether").get("prod-us").await.unwrap();
    assert_eq!(node.status.unwrap().ready_replicas, 2);
    // Quotas are compiled; usage is not reported by relays yet, and the status says so.
    let quota = Api::<ClientQuota>::namespaced(client.clone(), "aether").get("acme").await.unwrap();
    let conds = quota.status.unwrap().conditions;
    let get = |t: &str| conds.iter().find(|c| c.type_ == t).unwrap().clone();
    assert_eq!((get("Ready").status.as_str(), get("Ready").reason.as_str()), ("True", "Compiled"));
    assert_eq!(
        (get("UsageReported").status.as_str(), get("UsageReported").reason.as_str()),
        ("False", "RelaysDoNotReportUsage")
    );

    // prod-us shrinks to one relay (which has handed off).
    let nodes = Api::<Node>::namespaced(client.clone(), "aether");
    nodes
        .patch("prod-us", &PatchParams::default(), &Patch::Merge(&serde_json::json!({"spec": {"replicas": 1}})))
        .await
        .unwrap();
    let handed_off = Arc::new(Scripted::default());
    *handed_off.state.lock().unwrap() =
        Some(HandoffState { in_membership: false, pending_shards: 0, ..Default::default() });
    reconcile_with(&client, "prod", handed_off).await.unwrap();
    assert_eq!(names::<PodDisruptionBudget>(&client).await, ["prod-relays"]);
    // Without object storage, the compaction CronJob is an orphan and goes.
    assert_eq!(names::<k8s_openapi::api::batch::v1::CronJob>(&client).await, ["prod-compact"]);
    let meshes_api = Api::<Mesh>::namespaced(client.clone(), "aether");
    let no_store = serde_json::json!({"spec": {"objectStorage": null}});
    meshes_api.patch("prod", &PatchParams::default(), &Patch::Merge(&no_store)).await.unwrap();
    reconcile_with(&client, "prod", handed_off_relays()).await.unwrap();
    assert!(names::<k8s_openapi::api::batch::v1::CronJob>(&client).await.is_empty());
    assert!(reasons(&client).await.contains(&"Pruned".to_string()));
    // A user's Service with copied labels (as `kubectl expose` makes) is not ours to prune.
    let user: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "user-lb", "namespace": "aether", "labels": {
            "aethermesh.io/mesh": "prod", "app.kubernetes.io/managed-by": "aether-operator"}},
        "spec": {"ports": [{"port": 443}]}
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), "aether").create(&Default::default(), &user).await.unwrap();
    reconcile_with(&client, "prod", handed_off_relays()).await.unwrap();
    assert!(names::<Service>(&client).await.contains(&"user-lb".to_string()), "a user's Service was pruned");
    assert_eq!(sts_api.get("prod-us").await.unwrap().spec.unwrap().replicas, Some(1));
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "aether").get("prod-mesh").await.unwrap();
    assert!(!cm.data.unwrap()["members"].contains("prod-us-1="));
}

#[tokio::test]
async fn an_invalid_mesh_is_reported_and_nothing_is_built() {
    let mut inputs = examples();
    inputs.meshes[0].spec.write_quorum = 5; // above replicationFactor 3
    let client = cluster(inputs).await;
    reconcile(&client, "prod").await.unwrap();
    reconcile(&client, "prod").await.unwrap();
    assert!(names::<StatefulSet>(&client).await.is_empty());
    let mesh = Api::<Mesh>::namespaced(client.clone(), "aether").get("prod").await.unwrap();
    let degraded = condition(&mesh, "Degraded");
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "Invalid"));
    assert!(degraded.message.contains("writeQuorum"), "{}", degraded.message);
    assert_eq!(condition(&mesh, "Ready").status, "False");
}

/// A Node that becomes invalid (a typo in its endpoints) freezes the mesh:
/// nothing of it is torn down, and the status says why.
#[tokio::test]
async fn an_invalid_node_freezes_the_mesh_instead_of_tearing_it_down() {
    let client = cluster(examples()).await;
    reconcile(&client, "prod").await.unwrap();
    reconcile(&client, "prod").await.unwrap();
    let nodes = Api::<Node>::namespaced(client.clone(), "aether");
    let typo = serde_json::json!({"spec": {"publicEndpoints": ["ftp://us.relay.example.com"], "replicas": 1}});
    nodes.patch("prod-us", &PatchParams::default(), &Patch::Merge(&typo)).await.unwrap();
    reconcile(&client, "prod").await.unwrap();
    assert_eq!(names::<StatefulSet>(&client).await, ["prod-eu", "prod-us"]);
    let sts = Api::<StatefulSet>::namespaced(client.clone(), "aether").get("prod-us").await.unwrap();
    assert_eq!(sts.spec.unwrap().replicas, Some(2), "a frozen mesh was changed");
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "aether").get("prod-mesh").await.unwrap();
    assert!(cm.data.unwrap()["members"].contains("prod-us-1="), "the invalid Node's relays left the membership");
    let mesh = Api::<Mesh>::namespaced(client.clone(), "aether").get("prod").await.unwrap();
    let degraded = condition(&mesh, "Degraded");
    assert_eq!(degraded.status, "True");
    assert!(degraded.message.contains("Node prod-us") && degraded.message.contains("ftp://"), "{}", degraded.message);
    assert_eq!(condition(&mesh, "Progressing").reason, "InvalidChildren");
}

#[tokio::test]
async fn a_paused_mesh_changes_nothing() {
    let client = cluster(examples()).await;
    reconcile(&client, "prod").await.unwrap();
    reconcile(&client, "prod").await.unwrap();
    let meshes = Api::<Mesh>::namespaced(client.clone(), "aether");
    meshes
        .patch("prod", &PatchParams::default(), &Patch::Merge(&serde_json::json!({"spec": {"paused": true}})))
        .await
        .unwrap();
    let nodes = Api::<Node>::namespaced(client.clone(), "aether");
    nodes
        .patch("prod-eu", &PatchParams::default(), &Patch::Merge(&serde_json::json!({"spec": {"replicas": 5}})))
        .await
        .unwrap();
    reconcile(&client, "prod").await.unwrap();
    let sts = Api::<StatefulSet>::namespaced(client.clone(), "aether").get("prod-eu").await.unwrap();
    assert_eq!(sts.spec.unwrap().replicas, Some(3), "a paused mesh was changed");
    let mesh = meshes.get("prod").await.unwrap();
    assert_eq!(condition(&mesh, "Progressing").reason, "Paused");
    // Unpaused, the change goes through.
    meshes
        .patch("prod", &PatchParams::default(), &Patch::Merge(&serde_json::json!({"spec": {"paused": false}})))
        .await
        .unwrap();
    reconcile(&client, "prod").await.unwrap();
    let sts = Api::<StatefulSet>::namespaced(client.clone(), "aether").get("prod-eu").await.unwrap();
    assert_eq!(sts.spec.unwrap().replicas, Some(5));
}

/// A mesh being deleted (the in-memory API server deletes at once, so the
/// state the API server holds a finalized object in is seeded): cleanup runs,
/// an event says what is kept, only our finalizer is removed.
#[tokio::test]
async fn deleting_a_mesh_runs_its_cleanup_and_drops_only_its_finalizer() {
    let mut inputs = examples();
    let m = &mut inputs.meshes[0];
    m.metadata.finalizers = Some(vec![FINALIZER.into(), "example.com/other".into()]);
    m.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
    // One of its Nodes is being deleted too: with no mesh to drain into, it is released.
    let us = &mut inputs.nodes[1];
    us.metadata.finalizers = Some(vec![aether_operator::controller::NODE_FINALIZER.into()]);
    us.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
    let client = cluster(inputs).await;
    reconcile(&client, "prod").await.unwrap();
    let node = Api::<Node>::namespaced(client.clone(), "aether").get_opt("prod-us").await.unwrap();
    assert!(node.is_none_or(|n| n.finalizers().is_empty()), "a Node of a deleted mesh is stuck");
    let mesh = Api::<Mesh>::namespaced(client.clone(), "aether").get("prod").await.unwrap();
    assert_eq!(mesh.finalizers(), ["example.com/other".to_string()]);
    assert!(names::<StatefulSet>(&client).await.is_empty(), "a mesh being deleted was built");
    assert!(reasons(&client).await.contains(&"Deleted".to_string()));
}

async fn reasons(client: &Client) -> Vec<String> {
    Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), "aether")
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect()
}

/// Scale-down waits for the hand-off: the leaving pod leaves the membership at
/// once, but its StatefulSet keeps it until it reports nothing pending.
#[tokio::test]
async fn scale_down_waits_until_the_leaving_relay_has_handed_off() {
    let client = cluster(examples()).await;
    // The mesh's TLS Secret: relays are verified against its ca.crt.
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "relay-tls", "namespace": "aether"},
        "data": {"ca.crt": "Q0EgUEVN"}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), "aether")
        .create(&Default::default(), &secret)
        .await
        .unwrap();
    reconcile(&client, "prod").await.unwrap();
    reconcile(&client, "prod").await.unwrap();
    let nodes = Api::<Node>::namespaced(client.clone(), "aether");
    nodes
        .patch("prod-eu", &PatchParams::default(), &Patch::Merge(&serde_json::json!({"spec": {"replicas": 2}})))
        .await
        .unwrap();
    let sts = Api::<StatefulSet>::namespaced(client.clone(), "aether");
    let cms = Api::<ConfigMap>::namespaced(client.clone(), "aether");
    let replicas = || async { sts.get("prod-eu").await.unwrap().spec.unwrap().replicas };
    let members = || async { cms.get("prod-mesh").await.unwrap().data.unwrap()["members"].clone() };

    // Unreachable, then still holding shards: the pod stays, out of the membership.
    let relay = Arc::new(Scripted::default());
    reconcile_with(&client, "prod", relay.clone()).await.unwrap();
    assert_eq!(replicas().await, Some(3));
    assert!(!members().await.contains("prod-eu-2=") && members().await.contains("prod-eu-1="));
    assert_eq!(
        relay.asked.lock().unwrap().as_slice(),
        // The example mesh serves clients over TLS: its admin endpoint too.
        ["https://prod-eu-2.prod-eu-mesh.aether.svc:8080/v1/admin/shards"]
    );
    assert_eq!(relay.cas.lock().unwrap()[0].as_deref(), Some(&b"CA PEM"[..]));
    *relay.state.lock().unwrap() = Some(HandoffState { in_membership: false, pending_shards: 7, ..Default::default() });
    reconcile_with(&client, "prod", relay.clone()).await.unwrap();
    assert_eq!(replicas().await, Some(3));
    let mesh = Api::<Mesh>::namespaced(client.clone(), "aether").get("prod").await.unwrap();
    let progressing = condition(&mesh, "Progressing");
    assert_eq!(progressing.reason, "Draining");
    assert!(progressing.message.contains("prod-eu-2: 7 shards to hand off"), "{}", progressing.message);
    // prod-us is not touched by prod-eu's drain.
    assert_eq!(sts.get("prod-us").await.unwrap().spec.unwrap().replicas, Some(2));

    // Handed off: now the StatefulSet shrinks.
    *relay.state.lock().unwrap() = Some(HandoffState { in_membership: false, pending_shards: 0, ..Default::default() });
    reconcile_with(&client, "prod", relay.clone()).await.unwrap();
    assert_eq!(replicas().await, Some(2));
}

/// Two operator replicas: only one holds the Lease; the other takes over
/// once it steps down.
#[tokio::test]
async fn only_one_replica_leads() {
    use aether_operator::leader::Elector;
    let client = ClientBuilder::new().build().await.unwrap();
    let ttl = std::time::Duration::from_secs(3);
    let a = Elector::new(client.clone(), "aether", "aether-operator", "replica-a", ttl);
    let b = Elector::new(client.clone(), "aether", "aether-operator", "replica-b", ttl);
    let since = tokio::time::timeout(std::time::Duration::from_secs(5), a.acquire()).await.expect("a leads");
    let waiting = tokio::time::timeout(std::time::Duration::from_millis(1500), b.acquire()).await;
    assert!(waiting.is_err(), "b acquired the Lease a holds");
    a.step_down().await;
    tokio::time::timeout(std::time::Duration::from_secs(5), b.acquire()).await.expect("b takes over");
    // a, no longer the holder, is told so as soon as it tries to renew.
    // (Counting from now: a's own Lease would have lapsed by now anyway.)
    let _ = since;
    let why = tokio::time::timeout(std::time::Duration::from_secs(5), a.hold(std::time::Instant::now()))
        .await
        .expect("a notices");
    assert!(why.contains("another replica"), "{why}");
}

/// A rolling restart moves one pod at a time, only while every relay is
/// ready and replicating; between rolls every pod is held.
#[tokio::test]
async fn rolling_restarts_wait_for_healthy_replication() {
    let client = cluster(examples()).await;
    reconcile(&client, "prod").await.unwrap();
    reconcile(&client, "prod").await.unwrap();
    let sts = Api::<StatefulSet>::namespaced(client.clone(), "aether");
    let partition = || async {
        sts.get("prod-eu").await.unwrap().spec.unwrap().update_strategy.unwrap().rolling_update.unwrap().partition
    };
    assert_eq!(partition().await, Some(3), "between rolls every pod is held");
    // A new revision is rolling; the relays' replication is not healthy.
    let status = |updated: i32, current: &str| {
        serde_json::json!({"status": {"replicas": 3, "readyReplicas": 3, "updatedReplicas": updated,
            "currentRevision": current, "updateRevision": "r2"}})
    };
    sts.patch_status("prod-eu", &PatchParams::default(), &Patch::Merge(&status(0, "r1"))).await.unwrap();
    let relays = Arc::new(Scripted::default());
    *relays.state.lock().unwrap() =
        Some(HandoffState { in_membership: true, disconnected_peers: 1, ..Default::default() });
    reconcile_with(&client, "prod", relays.clone()).await.unwrap();
    assert_eq!(partition().await, Some(3));
    let mesh = Api::<Mesh>::namespaced(client.clone(), "aether").get("prod").await.unwrap();
    let progressing = condition(&mesh, "Progressing");
    assert_eq!(progressing.reason, "RollingUpdate");
    assert!(progressing.message.contains("replication not healthy"), "{}", progressing.message);
    // Healthy: one pod more per reconcile.
    *relays.state.lock().unwrap() = Some(HandoffState { in_membership: true, ..Default::default() });
    reconcile_with(&client, "prod", relays.clone()).await.unwrap();
    assert_eq!(partition().await, Some(2));
    // The released pod has not been replaced yet: nothing more goes.
    reconcile_with(&client, "prod", relays.clone()).await.unwrap();
    assert_eq!(partition().await, Some(2), "a second pod was released before the first restarted");
    sts.patch_status("prod-eu", &PatchParams::default(), &Patch::Merge(&status(1, "r1"))).await.unwrap();
    reconcile_with(&client, "prod", relays.clone()).await.unwrap();
    assert_eq!(partition().await, Some(1));
    // A relay lags behind: the roll waits.
    *relays.state.lock().unwrap() =
        Some(HandoffState { in_membership: true, max_lag_ms: 30_000, ..Default::default() });
    reconcile_with(&client, "prod", relays.clone()).await.unwrap();
    assert_eq!(partition().await, Some(1));
    // Done: every pod at the new revision, and everything is held again.
    sts.patch_status("prod-eu", &PatchParams::default(), &Patch::Merge(&status(3, "r2"))).await.unwrap();
    reconcile_with(&client, "prod", relays).await.unwrap();
    assert_eq!(partition().await, Some(3));
}

/// The API server fails an apply: the reconcile errs, naming the object, the
/// error policy backs off, and the next reconcile after recovery converges.
#[tokio::test]
async fn a_failed_apply_errs_backs_off_and_recovers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let mut b = builder().with_interceptor_funcs(kube_fake_client::interceptor::Funcs::new().patch(move |ctx| {
        if f.load(Ordering::SeqCst) && ctx.name == "prod-us" && ctx.patch["kind"] == "StatefulSet" {
            return Err(kube_fake_client::Error::Internal("injected: etcd is unavailable".into()));
        }
        Ok(None)
    }));
    let inputs = examples();
    for m in inputs.meshes {
        b = b.with_object(m);
    }
    for n in inputs.nodes {
        b = b.with_object(n);
    }
    let client = b.build().await.unwrap();
    reconcile(&client, "prod").await.unwrap();
    let err = reconcile(&client, "prod").await.unwrap_err();
    assert!(err.to_string().contains("applying StatefulSet prod-us"), "{err}");
    let mesh = Arc::new(Api::<Mesh>::namespaced(client.clone(), "aether").get("prod").await.unwrap());
    let ctx = Arc::new(Context::new(client.clone(), Metrics::new()));
    let action = format!("{:?}", controller::error_policy(mesh, &err, ctx));
    assert!(action.contains("requeue"), "{action}");
    failing.store(false, Ordering::SeqCst);
    reconcile(&client, "prod").await.unwrap();
    assert_eq!(names::<StatefulSet>(&client).await, ["prod-eu", "prod-us"]);
}

/// A Node stored with a spec that does not parse (as after a schema change)
/// is reported, and the mesh is frozen rather than built without it.
#[tokio::test]
async fn a_malformed_node_is_reported_and_freezes_the_mesh() {
    let mut inputs = examples();
    inputs.nodes.truncate(1);
    let mut b = builder().with_runtime_objects(vec![serde_json::json!({
        "apiVersion": "aethermesh.io/v1alpha1", "kind": "Node",
        "metadata": {"name": "broken", "namespace": "aether"},
        "spec": {"mesh": "prod", "cloud": "us-east", "replicas": "three"}
    })]);
    for m in inputs.meshes {
        b = b.with_object(m);
    }
    for n in inputs.nodes {
        b = b.with_object(n);
    }
    let client = b.build().await.unwrap();
    reconcile(&client, "prod").await.unwrap();
    reconcile(&client, "prod").await.unwrap();
    assert!(names::<StatefulSet>(&client).await.is_empty());
    let mesh = Api::<Mesh>::namespaced(client.clone(), "aether").get("prod").await.unwrap();
    let degraded = condition(&mesh, "Degraded");
    assert_eq!(degraded.status, "True");
    assert!(degraded.message.contains("Node broken does not parse"), "{}", degraded.message);
}

/// The controller watches meshes untyped: one whose stored form does not parse
/// gets a status saying so, and a good one next to it is reconciled.
#[tokio::test]
async fn a_malformed_mesh_is_reported_without_failing_the_others() {
    use kube::core::DynamicObject;
    use kube::discovery::ApiResource;
    let mut b = ClientBuilder::new()
        .with_resource::<Mesh>()
        .with_resource::<Node>()
        .with_resource::<ClientQuota>()
        .with_status_subresource::<Mesh>()
        .with_runtime_objects(vec![serde_json::json!({
            "apiVersion": "aethermesh.io/v1alpha1", "kind": "Mesh",
            "metadata": {"name": "broken", "namespace": "aether"},
            "spec": {"shards": "many"}
        })]);
    for m in examples().meshes {
        b = b.with_object(m);
    }
    let client = b.build().await.unwrap();
    let ar = ApiResource::erase::<Mesh>(&());
    let raw: Api<DynamicObject> = Api::namespaced_with(client.clone(), "aether", &ar);
    for name in ["broken", "prod", "prod"] {
        let obj = raw.get(name).await.unwrap();
        let ctx = Arc::new(Context::new(client.clone(), Metrics::new()));
        controller::reconcile_dynamic(Arc::new(obj), ctx).await.unwrap();
    }
    let broken = raw.get("broken").await.unwrap();
    let status = &broken.data["status"]["conditions"];
    assert!(status.to_string().contains("does not parse"), "{status}");
    let prod = Api::<Mesh>::namespaced(client.clone(), "aether").get("prod").await.unwrap();
    assert!(prod.status.is_some() && prod.finalizers().contains(&FINALIZER.to_string()));
}

/// A changed image rolls every Node: still one relay of the mesh at a time.
#[tokio::test]
async fn a_mesh_wide_roll_releases_one_relay_at_a_time() {
    let client = cluster(examples()).await;
    reconcile(&client, "prod").await.unwrap();
    reconcile(&client, "prod").await.unwrap();
    let sts = Api::<StatefulSet>::namespaced(client.clone(), "aether");
    for (name, n) in [("prod-eu", 3), ("prod-us", 2)] {
        let status = serde_json::json!({"status": {"replicas": n, "readyReplicas": n, "updatedReplicas": 0,
            "currentRevision": "r1", "updateRevision": "r2"}});
        sts.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    }
    let healthy = Arc::new(Scripted::default());
    *healthy.state.lock().unwrap() = Some(HandoffState { in_membership: true, ..Default::default() });
    let released = || async {
        let mut n = 0;
        for (name, replicas) in [("prod-eu", 3), ("prod-us", 2)] {
            let p =
                sts.get(name).await.unwrap().spec.unwrap().update_strategy.unwrap().rolling_update.unwrap().partition;
            n += replicas - p.unwrap();
        }
        n
    };
    reconcile_with(&client, "prod", healthy.clone()).await.unwrap();
    assert_eq!(released().await, 1, "more than one relay of the mesh released at once");
    // Until that relay is back (updated and ready), nobody else goes.
    reconcile_with(&client, "prod", healthy).await.unwrap();
    assert_eq!(released().await, 1);
}

/// A pod-template change in the middle of a roll holds every relay again, so
/// the new template also goes through the gate, one pod at a time.
#[tokio::test]
async fn a_template_change_mid_roll_holds_every_relay_again() {
    let client = cluster(examples()).await;
    reconcile(&client, "prod").await.unwrap();
    reconcile(&client, "prod").await.unwrap();
    let sts = Api::<StatefulSet>::namespaced(client.clone(), "aether");
    let partition = || async {
        sts.get("prod-eu").await.unwrap().spec.unwrap().update_strategy.unwrap().rolling_update.unwrap().partition
    };
    let status = serde_json::json!({"status": {"replicas": 3, "readyReplicas": 3, "updatedReplicas": 0,
        "currentRevision": "r1", "updateRevision": "r2"}});
    sts.patch_status("prod-eu", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    let healthy = Arc::new(Scripted::default());
    *healthy.state.lock().unwrap() = Some(HandoffState { in_membership: true, ..Default::default() });
    reconcile_with(&client, "prod", healthy.clone()).await.unwrap();
    assert_eq!(partition().await, Some(2));
    // A new image while prod-eu-2 is released.
    let meshes = Api::<Mesh>::namespaced(client.clone(), "aether");
    let image = serde_json::json!({"spec": {"image": "ghcr.io/aethermesh/aether-relay:0.1.1"}});
    meshes.patch("prod", &PatchParams::default(), &Patch::Merge(&image)).await.unwrap();
    reconcile_with(&client, "prod", healthy).await.unwrap();
    assert_eq!(partition().await, Some(3), "the new template reached released pods without the gate");
    let mesh = meshes.get("prod").await.unwrap();
    assert!(condition(&mesh, "Progressing").message.contains("template changed"));
}

/// Deleting a Node drains it first: its relays leave the membership and keep
/// running until each has handed off; only then does the Node (and with it its
/// StatefulSet) go.
#[tokio::test]
async fn deleting_a_node_drains_it_before_it_goes() {
    use aether_operator::controller::NODE_FINALIZER;
    let mut inputs = examples();
    // prod-us is being deleted; its StatefulSet still runs two relays.
    let sts = aether_operator::build::build_statefulset(&inputs.meshes[0], &inputs.nodes[1]);
    let us = &mut inputs.nodes[1];
    us.metadata.finalizers = Some(vec![NODE_FINALIZER.into()]);
    us.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
    let mut b = builder().with_object(sts);
    for m in inputs.meshes {
        b = b.with_object(m);
    }
    for n in inputs.nodes {
        b = b.with_object(n);
    }
    let client = b.build().await.unwrap();
    let nodes = Api::<Node>::namespaced(client.clone(), "aether");
    let relays = Arc::new(Scripted::default());
    *relays.state.lock().unwrap() =
        Some(HandoffState { in_membership: false, pending_shards: 4, ..Default::default() });
    reconcile_with(&client, "prod", relays.clone()).await.unwrap();
    reconcile_with(&client, "prod", relays.clone()).await.unwrap();
    // Still holding shards: the Node stays, its relays run, out of the membership.
    assert_eq!(nodes.get("prod-us").await.unwrap().finalizers(), [NODE_FINALIZER.to_string()]);
    let sts_api = Api::<StatefulSet>::namespaced(client.clone(), "aether");
    assert_eq!(sts_api.get("prod-us").await.unwrap().spec.unwrap().replicas, Some(2));
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "aether").get("prod-mesh").await.unwrap();
    assert!(!cm.data.unwrap()["members"].contains("prod-us-"), "a deleting Node's relays are still members");
    // The other Node got the drain finalizer too.
    assert_eq!(nodes.get("prod-eu").await.unwrap().finalizers(), [NODE_FINALIZER.to_string()]);
    // Handed off: the finalizer goes.
    *relays.state.lock().unwrap() =
        Some(HandoffState { in_membership: false, pending_shards: 0, ..Default::default() });
    reconcile_with(&client, "prod", relays).await.unwrap();
    let gone = nodes.get_opt("prod-us").await.unwrap();
    assert!(
        gone.is_none_or(|n| !n.finalizers().contains(&NODE_FINALIZER.to_string())),
        "the drained Node is still held"
    );
    assert!(reasons(&client).await.contains(&"NodeReleased".to_string()));
}

/// The escape hatch: with `aethermesh.io/unsafe-skip-gates`, a roll blocked by
/// an unready relay moves on (one pod at a time) and a drain does not wait.
#[tokio::test]
async fn the_skip_gates_annotation_unblocks_rolls_and_drains() {
    use aether_operator::controller::SKIP_GATES;
    let client = cluster(examples()).await;
    reconcile(&client, "prod").await.unwrap();
    reconcile(&client, "prod").await.unwrap();
    let sts = Api::<StatefulSet>::namespaced(client.clone(), "aether");
    let partition = || async {
        sts.get("prod-eu").await.unwrap().spec.unwrap().update_strategy.unwrap().rolling_update.unwrap().partition
    };
    // prod-eu-0 crash-loops (2 of 3 ready) while a fix rolls out.
    let status = serde_json::json!({"status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 0,
        "currentRevision": "r1", "updateRevision": "r2"}});
    sts.patch_status("prod-eu", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    let unreachable = Arc::new(Scripted::default());
    reconcile_with(&client, "prod", unreachable.clone()).await.unwrap();
    assert_eq!(partition().await, Some(3), "the gate should hold an unhealthy mesh");
    let meshes = Api::<Mesh>::namespaced(client.clone(), "aether");
    let annotate = serde_json::json!({"metadata": {"annotations": {SKIP_GATES: "true"}}});
    meshes.patch("prod", &PatchParams::default(), &Patch::Merge(&annotate)).await.unwrap();
    reconcile_with(&client, "prod", unreachable.clone()).await.unwrap();
    assert_eq!(partition().await, Some(2));
    // And a drain of unreachable relays does not wait.
    let nodes = Api::<Node>::namespaced(client.clone(), "aether");
    nodes
        .patch("prod-us", &PatchParams::default(), &Patch::Merge(&serde_json::json!({"spec": {"replicas": 1}})))
        .await
        .unwrap();
    reconcile_with(&client, "prod", unreachable).await.unwrap();
    assert_eq!(sts.get("prod-us").await.unwrap().spec.unwrap().replicas, Some(1));
    assert!(reasons(&client).await.contains(&"GatesSkipped".to_string()));
}
