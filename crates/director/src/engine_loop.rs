//! The engine task: the only owner of the `Engine` and the only caller of `handle`.
//!
//! It takes messages from one queue (agent reports, admin and status requests, fence
//! progress), fires the engine's timers, and carries out every action the engine returns:
//! component actions go to the agent of the component's node, `StartTimer` to the timer set,
//! `Fence` to [`crate::fence`], `AdminReply` back to the waiting requester, and `Record` to the
//! event log (after everything else, so logging never delays a failover).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use nines_agent::{AgentHandle, Clock};
use nines_engine::{ActionKind, AdminError, AdminOp, Engine, Event, Input, Instant};
use nines_model::{EntityRef, Model};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::admin_store::AdminStore;
use crate::agents::{comp_of, Agents};
use crate::event_json::{self, Detection, Fields};
use crate::event_log::{EventLog, LineFn};
use crate::msg::Msg;
use crate::names;
use crate::status::Status;
use crate::timers::Timers;

/// An admin request waiting for its reply.
struct Pending {
    op: AdminOp,
    target: EntityRef,
    reply: Option<oneshot::Sender<Result<(), AdminError>>>,
}

/// The engine task's state.
pub(crate) struct EngineLoop {
    pub engine: Engine,
    pub model: Arc<Model>,
    pub clock: Clock,
    pub agents: Agents,
    pub timers: Timers,
    pub log: Arc<EventLog>,
    pub admin_store: AdminStore,
    pub rx: mpsc::UnboundedReceiver<Msg>,
    pub run: u64,
    pub next_request: u64,
    pending: HashMap<u64, Pending>,
    pub fence_tasks: Vec<JoinHandle<()>>,
    /// A cluster director's task accepting node links (stopped with the loop).
    pub accept_task: Option<JoinHandle<()>>,
    /// Checkpoint writes relayed between nodes (cluster directors).
    pub replication: crate::replication::Replication,
    /// A cluster director's leadership (etcd): once lost it must not fence anyone.
    pub deposed: Option<tokio::sync::watch::Receiver<Option<nines_store::LostReason>>>,
}

