//! A cluster node: one nines agent, connected to the directors over authenticated links.
//!
//! `nines agent --node NAME --director ADDR[,ADDR...]` runs [`run`]. The node gets the cluster
//! config from the director it joins (so every node runs exactly the director's model), starts
//! a local [`nines_agent`] agent, tells the director what runs, and from then on carries out
//! the director's orders and sends back every fact the agent reports.
//!
//! ```text
//!   director ──Welcome{config, keep}──▶ node ──starts──▶ nines_agent (processes, SA socket)
//!            ◀──Running{comps, held}──       ◀──Report──
//!            ──Order(action)─────────▶      ──execute──▶
//!            ◀──Report{age, fact}─────
//! ```
//!
//! # Architecture invariants
//!
//! * **Headless survival.** Losing the director never stops a component: the agent keeps
//!   running and supervising them, and the node reconnects (to any of the directors, with
//!   backoff). A director that was not the one before (a new leader) learns what runs from
//!   `Running` and resumes from it; nothing healthy is restarted.
//! * **A fenced node starts clean.** When the director answers `keep: false` (it fenced this
//!   node and failed its work over meanwhile), every component is killed before the node
//!   reports, so work that moved elsewhere never runs twice.
//! * **Facts keep their instant.** Reports carry their age, not an instant: agents and
//!   directors share no clock, and the director restamps each fact on its own.
//! * Decoding checks every index against the model ([`wire`]); a bad order is logged and
//!   dropped, never executed.
#![warn(missing_docs)]

mod replicate;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nines_agent::{AgentHandle, AgentOptions, Clock, Report};
use nines_link::{connect_any, ClusterKey, ConnectError, ConnectOptions, LostReason};
use nines_model::{Model, NodeId};
use tokio::sync::{mpsc, watch};

use crate::replicate::NodeReplicator;
use crate::wire::{Fact, RunningComp, ToAgent, ToDirector, CATCH_UP};

/// How long a director may take to answer `Join` with `Welcome`.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(5);

/// What a node needs.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's name in the config (`node/NAME`); also the link's peer name.
    pub name: String,
    /// The directors to try, in order.
    pub directors: Vec<SocketAddr>,
    /// The cluster key.
    pub key: ClusterKey,
    /// Where the agent keeps its socket, component logs and process records (created 0700).
    pub state_dir: PathBuf,
    /// Link timing, connect timeouts and backoff.
    pub connect: ConnectOptions,
}

/// Why a node stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Every director refused this node (wrong key, unknown node name, other version).
    #[error("{0}")]
    Refused(ConnectError),
    /// The state directory cannot be used.
    #[error("state directory {}: {source}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The local agent could not start.
    #[error("cannot start the agent: {0}")]
    Agent(std::io::Error),
}

/// The local agent and what it was started from.
struct Local {
    handle: AgentHandle,
    reports: mpsc::UnboundedReceiver<Report>,
    model: Arc<Model>,
    config: String,
}

