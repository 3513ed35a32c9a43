//! The reconciler: validate → build (pure, `build.rs`) → server-side apply
//! with owner references → remove orphans → status and events.
//!
//! One controller runs per `Mesh`; it watches the mesh's Nodes and
//! ClientQuotas and the children it owns, so a change to any of them
//! reconciles the mesh. Everything it writes is idempotent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::ApiResource;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{self, LABEL_MESH, MANAGER};
use crate::crd::{ClientQuota, CloudStatus, Mesh, MeshStatus, Node, NodeStatus};
use crate::metrics::Metrics;
use crate::validate;

/// The finalizer on every Mesh.
pub const FINALIZER: &str = "aethermesh.io/cleanup";
/// Mesh annotation, `"true"`: the escape hatch for a roll or drain that cannot
/// finish (a crash-looping relay that needs the fixed template, a Pending pod
/// that never ran): the health and hand-off checks are skipped, still one pod
/// at a time. Unsafe by design; remove it once the mesh is healthy.
pub const SKIP_GATES: &str = "aethermesh.io/unsafe-skip-gates";

fn skip_gates(mesh: &Mesh) -> bool {
    mesh.annotations().get(SKIP_GATES).is_some_and(|v| v == "true")
}

/// The finalizer on every Node: its relays hand their shards off before it goes.
pub const NODE_FINALIZER: &str = "aethermesh.io/drain";
/// How often a healthy mesh is looked at again without any change.
const RESYNC: Duration = Duration::from_secs(300);

/// A reconcile failed (the error policy retries with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

/// Shared by every reconcile.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Kubernetes Events (one recorder, so repeated events are aggregated).
    pub recorder: Recorder,
    /// Reconcile metrics.
    pub metrics: Metrics,
    /// Consecutive failures per mesh, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Whether the ServiceMonitor CRD exists (looked up once per reconcile).
    pub service_monitors: Option<bool>,
    /// Asks a leaving relay whether it has handed its shards off.
    pub handoff: Arc<dyn Handoff>,
}

/// A relay's hand-off and replication state, from its `/v1/admin/shards`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandoffState {
    /// The relay still sees itself in the membership (it has not re-read it yet).
    pub in_membership: bool,
    /// Shards it holds that some owner still lacks (0: safe to stop it).
    pub pending_shards: u64,
    /// Peers its replication stream is not connected to.
    pub disconnected_peers: u64,
    /// The largest replication lag to any peer, in milliseconds.
    pub max_lag_ms: u64,
}

impl HandoffState {
    /// Replication is healthy enough to restart another relay: every peer
    /// connected, nothing older than [`ROLL_MAX_LAG`] waiting.
    pub fn replication_healthy(&self) -> bool {
        self.disconnected_peers == 0 && self.max_lag_ms <= ROLL_MAX_LAG.as_millis() as u64
    }
}

/// A rolling restart moves to the next pod only while every relay's replication lag is below this.
pub const ROLL_MAX_LAG: Duration = Duration::from_secs(5);

/// The state future a [`Handoff`] returns.
pub type StateFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Result<HandoffState, String>> + Send + 'a>>;

/// Reads a relay's hand-off state (HTTP(S) in a cluster; scripted in tests).
pub trait Handoff: Send + Sync {
    /// The state at `url` (`…/v1/admin/shards`); `https://` URLs are verified
    /// against `ca_pem` (the mesh TLS Secret's `ca.crt`).
    fn state(&self, url: String, ca_pem: Option<Arc<Vec<u8>>>) -> StateFuture<'_>;
}

/// [`Handoff`] over HTTP/1.1, or HTTPS verified against the mesh's CA (in-cluster pod DNS).
pub struct HttpHandoff;

/// Reads `GET path` from `host` over `io` (plain or TLS).
async fn http_get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut io: S,
    host: &str,
    path: &str,
) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    io.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    // A TLS peer may close without close_notify once the body is sent: keep what arrived.
    // The shard table of a large mesh is several MiB.
    match (&mut io).take(64 << 20).read_to_end(&mut out).await {
        Ok(_) => Ok(out),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => Ok(out),
        Err(e) => Err(e),
    }
}

