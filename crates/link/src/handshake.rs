//! The mutual challenge-response handshake that opens every link.
//!
//! ```text
//! client (agent)                                   server (director)
//!   Hello     { link_version, name_c, nonce_c } ──▶
//!          ◀── Challenge { link_version, name_s, nonce_s }
//!   Proof     { HMAC(key, "client" ‖ T) }        ──▶  checks it, else Refused{WrongKey}
//!          ◀── Welcome   { HMAC(key, "server" ‖ T) }  (client checks it)
//!
//! T = proto version ‖ link version ‖ nonce_c ‖ nonce_s ‖ len ‖ name_c ‖ len ‖ name_s
//! session keys: HMAC(key, "client->server" ‖ T) and HMAC(key, "server->client" ‖ T)
//! ```
//!
//! Both nonces are fresh 32-byte random values, so no proof can be replayed into another
//! session; the role label in each proof stops one side's proof from being reflected back as
//! the other's; both node names are in `T`, so a name cannot be changed on the way. The server
//! checks the client first and never computes a proof for a client that has not proved the
//! key, so it is no oracle for strangers. Handshake frames are plain `nines-proto` frames of at
//! most [`HANDSHAKE_MAX_FRAME`] bytes, read exactly, so a stranger cannot make a listener
//! buffer more than that.

use std::net::SocketAddr;

use hmac::{KeyInit, Mac};
use nines_proto::{Decoder, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::codec::HmacSha256;
use crate::error::{Error, Refusal};
use crate::key::ClusterKey;

/// Revision of this crate's handshake and sealed frames, bound in every proof. Independent of
/// `nines_proto::PROTOCOL_VERSION` (the version byte of every frame, also bound), which
/// changes with the messages the link carries.
pub const LINK_VERSION: u16 = 1;

/// Largest handshake frame accepted, in bytes: a hello holds a name and a nonce.
pub const HANDSHAKE_MAX_FRAME: usize = 1024;

/// Longest node name, in bytes.
pub const MAX_NAME: usize = 255;

/// Messages of the handshake. Their order and the first variants never change, so that a peer
/// of another [`LINK_VERSION`] still understands a `Refused`.
#[derive(Serialize, Deserialize, Debug)]
enum Handshake {
    Hello {
        link_version: u16,
        name: String,
        nonce: [u8; 32],
    },
    Challenge {
        link_version: u16,
        name: String,
        nonce: [u8; 32],
    },
    Proof {
        mac: [u8; 32],
    },
    Welcome {
        mac: [u8; 32],
    },
    Refused {
        reason: Refusal,
    },
}

impl Handshake {
    fn kind(&self) -> &'static str {
        match self {
            Handshake::Hello { .. } => "Hello",
            Handshake::Challenge { .. } => "Challenge",
            Handshake::Proof { .. } => "Proof",
            Handshake::Welcome { .. } => "Welcome",
            Handshake::Refused { .. } => "Refused",
        }
    }
}

/// What a completed handshake establishes.
pub(crate) struct Session {
    /// The peer's node name, as bound in both proofs.
    pub(crate) peer_name: String,
    /// Key of the frames this side sends.
    pub(crate) send_key: [u8; 32],
    /// Key of the frames this side receives.
    pub(crate) recv_key: [u8; 32],
}

/// Check a node name: non-empty, at most [`MAX_NAME`] bytes, no control characters (it is
/// logged, and shown by the CLI).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!("{} bytes, longer than {MAX_NAME}", name.len()));
    }
    if name.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    Ok(())
}

struct Transcript<'a> {
    nonce_c: [u8; 32],
    nonce_s: [u8; 32],
    name_c: &'a str,
    name_s: &'a str,
}

impl Transcript<'_> {
    fn mac(&self, key: &ClusterKey, label: &[u8]) -> [u8; 32] {
        self.keyed(key, label).finalize().into_bytes().into()
    }

    fn keyed(&self, key: &ClusterKey, label: &[u8]) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key.bytes())
            .expect("HMAC takes keys of any length");
        mac.update(b"nines-link ");
        mac.update(label);
        mac.update(&[0, PROTOCOL_VERSION]);
        mac.update(&LINK_VERSION.to_be_bytes());
        mac.update(&self.nonce_c);
        mac.update(&self.nonce_s);
        for name in [self.name_c, self.name_s] {
            // Names are at most MAX_NAME bytes, checked before any MAC is computed.
            mac.update(&(name.len() as u32).to_be_bytes());
            mac.update(name.as_bytes());
        }
        mac
    }

    fn verify(&self, key: &ClusterKey, label: &[u8], proof: &[u8; 32]) -> bool {
        // Constant time: `verify_slice` compares without an early exit.
        self.keyed(key, label).verify_slice(proof).is_ok()
    }

    fn session(&self, key: &ClusterKey, peer_name: String, client: bool) -> Session {
        let c2s = self.mac(key, b"key client->server");
        let s2c = self.mac(key, b"key server->client");
        let (send_key, recv_key) = if client { (c2s, s2c) } else { (s2c, c2s) };
        Session {
            peer_name,
            send_key,
            recv_key,
        }
    }
}

