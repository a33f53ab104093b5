//! Checkpoints: named sets of sections that an active component writes and its successor reads.
//!
//! On one host every component of an SI talks to the same agent, so storing the sections in the
//! agent's memory is enough for a standby (or a restarted active) to continue from them.
//! Replication to other nodes' agents (issue 4) goes behind this same interface, which is why
//! sessions only ever see [`CheckpointStore::write`], [`CheckpointStore::flush`] and
//! [`CheckpointStore::read`], and say with each write which [`Durability`] its writer waits
//! for:
//!
//! * [`Durability::Standby`] (a sync write): acknowledged once a standby on any node can read
//!   it. On one host the shared store is that place, so storing is enough; with replication
//!   the acknowledgement waits for the standby's node.
//! * [`Durability::Local`] (an async write): not acknowledged at all (only a refusal is
//!   answered); with replication, it is queued for the standby's node in the background.
//!
//! Both survive a crash of the component: the store lives in the agent. Only `Standby` will be
//! a promise against the loss of the node. [`CheckpointStore::flush`] is the barrier that
//! turns earlier `Local` writes into `Standby` ones (on one host there is nothing to wait for).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

/// Longest wait for a replicated write's acknowledgement before the writer is told it failed.
/// A replicator fails its pending writes when it loses its connection (within the link's
/// silence limit), so this only bounds a replicator that never answers.
pub const REPLICATION_TIMEOUT: Duration = Duration::from_secs(10);

/// A checkpoint write travelling to other nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaWrite {
    /// The checkpoint's name.
    pub checkpoint: String,
    /// The section.
    pub section: String,
    /// Its new contents.
    pub data: Vec<u8>,
}

/// Carries this node's checkpoint writes to the nodes of the standbys (a cluster node plugs
/// one in with [`AgentHandle::set_replicator`](crate::AgentHandle::set_replicator); on one
/// host there is none, the store being shared).
///
/// Writes must reach every other node in the order they are given, so that a standby's copy
/// is always a state the active had.
pub trait Replicator: Send + Sync + 'static {
    /// Sends `write` (or, with `None`, a barrier that is acknowledged only after everything
    /// sent before it). With `wait`, returns the acknowledgement: `Ok` once every node that
    /// must have it has it, or why not (also when there is no connection to send it on).
    fn replicate(
        &self,
        write: Option<ReplicaWrite>,
        wait: bool,
    ) -> Option<oneshot::Receiver<Result<(), String>>>;
}

/// Upper bound of the postcard overhead of one section in a `CheckpointData` reply (two length
/// varints), plus the reply's own fields, so that a checkpoint that was accepted can be read.
const SECTION_OVERHEAD: usize = 10;
const REPLY_OVERHEAD: usize = 32;

/// What a writer waits for before its write counts as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Readable by a standby on any node (sync write).
    Standby,
    /// Stored by this host; replication may follow later (async write).
    Local,
}

impl Durability {
    /// The durability a `CheckpointWrite` with this `sync` flag asks for.
    pub(crate) fn of_write(sync: bool) -> Durability {
        if sync {
            Durability::Standby
        } else {
            Durability::Local
        }
    }
}

/// Checkpoint name → section → bytes.
#[derive(Debug, Default)]
pub(crate) struct CheckpointStore {
    checkpoints: Mutex<BTreeMap<String, BTreeMap<String, Vec<u8>>>>,
}

impl CheckpointStore {
    /// Create or overwrite a section, as durably as `durability` asks; `Ok` means the writer
    /// may be told so. Refused when the whole checkpoint would no longer fit in one reply
    /// frame, because it could then never be read back.
    ///
    /// On one host storing is all either durability needs. Replication (issue 4) plugs in
    /// here: a `Standby` write then completes once the standby's node has it, a `Local` one
    /// is queued for it.
    pub(crate) fn write(
        &self,
        checkpoint: &str,
        section: &str,
        data: Vec<u8>,
        durability: Durability,
    ) -> Result<(), String> {
        let _ = durability; // one host: the shared store is readable by every standby
        let mut all = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
        let sections = all.entry(checkpoint.to_string()).or_default();
        let size = |name: &str, data: &[u8]| name.len() + data.len() + SECTION_OVERHEAD;
        let others: usize = sections
            .iter()
            .filter(|(name, _)| name.as_str() != section)
            .map(|(name, data)| size(name, data))
            .sum();
        let total = REPLY_OVERHEAD + others + size(section, &data);
        if total > nines_proto::MAX_FRAME {
            if sections.is_empty() {
                all.remove(checkpoint);
            }
            return Err(format!(
                "checkpoint {checkpoint} would hold {total} bytes, more than the {} a read can return",
                nines_proto::MAX_FRAME
            ));
        }
        sections.insert(section.to_string(), data);
        Ok(())
    }

