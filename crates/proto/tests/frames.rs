//! Framing behaviour: round trips of every message, limits, versions, truncation.

use std::io::{Cursor, Read};

use nines_proto::*;

fn every_to_agent() -> Vec<ToAgent> {
    vec![
        ToAgent::Register {
            component: "counter/sg/su-1/counterd".into(),
            pid: 4242,
            version: PROTOCOL_VERSION,
            held: vec![nines_proto::HeldCsi {
                si: "counter/si".into(),
                csi: "counter/si/main".into(),
                ha: HaState::Active,
            }],
        },
        ToAgent::Response {
            invocation: 1,
            ok: true,
        },
        ToAgent::Response {
            invocation: u64::MAX,
            ok: false,
        },
        ToAgent::QuiescingComplete { invocation: 9 },
        ToAgent::HealthcheckConfirm { invocation: 10 },
        ToAgent::ErrorReport {
            recommended: Recovery::NoRecommendation,
        },
        ToAgent::ErrorReport {
            recommended: Recovery::ComponentRestart,
        },
        ToAgent::ErrorReport {
            recommended: Recovery::ComponentFailover,
        },
        ToAgent::ErrorReport {
            recommended: Recovery::NodeSwitchover,
        },
        ToAgent::ErrorReport {
            recommended: Recovery::NodeFailover,
        },
        ToAgent::ErrorReport {
            recommended: Recovery::NodeFailfast,
        },
        ToAgent::ErrorReport {
            recommended: Recovery::ApplicationRestart,
        },
        ToAgent::ErrorReport {
            recommended: Recovery::ClusterReset,
        },
        ToAgent::TrackProtectionGroup {
            si: "counter/si".into(),
        },
        ToAgent::CheckpointWrite {
            request: 3,
            checkpoint: "counter/si".into(),
            section: "value".into(),
            data: vec![0, 1, 2, 255],
            sync: true,
        },
        ToAgent::CheckpointWrite {
            request: 4,
            checkpoint: String::new(),
            section: String::new(),
            data: vec![],
            sync: false,
        },
        ToAgent::CheckpointRead {
            request: 5,
            checkpoint: "counter/si".into(),
        },
        ToAgent::CheckpointFlush { request: 6 },
        ToAgent::HealthcheckStart {
            request: 7,
            key: "main-loop".into(),
            period: std::time::Duration::from_millis(100),
            max_duration: std::time::Duration::new(u64::MAX, 999_999_999),
        },
        ToAgent::HealthcheckStop {
            request: 8,
            key: "main-loop".into(),
        },
        ToAgent::HealthcheckSelfConfirm { key: String::new() },
    ]
}

fn every_to_component() -> Vec<ToComponent> {
    let mut v = vec![
        ToComponent::Registered {
            ok: true,
            reason: None,
        },
        ToComponent::Registered {
            ok: false,
            reason: Some("unknown component".into()),
        },
        ToComponent::CsiRemove {
            invocation: 2,
            si: "a/si".into(),
            csi: "a/si/csi".into(),
        },
        ToComponent::Healthcheck { invocation: 3 },
        ToComponent::Terminate { invocation: 4 },
        ToComponent::ProtectionGroup {
            si: "a/si".into(),
            members: vec![
                ("a/sg/su-1/c".into(), HaState::Active),
                ("a/sg/su-2/c".into(), HaState::Standby),
                ("a/sg/su-3/c".into(), HaState::Quiescing),
                ("a/sg/su-4/c".into(), HaState::Quiesced),
            ],
        },
        ToComponent::ProtectionGroup {
            si: "a/si".into(),
            members: vec![],
        },
        ToComponent::CheckpointAck {
            request: 5,
            ok: true,
            reason: None,
        },
        ToComponent::CheckpointAck {
            request: 6,
            ok: false,
            reason: Some("no standby".into()),
        },
        ToComponent::CheckpointData {
            request: 7,
            sections: vec![("value".into(), vec![1, 2, 3]), ("empty".into(), vec![])],
        },
        ToComponent::CheckpointWriteRefused {
            request: 8,
            checkpoint: "a/si".into(),
            section: "value".into(),
            reason: "too big".into(),
        },
        ToComponent::HealthcheckAck {
            request: 9,
            ok: true,
            reason: None,
        },
        ToComponent::HealthcheckAck {
            request: 10,
            ok: false,
            reason: Some("already started".into()),
        },
    ];
    for ha in [
        HaState::Active,
        HaState::Standby,
        HaState::Quiescing,
        HaState::Quiesced,
    ] {
        v.push(ToComponent::CsiSet {
            invocation: 1,
            si: "a/si".into(),
            csi: "a/si/csi".into(),
            ha,
            attrs: vec![("port".into(), "7100".into()), ("é".into(), "ü€".into())],
            checkpoint: (ha == HaState::Active).then(|| vec![("value".into(), vec![0, 1, 255])]),
        });
    }
    v
}