fn tls_connector(ca_pem: &[u8]) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.map_err(|e| format!("ca.crt: {e}"))?).map_err(|e| format!("ca.crt: {e}"))?;
    }
    if roots.is_empty() {
        return Err("ca.crt holds no certificate".into());
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

impl Handoff for HttpHandoff {
    fn state(&self, url: String, ca_pem: Option<Arc<Vec<u8>>>) -> StateFuture<'_> {
        Box::pin(async move {
            let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
                (Some(r), _) => (false, r),
                (_, Some(r)) => (true, r),
                _ => return Err(format!("{url}: not an http(s) URL")),
            };
            let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
            let io = async {
                let tcp = tokio::net::TcpStream::connect(host).await.map_err(|e| e.to_string())?;
                if !tls {
                    return http_get(tcp, host, &path).await.map_err(|e| e.to_string());
                }
                let ca = ca_pem.ok_or("the mesh's TLS Secret has no ca.crt to verify relays with")?;
                let connector = tls_connector(&ca)?;
                let name = host.rsplit_once(':').map_or(host, |(h, _)| h).to_owned();
                let server = rustls::pki_types::ServerName::try_from(name).map_err(|e| e.to_string())?;
                let stream = connector.connect(server, tcp).await.map_err(|e| format!("TLS: {e}"))?;
                http_get(stream, host, &path).await.map_err(|e| e.to_string())
            };
            let out = tokio::time::timeout(Duration::from_secs(5), io)
                .await
                .map_err(|_| format!("{url}: timed out"))?
                .map_err(|e: String| format!("{url}: {e}"))?;
            let text = String::from_utf8_lossy(&out);
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b).ok_or(format!("{url}: no HTTP body"))?;
            let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("{url}: {e}"))?;
            let peers = v["peers"].as_array().cloned().unwrap_or_default();
            Ok(HandoffState {
                in_membership: v["in_membership"].as_bool().unwrap_or(true),
                // No hand-off state yet (no full pass over the current membership): not done.
                pending_shards: v["handoff"]["pending_shards"].as_u64().unwrap_or(u64::MAX),
                disconnected_peers: peers.iter().filter(|p| !p["connected"].as_bool().unwrap_or(false)).count() as u64,
                max_lag_ms: peers
                    .iter()
                    .map(|p| (p["lag_seconds"].as_f64().unwrap_or(0.0) * 1000.0) as u64)
                    .max()
                    .unwrap_or(0),
            })
        })
    }
}

impl Context {
    /// A context for `client`.
    pub fn new(client: Client, metrics: Metrics) -> Self {
        let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            failures: Mutex::new(HashMap::new()),
            service_monitors: None,
            handoff: Arc::new(HttpHandoff),
        }
    }
}

/// Reconciles one mesh: the finalizer first (added before anything is built,
/// run and removed on deletion), then [`apply`].
///
/// The finalizer is written with a merge patch carrying the object's
/// `resourceVersion` (optimistic concurrency, as controller-runtime's
/// `Update` does) rather than kube's JSON-patch helper, whose `test` on an
/// absent `/metadata/finalizers` the in-memory API server used in tests does
/// not accept.
#[tracing::instrument(name = "reconcile", skip_all, fields(mesh = %mesh.name_any(), namespace = mesh.namespace().unwrap_or_default()))]
pub async fn reconcile(mesh: Arc<Mesh>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&mesh, &ctx).await;
    ctx.metrics.observe(started.elapsed(), result.is_ok());
    result
}

async fn reconcile_inner(mesh: &Mesh, ctx: &Context) -> Result<Action, Error> {
    let ns = mesh.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Mesh> = Api::namespaced(ctx.client.clone(), &ns);
    let name = mesh.name_any();
    let has = mesh.finalizers().iter().any(|f| f == FINALIZER);
    if mesh.metadata.deletion_timestamp.is_some() {
        if has {
            let action = cleanup(mesh, ctx).await?;
            let rest: Vec<&String> = mesh.finalizers().iter().filter(|f| *f != FINALIZER).collect();
            set_finalizers(&api, mesh, &rest).await?;
            return Ok(action);
        }
        return Ok(Action::await_change());
    }
    if !has {
        let mut all: Vec<&String> = mesh.finalizers().iter().collect();
        let ours = FINALIZER.to_string();
        all.push(&ours);
        set_finalizers(&api, mesh, &all).await?;
        // The update wakes the controller again; build then.
        return Ok(Action::await_change());
    }
    tracing::debug!(mesh = %name, "reconciling");
    apply(mesh, ctx).await
}

async fn set_finalizers(api: &Api<Mesh>, mesh: &Mesh, finalizers: &[&String]) -> Result<(), Error> {
    let patch = serde_json::json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": mesh.resource_version() }
    });
    api.patch(&mesh.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(kube_err(format!("updating the finalizers of mesh {}", mesh.name_any())))?;
    Ok(())
}

/// [`reconcile`] for the untyped watch `run` uses: a Mesh whose stored form no
/// longer parses (as after a schema change) is reported in its status and
/// with an Event, instead of failing the watch of every mesh.
pub async fn reconcile_dynamic(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let parsed = serde_json::to_value(obj.as_ref()).and_then(serde_json::from_value::<Mesh>);
    match parsed {
        Ok(mesh) => reconcile(Arc::new(mesh), ctx).await,
        Err(e) => {
            let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
            if obj.metadata.deletion_timestamp.is_some() {
                // Nothing to build from it; let it (and its Nodes being deleted) go.
                release_deleting_nodes(&ctx, &ns, &name).await?;
                let rest: Vec<&String> = obj.finalizers().iter().filter(|f| *f != FINALIZER).collect();
                let api: Api<DynamicObject> =
                    Api::namespaced_with(ctx.client.clone(), &ns, &ApiResource::erase::<Mesh>(&()));
                let patch = serde_json::json!({ "metadata": { "finalizers": rest, "resourceVersion": obj.resource_version() } });
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(kube_err(format!("updating the finalizers of mesh {name}")))?;
                return Ok(Action::await_change());
            }
            let msg = format!("the Mesh does not parse: {e}");
            tracing::warn!(mesh = %name, namespace = %ns, error = %e, "malformed Mesh");
            // Untyped: the answer is the same malformed object.
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), &ns, &ApiResource::erase::<Mesh>(&()));
            let status = MeshStatus {
                observed_generation: obj.metadata.generation,
                conditions: vec![
                    condition("Ready", false, "Malformed", msg.clone(), obj.metadata.generation),
                    condition("Degraded", true, "Malformed", msg, obj.metadata.generation),
                ],
                clouds: vec![],
            };
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&serde_json::json!({ "status": status })))
                .await
                .map_err(kube_err(format!("writing the status of mesh {name}")))?;
            Ok(Action::requeue(RESYNC))
        }
    }
}

