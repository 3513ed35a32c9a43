//! The operator's hand-off probe against a real relay's `/v1/admin/shards`.

#[path = "../../relay/tests/common/mod.rs"]
mod relay;

use aether_operator::controller::{Handoff, HandoffState, HttpHandoff};
use relay::{Relay, eventually, free_port, tempdir};

#[tokio::test]
async fn a_relay_out_of_the_membership_with_nothing_held_is_safe_to_stop() {
    let dir = tempdir();
    let members = dir.path().join("members");
    let port = free_port();
    std::fs::write(&members, format!("r1=127.0.0.1:{port}\n")).unwrap();
    let data = tempdir();
    let r1 = Relay::start_member(
        "r1",
        port,
        &[],
        data.path(),
        &["--membership-file", members.to_str().unwrap(), "--membership-poll", "100ms"],
    );
    let url = format!("http://{}/v1/admin/shards", r1.addr);
    let state = HttpHandoff.state(url.clone()).await.unwrap();
    assert_eq!(state, HandoffState { in_membership: true, pending_shards: 0 });
    // The operator drops it from the membership file: it leaves, holding nothing.
    std::fs::write(&members, "# drained\n").unwrap();
    eventually("the relay to leave the membership", || async {
        match HttpHandoff.state(url.clone()).await {
            Ok(HandoffState { in_membership: false, pending_shards: 0 }) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Unreachable relays are an error, not "done".
    drop(r1);
    assert!(HttpHandoff.state(url).await.is_err());
}
