//! The director: runs the engine for a cluster. Either the single-host runtime behind
//! `nines run` (one in-process node agent per config node) or, with
//! [`RunOptions::cluster`], the director of a cluster whose nodes run `nines agent` and join
//! over the network (see [`cluster`]); either way one engine task, the event log, persisted
//! admin states and the control socket, all under one state directory.
//!
//! ```text
//!   agents (one per node) ──Report──▶ ┌─────────────┐ ──component actions──▶ agent of the node
//!   control.sock ──admin/status─────▶ │ engine loop │ ──StartTimer──▶ timers ──TimerFired──┐
//!   fence tasks ──FenceDone/NodeUp──▶ │ (owns the   │ ──Fence──▶ fence task               │
//!   timers ◀──────────────────────────│  Engine)    │ ──Record──▶ events.jsonl + followers │
//!                                     └─────────────┘ ◀────────────────────────────────────┘
//! ```
//!
//! State directory layout: `lock` (flock: one runtime per directory), `control.sock`,
//! `agents/NODE.sock`, `logs/NODE/` (component output), `events.jsonl` (the event log, kept
//! across runs), `state.redb` (the operators' admin states, re-applied on start; a
//! `nines-store` redb file),
//! `agents/NODE.procs/` (each agent's record of the component processes it runs, so that the
//! next run adopts what a crashed run left running).

#![warn(missing_docs)]

mod admin_store;
mod agents;
pub mod client;
pub mod cluster;
mod control;
mod engine_loop;
pub mod event_json;
pub mod event_log;
pub mod faults;
mod fence;
pub mod format;
mod lock;
mod msg;
pub mod names;
pub mod protocol;
mod replication;
pub mod status;
mod suggest;
mod timers;
pub mod wall;

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use nines_agent::Clock;
use nines_model::{EntityRef, Model};
use serde_json::json;
use tokio::net::UnixListener;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use client::{ClientError, ControlClient};
pub use event_log::LogLine;
pub use status::Status;

use crate::admin_store::AdminStore;
use crate::agents::{AgentCtx, Agents};
use crate::control::ControlCtx;
use crate::engine_loop::EngineLoop;
use crate::event_log::EventLog;
use crate::lock::{LockError, StateLock};
use crate::msg::Msg;

/// The control socket of the runtime using `state_dir` (where clients connect).
pub fn control_socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// The event log of `state_dir` (readable without a running runtime).
pub fn events_path(state_dir: &Path) -> PathBuf {
    state_dir.join("events.jsonl")
}

/// What `nines run` needs to start.
pub struct RunOptions {
    /// The validated config.
    pub model: Arc<Model>,
    /// Where sockets, logs and persisted state live; created if missing (mode 0700).
    pub state_dir: PathBuf,
    /// `None`: a single-host run (one in-process agent per node). `Some`: a cluster
    /// director; nodes run `nines agent` and join over the network.
    pub cluster: Option<cluster::ClusterOptions>,
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The state directory (or a file in it) could not be created, read or written.
    #[error("state directory {}: {source}", path.display())]
    StateDir {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// Another runtime uses the state directory.
    #[error("another nines runtime{} already uses the state directory {} ({}); stop it first or choose another --state-dir", pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), dir.display(), why)]
    InUse {
        /// The state directory.
        dir: PathBuf,
        /// Its pid, when known.
        pid: Option<u32>,
        /// How it was noticed.
        why: String,
    },
    /// The config has guest nodes (nodes that are VMs), whose agents join over the network,
    /// but this is a single-host run, whose agents are all in this process.
    #[error("node/{node} is the guest of VM {vm}: a nested cluster needs `nines director` (its guests' agents join over TCP) and one `nines agent` per host; `nines run` has only in-process agents")]
    GuestsNeedDirector {
        /// The guest node.
        node: String,
        /// Its VM component's path.
        vm: String,
    },
    /// The leader election (etcd) failed.
    #[error("cannot become the leader: {0}")]
    Election(String),
    /// The cluster listener could not be set up.
    #[error("cannot listen for nodes: {0}")]
    Listen(String),
    /// A node agent could not be started.
    #[error("cannot start the agent of node/{node}: {source}")]
    Agent {
        /// Node name.
        node: String,
        /// What failed.
        source: io::Error,
    },
}

fn dir_err(path: &Path) -> impl FnOnce(io::Error) -> RunError + '_ {
    move |source| RunError::StateDir {
        path: path.to_path_buf(),
        source,
    }
}

