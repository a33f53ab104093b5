//! The counter component against a fake node agent on a real Unix socket: the HA states drive
//! the listener, activation continues from the checkpoint, and each increment is written
//! synchronously before its reply.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use nines_client::HaState;
use nines_example_counter::{counter, run_with};
use nines_proto::{read_frame, write_frame, ToAgent, ToComponent};

const SI: &str = "counter/si";
const CSI: &str = "counter/si/main";

struct Agent {
    dir: PathBuf,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Agent {
    fn start() -> Agent {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nines-counter-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("agent.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        // The counter's own event loop, on a thread of its own (in production, the process's
        // only thread). It ends when the test's fake agent goes away (after the reconnect
        // window).
        {
            let path = path.clone();
            thread::spawn(move || run_with(&path, "counter/sg/su-1/counterd"));
        }
        let (stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        assert!(matches!(
            read_frame::<_, ToAgent>(&mut reader),
            Ok(Some(ToAgent::Register { .. }))
        ));
        let mut stream2 = stream.try_clone().expect("clone");
        write_frame(
            &mut stream2,
            &ToComponent::Registered {
                ok: true,
                reason: None,
            },
        )
        .expect("send");
        Agent {
            dir,
            stream,
            reader,
        }
    }

    fn recv(&mut self) -> ToAgent {
        match read_frame::<_, ToAgent>(&mut self.reader) {
            Ok(Some(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    fn send(&mut self, m: &ToComponent) {
        write_frame(&mut self.stream, m).expect("send");
    }

    fn csi_set(&mut self, invocation: u64, ha: HaState, port: u16) {
        self.send(&ToComponent::CsiSet {
            invocation,
            si: SI.into(),
            csi: CSI.into(),
            ha,
            attrs: vec![("port".into(), port.to_string())],
            checkpoint: None,
        });
    }

    fn expect_response(&mut self, invocation: u64) {
        match self.recv() {
            ToAgent::Response { invocation: i, ok } => {
                assert_eq!(i, invocation);
                assert!(ok, "the component refused invocation {invocation}");
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }

    /// Answers the read the component makes when it becomes active.
    fn serve_read(&mut self, value: Option<u64>) {
        match self.recv() {
            ToAgent::CheckpointRead {
                request,
                checkpoint,
            } => {
                assert_eq!(checkpoint, SI);
                let sections = value
                    .map(|v| vec![(counter::SECTION.to_owned(), counter::encode(v).to_vec())])
                    .unwrap_or_default();
                self.send(&ToComponent::CheckpointData { request, sections });
            }
            other => panic!("expected a checkpoint read, got {other:?}"),
        }
    }

    /// Expects one synchronous write of `value` and acknowledges it.
    fn ack_write(&mut self, value: u64) {
        match self.recv() {
            ToAgent::CheckpointWrite {
                request,
                checkpoint,
                section,
                data,
                sync,
            } => {
                assert_eq!(
                    (checkpoint.as_str(), section.as_str()),
                    (SI, counter::SECTION)
                );
                assert!(sync, "increments must be written synchronously");
                assert_eq!(counter::decode(&data), Ok(value));
                self.send(&ToComponent::CheckpointAck {
                    request,
                    ok: true,
                    reason: None,
                });
            }
            other => panic!("expected a checkpoint write, got {other:?}"),
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn inc(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>) -> String {
    stream.write_all(b"inc\n").expect("write");
    let mut line = String::new();
    reader.read_line(&mut line).expect("read");
    line
}

#[test]
fn ha_states_drive_the_listener_and_the_checkpoint() {
    let mut agent = Agent::start();
    let port = free_port();

    // Standby: nothing listens.
    agent.csi_set(1, HaState::Standby, port);
    agent.expect_response(1);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());

    // Active: continues from the checkpoint (41), then listens.
    agent.csi_set(2, HaState::Active, port);
    agent.serve_read(Some(41));
    agent.expect_response(2);
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("active listens");
    let mut reader = BufReader::new(client.try_clone().expect("clone"));

    // The reply comes only after the agent acknowledged the write.
    let waiter = thread::spawn(move || {
        let line = inc(&mut client, &mut reader);
        (line, client, reader)
    });
    agent.ack_write(42);
    let (line, mut client, mut reader) = waiter.join().expect("client");
    assert_eq!(line, "42\n");

    // A refused write is not acknowledged and does not count.
    let waiter = thread::spawn(move || {
        let line = inc(&mut client, &mut reader);
        (line, client, reader)
    });
    match agent.recv() {
        ToAgent::CheckpointWrite { request, .. } => agent.send(&ToComponent::CheckpointAck {
            request,
            ok: false,
            reason: Some("standby unreachable".into()),
        }),
        other => panic!("expected a write, got {other:?}"),
    }
    let (line, client, mut reader) = waiter.join().expect("client");
    assert!(line.starts_with("ERR checkpoint write failed"), "{line}");

    // Quiesced: the listener and the connection are closed at once.
    agent.csi_set(3, HaState::Quiesced, port);
    agent.expect_response(3);
    let mut rest = String::new();
    assert_eq!(reader.read_line(&mut rest).unwrap_or(0), 0);
    drop(client);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());

    // Active again: re-reads the checkpoint (the other side counted to 50 meanwhile).
    agent.csi_set(4, HaState::Active, port);
    agent.serve_read(Some(50));
    agent.expect_response(4);
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("active listens again");
    let mut reader = BufReader::new(client.try_clone().expect("clone"));
    let waiter = thread::spawn(move || inc(&mut client, &mut reader));
    agent.ack_write(51);
    assert_eq!(waiter.join().expect("client"), "51\n");

    // Removed: nothing listens.
    agent.send(&ToComponent::CsiRemove {
        invocation: 5,
        si: SI.into(),
        csi: CSI.into(),
    });
    agent.expect_response(5);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn activation_without_a_port_is_refused() {
    let mut agent = Agent::start();
    agent.send(&ToComponent::CsiSet {
        invocation: 1,
        si: SI.into(),
        csi: CSI.into(),
        ha: HaState::Active,
        attrs: vec![],
        checkpoint: None,
    });
    match agent.recv() {
        ToAgent::Response { invocation: 1, ok } => assert!(!ok),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
