//! Property tests: the decoder is total over arbitrary input, and chunking never changes what
//! it decodes.

use nines_proto::*;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    // Mostly entity-path-like names, sometimes arbitrary unicode.
    prop_oneof![
        3 => "[a-z0-9/_-]{0,24}",
        1 => any::<String>(),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..256)
}

fn duration() -> impl Strategy<Value = std::time::Duration> {
    (any::<u64>(), 0..1_000_000_000u32).prop_map(|(s, n)| std::time::Duration::new(s, n))
}

fn ha() -> impl Strategy<Value = HaState> {
    prop_oneof![
        Just(HaState::Active),
        Just(HaState::Standby),
        Just(HaState::Quiescing),
        Just(HaState::Quiesced),
    ]
}

fn recovery() -> impl Strategy<Value = Recovery> {
    prop_oneof![
        Just(Recovery::NoRecommendation),
        Just(Recovery::ComponentRestart),
        Just(Recovery::ComponentFailover),
        Just(Recovery::NodeSwitchover),
        Just(Recovery::NodeFailover),
        Just(Recovery::NodeFailfast),
        Just(Recovery::ApplicationRestart),
        Just(Recovery::ClusterReset),
    ]
}

fn to_agent() -> impl Strategy<Value = ToAgent> {
    prop_oneof![
        (
            text(),
            any::<u32>(),
            any::<u8>(),
            proptest::collection::vec((text(), text(), ha()), 0..4)
        )
            .prop_map(|(component, pid, version, held)| ToAgent::Register {
                component,
                pid,
                version,
                held: held
                    .into_iter()
                    .map(|(si, csi, ha)| nines_proto::HeldCsi { si, csi, ha })
                    .collect(),
            }),
        (any::<u64>(), any::<bool>())
            .prop_map(|(invocation, ok)| ToAgent::Response { invocation, ok }),
        any::<u64>().prop_map(|invocation| ToAgent::QuiescingComplete { invocation }),
        any::<u64>().prop_map(|invocation| ToAgent::HealthcheckConfirm { invocation }),
        recovery().prop_map(|recommended| ToAgent::ErrorReport { recommended }),
        text().prop_map(|si| ToAgent::TrackProtectionGroup { si }),
        (any::<u64>(), text(), text(), bytes(), any::<bool>()).prop_map(
            |(request, checkpoint, section, data, sync)| ToAgent::CheckpointWrite {
                request,
                checkpoint,
                section,
                data,
                sync,
            }
        ),
        (any::<u64>(), text()).prop_map(|(request, checkpoint)| ToAgent::CheckpointRead {
            request,
            checkpoint
        }),
        any::<u64>().prop_map(|request| ToAgent::CheckpointFlush { request }),
        (any::<u64>(), text(), duration(), duration()).prop_map(
            |(request, key, period, max_duration)| ToAgent::HealthcheckStart {
                request,
                key,
                period,
                max_duration,
            }
        ),
        (any::<u64>(), text()).prop_map(|(request, key)| ToAgent::HealthcheckStop { request, key }),
        text().prop_map(|key| ToAgent::HealthcheckSelfConfirm { key }),
    ]
}

fn to_component() -> impl Strategy<Value = ToComponent> {
    prop_oneof![
        (any::<bool>(), prop::option::of(text()))
            .prop_map(|(ok, reason)| ToComponent::Registered { ok, reason }),
        (
            any::<u64>(),
            text(),
            text(),
            ha(),
            prop::collection::vec((text(), text()), 0..4),
            prop::option::of(prop::collection::vec(
                (text(), prop::collection::vec(any::<u8>(), 0..16)),
                0..3
            ))
        )
            .prop_map(
                |(invocation, si, csi, ha, attrs, checkpoint)| ToComponent::CsiSet {
                    invocation,
                    si,
                    csi,
                    ha,
                    attrs,
                    checkpoint,
                }
            ),
        (any::<u64>(), text(), text()).prop_map(|(invocation, si, csi)| {
            ToComponent::CsiRemove {
                invocation,
                si,
                csi,
            }
        }),
        any::<u64>().prop_map(|invocation| ToComponent::Healthcheck { invocation }),
        any::<u64>().prop_map(|invocation| ToComponent::Terminate { invocation }),
        (text(), prop::collection::vec((text(), ha()), 0..4))
            .prop_map(|(si, members)| ToComponent::ProtectionGroup { si, members }),
        (any::<u64>(), any::<bool>(), prop::option::of(text())).prop_map(
            |(request, ok, reason)| ToComponent::CheckpointAck {
                request,
                ok,
                reason
            }
        ),
        (any::<u64>(), prop::collection::vec((text(), bytes()), 0..4))
            .prop_map(|(request, sections)| ToComponent::CheckpointData { request, sections }),
        (any::<u64>(), text(), text(), text()).prop_map(
            |(request, checkpoint, section, reason)| ToComponent::CheckpointWriteRefused {
                request,
                checkpoint,
                section,
                reason,
            }
        ),
        (any::<u64>(), any::<bool>(), prop::option::of(text())).prop_map(
            |(request, ok, reason)| ToComponent::HealthcheckAck {
                request,
                ok,
                reason
            }
        ),
    ]
}

