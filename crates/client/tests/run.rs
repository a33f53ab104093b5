//! `Session::run`: the dispatch loop on the caller's thread, against a fake agent.
//!
//! Alone in its own test binary, and no test here may use `Session::start*`: one test checks
//! that the process has no `nines-dispatch` thread while `run` dispatches, which tests
//! running in parallel in the same process would otherwise spoil.

mod common;

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use common::{
    answer_write, csi_set, within, Call, Conn, FakeAgent, Scripted, COMPONENT, PATIENCE, RUN_THREAD,
};
use nines_client::{ClientError, Component, HaState, Session, RECONNECT_WINDOW};
use nines_proto::{ToAgent, ToComponent};

/// A [`Scripted`] component that also notes the thread each callback runs on, hands its
/// session out when registered, and runs a test's hook inside `healthcheck`.
struct Probe {
    scripted: Scripted,
    threads: Arc<Mutex<Vec<ThreadId>>>,
    session_out: Option<Sender<Session>>,
    on_healthcheck: Option<Box<dyn FnMut() + Send>>,
}

/// What a test keeps of a [`Probe`] it handed to `run`.
struct Seen {
    calls: Arc<Mutex<Vec<Call>>>,
    threads: Arc<Mutex<Vec<ThreadId>>>,
    session: Receiver<Session>,
}

impl Seen {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The session handle the component got in `registered`.
    fn session(&self) -> Session {
        self.session
            .recv_timeout(PATIENCE)
            .expect("registered() handed the session out")
    }
}

impl Probe {
    fn new() -> (Probe, Seen) {
        let (scripted, calls) = Scripted::new();
        let threads = Arc::default();
        let (tx, rx) = mpsc::channel();
        (
            Probe {
                scripted,
                threads: Arc::clone(&threads),
                session_out: Some(tx),
                on_healthcheck: None,
            },
            Seen {
                calls,
                threads,
                session: rx,
            },
        )
    }

    fn note_thread(&self) {
        self.threads.lock().unwrap().push(thread::current().id());
    }
}

impl Component for Probe {
    fn registered(&mut self, session: &Session) {
        self.note_thread();
        if let Some(tx) = self.session_out.take() {
            let _ = tx.send(session.clone());
        }
        self.scripted.registered(session)
    }

    fn csi_set(
        &mut self,
        si: &str,
        csi: &str,
        ha: HaState,
        attrs: &[(String, String)],
    ) -> Result<(), String> {
        self.note_thread();
        self.scripted.csi_set(si, csi, ha, attrs)
    }

    fn csi_remove(&mut self, si: &str, csi: &str) -> Result<(), String> {
        self.note_thread();
        self.scripted.csi_remove(si, csi)
    }

    fn healthcheck(&mut self) -> Result<(), String> {
        self.note_thread();
        if let Some(hook) = &mut self.on_healthcheck {
            hook();
        }
        self.scripted.healthcheck()
    }

    fn terminate(&mut self) {
        self.note_thread();
        self.scripted.terminate()
    }

    fn protection_group(&mut self, si: &str, members: &[(String, HaState)]) {
        self.note_thread();
        self.scripted.protection_group(si, members)
    }
}

fn response(invocation: u64, ok: bool) -> ToAgent {
    ToAgent::Response { invocation, ok }
}

/// A healthcheck round trip: proves the loop is dispatching (and how far it got).
fn healthcheck(conn: &mut Conn, invocation: u64) {
    conn.send(&ToComponent::Healthcheck { invocation });
    assert_eq!(conn.recv(), ToAgent::HealthcheckConfirm { invocation });
}

/// Terminate the session and expect `run` to return `Ok`.
fn terminate(conn: &mut Conn, run: thread::JoinHandle<Result<(), ClientError>>) {
    conn.send(&ToComponent::Terminate { invocation: 99 });
    assert_eq!(conn.recv(), response(99, true));
    let got = within(move || run.join().expect("run does not unwind"));
    assert!(got.is_ok(), "run after terminate: {got:?}");
}

