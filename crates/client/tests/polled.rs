//! `Session::open_polled`: no library thread; the test's own loop polls `Dispatcher::fd` and
//! calls `dispatch`, against a fake agent on a real Unix socket. (That the mode starts no
//! thread is checked alone in its own binary, `polled_threads.rs`.)

mod common;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    answer_write, csi_set, dispatch_until_ended, readable, within, Call, Conn, FakeAgent, Scripted,
    COMPONENT, OPEN_THREAD, PATIENCE, RUN_THREAD,
};
use nines_client::{ClientError, Component, Dispatch, Dispatcher, HaState, Session};
use nines_proto::{HeldCsi, ToAgent, ToComponent};

/// What a test keeps of a component [`recorder`] made.
struct Seen {
    calls: Arc<Mutex<Vec<Call>>>,
    threads: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn threads(&self) -> Vec<String> {
        self.threads.lock().unwrap().clone()
    }
}

/// A [`Scripted`] component that also notes the name of the thread each callback runs on.
fn recorder() -> (Scripted, Seen) {
    let (mut scripted, calls) = Scripted::new();
    let threads = Arc::new(Mutex::new(Vec::new()));
    let noted = Arc::clone(&threads);
    scripted.on_callback = Some(Box::new(move || {
        let name = thread::current().name().unwrap_or("unnamed").to_owned();
        noted.lock().unwrap().push(name);
    }));
    (scripted, Seen { calls, threads })
}

fn response(invocation: u64, ok: bool) -> ToAgent {
    ToAgent::Response { invocation, ok }
}

fn set(ha: HaState) -> Call {
    Call::Set("app/si".into(), "app/si/csi".into(), ha, vec![])
}

/// Wait (poll(2)) until the dispatcher has something to do, and do it.
fn dispatch_when_readable<C: Component>(dispatcher: &mut Dispatcher<C>) -> Dispatch {
    assert!(
        readable(dispatcher.fd(), PATIENCE),
        "the selection object became readable"
    );
    dispatcher.dispatch()
}

/// The selection object stays unreadable for a while: there is nothing to dispatch.
fn assert_idle<C: Component>(dispatcher: &Dispatcher<C>) {
    assert!(
        !readable(dispatcher.fd(), Duration::from_millis(30)),
        "nothing to dispatch"
    );
}

/// What opening a polled session gives.
type Opened = Result<(Session, Dispatcher<Scripted>), ClientError>;

/// Open a polled session on a thread of its own, accept the connection and read the
/// registration, leaving the answer to the test.
fn open_pending(agent: &FakeAgent, component: Scripted) -> (thread::JoinHandle<Opened>, Conn) {
    let path = agent.path.clone();
    let client = thread::spawn(move || Session::open_polled_with(&path, COMPONENT, component));
    let mut conn = agent.accept();
    assert!(matches!(conn.recv(), ToAgent::Register { .. }));
    (client, conn)
}

/// What the application's loop on [`RUN_THREAD`] gives back: how the session ended, and the
/// longest a single `dispatch` call took.
type Driven = (Result<(), ClientError>, Duration);

/// Run the application's loop for `dispatcher` on a thread named [`RUN_THREAD`]: poll its
/// selection object (the one it had from the start) and dispatch, until the session ends.
fn drive<C: Component>(mut dispatcher: Dispatcher<C>) -> thread::JoinHandle<Driven> {
    thread::Builder::new()
        .name(RUN_THREAD.into())
        .spawn(move || {
            let deadline = Instant::now() + 2 * PATIENCE;
            let mut longest = Duration::ZERO;
            while Instant::now() < deadline {
                if !readable(dispatcher.fd(), Duration::from_millis(50)) {
                    continue;
                }
                let started = Instant::now();
                let dispatched = dispatcher.dispatch();
                longest = longest.max(started.elapsed());
                if let Dispatch::Ended(outcome) = dispatched {
                    return (outcome, longest);
                }
            }
            panic!("the polled session did not end in time");
        })
        .expect("spawn the loop")
}

/// Terminate the session, expect the answer, and expect the loop to end with `Ok`.
fn terminate(conn: &mut Conn, driven: thread::JoinHandle<Driven>) -> Duration {
    conn.send(&ToComponent::Terminate { invocation: 99 });
    assert_eq!(conn.recv(), response(99, true));
    let (outcome, longest) = within(move || driven.join().expect("the loop does not unwind"));
    assert!(outcome.is_ok(), "after terminate: {outcome:?}");
    longest
}

