//! Whatever the agent sends, the library closes the session and never panics. A panic hook
//! counts panics on any thread of this test binary (callbacks here never panic on purpose).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use common::{within, FakeAgent, Scripted};
use nines_client::{ClientError, HaState};
use nines_proto::{encode, ToComponent, MAX_FRAME, PROTOCOL_VERSION};

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// Register, send `garbage` after a valid request, and check the session closes cleanly.
fn closes_on(garbage: Vec<u8>) {
    count_panics();
    let agent = FakeAgent::new();
    let (session, mut conn) = agent.start(Scripted::default());
    let s = session.clone();
    let reader = std::thread::spawn(move || s.checkpoint_read("app/si"));
    // Wait for the read request so the waiter is registered before the garbage arrives.
    conn.recv();
    conn.send_bytes(&garbage);
    // The client shuts the connection down...
    conn.expect_eof();
    // ...wakes its waiters...
    assert!(matches!(reader.join().unwrap(), Err(ClientError::Closed)));
    assert!(matches!(
        within(move || session.wait()),
        Err(ClientError::Closed)
    ));
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
}

#[test]
fn huge_length_claim() {
    closes_on(u32::MAX.to_be_bytes().to_vec());
    closes_on(((MAX_FRAME + 1) as u32).to_be_bytes().to_vec());
}

#[test]
fn wrong_version() {
    let mut frame = encode(&ToComponent::Healthcheck { invocation: 1 });
    frame[4] = PROTOCOL_VERSION.wrapping_add(1);
    closes_on(frame);
}

#[test]
fn empty_frame() {
    closes_on(vec![0, 0, 0, 0]);
}

#[test]
fn random_payload() {
    let mut bytes = vec![0, 0, 0, 9, PROTOCOL_VERSION];
    bytes.extend([0xff, 0xfe, 0x80, 0x01, 0x00, 0x42, 0x13, 0x37]);
    closes_on(bytes);
}

#[test]
fn truncated_frame_then_hang_up() {
    let frame = encode(&ToComponent::CsiSet {
        invocation: 1,
        si: "app/si".into(),
        csi: "app/si/csi".into(),
        ha: HaState::Active,
        attrs: vec![],
        checkpoint: None,
    });
    count_panics();
    let agent = FakeAgent::new();
    let (session, mut conn) = agent.start(Scripted::default());
    conn.send_bytes(&frame[..frame.len() / 2]);
    drop(conn);
    assert!(matches!(
        within(move || session.wait()),
        Err(ClientError::Closed)
    ));
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
}

#[test]
fn plain_text() {
    closes_on(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec());
}