/// Split `bytes` into chunks whose sizes cycle through `sizes` (each at least 1).
fn chunks<'a>(bytes: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        let n = n.min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    out
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..64, 1..8)
}

/// Feed `input` in chunks and drain the decoder as a session owner would, stopping at the first
/// error. Returns how many messages came out. Must never panic.
fn drain<T: serde::de::DeserializeOwned>(input: &[u8], sizes: &[usize]) -> usize {
    let mut d = Decoder::new();
    let mut n = 0;
    for chunk in chunks(input, sizes) {
        d.push(chunk);
        loop {
            match d.next::<T>() {
                Ok(Some(_)) => n += 1,
                Ok(None) => break,
                Err(_) => return n,
            }
        }
        assert!(d.buffered() <= MAX_FRAME + 4 + 64);
    }
    n
}

/// Bytes that look like frames (valid header and version) around random payloads, so that the
/// postcard decoder itself is exercised, not only the header checks.
fn framed_garbage() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(bytes(), 1..6).prop_map(|payloads| {
        let mut out = Vec::new();
        for p in payloads {
            out.extend(((p.len() + 1) as u32).to_be_bytes());
            out.push(PROTOCOL_VERSION);
            out.extend(p);
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..2048), sizes in chunk_sizes()) {
        drain::<ToAgent>(&input, &sizes);
        drain::<ToComponent>(&input, &sizes);
    }

    #[test]
    fn framed_garbage_never_panics(input in framed_garbage(), sizes in chunk_sizes()) {
        drain::<ToAgent>(&input, &sizes);
        drain::<ToComponent>(&input, &sizes);
        // read_frame over the same bytes must not panic either.
        let mut r = std::io::Cursor::new(&input);
        while let Ok(Some(_)) = read_frame::<_, ToAgent>(&mut r) {}
        let mut r = std::io::Cursor::new(&input);
        while let Ok(Some(_)) = read_frame::<_, ToComponent>(&mut r) {}
    }

    #[test]
    fn to_agent_round_trips_in_any_chunking(msgs in prop::collection::vec(to_agent(), 1..8), sizes in chunk_sizes()) {
        let wire: Vec<u8> = msgs.iter().flat_map(encode).collect();
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for chunk in chunks(&wire, &sizes) {
            d.push(chunk);
            while let Some(m) = d.next::<ToAgent>().unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(&got, &msgs);
        prop_assert_eq!(d.buffered(), 0);
        let mut r = std::io::Cursor::new(&wire);
        for m in &msgs {
            let got = read_frame::<_, ToAgent>(&mut r).unwrap();
            prop_assert_eq!(got.as_ref(), Some(m));
        }
        prop_assert!(read_frame::<_, ToAgent>(&mut r).unwrap().is_none());
    }

    #[test]
    fn to_component_round_trips_in_any_chunking(msgs in prop::collection::vec(to_component(), 1..8), sizes in chunk_sizes()) {
        let wire: Vec<u8> = msgs.iter().flat_map(encode).collect();
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for chunk in chunks(&wire, &sizes) {
            d.push(chunk);
            while let Some(m) = d.next::<ToComponent>().unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(&got, &msgs);
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn valid_prefix_then_garbage_delivers_the_prefix(msgs in prop::collection::vec(to_agent(), 0..4), junk in prop::collection::vec(any::<u8>(), 1..64), sizes in chunk_sizes()) {
        let mut wire: Vec<u8> = msgs.iter().flat_map(encode).collect();
        wire.extend(&junk);
        // Every complete valid frame comes out; what follows may parse or fail, never panic.
        prop_assert!(drain::<ToAgent>(&wire, &sizes) >= msgs.len());
    }
}
