//! OpenTelemetry: relays export spans over OTLP/gRPC to a collector (here a
//! real OTLP trace service in the test process), and one client write is a
//! single trace across the edge, the owner and the other owner.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{Client, Relay, eventually, free_port, tempdir};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use serde_json::json;

/// (service name, span name, trace id) of every span received.
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

struct Collector(Received);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    AnyValue::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    got.push((service.clone(), span.name, span.trace_id));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_write_is_one_trace_across_edge_owner_and_replica() {
    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tonic::transport::Server::builder().add_service(TraceServiceServer::new(Collector(received.clone())));
    tokio::spawn(server.serve_with_incoming(incoming));

    let names = ["r1", "r2", "r3"];
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let dirs: Vec<_> = names.iter().map(|_| tempdir()).collect();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let relays: Vec<Relay> = (0..3)
        .map(|i| {
            let peers: Vec<String> =
                (0..3).filter(|&j| j != i).map(|j| format!("{}=127.0.0.1:{}", names[j], ports[j])).collect();
            let extra = ["--shards", "16", "--replication", "2"];
            Relay::start_member_with_env(names[i], ports[i], &peers, dirs[i].path(), &extra, &env)
        })
        .collect();
    // A space r1 does not own: r1 is its edge, the other two its owners.
    let space = (0..)
        .map(|i| format!("traced-{i}"))
        .find(|s| !aether_core::placement::owners(aether_core::placement::shard_of(s, 16), &names, 2).contains(&"r1"))
        .unwrap();
    let (mut c, _, _) = Client::join(&relays[0].ws_url(&format!("space={space}"))).await;
    c.send(json!({"type": "set", "key": "k", "value": 1})).await;
    let echo = c.recv().await;
    assert_eq!((echo["type"].as_str(), echo["key"].as_str()), (Some("set"), Some("k")), "{echo}");

    let received = &received;
    eventually("one trace across edge, owner and replica", || async move {
        let got = received.lock().unwrap().clone();
        let write = got.iter().find(|(svc, name, _)| svc == "aether-relay/r1" && name == "relay.write");
        if let Some((_, _, trace)) = write {
            let in_trace: BTreeMap<String, String> =
                got.iter().filter(|(_, _, t)| t == trace).map(|(svc, name, _)| (name.clone(), svc.clone())).collect();
            if in_trace.contains_key("owner.apply") && in_trace.contains_key("replica.apply") {
                assert_ne!(in_trace["owner.apply"], in_trace["replica.apply"], "two different owners");
                assert_ne!(in_trace["owner.apply"], "aether-relay/r1");
                return Ok(());
            }
        }
        Err(format!("spans received: {got:?}"))
    })
    .await;
}