#[test]
fn a_dispatcher_can_move_to_the_thread_that_runs_the_loop() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Dispatcher<Scripted>>();
}

#[test]
fn dispatch_runs_a_csi_set_on_the_calling_thread_once_the_fd_is_readable() {
    let agent = FakeAgent::new();
    let (component, seen) = recorder();
    let (_session, mut dispatcher, mut conn) =
        agent.open_polled(component, nines_client::RECONNECT_WINDOW);
    // `registered` ran on the thread that opened the session, before open returned.
    assert_eq!(seen.calls(), vec![Call::Registered]);
    assert_eq!(seen.threads(), vec![OPEN_THREAD.to_owned()]);
    assert_idle(&dispatcher);

    conn.send(&csi_set(1, HaState::Active, &[]));
    assert!(readable(dispatcher.fd(), PATIENCE));
    assert_eq!(
        seen.calls(),
        vec![Call::Registered],
        "no callback runs before dispatch"
    );
    assert!(matches!(dispatcher.dispatch(), Dispatch::Running));
    assert_eq!(seen.calls(), vec![Call::Registered, set(HaState::Active)]);
    let me = thread::current().name().map(str::to_owned);
    assert_eq!(seen.threads()[1..], [me.expect("test threads are named")]);
    assert_eq!(conn.recv(), response(1, true));
    assert_idle(&dispatcher);
}

#[test]
fn requests_sent_right_behind_registered_are_dispatched() {
    let agent = FakeAgent::new();
    let (component, seen) = recorder();
    let (client, mut conn) = open_pending(&agent, component);
    // One write: the CsiSet likely lands in the buffer the registration was read with.
    let mut bytes = nines_proto::encode(&ToComponent::Registered {
        ok: true,
        reason: None,
    });
    bytes.extend(nines_proto::encode(&csi_set(1, HaState::Active, &[])));
    conn.send_bytes(&bytes);
    let (_session, mut dispatcher) = client.join().unwrap().expect("registered");
    assert!(matches!(
        dispatch_when_readable(&mut dispatcher),
        Dispatch::Running
    ));
    assert_eq!(conn.recv(), response(1, true));
    assert_eq!(seen.calls(), vec![Call::Registered, set(HaState::Active)]);
}

