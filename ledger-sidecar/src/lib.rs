//! The Aethermesh ledger sidecar (`aether-ledger`): ships a relay's WAL
//! segments and snapshots to object storage, restores data directories from
//! it (also to a point in time), compacts, verifies and inspects it.

pub mod compact;
pub mod format;
pub mod inspect;
pub mod manifest;
pub mod metrics;
pub mod progress;
pub mod restore;
pub mod ship;
pub mod store;
pub mod verify;

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
