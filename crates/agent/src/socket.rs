//! The agent's Unix socket: binding it owner-only, accepting connections, registering them.
//!
//! A connection must first register as a component of this node that the agent is
//! instantiating, from inside that component's process group (checked with the peer's
//! credentials, so a process cannot speak for another component). Registration completes the
//! instantiation; from then on the connection is a session ([`crate::session`]).
//!
//! Nothing a component sends can hurt the agent: a malformed frame closes that session (logged),
//! and the end of a session is not itself a failure, because the pidfd decides whether the
//! process is alive (callbacks then time out, which the engine handles).

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nines_engine::{Command, HaState, Input, Outcome};
use nines_model::{CompId, CompKind, CsiId, EntityRef};
use nines_proto::{Decoder, FrameError, HeldCsi, ToAgent, ToComponent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::agent::{Agent, Phase};
use crate::dispatch::handle;
use crate::healthcheck;
use crate::session::{SessionLink, OUTBOX};
use crate::{spawner, spawning, vip, wire};

/// How long a new connection may take to send its `Register`.
pub const REGISTER_WAIT: Duration = Duration::from_secs(10);

/// Bind the socket at `path`, owner-only (0600), replacing a stale socket file. Refuses when
/// another agent is still listening there, or when the path is not a socket.
pub(crate) fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another agent is listening on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
        tracing::info!(socket = %path.display(), "removed a stale socket file");
    }
    // Bind under a temporary name, restrict it, then rename: the socket never exists at its
    // real path with wider permissions.
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "socket path has no file name")
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}", std::process::id()));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

/// Accept connections until the agent stops.
pub(crate) async fn accept_loop(agent: Arc<Agent>, listener: UnixListener) {
    let mut stop = agent.stop.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let a = agent.clone();
                    tokio::spawn(async move { serve(a, stream).await });
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "cannot accept on the agent socket");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = crate::agent::stopped(&mut stop) => return,
        }
    }
}

/// Read the next message, reading from the socket as needed. `Ok(None)` at end of stream.
async fn next_message(
    rd: &mut OwnedReadHalf,
    dec: &mut Decoder,
    buf: &mut [u8],
) -> Result<Option<ToAgent>, FrameError> {
    loop {
        if let Some(msg) = dec.next::<ToAgent>()? {
            return Ok(Some(msg));
        }
        let n = rd.read(buf).await?;
        if n == 0 {
            if dec.buffered() > 0 {
                return Err(FrameError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a frame",
                )));
            }
            return Ok(None);
        }
        dec.push(&buf[..n]);
    }
}

/// Bytes read from a component's socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// One connection, from registration to its end.
async fn serve(agent: Arc<Agent>, stream: UnixStream) {
    let peer = stream.peer_cred().ok().and_then(|c| c.pid());
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(OUTBOX);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let mut dec = Decoder::new();
    // Only where each read lands (the decoder assembles frames of any size). Under 64 KiB:
    // glibc consolidates its free lists whenever a chunk of 64 KiB or more is freed, and this
    // one is freed the moment a component dies, in the middle of its failover.
    let mut buf = vec![0u8; READ_CHUNK];
    let first =
        tokio::time::timeout(REGISTER_WAIT, next_message(&mut rd, &mut dec, &mut buf)).await;
    let link = match first {
        Ok(Ok(Some(ToAgent::Register {
            component,
            pid,
            version,
            held,
        }))) => match register_once_spawned(&agent, &component, peer, held, tx.clone()).await {
            Ok(link) => {
                tracing::info!(component = %component, pid, "registered");
                link
            }
            Err(reason) => {
                tracing::warn!(component = %component, pid, version, peer = ?peer, %reason, "registration refused");
                let refusal = ToComponent::Registered {
                    ok: false,
                    reason: Some(reason),
                };
                let _ = tx.try_send(nines_proto::encode(&refusal));
                return finish(tx, writer).await;
            }
        },
        Ok(Ok(Some(other))) => {
            tracing::warn!(peer = ?peer, message = ?other, "first message is not Register; closing");
            let refusal = ToComponent::Registered {
                ok: false,
                reason: Some("the first message must be Register".into()),
            };
            let _ = tx.try_send(nines_proto::encode(&refusal));
            return finish(tx, writer).await;
        }
        Ok(Ok(None)) => return finish(tx, writer).await,
        Ok(Err(e)) => {
            tracing::error!(peer = ?peer, error = %e, "malformed frame before registration; closing");
            return finish(tx, writer).await;
        }
        Err(_) => {
            tracing::warn!(peer = ?peer, "no Register within {REGISTER_WAIT:?}; closing");
            return finish(tx, writer).await;
        }
    };
    drop(tx); // the link holds the session's sender from here on
    let path = agent.comp(link.comp).path.clone();
    loop {
        tokio::select! {
            msg = next_message(&mut rd, &mut dec, &mut buf) => match msg {
                Ok(Some(msg)) => handle(&agent, &link, msg),
                Ok(None) => {
                    tracing::info!(component = %path, "session closed by the component");
                    break;
                }
                Err(e) => {
                    tracing::error!(component = %path, error = %e, "malformed frame; closing the session");
                    break;
                }
            },
            _ = link.closed() => break,
        }
    }
    link.close();
    {
        let mut comps = agent.comps();
        if let Some(inc) = comps.get_mut(&link.comp) {
            if inc.session.as_ref().is_some_and(|s| s.id == link.id) {
                inc.session = None;
            }
        }
    }
    agent.groups().forget_session(link.id);
    // Let queued frames go out, bounded, then drop the connection.
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}