#[test]
fn a_refused_registration_is_returned_before_any_callback() {
    let agent = FakeAgent::new();
    let (component, seen) = recorder();
    let (client, mut conn) = open_pending(&agent, component);
    conn.send(&ToComponent::Registered {
        ok: false,
        reason: Some("no such component on this node".into()),
    });
    match client.join().unwrap() {
        Err(ClientError::Refused(reason)) => assert_eq!(reason, "no such component on this node"),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(seen.calls().is_empty(), "no callback after a refusal");
}

#[test]
fn a_panic_in_registered_fails_open() {
    let agent = FakeAgent::new();
    let (mut component, calls) = Scripted::new();
    // `registered` is the first callback.
    component.on_callback = Some(Box::new(|| panic!("scripted panic in a callback")));
    let (client, mut conn) = open_pending(&agent, component);
    conn.send(&ToComponent::Registered {
        ok: true,
        reason: None,
    });
    let got = client
        .join()
        .expect("the panic did not unwind out of open")
        .map(|_| ());
    assert!(matches!(got, Err(ClientError::Closed)), "{got:?}");
    conn.expect_eof();
    assert!(calls.lock().unwrap().is_empty());
}

#[test]
fn a_sync_write_on_the_dispatching_thread_queues_the_callbacks_it_reads() {
    let agent = FakeAgent::new();
    let (component, seen) = recorder();
    let (session, mut dispatcher, mut conn) =
        agent.open_polled(component, nines_client::RECONNECT_WINDOW);
    // The agent sends a CsiSet before it acknowledges the write.
    let agent_side = thread::spawn(move || {
        let request = match conn.recv() {
            ToAgent::CheckpointWrite { request, sync, .. } => {
                assert!(sync);
                request
            }
            other => panic!("expected the write, got {other:?}"),
        };
        conn.send(&csi_set(1, HaState::Standby, &[]));
        conn.send(&ToComponent::CheckpointAck {
            request,
            ok: true,
            reason: None,
        });
        assert_eq!(conn.recv(), response(1, true));
        conn
    });
    // This thread reads the agent's answer itself: nobody else does.
    session
        .checkpoint_write("app/si", "count", b"1", true)
        .expect("acknowledged");
    assert_eq!(
        seen.calls(),
        vec![Call::Registered],
        "the CsiSet read by the write is queued, not run inside it"
    );
    assert!(
        readable(dispatcher.fd(), Duration::ZERO),
        "the queued callback makes the selection object readable"
    );
    assert!(matches!(dispatcher.dispatch(), Dispatch::Running));
    assert_eq!(seen.calls(), vec![Call::Registered, set(HaState::Standby)]);
    let _conn = within(move || agent_side.join().expect("the agent got its answer"));
    assert_idle(&dispatcher);
}

#[test]
fn sync_checkpoint_calls_inside_a_callback_do_not_deadlock() {
    let agent = FakeAgent::new();
    let (mut component, seen) = recorder();
    let results = Arc::new(Mutex::new(Vec::new()));
    let got = Arc::clone(&results);
    component.on_active = Some(Box::new(move |session| {
        let read = session.checkpoint_read("app/si").map_err(|e| e.to_string());
        let write = session
            .checkpoint_write("app/si", "count", b"8", true)
            .map_err(|e| e.to_string());
        got.lock().unwrap().push((read, write));
    }));
    let (_session, mut dispatcher, mut conn) =
        agent.open_polled(component, nines_client::RECONNECT_WINDOW);
    let agent_side = thread::spawn(move || {
        conn.send(&csi_set(1, HaState::Active, &[]));
        match conn.recv() {
            ToAgent::CheckpointRead { request, .. } => conn.send(&ToComponent::CheckpointData {
                request,
                sections: vec![("count".into(), b"7".to_vec())],
            }),
            other => panic!("expected the read, got {other:?}"),
        }
        assert!(answer_write(&mut conn, b"8", true));
        assert_eq!(conn.recv(), response(1, true));
        conn
    });
    assert!(matches!(
        dispatch_when_readable(&mut dispatcher),
        Dispatch::Running
    ));
    let mut conn = within(move || agent_side.join().expect("the agent side"));
    assert_eq!(
        results.lock().unwrap().clone(),
        vec![(Ok(vec![("count".to_owned(), b"7".to_vec())]), Ok(()))]
    );
    assert_eq!(seen.calls(), vec![Call::Registered, set(HaState::Active)]);
    conn.send(&ToComponent::Terminate { invocation: 2 });
    assert!(dispatch_until_ended(&mut dispatcher).is_ok());
}

#[test]
fn terminate_ends_dispatch_with_ok_and_wait_on_a_clone_returns_ok() {
    let agent = FakeAgent::new();
    let (component, seen) = recorder();
    let (session, mut dispatcher, mut conn) =
        agent.open_polled(component, nines_client::RECONNECT_WINDOW);
    let waiter = {
        let session = session.clone();
        thread::spawn(move || session.wait())
    };
    conn.send(&ToComponent::Healthcheck { invocation: 1 });
    assert!(matches!(
        dispatch_when_readable(&mut dispatcher),
        Dispatch::Running
    ));
    assert_eq!(conn.recv(), ToAgent::HealthcheckConfirm { invocation: 1 });
    assert!(!waiter.is_finished(), "wait blocks while the session lives");

    conn.send(&ToComponent::Terminate { invocation: 2 });
    assert!(matches!(
        dispatch_when_readable(&mut dispatcher),
        Dispatch::Ended(Ok(()))
    ));
    assert_eq!(conn.recv(), response(2, true));
    assert_eq!(seen.calls().last(), Some(&Call::Terminate));
    assert!(within(move || waiter.join().expect("waiter")).is_ok());
    // Ended stays ended, also once the agent hangs up.
    drop(conn);
    assert!(matches!(dispatcher.dispatch(), Dispatch::Ended(Ok(()))));
    assert!(session.wait().is_ok());
}

#[test]
fn dropping_the_dispatcher_ends_the_session() {
    let agent = FakeAgent::new();
    let (component, _seen) = recorder();
    let (session, dispatcher, mut conn) =
        agent.open_polled(component, nines_client::RECONNECT_WINDOW);
    drop(dispatcher);
    // Nobody dispatches any more: the agent sees the session end, and so does every handle.
    conn.expect_eof();
    assert!(matches!(
        within(move || session.wait()),
        Err(nines_client::ClientError::Closed)
    ));
}

#[test]
fn without_a_reconnect_window_losing_the_agent_ends_dispatch_with_closed() {
    let agent = FakeAgent::new();
    let (session, mut dispatcher, conn) = agent.open_polled(recorder().0, Duration::ZERO);
    drop(conn);
    match dispatch_when_readable(&mut dispatcher) {
        Dispatch::Ended(Err(ClientError::Closed)) => {}
        other => panic!("expected Ended(Closed), got {other:?}"),
    }
    assert!(matches!(
        dispatcher.dispatch(),
        Dispatch::Ended(Err(ClientError::Closed))
    ));
    assert!(matches!(session.wait(), Err(ClientError::Closed)));
}

#[test]
fn when_no_agent_comes_back_dispatch_ends_with_closed_after_the_window() {
    let agent = FakeAgent::new();
    let window = Duration::from_millis(300);
    let (_session, mut dispatcher, conn) = agent.open_polled(recorder().0, window);
    let hung_up = Instant::now();
    drop(conn);
    drop(agent);
    let outcome = dispatch_until_ended(&mut dispatcher);
    assert!(matches!(outcome, Err(ClientError::Closed)), "{outcome:?}");
    assert!(hung_up.elapsed() >= window, "it waited for an agent");
}

#[test]
fn dispatch_goes_on_through_the_same_fd_with_a_restarted_agent() {
    let agent = FakeAgent::new();
    let (component, seen) = recorder();
    let (session, dispatcher, mut conn) =
        agent.open_polled(component, nines_client::RECONNECT_WINDOW);
    let driven = drive(dispatcher);
    conn.send(&csi_set(1, HaState::Active, &[]));
    assert_eq!(conn.recv(), response(1, true));
    // A worker thread writes while the loop dispatches.
    let s = session.clone();
    let write = thread::spawn(move || s.checkpoint_write("app/si", "count", b"42", true));
    assert!(answer_write(&mut conn, b"42", true));
    write.join().unwrap().expect("acknowledged");

    // The agent dies, and a new one takes a while to listen: the loop must not wait for it.
    drop(conn);
    thread::sleep(Duration::from_millis(300));
    let (mut conn, held) = agent.accept_registration();
    assert_eq!(
        held,
        vec![HeldCsi {
            si: "app/si".into(),
            csi: "app/si/csi".into(),
            ha: HaState::Active,
        }]
    );
    // The checkpoint comes back, then callbacks flow through the loop's selection object.
    assert!(!answer_write(&mut conn, b"42", true), "the replay");
    conn.send(&ToComponent::Healthcheck { invocation: 2 });
    assert_eq!(conn.recv(), ToAgent::HealthcheckConfirm { invocation: 2 });
    conn.send(&csi_set(3, HaState::Quiesced, &[]));
    assert_eq!(conn.recv(), response(3, true));
    let longest = terminate(&mut conn, driven);
    assert!(
        longest < Duration::from_millis(150),
        "no dispatch waited for the agent to come back: {longest:?}"
    );
    assert_eq!(
        seen.calls(),
        vec![
            Call::Registered,
            set(HaState::Active),
            Call::Healthcheck,
            set(HaState::Quiesced),
            Call::Terminate
        ]
    );
    assert!(seen.threads()[1..].iter().all(|t| t == RUN_THREAD));
}

#[test]
fn a_sync_write_on_the_dispatching_thread_goes_to_the_restarted_agent() {
    let agent = FakeAgent::new();
    let (session, _dispatcher, conn) =
        agent.open_polled(recorder().0, nines_client::RECONNECT_WINDOW);
    // The agent takes the write in and dies: only the writing thread reads, so it must notice
    // on its own, and the session registers again meanwhile.
    let agent_side = thread::spawn(move || {
        let mut conn = conn;
        assert!(matches!(conn.recv(), ToAgent::CheckpointWrite { .. }));
        drop(conn);
        let (mut conn, _) = agent.accept_registration();
        assert!(answer_write(&mut conn, b"1", true), "the write sent again");
        (agent, conn)
    });
    session
        .checkpoint_write("app/si", "count", b"1", true)
        .expect("acknowledged by the restarted agent");
    within(move || agent_side.join().expect("the agent side"));
}

#[test]
fn a_sync_write_on_the_dispatching_thread_after_the_agent_left_goes_to_the_restarted_agent() {
    let agent = FakeAgent::new();
    let (session, _dispatcher, conn) =
        agent.open_polled(recorder().0, nines_client::RECONNECT_WINDOW);
    // The agent is gone before the write, and nothing read the socket since: the write fails,
    // and the writing thread must notice the end itself (no reader thread will).
    drop(conn);
    thread::sleep(Duration::from_millis(20));
    let agent_side = thread::spawn(move || {
        let (mut conn, _) = agent.accept_registration();
        assert!(answer_write(&mut conn, b"1", true));
        (agent, conn)
    });
    let started = Instant::now();
    session
        .checkpoint_write("app/si", "count", b"1", true)
        .expect("acknowledged by the restarted agent");
    assert!(started.elapsed() < PATIENCE);
    within(move || agent_side.join().expect("the agent side"));
}

#[test]
fn sync_calls_from_other_threads_get_their_replies_while_the_loop_dispatches() {
    const WORKERS: usize = 3;
    const WRITES: usize = 20;
    let agent = FakeAgent::new();
    let (component, seen) = recorder();
    let (session, dispatcher, mut conn) =
        agent.open_polled(component, nines_client::RECONNECT_WINDOW);
    let driven = drive(dispatcher);
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let s = session.clone();
            thread::spawn(move || {
                for i in 0..WRITES {
                    s.checkpoint_write("app/si", &format!("w{w}"), &[i as u8], true)?;
                }
                s.checkpoint_read("app/si")
            })
        })
        .collect();
    // Each answer is preceded by a callback, so the loop dispatches while workers wait.
    let (mut writes, mut reads, mut confirms, mut invocation) = (0, 0, 0, 0);
    while writes < WORKERS * WRITES || reads < WORKERS || confirms < invocation {
        match conn.recv() {
            ToAgent::CheckpointWrite { request, .. } => {
                invocation += 1;
                conn.send(&ToComponent::Healthcheck { invocation });
                conn.send(&ToComponent::CheckpointAck {
                    request,
                    ok: true,
                    reason: None,
                });
                writes += 1;
            }
            ToAgent::CheckpointRead { request, .. } => {
                conn.send(&ToComponent::CheckpointData {
                    request,
                    sections: vec![("r".into(), vec![1])],
                });
                reads += 1;
            }
            ToAgent::HealthcheckConfirm { .. } => confirms += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    for worker in workers {
        let got = within(move || worker.join().expect("worker"));
        assert_eq!(
            got.expect("every call answered"),
            vec![("r".into(), vec![1])]
        );
    }
    terminate(&mut conn, driven);
    let healthchecks = seen
        .calls()
        .iter()
        .filter(|c| **c == Call::Healthcheck)
        .count();
    assert_eq!(healthchecks, WORKERS * WRITES);
    assert!(seen.threads()[1..].iter().all(|t| t == RUN_THREAD));
}

#[test]
fn a_sync_call_from_another_thread_is_answered_while_nobody_dispatches() {
    let agent = FakeAgent::new();
    let (session, dispatcher, mut conn) =
        agent.open_polled(recorder().0, nines_client::RECONNECT_WINDOW);
    let s = session.clone();
    let write = thread::spawn(move || s.checkpoint_write("app/si", "count", b"5", true));
    assert!(answer_write(&mut conn, b"5", true));
    within(move || write.join().expect("writer")).expect("acknowledged");
    drop(dispatcher);
}

#[test]
fn a_panicking_callback_ends_the_session_without_unwinding_into_the_caller() {
    let agent = FakeAgent::new();
    let (session, mut dispatcher, mut conn) =
        agent.open_polled(recorder().0, nines_client::RECONNECT_WINDOW);
    conn.send(&csi_set(7, HaState::Active, &[("panic", "boom")]));
    match dispatch_when_readable(&mut dispatcher) {
        Dispatch::Ended(Err(ClientError::Closed)) => {}
        other => panic!("expected Ended(Closed), got {other:?}"),
    }
    assert_eq!(conn.recv(), response(7, false));
    conn.expect_eof();
    assert!(matches!(session.wait(), Err(ClientError::Closed)));
}

#[test]
fn a_bad_frame_ends_the_session() {
    let agent = FakeAgent::new();
    let (_session, mut dispatcher, mut conn) =
        agent.open_polled(recorder().0, nines_client::RECONNECT_WINDOW);
    // A frame of another protocol version.
    conn.send_bytes(&[0, 0, 0, 2, 0xEE, 0]);
    match dispatch_when_readable(&mut dispatcher) {
        Dispatch::Ended(Err(ClientError::Closed)) => {}
        other => panic!("expected Ended(Closed), got {other:?}"),
    }
    conn.expect_eof();
}
