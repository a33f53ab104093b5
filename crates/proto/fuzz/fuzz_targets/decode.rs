//! Fuzz target: arbitrary bytes, in an arbitrary chunking, into the frame decoder, for both
//! directions of the protocol. The property is totality: no panic, no unbounded buffering.
//!
//! Run from crates/proto with a nightly toolchain and cargo-fuzz installed:
//!     cargo +nightly fuzz run decode
//! (see ../Cargo.toml for more).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nines_proto::{read_frame, Decoder, ToAgent, ToComponent, MAX_FRAME};

/// Drain `input` through a decoder as a session owner would: push a chunk, pull until `None`,
/// stop at the first error (the owner would close the session there).
fn drain<T: serde::de::DeserializeOwned>(input: &[u8], chunk: usize) {
    let mut d = Decoder::new();
    for piece in input.chunks(chunk) {
        d.push(piece);
        loop {
            match d.next::<T>() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(d.buffered() <= MAX_FRAME + 4 + chunk);
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, so the fuzzer explores chunk boundaries too.
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first) + 1;
    drain::<ToAgent>(input, chunk);
    drain::<ToComponent>(input, chunk);
    let mut r = input;
    while let Ok(Some(_)) = read_frame::<_, ToAgent>(&mut r) {}
    let mut r = input;
    while let Ok(Some(_)) = read_frame::<_, ToComponent>(&mut r) {}
});
