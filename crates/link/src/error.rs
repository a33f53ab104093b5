//! Errors of opening a link and of sending on one.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::link::LostReason;

/// Why a link could not be opened. Every variant names the peer's address, so that a log line
/// says which director refused an agent, or which host knocked with the wrong key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting, reading or writing failed (or, from [`crate::Listener::bind`], binding).
    #[error("{peer}: {source}")]
    Io {
        /// The peer's address (for `bind`, the local address asked for).
        peer: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
    /// No TCP connection within the connect timeout.
    #[error("{peer}: no connection within {after:?}")]
    ConnectTimeout {
        /// The peer's address.
        peer: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// The peer did not complete the handshake within the handshake timeout.
    #[error("{peer}: handshake not completed within {after:?}; connection closed")]
    HandshakeTimeout {
        /// The peer's address.
        peer: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// The peer's proof does not verify with this side's cluster key: it holds another key (or
    /// is no member of the cluster). The peer was told (when this side is the server).
    #[error(
        "{peer} (claims node {name:?}) does not know this cluster key: wrong cluster key; refused"
    )]
    WrongKey {
        /// The peer's address.
        peer: SocketAddr,
        /// The node name it claimed (unauthenticated, so only a hint).
        name: String,
    },
    /// The peer refused this side, and said why.
    #[error("{peer} refused the link: {reason}")]
    Refused {
        /// The peer's address.
        peer: SocketAddr,
        /// What the peer said.
        reason: Refusal,
    },
    /// The peer does not speak the handshake (garbage, another service, another protocol
    /// revision, a message out of order).
    #[error("{peer}: {detail}")]
    Protocol {
        /// The peer's address.
        peer: SocketAddr,
        /// What was wrong.
        detail: String,
    },
    /// This side's own node name is unusable.
    #[error("invalid node name {name:?}: {why}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        why: String,
    },
}

impl Error {
    /// Whether trying the same peer again cannot help: it refused this side's key, version or
    /// name, or this side's name is invalid. [`crate::connect_any`] stops on these rather than
    /// retrying for ever, so a misconfigured agent fails with the reason instead of looping.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::WrongKey { .. } | Error::Refused { .. } | Error::BadName { .. }
        )
    }
}

/// Why a server refused a handshake; sent to the client so both logs say the same thing.
/// Part of the wire format: variants are only ever appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The client's proof does not verify with the server's cluster key.
    #[error("wrong cluster key (this node's proof does not verify with the peer's key)")]
    WrongKey,
    /// The client speaks another revision of the link handshake.
    #[error("link protocol version mismatch (the peer speaks version {ours})")]
    LinkVersion {
        /// The server's `LINK_VERSION`.
        ours: u16,
    },
    /// The client's node name is unusable.
    #[error("invalid node name: {why}")]
    BadName {
        /// Why.
        why: String,
    },
}

/// Why a message was not queued for sending.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// The message's encoding exceeds [`crate::MAX_MESSAGE`] (or postcard cannot encode it).
    /// Nothing was sent and the link stays up.
    #[error("message not sent: {0}")]
    Encode(String),
    /// The outbound queue is full (only from `try_send`; `send` waits instead).
    #[error("outbound queue full")]
    Full,
    /// The link is gone; the reason is the one its lost signal gives.
    #[error("link lost: {0}")]
    Lost(LostReason),
}