/// [`error_policy`] for the untyped watch.
pub fn error_policy_dynamic(obj: Arc<DynamicObject>, error: &Error, ctx: Arc<Context>) -> Action {
    retry(format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()), error, &ctx)
}

/// Retries a failed mesh with exponential backoff (1 s doubling to 5 min, with jitter).
pub fn error_policy(mesh: Arc<Mesh>, error: &Error, ctx: Arc<Context>) -> Action {
    retry(format!("{}/{}", mesh.namespace().unwrap_or_default(), mesh.name_any()), error, &ctx)
}

fn retry(key: String, error: &Error, ctx: &Context) -> Action {
    let n = {
        let mut f = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let delay = backoff(n);
    tracing::warn!(mesh = %key, error = %error, failures = n, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// 1 s doubling per failure up to 5 min, with ±20 % jitter.
pub fn backoff(failures: u32) -> Duration {
    let base =
        Duration::from_secs(1).saturating_mul(1 << failures.saturating_sub(1).min(9)).min(Duration::from_secs(300));
    base.mul_f64(0.8 + 0.4 * rand::random::<f64>())
}

async fn event(ctx: &Context, mesh: &Mesh, type_: EventType, reason: &str, note: String) {
    let ev = Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&ev, &mesh.object_ref(&())).await {
        tracing::debug!(error = %e, reason, "could not publish an event");
    }
}

fn condition(type_: &str, ok: bool, reason: &str, message: String, generation: Option<i64>) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(jiff::Timestamp::now()),
    }
}

/// Keeps a condition's transition time when its status did not change.
fn merge_conditions(old: &[Condition], new: Vec<Condition>) -> Vec<Condition> {
    new.into_iter()
        .map(|mut c| {
            if let Some(o) = old.iter().find(|o| o.type_ == c.type_ && o.status == c.status) {
                c.last_transition_time = o.last_transition_time.clone();
            }
            c
        })
        .collect()
}

async fn set_status(ctx: &Context, mesh: &Mesh, status: MeshStatus) -> Result<(), Error> {
    let api: Api<Mesh> = Api::namespaced(ctx.client.clone(), &mesh.namespace().unwrap_or_default());
    let old = mesh.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let status = MeshStatus { conditions: merge_conditions(old, status.conditions), ..status };
    let patch = serde_json::json!({ "status": status });
    api.patch_status(&mesh.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(kube_err(format!("writing the status of mesh {}", mesh.name_any())))?;
    Ok(())
}

async fn apply_object<K>(api: &Api<K>, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj))
        .await
        .map_err(kube_err(format!("applying {} {name}", K::kind(&()))))
        .map(|_| ())
}

/// Deletes objects of kind `K` labelled with the mesh that are not in `keep`; returns their names.
async fn remove_orphans<K>(api: &Api<K>, mesh: &str, keep: &BTreeSet<String>) -> Result<Vec<String>, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let list = api
        .list(&ListParams::default().labels(&format!("{LABEL_MESH}={mesh},app.kubernetes.io/managed-by={MANAGER}")))
        .await
        .map_err(kube_err("listing children"))?;
    let mut removed = Vec::new();
    for obj in list {
        let name = obj.name_any();
        // Labels can be copied (`kubectl expose` does): only objects this operator made,
        // controlled by one of the mesh's Nodes or the Mesh itself, are ever removed.
        let ours = obj.owner_references().iter().any(|o| {
            o.controller == Some(true)
                && o.api_version.starts_with("aethermesh.io/")
                && (o.kind == "Node" || o.kind == "Mesh")
        });
        if ours && !keep.contains(&name) {
            api.delete(&name, &DeleteParams::default()).await.map_err(kube_err(format!("deleting orphan {name}")))?;
            removed.push(name);
        }
    }
    Ok(removed)
}

fn names<K: Resource>(objs: &[K]) -> BTreeSet<String> {
    objs.iter().filter_map(|o| o.meta().name.clone()).collect()
}

