//! Authenticated, heartbeated, framed TCP links between node agents and directors.
//!
//! A cluster's agents and directors talk over TCP. Before any message goes either way, both
//! ends prove they hold the *cluster key* (a shared secret, [`ClusterKey`]); then each side
//! sends heartbeats whenever it has nothing else to say, and declares the other *lost* after
//! `miss_count` silent intervals (50 ms × 4 by default). The director turns a lost link into
//! `NodeDown`, stamped with [`Lost::at`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use nines_link::{connect_any, ClusterKey, ConnectOptions, LinkConfig, Listener};
//! let key = ClusterKey::from_file("/etc/nines/cluster.key".as_ref())?;
//! // Director:
//! let mut listener =
//!     Listener::<String, String>::bind("0.0.0.0:7000".parse()?, key.clone(), "director-1",
//!                                      LinkConfig::default()).await?;
//! // Agent, with two directors to choose from:
//! let addrs = ["10.0.0.1:7000".parse()?, "10.0.0.2:7000".parse()?];
//! let mut link = connect_any::<String, String>(&addrs, &key, "node-1",
//!                                              &ConnectOptions::default()).await?;
//! link.send(&"hello".to_string()).await?;
//! let mut from_agent = listener.accept().await;
//! assert_eq!(from_agent.peer_name(), "node-1");
//! let lost = from_agent.lost_signal().wait().await; // when node-1 goes away
//! # Ok(()) }
//! ```
//!
//! # Wire format
//!
//! Every frame is a `nines-proto` frame (big-endian u32 length, the
//! `nines_proto::PROTOCOL_VERSION` byte, a postcard body; at most `nines_proto::MAX_FRAME`),
//! written with `nines_proto::try_encode` and read with `nines_proto::Decoder`, which are
//! generic over the message type; this crate adds no framing of its own. The handshake's four
//! messages are plain frames (see `handshake.rs`); every later frame is *sealed*: postcard
//! bytes of a heartbeat or an application message plus an HMAC-SHA256 tag over an implicit
//! per-direction sequence number and those bytes, under a per-direction session key derived
//! from the cluster key and both handshake nonces.
//!
//! # Security
//!
//! There is **no TLS and no encryption**: the link authenticates, it does not hide. Against
//! an attacker on the network path, with no key:
//!
//! * *cannot* join the cluster or impersonate a node or a director: every handshake proves the
//!   key over fresh nonces from both sides (no replay), with role labels (no reflection) and
//!   both node names bound in the proof (a name cannot be swapped on the way);
//! * *cannot* inject, alter, replay, drop, reorder or truncate-and-splice a frame of an
//!   established link without the link failing (every frame is tagged with its sequence
//!   number; a bad tag ends the link), and in particular cannot keep a dead peer looking
//!   alive by forging or replaying heartbeats;
//! * *can* read everything (message contents, node names, timing);
//! * *can* delay or drop traffic, or reset connections, and so make links fail: a denial of
//!   service that looks like a network failure and may get a healthy node fenced, exactly as a
//!   real partition would;
//! * *can* test guesses of a weak key offline from a recorded handshake: use 32 random bytes
//!   (at least [`MIN_KEY_LEN`] are required).
//!
//! Anyone who *has* the key is trusted fully: a key is cluster-wide, so a holder can claim any
//! node name. Per-node identities would need per-node keys or certificates (TLS), which this
//! crate deliberately leaves out. Comparisons of MACs are constant time (`hmac`'s
//! `verify_slice`). The key stays in memory unencrypted and is not zeroed on drop.
//!
//! # Architecture invariants
//!
//! * Nothing a peer sends can panic this crate or make it buffer without bound: handshake
//!   frames are capped at [`HANDSHAKE_MAX_FRAME`] from their header, later frames at
//!   `MAX_FRAME`, queues are bounded, and a bad frame ends only that link, logged with the
//!   peer's name and address.
//! * Heartbeats do not depend on the application: a writer task sends them, a reader task
//!   times the peer's; a slow application reader delays neither (see [`Link`] for the
//!   backpressure policy).
//! * Every wait is bounded: connect, handshake (on both sides), and the peer's silence.
//! * No dependency on the engine, the agent or the director: messages are type parameters.
#![warn(missing_docs)]

mod codec;
mod connect;
mod error;
mod handshake;
mod key;
mod link;
mod listener;

pub use codec::MAX_MESSAGE;
pub use connect::{connect, connect_any, ConnectError, ConnectOptions};
pub use error::{Error, Refusal, SendError};
pub use handshake::{HANDSHAKE_MAX_FRAME, LINK_VERSION, MAX_NAME};
pub use key::{ClusterKey, KeyError, MIN_KEY_LEN};
pub use link::{Link, LinkConfig, LinkReceiver, LinkSender, Lost, LostReason, LostSignal};
pub use listener::{Listener, MAX_PENDING_HANDSHAKES};
