//! `Session::open_polled` starts no thread. Alone in its own test binary, in one test: the
//! check counts the threads of the whole process, which other tests would spoil.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use common::{readable, Call, FakeAgent, Scripted, COMPONENT, PATIENCE};
use nines_client::{Dispatch, HaState, Session};
use nines_proto::{ToAgent, ToComponent};

/// The names of this process's threads.
fn threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|comm| comm.trim_end().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_polled_mode_starts_no_thread() {
    let agent = FakeAgent::new();
    let path = agent.path.clone();
    // The agent's side runs on one thread for the whole test, started before the first look,
    // so that the count only changes if the session starts a thread.
    let (started_tx, started) = mpsc::channel();
    let (registered_tx, registered) = mpsc::channel();
    // ...and lives until the test has had its last look (its end would change the count).
    let (looked_tx, looked) = mpsc::channel::<()>();
    let agent_side = thread::Builder::new()
        .name("fake-agent".into())
        .spawn(move || {
            // From here on the thread has its name (a new thread names itself).
            started_tx.send(()).expect("the test waits");
            let mut conn = agent.accept_first_registration();
            registered_tx.send(()).expect("the test waits");
            conn.send(&common::csi_set(1, HaState::Active, &[]));
            assert_eq!(
                conn.recv(),
                ToAgent::Response {
                    invocation: 1,
                    ok: true
                }
            );
            conn.send(&ToComponent::Healthcheck { invocation: 2 });
            assert_eq!(conn.recv(), ToAgent::HealthcheckConfirm { invocation: 2 });
            conn.send(&ToComponent::Terminate { invocation: 3 });
            assert_eq!(
                conn.recv(),
                ToAgent::Response {
                    invocation: 3,
                    ok: true
                }
            );
            let _ = looked.recv_timeout(PATIENCE);
        })
        .expect("spawn the agent");
    started.recv_timeout(PATIENCE).expect("the agent started");
    let before = threads();

    // Looks at the threads inside every callback too.
    let (mut component, calls) = Scripted::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let looks = Arc::clone(&seen);
    component.on_callback = Some(Box::new(move || looks.lock().unwrap().push(threads())));
    let (session, mut dispatcher) =
        Session::open_polled_with(&path, COMPONENT, component).expect("registered");
    registered
        .recv_timeout(PATIENCE)
        .expect("the agent accepted the registration");
    assert_eq!(threads(), before, "open started no thread");

    let mut after_each_dispatch = Vec::new();
    let outcome = loop {
        assert!(readable(dispatcher.fd(), PATIENCE), "callbacks arrive");
        let dispatched = dispatcher.dispatch();
        after_each_dispatch.push(threads());
        if let Dispatch::Ended(outcome) = dispatched {
            break outcome;
        }
    };
    assert!(outcome.is_ok(), "{outcome:?}");
    assert!(session.wait().is_ok());
    let _ = looked_tx.send(());
    agent_side.join().expect("the agent side");

    assert_eq!(
        calls.lock().unwrap().clone(),
        vec![
            Call::Registered,
            Call::Set(
                "app/si".into(),
                "app/si/csi".into(),
                HaState::Active,
                vec![]
            ),
            Call::Healthcheck,
            Call::Terminate
        ]
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "looked inside every callback");
    for names in seen.iter().chain(&after_each_dispatch) {
        assert_eq!(*names, before, "no thread while dispatching");
    }
    // Sanity: the look can see threads at all (this one, the agent's).
    assert!(before.iter().any(|n| n == "fake-agent"), "{before:?}");
}
