//! [`Client`]: starts the driver, hands out [`SpaceHandle`]s, reports status.

use std::sync::atomic::Ordering;
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
        // One client per queue file: locked first, then read.
        let (queue_lock, loaded) = match config.queue_file.clone() {
            Some(path) => {
                let (lock, loaded) = tokio::task::spawn_blocking(move || {
                    let lock = queue::lock(&path)?;
                    Ok::<_, Error>((lock, queue::load(&path)?))
                })
                .await
                .map_err(|e| Error::Config(format!("loading the queue file: {e}")))??;
                (Some(lock), loaded)
            }
            None => (None, None),
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
        if let Some(path) = config.queue_file.clone() {
            // Written once now: a queue file that cannot be written fails here,
            // not silently at the first write (and the actor is kept at once).
            let mut q = queue::Queue::new(usize::MAX);
            q.restore(loaded.iter().flat_map(|f| f.writes.iter().cloned()));
            let bytes = queue::encode(actor, loaded.as_ref().map(|f| f.last_stamp).unwrap_or_default(), &q);
            tokio::task::spawn_blocking(move || {
                queue::write_atomic(&path, &bytes).map_err(|e| Error::QueueFile { path, reason: e.to_string() })
            })
            .await
            .map_err(|e| Error::Config(format!("writing the queue file: {e}")))??;
        }
        let loaded_ops = loaded.as_ref().map_or(0, |f| f.writes.iter().map(|w| w.ops.len()).sum());
        let shared = Arc::new(Shared::new(actor, config.watch_buffer, loaded_ops));
        let config = Arc::new(config);
        let (commands, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (first_tx, first_rx) = oneshot::channel();
        let driver = Driver::spawn(DriverInit {
            config: config.clone(),
            endpoints: endpoints.clone(),
            tls: tls.clone(),
            shared: shared.clone(),
            loaded,
            queue_lock,
            commands: commands_rx,
            first: first_tx,
        });
        let inner = ClientInner { shared, commands, driver: Mutex::new(Some(driver)), endpoints, tls, config };
        Ok((Client { inner: Arc::new(inner) }, first_rx))
    }

    /// The handle of space `name` (1–256 bytes); the space is subscribed now
    /// and after every reconnect (again, if it was unsubscribed). Relays
    /// allow `maxSpaces` per connection: spaces beyond are refused
    /// (`too-many-spaces`, their `ready()` fails) until others are unsubscribed.
    pub fn space(&self, name: &str) -> Result<SpaceHandle, Error> {
        if name.is_empty() || name.len() > MAX_SPACE_BYTES {
            return Err(Error::InvalidSpace(name.to_string()));
        }
        Ok(SpaceHandle { client: self.inner.clone(), cell: self.inner.shared.space(name) })
    }

    /// Stops following space `name` (see [`SpaceHandle::unsubscribe`]); a
    /// space never opened is nothing to do.
    pub async fn unsubscribe(&self, name: &str) -> Result<(), Error> {
        match self.inner.shared.get_space(name) {
            Some(cell) => SpaceHandle { client: self.inner.clone(), cell }.unsubscribe().await,
            None => Ok(()),
        }
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

    /// How many times the client connected to a relay again (reconnects and
    /// failovers) since it started.
    pub fn reconnects(&self) -> u64 {
        self.inner.shared.connects.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Waits until every queued write is acknowledged (or refused); fails
    /// with `Error::Closed` when the client closes (or its task ends) first.
    pub async fn flush(&self) -> Result<(), Error> {
        let mut ops = self.inner.shared.queued_ops.subscribe();
        let mut status = self.inner.shared.status.subscribe();
        loop {
            if *ops.borrow_and_update() == 0 {
                return Ok(());
            }
            if *status.borrow_and_update() == Status::Closed {
                return Err(Error::Closed);
            }
            tokio::select! {
                r = ops.changed() => r.map_err(|_| Error::Closed)?,
                r = status.changed() => r.map_err(|_| Error::Closed)?,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An endpoint nothing listens on (the client stays offline).
    fn offline(queue_file: Option<&std::path::Path>) -> ClientConfig {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut c = ClientConfig::new([format!("ws://127.0.0.1:{port}")]);
        c.queue_file = queue_file.map(Into::into);
        c
    }

    async fn within<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(5), f).await.expect("must not hang")
    }

    #[tokio::test]
    async fn one_client_per_queue_file_and_an_unwritable_one_fails_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.json");
        let a = Client::start(offline(Some(&path))).await.unwrap();
        // Written at start: the actor is kept before any write.
        assert_eq!(queue::load(&path).unwrap().unwrap().actor, a.actor());
        let err = Client::start(offline(Some(&path))).await.unwrap_err();
        assert!(
            matches!(&err, Error::QueueFile { reason, .. } if reason.contains("in use by another client")),
            "{err}"
        );
        a.close().await.unwrap();
        // Released on close.
        let b = Client::start(offline(Some(&path))).await.unwrap();
        assert_eq!(b.actor(), a.actor());
        b.close().await.unwrap();

        let unwritable = dir.path().join("no-such-dir").join("queue.json");
        let err = Client::start(offline(Some(&unwritable))).await.unwrap_err();
        assert!(matches!(err, Error::QueueFile { .. }), "{err}");
        // A directory where the file should be: the lock works, the write does not.
        let is_dir = dir.path().join("a-dir");
        std::fs::create_dir(&is_dir).unwrap();
        let err = Client::start(offline(Some(&is_dir))).await.unwrap_err();
        assert!(matches!(err, Error::QueueFile { .. }), "{err}");
    }

    #[tokio::test]
    async fn waits_end_when_the_client_closes() {
        let c = Client::start(offline(None)).await.unwrap();
        let s = c.space("s").unwrap();
        let ticket = s.set_nowait("k", &1).await.unwrap();
        let (flush, ready) = (c.flush(), s.ready());
        let mut watch = s.watch();
        let closer = c.clone();
        let close = async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            closer.close().await
        };
        let (flushed, readied, closed, watched) =
            within(async { tokio::join!(flush, ready, close, watch.recv()) }).await;
        assert!(matches!(flushed, Err(Error::Closed)), "{flushed:?}");
        assert!(matches!(readied, Err(Error::Closed)), "{readied:?}");
        closed.unwrap();
        assert_eq!(watched, None);
        assert!(matches!(within(ticket).await, Err(Error::Closed)));
        // And after the close.
        assert!(matches!(within(c.flush()).await, Err(Error::Closed)));
        assert!(matches!(within(s.ready()).await, Err(Error::Closed)));
        assert_eq!(within(s.watch().recv()).await, None);
        assert!(within(s.presence_events().recv()).await.is_none());
        assert!(matches!(s.set_nowait("k", &2).await, Err(Error::Closed)));
        assert_eq!(c.status(), Status::Closed);
    }

    #[tokio::test]
    async fn writing_a_key_twice_in_one_batch_is_refused() {
        let c = Client::start(offline(None)).await.unwrap();
        let s = c.space("s").unwrap();
        let err = s.write_batch(&[("a", Some(1)), ("b", None), ("a", Some(2))]).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidOp { key, reason } if key == "a" && reason.contains("more than once")),
            "{err}"
        );
        assert_eq!(c.queued_ops(), 0);
        assert!(s.get_raw("a").is_none(), "nothing applied");
        c.close().await.unwrap();
    }

    #[tokio::test]
    async fn an_unsubscribed_space_is_not_ready_until_followed_again() {
        let c = Client::start(offline(None)).await.unwrap();
        let s = c.space("s").unwrap();
        s.unsubscribe().await.unwrap();
        assert!(matches!(within(s.ready()).await, Err(Error::Unsubscribed(name)) if name == "s"));
        c.unsubscribe("never-opened").await.unwrap();
        let again = c.space("s").unwrap();
        assert_eq!(*again.cell.synced.borrow(), crate::shared::SyncState::Pending);
        c.close().await.unwrap();
    }
}
