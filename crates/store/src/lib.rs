//! The director's persistent state store.
//!
//! The director keeps what must survive its own restart (admin states, assignments, the pids of
//! the components it started, ...) in a [`Store`]: a small key-value map with string keys shaped
//! like entity paths (`admin/counter/sg/su-1`, `assign/counter/si`,
//! `pids/counter/sg/su-1/counterd`) and byte values the caller serializes (serde_json, postcard).
//! Two backends sit behind one interface:
//!
//! - [`RedbStore`]: an embedded redb file, `state.redb` in the director's state directory, for a
//!   single host (`nines run`).
//! - [`EtcdStore`]: etcd, for a real cluster, where several directors compete for leadership
//!   ([`EtcdStore::campaign`]) and only the leader writes.
//!
//! The operations are [`Store::get`], [`Store::list`] (sorted by key) and [`Store::commit`], an
//! atomic batch of [`Change`]s guarded by a fencing [`Token`].
//!
//! # Invariants
//!
//! - **A commit is all or nothing.** When `commit` returns `Ok`, every change of the batch is
//!   durable (redb: fsynced; etcd: committed by a quorum); after an error none is visible, except
//!   after an etcd timeout, when the whole batch may have landed (see [`StoreError::Backend`]).
//!   Never a part of it. Changes apply in order, so a later change of the same key wins.
//! - **A token guarantees that its holder was the leader when the commit was applied.** On etcd
//!   the token is the leader's election key and its create revision, and the transaction itself
//!   compares them: a deposed leader (lease expired or revoked, resigned, superseded) gets
//!   [`StoreError::Fenced`] and changes nothing, even if it does not know yet that it lost. No
//!   clock is trusted for this. Tokens of later leaders have larger [`Token::epoch`]s. On redb
//!   the token is trivially the single owner's: the director's flock on its state directory (and
//!   redb's own lock on the file) already excludes a second writer.
//! - **Both backends behave the same** for the same calls, limits included ([`MAX_KEY_LEN`],
//!   [`MAX_VALUE_LEN`], [`MAX_BATCH_CHANGES`], [`MAX_BATCH_BYTES`], chosen to fit etcd's
//!   defaults), so code that works on one host does not break on a cluster.
//! - **Nothing panics on input.** A bad key, an oversized batch, a corrupt or foreign
//!   `state.redb` or an unreachable etcd is a [`StoreError`] that names the backend, the
//!   operation and the key (or the file).
//!
//! # Deliberately absent
//!
//! - Reads are not fenced: a deposed leader may still read (consistent, linearizable on etcd)
//!   state; it just cannot write it.
//! - No watches on state keys, no transactions that read and then write, no compare-and-swap on
//!   values: the leader is the only writer, so it never needs to merge someone else's writes.
//! - No schema: values are opaque bytes; the caller versions its own encodings.
//! - No caching: every `get` and `list` asks the backend.

mod error;
mod etcd;
mod leadership;
mod redb_store;
#[cfg(feature = "testing")]
pub mod testing;

use std::time::Duration;

pub use error::StoreError;
pub use etcd::{EtcdOptions, EtcdStore};
pub use leadership::{Leadership, LostReason};
pub use redb_store::{RedbStore, STATE_FILE};

/// The longest key, in bytes. Generous for entity paths, small enough that a full batch of keys
/// stays far below etcd's request limit.
pub const MAX_KEY_LEN: usize = 1024;
/// The largest value, in bytes. etcd refuses requests over 1.5 MiB by default
/// (`--max-request-bytes`); one value must leave room for the rest of its batch.
pub const MAX_VALUE_LEN: usize = 512 * 1024;
/// The most changes one commit may carry (after collapsing changes of the same key): etcd's
/// default `--max-txn-ops` is 128.
pub const MAX_BATCH_CHANGES: usize = 128;
/// The most key and value bytes one commit may carry, below etcd's default 1.5 MiB request limit.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// The lease TTL a leader keeps when the caller has no better idea: short enough that a standby
/// director takes over about a second after the leader dies, long enough to ride out a
/// scheduling hiccup. etcd may grant more than asked (its minimum is about 1.5 election
/// timeouts, rounded up to whole seconds); [`Leadership::ttl`] is what it granted.
pub const DEFAULT_LEADER_TTL: Duration = Duration::from_secs(1);

/// One change of a [`Store::commit`] batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Set `key` to this value, creating it if needed.
    Put(String, Vec<u8>),
    /// Remove `key`; removing a key that does not exist is not an error.
    Delete(String),
}