/// The apply half of a reconcile.
pub async fn apply(mesh: &Mesh, ctx: &Context) -> Result<Action, Error> {
    let ns = mesh.namespace().unwrap_or_else(|| "default".into());
    let name = mesh.name_any();
    let generation = mesh.metadata.generation;
    let client = ctx.client.clone();

    // 1. Validate: an invalid mesh is reported, never built.
    let problems = validate::mesh(mesh);
    if !problems.is_empty() {
        let msg = problems.join("; ");
        event(ctx, mesh, EventType::Warning, "Invalid", msg.clone()).await;
        // Deletion still proceeds (without a drain: there is no valid mesh to drain into).
        release_deleting_nodes(ctx, &ns, &name).await?;
        let conditions = vec![
            condition("Ready", false, "Invalid", msg.clone(), generation),
            condition("Progressing", false, "Invalid", "nothing is applied until the spec is fixed".into(), generation),
            condition("Degraded", true, "Invalid", msg, generation),
        ];
        set_status(ctx, mesh, MeshStatus { observed_generation: generation, conditions, clouds: vec![] }).await?;
        return Ok(Action::requeue(RESYNC));
    }
    if mesh.spec.paused {
        // Paused stops changes, not deletion: Nodes being deleted go (without a drain).
        release_deleting_nodes(ctx, &ns, &name).await?;
        let conditions = vec![condition(
            "Progressing",
            false,
            "Paused",
            "spec.paused: children are left as they are".into(),
            generation,
        )];
        let mut status = mesh.status.clone().unwrap_or_default();
        status.observed_generation = generation;
        status.conditions.retain(|c| c.type_ != "Progressing");
        status.conditions.extend(conditions);
        set_status(ctx, mesh, status).await?;
        return Ok(Action::requeue(RESYNC));
    }

    // 2. Inputs: the mesh's Nodes and quotas; invalid ones are left out and reported.
    let node_api: Api<Node> = Api::namespaced(client.clone(), &ns);
    let quota_api: Api<ClientQuota> = Api::namespaced(client.clone(), &ns);
    // Read leniently: one object that does not parse is reported, not fatal to the others.
    let (all_nodes, mut invalid) = list_lenient::<Node>(&client, &ns, "Node").await?;
    let (all_quotas, bad_quotas) = list_lenient::<ClientQuota>(&client, &ns, "ClientQuota").await?;
    invalid.extend(bad_quotas);
    // A Node being deleted is drained first: built as if scaled to 0 (its pods leave the
    // membership and hand off), and released (its finalizer removed) only once they have.
    let all_nodes: Vec<Node> = all_nodes
        .into_iter()
        .map(|mut n| {
            if n.metadata.deletion_timestamp.is_some() {
                n.spec.replicas = 0;
            }
            n
        })
        .collect();
    let nodes: Vec<&Node> = all_nodes
        .iter()
        .filter(|n| n.spec.mesh == name)
        .filter(|n| {
            // A Node being deleted is drained whatever its spec says now.
            if n.metadata.deletion_timestamp.is_some() {
                return true;
            }
            let p = validate::node(n, mesh);
            if !p.is_empty() {
                invalid.push(format!("Node {}: {}", n.name_any(), p.join("; ")));
            }
            p.is_empty()
        })
        .collect();
    let quotas: Vec<&ClientQuota> = all_quotas
        .iter()
        .filter(|q| q.spec.mesh == name)
        .filter(|q| {
            let p = validate::quota(q);
            if !p.is_empty() {
                invalid.push(format!("ClientQuota {}: {}", q.name_any(), p.join("; ")));
            }
            p.is_empty()
        })
        .collect();

    // A Node that no longer parses cannot be drained: if it is being deleted, release it.
    let released = release_unparseable_deleting(ctx, &ns, &name).await?;
    invalid.retain(|p| !released.iter().any(|r| p.starts_with(&format!("Node {r} "))));
    // Any invalid or unparseable Node or quota freezes the mesh: building without it would
    // drop its relays from the membership and delete its StatefulSet, taking a cloud down.
    if !invalid.is_empty() {
        let msg = invalid.join("; ");
        event(ctx, mesh, EventType::Warning, "InvalidChildren", msg.clone()).await;
        let mut status = mesh.status.clone().unwrap_or_default();
        status.observed_generation = generation;
        status.conditions.retain(|c| c.type_ != "Degraded" && c.type_ != "Progressing");
        status.conditions.push(condition("Degraded", true, "InvalidChildren", msg, generation));
        status.conditions.push(condition(
            "Progressing",
            false,
            "InvalidChildren",
            "nothing is changed until every Node and ClientQuota of the mesh is valid".into(),
            generation,
        ));
        set_status(ctx, mesh, status).await?;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }

    // 3. Scale-down is drained: pods that will go leave the membership first, and their
    //    StatefulSet keeps them until each has handed its shards off.
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let ca = mesh_ca(ctx, mesh, &ns).await;
    let mut draining = BTreeMap::new();
    let mut held_replicas = BTreeMap::new();
    let mut waiting = Vec::new();
    for n in &nodes {
        let current = sts_api
            .get_opt(&n.name_any())
            .await
            .map_err(kube_err("reading a StatefulSet"))?
            .and_then(|s| s.spec?.replicas)
            .unwrap_or(0);
        if current <= n.spec.replicas {
            continue;
        }
        draining.insert(n.name_any(), n.spec.replicas);
        let before = waiting.len();
        if skip_gates(mesh) {
            event(
                ctx,
                mesh,
                EventType::Warning,
                "GatesSkipped",
                format!("{} scaled down without hand-off ({SKIP_GATES})", n.name_any()),
            )
            .await;
            continue;
        }
        for ordinal in n.spec.replicas..current {
            let url = build::admin_shards_url(mesh, &n.name_any(), ordinal);
            match ctx.handoff.state(url, ca.clone()).await {
                Ok(HandoffState { in_membership: false, pending_shards: 0, .. }) => {}
                Ok(s) => waiting.push(format!(
                    "{}-{ordinal}: {} shards to hand off{}",
                    n.name_any(),
                    s.pending_shards,
                    if s.in_membership { ", membership not re-read yet" } else { "" }
                )),
                Err(e) => waiting.push(format!("{}-{ordinal}: hand-off unknown ({e})", n.name_any())),
            }
        }
        if waiting.len() > before {
            held_replicas.insert(n.name_any(), current);
        }
    }

    // Nodes get the drain finalizer; a deleting Node whose relays have all handed off loses it.
    let node_api_for_finalizers: Api<Node> = Api::namespaced(client.clone(), &ns);
    for n in &nodes {
        let has = n.finalizers().iter().any(|f| f == NODE_FINALIZER);
        let deleting = n.metadata.deletion_timestamp.is_some();
        let drained = !held_replicas.contains_key(&n.name_any())
            && !waiting.iter().any(|w| w.starts_with(&format!("{}-", n.name_any())));
        let wanted: Option<Vec<String>> = match (deleting, has) {
            (false, false) => Some(n.finalizers().iter().cloned().chain([NODE_FINALIZER.to_string()]).collect()),
            (true, true) if drained => Some(n.finalizers().iter().filter(|f| *f != NODE_FINALIZER).cloned().collect()),
            _ => None,
        };
        if let Some(finalizers) = wanted {
            let patch = serde_json::json!({
                "metadata": { "finalizers": finalizers, "resourceVersion": n.resource_version() }
            });
            node_api_for_finalizers
                .patch(&n.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(kube_err(format!("updating the finalizers of Node {}", n.name_any())))?;
            if deleting {
                event(
                    ctx,
                    mesh,
                    EventType::Normal,
                    "NodeReleased",
                    format!("Node {} drained; deleting it", n.name_any()),
                )
                .await;
            }
        }
    }

    // 4. Build (pure) and apply.
    let mut children = build::build_all_draining(mesh, &nodes, &quotas, &draining);
    for sts in &mut children.statefulsets {
        if let (Some(keep), Some(spec)) =
            (sts.metadata.name.as_ref().and_then(|n| held_replicas.get(n)), sts.spec.as_mut())
        {
            spec.replicas = Some(*keep);
        }
    }
    // Rolling restarts are gated: the StatefulSet's partition holds every pod, and the
    // operator releases one more only while every relay is ready and replicating.
    let mut rolling = Vec::new();
    // One pod per mesh at a time: a changed image rolls every Node, and two owners of a
    // shard must never restart together.
    let mut existing = BTreeMap::new();
    for sts in &children.statefulsets {
        let name = sts.metadata.name.clone().unwrap_or_default();
        if let Some(current) = sts_api.get_opt(&name).await.map_err(kube_err("reading a StatefulSet"))? {
            existing.insert(name, current);
        }
    }
    let held_partition = |current: &StatefulSet, replicas: i32| {
        current
            .spec
            .as_ref()
            .and_then(|s| s.update_strategy.as_ref()?.rolling_update.as_ref()?.partition)
            .unwrap_or(replicas)
            .min(replicas)
    };
    // A released pod anywhere in the mesh that is not back (updated and ready) blocks every roll.
    let mut released = !skip_gates(mesh)
        && existing.values().any(|cur| {
            let replicas = cur.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            let p = held_partition(cur, replicas);
            cur.status.as_ref().is_some_and(|st| {
                p < replicas
                    && (st.ready_replicas.unwrap_or(0) < st.replicas || st.updated_replicas.unwrap_or(0) < replicas - p)
            })
        });
    for sts in &mut children.statefulsets {
        let name = sts.metadata.name.clone().unwrap_or_default();
        let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        // The pod template's hash, kept as an annotation: a template that changes while a roll
        // is in flight must not reach the pods already released without passing the gate.
        let hash = template_hash(sts);
        sts.metadata.annotations.get_or_insert_with(Default::default).insert(TEMPLATE_HASH.into(), hash.clone());
        let partition = match existing.get(&name) {
            None => replicas,
            Some(current) if current.annotations().get(TEMPLATE_HASH).is_some_and(|h| *h != hash) => {
                rolling.push(format!("{name}: the pod template changed; every relay is held, the roll starts over"));
                replicas
            }
            Some(current) => {
                let before = held_partition(current, replicas);
                let (mut held, why) = roll_partition(ctx, mesh, &name, current, replicas, ca.clone()).await;
                if held < before {
                    if released {
                        held = before; // one pod per mesh at a time
                    } else {
                        released = true;
                    }
                }
                if let Some(why) = why {
                    rolling.push(format!("{name}: {why}"));
                }
                held
            }
        };
        if let Some(ru) =
            sts.spec.as_mut().and_then(|s| s.update_strategy.as_mut()).and_then(|u| u.rolling_update.as_mut())
        {
            ru.partition = Some(partition);
        }
    }
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let svc_api: Api<Service> = Api::namespaced(client.clone(), &ns);
    let pdb_api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let np_api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    apply_object(&cm_api, &children.config_map).await?;
    for s in &children.services {
        apply_object(&svc_api, s).await?;
    }
    for s in &children.statefulsets {
        apply_object(&sts_api, s).await?;
    }
    for p in &children.pdbs {
        apply_object(&pdb_api, p).await?;
    }
    for p in &children.network_policies {
        apply_object(&np_api, p).await?;
    }
    let cron_api: Api<k8s_openapi::api::batch::v1::CronJob> = Api::namespaced(client.clone(), &ns);
    if let Some(c) = &children.compaction {
        apply_object(&cron_api, c).await?;
    }
    if service_monitor_crd_exists(ctx).await {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"));
        let sm_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        for sm in &children.service_monitors {
            let obj: DynamicObject = serde_json::from_value(sm.clone()).expect("built as a valid object");
            let n = obj.name_any();
            sm_api
                .patch(&n, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&obj))
                .await
                .map_err(kube_err(format!("applying ServiceMonitor {n}")))?;
        }
    }

    // 5. Orphans: children of this mesh that the spec no longer asks for.
    let mut removed = Vec::new();
    removed.extend(remove_orphans(&sts_api, &name, &names(&children.statefulsets)).await?);
    removed.extend(remove_orphans(&svc_api, &name, &names(&children.services)).await?);
    removed.extend(remove_orphans(&pdb_api, &name, &names(&children.pdbs)).await?);
    removed.extend(remove_orphans(&np_api, &name, &names(&children.network_policies)).await?);
    let cron_keep: Vec<_> = children.compaction.iter().cloned().collect();
    removed.extend(remove_orphans(&cron_api, &name, &names(&cron_keep)).await?);
    if !removed.is_empty() {
        event(ctx, mesh, EventType::Normal, "Pruned", format!("removed {}", removed.join(", "))).await;
    }

    // 6. Status: ready relays per cloud from the StatefulSets.
    let mut clouds: BTreeMap<String, CloudStatus> = BTreeMap::new();
    let (mut wanted, mut ready) = (0, 0);
    for n in &nodes {
        let sts = sts_api.get_opt(&n.name_any()).await.map_err(kube_err("reading a StatefulSet"))?;
        let r = sts.and_then(|s| s.status).and_then(|s| s.ready_replicas).unwrap_or(0);
        let c = clouds
            .entry(n.spec.cloud.clone())
            .or_insert_with(|| CloudStatus { name: n.spec.cloud.clone(), ..Default::default() });
        c.relays += n.spec.replicas;
        c.ready_relays += r;
        wanted += n.spec.replicas;
        ready += r;
        set_node_status(&node_api, n, r).await?;
    }
    let all_ready = ready >= wanted && wanted > 0;
    let conditions = vec![
        condition(
            "Ready",
            all_ready && invalid.is_empty(),
            if all_ready { "RelaysReady" } else { "RelaysStarting" },
            format!("{ready}/{wanted} relays ready"),
            generation,
        ),
        if !waiting.is_empty() {
            condition("Progressing", true, "Draining", waiting.join("; "), generation)
        } else if !rolling.is_empty() {
            condition("Progressing", true, "RollingUpdate", rolling.join("; "), generation)
        } else {
            condition(
                "Progressing",
                !all_ready,
                if all_ready { "Reconciled" } else { "RollingOut" },
                format!("{} StatefulSets applied", children.statefulsets.len()),
                generation,
            )
        },
        condition(
            "Degraded",
            !invalid.is_empty(),
            if invalid.is_empty() { "AllValid" } else { "InvalidChildren" },
            if invalid.is_empty() { "every Node and ClientQuota is valid".into() } else { invalid.join("; ") },
            generation,
        ),
    ];
    if !invalid.is_empty() {
        event(ctx, mesh, EventType::Warning, "InvalidChildren", invalid.join("; ")).await;
    }
    for q in all_quotas.iter().filter(|q| q.spec.mesh == name) {
        set_quota_status(&quota_api, q, &build::config_map_name(&name)).await?;
    }
    let changed = mesh.status.as_ref().and_then(|s| s.observed_generation) != generation;
    set_status(
        ctx,
        mesh,
        MeshStatus { observed_generation: generation, conditions, clouds: clouds.into_values().collect() },
    )
    .await?;
    if changed {
        event(ctx, mesh, EventType::Normal, "Applied", format!("generation {} applied", generation.unwrap_or(0))).await;
    }
    if !waiting.is_empty() {
        event(ctx, mesh, EventType::Normal, "Draining", waiting.join("; ")).await;
    }
    ctx.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&format!("{ns}/{name}"));
    let again = if !waiting.is_empty() || !rolling.is_empty() {
        Duration::from_secs(5)
    } else if all_ready {
        RESYNC
    } else {
        Duration::from_secs(15)
    };
    Ok(Action::requeue(again))
}

