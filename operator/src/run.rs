//! `aether-operator run`: the controller against the cluster in the
//! environment (in-cluster service account, or `KUBECONFIG`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::core::DynamicObject;
use kube::discovery::ApiResource;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};

use crate::build::{LABEL_MESH, MANAGER};
use crate::controller::{self, Context};
use crate::crd::{ClientQuota, Mesh, Node};
use crate::metrics::Metrics;

/// Runs the controller until SIGTERM/SIGINT, serving `/metrics` and `/healthz` on `listen`.
pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await.context("connecting to the Kubernetes API")?;
    // Watched untyped: a stored object that does not parse is reported on its own
    // (reconcile_dynamic, and the mappers below) instead of failing the whole watch.
    let mesh_ar = ApiResource::erase::<Mesh>(&());
    let meshes: Api<DynamicObject> = Api::all_with(client.clone(), &mesh_ar);
    meshes
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .context("listing meshes.aethermesh.io: are the CRDs installed (kubectl apply -f crds/)?")?;
    let metrics = Metrics::new();
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let m = metrics.clone();
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(move || async move { m.render() }))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    // Only the Lease holder reconciles.
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into());
    let id = std::env::var("POD_NAME").unwrap_or_else(|_| format!("aether-operator-{:08x}", rand::random::<u32>()));
    let elector =
        crate::leader::Elector::new(client.clone(), &namespace, "aether-operator", &id, Duration::from_secs(15));
    let since = elector.acquire().await;
    let ctx = Arc::new(Context::new(client.clone(), metrics));
    let managed = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    // Children carry the mesh's name as a label; Nodes and quotas name it in their spec.
    let ar = mesh_ar.clone();
    let mesh_ref = move |name: &str, ns: &str| Some(ObjectRef::<DynamicObject>::new_with(name, ar.clone()).within(ns));
    let by_label = {
        let mesh_ref = mesh_ref.clone();
        move |meta: &kube::api::ObjectMeta| {
            let mesh = meta.labels.as_ref()?.get(LABEL_MESH)?.clone();
            mesh_ref(&mesh, meta.namespace.as_deref()?)
        }
    };
    // Nodes and quotas name their mesh in `spec.mesh`; read it without parsing the rest.
    let by_spec = {
        let mesh_ref = mesh_ref.clone();
        move |o: DynamicObject| {
            let mesh = o.data.get("spec")?.get("mesh")?.as_str()?.to_owned();
            mesh_ref(&mesh, &o.namespace()?)
        }
    };
    let node_ar = ApiResource::erase::<Node>(&());
    let quota_ar = ApiResource::erase::<ClientQuota>(&());
    tracing::info!(%listen, "aether-operator running");
    let by_label_cm = by_label.clone();
    let by_label_sts = by_label.clone();
    let controller = Controller::new_with(meshes, watcher::Config::default(), mesh_ar.clone())
        .watches(Api::<ConfigMap>::all(client.clone()), managed.clone(), move |c| by_label_cm(&c.metadata))
        .watches(Api::<StatefulSet>::all(client.clone()), managed.clone(), move |s| by_label_sts(&s.metadata))
        .watches(Api::<Service>::all(client.clone()), managed, move |s| by_label(&s.metadata))
        .watches_with(
            Api::<DynamicObject>::all_with(client.clone(), &node_ar),
            node_ar,
            watcher::Config::default(),
            by_spec.clone(),
        )
        .watches_with(
            Api::<DynamicObject>::all_with(client.clone(), &quota_ar),
            quota_ar,
            watcher::Config::default(),
            by_spec,
        )
        .shutdown_on_signal()
        .run(controller::reconcile_dynamic, controller::error_policy_dynamic, ctx)
        .for_each(|r| async move {
            match r {
                Ok((obj, _)) => tracing::debug!(mesh = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        });
    tokio::select! {
        _ = controller => {
            elector.step_down().await;
            tracing::info!("stopped");
            Ok(())
        }
        why = elector.hold(since) => anyhow::bail!("lost leadership ({why}); exiting so that only the leader reconciles"),
    }
}
