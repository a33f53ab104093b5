//! Sealed frames: the bytes of an established link, with no I/O, so that they can be tested
//! (and fuzzed) without sockets.
//!
//! Every frame after the handshake is an ordinary `nines-proto` frame (length, version byte,
//! postcard) whose message is a [`Sealed`]: the postcard bytes of a [`Body`] and an
//! HMAC-SHA256 tag over `sequence number ‖ body`, keyed with the session key of that
//! direction. The sequence number is not sent: both ends count the frames of each direction
//! from zero, so a dropped, replayed, reordered or injected frame fails its tag.

use hmac::{KeyInit, Mac};
use nines_proto::{Decoder, FrameError, MAX_FRAME};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// HMAC-SHA256, the one MAC of this crate.
pub(crate) type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Bytes of a tag.
pub(crate) const TAG: usize = 32;

/// Largest postcard body of one message, so that its sealed frame (version byte, length of the
/// body as a varint of at most 3 bytes, body, tag) fits in [`MAX_FRAME`]. A larger message is
/// refused at `send` and the link stays up.
pub const MAX_MESSAGE: usize = MAX_FRAME - 1 - 3 - TAG;

/// What a sealed frame carries.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(crate) enum Body<M> {
    /// Nothing but a sign of life, sent when the link was otherwise idle for an interval.
    Heartbeat,
    /// An application message.
    Msg(M),
}

/// The message of every frame after the handshake, as sent.
#[derive(Serialize)]
struct Sealed<'a> {
    #[serde(serialize_with = "ser_bytes")]
    body: &'a [u8],
    tag: [u8; TAG],
}

/// The same message as received (the decoder hands out owned messages).
#[derive(Deserialize)]
struct Opened {
    #[serde(deserialize_with = "de_bytes")]
    body: Vec<u8>,
    tag: [u8; TAG],
}

// Bytes as postcard bytes (a varint length, then the bytes), decoded in one piece: serde's
// default for a byte sequence would visit the body byte by byte.
fn ser_bytes<S: Serializer>(b: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(b)
}

fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E>(self, v: &[u8]) -> Result<Self::Value, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Self::Value, E> {
            Ok(v)
        }
    }
    d.deserialize_byte_buf(V)
}

/// The postcard body of one message, checked against [`MAX_MESSAGE`]; encoding happens in the
/// caller's task so that a bad message is the caller's error, not the link's.
pub(crate) fn encode_body<M: Serialize>(body: &Body<M>) -> Result<Vec<u8>, FrameError> {
    let bytes = postcard::to_allocvec(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE {
        return Err(FrameError::TooLarge { len: bytes.len() });
    }
    Ok(bytes)
}

/// The sending end of one direction: numbers and tags frames.
pub(crate) struct Sealer {
    mac: HmacSha256,
    seq: u64,
}

impl Sealer {
    /// A sealer with the session key of this direction.
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        Sealer {
            mac: keyed(key),
            seq: 0,
        }
    }

    /// The complete frame (length prefix included) for one encoded body.
    pub(crate) fn seal(&mut self, body: &[u8]) -> Result<Vec<u8>, FrameError> {
        let tag = tag(&self.mac, self.seq, body);
        let frame = nines_proto::try_encode(&Sealed { body, tag })?;
        self.seq += 1;
        Ok(frame)
    }
}

/// The receiving end of one direction: reassembles frames from bytes in any chunking, checks
/// each tag against the expected sequence number, and decodes the body.
pub(crate) struct Opener {
    decoder: Decoder,
    mac: HmacSha256,
    seq: u64,
    failed: Option<String>,
}

impl Opener {
    /// An opener with the session key of this direction.
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        Opener {
            decoder: Decoder::new(),
            mac: keyed(key),
            seq: 0,
            failed: None,
        }
    }

    /// Bytes as they came from the socket.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.decoder.push(bytes);
    }

    /// The next authentic body, `Ok(None)` when more bytes are needed, or why the link must
    /// end. Once it failed it keeps failing: a stream with one bad frame is not trusted again.
    pub(crate) fn next<M: DeserializeOwned>(&mut self) -> Result<Option<Body<M>>, String> {
        if let Some(why) = &self.failed {
            return Err(why.clone());
        }
        let result = self.open();
        if let Err(why) = &result {
            self.failed = Some(why.clone());
        }
        result
    }

    fn open<M: DeserializeOwned>(&mut self) -> Result<Option<Body<M>>, String> {
        let Some(sealed) = self.decoder.next::<Opened>().map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let mut mac = self.mac.clone();
        mac.update(&self.seq.to_be_bytes());
        mac.update(&sealed.body);
        mac.verify_slice(&sealed.tag).map_err(|_| {
            format!(
                "frame {} fails its authentication tag (forged, altered, replayed or reordered)",
                self.seq
            )
        })?;
        self.seq += 1;
        match postcard::take_from_bytes::<Body<M>>(&sealed.body) {
            Ok((body, [])) => Ok(Some(body)),
            Ok((_, rest)) => Err(format!(
                "frame {}: {} trailing bytes after the message",
                self.seq - 1,
                rest.len()
            )),
            Err(e) => Err(format!("frame {}: malformed message: {e}", self.seq - 1)),
        }
    }
}