/// Annotation with the hash of a StatefulSet's pod template as last applied.
pub const TEMPLATE_HASH: &str = "aethermesh.io/template-hash";

/// A stable hash of a StatefulSet's pod template (its JSON; BTreeMaps keep keys ordered).
fn template_hash(sts: &StatefulSet) -> String {
    let json = sts.spec.as_ref().map(|s| serde_json::to_string(&s.template).unwrap_or_default()).unwrap_or_default();
    // Stable across builds and versions; not cryptographic: it only tells "changed" from "same".
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(json.as_bytes()))
}

/// The CA relays' certificates are checked against (`ca.crt` of the mesh TLS Secret), if any.
async fn mesh_ca(ctx: &Context, mesh: &Mesh, ns: &str) -> Option<Arc<Vec<u8>>> {
    let secret = &mesh.spec.tls.as_ref()?.secret_name;
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(ctx.client.clone(), ns);
    match api.get_opt(secret).await {
        Ok(Some(s)) => s.data.and_then(|d| d.get("ca.crt").map(|b| Arc::new(b.0.clone()))),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(%secret, error = %e, "cannot read the mesh TLS Secret");
            None
        }
    }
}

/// The partition for a StatefulSet that exists: everything held when no
/// update is rolling; during one, one pod more per call while every pod is
/// ready and every relay replicates. Returns the partition and, while rolling,
/// what the roll is at.
async fn roll_partition(
    ctx: &Context,
    mesh: &Mesh,
    name: &str,
    current: &StatefulSet,
    replicas: i32,
    ca: Option<Arc<Vec<u8>>>,
) -> (i32, Option<String>) {
    let status = current.status.clone().unwrap_or_default();
    let partition = current
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref()?.rolling_update.as_ref()?.partition)
        .unwrap_or(0)
        .min(replicas);
    let in_progress = status.update_revision.is_some() && status.update_revision != status.current_revision
        || status.updated_replicas.unwrap_or(0) < status.replicas;
    if !in_progress {
        return (replicas, None);
    }
    // The pods released so far must have been replaced before the next one goes.
    if status.updated_replicas.unwrap_or(0) < replicas - partition {
        return (partition, Some(format!("rolling, partition {partition}: waiting for the released relay to restart")));
    }
    if skip_gates(mesh) {
        let next = (partition - 1).max(0);
        return (next, Some(format!("rolling, partition {next} of {replicas}, health not checked ({SKIP_GATES})")));
    }
    if status.ready_replicas.unwrap_or(0) < status.replicas {
        return (partition, Some(format!("rolling, partition {partition}: waiting for every relay to be ready")));
    }
    let mut unhealthy = Vec::new();
    for ordinal in 0..status.replicas {
        match ctx.handoff.state(build::admin_shards_url(mesh, name, ordinal), ca.clone()).await {
            Ok(s) if s.replication_healthy() => {}
            Ok(s) => unhealthy.push(format!(
                "{name}-{ordinal} ({} peers disconnected, lag {} ms)",
                s.disconnected_peers, s.max_lag_ms
            )),
            Err(e) => unhealthy.push(format!("{name}-{ordinal} ({e})")),
        }
    }
    if !unhealthy.is_empty() {
        return (
            partition,
            Some(format!("rolling, partition {partition}: replication not healthy: {}", unhealthy.join(", "))),
        );
    }
    let next = (partition - 1).max(0);
    (next, Some(format!("rolling, partition {next} of {replicas}")))
}

