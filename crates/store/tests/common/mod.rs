//! What the tests of both backends share, above all [`same_behaviour`]: one script of calls
//! that each backend must answer identically.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::path::{Path, PathBuf};

use nines_store::{Change, Store, StoreError, Token, MAX_BATCH_CHANGES, MAX_VALUE_LEN};

/// A temporary directory removed on drop, also when the test fails.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("nines-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn put(key: &str, value: &str) -> Change {
    Change::Put(key.to_string(), value.as_bytes().to_vec())
}

pub fn keys(entries: &[(String, Vec<u8>)]) -> Vec<&str> {
    entries.iter().map(|(k, _)| k.as_str()).collect()
}

/// Puts, gets, sorted prefix lists, deletes, a later change of a key winning, the shared
/// limits, and a refused batch writing nothing, on an empty `store` that `token` may write.
pub async fn same_behaviour(store: &Store, token: &Token) {
    assert_eq!(store.get("admin/counter/sg/su-1").await.expect("get"), None);
    store
        .commit(
            token,
            vec![
                put("admin/counter/sg/su-2", "locked"),
                put("admin/counter/sg/su-1", "unlocked"),
                put("admin/counterx/sg/su-1", "other app"),
                put("assign/counter/si", "su-1"),
                put("pids/counter/sg/su-1/counterd", "4242"),
            ],
        )
        .await
        .expect("commit");
    assert_eq!(
        store.get("admin/counter/sg/su-1").await.expect("get"),
        Some(b"unlocked".to_vec())
    );
    assert_eq!(
        store.list("admin/counter/").await.expect("list"),
        vec![
            ("admin/counter/sg/su-1".to_string(), b"unlocked".to_vec()),
            ("admin/counter/sg/su-2".to_string(), b"locked".to_vec()),
        ]
    );
    assert_eq!(store.list("").await.expect("list all").len(), 5);
    assert!(store.list("zzz").await.expect("list none").is_empty());

    store
        .commit(
            token,
            vec![
                Change::Delete("admin/counter/sg/su-2".to_string()),
                Change::Delete("never/was".to_string()),
                put("admin/counter/sg/su-1", "x"),
                // Two changes of one key: the later wins (etcd alone would refuse the batch).
                put("admin/counter/sg/su-1", "locked"),
            ],
        )
        .await
        .expect("commit deletes");
    assert_eq!(store.get("admin/counter/sg/su-2").await.expect("get"), None);
    let all = store.list("").await.expect("list all");
    assert_eq!(
        keys(&all),
        vec![
            "admin/counter/sg/su-1",
            "admin/counterx/sg/su-1",
            "assign/counter/si",
            "pids/counter/sg/su-1/counterd"
        ]
    );
    assert_eq!(all[0].1, b"locked".to_vec());
    // An empty batch writes nothing (on etcd it checks the token).
    store.commit(token, vec![]).await.expect("empty commit");

    // Refused batches write nothing, whichever change is at fault.
    let err = store
        .commit(
            token,
            vec![
                put("assign/counter/si", "su-2"),
                put("new/key", "v"),
                Change::Put("too/big".to_string(), vec![0; MAX_VALUE_LEN + 1]),
            ],
        )
        .await
        .expect_err("oversized value");
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("commit too/big"), "{err}");
    let too_many = (0..=MAX_BATCH_CHANGES)
        .map(|i| Change::Delete(format!("k/{i}")))
        .collect();
    let err = store.commit(token, too_many).await.expect_err("too many");
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    assert_eq!(store.list("").await.expect("list all"), all);

    let err = store.get("").await.expect_err("empty key");
    assert!(err.to_string().contains("must not be empty"), "{err}");
}
