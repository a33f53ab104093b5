//! `Session::start`, `Session::run` and `Session::open_polled` read their configuration from
//! the environment the agent sets. Alone in its own test binary, and in one test, because it
//! changes the process environment.

mod common;

use common::{FakeAgent, Scripted, COMPONENT};
use nines_client::{ClientError, Session};
use nines_proto::{ToAgent, ToComponent, ENV_AGENT_SOCKET, ENV_COMPONENT};

#[test]
fn start_and_run_read_socket_and_component_from_the_environment() {
    std::env::remove_var(ENV_AGENT_SOCKET);
    std::env::remove_var(ENV_COMPONENT);
    match Session::start(Scripted::default()) {
        Err(e @ ClientError::NotConfigured(var)) => {
            assert_eq!(var, "NINES_AGENT_SOCKET");
            assert!(e.to_string().contains("NINES_AGENT_SOCKET"));
        }
        other => panic!("expected NotConfigured, got {other:?}"),
    }
    assert!(matches!(
        Session::run(Scripted::default()),
        Err(ClientError::NotConfigured("NINES_AGENT_SOCKET"))
    ));

    let agent = FakeAgent::new();
    std::env::set_var(ENV_AGENT_SOCKET, &agent.path);
    match Session::start(Scripted::default()) {
        Err(ClientError::NotConfigured(var)) => assert_eq!(var, "NINES_COMPONENT"),
        other => panic!("expected NotConfigured, got {other:?}"),
    }
    // Empty counts as missing: an agent that sets it empty is misconfigured.
    std::env::set_var(ENV_COMPONENT, "");
    assert!(matches!(
        Session::start(Scripted::default()),
        Err(ClientError::NotConfigured("NINES_COMPONENT"))
    ));
    assert!(matches!(
        Session::run(Scripted::default()),
        Err(ClientError::NotConfigured("NINES_COMPONENT"))
    ));
    assert!(matches!(
        Session::open_polled(Scripted::default()),
        Err(ClientError::NotConfigured("NINES_COMPONENT"))
    ));

    std::env::set_var(ENV_COMPONENT, COMPONENT);
    let client = std::thread::spawn(|| Session::start(Scripted::default()));
    // Checks that it registers as COMPONENT.
    let _conn = agent.accept_first_registration();
    assert!(client.join().unwrap().is_ok());

    // `run` registers the same way, then dispatches until the agent lets it go.
    let client = std::thread::spawn(|| Session::run(Scripted::default()));
    let mut conn = agent.accept_first_registration();
    conn.send(&ToComponent::Terminate { invocation: 1 });
    assert_eq!(
        conn.recv(),
        ToAgent::Response {
            invocation: 1,
            ok: true
        }
    );
    assert!(common::within(move || client.join().unwrap()).is_ok());

    // So does `open_polled`.
    let client = std::thread::spawn(|| Session::open_polled(Scripted::default()).map(|_| ()));
    let _conn = agent.accept_first_registration();
    assert!(client.join().unwrap().is_ok());
}