#[test]
fn run_dispatches_every_callback_on_the_calling_thread() {
    let agent = FakeAgent::new();
    let (component, seen) = Probe::new();
    let (run, mut conn) = agent.run_reconnecting(component, RECONNECT_WINDOW);
    let caller = run.thread().id();
    assert_ne!(caller, thread::current().id());

    conn.send(&csi_set(1, HaState::Active, &[("port", "7100")]));
    assert_eq!(conn.recv(), response(1, true));
    healthcheck(&mut conn, 2);
    conn.send(&ToComponent::CsiRemove {
        invocation: 3,
        si: "app/si".into(),
        csi: "app/si/csi".into(),
    });
    assert_eq!(conn.recv(), response(3, true));
    conn.send(&ToComponent::ProtectionGroup {
        si: "app/si".into(),
        members: vec![],
    });
    terminate(&mut conn, run);

    assert_eq!(
        seen.calls(),
        vec![
            Call::Registered,
            Call::Set(
                "app/si".into(),
                "app/si/csi".into(),
                HaState::Active,
                vec![("port".into(), "7100".into())]
            ),
            Call::Healthcheck,
            Call::Remove("app/si".into(), "app/si/csi".into()),
            Call::Group("app/si".into(), vec![]),
            Call::Terminate,
        ]
    );
    let threads = seen.threads.lock().unwrap().clone();
    assert_eq!(threads.len(), 6);
    assert!(
        threads.iter().all(|t| *t == caller),
        "every callback ran on the thread that called run ({RUN_THREAD})"
    );
}

#[test]
fn run_returns_ok_only_after_terminate() {
    let agent = FakeAgent::new();
    let (component, seen) = Probe::new();
    let (run, mut conn) = agent.run_reconnecting(component, RECONNECT_WINDOW);
    healthcheck(&mut conn, 1);
    thread::sleep(Duration::from_millis(50));
    assert!(!run.is_finished(), "run keeps dispatching until the end");
    terminate(&mut conn, run);
    assert_eq!(seen.calls().last(), Some(&Call::Terminate));
    // The agent hanging up after terminate changes nothing for the handles either.
    drop(conn);
    let session = seen.session();
    assert!(within(move || session.wait()).is_ok());
}

#[test]
fn run_returns_closed_when_the_agent_goes_away_and_none_comes_back() {
    let agent = FakeAgent::new();
    let window = Duration::from_millis(300);
    let (component, seen) = Probe::new();
    let (run, mut conn) = agent.run_reconnecting(component, window);
    healthcheck(&mut conn, 1);
    let hung_up = Instant::now();
    drop(conn);
    drop(agent);
    let got = within(move || run.join().expect("run does not unwind"));
    assert!(matches!(got, Err(ClientError::Closed)), "{got:?}");
    assert!(
        hung_up.elapsed() >= window,
        "run waited for an agent to come back"
    );
    assert!(!seen.calls().contains(&Call::Terminate));
    assert!(matches!(
        seen.session()
            .report_error(nines_client::Recovery::ComponentRestart),
        Err(ClientError::Closed)
    ));
}

#[test]
fn without_a_reconnect_window_run_returns_closed_at_once() {
    let agent = FakeAgent::new();
    let (run, conn) = agent.run_reconnecting(Probe::new().0, Duration::ZERO);
    drop(conn);
    let got = within(move || run.join().expect("run does not unwind"));
    assert!(matches!(got, Err(ClientError::Closed)), "{got:?}");
}