impl Change {
    /// The key this change is about.
    pub fn key(&self) -> &str {
        match self {
            Change::Put(key, _) | Change::Delete(key) => key,
        }
    }
}

/// Proof of the right to write, checked by every commit. See the crate documentation for what
/// it guarantees. Obtain one from [`RedbStore::owner_token`] or a [`Leadership`]; tokens cannot
/// be made up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token(TokenKind);

#[derive(Clone, Debug, PartialEq, Eq)]
enum TokenKind {
    /// The single owner of an embedded store.
    Owner,
    /// An etcd election's leader: its key (`<namespace>/election/<name>/<lease hex>`), that key's
    /// create revision, and the lease that keeps it.
    Leader {
        key: String,
        revision: i64,
        lease: i64,
    },
}

impl Token {
    fn owner() -> Token {
        Token(TokenKind::Owner)
    }

    fn leader(key: String, revision: i64, lease: i64) -> Token {
        Token(TokenKind::Leader {
            key,
            revision,
            lease,
        })
    }

    /// A number that grows with each new leadership of a cluster (the etcd create revision of
    /// the leader's key), so that anyone who receives orders stamped with it (an agent, later)
    /// can refuse those of an older leader. Always 0 for the owner of an embedded store.
    pub fn epoch(&self) -> u64 {
        match &self.0 {
            TokenKind::Owner => 0,
            TokenKind::Leader { revision, .. } => u64::try_from(*revision).unwrap_or(0),
        }
    }

    /// The etcd lease id the leadership hangs on; `None` for an embedded store.
    pub fn lease(&self) -> Option<i64> {
        match &self.0 {
            TokenKind::Owner => None,
            TokenKind::Leader { lease, .. } => Some(*lease),
        }
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            TokenKind::Owner => write!(f, "owner"),
            TokenKind::Leader { key, revision, .. } => write!(f, "leader {key}@{revision}"),
        }
    }
}

/// A store of either backend, so the director holds one type whichever it runs on (native async
/// trait methods are not object safe, and two backends do not need a trait).
#[derive(Clone, Debug)]
pub enum Store {
    /// One host.
    Redb(RedbStore),
    /// A cluster.
    Etcd(EtcdStore),
}

impl Store {
    /// The value of `key`, or `None` if it is not set.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Redb(s) => s.get(key).await,
            Store::Etcd(s) => s.get(key).await,
        }
    }

    /// Every key starting with `prefix` and its value, sorted by key (bytewise). An empty prefix
    /// lists everything.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        match self {
            Store::Redb(s) => s.list(prefix).await,
            Store::Etcd(s) => s.list(prefix).await,
        }
    }

    /// Applies `changes` atomically if `token` is still valid; see the crate invariants.
    pub async fn commit(&self, token: &Token, changes: Vec<Change>) -> Result<(), StoreError> {
        match self {
            Store::Redb(s) => s.commit(token, changes).await,
            Store::Etcd(s) => s.commit(token, changes).await,
        }
    }

    /// Becomes the leader of election `name` as `node_id`, waiting as long as someone else is.
    /// On redb this returns at once with the owner's token and a leadership that is never lost,
    /// so the director runs the same code on one host and on a cluster.
    pub async fn campaign(
        &self,
        name: &str,
        node_id: &str,
        ttl: Duration,
    ) -> Result<Leadership, StoreError> {
        match self {
            Store::Redb(s) => Ok(Leadership::owner(s.owner_token(), node_id)),
            Store::Etcd(s) => s.campaign(name, node_id, ttl).await,
        }
    }
}

/// Where a request went, for error messages: `redb /path/state.redb`, `etcd http://...`.
pub(crate) type BackendName = str;

/// Checks a key (or, with `allow_empty`, a prefix) against the rules both backends share.
pub(crate) fn check_key(
    backend: &BackendName,
    op: &'static str,
    key: &str,
    allow_empty: bool,
) -> Result<(), StoreError> {
    let reason = if key.is_empty() && !allow_empty {
        Some("a key must not be empty".to_string())
    } else if key.len() > MAX_KEY_LEN {
        Some(format!(
            "a key must be at most {MAX_KEY_LEN} bytes, this one is {}",
            key.len()
        ))
    } else if key.chars().any(char::is_control) {
        Some("a key must not contain control characters".to_string())
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(StoreError::Invalid {
            backend: backend.to_string(),
            op,
            key: key.to_string(),
            reason,
        }),
    }
}

