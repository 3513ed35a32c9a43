//! OpenTelemetry: relays export spans over OTLP/gRPC to a collector (here a
//! real OTLP trace service in the test process), and one client write is a
//! single trace across the edge, the owner and the other owner.

mod common;

#[path = "common/otlp.rs"]
mod otlp;

use std::collections::BTreeMap;

use common::{Client, Relay, eventually, free_port, tempdir};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_write_is_one_trace_across_edge_owner_and_replica() {
    let (otlp, received) = otlp::start().await;

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