#[test]
fn every_variant_round_trips_through_encode_and_decoder() {
    let mut d = Decoder::new();
    for msg in every_to_agent() {
        d.push(&encode(&msg));
        assert_eq!(d.next::<ToAgent>().unwrap(), Some(msg));
        assert_eq!(d.next::<ToAgent>().unwrap(), None);
    }
    for msg in every_to_component() {
        d.push(&encode(&msg));
        assert_eq!(d.next::<ToComponent>().unwrap(), Some(msg));
        assert_eq!(d.next::<ToComponent>().unwrap(), None);
    }
}

#[test]
fn every_variant_round_trips_through_write_and_read_frame() {
    let mut wire = Vec::new();
    for msg in every_to_agent() {
        write_frame(&mut wire, &msg).unwrap();
    }
    let mut r = Cursor::new(wire);
    for msg in every_to_agent() {
        assert_eq!(read_frame::<_, ToAgent>(&mut r).unwrap(), Some(msg));
    }
    assert!(read_frame::<_, ToAgent>(&mut r).unwrap().is_none());

    let mut wire = Vec::new();
    for msg in every_to_component() {
        write_frame(&mut wire, &msg).unwrap();
    }
    let mut r = Cursor::new(wire);
    for msg in every_to_component() {
        assert_eq!(read_frame::<_, ToComponent>(&mut r).unwrap(), Some(msg));
    }
    assert!(read_frame::<_, ToComponent>(&mut r).unwrap().is_none());
}

#[test]
fn frame_layout_is_length_version_postcard() {
    let msg = ToAgent::HealthcheckConfirm { invocation: 5 };
    let frame = encode(&msg);
    let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4);
    assert_eq!(frame[4], PROTOCOL_VERSION);
    // Variant index 3 (HealthcheckConfirm), then the varint 5.
    assert_eq!(&frame[5..], &[3, 5]);
}

/// A reader that claims a huge frame and then would give bytes forever, counting what was read.
struct Endless {
    header: [u8; 4],
    read: usize,
}

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(4096);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = self
                .header
                .get(self.read + i)
                .copied()
                .unwrap_or(PROTOCOL_VERSION);
        }
        self.read += n;
        Ok(n)
    }
}

