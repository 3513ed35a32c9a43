//! OpenTelemetry: with an OTLP endpoint set, every reconcile is a span
//! exported to the collector (a real OTLP trace service in the test process).

#[path = "../../relay/tests/common/otlp.rs"]
mod otlp;

use std::sync::Arc;

use aether_operator::controller::{self, Context};
use aether_operator::crd::{ClientQuota, Mesh, Node};
use aether_operator::metrics::Metrics;
use kube::Api;
use kube_fake_client::ClientBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reconcile_is_an_exported_span() {
    let (endpoint, received) = otlp::start().await;
    // SAFETY: the only test in this binary; set before anything reads the environment.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
        std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "50");
    }
    let telemetry =
        aether_relay::telemetry::init_for(aether_relay::config::LogFormat::Text, "aether-operator", "aether_operator")
            .unwrap();
    let mut inputs = aether_operator::render::Inputs::default();
    aether_operator::render::parse(include_str!("../../deploy/examples/dev.yaml"), "dev.yaml", &mut inputs).unwrap();
    let mut b = ClientBuilder::new()
        .with_resource::<Mesh>()
        .with_resource::<Node>()
        .with_resource::<ClientQuota>()
        .with_status_subresource::<Mesh>()
        .with_status_subresource::<Node>();
    for m in inputs.meshes {
        b = b.with_object(m);
    }
    for n in inputs.nodes {
        b = b.with_object(n);
    }
    let client = b.build().await.unwrap();
    let meshes = Api::<Mesh>::namespaced(client.clone(), "default");
    for _ in 0..2 {
        let mesh = meshes.get("dev").await.unwrap();
        let ctx = Arc::new(Context::new(client.clone(), Metrics::new()));
        controller::reconcile(Arc::new(mesh), ctx.clone()).await.unwrap();
        assert!(ctx.metrics.render().contains("aether_operator_reconciles_total{result=\"ok\"} 1"));
    }
    // The batch processor exports every 50 ms; wait for both spans (with a
    // deadline) rather than rely on the flush at shutdown racing an export.
    let count = || {
        let got = received.lock().unwrap().clone();
        let n = got.iter().filter(|(svc, name, _)| svc == "aether-operator" && name == "reconcile").count();
        (n, got)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while count().0 < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(telemetry);
    let (reconciles, got) = count();
    assert_eq!(reconciles, 2, "spans received: {got:?}");
}