/// A MAC instance keyed once, cloned per frame (cheaper than keying each time).
fn keyed(key: &[u8; 32]) -> HmacSha256 {
    <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn tag(mac: &HmacSha256, seq: u64, body: &[u8]) -> [u8; TAG] {
    let mut mac = mac.clone();
    mac.update(&seq.to_be_bytes());
    mac.update(body);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K: [u8; 32] = [7; 32];

    fn frames(msgs: &[Vec<String>]) -> Vec<u8> {
        let mut sealer = Sealer::new(&K);
        let mut out = Vec::new();
        for m in msgs {
            let body = encode_body(&Body::Msg(m)).expect("small");
            out.extend(sealer.seal(&body).expect("fits"));
            out.extend(sealer.seal(&[0]).expect("heartbeat fits"));
        }
        out
    }

    /// Pull every body; returns how many there were (heartbeats included).
    fn drain(opener: &mut Opener, got: &mut Vec<Vec<String>>) -> Result<usize, String> {
        let mut bodies = 0;
        while let Some(body) = opener.next::<Vec<String>>()? {
            bodies += 1;
            if let Body::Msg(m) = body {
                got.push(m);
            }
        }
        Ok(bodies)
    }

    proptest! {
        /// Any chunking of a valid stream gives back the messages, in order.
        #[test]
        fn roundtrip_any_chunking(
            msgs in proptest::collection::vec(proptest::collection::vec(".{0,20}", 0..4), 0..8),
            chunk in 1usize..50,
        ) {
            let stream = frames(&msgs);
            let mut opener = Opener::new(&K);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                opener.push(piece);
                drain(&mut opener, &mut got).expect("valid stream");
            }
            prop_assert_eq!(got, msgs);
        }

        /// Flipping any bit of a valid stream never yields a message that was not sent: the
        /// stream fails (or, for a bit in a length, waits for bytes that never come).
        #[test]
        fn any_bit_flip_is_caught(
            msgs in proptest::collection::vec(proptest::collection::vec("[a-z]{0,8}", 1..3), 1..4),
            pos in any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut stream = frames(&msgs);
            let i = pos.index(stream.len());
            stream[i] ^= 1 << bit;
            let mut opener = Opener::new(&K);
            opener.push(&stream);
            let mut got = Vec::new();
            let result = drain(&mut opener, &mut got);
            prop_assert!(got.len() <= msgs.len());
            prop_assert_eq!(&got[..], &msgs[..got.len()]);
            if let Ok(bodies) = result {
                // Only a corrupted length can leave the stream merely incomplete, and then
                // not every frame (message or heartbeat) came out.
                prop_assert!(bodies < 2 * msgs.len());
            }
        }

        /// Random bytes never panic and never produce a message.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut opener = Opener::new(&K);
            opener.push(&bytes);
            let mut got = Vec::new();
            let _ = drain(&mut opener, &mut got);
            prop_assert!(got.is_empty());
        }
    }

    #[test]
    fn wrong_key_and_replay_are_refused() {
        let stream = frames(&[vec!["a".into()]]);
        let mut other = Opener::new(&[8; 32]);
        other.push(&stream);
        let err = other.next::<Vec<String>>().expect_err("other key");
        assert!(err.contains("authentication tag"), "{err}");

        // The same frame twice: the second is a replay.
        let mut sealer = Sealer::new(&K);
        let one = sealer.seal(&[0]).expect("fits");
        let mut opener = Opener::new(&K);
        opener.push(&one);
        opener.push(&one);
        assert!(matches!(opener.next::<()>(), Ok(Some(Body::Heartbeat))));
        assert!(opener.next::<()>().is_err());
        assert!(opener.next::<()>().is_err(), "stays failed");
    }

    #[test]
    fn largest_message_fits_a_frame() {
        let body = vec![0u8; MAX_MESSAGE];
        let frame = Sealer::new(&K).seal(&body).expect("fits exactly");
        assert!(frame.len() - 4 <= MAX_FRAME);
        let mut opener = Opener::new(&K);
        opener.push(&frame);
        // A body of zeros is Heartbeat followed by trailing bytes: refused, but authentic.
        let err = opener.next::<()>().expect_err("trailing");
        assert!(err.contains("trailing"), "{err}");
    }
}
