//! The server side: accept connections and hand out only authenticated links.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::handshake;
use crate::key::ClusterKey;
use crate::link::{Link, LinkConfig};

/// Handshakes in progress at once; a connection beyond is closed at once (and counted as
/// refused), so a flood of idle connections costs at most this many small buffers and tasks,
/// each for at most the handshake timeout.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// A bound TCP port whose [`accept`](Self::accept) yields authenticated links.
///
/// Connections are accepted and authenticated in the background, each handshake in its own
/// task under the handshake timeout, so a peer that stalls or sends garbage delays no one
/// else. Every refused or failed handshake is logged at `warn` with the peer's address and
/// the reason, and counted ([`refused`](Self::refused)). Dropping the listener closes the port;
/// links already accepted live on.
pub struct Listener<Out, In> {
    addr: SocketAddr,
    ready: mpsc::Receiver<Link<Out, In>>,
    refused: Arc<AtomicU64>,
    task: JoinHandle<()>,
    _msgs: PhantomData<fn(Out) -> In>,
}

impl<Out, In> Listener<Out, In>
where
    Out: Serialize + Send + 'static,
    In: DeserializeOwned + Send + 'static,
{
    /// Listen on `addr` (port 0 for any) as node `name` (a director's name), admitting peers
    /// that prove `key`. Needs a tokio runtime.
    pub async fn bind(
        addr: SocketAddr,
        key: ClusterKey,
        name: &str,
        config: LinkConfig,
    ) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Io { peer: addr, source })?;
        Self::serve(listener, key, name, config)
    }

    /// Like [`bind`](Self::bind), on a socket bound elsewhere: a test harness binds it inside
    /// a node's network namespace (a socket keeps the namespace it was created in) and hands
    /// it to a director running outside. Needs a tokio runtime.
    pub fn from_std(
        listener: std::net::TcpListener,
        key: ClusterKey,
        name: &str,
        config: LinkConfig,
    ) -> Result<Self, Error> {
        let addr = listener.local_addr().map_err(|source| Error::Io {
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(listener))
            .map_err(|source| Error::Io { peer: addr, source })
            .and_then(|l| Self::serve(l, key, name, config))
    }

    fn serve(
        listener: TcpListener,
        key: ClusterKey,
        name: &str,
        config: LinkConfig,
    ) -> Result<Self, Error> {
        handshake::check_name(name).map_err(|why| Error::BadName {
            name: name.into(),
            why,
        })?;
        let local = listener.local_addr().map_err(|source| Error::Io {
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let (tx, ready) = mpsc::channel(MAX_PENDING_HANDSHAKES);
        let refused = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            key,
            name.to_owned(),
            config,
            tx,
            refused.clone(),
        ));
        Ok(Listener {
            addr: local,
            ready,
            refused,
            task,
            _msgs: PhantomData,
        })
    }

    /// The next authenticated link (its peer's node name is [`Link::peer_name`]). Waits as long
    /// as it takes; refused connections never come out of here.
    pub async fn accept(&mut self) -> Link<Out, In> {
        loop {
            // The accept loop holds the sender until the listener is dropped, so `None` means
            // it died (a bug); wait for ever rather than report a link that does not exist.
            match self.ready.recv().await {
                Some(link) => return link,
                None => std::future::pending::<()>().await,
            }
        }
    }
}

impl<Out, In> Listener<Out, In> {
    /// The address actually bound (with the port chosen when `bind` was given port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Handshakes refused or failed so far (wrong key, garbage, timeout, overload), for
    /// metrics and tests.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl<Out, In> Drop for Listener<Out, In> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop<Out, In>(
    listener: TcpListener,
    key: ClusterKey,
    name: String,
    config: LinkConfig,
    ready: mpsc::Sender<Link<Out, In>>,
    refused: Arc<AtomicU64>,
) where
    Out: Serialize + Send + 'static,
    In: DeserializeOwned + Send + 'static,
{
    let timeout = config.handshake_timeout;
    let config = Arc::new(config);
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let name: Arc<str> = name.into();
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!("accepting a link connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %peer, "refused link: {MAX_PENDING_HANDSHAKES} handshakes already in progress");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (key, name, config) = (key.clone(), name.clone(), config.clone());
        let (ready, refused) = (ready.clone(), refused.clone());
        tokio::spawn(async move {
            let result =
                tokio::time::timeout(timeout, handshake::server(&mut stream, peer, &key, &name))
                    .await
                    .unwrap_or(Err(Error::HandshakeTimeout {
                        peer,
                        after: timeout,
                    }));
            drop(permit);
            match result {
                Ok(session) => {
                    tracing::info!(peer = %peer, node = %session.peer_name, "link authenticated");
                    // Started here, not in `accept`, so that heartbeats flow from the first
                    // instant even while the application is busy elsewhere.
                    let link = Link::start(stream, peer, session, &config);
                    let _ = ready.send(link).await;
                }
                Err(e) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %peer, "refused link: {e}");
                }
            }
        });
    }
}
