//! The client library against a fake agent on a real Unix socket.

mod common;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{answer_write, csi_set, within, Call, Conn, FakeAgent, Scripted, PATIENCE};
use nines_client::{ClientError, HaState, Recovery, Session};
use nines_proto::{HeldCsi, ToAgent, ToComponent, MAX_FRAME};

fn calls(c: &Arc<Mutex<Vec<Call>>>) -> Vec<Call> {
    c.lock().unwrap().clone()
}

#[test]
fn session_handle_is_send_sync_and_clone() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<Session>();
}

#[test]
fn registers_with_path_pid_and_version() {
    let agent = FakeAgent::new();
    let (component, log) = Scripted::new();
    // `start` checks the Register message's fields.
    let (session, mut conn) = agent.start(component);
    // The registered hook runs before any callback; a healthcheck round trip proves it ran.
    conn.send(&ToComponent::Healthcheck { invocation: 1 });
    assert_eq!(conn.recv(), ToAgent::HealthcheckConfirm { invocation: 1 });
    assert_eq!(calls(&log), vec![Call::Registered, Call::Healthcheck]);
    assert!(format!("{session:?}").contains(common::COMPONENT));
}

#[test]
fn refusal_is_reported_with_its_reason() {
    let agent = FakeAgent::new();
    let (component, log) = Scripted::new();
    let (client, mut conn) = agent.start_pending(component);
    assert!(matches!(conn.recv(), ToAgent::Register { .. }));
    conn.send(&ToComponent::Registered {
        ok: false,
        reason: Some("no such component on this node".into()),
    });
    match client.join().unwrap() {
        Err(ClientError::Refused(reason)) => assert_eq!(reason, "no such component on this node"),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(calls(&log).is_empty(), "no callback after a refusal");
}

#[test]
fn refusal_without_reason_still_says_something() {
    let agent = FakeAgent::new();
    let (client, mut conn) = agent.start_pending(Scripted::default());
    conn.recv();
    conn.send(&ToComponent::Registered {
        ok: false,
        reason: None,
    });
    match client.join().unwrap() {
        Err(ClientError::Refused(reason)) => assert!(!reason.is_empty()),
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[test]
fn agent_hanging_up_during_registration_is_closed() {
    let agent = FakeAgent::new();
    let (client, mut conn) = agent.start_pending(Scripted::default());
    conn.recv();
    drop(conn);
    assert!(matches!(client.join().unwrap(), Err(ClientError::Closed)));
}

#[test]
fn anything_but_registered_first_is_a_protocol_error() {
    let agent = FakeAgent::new();
    let (client, mut conn) = agent.start_pending(Scripted::default());
    conn.recv();
    conn.send(&ToComponent::Healthcheck { invocation: 1 });
    assert!(matches!(
        client.join().unwrap(),
        Err(ClientError::Protocol(_))
    ));
}

#[test]
fn connect_error_names_the_path() {
    let dir = common::TempDir::new();
    let path = dir.0.join("nobody-listens.sock");
    match Session::start_with(&path, "a/sg/su/c", Scripted::default()) {
        Err(e @ ClientError::Connect { .. }) => {
            assert!(e.to_string().contains("nobody-listens.sock"), "{e}")
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[test]
fn requests_sent_right_behind_registered_are_not_lost() {
    let agent = FakeAgent::new();
    let (component, log) = Scripted::new();
    let (client, mut conn) = agent.start_pending(component);
    conn.recv();
    // One write: Registered and a CsiSet arrive together, likely in one read by the client.
    let mut bytes = nines_proto::encode(&ToComponent::Registered {
        ok: true,
        reason: None,
    });
    bytes.extend(nines_proto::encode(&csi_set(1, HaState::Active, &[])));
    conn.send_bytes(&bytes);
    let _session = client.join().unwrap().unwrap();
    assert_eq!(
        conn.recv(),
        ToAgent::Response {
            invocation: 1,
            ok: true
        }
    );
    assert_eq!(calls(&log).len(), 2);
}

#[test]
fn csi_set_active_and_standby_are_answered() {
    let agent = FakeAgent::new();
    let (component, log) = Scripted::new();
    let (_session, mut conn) = agent.start(component);
    conn.send(&csi_set(10, HaState::Active, &[("port", "7100")]));
    assert_eq!(
        conn.recv(),
        ToAgent::Response {
            invocation: 10,
            ok: true
        }
    );
    conn.send(&csi_set(11, HaState::Standby, &[]));
    assert_eq!(
        conn.recv(),
        ToAgent::Response {
            invocation: 11,
            ok: true
        }
    );
    conn.send(&csi_set(12, HaState::Quiesced, &[]));
    assert_eq!(
        conn.recv(),
        ToAgent::Response {
            invocation: 12,
            ok: true
        }
    );
    assert_eq!(
        calls(&log)[1..],
        [
            Call::Set(
                "app/si".into(),
                "app/si/csi".into(),
                HaState::Active,
                vec![("port".into(), "7100".into())]
            ),
            Call::Set(
                "app/si".into(),
                "app/si/csi".into(),
                HaState::Standby,
                vec![]
            ),
            Call::Set(
                "app/si".into(),
                "app/si/csi".into(),
                HaState::Quiesced,
                vec![]
            ),
        ]
    );
}

#[test]
fn refused_csi_set_answers_not_ok() {
    let agent = FakeAgent::new();
    let (_session, mut conn) = agent.start(Scripted::default());
    conn.send(&csi_set(5, HaState::Active, &[("refuse", "port in use")]));
    assert_eq!(
        conn.recv(),
        ToAgent::Response {
            invocation: 5,
            ok: false
        }
    );
}

#[test]
fn quiescing_sends_response_then_quiescing_complete() {
    let agent = FakeAgent::new();
    let (_session, mut conn) = agent.start(Scripted::default());
    conn.send(&csi_set(20, HaState::Quiescing, &[]));
    assert_eq!(
        conn.recv(),
        ToAgent::Response {
            invocation: 20,
            ok: true
        }
    );
    assert_eq!(conn.recv(), ToAgent::QuiescingComplete { invocation: 20 });

    // A refused quiescing is answered not-ok and never reported complete: the next message is
    // the confirmation of a later healthcheck.
    conn.send(&csi_set(21, HaState::Quiescing, &[("refuse", "stuck")]));
    conn.send(&ToComponent::Healthcheck { invocation: 22 });
    assert_eq!(
        conn.recv(),
        ToAgent::Response {
            invocation: 21,
            ok: false
        }
    );
    assert_eq!(conn.recv(), ToAgent::HealthcheckConfirm { invocation: 22 });
}

#[test]
fn csi_remove_is_answered() {
    let agent = FakeAgent::new();
    let (component, log) = Scripted::new();
    let (_session, mut conn) = agent.start(component);
    conn.send(&ToComponent::CsiRemove {
        invocation: 30,
        si: "app/si".into(),
        csi: "app/si/csi".into(),
    });
    assert_eq!(
        conn.recv(),
        ToAgent::Response {
            invocation: 30,
            ok: true
        }
    );
    assert_eq!(
        calls(&log).last(),
        Some(&Call::Remove("app/si".into(), "app/si/csi".into()))
    );
}

#[test]
fn healthcheck_is_confirmed_only_when_healthy() {
    let agent = FakeAgent::new();
    let (mut component, log) = Scripted::new();
    component.health = [Ok(()), Err("database unreachable".to_string()), Ok(())].into();
    let (_session, mut conn) = agent.start(component);
    conn.send(&ToComponent::Healthcheck { invocation: 1 });
    conn.send(&ToComponent::Healthcheck { invocation: 2 });
    conn.send(&ToComponent::Healthcheck { invocation: 3 });
    assert_eq!(conn.recv(), ToAgent::HealthcheckConfirm { invocation: 1 });
    // Invocation 2 failed: nothing is sent for it, the next confirmation is for 3.
    assert_eq!(conn.recv(), ToAgent::HealthcheckConfirm { invocation: 3 });
    assert_eq!(
        calls(&log)
            .iter()
            .filter(|c| **c == Call::Healthcheck)
            .count(),
        3
    );
}

#[test]
fn error_report_carries_the_recommendation() {
    let agent = FakeAgent::new();
    let (session, mut conn) = agent.start(Scripted::default());
    session.report_error(Recovery::ComponentFailover).unwrap();
    assert_eq!(
        conn.recv(),
        ToAgent::ErrorReport {
            recommended: Recovery::ComponentFailover
        }
    );
    session.report_error(Recovery::NodeFailfast).unwrap();
    assert_eq!(
        conn.recv(),
        ToAgent::ErrorReport {
            recommended: Recovery::NodeFailfast
        }
    );
}

#[test]
fn protection_group_tracking() {
    let agent = FakeAgent::new();
    let (component, log) = Scripted::new();
    let (session, mut conn) = agent.start(component);
    session.track_protection_group("app/si").unwrap();
    assert_eq!(
        conn.recv(),
        ToAgent::TrackProtectionGroup {
            si: "app/si".into()
        }
    );
    let members = vec![
        ("app/sg/su-1/comp".to_string(), HaState::Active),
        ("app/sg/su-2/comp".to_string(), HaState::Standby),
    ];
    conn.send(&ToComponent::ProtectionGroup {
        si: "app/si".into(),
        members: members.clone(),
    });
    // Callbacks are in order: once the healthcheck is confirmed, the group was delivered.
    conn.send(&ToComponent::Healthcheck { invocation: 1 });
    assert_eq!(conn.recv(), ToAgent::HealthcheckConfirm { invocation: 1 });
    assert!(calls(&log).contains(&Call::Group("app/si".into(), members)));
}

/// The fake agent's side of a checkpoint store: answers writes, reads and flushes from a map
/// as the real agent does (an async write is answered only when refused: checkpoint
/// "forbidden" is).
fn serve_checkpoints(mut conn: common::Conn, requests: usize) -> (common::Conn, Vec<ToAgent>) {
    let mut store: Vec<(String, String, Vec<u8>)> = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..requests {
        let msg = conn.recv();
        seen.push(msg.clone());
        match msg {
            ToAgent::CheckpointWrite {
                request,
                checkpoint,
                section,
                data,
                sync,
            } => {
                let reason = "not active for this SI".to_string();
                if checkpoint == "forbidden" && sync {
                    conn.send(&ToComponent::CheckpointAck {
                        request,
                        ok: false,
                        reason: Some(reason),
                    });
                    continue;
                }
                if checkpoint == "forbidden" {
                    conn.send(&ToComponent::CheckpointWriteRefused {
                        request,
                        checkpoint,
                        section,
                        reason,
                    });
                    continue;
                }
                store.retain(|(c, s, _)| !(c == &checkpoint && s == &section));
                store.push((checkpoint, section, data));
                if sync {
                    conn.send(&ToComponent::CheckpointAck {
                        request,
                        ok: true,
                        reason: None,
                    });
                }
            }
            ToAgent::CheckpointFlush { request } => conn.send(&ToComponent::CheckpointAck {
                request,
                ok: true,
                reason: None,
            }),
            ToAgent::CheckpointRead {
                request,
                checkpoint,
            } => conn.send(&ToComponent::CheckpointData {
                request,
                sections: store
                    .iter()
                    .filter(|(c, _, _)| c == &checkpoint)
                    .map(|(_, s, d)| (s.clone(), d.clone()))
                    .collect(),
            }),
            other => panic!("unexpected {other:?}"),
        }
    }
    (conn, seen)
}

#[test]
fn checkpoint_write_and_read_round_trip() {
    let agent = FakeAgent::new();
    let (session, conn) = agent.start(Scripted::default());
    let server = thread::spawn(move || serve_checkpoints(conn, 6));

    session
        .checkpoint_write("app/si", "counter", &42u64.to_be_bytes(), true)
        .unwrap();
    session
        .checkpoint_write("app/si", "name", b"first", false)
        .unwrap();
    session
        .checkpoint_write("app/si", "name", b"second", true)
        .unwrap();
    let mut sections = session.checkpoint_read("app/si").unwrap();
    sections.sort();
    assert_eq!(
        sections,
        vec![
            ("counter".to_string(), 42u64.to_be_bytes().to_vec()),
            ("name".to_string(), b"second".to_vec()),
        ]
    );
    assert_eq!(session.checkpoint_read("never-written").unwrap(), vec![]);
    match session.checkpoint_write("forbidden", "s", b"x", true) {
        Err(ClientError::Agent(reason)) => assert_eq!(reason, "not active for this SI"),
        other => panic!("expected Agent, got {other:?}"),
    }

    let (_conn, seen) = server.join().unwrap();
    // Request ids are distinct, and `sync` is passed through.
    let ids: std::collections::HashSet<u64> =
        seen.iter()
            .map(|m| match m {
                ToAgent::CheckpointWrite { request, .. }
                | ToAgent::CheckpointRead { request, .. } => *request,
                _ => unreachable!(),
            })
            .collect();
    assert_eq!(ids.len(), 6);
    assert!(matches!(
        seen[0],
        ToAgent::CheckpointWrite { sync: true, .. }
    ));
    assert!(matches!(
        seen[1],
        ToAgent::CheckpointWrite { sync: false, .. }
    ));
}

#[test]
fn sync_checkpoint_write_waits_for_the_ack() {
    let agent = FakeAgent::new();
    let (session, mut conn) = agent.start(Scripted::default());
    let writer = thread::spawn(move || {
        let started = Instant::now();
        session
            .checkpoint_write("app/si", "s", b"v", true)
            .map(|()| started.elapsed())
    });
    let request = match conn.recv() {
        ToAgent::CheckpointWrite {
            request,
            sync: true,
            ..
        } => request,
        other => panic!("unexpected {other:?}"),
    };
    // Replication takes a while; the writer must still be waiting.
    thread::sleep(Duration::from_millis(200));
    assert!(!writer.is_finished());
    conn.send(&ToComponent::CheckpointAck {
        request,
        ok: true,
        reason: None,
    });
    let waited = writer.join().unwrap().unwrap();
    assert!(waited >= Duration::from_millis(200));
}

#[test]
fn concurrent_checkpoint_requests_get_their_own_replies() {
    let agent = FakeAgent::new();
    let (session, mut conn) = agent.start(Scripted::default());
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let session = session.clone();
            thread::spawn(move || session.checkpoint_read(&format!("ckpt-{i}")))
        })
        .collect();
    let mut pending = Vec::new();
    for _ in 0..4 {
        match conn.recv() {
            ToAgent::CheckpointRead {
                request,
                checkpoint,
            } => pending.push((request, checkpoint)),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Answer in reverse order; each reader must get the data of its own checkpoint.
    for (request, checkpoint) in pending.into_iter().rev() {
        conn.send(&ToComponent::CheckpointData {
            request,
            sections: vec![("name".into(), checkpoint.into_bytes())],
        });
    }
    for (i, r) in readers.into_iter().enumerate() {
        assert_eq!(
            r.join().unwrap().unwrap(),
            vec![("name".to_string(), format!("ckpt-{i}").into_bytes())]
        );
    }
}

#[test]
fn checkpoint_read_inside_a_callback_does_not_deadlock() {
    let agent = FakeAgent::new();
    let (mut component, log) = Scripted::new();
    component.read_on_active = Some("app/si".into());
    let (_session, mut conn) = agent.start(component);
    conn.send(&csi_set(1, HaState::Active, &[]));
    // The component asks for its checkpoint before answering the CsiSet.
    let request = match conn.recv() {
        ToAgent::CheckpointRead { request, .. } => request,
        other => panic!("expected CheckpointRead, got {other:?}"),
    };
    conn.send(&ToComponent::CheckpointData {
        request,
        sections: vec![("counter".into(), vec![7])],
    });
    assert_eq!(
        conn.recv(),
        ToAgent::Response {
            invocation: 1,
            ok: true
        }
    );
    assert!(calls(&log).contains(&Call::ReadInCallback(Ok(vec![("counter".into(), vec![7])]))));
}

#[test]
fn too_large_checkpoint_write_fails_alone() {
    let agent = FakeAgent::new();
    let (session, mut conn) = agent.start(Scripted::default());
    let big = vec![0u8; MAX_FRAME];
    for sync in [true, false] {
        assert!(matches!(
            session.checkpoint_write("app/si", "big", &big, sync),
            Err(ClientError::Protocol(
                nines_proto::FrameError::TooLarge { .. }
            ))
        ));
    }
    // The session is intact.
    assert_next_is_an_error_report(&session, &mut conn);
}

#[test]
fn a_hang_up_fails_requests_at_once_and_without_an_agent_the_session_closes() {
    let agent = FakeAgent::new();
    let window = Duration::from_millis(300);
    let (session, mut conn) = agent.start_reconnecting(Scripted::default(), window);
    let s = session.clone();
    // Not one to repeat (unlike a checkpoint read or write): it fails when lost in flight.
    let starter = thread::spawn(move || {
        s.healthcheck_start("hc", Duration::from_secs(1), Duration::from_millis(500))
    });
    let s = session.clone();
    let waiter = thread::spawn(move || s.wait());
    assert!(matches!(conn.recv(), ToAgent::HealthcheckStart { .. }));
    let hung_up = Instant::now();
    // The agent goes away for good: its socket with it.
    drop(conn);
    drop(agent);
    assert!(matches!(
        starter.join().unwrap(),
        Err(ClientError::Disconnected)
    ));
    assert!(
        hung_up.elapsed() < window,
        "the request in flight failed at once, not after the window"
    );
    assert!(matches!(waiter.join().unwrap(), Err(ClientError::Closed)));
    assert!(
        hung_up.elapsed() >= window,
        "the session waited for an agent to come back"
    );
    assert!(hung_up.elapsed() < PATIENCE);
    // Every later call fails the same way.
    assert!(matches!(
        session.checkpoint_write("app/si", "s", b"v", true),
        Err(ClientError::Closed)
    ));
    assert!(matches!(
        session.report_error(Recovery::ComponentRestart),
        Err(ClientError::Closed)
    ));
    assert!(matches!(session.wait(), Err(ClientError::Closed)));
}

#[test]
fn with_no_reconnect_window_a_hang_up_closes_the_session_at_once() {
    let agent = FakeAgent::new();
    let (session, conn) = agent.start_reconnecting(Scripted::default(), Duration::ZERO);
    let hung_up = Instant::now();
    drop(conn);
    assert!(matches!(
        within(move || session.wait()),
        Err(ClientError::Closed)
    ));
    assert!(hung_up.elapsed() < PATIENCE);
}

/// An active session that holds `app/si` and has written `count` = 41, then 42 (both
/// acknowledged).
fn active_that_wrote_42(agent: &FakeAgent) -> (Session, Conn) {
    let (session, mut conn) = agent.start(Scripted::default());
    conn.send(&ToComponent::CsiSet {
        invocation: 1,
        si: "app/si".into(),
        csi: "app/si/csi".into(),
        ha: HaState::Active,
        attrs: vec![],
        checkpoint: None,
    });
    assert!(matches!(conn.recv(), ToAgent::Response { ok: true, .. }));
    for value in [b"41", b"42"] {
        let s = session.clone();
        let write = thread::spawn(move || s.checkpoint_write("app/si", "count", value, true));
        answer_write(&mut conn, value, true);
        write.join().unwrap().expect("acknowledged");
    }
    (session, conn)
}

#[test]
fn a_session_registers_again_with_a_restarted_agent_and_gives_back_its_checkpoints() {
    let agent = FakeAgent::new();
    let (session, conn) = active_that_wrote_42(&agent);

    // The agent dies; a new one listens on the same socket.
    drop(conn);
    let (mut conn, held) = agent.accept_registration();
    assert_eq!(
        held,
        vec![HeldCsi {
            si: "app/si".into(),
            csi: "app/si/csi".into(),
            ha: HaState::Active,
        }]
    );
    // The active gives back the latest value of what it wrote, once, without waiting.
    match conn.recv() {
        ToAgent::CheckpointWrite {
            checkpoint,
            section,
            data,
            sync,
            ..
        } => {
            assert_eq!((checkpoint.as_str(), section.as_str()), ("app/si", "count"));
            assert_eq!(data, b"42");
            assert!(!sync);
        }
        other => panic!("expected the checkpoint back, got {other:?}"),
    }
    // And the session works as before.
    let s = session.clone();
    let read = thread::spawn(move || s.checkpoint_read("app/si"));
    match conn.recv() {
        ToAgent::CheckpointRead { request, .. } => conn.send(&ToComponent::CheckpointData {
            request,
            sections: vec![("count".into(), b"42".to_vec())],
        }),
        other => panic!("expected a read, got {other:?}"),
    }
    assert_eq!(
        read.join().unwrap().expect("read"),
        vec![("count".to_string(), b"42".to_vec())]
    );
}

#[test]
fn a_write_made_while_the_agent_is_away_reaches_the_new_agent_after_the_replay() {
    let agent = FakeAgent::new();
    let (session, conn) = active_that_wrote_42(&agent);
    drop(conn);
    let s = session.clone();
    let write = thread::spawn(move || s.checkpoint_write("app/si", "count", b"43", true));
    thread::sleep(Duration::from_millis(50));
    let (mut conn, _) = agent.accept_registration();
    // The replay (unanswered) already gives the newest value, and nothing older comes after
    // it: a replay of 42 behind the write would leave the agent with 42 once 43 was
    // acknowledged.
    assert!(
        !answer_write(&mut conn, b"43", true),
        "the replay is asynchronous"
    );
    assert!(
        answer_write(&mut conn, b"43", true),
        "then the write itself"
    );
    write
        .join()
        .unwrap()
        .expect("acknowledged by the new agent");
}

#[test]
fn a_write_lost_in_flight_is_replayed_and_a_refused_one_is_not() {
    let agent = FakeAgent::new();
    let (session, mut conn) = active_that_wrote_42(&agent);
    // The old agent took 43 in and died before answering: it may have stored it, so the
    // replay must give 43, not 42.
    let s = session.clone();
    let write = thread::spawn(move || s.checkpoint_write("app/si", "count", b"43", true));
    assert!(matches!(conn.recv(), ToAgent::CheckpointWrite { .. }));
    drop(conn);
    let (mut conn, _) = agent.accept_registration();
    assert!(!answer_write(&mut conn, b"43", true));
    assert!(answer_write(&mut conn, b"43", true), "the write sent again");
    write
        .join()
        .unwrap()
        .expect("acknowledged by the new agent");

    // A refused write is taken back: the next agent gets 43 again, not 44.
    let s = session.clone();
    let write = thread::spawn(move || s.checkpoint_write("app/si", "count", b"44", true));
    answer_write(&mut conn, b"44", false);
    assert!(write.join().unwrap().is_err(), "the refusal is reported");
    drop(conn);
    let (mut conn, _) = agent.accept_registration();
    assert!(!answer_write(&mut conn, b"43", true));
}

#[test]
fn a_request_made_while_the_agent_is_away_goes_to_the_new_agent() {
    let agent = FakeAgent::new();
    let (session, conn) = agent.start(Scripted::default());
    drop(conn);
    // Made after the hang-up, before any agent is back: it waits instead of failing.
    let s = session.clone();
    let read = thread::spawn(move || s.checkpoint_read("app/si"));
    thread::sleep(Duration::from_millis(50));
    let (mut conn, _) = agent.accept_registration();
    match conn.recv() {
        ToAgent::CheckpointRead { request, .. } => conn.send(&ToComponent::CheckpointData {
            request,
            sections: vec![("s".into(), b"v".to_vec())],
        }),
        other => panic!("expected the read, got {other:?}"),
    }
    assert_eq!(
        read.join().unwrap().expect("answered by the new agent"),
        vec![("s".to_string(), b"v".to_vec())]
    );
}

#[test]
fn a_checkpoint_read_lost_in_flight_is_sent_again_to_the_new_agent() {
    let agent = FakeAgent::new();
    let (session, mut conn) = agent.start(Scripted::default());
    let s = session.clone();
    let read = thread::spawn(move || s.checkpoint_read("app/si"));
    // The old agent got the read and went away without answering.
    assert!(matches!(conn.recv(), ToAgent::CheckpointRead { .. }));
    drop(conn);
    let (mut conn, _) = agent.accept_registration();
    match conn.recv() {
        ToAgent::CheckpointRead { request, .. } => conn.send(&ToComponent::CheckpointData {
            request,
            sections: vec![("s".into(), b"v".to_vec())],
        }),
        other => panic!("expected the read again, got {other:?}"),
    }
    assert_eq!(
        read.join().unwrap().expect("answered by the new agent"),
        vec![("s".to_string(), b"v".to_vec())]
    );
}

#[test]
fn a_standby_gives_back_nothing_when_it_registers_again() {
    let agent = FakeAgent::new();
    let (session, mut conn) = agent.start(Scripted::default());
    conn.send(&ToComponent::CsiSet {
        invocation: 1,
        si: "app/si".into(),
        csi: "app/si/csi".into(),
        ha: HaState::Standby,
        attrs: vec![],
        checkpoint: None,
    });
    assert!(matches!(conn.recv(), ToAgent::Response { ok: true, .. }));
    drop(conn);
    let (mut conn, held) = agent.accept_registration();
    assert_eq!(held[0].ha, HaState::Standby);
    // Until the session has the new connection, requests fail fast; a component retries.
    let s = session.clone();
    let read = thread::spawn(move || loop {
        match s.checkpoint_read("app/si") {
            Err(ClientError::Disconnected) => thread::sleep(Duration::from_millis(5)),
            other => return other,
        }
    });
    match conn.recv() {
        ToAgent::CheckpointRead { request, .. } => conn.send(&ToComponent::CheckpointData {
            request,
            sections: vec![],
        }),
        other => panic!("no checkpoint replay may come before the read, got {other:?}"),
    }
    assert_eq!(read.join().unwrap().expect("read"), vec![]);
}

#[test]
fn terminate_runs_the_callback_answers_and_releases_wait() {
    let agent = FakeAgent::new();
    let (component, log) = Scripted::new();
    let (session, mut conn) = agent.start(component);
    let s = session.clone();
    let waiter = thread::spawn(move || s.wait());
    thread::sleep(Duration::from_millis(50));
    assert!(!waiter.is_finished());
    conn.send(&ToComponent::Terminate { invocation: 99 });
    assert_eq!(
        conn.recv(),
        ToAgent::Response {
            invocation: 99,
            ok: true
        }
    );
    assert!(waiter.join().unwrap().is_ok());
    assert_eq!(calls(&log).last(), Some(&Call::Terminate));
    // The agent hanging up after terminate does not turn the outcome into an error.
    drop(conn);
    assert!(within(move || session.wait()).is_ok());
}

#[test]
fn a_panicking_callback_fails_the_request_and_closes_the_session() {
    let agent = FakeAgent::new();
    let (session, mut conn) = agent.start(Scripted::default());
    conn.send(&csi_set(7, HaState::Active, &[("panic", "boom")]));
    assert_eq!(
        conn.recv(),
        ToAgent::Response {
            invocation: 7,
            ok: false
        }
    );
    conn.expect_eof();
    assert!(matches!(
        within(move || session.wait()),
        Err(ClientError::Closed)
    ));
}

#[test]
fn the_checkpoint_sent_with_an_activation_answers_the_first_read_without_a_round_trip() {
    let agent = FakeAgent::new();
    let (mut component, log) = Scripted::new();
    component.read_on_active = Some("app/si".into());
    let (session, mut conn) = agent.start(component);
    let mut activation = csi_set(1, HaState::Active, &[]);
    if let ToComponent::CsiSet { checkpoint, .. } = &mut activation {
        *checkpoint = Some(vec![("counter".into(), vec![41])]);
    }
    conn.send(&activation);
    // The callback read the checkpoint, yet the next thing the agent hears is the answer.
    assert_eq!(
        conn.recv(),
        ToAgent::Response {
            invocation: 1,
            ok: true
        }
    );
    assert!(calls(&log).contains(&Call::ReadInCallback(Ok(vec![(
        "counter".into(),
        vec![41]
    )]))));

    // Only the first read is answered locally: a second one asks the agent.
    let s = session.clone();
    let reader = thread::spawn(move || s.checkpoint_read("app/si"));
    let request = match conn.recv() {
        ToAgent::CheckpointRead { request, .. } => request,
        other => panic!("expected CheckpointRead, got {other:?}"),
    };
    conn.send(&ToComponent::CheckpointData {
        request,
        sections: vec![("counter".into(), vec![42])],
    });
    assert_eq!(
        reader.join().unwrap().unwrap(),
        vec![("counter".to_string(), vec![42])]
    );
}

#[test]
fn a_delivered_checkpoint_is_dropped_by_a_write_and_by_leaving_active() {
    let agent = FakeAgent::new();
    let (session, mut conn) = agent.start(Scripted::default());
    let activation = |invocation| {
        let mut m = csi_set(invocation, HaState::Active, &[]);
        if let ToComponent::CsiSet { checkpoint, .. } = &mut m {
            *checkpoint = Some(vec![("counter".into(), vec![1])]);
        }
        m
    };
    let expect_read_from_agent = |conn: &mut Conn, s: &Session| {
        let s = s.clone();
        let reader = thread::spawn(move || s.checkpoint_read("app/si"));
        let request = match conn.recv() {
            ToAgent::CheckpointRead { request, .. } => request,
            other => panic!("expected CheckpointRead, got {other:?}"),
        };
        conn.send(&ToComponent::CheckpointData {
            request,
            sections: vec![],
        });
        assert_eq!(reader.join().unwrap().unwrap(), vec![]);
    };

    // A write makes the delivered copy stale: it is not used afterwards.
    conn.send(&activation(1));
    assert!(matches!(
        conn.recv(),
        ToAgent::Response { invocation: 1, .. }
    ));
    let s = session.clone();
    let writer = thread::spawn(move || s.checkpoint_write("app/si", "counter", &[2], true));
    let request = match conn.recv() {
        ToAgent::CheckpointWrite { request, .. } => request,
        other => panic!("expected CheckpointWrite, got {other:?}"),
    };
    conn.send(&ToComponent::CheckpointAck {
        request,
        ok: true,
        reason: None,
    });
    writer.join().unwrap().unwrap();
    expect_read_from_agent(&mut conn, &session);

    // Becoming standby, or losing the CSI, drops it too.
    conn.send(&activation(2));
    assert!(matches!(
        conn.recv(),
        ToAgent::Response { invocation: 2, .. }
    ));
    conn.send(&csi_set(3, HaState::Standby, &[]));
    assert!(matches!(
        conn.recv(),
        ToAgent::Response { invocation: 3, .. }
    ));
    expect_read_from_agent(&mut conn, &session);
    conn.send(&activation(4));
    assert!(matches!(
        conn.recv(),
        ToAgent::Response { invocation: 4, .. }
    ));
    conn.send(&ToComponent::CsiRemove {
        invocation: 5,
        si: "app/si".into(),
        csi: "app/si/csi".into(),
    });
    assert!(matches!(
        conn.recv(),
        ToAgent::Response { invocation: 5, .. }
    ));
    expect_read_from_agent(&mut conn, &session);
}

/// Send an error report and check it is the next message the fake agent receives (the
/// session works, and nothing was sent before it).
fn assert_next_is_an_error_report(session: &Session, conn: &mut Conn) {
    session.report_error(Recovery::ComponentRestart).unwrap();
    assert_eq!(
        conn.recv(),
        ToAgent::ErrorReport {
            recommended: Recovery::ComponentRestart
        }
    );
}

#[test]
fn async_checkpoint_write_returns_without_waiting_for_the_agent() {
    let agent = FakeAgent::new();
    let (session, mut conn) = agent.start(Scripted::default());
    // The fake agent answers nothing. A write that waited for an answer would return only
    // after REQUEST_TIMEOUT (10 s), past `within`'s patience (5 s): this fails if async
    // writes silently became sync.
    let s = session.clone();
    within(move || {
        for i in 0..50u8 {
            s.checkpoint_write("app/si", "n", &[i], false)?;
        }
        Ok::<(), ClientError>(())
    })
    .unwrap();
    for i in 0..50u8 {
        match conn.recv() {
            ToAgent::CheckpointWrite {
                section,
                data,
                sync: false,
                ..
            } => assert_eq!((section.as_str(), data), ("n", vec![i]), "in order"),
            other => panic!("expected an async write, got {other:?}"),
        }
    }
    // Nothing else was sent: the next message is the one sent next.
    assert_next_is_an_error_report(&session, &mut conn);
}

#[test]
fn async_writes_then_a_read_arrive_in_order_and_the_read_sees_the_last() {
    let agent = FakeAgent::new();
    let (session, conn) = agent.start(Scripted::default());
    let server = thread::spawn(move || serve_checkpoints(conn, 22));
    for i in 1..=20u8 {
        session
            .checkpoint_write("app/si", "n", &[i], false)
            .unwrap();
    }
    assert_eq!(
        session.checkpoint_read("app/si").unwrap(),
        vec![("n".to_string(), vec![20])]
    );
    session.checkpoint_flush().unwrap();
    let (_conn, seen) = server.join().unwrap();
    let requests: Vec<u64> = seen
        .iter()
        .map(|m| match m {
            ToAgent::CheckpointWrite { request, .. }
            | ToAgent::CheckpointRead { request, .. }
            | ToAgent::CheckpointFlush { request } => *request,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert!(requests.windows(2).all(|w| w[0] < w[1]), "{requests:?}");
    assert!(matches!(seen[20], ToAgent::CheckpointRead { .. }));
    assert!(matches!(seen[21], ToAgent::CheckpointFlush { .. }));
}

fn refused(e: Result<(), ClientError>) -> (String, String, String, usize) {
    match e {
        Err(ClientError::AsyncWriteRefused {
            checkpoint,
            section,
            reason,
            also_refused,
        }) => (checkpoint, section, reason, also_refused),
        other => panic!("expected AsyncWriteRefused, got {other:?}"),
    }
}

#[test]
fn flush_reports_the_first_refused_async_write_once() {
    let agent = FakeAgent::new();
    let (session, conn) = agent.start(Scripted::default());
    let server = thread::spawn(move || serve_checkpoints(conn, 5));
    session
        .checkpoint_write("forbidden", "first", b"x", false)
        .unwrap();
    session
        .checkpoint_write("app/si", "ok", b"y", false)
        .unwrap();
    session
        .checkpoint_write("forbidden", "second", b"z", false)
        .unwrap();
    // Whether or not the refusals have arrived yet, the flush waits for them.
    let (checkpoint, section, reason, also) = refused(session.checkpoint_flush());
    assert_eq!(
        (checkpoint.as_str(), section.as_str(), reason.as_str(), also),
        ("forbidden", "first", "not active for this SI", 1)
    );
    // Reported once: the next flush is clean.
    session.checkpoint_flush().unwrap();
    let (_conn, seen) = server.join().unwrap();
    assert_eq!(seen.len(), 5);
}

#[test]
fn a_refused_async_write_fails_the_next_checkpoint_call_which_sends_nothing() {
    let agent = FakeAgent::new();
    let (session, mut conn) = agent.start(Scripted::default());
    session
        .checkpoint_write("app/si", "s", b"v", false)
        .unwrap();
    let request = match conn.recv() {
        ToAgent::CheckpointWrite { request, .. } => request,
        other => panic!("unexpected {other:?}"),
    };
    conn.send(&ToComponent::CheckpointWriteRefused {
        request,
        checkpoint: "app/si".into(),
        section: "s".into(),
        reason: "too big".into(),
    });
    // The reader thread handles frames in order: once the healthcheck behind the refusal is
    // confirmed, the refusal is recorded.
    conn.send(&ToComponent::Healthcheck { invocation: 1 });
    assert_eq!(conn.recv(), ToAgent::HealthcheckConfirm { invocation: 1 });
    let (_, section, reason, also) = refused(session.checkpoint_write("app/si", "t", b"w", false));
    assert_eq!(
        (section.as_str(), reason.as_str(), also),
        ("s", "too big", 0)
    );
    // That write was not sent, and the error is not reported twice: the read goes out.
    let s = session.clone();
    let reader = thread::spawn(move || s.checkpoint_read("app/si"));
    match conn.recv() {
        ToAgent::CheckpointRead { request, .. } => conn.send(&ToComponent::CheckpointData {
            request,
            sections: vec![],
        }),
        other => panic!("expected the read, got {other:?}"),
    }
    assert_eq!(reader.join().unwrap().unwrap(), vec![]);
}

#[test]
fn component_invoked_healthcheck_start_confirm_and_stop() {
    let agent = FakeAgent::new();
    let (session, mut conn) = agent.start(Scripted::default());
    let ms = Duration::from_millis;
    let s = session.clone();
    let starter = thread::spawn(move || s.healthcheck_start("loop", ms(100), ms(50)));
    let request = match conn.recv() {
        ToAgent::HealthcheckStart {
            request,
            key,
            period,
            max_duration,
        } => {
            assert_eq!(
                (key.as_str(), period, max_duration),
                ("loop", ms(100), ms(50))
            );
            request
        }
        other => panic!("unexpected {other:?}"),
    };
    thread::sleep(ms(100));
    assert!(!starter.is_finished(), "start waits for the agent's answer");
    conn.send(&ToComponent::HealthcheckAck {
        request,
        ok: true,
        reason: None,
    });
    starter.join().unwrap().unwrap();
    // A confirmation is sent and not waited for (the fake agent never answers it).
    let s = session.clone();
    within(move || s.healthcheck_confirm("loop")).unwrap();
    assert_eq!(
        conn.recv(),
        ToAgent::HealthcheckSelfConfirm { key: "loop".into() }
    );
    // A refusal is the caller's error, with the agent's reason.
    let s = session.clone();
    let stopper = thread::spawn(move || s.healthcheck_stop("other"));
    let request = match conn.recv() {
        ToAgent::HealthcheckStop { request, key } => {
            assert_eq!(key, "other");
            request
        }
        other => panic!("unexpected {other:?}"),
    };
    conn.send(&ToComponent::HealthcheckAck {
        request,
        ok: false,
        reason: Some("healthcheck \"other\" is not running".into()),
    });
    match stopper.join().unwrap() {
        Err(ClientError::Agent(reason)) => assert!(reason.contains("not running"), "{reason}"),
        other => panic!("expected Agent, got {other:?}"),
    }
}