/// Lists `K` in `ns` as untyped objects and parses each on its own: the ones
/// that parse, and a message naming each one that does not (an object stored
/// before a schema change, say). A typed list would fail as a whole.
async fn list_lenient<K>(client: &Client, ns: &str, kind: &str) -> Result<(Vec<K>, Vec<String>), Error>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let ar = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let list = api.list(&ListParams::default()).await.map_err(kube_err(format!("listing {kind}s")))?;
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for obj in list {
        let name = obj.name_any();
        match serde_json::to_value(&obj).and_then(serde_json::from_value::<K>) {
            Ok(k) => good.push(k),
            Err(e) => bad.push(format!("{kind} {name} does not parse: {e}")),
        }
    }
    Ok((good, bad))
}

async fn set_node_status(api: &Api<Node>, node: &Node, ready: i32) -> Result<(), Error> {
    let ok = ready >= node.spec.replicas;
    let status = NodeStatus {
        observed_generation: node.metadata.generation,
        ready_replicas: ready,
        conditions: merge_conditions(
            node.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default(),
            vec![condition(
                "Ready",
                ok,
                if ok { "RelaysReady" } else { "RelaysStarting" },
                format!("{ready}/{} relays ready", node.spec.replicas),
                node.metadata.generation,
            )],
        ),
    };
    let patch = serde_json::json!({ "status": status });
    match api.patch_status(&node.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        // Drained and released in this very reconcile: gone, nothing to report on.
        Err(kube::Error::Api(e)) if e.code == 404 && node.metadata.deletion_timestamp.is_some() => Ok(()),
        Err(e) => Err(kube_err(format!("writing the status of Node {}", node.name_any()))(e)),
    }
}

