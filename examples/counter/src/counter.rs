//! The counter and its one rule: a value is acknowledged only after the checkpoint holds it.
//!
//! Kept apart from sockets and from the client library behind the [`Checkpoint`] trait, so the
//! rule that makes a failover safe (never go back in time, never lose an acknowledged
//! increment) is unit-tested with an in-memory checkpoint.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Section of the SI's checkpoint that holds the value.
pub const SECTION: &str = "counter";

/// Where the counter's value survives the process: in production the SI's checkpoint, which
/// the agent replicates to the standby's node.
pub trait Checkpoint: Send + Sync {
    /// The stored value, `None` if it was never written.
    fn load(&self) -> Result<Option<u64>, String>;
    /// Stores `value`; returns only once it would survive a failover.
    fn store(&self, value: u64) -> Result<(), String>;
}

/// Encodes a value as the checkpoint section's bytes (8 bytes, big-endian).
pub fn encode(value: u64) -> [u8; 8] {
    value.to_be_bytes()
}

/// Decodes the checkpoint section's bytes; anything but 8 bytes is refused rather than read
/// as 0, because continuing from a wrong value would go back in time.
pub fn decode(data: &[u8]) -> Result<u64, String> {
    let bytes: [u8; 8] = data.try_into().map_err(|_| {
        format!(
            "checkpoint section {SECTION:?} has {} bytes, expected 8",
            data.len()
        )
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Why a request was not served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CounterError {
    /// This component is not (or no longer) active for the CSI.
    #[error("not active")]
    NotActive,
    /// The checkpoint refused the write; the value was not changed and not acknowledged.
    #[error("checkpoint write failed: {0}")]
    Checkpoint(String),
    /// The counter reached `u64::MAX`; going on would wrap, i.e. go back.
    #[error("counter overflow")]
    Overflow,
}

/// The counter of one CSI, shared by the connections that serve it.
///
/// One lock covers the value and the checkpoint write: two concurrent increments are written
/// in the order they are acknowledged, so the checkpoint never holds less than the largest
/// value a client has seen.
pub struct Counter {
    state: Mutex<State>,
}

struct State {
    value: u64,
    serving: bool,
}

impl Default for Counter {
    fn default() -> Self {
        Counter::new()
    }
}

impl Counter {
    /// A counter that serves nothing until [`activate`](Self::activate).
    pub fn new() -> Counter {
        Counter {
            state: Mutex::new(State {
                value: 0,
                serving: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent (the value changes only after a
        // successful write), so a panic elsewhere must not stop the service.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Continue from the checkpoint and start serving. Called on every transition to active,
    /// also after a period as standby, because the other component may have counted since.
    pub fn activate(&self, checkpoint: &dyn Checkpoint) -> Result<u64, String> {
        let loaded = checkpoint.load()?.unwrap_or(0);
        let mut state = self.lock();
        state.value = loaded;
        state.serving = true;
        Ok(loaded)
    }

    /// Stop serving. Waits for an increment in progress (it holds the lock), so once this
    /// returns no further value will be acknowledged by this component: the quiescing
    /// component has finished its in-flight work.
    pub fn deactivate(&self) {
        self.lock().serving = false;
    }

    /// Whether requests are served.
    pub fn is_serving(&self) -> bool {
        self.lock().serving
    }

    /// Increments, writes the checkpoint, and only then returns the new value for the reply.
    pub fn increment(&self, checkpoint: &dyn Checkpoint) -> Result<u64, CounterError> {
        let mut state = self.lock();
        if !state.serving {
            return Err(CounterError::NotActive);
        }
        let next = state.value.checked_add(1).ok_or(CounterError::Overflow)?;
        checkpoint.store(next).map_err(CounterError::Checkpoint)?;
        state.value = next;
        Ok(next)
    }

    /// The current value, if serving.
    pub fn get(&self) -> Result<u64, CounterError> {
        let state = self.lock();
        if state.serving {
            Ok(state.value)
        } else {
            Err(CounterError::NotActive)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// An in-memory checkpoint shared by "two components", as the agents' replication makes
    /// the real one look; it can be told to fail writes.
    #[derive(Default)]
    pub(crate) struct MemCheckpoint {
        pub(crate) data: Mutex<Option<Vec<u8>>>,
        pub(crate) fail_writes: AtomicBool,
    }

    impl Checkpoint for MemCheckpoint {
        fn load(&self) -> Result<Option<u64>, String> {
            match &*self.data.lock().unwrap_or_else(PoisonError::into_inner) {
                Some(bytes) => decode(bytes).map(Some),
                None => Ok(None),
            }
        }
        fn store(&self, value: u64) -> Result<(), String> {
            if self.fail_writes.load(Ordering::SeqCst) {
                return Err("replication failed".into());
            }
            *self.data.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(encode(value).to_vec());
            Ok(())
        }
    }

    #[test]
    fn serves_only_while_active() {
        let ck = MemCheckpoint::default();
        let c = Counter::new();
        assert_eq!(c.increment(&ck), Err(CounterError::NotActive));
        assert_eq!(c.get(), Err(CounterError::NotActive));
        assert_eq!(c.activate(&ck), Ok(0));
        assert_eq!(c.increment(&ck), Ok(1));
        assert_eq!(c.increment(&ck), Ok(2));
        assert_eq!(c.get(), Ok(2));
        c.deactivate();
        assert!(!c.is_serving());
        assert_eq!(c.increment(&ck), Err(CounterError::NotActive));
    }

    #[test]
    fn a_failover_continues_from_the_last_acknowledged_value() {
        let ck = Arc::new(MemCheckpoint::default());
        let first = Counter::new();
        let second = Counter::new();
        first.activate(&*ck).expect("activate");
        let mut last = 0;
        for _ in 0..5 {
            last = first.increment(&*ck).expect("inc");
        }
        // The first dies without any goodbye; the second takes over from the checkpoint.
        assert_eq!(second.activate(&*ck), Ok(last));
        assert_eq!(second.increment(&*ck), Ok(last + 1));
        // Switch back: the first was standby meanwhile and must re-read, not reuse its value.
        second.deactivate();
        assert_eq!(first.activate(&*ck), Ok(last + 1));
        assert_eq!(first.increment(&*ck), Ok(last + 2));
    }

    #[test]
    fn a_failed_write_is_neither_applied_nor_acknowledged() {
        let ck = MemCheckpoint::default();
        let c = Counter::new();
        c.activate(&ck).expect("activate");
        assert_eq!(c.increment(&ck), Ok(1));
        ck.fail_writes.store(true, Ordering::SeqCst);
        assert!(matches!(c.increment(&ck), Err(CounterError::Checkpoint(_))));
        assert_eq!(c.get(), Ok(1));
        ck.fail_writes.store(false, Ordering::SeqCst);
        assert_eq!(c.increment(&ck), Ok(2));
    }

    #[test]
    fn concurrent_increments_are_checkpointed_in_order() {
        let ck = Arc::new(MemCheckpoint::default());
        let c = Arc::new(Counter::new());
        c.activate(&*ck).expect("activate");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (c, ck) = (Arc::clone(&c), Arc::clone(&ck));
                std::thread::spawn(move || {
                    let mut last = 0;
                    for _ in 0..250 {
                        let v = c.increment(&*ck).expect("inc");
                        assert!(v > last, "values seen by one client only grow");
                        last = v;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(c.get(), Ok(1000));
        assert_eq!(ck.load(), Ok(Some(1000)));
    }

    #[test]
    fn overflow_is_refused_rather_than_wrapping() {
        let ck = MemCheckpoint::default();
        ck.store(u64::MAX).expect("store");
        let c = Counter::new();
        assert_eq!(c.activate(&ck), Ok(u64::MAX));
        assert_eq!(c.increment(&ck), Err(CounterError::Overflow));
    }

    #[test]
    fn bad_checkpoint_bytes_are_refused() {
        assert_eq!(decode(&encode(7)), Ok(7));
        assert!(decode(&[1, 2, 3]).is_err());
        let ck = MemCheckpoint::default();
        *ck.data.lock().expect("lock") = Some(vec![0; 3]);
        assert!(Counter::new().activate(&ck).is_err());
    }
}
