//! `/v1/clouds`: the per-cloud endpoint lists the operator writes, served by a
//! real relay, followed as the file changes, a bad update never served.

mod common;

use common::{Relay, eventually, tempdir, write_atomic};
use serde_json::{Value, json};

fn doc(first: &str) -> Value {
    json!({
        "version": 1,
        "mesh": "prod",
        "clouds": {
            "eu-west": [{"url": first, "cloud": "eu-west"}, {"url": "wss://us.example.com", "cloud": "us-east"}],
            "us-east": [{"url": "wss://us.example.com", "cloud": "us-east"}, {"url": first, "cloud": "eu-west"}]
        }
    })
}

#[tokio::test]
async fn endpoint_lists_are_served_and_follow_the_file() {
    let dir = tempdir();
    let file = dir.path().join("clouds.json");
    std::fs::write(&file, doc("wss://eu.example.com").to_string()).unwrap();
    let data = tempdir();
    let relay = Relay::start(data.path(), &["--clouds-file", file.to_str().unwrap(), "--clouds-poll", "100ms"]);

    let (status, body) = relay.http_get("/v1/clouds").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"mesh": "prod", "clouds": ["eu-west", "us-east"]})
    );
    let (status, body) = relay.http_get("/v1/clouds/eu-west").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["endpoints"][0]["url"], "wss://eu.example.com");
    assert_eq!(v["endpoints"][1]["cloud"], "us-east");
    let (status, body) = relay.http_get("/v1/clouds/mars").await;
    assert_eq!(status, 404);
    assert!(body.contains("no cloud \\\"mars\\\""), "{body}");

    // The operator rewrites the ConfigMap: the relay follows.
    write_atomic(&file, doc("wss://eu2.example.com").to_string());
    eventually("the new list", || async {
        let (_, body) = relay.http_get("/v1/clouds/eu-west").await;
        if body.contains("eu2.example.com") { Ok(()) } else { Err(body) }
    })
    .await;
    // A broken update is not served: the last good list stays.
    write_atomic(&file, b"{\"version\": 1, \"clouds\": ");
    eventually("the relay read the broken file", || async {
        let (_, metrics) = relay.http_get("/metrics").await;
        let line = metrics.lines().find(|l| l.starts_with("aether_clouds_file_errors_total ")).unwrap_or("");
        if line.ends_with(" 0") || line.is_empty() { Err(line.to_owned()) } else { Ok(()) }
    })
    .await;
    let (status, body) = relay.http_get("/v1/clouds/eu-west").await;
    assert_eq!(status, 200);
    assert!(body.contains("eu2.example.com"), "{body}");
}

#[tokio::test]
async fn a_bad_clouds_file_is_refused_at_start_and_none_is_a_clear_404() {
    let dir = tempdir();
    let file = dir.path().join("clouds.json");
    std::fs::write(&file, br#"{"version":1,"clouds":{"eu":[{"url":"ftp://x","cloud":"eu"}]}}"#).unwrap();
    let data = tempdir();
    let err = Relay::try_start(data.path(), &["--clouds-file", file.to_str().unwrap()]).err().expect("refused");
    assert!(err.contains("clouds-file") && err.contains("ftp://x"), "{err}");

    let relay = Relay::start(data.path(), &[]);
    let (status, body) = relay.http_get("/v1/clouds/eu").await;
    assert_eq!(status, 404);
    assert!(body.contains("--clouds-file"), "{body}");
}
