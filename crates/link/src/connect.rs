//! The client side: connect to one director, or to the first of several that answers.

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::error::Error;
use crate::handshake;
use crate::key::ClusterKey;
use crate::link::{Link, LinkConfig};

/// How a client connects: the link's own settings plus timeouts and backoff for trying
/// several directors.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Settings of the link once made (the handshake timeout is taken from here).
    pub link: LinkConfig,
    /// Longest wait for one TCP connection. Default 500 ms: on a LAN a live director answers
    /// in well under a millisecond, and a dead host must not hold up the next address long.
    pub connect_timeout: Duration,
    /// Pause after a round in which every address failed, doubled after each such round up to
    /// `max_backoff` (with ±25 % jitter, so that agents restarted together do not knock in
    /// step). Default 100 ms.
    pub backoff: Duration,
    /// Longest pause between rounds. Default 2 s.
    pub max_backoff: Duration,
    /// Give up after this long in total; `None` (the default) tries until a director answers
    /// (an agent runs headless meanwhile).
    pub give_up_after: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            link: LinkConfig::default(),
            connect_timeout: Duration::from_millis(500),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            give_up_after: None,
        }
    }
}

/// Why [`connect_any`] returned without a link. Both variants carry the last error of each
/// address, in the order tried.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No address was given.
    #[error("no director address given")]
    NoAddresses,
    /// Every address refused this node permanently in one round (wrong cluster key, another
    /// link version, a bad node name); retrying cannot help.
    #[error("every director refused this node: {}", list(.errors))]
    Refused {
        /// One error per address.
        errors: Vec<Error>,
    },
    /// `give_up_after` passed.
    #[error("no director reachable within {after:?}: {}", list(.errors))]
    GaveUp {
        /// The `give_up_after` that passed.
        after: Duration,
        /// The last error of each address.
        errors: Vec<Error>,
    },
}

fn list(errors: &[Error]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Connect to one peer and authenticate as node `name`: a TCP connection within
/// `opts.connect_timeout`, then the handshake within `opts.link.handshake_timeout`.
pub async fn connect<Out, In>(
    addr: SocketAddr,
    key: &ClusterKey,
    name: &str,
    opts: &ConnectOptions,
) -> Result<Link<Out, In>, Error>
where
    Out: Serialize + Send + 'static,
    In: DeserializeOwned + Send + 'static,
{
    let mut stream =
        match tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(Error::Io { peer: addr, source }),
            Err(_) => {
                return Err(Error::ConnectTimeout {
                    peer: addr,
                    after: opts.connect_timeout,
                })
            }
        };
    let _ = stream.set_nodelay(true);
    let after = opts.link.handshake_timeout;
    let session = tokio::time::timeout(after, handshake::client(&mut stream, addr, key, name))
        .await
        .map_err(|_| Error::HandshakeTimeout { peer: addr, after })??;
    Ok(Link::start(stream, addr, session, &opts.link))
}

/// Connect to the first of `addrs` that authenticates this node, trying them in order, round
/// after round with backoff, for an agent given several directors (`--director A,B,C`).
///
/// Each failure is logged with its address. Returns early with [`ConnectError::Refused`] when
/// every address refused this node permanently in the same round (see
/// [`Error::is_permanent`]): that is a configuration error, not an outage.
pub async fn connect_any<Out, In>(
    addrs: &[SocketAddr],
    key: &ClusterKey,
    name: &str,
    opts: &ConnectOptions,
) -> Result<Link<Out, In>, ConnectError>
where
    Out: Serialize + Send + 'static,
    In: DeserializeOwned + Send + 'static,
{
    if addrs.is_empty() {
        return Err(ConnectError::NoAddresses);
    }
    let start = tokio::time::Instant::now();
    let mut backoff = opts.backoff;
    loop {
        let mut errors = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            match connect(addr, key, name, opts).await {
                Ok(link) => return Ok(link),
                Err(e) => {
                    tracing::warn!(director = %addr, node = name, "cannot link to director: {e}");
                    errors.push(e);
                }
            }
        }
        if errors.iter().all(Error::is_permanent) {
            return Err(ConnectError::Refused { errors });
        }
        let pause = jitter(backoff);
        if let Some(limit) = opts.give_up_after {
            if start.elapsed() + pause >= limit {
                return Err(ConnectError::GaveUp {
                    after: limit,
                    errors,
                });
            }
        }
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(opts.max_backoff.max(opts.backoff));
    }
}

/// `d` scaled by a random factor in [0.75, 1.25).
fn jitter(d: Duration) -> Duration {
    let mut r = [0u8; 2];
    if getrandom::fill(&mut r).is_err() {
        return d;
    }
    let f = 0.75 + f64::from(u16::from_be_bytes(r)) / f64::from(u16::MAX) / 2.0;
    d.mul_f64(f)
}