/// A running single-host cluster. Call [`Runtime::shutdown`] to stop cleanly (components
/// terminated gracefully, sockets removed); without it, the components live until the tokio
/// runtime is dropped, when the agents SIGKILL them.
pub struct Runtime {
    state_dir: PathBuf,
    control_socket: PathBuf,
    agents_dir: PathBuf,
    tx: mpsc::UnboundedSender<Msg>,
    log: Arc<EventLog>,
    run: u64,
    first_seq: u64,
    engine_task: JoinHandle<()>,
    control_task: JoinHandle<()>,
    stop_control: watch::Sender<bool>,
    stopped: watch::Receiver<bool>,
    /// Holds the etcd leadership (and watches it); aborted on shutdown, which lets the lease
    /// go so that another director can lead at once.
    leader_task: Option<JoinHandle<()>>,
    _lock: StateLock,
}

impl Runtime {
    /// Starts everything: takes the state directory (refusing if another runtime holds it),
    /// starts one agent per node (adopting the components a crashed earlier run left running),
    /// re-applies saved admin states, starts the engine and opens the control socket.
    ///
    /// Must run inside a tokio runtime with I/O and time enabled. The process becomes a child
    /// subreaper (the agents reap every child of the process), so code sharing the process
    /// must not wait for its own children with `std::process`.
    pub async fn start(opts: RunOptions) -> Result<Runtime, RunError> {
        if opts.cluster.is_none() {
            if let Some(n) = opts.model.nodes.iter().find(|n| n.vm.is_some()) {
                return Err(RunError::GuestsNeedDirector {
                    node: n.name.clone(),
                    vm: n
                        .vm
                        .map(|c| opts.model.path(EntityRef::Comp(c)))
                        .unwrap_or_default(),
                });
            }
        }
        let dir = opts.state_dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(dir_err(&dir))?;
        let lock = match StateLock::acquire(&dir) {
            Ok(l) => l,
            Err(LockError::Held(pid)) => {
                return Err(RunError::InUse {
                    dir,
                    pid,
                    why: "its lock file is held".into(),
                })
            }
            Err(LockError::Io(e)) => return Err(dir_err(&dir.join("lock"))(e)),
        };
        let control_socket = control_socket_path(&dir);
        if std::os::unix::net::UnixStream::connect(&control_socket).is_ok() {
            return Err(RunError::InUse {
                pid: None,
                why: format!("{} answers", control_socket.display()),
                dir,
            });
        }
        remove_if_present(&control_socket)?;
        let agents_dir = dir.join("agents");
        let logs_dir = dir.join("logs");
        for d in [&agents_dir, &logs_dir] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(dir_err(d))?;
        }

        let events_path = events_path(&dir);
        let history = EventLog::history(&events_path).map_err(dir_err(&events_path))?;
        let run = history.last_run + 1;
        let clock = Clock::new();
        let wall = wall::WallClock::new(clock.now(), SystemTime::now());
        let log = Arc::new(
            EventLog::open(&events_path, history, run, wall).map_err(dir_err(&events_path))?,
        );
        let first_seq = log.next_seq();
        log.append(
            clock.now(),
            "run-started",
            &engine_loop::run_started_fields(&opts.model, run, &dir),
        );