const CLIENT_PROOF: &[u8] = b"proof client";
const SERVER_PROOF: &[u8] = b"proof server";

fn nonce(peer: SocketAddr) -> Result<[u8; 32], Error> {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).map_err(|e| Error::Io {
        peer,
        source: std::io::Error::other(format!("no randomness for the handshake nonce: {e}")),
    })?;
    Ok(n)
}

/// The client's half: prove the key, check the server's proof.
pub(crate) async fn client(
    stream: &mut TcpStream,
    peer: SocketAddr,
    key: &ClusterKey,
    name: &str,
) -> Result<Session, Error> {
    check_name(name).map_err(|why| Error::BadName {
        name: name.into(),
        why,
    })?;
    let nonce_c = nonce(peer)?;
    write(
        stream,
        peer,
        &Handshake::Hello {
            link_version: LINK_VERSION,
            name: name.into(),
            nonce: nonce_c,
        },
    )
    .await?;
    let (name_s, nonce_s) = match read(stream, peer).await? {
        Handshake::Challenge {
            link_version,
            name,
            nonce,
        } => {
            if link_version != LINK_VERSION {
                return Err(Error::Protocol {
                    peer,
                    detail: format!(
                        "peer speaks link version {link_version}, this side {LINK_VERSION}"
                    ),
                });
            }
            check_name(&name).map_err(|why| Error::Protocol {
                peer,
                detail: format!("peer's node name {name:?} is invalid: {why}"),
            })?;
            (name, nonce)
        }
        Handshake::Refused { reason } => return Err(Error::Refused { peer, reason }),
        other => return Err(unexpected(peer, "Challenge", &other)),
    };
    let t = Transcript {
        nonce_c,
        nonce_s,
        name_c: name,
        name_s: &name_s,
    };
    let mac = t.mac(key, CLIENT_PROOF);
    write(stream, peer, &Handshake::Proof { mac }).await?;
    match read(stream, peer).await? {
        Handshake::Welcome { mac } if t.verify(key, SERVER_PROOF, &mac) => {
            Ok(t.session(key, name_s.clone(), true))
        }
        Handshake::Welcome { .. } => Err(Error::WrongKey {
            peer,
            name: name_s.clone(),
        }),
        Handshake::Refused { reason } => Err(Error::Refused { peer, reason }),
        other => Err(unexpected(peer, "Welcome", &other)),
    }
}

/// The server's half: check the client's proof first, then prove the key in turn. Returns the
/// session and the client's node name; on a wrong key the client is told `Refused{WrongKey}`
/// before the connection closes, so both sides can say why.
pub(crate) async fn server(
    stream: &mut TcpStream,
    peer: SocketAddr,
    key: &ClusterKey,
    name: &str,
) -> Result<Session, Error> {
    let (name_c, nonce_c) = match read(stream, peer).await? {
        Handshake::Hello {
            link_version,
            name,
            nonce,
        } => {
            if link_version != LINK_VERSION {
                refuse(stream, peer, Refusal::LinkVersion { ours: LINK_VERSION }).await;
                return Err(Error::Protocol {
                    peer,
                    detail: format!(
                        "peer speaks link version {link_version}, this side {LINK_VERSION}"
                    ),
                });
            }
            if let Err(why) = check_name(&name) {
                refuse(stream, peer, Refusal::BadName { why: why.clone() }).await;
                return Err(Error::Protocol {
                    peer,
                    detail: format!("peer's node name {name:?} is invalid: {why}"),
                });
            }
            (name, nonce)
        }
        other => return Err(unexpected(peer, "Hello", &other)),
    };
    let nonce_s = nonce(peer)?;
    write(
        stream,
        peer,
        &Handshake::Challenge {
            link_version: LINK_VERSION,
            name: name.into(),
            nonce: nonce_s,
        },
    )
    .await?;
    let t = Transcript {
        nonce_c,
        nonce_s,
        name_c: &name_c,
        name_s: name,
    };
    match read(stream, peer).await? {
        Handshake::Proof { mac } if t.verify(key, CLIENT_PROOF, &mac) => {}
        Handshake::Proof { .. } => {
            refuse(stream, peer, Refusal::WrongKey).await;
            return Err(Error::WrongKey { peer, name: name_c });
        }
        other => return Err(unexpected(peer, "Proof", &other)),
    }
    let mac = t.mac(key, SERVER_PROOF);
    write(stream, peer, &Handshake::Welcome { mac }).await?;
    Ok(t.session(key, name_c.clone(), false))
}

fn unexpected(peer: SocketAddr, wanted: &str, got: &Handshake) -> Error {
    Error::Protocol {
        peer,
        detail: format!("expected {wanted}, got {}", got.kind()),
    }
}

/// Tell the peer why, best effort: it may already be gone.
async fn refuse(stream: &mut TcpStream, peer: SocketAddr, reason: Refusal) {
    let _ = write(stream, peer, &Handshake::Refused { reason }).await;
    let _ = stream.shutdown().await;
}