/// Runs the node until `stop` turns true (then its components are terminated gracefully) or
/// every director refuses it. Connection losses are not errors: the node runs headless and
/// reconnects.
pub async fn run(opts: NodeOptions, mut stop: watch::Receiver<bool>) -> Result<(), NodeError> {
    for dir in [opts.state_dir.clone(), opts.state_dir.join("logs")] {
        std::fs::create_dir_all(&dir).map_err(|source| NodeError::StateDir {
            path: dir.clone(),
            source,
        })?;
    }
    let clock = Clock::new();
    let incarnation = random_u64();
    let mut local: Option<Local> = None;
    let replicator = Arc::new(NodeReplicator::default());
    let result = loop {
        let link = tokio::select! {
            r = connect_any::<ToDirector, ToAgent>(&opts.directors, &opts.key, &opts.name, &opts.connect) => match r {
                Ok(l) => l,
                // Refused before anything runs here: a configuration error, say so and stop.
                Err(e @ ConnectError::Refused { .. }) if local.is_none() => {
                    break Err(NodeError::Refused(e))
                }
                // Refused with components running (a director restarted with another key or
                // version): never stop them for that; keep trying.
                Err(e) => {
                    tracing::error!("no director admits this node: {e}; components keep running");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break Ok(()),
        };
        let director = link.peer_name().to_owned();
        tracing::info!(director = %director, addr = %link.peer_addr(), "joined a director");
        let ended = session(
            &opts,
            clock,
            incarnation,
            link,
            &mut local,
            &replicator,
            &mut stop,
        )
        .await;
        replicator.disconnected();
        match ended {
            Ok(Ended::Stop) => break Ok(()),
            Ok(Ended::Lost(why)) => {
                tracing::warn!(director = %director, "lost the director ({why}); running headless");
            }
            Err(e) => break Err(e),
        }
    };
    if let Some(l) = local.take() {
        l.handle.shutdown().await;
    }
    result
}

enum Ended {
    Stop,
    Lost(String),
}

/// One connection to a director, from `Join` until the link is lost.
async fn session(
    opts: &NodeOptions,
    clock: Clock,
    incarnation: u64,
    link: nines_link::Link<ToDirector, ToAgent>,
    local: &mut Option<Local>,
    replicator: &Arc<NodeReplicator>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended, NodeError> {
    let mut lost = link.lost_signal();
    let (tx, mut rx) = link.split();
    if tx.send(&ToDirector::Join { incarnation }).await.is_err() {
        return Ok(Ended::Lost("closed before the welcome".into()));
    }
    let (config, keep) = match tokio::time::timeout(WELCOME_TIMEOUT, rx.recv()).await {
        Ok(Some(ToAgent::Welcome { config, keep })) => (config, keep),
        Ok(Some(other)) => {
            tracing::error!("director sent {other:?} before its welcome; reconnecting");
            return Ok(Ended::Lost("no welcome".into()));
        }
        Ok(None) => return Ok(Ended::Lost("refused or closed before the welcome".into())),
        Err(_) => {
            return Ok(Ended::Lost(format!(
                "no welcome within {WELCOME_TIMEOUT:?}"
            )))
        }
    };
    let same = local.as_ref().is_some_and(|l| l.config == config);
    if !keep || !same {
        if let Some(l) = local.take() {
            tracing::warn!(
                reset = !keep,
                "stopping every component: {}",
                if keep {
                    "the config changed"
                } else {
                    "this node was fenced"
                }
            );
            l.handle.kill().await;
        }
    }
    let running_now: Vec<nines_agent::Adopted>;
    let running: Vec<RunningComp> = match local {
        Some(l) => {
            // Facts about what the previous director ordered are history now; the snapshot
            // below is what the director resumes from.
            while l.reports.try_recv().is_ok() {}
            running_now = l.handle.running();
            running_now.iter().map(RunningComp::from_adopted).collect()
        }
        None => {
            let model = match nines_model::load(&config, "director config") {
                Ok(loaded) => Arc::new(loaded.model),
                Err(errors) => {
                    let first = errors.first().map(ToString::to_string).unwrap_or_default();
                    tracing::error!("the director's config does not load here: {first}");
                    return Ok(Ended::Lost("bad config from the director".into()));
                }
            };
            let Some(node) = model.nodes.iter().position(|n| n.name == opts.name) else {
                tracing::error!(node = %opts.name, "the director's config has no such node");
                return Ok(Ended::Lost("node not in the config".into()));
            };
            let (handle, reports) = nines_agent::start(AgentOptions {
                node: NodeId(node as u32),
                model: model.clone(),
                socket: opts.state_dir.join("agent.sock"),
                log_dir: Some(opts.state_dir.join("logs")),
                clock,
                record_dir: Some(opts.state_dir.join("procs")),
                adopt: keep,
            })
            .await
            .map_err(NodeError::Agent)?;
            handle.set_replicator(replicator.clone());
            handle.set_guest_join(nines_agent::GuestJoin {
                directors: opts.directors.clone(),
                key: opts.key.secret().to_vec(),
            });
            let adopted = if keep {
                handle.adopted().await
            } else {
                Vec::new()
            };
            let l = local.insert(Local {
                handle,
                reports,
                model,
                config,
            });
            let _ = &l.model;
            let comps = adopted.iter().map(RunningComp::from_adopted).collect();
            running_now = adopted;
            comps
        }
    };
    let Some(l) = local.as_mut() else {
        return Ok(Ended::Lost("no agent".into()));
    };
    if tx
        .send(&ToDirector::Running { comps: running })
        .await
        .is_err()
    {
        return Ok(Ended::Lost("closed while reporting".into()));
    }
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    // Connected first, then the snapshot: a write made in between is queued before the
    // snapshot, which already holds it, so nothing is missed and nothing goes back.
    replicator.connected(out_tx.clone());
    // The checkpoints of what this node serves actively go first: a director that did not
    // relay them (a new leader), and the standbys it relays to, must have the newest state.
    for write in catch_up(&l.model, &l.handle, &running_now) {
        let _ = out_tx.send(ToDirector::Checkpoint {
            seq: 0,
            write: Some(write.into()),
            wait: false,
        });
    }
    drop(out_tx);
    let mut pids: Vec<(u32, u32)> = l.handle.pids().iter().map(|(c, p)| (c.0, *p)).collect();
    let _ = tx.try_send(&ToDirector::Pids(pids.clone()));
    loop {
        tokio::select! {
            biased;
            Some(msg) = out_rx.recv() => {
                if tx.send(&msg).await.is_err() {
                    let why = lost.get().map(|l| l.reason).unwrap_or(LostReason::Closed);
                    return Ok(Ended::Lost(why.to_string()));
                }
            }
            order = rx.recv() => match order {
                Some(ToAgent::Order(o)) => match o.to_action(&l.model) {
                    // Only the order knows the destination's address.
                    Ok(nines_engine::ActionKind::MigrateOut { comp, .. }) => {
                        if let wire::Order::MigrateOut { ip, port, .. } = o {
                            l.handle.migrate_out(comp, SocketAddr::new(ip, port));
                        }
                    }
                    Ok(action) => l.handle.execute(&action),
                    Err(e) => tracing::error!("refused an order from the director: {e}"),
                },
                Some(ToAgent::Replica { origin, seq, write }) => {
                    let stored = match write {
                        Some(w) => l.handle.apply_replica(w.into()),
                        None => Ok(()),
                    };
                    match stored {
                        // Acknowledged only when stored: a write this node refused must not
                        // count as on the standby (its writer times out instead).
                        Ok(()) if origin != CATCH_UP => {
                            if tx.send(&ToDirector::ReplicaAck { origin, seq }).await.is_err() {
                                let why = lost.get().map(|l| l.reason).unwrap_or(LostReason::Closed);
                                return Ok(Ended::Lost(why.to_string()));
                            }
                        }
                        Ok(()) => {}
                        Err(e) => tracing::error!("cannot store a replicated checkpoint write: {e}"),
                    }
                }
                Some(ToAgent::CheckpointAck { seq, result }) => replicator.acked(seq, result),
                Some(ToAgent::Welcome { .. }) => {
                    tracing::error!("a second welcome from the director; ignored");
                }
                None => {
                    let why = lost.get().map(|l| l.reason).unwrap_or(LostReason::Closed);
                    return Ok(Ended::Lost(why.to_string()));
                }
            },
            report = l.reports.recv() => {
                let Some(report) = report else {
                    return Ok(Ended::Lost("the agent stopped".into()));
                };
                let Some(fact) = Fact::from_input(&report.input) else {
                    continue;
                };
                let age_ns = clock.now().saturating_since(report.at).as_nanos();
                let msg = ToDirector::Report {
                    age_ns: u64::try_from(age_ns).unwrap_or(u64::MAX),
                    fact,
                };
                if tx.send(&msg).await.is_err() {
                    let why = lost.get().map(|l| l.reason).unwrap_or(LostReason::Closed);
                    return Ok(Ended::Lost(why.to_string()));
                }
                let now: Vec<(u32, u32)> =
                    l.handle.pids().iter().map(|(c, p)| (c.0, *p)).collect();
                if now != pids {
                    pids = now;
                    let _ = tx.try_send(&ToDirector::Pids(pids.clone()));
                }
            }
            l2 = lost.wait() => return Ok(Ended::Lost(l2.reason.to_string())),
            () = stopped(stop) => return Ok(Ended::Stop),
        }
    }
}

/// The checkpoints of the SIs that components here hold actively (a checkpoint is named
/// after its SI), section by section.
fn catch_up(
    model: &Model,
    handle: &AgentHandle,
    running: &[nines_agent::Adopted],
) -> Vec<nines_agent::ReplicaWrite> {
    let active: std::collections::BTreeSet<&str> = running
        .iter()
        .flat_map(|a| a.held.iter())
        .filter(|(_, ha)| *ha == nines_engine::HaState::Active)
        .map(|(csi, _)| model.sis[model.csis[csi.index()].si.index()].path.as_str())
        .collect();
    handle
        .checkpoints()
        .into_iter()
        .filter(|w| active.contains(w.checkpoint.as_str()))
        .collect()
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(b)
}