impl EngineLoop {
    /// Assembles the loop; nothing is fed to the engine yet (see [`EngineLoop::boot`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: Arc<Model>,
        clock: Clock,
        agents: Agents,
        log: Arc<EventLog>,
        admin_store: AdminStore,
        rx: mpsc::UnboundedReceiver<Msg>,
        run: u64,
    ) -> EngineLoop {
        EngineLoop {
            engine: Engine::new(model.clone()),
            model,
            clock,
            agents,
            timers: Timers::default(),
            log,
            admin_store,
            rx,
            run,
            next_request: 1,
            pending: HashMap::new(),
            fence_tasks: Vec::new(),
            accept_task: None,
            replication: Default::default(),
            deposed: None,
        }
    }

    /// Logs one `adopted` line per component that survived a restart of the director.
    pub fn log_adopted(&self, adopted: &[nines_agent::Adopted]) {
        for a in adopted {
            self.log_director(
                "adopted",
                vec![
                    ("comp", json!(self.model.comps[a.comp.index()].path)),
                    ("pid", json!(a.pid)),
                    ("held", json!(a.held.len())),
                ],
            );
        }
    }

    /// Re-applies the saved admin states, resumes from what was adopted (`resume`, an
    /// `Input::Resume`), then starts the engine (`Input::Start`).
    pub fn boot(&mut self, resume: Option<Input>) {
        let saved: Vec<(String, String)> = self
            .admin_store
            .entries()
            .map(|(e, s)| (e.to_string(), s.to_string()))
            .collect();
        for (path, state) in saved {
            let skip = |this: &mut Self, reason: &str| {
                this.log_director(
                    "restore-skipped",
                    vec![("entity", json!(path)), ("reason", json!(reason))],
                );
            };
            let Some(target) = names::parse_admin(&state) else {
                skip(self, &format!("unknown admin state {state}"));
                continue;
            };
            let Some(entity) = self.model.find(&path) else {
                skip(self, "no such entity in this config");
                continue;
            };
            let Some(current) = self.engine.admin_state(entity) else {
                skip(self, "this entity has no admin state");
                continue;
            };
            let ops = nines_engine::restore_ops(current, target);
            if ops.is_empty() {
                continue;
            }
            let mut error = None;
            for op in ops {
                if let Err(e) = self.admin(op, entity, None) {
                    error = Some(e.to_string());
                    break;
                }
            }
            let mut fields: Fields = vec![("entity", json!(path)), ("admin", json!(state))];
            if let Some(e) = error {
                fields.push(("error", json!(e)));
            }
            self.log_director("admin-restored", fields);
        }
        if let Some(resume) = resume {
            let now = self.clock.now();
            self.feed(now, resume);
        }
        // A cluster node that did not join is lost before anything starts, so that no SI it
        // could still be serving is given to another node before it is fenced.
        self.lose_absent();
        let now = self.clock.now();
        self.feed(now, Input::Start);
    }

    /// Runs until a `Shutdown` message (or until every sender is gone).
    pub async fn run(mut self) {
        loop {
            let deadline = self.timers.next().map(|at| {
                let now = self.clock.now();
                tokio::time::Instant::now() + at.saturating_since(now)
            });
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(Msg::Shutdown { done }) => {
                        self.stop().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(msg) => self.on_msg(msg),
                    None => {
                        self.stop().await;
                        return;
                    }
                },
                () = sleep_until(deadline) => self.fire_timers(),
            }
        }
    }

    pub(crate) fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Report { node, gen, report } => {
                let slot = &self.agents.slots[node.index()];
                if slot.gen != gen || (self.agents.cluster.is_some() && slot.remote.is_none()) {
                    return; // from an agent replaced by a fence: everything it ran is dead
                }
                self.feed(report.at, report.input);
            }
            Msg::Admin { op, target, reply } => {
                // The reply is sent from `feed` when the engine's AdminReply comes out.
                let _ = self.admin(op, target, Some(reply));
            }
            Msg::Status { reply } => {
                let s = Status::build(
                    &self.engine,
                    self.run,
                    self.clock.now(),
                    &self.agents.pids(),
                );
                let _ = reply.send(s);
            }
            Msg::Fenced { node } => self.on_fenced(node),
            Msg::Join { node, addr, reply } => self.on_join(node, addr, reply),
            Msg::Joined {
                node,
                gen,
                remote,
                adopted,
            } => self.on_joined(node, gen, remote, &adopted),
            Msg::Lost {
                node,
                gen,
                at,
                reason,
            } => self.on_lost(node, gen, at, reason),
            Msg::FenceResult { node, result } => self.on_fence_result(node, result),
            Msg::Pids { node, gen, pids } => self.on_pids(node, gen, pids),
            Msg::Checkpoint {
                node,
                gen,
                seq,
                write,
                wait,
            } => self.on_checkpoint(node, gen, seq, write, wait),
            Msg::ReplicaAck {
                node,
                gen,
                origin,
                seq,
            } => self.on_replica_ack(node, gen, origin, seq),
            Msg::Rebooted { node, gen, result } => self.on_rebooted(node, gen, result),
            // `run` handles it before calling here.
            Msg::Shutdown { done } => drop(done),
        }
    }

    /// Feeds an admin request; returns the engine's answer (also sent on `reply`).
    fn admin(
        &mut self,
        op: AdminOp,
        target: EntityRef,
        reply: Option<oneshot::Sender<Result<(), AdminError>>>,
    ) -> Result<(), AdminError> {
        let request = self.next_request;
        self.next_request += 1;
        self.pending.insert(request, Pending { op, target, reply });
        let now = self.clock.now();
        self.feed(
            now,
            Input::Admin {
                request,
                op,
                target,
            },
        )
        .unwrap_or(Ok(()))
    }

    fn fire_timers(&mut self) {
        // tokio sleeps with millisecond granularity; a timer due within the next millisecond
        // is fired now rather than after another wake-up.
        let now = self.clock.now();
        for (at, timer) in self.timers.take_due(now + Duration::from_millis(1)) {
            self.feed(now.max(at), Input::TimerFired { timer });
        }
    }

    /// Hands one input to the engine and carries out its actions. Returns the result of an
    /// admin request if the input was one.
    pub fn feed(&mut self, now: Instant, input: Input) -> Option<Result<(), AdminError>> {
        let actions = self.engine.handle(now, input);
        let decided = self.clock.now();
        let detection = Detection {
            failed: now,
            detected: decided,
        };
        let mut admin_result = None;
        let mut records = Vec::new();
        for action in actions {
            match action.kind {
                ActionKind::Record(event) => records.push((action.at, event)),
                ActionKind::StartTimer { timer, at } => self.timers.start(timer, at),
                ActionKind::Fence { node } if self.agents.cluster.is_some() => {
                    self.cluster_fence(node)
                }
                ActionKind::Fence { node } => self.fence(node),
                ActionKind::AdminReply { request, result } => {
                    self.on_admin_reply(action.at, request, &result);
                    admin_result = Some(result);
                }
                kind => {
                    if let Some(comp) = comp_of(&kind) {
                        let node = crate::agents::node_for(&self.engine, comp, &kind);
                        if !self.agents.execute(node, &kind) {
                            tracing::debug!("dropped {kind:?}: the node's agent is restarting");
                        }
                    } else {
                        tracing::warn!("the director does not carry out {kind:?}");
                    }
                }
            }
        }
        if !records.is_empty() {
            let lines: Vec<_> = records
                .into_iter()
                .map(|(at, event)| self.record(at, event, detection))
                .collect();
            self.log.append_lazy(lines);
        }
        admin_result
    }

    fn on_admin_reply(&mut self, at: Instant, request: u64, result: &Result<(), AdminError>) {
        let pending = self.pending.remove(&request);
        let mut fields: Fields = vec![("request", json!(request))];
        if let Some(p) = &pending {
            fields.push(("op", json!(p.op.name())));
            fields.push(("target", json!(self.model.path(p.target))));
        }
        match result {
            Ok(()) => fields.push(("ok", json!(true))),
            Err(e) => {
                fields.push(("ok", json!(false)));
                fields.push(("error", json!(e.to_string())));
            }
        }
        self.log.append(at, "admin-reply", &fields);
        if let Some(reply) = pending.and_then(|p| p.reply) {
            let _ = reply.send(result.clone());
        }
    }

    /// The log line of an engine event, built later by the log's writer (see
    /// [`crate::event_log`]); persists admin-state changes now, on the way.
    fn record(&mut self, at: Instant, event: Event, detection: Detection) -> (Instant, LineFn) {
        if let Event::Admin { entity, admin } = &event {
            let path = self.model.path(*entity);
            self.admin_store.set(&path, *admin);
        }
        let model = Arc::clone(&self.model);
        let line: LineFn = Box::new(move || {
            let (name, fields) = event_json::event_fields(&model, &event, detection);
            (name.into(), fields)
        });
        (at, line)
    }

    /// Logs a director milestone (not an engine event) at the current instant.
    pub fn log_director(&self, event: &str, fields: Fields) {
        self.log.append(self.clock.now(), event, &fields);
    }

    /// Stops taking input and terminates every component through the agents.
    async fn stop(&mut self) {
        self.log_director("run-stopping", Vec::new());
        // A fence in flight may be about to start a new agent: let it finish, then stop it too.
        for t in std::mem::take(&mut self.fence_tasks) {
            let _ = t.await;
        }
        let mut extra: Vec<AgentHandle> = Vec::new();
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Rebooted { result: Ok(h), .. } => extra.push(h),
                Msg::Shutdown { done } => {
                    let _ = done.send(());
                }
                _ => {}
            }
        }
        self.rx.close();
        if let Some(t) = self.accept_task.take() {
            t.abort();
        }
        self.agents.shutdown_all(extra).await;
        self.admin_store.close().await;
        self.log_director("run-stopped", Vec::new());
        self.log.flush();
    }
}

/// Sleeps until `deadline`, or forever if there is none.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Fields for `run-started`.
pub(crate) fn run_started_fields(model: &Model, run: u64, state_dir: &std::path::Path) -> Fields {
    let _ = run; // the common `run` field of every line already says it
    vec![
        ("cluster", json!(model.cluster)),
        ("nodes", json!(model.nodes.len())),
        ("state_dir", json!(state_dir.display().to_string())),
        ("pid", json!(std::process::id())),
        ("version", Value::from(env!("CARGO_PKG_VERSION"))),
    ]
}