async fn write(stream: &mut TcpStream, peer: SocketAddr, msg: &Handshake) -> Result<(), Error> {
    let bytes = nines_proto::try_encode(msg).map_err(|e| Error::Protocol {
        peer,
        detail: e.to_string(),
    })?;
    stream
        .write_all(&bytes)
        .await
        .map_err(|source| Error::Io { peer, source })
}

/// Read exactly one handshake frame, refusing a claimed length over [`HANDSHAKE_MAX_FRAME`]
/// from its header (so garbage is refused after four bytes, whatever follows).
async fn read(stream: &mut TcpStream, peer: SocketAddr) -> Result<Handshake, Error> {
    let eof = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Protocol {
                peer,
                detail: "peer closed the connection during the handshake".into(),
            }
        } else {
            Error::Io { peer, source }
        }
    };
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await.map_err(eof)?;
    let len = u32::from_be_bytes(header) as usize;
    if len > HANDSHAKE_MAX_FRAME {
        return Err(Error::Protocol {
            peer,
            detail: format!(
                "not a nines handshake: frame of {len} bytes (limit {HANDSHAKE_MAX_FRAME}; \
                 first bytes {header:02x?})"
            ),
        });
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.map_err(eof)?;
    let mut decoder = Decoder::new();
    decoder.push(&header);
    decoder.push(&payload);
    match decoder.next::<Handshake>() {
        Ok(Some(msg)) => Ok(msg),
        Ok(None) => Err(Error::Protocol {
            peer,
            detail: "incomplete handshake frame".into(),
        }),
        Err(e) => Err(Error::Protocol {
            peer,
            detail: format!("not a nines handshake: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn key(s: &str) -> ClusterKey {
        ClusterKey::from_bytes(format!("handshake test key {s}").into_bytes()).expect("key")
    }

    /// Run the server half on one accepted connection of a fresh port.
    async fn one_server(
        k: ClusterKey,
    ) -> (SocketAddr, tokio::task::JoinHandle<Result<Session, Error>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut s, peer) = l.accept().await.expect("accept");
            server(&mut s, peer, &k, "director-1").await
        });
        (addr, task)
    }

    #[tokio::test]
    async fn both_sides_name_a_wrong_key() {
        let (addr, srv) = one_server(key("a")).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let client_err = client(&mut s, addr, &key("b"), "node-1")
            .await
            .err()
            .expect("refused");
        let server_err = srv.await.expect("task").err().expect("refused");
        assert!(matches!(server_err, Error::WrongKey { ref name, .. } if name == "node-1"));
        let text = server_err.to_string();
        assert!(text.contains("wrong cluster key"), "{text}");
        assert!(text.contains("127.0.0.1:"), "names the peer: {text}");
        let text = client_err.to_string();
        assert!(text.contains("wrong cluster key"), "{text}");
        assert!(text.contains(&addr.to_string()), "names the peer: {text}");
    }

    #[tokio::test]
    async fn sessions_agree_and_differ_per_direction() {
        let (addr, srv) = one_server(key("a")).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let c = client(&mut s, addr, &key("a"), "node-1")
            .await
            .expect("client");
        let sv = srv.await.expect("task").expect("server");
        assert_eq!(c.peer_name, "director-1");
        assert_eq!(sv.peer_name, "node-1");
        assert_eq!(c.send_key, sv.recv_key);
        assert_eq!(c.recv_key, sv.send_key);
        assert_ne!(c.send_key, c.recv_key);
    }

    /// A relay on the path that renames the client in its Hello, then passes every byte on:
    /// the name is bound in the proof, so the server refuses.
    #[tokio::test]
    async fn a_name_changed_on_the_way_is_refused() {
        let (server_addr, srv) = one_server(key("a")).await;
        let relay = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let relay_addr = relay.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut from_client, peer) = relay.accept().await.expect("accept");
            let mut to_server = TcpStream::connect(server_addr).await.expect("connect");
            let Ok(Handshake::Hello {
                link_version,
                nonce,
                ..
            }) = read(&mut from_client, peer).await
            else {
                return;
            };
            let renamed = Handshake::Hello {
                link_version,
                name: "node-evil".into(),
                nonce,
            };
            if write(&mut to_server, server_addr, &renamed).await.is_ok() {
                let _ = tokio::io::copy_bidirectional(&mut from_client, &mut to_server).await;
            }
        });
        let mut s = TcpStream::connect(relay_addr).await.expect("connect");
        let err = client(&mut s, relay_addr, &key("a"), "node-1")
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(
                err,
                Error::Refused {
                    reason: Refusal::WrongKey,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = srv.await.expect("task").err().expect("refused");
        assert!(
            matches!(err, Error::WrongKey { ref name, .. } if name == "node-evil"),
            "{err:?}"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("node-1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_name(&"x".repeat(MAX_NAME + 1)).is_err());
    }
}