/// A quota is compiled (or not, when invalid); usage is not reported by relays
/// yet, and the status says so instead of showing a number.
async fn set_quota_status(api: &Api<ClientQuota>, q: &ClientQuota, config_map: &str) -> Result<(), Error> {
    let problems = validate::quota(q);
    let g = q.metadata.generation;
    let ready = if problems.is_empty() {
        condition("Ready", true, "Compiled", format!("in quotas.json of ConfigMap {config_map}"), g)
    } else {
        condition("Ready", false, "Invalid", problems.join("; "), g)
    };
    let usage = condition(
        "UsageReported",
        false,
        "RelaysDoNotReportUsage",
        "relays do not enforce quotas or report usage yet".into(),
        g,
    );
    let old = q.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let status =
        crate::crd::ClientQuotaStatus { observed_generation: g, conditions: merge_conditions(old, vec![ready, usage]) };
    api.patch_status(&q.name_any(), &PatchParams::default(), &Patch::Merge(&serde_json::json!({ "status": status })))
        .await
        .map_err(kube_err(format!("writing the status of ClientQuota {}", q.name_any())))?;
    Ok(())
}

async fn service_monitor_crd_exists(ctx: &Context) -> bool {
    if let Some(known) = ctx.service_monitors {
        return known;
    }
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(ctx.client.clone());
    matches!(crds.get_opt("servicemonitors.monitoring.coreos.com").await, Ok(Some(_)))
}

