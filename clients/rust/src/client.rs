//! [`Client`]: starts the driver, hands out [`SpaceHandle`]s, reports status.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::clouds;
use crate::config::ClientConfig;
use crate::driver::{Driver, DriverInit};
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::queue;
use crate::shared::{Command, Shared, lock};
use crate::space::SpaceHandle;
use crate::tls::Tls;

/// Commands buffered between handles and the driver (writes wait beyond).
const COMMAND_QUEUE: usize = 1024;
/// Longest space name, in bytes (the relay's `--limit-space-bytes` default).
pub const MAX_SPACE_BYTES: usize = 256;

/// Where the client stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Trying a relay.
    Connecting,
    /// Connected to `relay` (its name) at `url`.
    Online {
        /// The relay's name from its `welcome`.
        relay: String,
        /// The endpoint URL.
        url: String,
    },
    /// Every endpoint failed lately; retrying with backoff. Writes queue up.
    Offline {
        /// The last failures.
        error: String,
    },
    /// [`Client::close`] was called (or every handle dropped).
    Closed,
}

/// What handles share: the driver's command queue and the shared state.
pub(crate) struct ClientInner {
    pub(crate) shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    driver: Mutex<Option<JoinHandle<()>>>,
    endpoints: Vec<Endpoint>,
    tls: Tls,
    config: Arc<ClientConfig>,
}

impl ClientInner {
    /// Sends a command to the driver (waits while its queue is full).
    pub(crate) async fn send(&self, cmd: Command) -> Result<(), Error> {
        self.commands.send(cmd).await.map_err(|_| Error::Closed)
    }
}

/// A client of an Aethermesh mesh: local replicas of the spaces it uses,
/// kept in sync with one relay at a time (failing over along the endpoint
/// list), writes stamped here and queued until a relay acknowledges them.
/// Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("actor", &self.actor()).field("status", &self.status()).finish_non_exhaustive()
    }
}

impl Client {
    /// Starts a client and waits until a relay accepted it, or every
    /// endpoint failed once (`Error::Unreachable`, or `Error::Refused` when a
    /// relay said no, e.g. a wrong token).
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        let (client, first) = Client::launch(config).await?;
        match first.await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => {
                let _ = client.close().await;
                Err(e)
            }
            Err(_) => Err(Error::Closed),
        }
    }

    /// Starts a client without waiting for a relay (offline-first): reads
    /// and writes work at once; writes are sent when a relay is reached.
    pub async fn start(config: ClientConfig) -> Result<Client, Error> {
        Ok(Client::launch(config).await?.0)
    }

    async fn launch(config: ClientConfig) -> Result<(Client, oneshot::Receiver<Result<(), Error>>), Error> {
        let mut endpoints = config.validate()?;
        let tls = Tls::new(config.ca_file.as_deref())?;
        if let Some(source) = &config.cloud {
            let list = clouds::fetch_endpoints(source, &tls, config.request_timeout).await?;
            for e in &list.endpoints {
                let ep = Endpoint::parse(&e.url)?;
                if !endpoints.contains(&ep) {
                    endpoints.push(ep);
                }
            }
        }
        if endpoints.is_empty() {
            return Err(Error::Config("no relay endpoints".into()));
        }
        let loaded = match config.queue_file.clone() {
            Some(path) => tokio::task::spawn_blocking(move || queue::load(&path))
                .await
                .map_err(|e| Error::Config(format!("loading the queue file: {e}")))??,
            None => None,
        };
        let actor = match (config.actor, loaded.as_ref().map(|f| f.actor)) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::Config(format!(
                    "the queue file belongs to actor {b}, the configuration says {a}: a client keeps its actor for life"
                )));
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => (1 << 63) | rand::random::<u64>(),
        };
        let loaded_ops = loaded.as_ref().map_or(0, |f| f.writes.iter().map(|w| w.ops.len()).sum());
        let shared = Arc::new(Shared {
            actor,
            watch_buffer: config.watch_buffer,
            spaces: Mutex::new(Default::default()),
            spaces_changed: Default::default(),
            status: watch::channel(Status::Connecting).0,
            queued_ops: watch::channel(loaded_ops).0,
        });
        let config = Arc::new(config);
        let (commands, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (first_tx, first_rx) = oneshot::channel();
        let driver = Driver::spawn(DriverInit {
            config: config.clone(),
            endpoints: endpoints.clone(),
            tls: tls.clone(),
            shared: shared.clone(),
            loaded,
            commands: commands_rx,
            first: first_tx,
        });
        let inner = ClientInner { shared, commands, driver: Mutex::new(Some(driver)), endpoints, tls, config };
        Ok((Client { inner: Arc::new(inner) }, first_rx))
    }

    /// The handle of space `name` (1–256 bytes); the space is subscribed now
    /// and after every reconnect.
    pub fn space(&self, name: &str) -> Result<SpaceHandle, Error> {
        if name.is_empty() || name.len() > MAX_SPACE_BYTES {
            return Err(Error::InvalidSpace(name.to_string()));
        }
        Ok(SpaceHandle { client: self.inner.clone(), cell: self.inner.shared.space(name) })
    }

    /// Where the client stands now.
    pub fn status(&self) -> Status {
        self.inner.shared.status.borrow().clone()
    }

    /// Status updates (a `tokio::sync::watch` receiver).
    pub fn status_changes(&self) -> watch::Receiver<Status> {
        self.inner.shared.status.subscribe()
    }

    /// The actor id this client stamps its ops with.
    pub fn actor(&self) -> u64 {
        self.inner.shared.actor
    }

    /// The endpoints, in the order they are tried.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.inner.endpoints
    }

    /// The configuration the client runs with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Ops waiting for an ack.
    pub fn queued_ops(&self) -> usize {
        *self.inner.shared.queued_ops.borrow()
    }

    /// Waits until every queued write is acknowledged (or refused).
    pub async fn flush(&self) -> Result<(), Error> {
        let mut rx = self.inner.shared.queued_ops.subscribe();
        loop {
            if *rx.borrow_and_update() == 0 {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }

    /// The spaces the relays hold (`GET /v1/spaces` on the first endpoint
    /// with an HTTP base).
    pub async fn list_spaces(&self) -> Result<Vec<clouds::SpaceInfo>, Error> {
        let base = self
            .inner
            .endpoints
            .iter()
            .find_map(|e| e.http_base())
            .ok_or_else(|| Error::Config("listing spaces needs a ws(s):// or http(s):// endpoint".into()))?;
        let cfg = &self.inner.config;
        clouds::list_spaces(&base, cfg.token.as_deref(), &self.inner.tls, cfg.request_timeout).await
    }

    /// Closes the connections and writes the queue file (unacknowledged
    /// writes stay in it for the next start). Pending `set`s fail with
    /// `Error::Closed`; watch streams end.
    pub async fn close(&self) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        let result = match self.inner.send(Command::Close { reply }).await {
            Ok(()) => rx.await.unwrap_or(Ok(())),
            Err(_) => Ok(()),
        };
        let driver = lock(&self.inner.driver).take();
        if let Some(d) = driver {
            let _ = d.await;
        }
        result
    }
}