/// Validates a batch and collapses it to at most one change per key (the last one wins), in key
/// order. etcd refuses a transaction that touches a key twice, and the limits are checked on
/// what will actually be written.
pub(crate) fn prepare_batch(
    backend: &BackendName,
    changes: Vec<Change>,
) -> Result<Vec<Change>, StoreError> {
    let what = batch_name(&changes);
    let mut last: std::collections::BTreeMap<String, Change> = std::collections::BTreeMap::new();
    for change in changes {
        check_key(backend, "commit", change.key(), false)?;
        if let Change::Put(key, value) = &change {
            if value.len() > MAX_VALUE_LEN {
                return Err(StoreError::Invalid {
                    backend: backend.to_string(),
                    op: "commit",
                    key: key.clone(),
                    reason: format!(
                        "a value must be at most {MAX_VALUE_LEN} bytes, this one is {}",
                        value.len()
                    ),
                });
            }
        }
        last.insert(change.key().to_string(), change);
    }
    let batch: Vec<Change> = last.into_values().collect();
    let bytes: usize = batch
        .iter()
        .map(|c| match c {
            Change::Put(k, v) => k.len() + v.len(),
            Change::Delete(k) => k.len(),
        })
        .sum();
    let reason = if batch.len() > MAX_BATCH_CHANGES {
        Some(format!(
            "a commit may change at most {MAX_BATCH_CHANGES} keys, this one changes {}",
            batch.len()
        ))
    } else if bytes > MAX_BATCH_BYTES {
        Some(format!(
            "a commit may carry at most {MAX_BATCH_BYTES} bytes, this one carries {bytes}"
        ))
    } else {
        None
    };
    match reason {
        None => Ok(batch),
        Some(reason) => Err(StoreError::Invalid {
            backend: backend.to_string(),
            op: "commit",
            key: what,
            reason,
        }),
    }
}

/// Names a batch in an error message by its keys (the first few of them).
pub(crate) fn batch_name(changes: &[Change]) -> String {
    const SHOWN: usize = 3;
    let mut keys: Vec<&str> = changes.iter().take(SHOWN).map(Change::key).collect();
    if changes.len() > SHOWN {
        keys.push("...");
    }
    match changes.len() {
        0 => "an empty batch".to_string(),
        1 => keys.join(""),
        n => format!("{n} changes ({})", keys.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_change_of_the_same_key_wins() {
        let batch = prepare_batch(
            "test",
            vec![
                Change::Put("b".into(), b"1".to_vec()),
                Change::Put("a".into(), b"1".to_vec()),
                Change::Delete("b".into()),
                Change::Put("a".into(), b"2".to_vec()),
            ],
        )
        .expect("valid batch");
        assert_eq!(
            batch,
            vec![
                Change::Put("a".into(), b"2".to_vec()),
                Change::Delete("b".into())
            ]
        );
    }

    #[test]
    fn limits_are_refused_with_the_key() {
        let err =
            prepare_batch("test", vec![Change::Put(String::new(), vec![])]).expect_err("empty key");
        assert!(err.to_string().contains("must not be empty"), "{err}");
        let err = prepare_batch("test", vec![Change::Put("k\n".into(), vec![])])
            .expect_err("control char");
        assert!(err.to_string().contains("control"), "{err}");
        let err = prepare_batch(
            "test",
            vec![Change::Put("big".into(), vec![0; MAX_VALUE_LEN + 1])],
        )
        .expect_err("big value");
        assert!(err.to_string().contains("commit big"), "{err}");
        let many = (0..=MAX_BATCH_CHANGES)
            .map(|i| Change::Delete(format!("k{i}")))
            .collect();
        let err = prepare_batch("test", many).expect_err("too many");
        assert!(err.to_string().contains("at most 128 keys"), "{err}");
        let heavy = (0..3)
            .map(|i| Change::Put(format!("k{i}"), vec![0; MAX_VALUE_LEN]))
            .collect();
        let err = prepare_batch("test", heavy).expect_err("too heavy");
        assert!(err.to_string().contains("3 changes (k0, k1, k2)"), "{err}");
    }

    #[test]
    fn tokens_order_by_epoch() {
        assert_eq!(Token::owner().epoch(), 0);
        let old = Token::leader("e/1".into(), 7, 1);
        let new = Token::leader("e/2".into(), 9, 2);
        assert!(old.epoch() < new.epoch());
        assert_eq!(new.lease(), Some(2));
        assert_eq!(new.to_string(), "leader e/2@9");
    }
}