/// Removes the drain finalizer from every Node of mesh `mesh_name` that is
/// being deleted, without a drain: when there is no mesh to drain into (it is
/// being deleted, paused, invalid or unparseable), deletion must still finish.
/// Untyped, so Nodes that no longer parse are released too.
async fn release_deleting_nodes(ctx: &Context, ns: &str, mesh_name: &str) -> Result<Vec<String>, Error> {
    release_nodes(ctx, ns, mesh_name, |_| true).await
}

/// Releases the Nodes of the mesh being deleted that no longer parse (they cannot be drained).
async fn release_unparseable_deleting(ctx: &Context, ns: &str, mesh_name: &str) -> Result<Vec<String>, Error> {
    release_nodes(ctx, ns, mesh_name, |n| serde_json::to_value(n).and_then(serde_json::from_value::<Node>).is_err())
        .await
}

async fn release_nodes(
    ctx: &Context,
    ns: &str,
    mesh_name: &str,
    which: impl Fn(&DynamicObject) -> bool,
) -> Result<Vec<String>, Error> {
    let ar = ApiResource::erase::<Node>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    let mut released = Vec::new();
    for n in api.list(&ListParams::default()).await.map_err(kube_err("listing Nodes"))? {
        let mine = n.data.get("spec").and_then(|s| s.get("mesh")).and_then(|m| m.as_str()) == Some(mesh_name);
        let held = n.finalizers().iter().any(|f| f == NODE_FINALIZER);
        if !(mine && held && n.metadata.deletion_timestamp.is_some() && which(&n)) {
            continue;
        }
        let rest: Vec<&String> = n.finalizers().iter().filter(|f| *f != NODE_FINALIZER).collect();
        let patch = serde_json::json!({ "metadata": { "finalizers": rest, "resourceVersion": n.resource_version() } });
        api.patch(&n.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(kube_err(format!("releasing Node {}", n.name_any())))?;
        released.push(n.name_any());
    }
    Ok(released)
}

/// The cleanup half: children go with their owner references (garbage
/// collection); volumes are kept on purpose (they hold the data).
pub async fn cleanup(mesh: &Mesh, ctx: &Context) -> Result<Action, Error> {
    let ns = mesh.namespace().unwrap_or_else(|| "default".into());
    let released = release_deleting_nodes(ctx, &ns, &mesh.name_any()).await?;
    if !released.is_empty() {
        event(
            ctx,
            mesh,
            EventType::Warning,
            "NodeReleasedWithoutDrain",
            format!("the mesh is going: {}", released.join(", ")),
        )
        .await;
    }
    event(
        ctx,
        mesh,
        EventType::Normal,
        "Deleted",
        "children are garbage-collected; relay volumes (PersistentVolumeClaims) are kept".into(),
    )
    .await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_minutes_with_jitter() {
        for (failures, base) in [(1u32, 1.0f64), (2, 2.0), (5, 16.0), (9, 256.0), (10, 300.0), (40, 300.0)] {
            let d = backoff(failures).as_secs_f64();
            assert!(d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9, "failure {failures}: {d}s, base {base}s");
        }
    }

    #[test]
    fn conditions_keep_their_transition_time_while_their_status_holds() {
        let old = vec![condition("Ready", true, "RelaysReady", "3/3".into(), Some(1))];
        let t0 = old[0].last_transition_time.clone();
        std::thread::sleep(Duration::from_millis(5));
        let same = merge_conditions(&old, vec![condition("Ready", true, "RelaysReady", "3/3".into(), Some(2))]);
        assert_eq!(same[0].last_transition_time, t0);
        let flipped = merge_conditions(&old, vec![condition("Ready", false, "RelaysStarting", "2/3".into(), Some(2))]);
        assert_ne!(flipped[0].last_transition_time, t0);
    }
}
