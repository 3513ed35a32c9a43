//! Startup, the accept loop (plain TCP or TLS), routing and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::Service;

use crate::config::{AckMode, MeshArgs, RelayArgs, RunArgs};
use crate::gateway::{GatewayCtx, ws_json};
use crate::limits::ConnCaps;
use crate::metrics::Metrics;
use crate::node::Relay;
use crate::replication::membership::Membership;
use crate::replication::service::MeshService;
use crate::replication::transport::{self, MeshAuth, MeshTransport};
use crate::replication::{Mesh, anti_entropy};
use crate::wal::{LedgerHandoff, OnCorrupt, Wal, WalConfig, node_id};
use crate::{http, tls};

/// Time allowed for a client to send its HTTP request head or finish TLS.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An edge's subscription may queue this many times a client's send queue.
const BACKLOG_EDGE_FACTOR: usize = 64;
/// Time connections get to close on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// `aether-relay dev`: one relay on its own.
pub async fn run_dev(args: RelayArgs) -> anyhow::Result<()> {
    run(args, None).await
}

/// `aether-relay run`: a relay in a mesh.
pub async fn run_mesh(args: RunArgs) -> anyhow::Result<()> {
    let m = &args.mesh;
    anyhow::ensure!(
        m.write_quorum <= m.replication,
        "--write-quorum ({}) cannot exceed --replication ({})",
        m.write_quorum,
        m.replication
    );
    let tls = transport::load_tls(m)?;
    anyhow::ensure!(
        tls.is_some() || m.mesh_plaintext,
        "relays talk to each other over TLS: set --mesh-tls-cert/--mesh-tls-key/--mesh-tls-ca, or --mesh-plaintext to accept an unencrypted mesh"
    );
    run(args.relay, Some((args.mesh, tls))).await
}