    /// Returns once every `Local` write stored before it is as durable as a `Standby` one.
    /// On one host they already are; with replication it waits for the queued writes to
    /// reach the standby's node, and fails with the reason if they cannot.
    pub(crate) fn flush(&self) -> Result<(), String> {
        Ok(())
    }

    /// The sections of `checkpoint` to send along with an activation whose CSI carries
    /// `attrs`, or `None` when they would not fit in the frame beside the rest of the request
    /// (the component then reads them with a `CheckpointRead`, which has the frame to itself).
    pub(crate) fn snapshot_for_activation(
        &self,
        checkpoint: &str,
        attrs: &[(String, String)],
    ) -> Option<Vec<(String, Vec<u8>)>> {
        let sections = self.read(checkpoint);
        let attrs: usize = attrs
            .iter()
            .map(|(k, v)| k.len() + v.len() + SECTION_OVERHEAD)
            .sum();
        let data: usize = sections
            .iter()
            .map(|(k, v)| k.len() + v.len() + SECTION_OVERHEAD)
            .sum();
        // The SI and CSI paths are bounded by the model, well under a kilobyte together.
        let total = REPLY_OVERHEAD + 4 * 1024 + attrs + data;
        (total <= nines_proto::MAX_FRAME).then_some(sections)
    }

    /// Every section of every checkpoint.
    pub(crate) fn all(&self) -> Vec<ReplicaWrite> {
        let all = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .flat_map(|(c, sections)| {
                sections.iter().map(|(s, d)| ReplicaWrite {
                    checkpoint: c.clone(),
                    section: s.clone(),
                    data: d.clone(),
                })
            })
            .collect()
    }

    /// Every section of a checkpoint, sorted by section id (none for an unknown checkpoint).
    pub(crate) fn read(&self, checkpoint: &str) -> Vec<(String, Vec<u8>)> {
        let all = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
        all.get(checkpoint)
            .map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_overwrite_read_sorted() {
        let store = CheckpointStore::default();
        store.write("c", "b", vec![2], Durability::Standby).unwrap();
        store.write("c", "a", vec![1], Durability::Local).unwrap();
        store.write("c", "b", vec![3], Durability::Local).unwrap();
        assert_eq!(
            store.read("c"),
            vec![("a".to_string(), vec![1]), ("b".to_string(), vec![3])]
        );
        assert!(store.read("other").is_empty());
    }

    #[test]
    fn an_activation_carries_the_checkpoint_only_when_it_fits() {
        let store = CheckpointStore::default();
        assert_eq!(store.snapshot_for_activation("c", &[]), Some(vec![]));
        store.write("c", "a", vec![7], Durability::Standby).unwrap();
        assert_eq!(
            store.snapshot_for_activation("c", &[("port".into(), "1".into())]),
            Some(vec![("a".to_string(), vec![7])])
        );
        store
            .write(
                "c",
                "b",
                vec![0; nines_proto::MAX_FRAME - 1024],
                Durability::Local,
            )
            .unwrap();
        assert_eq!(store.snapshot_for_activation("c", &[]), None);
        // A read, which has the frame to itself, still returns it.
        assert_eq!(store.read("c").len(), 2);
    }

    #[test]
    fn refuses_what_could_not_be_read_back() {
        let store = CheckpointStore::default();
        let big = vec![0u8; nines_proto::MAX_FRAME / 2];
        store
            .write("c", "a", big.clone(), Durability::Standby)
            .unwrap();
        assert!(store
            .write("c", "b", big.clone(), Durability::Local)
            .is_err());
        // Overwriting a section replaces its size instead of adding to it.
        store.write("c", "a", big, Durability::Local).unwrap();
        assert_eq!(store.read("c").len(), 1);
        assert!(store
            .write(
                "d",
                "x",
                vec![0; nines_proto::MAX_FRAME],
                Durability::Standby
            )
            .is_err());
        assert!(store.read("d").is_empty());
    }
}