#[test]
fn run_goes_on_dispatching_for_a_restarted_agent() {
    let agent = FakeAgent::new();
    let (component, seen) = Probe::new();
    let (run, mut conn) = agent.run_reconnecting(component, RECONNECT_WINDOW);
    let caller = run.thread().id();
    conn.send(&csi_set(1, HaState::Active, &[]));
    assert_eq!(conn.recv(), response(1, true));

    // The agent dies; a new one listens on the same socket and gets the callbacks answered.
    drop(conn);
    let (mut conn, held) = agent.accept_registration();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].ha, HaState::Active);
    assert!(!run.is_finished(), "run survives the agent's restart");
    healthcheck(&mut conn, 2);
    conn.send(&csi_set(3, HaState::Quiesced, &[]));
    assert_eq!(conn.recv(), response(3, true));
    terminate(&mut conn, run);
    assert_eq!(seen.calls().len(), 5);
    assert!(seen.threads.lock().unwrap().iter().all(|t| *t == caller));
}

#[test]
fn a_panicking_callback_ends_run_with_an_error_not_an_unwind() {
    let agent = FakeAgent::new();
    let (run, mut conn) = agent.run_reconnecting(Probe::new().0, RECONNECT_WINDOW);
    conn.send(&csi_set(7, HaState::Active, &[("panic", "boom")]));
    assert_eq!(conn.recv(), response(7, false));
    conn.expect_eof();
    let got = within(move || run.join().expect("the panic did not unwind out of run"));
    assert!(matches!(got, Err(ClientError::Closed)), "{got:?}");
}

/// Panics in `registered`, before any other callback.
struct PanicsWhenRegistered(Arc<Mutex<Vec<Call>>>);

impl Component for PanicsWhenRegistered {
    fn registered(&mut self, _session: &Session) {
        panic!("scripted panic in registered");
    }

    fn csi_set(
        &mut self,
        si: &str,
        csi: &str,
        ha: HaState,
        _: &[(String, String)],
    ) -> Result<(), String> {
        self.0
            .lock()
            .unwrap()
            .push(Call::Set(si.into(), csi.into(), ha, vec![]));
        Ok(())
    }

    fn csi_remove(&mut self, _si: &str, _csi: &str) -> Result<(), String> {
        Ok(())
    }
}

#[test]
fn a_panic_in_registered_ends_run_before_any_callback() {
    let agent = FakeAgent::new();
    let calls = Arc::default();
    let (run, mut conn) =
        agent.run_reconnecting(PanicsWhenRegistered(Arc::clone(&calls)), RECONNECT_WINDOW);
    // Sent right away: it must never reach the component.
    conn.send(&csi_set(1, HaState::Active, &[]));
    let got = within(move || run.join().expect("the panic did not unwind out of run"));
    assert!(matches!(got, Err(ClientError::Closed)), "{got:?}");
    conn.expect_eof();
    assert!(calls.lock().unwrap().is_empty());
}

/// A component whose `Drop` panics: in `run` it is dropped on the caller's thread.
struct PanicsWhenDropped;

impl Component for PanicsWhenDropped {
    fn csi_set(
        &mut self,
        _: &str,
        _: &str,
        _: HaState,
        _: &[(String, String)],
    ) -> Result<(), String> {
        Ok(())
    }

    fn csi_remove(&mut self, _si: &str, _csi: &str) -> Result<(), String> {
        Ok(())
    }
}

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        panic!("scripted panic in drop");
    }
}

#[test]
fn a_component_panicking_in_drop_does_not_unwind_out_of_run() {
    let agent = FakeAgent::new();
    let (run, mut conn) = agent.run_reconnecting(PanicsWhenDropped, RECONNECT_WINDOW);
    healthcheck(&mut conn, 1);
    // The session ended with terminate before the component was dropped: that is its outcome.
    terminate(&mut conn, run);
}