/// Opens the data dir (recovering it), joins the mesh if any, then serves
/// until SIGINT/SIGTERM or a WAL failure. Prints `aether-relay listening on
/// <url>` once accepting.
async fn run(args: RelayArgs, mesh_args: Option<(MeshArgs, Option<transport::MeshTls>)>) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let wal_cfg = WalConfig {
        dir: args.storage.data_dir.clone(),
        segment_bytes: args.storage.wal_segment_bytes,
        snapshot_after_bytes: args.storage.snapshot_after_bytes,
        max_pending_bytes: args.storage.wal_max_pending_bytes,
        on_corrupt: if args.storage.wal_skip_corrupt { OnCorrupt::Skip } else { OnCorrupt::Fail },
        shards: mesh_args.as_ref().map(|(m, _)| m.shards),
        seal_after: Some(args.storage.wal_seal_after).filter(|d| !d.is_zero()),
        ledger: args
            .storage
            .ledger_sidecar
            .then_some(LedgerHandoff { backlog_max_bytes: args.storage.ledger_backlog_max_bytes }),
        before_sync: None,
    };
    let m = metrics.clone();
    let (wal, state, recovery, actor) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let (wal, state, recovery) = Wal::open(&wal_cfg, &m)?;
        let actor = node_id(&wal_cfg.dir).context("reading node-id")?;
        Ok((wal, state, recovery, actor))
    })
    .await?
    .with_context(|| format!("recovering data dir {}", args.storage.data_dir.display()))?;
    tracing::info!(
        snapshot = ?recovery.snapshot, segments = recovery.segments, ops = recovery.ops,
        bytes = recovery.bytes, truncated = ?recovery.truncated, skipped = recovery.skipped,
        elapsed = ?recovery.elapsed, spaces = state.spaces.len(), "recovered"
    );
    let max_skew = args.storage.max_clock_skew.as_nanos().min(u64::MAX as u128) as u64;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut mesh_setup = None;
    if let Some((m, tls)) = &mesh_args {
        let advertise = m.mesh_advertise.clone().unwrap_or_else(|| m.mesh_listen.to_string());
        let membership = Membership::new(
            m.name.clone(),
            advertise,
            m.shards,
            m.replication as usize,
            m.peers.clone(),
            m.membership_file.clone(),
        )?;
        let membership = match &m.membership_srv {
            Some(srv) => membership.with_dns(srv.clone(), m.membership_dns_server)?,
            None => membership,
        };
        let transport = MeshTransport::new(&m.name, m.mesh_token.as_deref(), tls.as_ref().map(|t| t.client.clone()))?;
        let max_forwarded = args.limits.limit_conns.saturating_mul(args.limits.limit_send_queue).max(1024);
        let mesh = Mesh::new(m, membership.subscribe(), transport, max_forwarded, metrics.clone());
        mesh_setup = Some((mesh, membership));
    }
    let mesh = mesh_setup.as_ref().map(|(mesh, _)| mesh.clone());
    let relay = Arc::new(Relay::new(actor, args.storage.ack, max_skew, wal, state, recovery, metrics, mesh));
    if let (Some((mesh, membership)), Some((m, tls))) = (mesh_setup, &mesh_args) {
        let listener = TcpListener::bind(m.mesh_listen)
            .await
            .with_context(|| format!("binding mesh listener {}", m.mesh_listen))?;
        let mesh_addr = listener.local_addr()?;
        let service = aether_proto::v1::mesh_server::MeshServer::new(MeshService::new(
            relay.clone(),
            MeshAuth::new(m.mesh_token.as_deref()),
            m.replication_batch,
            args.limits.limit_send_queue.saturating_mul(BACKLOG_EDGE_FACTOR),
        ))
        .max_decoding_message_size(transport::MAX_MESSAGE_BYTES);
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        if let Some(tls) = tls {
            builder = builder.tls_config(tls.server.clone())?;
        }
        let mut stop = shutdown_rx.clone();
        // Nagle off on accepted peer sockets too: acks and edge events are small
        // and latency-bound (with it on, delayed ACKs cost ~40 ms per exchange).
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = builder.add_service(service).serve_with_incoming_shutdown(incoming, stopped).await {
                tracing::error!(error = %e, "mesh server failed");
            }
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("aether-relay mesh listening on {scheme}://{mesh_addr} as {}", m.name);
        tracing::info!(%mesh_addr, name = %m.name, shards = m.shards, replication = m.replication, write_quorum = m.write_quorum, "mesh listening");
        tokio::spawn(membership.watch(m.membership_poll));
        tokio::spawn(mesh.clone().follow_membership());
        let (r, mut views) = (relay.clone(), mesh.subscribe_view());
        tokio::spawn(async move {
            while views.changed().await.is_ok() {
                r.reconcile_roles();
            }
        });
        tokio::spawn(anti_entropy::run(relay.clone(), mesh, m.anti_entropy_interval));
    }
    if args.storage.ack == AckMode::Memory {
        tracing::warn!("--ack memory: writes are echoed before they are on disk and may be lost in a crash");
    }

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    let clouds = match &args.clouds_file {
        Some(path) => {
            let (clouds, watcher) = crate::clouds::Clouds::load(
                path.clone(),
                args.clouds_poll,
                relay.metrics().clouds_file_errors.clone(),
            )?;
            tokio::spawn(watcher);
            Some(clouds)
        }
        None => None,
    };
    let ctx = Arc::new(GatewayCtx {
        relay: relay.clone(),
        caps: ConnCaps::new(args.limits.limit_conns, args.limits.limit_conns_per_ip),
        limits: args.limits.clone(),
        auth_token: args.auth_token.clone(),
        auth_timeout: args.auth_timeout,
        shutdown: shutdown_rx,
        clouds,
        web_assets_dir: args.web_assets_dir.clone(),
        web_pages: mesh_args.is_none(),
    });
    let router = Router::new()
        .route("/ws", get(ws_json::handler))
        .route("/v1/ws", get(crate::gateway::native::ws::handler))
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics))
        .route("/v1/admin/shards", get(http::admin_shards))
        .route("/v1/admin/spaces", get(http::admin_spaces))
        .route("/v1/spaces", get(http::spaces))
        .route("/v1/clouds", get(crate::clouds::list))
        .route("/v1/clouds/{cloud}", get(crate::clouds::one))
        .fallback(crate::web::asset)
        .with_state(ctx.clone());

    if let Some(quic_addr) = args.quic_listen {
        use crate::gateway::native::quic;
        let cert_key = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
        let (endpoint, cert_file) = quic::endpoint(quic_addr, cert_key, &args.storage.data_dir, &ctx)?;
        let bound = endpoint.local_addr()?;
        // Scripts and tests wait for this line too.
        println!("aether-relay QUIC listening on quic://{bound}");
        if let Some(file) = cert_file {
            tracing::info!(cert = %file.display(), "QUIC uses a self-signed certificate for localhost; clients must trust this file");
        }
        tokio::spawn(quic::serve(ctx.clone(), endpoint));
    }

    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Scripts and tests wait for this line; it is also the user's "it works".
    println!("aether-relay listening on {scheme}://{addr}");
    tracing::info!(%addr, tls = tls.is_some(), ack = ?args.storage.ack, "listening");

    // Bounds sockets of every kind (WebSocket caps are enforced after the upgrade).
    let sockets = Arc::new(Semaphore::new(args.limits.limit_conns.saturating_mul(2).saturating_add(64)));
    let mut durable = relay.durable();
    // Created once: a signal handler registered anew on every accept could miss
    // a signal delivered in between.
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let failure = loop {
        // At the socket cap, wait for a place, still listening for shutdown.
        let permit = tokio::select! {
            permit = sockets.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            _ = &mut shutdown => break false,
            _ = durable.wait_for(|d| d.failed) => break true,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let router = router.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tls {
                        None => serve_http(tcp, peer, router).await,
                        Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                            Ok(Ok(stream)) => serve_http(stream, peer, router).await,
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        },
                    }
                });
            }
            _ = &mut shutdown => break false,
            _ = durable.wait_for(|d| d.failed) => break true,
        }
    };

    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    drop(listener);
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while relay.metrics().connections.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = relay.clone();
    tokio::task::spawn_blocking(move || r.shutdown()).await?;
    anyhow::ensure!(!failure, "the write-ahead log failed; see the error above");
    tracing::info!("stopped");
    Ok(())
}

async fn serve_http<IO>(io: IO, peer: SocketAddr, router: Router)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        async move { router.call(req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