#[test]
fn too_large_length_is_rejected_from_the_header() {
    for claimed in [MAX_FRAME as u32 + 1, u32::MAX] {
        let mut d = Decoder::new();
        d.push(&claimed.to_be_bytes());
        d.push(&[PROTOCOL_VERSION; 100]);
        assert_eq!(d.buffered(), 0, "nothing of a too-large frame is kept");
        match d.next::<ToAgent>() {
            Err(FrameError::TooLarge { len }) => assert_eq!(len, claimed as usize),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // The error sticks: the owner is expected to close, but must not be fooled into reading on.
        assert!(matches!(
            d.next::<ToAgent>(),
            Err(FrameError::TooLarge { .. })
        ));

        let mut r = Endless {
            header: claimed.to_be_bytes(),
            read: 0,
        };
        match read_frame::<_, ToAgent>(&mut r) {
            Err(FrameError::TooLarge { len }) => assert_eq!(len, claimed as usize),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(r.read <= 4096, "read_frame read {} bytes", r.read);
    }
}

/// A checkpoint write whose payload is exactly `payload_len` bytes.
fn write_of_payload(payload_len: usize) -> ToAgent {
    let mut data_len = payload_len;
    loop {
        let msg = ToAgent::CheckpointWrite {
            request: 1,
            checkpoint: "c".into(),
            section: "s".into(),
            data: vec![7; data_len],
            sync: true,
        };
        let got = encode(&msg).len() - 4;
        if got == payload_len {
            return msg;
        }
        data_len = data_len + payload_len - got;
    }
}

#[test]
fn max_frame_is_accepted_and_one_more_byte_is_not() {
    let at_limit = write_of_payload(MAX_FRAME);
    let mut wire = Vec::new();
    write_frame(&mut wire, &at_limit).unwrap();
    assert_eq!(wire.len(), MAX_FRAME + 4);
    let mut d = Decoder::new();
    d.push(&wire);
    assert_eq!(d.next::<ToAgent>().unwrap(), Some(at_limit.clone()));
    assert_eq!(
        read_frame::<_, ToAgent>(&mut Cursor::new(&wire)).unwrap(),
        Some(at_limit)
    );

    let over = write_of_payload(MAX_FRAME + 1);
    let mut wire = Vec::new();
    match write_frame(&mut wire, &over) {
        Err(FrameError::TooLarge { len }) => assert_eq!(len, MAX_FRAME + 1),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(wire.is_empty(), "nothing is written for a refused frame");
    assert!(matches!(
        try_encode(&over),
        Err(FrameError::TooLarge { .. })
    ));
    // `encode` does not check, but its frame is refused by the peer.
    let mut d = Decoder::new();
    d.push(&encode(&over));
    assert!(matches!(
        d.next::<ToAgent>(),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn wrong_version_is_rejected() {
    let mut frame = encode(&ToAgent::HealthcheckConfirm { invocation: 1 });
    frame[4] = PROTOCOL_VERSION + 1;
    let mut d = Decoder::new();
    // The version is checked as soon as its byte arrives, before the rest of the frame.
    d.push(&frame[..5]);
    match d.next::<ToAgent>() {
        Err(FrameError::BadVersion { got }) => assert_eq!(got, PROTOCOL_VERSION + 1),
        other => panic!("expected BadVersion, got {other:?}"),
    }
    match read_frame::<_, ToAgent>(&mut Cursor::new(&frame)) {
        Err(FrameError::BadVersion { got }) => assert_eq!(got, PROTOCOL_VERSION + 1),
        other => panic!("expected BadVersion, got {other:?}"),
    }
}

#[test]
fn empty_frame_is_malformed() {
    let mut d = Decoder::new();
    d.push(&[0, 0, 0, 0]);
    assert!(matches!(d.next::<ToAgent>(), Err(FrameError::Malformed(_))));
    assert!(matches!(
        read_frame::<_, ToAgent>(&mut Cursor::new([0u8, 0, 0, 0])),
        Err(FrameError::Malformed(_))
    ));
}

#[test]
fn garbage_payload_and_trailing_bytes_are_malformed() {
    // Variant index 200 does not exist.
    let mut d = Decoder::new();
    d.push(&[0, 0, 0, 2, PROTOCOL_VERSION, 200]);
    assert!(matches!(d.next::<ToAgent>(), Err(FrameError::Malformed(_))));

    // A valid message followed by a byte the message does not account for.
    let mut frame = encode(&ToAgent::HealthcheckConfirm { invocation: 1 });
    frame.push(0);
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    let mut d = Decoder::new();
    d.push(&frame);
    assert!(matches!(d.next::<ToAgent>(), Err(FrameError::Malformed(_))));
    assert!(matches!(
        read_frame::<_, ToAgent>(&mut Cursor::new(&frame)),
        Err(FrameError::Malformed(_))
    ));
}

#[test]
fn a_message_of_the_other_direction_is_not_silently_accepted() {
    // A ToComponent::CheckpointData read as ToAgent must fail or be a different message, never
    // crash; here the layouts differ and the decode fails.
    let frame = encode(&ToComponent::CheckpointData {
        request: 1,
        sections: vec![("s".into(), vec![1; 40])],
    });
    let mut d = Decoder::new();
    d.push(&frame);
    assert!(d.next::<ToAgent>().is_err());
}

#[test]
fn truncated_frame_is_none_until_complete() {
    let msg = ToComponent::CsiSet {
        invocation: 77,
        si: "app/si".into(),
        csi: "app/si/csi".into(),
        ha: HaState::Quiescing,
        attrs: vec![("k".into(), "v".into())],
        checkpoint: None,
    };
    let frame = encode(&msg);
    let mut d = Decoder::new();
    for &b in &frame[..frame.len() - 1] {
        d.push(&[b]);
        assert_eq!(d.next::<ToComponent>().unwrap(), None);
    }
    d.push(&frame[frame.len() - 1..]);
    assert_eq!(d.next::<ToComponent>().unwrap(), Some(msg));
    assert_eq!(d.next::<ToComponent>().unwrap(), None);
    assert_eq!(d.buffered(), 0);
}

#[test]
fn read_frame_distinguishes_clean_eof_from_truncation() {
    let frame = encode(&ToAgent::HealthcheckConfirm { invocation: 1 });
    assert!(read_frame::<_, ToAgent>(&mut Cursor::new(Vec::<u8>::new()))
        .unwrap()
        .is_none());
    for cut in 1..frame.len() {
        match read_frame::<_, ToAgent>(&mut Cursor::new(&frame[..cut])) {
            Err(FrameError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
            other => panic!("cut at {cut}: expected UnexpectedEof, got {other:?}"),
        }
    }
}

#[test]
fn frames_before_a_bad_one_are_still_delivered() {
    let a = ToAgent::HealthcheckConfirm { invocation: 1 };
    let b = ToAgent::Response {
        invocation: 2,
        ok: true,
    };
    let mut wire = encode(&a);
    wire.extend(encode(&b));
    wire.extend(u32::MAX.to_be_bytes());
    let mut d = Decoder::new();
    d.push(&wire);
    assert_eq!(d.next::<ToAgent>().unwrap(), Some(a));
    assert_eq!(d.next::<ToAgent>().unwrap(), Some(b));
    assert!(matches!(
        d.next::<ToAgent>(),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn errors_explain_themselves() {
    let e = FrameError::TooLarge { len: 5_000_000 };
    assert!(e.to_string().contains("5000000"));
    let e = FrameError::BadVersion { got: 9 };
    assert!(e.to_string().contains('9'));
}

/// LEB128, as postcard writes unsigned integers.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[test]
fn a_duration_that_overflows_is_malformed_not_a_panic() {
    // The layout of a valid HealthcheckStart, to build the invalid one from.
    let valid = encode(&ToAgent::HealthcheckStart {
        request: 1,
        key: String::new(),
        period: std::time::Duration::new(u64::MAX, 0),
        max_duration: std::time::Duration::ZERO,
    });
    let variant = valid[5];
    let mut body = vec![PROTOCOL_VERSION, variant, 1, 0];
    // period: u64::MAX seconds plus one more second's worth of nanoseconds.
    varint(u64::MAX, &mut body);
    varint(1_000_000_000, &mut body);
    // max_duration: zero.
    body.extend([0, 0]);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend(&body);
    let mut d = Decoder::new();
    d.push(&frame);
    assert!(matches!(d.next::<ToAgent>(), Err(FrameError::Malformed(_))));
    // The same bytes with nanoseconds in range decode: the test builds the layout right.
    let mut ok = vec![PROTOCOL_VERSION, variant, 1, 0];
    varint(u64::MAX, &mut ok);
    ok.extend([0, 0, 0]);
    assert_eq!(&valid[4..], &ok[..]);
}