#[test]
fn a_refused_registration_is_returned_before_any_callback() {
    let agent = FakeAgent::new();
    let (component, seen) = Probe::new();
    let path = agent.path.clone();
    let run = thread::spawn(move || Session::run_with(&path, COMPONENT, component));
    let mut conn = agent.accept();
    assert!(matches!(conn.recv(), ToAgent::Register { .. }));
    conn.send(&ToComponent::Registered {
        ok: false,
        reason: Some("no such component on this node".into()),
    });
    match within(move || run.join().expect("run does not unwind")) {
        Err(ClientError::Refused(reason)) => assert_eq!(reason, "no such component on this node"),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(seen.calls().is_empty(), "no callback after a refusal");
}

#[test]
fn checkpoint_writes_from_another_thread_are_answered_while_a_callback_runs() {
    let agent = FakeAgent::new();
    let (mut component, seen) = Probe::new();
    // The healthcheck callback blocks the calling thread until the test lets it go.
    let (release, gate) = mpsc::channel::<()>();
    let (entered_tx, entered) = mpsc::channel::<()>();
    component.on_healthcheck = Some(Box::new(move || {
        let _ = entered_tx.send(());
        let _ = gate.recv_timeout(PATIENCE);
    }));
    let (run, mut conn) = agent.run_reconnecting(component, RECONNECT_WINDOW);
    conn.send(&csi_set(1, HaState::Active, &[]));
    assert_eq!(conn.recv(), response(1, true));
    let session = seen.session();

    conn.send(&ToComponent::Healthcheck { invocation: 2 });
    entered
        .recv_timeout(PATIENCE)
        .expect("the healthcheck callback started");
    // The calling thread is busy in the callback; a worker still writes (sync and async) and
    // reads back.
    let s = session.clone();
    let worker = thread::spawn(move || {
        s.checkpoint_write("app/si", "count", b"1", true)?;
        s.checkpoint_write("app/si", "count", b"2", false)?;
        s.checkpoint_flush()
    });
    assert!(answer_write(&mut conn, b"1", true), "the sync write");
    assert!(!answer_write(&mut conn, b"2", true), "the async write");
    match conn.recv() {
        ToAgent::CheckpointFlush { request } => conn.send(&ToComponent::CheckpointAck {
            request,
            ok: true,
            reason: None,
        }),
        other => panic!("expected a flush, got {other:?}"),
    }
    within(move || worker.join().expect("worker"))
        .expect("the writes were acknowledged while the callback ran");
    assert!(!run.is_finished());
    release.send(()).expect("the callback waits");
    assert_eq!(conn.recv(), ToAgent::HealthcheckConfirm { invocation: 2 });
    terminate(&mut conn, run);
}

#[test]
fn wait_on_a_clone_works_while_run_dispatches() {
    let agent = FakeAgent::new();
    let (component, seen) = Probe::new();
    let (run, mut conn) = agent.run_reconnecting(component, RECONNECT_WINDOW);
    let session = seen.session();
    let waiter = thread::spawn(move || session.wait());
    healthcheck(&mut conn, 1);
    thread::sleep(Duration::from_millis(50));
    assert!(!waiter.is_finished(), "wait blocks while the session lives");
    terminate(&mut conn, run);
    assert!(within(move || waiter.join().expect("waiter")).is_ok());
}

/// The names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|comm| comm.trim_end().to_owned())
        .collect()
}

#[test]
fn run_starts_no_dispatch_thread() {
    let agent = FakeAgent::new();
    let (mut component, _seen) = Probe::new();
    let names = Arc::new(Mutex::new(Vec::new()));
    let seen_names = Arc::clone(&names);
    // Looked at while the session is up and dispatching, from inside a callback.
    component.on_healthcheck = Some(Box::new(move || {
        *seen_names.lock().unwrap() = thread_names();
    }));
    let (run, mut conn) = agent.run_reconnecting(component, RECONNECT_WINDOW);
    healthcheck(&mut conn, 1);
    let names = names.lock().unwrap().clone();
    // The check itself can see threads: the one in `run` and the session's reader.
    assert!(names.iter().any(|n| n == RUN_THREAD), "{names:?}");
    assert!(names.iter().any(|n| n == "nines-reader"), "{names:?}");
    // No test in this binary uses `start`, so any dispatch thread would be run's.
    assert!(
        !names.iter().any(|n| n == "nines-dispatch"),
        "run dispatches on its caller's thread: {names:?}"
    );
    terminate(&mut conn, run);
}