/// End an unregistered connection after its last frames are written.
async fn finish(tx: mpsc::Sender<Vec<u8>>, writer: tokio::task::JoinHandle<()>) {
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}

/// Check a registration and, if it is valid, attach the session and complete instantiation.
/// [`register`], once the component's spawn is recorded: a process can connect before the
/// spawner thread has recorded it.
async fn register_once_spawned(
    agent: &Arc<Agent>,
    component: &str,
    peer: Option<i32>,
    held: Vec<HeldCsi>,
    tx: mpsc::Sender<Vec<u8>>,
) -> Result<Arc<SessionLink>, String> {
    if let Some(EntityRef::Comp(comp)) = agent.model.find(component) {
        spawning::settled(agent, comp).await;
    }
    let result = register(agent, component, peer, &held, tx);
    agent.changed.notify_waiters();
    result
}

fn register(
    agent: &Arc<Agent>,
    component: &str,
    peer: Option<i32>,
    held: &[HeldCsi],
    tx: mpsc::Sender<Vec<u8>>,
) -> Result<Arc<SessionLink>, String> {
    let Some(EntityRef::Comp(comp)) = agent.model.find(component) else {
        return Err(format!("{component} is not a component"));
    };
    if !agent.owns(comp) {
        let node = &agent.model.nodes[agent.node.index()].name;
        return Err(format!("{component} is not configured on node {node}"));
    }
    if agent.comp(comp).kind != CompKind::SaAware {
        return Err(format!("{component} is not an sa-aware component"));
    }
    let mut comps = agent.comps();
    let Some(inc) = comps.get_mut(&comp) else {
        return Err(format!(
            "{component} is not being instantiated by this agent"
        ));
    };
    if inc.session.is_some() {
        return Err(format!("{component} is already registered"));
    }
    let adopted = inc.phase == Phase::Adopting;
    if !adopted && inc.phase != Phase::Instantiating {
        return Err(format!(
            "{component} is not being instantiated (its instantiation {})",
            match inc.phase {
                Phase::Abandoned => "timed out",
                Phase::Running => "is complete",
                _ => "is over",
            }
        ));
    }
    let leader = inc.proc.pid();
    let group = peer
        .and_then(rustix::process::Pid::from_raw)
        .and_then(|p| rustix::process::getpgid(Some(p)).ok())
        .map(|g| g.as_raw_nonzero().get().unsigned_abs());
    if group != Some(leader) {
        return Err(format!(
            "the connecting process (pid {}) is not in {component}'s process group {leader}",
            peer.map_or_else(|| "unknown".to_string(), |p| p.to_string())
        ));
    }
    let welcome = nines_proto::encode(&ToComponent::Registered {
        ok: true,
        reason: None,
    });
    // Queued before the link is visible, so it is the first frame the component receives.
    tx.try_send(welcome)
        .map_err(|_| "cannot answer the registration".to_string())?;
    let link = SessionLink::new(comp, inc.gen, tx);
    inc.session = Some(link.clone());
    inc.phase = Phase::Running;
    if adopted {
        inc.held = resolve_held(agent, comp, held);
    }
    let gen = inc.gen;
    let group_leader = inc.proc.leader();
    let held_now = inc.held.clone();
    drop(comps);
    // Registered: the component runs at the agent's priority from now on (what else it started
    // meanwhile, too, once the housekeeping thread has found it: the search reads /proc, 1.3 ms
    // of CPU on the development VM). Adopted ones too: the agent that started one in the
    // background may have died before it registered.
    spawner::restore_group(group_leader);
    if adopted {
        // Back under supervision with the work it says it holds; the engine learns of it
        // through `AgentHandle::adopted`, not as an instantiation.
        for (csi, ha) in held_now {
            agent.set_membership(comp, csi, Some(ha));
            // The agent released every floating IP at start; one still held active is
            // claimed again (the engine resumes the assignment without re-assigning it).
            vip::settle(agent, comp, csi, Some(ha), |_| {});
        }
    } else {
        agent.report(
            agent.clock.now(),
            Input::CommandDone {
                comp,
                command: Command::Instantiate,
                outcome: Outcome::Ok,
            },
        );
    }
    healthcheck::start_healthcheck(agent, comp, gen);
    healthcheck::start_monitor(agent, comp, gen);
    Ok(link)
}

/// The CSIs an adopted component says it holds, as ids: only CSIs this component serves
/// count (anything else is a confused or hostile claim, logged and ignored).
fn resolve_held(agent: &Agent, comp: CompId, held: &[HeldCsi]) -> Vec<(CsiId, HaState)> {
    let m = &agent.model;
    let su = m.comps[comp.index()].su;
    let mut out = Vec::new();
    for h in held {
        match m.find(&h.csi) {
            Some(EntityRef::Csi(csi))
                if m.sis[m.csis[csi.index()].si.index()].sg == m.sus[su.index()].sg
                    && m.comp_for(su, csi) == comp =>
            {
                out.push((csi, wire::ha_from_wire(h.ha)));
            }
            _ => tracing::warn!(
                component = %m.comps[comp.index()].path,
                csi = %h.csi,
                "an adopted component claims a CSI it does not serve; ignored"
            ),
        }
    }
    out
}