        let store_path = dir.join(nines_store::STATE_FILE);
        let etcd = opts.cluster.as_ref().and_then(|c| c.etcd.clone());
        let (store, token, leadership, store_name) = match etcd {
            None => {
                let redb = nines_store::RedbStore::open(&dir)
                    .await
                    .map_err(|e| dir_err(&store_path)(io::Error::other(e.to_string())))?;
                let token = redb.owner_token();
                (nines_store::Store::Redb(redb), token, None, "state.redb")
            }
            Some(e) => {
                let name = opts
                    .cluster
                    .as_ref()
                    .map_or("director", |c| c.name.as_str());
                let (store, leadership) = cluster::lead(&e, name, &log, clock).await?;
                let token = leadership.token().clone();
                (
                    nines_store::Store::Etcd(store),
                    token,
                    Some(leadership),
                    "etcd",
                )
            }
        };
        let on_error: admin_store::OnError = {
            let log = log.clone();
            Box::new(move |e| {
                log.append(
                    clock.now(),
                    "persist-error",
                    &vec![("store", json!(store_name)), ("error", json!(e))],
                );
            })
        };
        let admin_path = dir.join("admin.json");
        let (admin_store, imported) = AdminStore::open(store, token, &admin_path, on_error)
            .await
            .map_err(|e| dir_err(&store_path)(io::Error::other(e)))?;
        if let Some(n) = imported {
            log.append(
                clock.now(),
                "admin-imported",
                &vec![("file", json!("admin.json")), ("states", json!(n))],
            );
        }

        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = AgentCtx {
            model: opts.model.clone(),
            clock,
            agents_dir: agents_dir.clone(),
            logs_dir,
            tx: tx.clone(),
        };
        let listener = match bind_control(&control_socket) {
            Ok(l) => l,
            Err(e) => return Err(dir_err(&control_socket)(e)),
        };
        let engine_loop = match opts.cluster {
            None => {
                let agents = match Agents::start_all(ctx).await {
                    Ok(a) => a,
                    Err((node, source)) => {
                        let _ = std::fs::remove_file(&control_socket);
                        return Err(RunError::Agent {
                            node: opts.model.nodes[node.index()].name.clone(),
                            source,
                        });
                    }
                };
                // Components a crashed earlier run left running come back under supervision
                // (each SA-aware one once it registered again); the engine resumes from them.
                let adopted = agents.adopted().await;
                let mut engine_loop = EngineLoop::new(
                    opts.model.clone(),
                    clock,
                    agents,
                    log.clone(),
                    admin_store,
                    rx,
                    run,
                );
                engine_loop.log_adopted(&adopted);
                engine_loop.boot(resume_of(&adopted));
                engine_loop
            }
            Some(c) => {
                let cctx = Arc::new(cluster::ClusterCtx {
                    model: opts.model.clone(),
                    config_text: c.config_text,
                    fence: c.fence,
                    clock,
                    tx: tx.clone(),
                    join_timeout: c.join_timeout,
                });
                let listener = match c.listener {
                    cluster::Listen::Bound(l) => l,
                    cluster::Listen::At(addr) => match std::net::TcpListener::bind(addr) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = std::fs::remove_file(&control_socket);
                            return Err(RunError::Listen(format!("{addr}: {e}")));
                        }
                    },
                };
                let addr = listener.local_addr().ok();
                let task = match cluster::serve(listener, c.key, &c.name, c.link, cctx.clone()) {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = std::fs::remove_file(&control_socket);
                        return Err(RunError::Listen(e.to_string()));
                    }
                };
                log.append(
                    clock.now(),
                    "listening",
                    &vec![
                        ("addr", json!(addr.map(|a| a.to_string()))),
                        ("director", json!(c.name)),
                    ],
                );
                let mut engine_loop = EngineLoop::new(
                    opts.model.clone(),
                    clock,
                    Agents::remote(ctx, cctx),
                    log.clone(),
                    admin_store,
                    rx,
                    run,
                );
                engine_loop.accept_task = Some(task);
                engine_loop.deposed = leadership.as_ref().map(|l| l.subscribe());
                // Every node that joins in time says what it runs; the engine resumes from
                // that, so a director that replaces another restarts nothing healthy.
                let (adopted, later) = engine_loop.gather_joins().await;
                let deposed = engine_loop
                    .deposed
                    .as_ref()
                    .is_some_and(|d| d.borrow().is_some());
                if deposed {
                    // Lost the lease while waiting for the nodes: another director may lead
                    // already. Start nothing; the loop stops on the Shutdown that follows.
                    engine_loop.log_director(
                        "boot-skipped",
                        vec![(
                            "reason",
                            json!("lost the leadership while the nodes joined"),
                        )],
                    );
                } else {
                    engine_loop.log_adopted(&adopted);
                    engine_loop.boot(resume_of(&adopted));
                    for msg in later {
                        engine_loop.on_msg(msg);
                    }
                }
                engine_loop
            }
        };
        let (stopped_tx, stopped) = watch::channel(false);
        let engine_task = tokio::spawn(async move {
            engine_loop.run().await;
            let _ = stopped_tx.send(true);
        });
        let mut leader_task = None;
        if let Some(leadership) = leadership {
            // A deposed leader stops at once (its writes would be refused anyway: the store
            // checks the leadership token); the nodes go on headless and join the next one.
            let (tx, log) = (tx.clone(), log.clone());
            leader_task = Some(tokio::spawn(async move {
                let why = leadership.lost().await;
                log.append(
                    clock.now(),
                    "leadership-lost",
                    &vec![("reason", json!(format!("{why:?}")))],
                );
                let (done, _) = oneshot::channel();
                let _ = tx.send(Msg::Shutdown { done });
            }));
        }

        let (stop_control, stop_rx) = watch::channel(false);
        let control_ctx = Arc::new(ControlCtx {
            model: opts.model,
            tx: tx.clone(),
            log: log.clone(),
        });
        let control_task = tokio::spawn(control::serve(listener, control_ctx, stop_rx));

        Ok(Runtime {
            state_dir: dir,
            control_socket,
            agents_dir,
            tx,
            log,
            run,
            first_seq,
            engine_task,
            control_task,
            stop_control,
            stopped,
            leader_task,
            _lock: lock,
        })
    }

    /// The control socket clients connect to.
    pub fn control_socket(&self) -> &Path {
        &self.control_socket
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// This run's number (runs of a state directory are numbered from 1).
    pub fn run_number(&self) -> u64 {
        self.run
    }

    /// The event-log line number of this run's `run-started` line: subscribe from it to see
    /// everything this run has logged.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The event log from line `since`, and a receiver of every line written after that, with
    /// no gap between the two (the `nines run` console uses it).
    pub fn subscribe(
        &self,
        since: u64,
    ) -> io::Result<(Vec<LogLine>, broadcast::Receiver<LogLine>)> {
        self.log.subscribe(since)
    }

    /// Waits until the runtime stops by itself (its engine task ended). In normal operation it
    /// never does; `nines run` waits on this and on signals together.
    pub async fn wait(&self) {
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|s| *s).await;
    }

    /// Stops cleanly: closes the control socket, stops taking input, terminates every
    /// component through the agents, and removes the sockets. Returns once all that is done.
    pub async fn shutdown(self) {
        let _ = self.stop_control.send(true);
        let _ = self.control_task.await;
        let _ = std::fs::remove_file(&self.control_socket);
        let (done, done_rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown { done }).is_ok() {
            let _ = done_rx.await;
        }
        let _ = self.engine_task.await;
        if let Some(t) = self.leader_task {
            t.abort();
            let _ = t.await;
        }
        if let Ok(entries) = std::fs::read_dir(&self.agents_dir) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "sock") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// The engine's `Input::Resume` for what was adopted (nothing: a fresh start).
fn resume_of(adopted: &[nines_agent::Adopted]) -> Option<nines_engine::Input> {
    // The engine resumes from the components' own account, given when they registered again
    // (never from a record a crash may have left stale).
    (!adopted.is_empty()).then(|| {
        let held: Vec<_> = adopted.iter().map(|a| (a.comp, a.held.clone())).collect();
        nines_engine::resume_input(&held, Vec::new())
    })
}

fn remove_if_present(path: &Path) -> Result<(), RunError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(dir_err(path)(e)),
        _ => Ok(()),
    }
}

/// Binds the control socket owner-only. The state directory is 0700 as well, so there is no
/// window in which another user could connect.
fn bind_control(path: &Path) -> io::Result<UnixListener> {
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}
