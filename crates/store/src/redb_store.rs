//! The embedded backend: one redb file, `state.redb`, in the director's state directory.
//!
//! Every redb call runs on tokio's blocking pool (`spawn_blocking`), reads included. A commit
//! fsyncs, which takes milliseconds and more on a busy disk, and would otherwise stall every
//! other task of the director's runtime thread (the engine task, timers, agents); a read is
//! usually a page-cache hit but may read the disk just the same. The hop costs some
//! microseconds, nothing next to an fsync, and it buys one more thing: should redb panic on a
//! damaged file, the panic stays in the blocking task and comes back as an error naming the
//! file, instead of unwinding through the director.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition, TableHandle};

use crate::{batch_name, check_key, prepare_batch, Change, StoreError, Token, TokenKind};

/// The file name of the embedded store inside the directory given to [`RedbStore::open`].
pub const STATE_FILE: &str = "state.redb";

/// The state: entity-path-like keys to opaque values.
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
/// Facts about the file itself; today only its format version.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The key of the format version in `META`.
const FORMAT_KEY: &str = "format";
/// The layout of the tables above. A file with another number was written by another version of
/// nines and is refused rather than misread.
const FORMAT: u64 = 1;

/// The embedded store of one host. Cheap to clone (all clones share one open database). See the
/// module documentation for why every call hops to the blocking pool.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// `redb <path>`, for error messages.
    name: String,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl RedbStore {
    /// Opens `dir/state.redb`, creating the directory and an empty store if they do not exist.
    ///
    /// Fails with [`StoreError::Corrupt`] if the file exists but is not a readable store of this
    /// format (the file is not touched), with [`StoreError::Locked`] if it is already open.
    pub async fn open(dir: impl AsRef<Path>) -> Result<RedbStore, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(STATE_FILE);
        let name = format!("redb {}", path.display());
        let (for_task, task_name) = (path.clone(), name.clone());
        let opened = tokio::task::spawn_blocking(move || open_blocking(&dir, for_task, task_name))
            .await
            .map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                detail: join_error_detail(e),
            })??;
        Ok(RedbStore {
            inner: Arc::new(opened),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The token of the store's single owner, valid for every commit of this store. Exclusion
    /// is the caller's flock on the state directory (and redb's lock on the file), not the token.
    pub fn owner_token(&self) -> Token {
        Token::owner()
    }

    /// The value of `key`, or `None` if it is not set.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(&self.inner.name, "get", key, false)?;
        let key = key.to_string();
        self.blocking("get", key.clone(), move |inner| {
            let fail = |e: redb::Error| inner.error("get", &key, e);
            let txn = inner.db.begin_read().map_err(|e| fail(e.into()))?;
            let table = txn.open_table(STATE).map_err(|e| fail(e.into()))?;
            let value = table.get(key.as_str()).map_err(|e| fail(e.into()))?;
            Ok(value.map(|v| v.value().to_vec()))
        })
        .await
    }

    /// Every key starting with `prefix` and its value, sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        check_key(&self.inner.name, "list", prefix, true)?;
        let prefix = prefix.to_string();
        self.blocking("list", format!("{prefix}*"), move |inner| {
            let what = format!("{prefix}*");
            let fail = |e: redb::Error| inner.error("list", &what, e);
            let txn = inner.db.begin_read().map_err(|e| fail(e.into()))?;
            let table = txn.open_table(STATE).map_err(|e| fail(e.into()))?;
            let mut out = Vec::new();
            for entry in table
                .range::<&str>(prefix.as_str()..)
                .map_err(|e| fail(e.into()))?
            {
                let (k, v) = entry.map_err(|e| fail(e.into()))?;
                let k = k.value();
                if !k.starts_with(prefix.as_str()) {
                    break;
                }
                out.push((k.to_string(), v.value().to_vec()));
            }
            Ok(out)
        })
        .await
    }

    /// Applies `changes` atomically and durably (fsynced before returning). `token` must be
    /// this store's [`owner_token`](RedbStore::owner_token); an etcd leadership's token is
    /// refused as [`StoreError::Fenced`], since it proves nothing about this file.
    pub async fn commit(&self, token: &Token, changes: Vec<Change>) -> Result<(), StoreError> {
        let what = batch_name(&changes);
        if token.0 != TokenKind::Owner {
            return Err(StoreError::Fenced {
                backend: self.inner.name.clone(),
                key: what,
                detail: format!("{token} is an etcd leadership, not this file's owner"),
            });
        }
        let batch = prepare_batch(&self.inner.name, changes)?;
        self.blocking("commit", what.clone(), move |inner| {
            let fail = |e: redb::Error| inner.error("commit", &what, e);
            // An error anywhere below drops `txn` uncommitted: redb then discards every change.
            let txn = inner.db.begin_write().map_err(|e| fail(e.into()))?;
            {
                let mut table = txn.open_table(STATE).map_err(|e| fail(e.into()))?;
                for change in &batch {
                    match change {
                        Change::Put(key, value) => {
                            table
                                .insert(key.as_str(), value.as_slice())
                                .map_err(|e| fail(e.into()))?;
                        }
                        Change::Delete(key) => {
                            table.remove(key.as_str()).map_err(|e| fail(e.into()))?;
                        }
                    }
                }
            }
            txn.commit().map_err(|e| fail(e.into()))
        })
        .await
    }

    /// Runs `f` on the blocking pool; a panic inside comes back as an error naming the file.
    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        key: String,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(result) => result,
            Err(e) => Err(StoreError::Backend {
                backend: self.inner.name.clone(),
                op,
                key,
                detail: join_error_detail(e),
            }),
        }
    }
}

impl Inner {
    /// Turns a redb error into ours: damage is [`StoreError::Corrupt`], the rest (I/O errors,
    /// mostly) [`StoreError::Backend`].
    fn error(&self, op: &'static str, key: &str, e: redb::Error) -> StoreError {
        match e {
            redb::Error::Corrupted(detail) => StoreError::Corrupt {
                path: self.path.clone(),
                detail,
            },
            other => StoreError::Backend {
                backend: self.name.clone(),
                op,
                key: key.to_string(),
                detail: other.to_string(),
            },
        }
    }
}

fn open_blocking(dir: &Path, path: PathBuf, name: String) -> Result<Inner, StoreError> {
    let io_error = |detail: String| StoreError::Backend {
        backend: name.clone(),
        op: "open",
        key: String::new(),
        detail,
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| io_error(format!("creating {}: {e}", dir.display())))?;
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.clone(),
        detail,
    };
    let db = match Database::create(&path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(StoreError::Locked { path: path.clone() })
        }
        Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
            if !matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            return Err(io_error(e.to_string()))
        }
        Err(e) => return Err(corrupt(format!("redb: {e}"))),
    };
    // A new file gets its tables and format number; an existing one must have ours. Table
    // errors here (a table of another type, say) mean somebody else's redb file.
    let txn = db.begin_write().map_err(|e| corrupt(e.to_string()))?;
    {
        let tables: Vec<String> = txn
            .list_tables()
            .map_err(|e| corrupt(e.to_string()))?
            .map(|t| t.name().to_string())
            .collect();
        if !tables.is_empty() && !tables.iter().any(|t| t == META.name()) {
            return Err(corrupt(format!(
                "a redb file of another program (tables: {})",
                tables.join(", ")
            )));
        }
        let mut meta = txn.open_table(META).map_err(|e| corrupt(e.to_string()))?;
        let found = meta
            .get(FORMAT_KEY)
            .map_err(|e| corrupt(e.to_string()))?
            .map(|v| v.value());
        match found {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(corrupt(format!(
                    "store format {other}, this nines reads format {FORMAT}"
                )))
            }
            None => {
                meta.insert(FORMAT_KEY, FORMAT)
                    .map_err(|e| corrupt(e.to_string()))?;
            }
        }
        txn.open_table(STATE).map_err(|e| corrupt(e.to_string()))?;
    }
    txn.commit().map_err(|e| corrupt(e.to_string()))?;
    Ok(Inner { db, path, name })
}

/// What a failed blocking task said: its panic message, if it panicked.
fn join_error_detail(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return "the blocking task was cancelled (is the runtime shutting down?)".to_string();
    }
    let payload = e.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    format!("redb panicked: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("nines-store-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    #[tokio::test]
    async fn another_programs_redb_file_is_refused() {
        let dir = temp_dir("foreign");
        {
            let db = Database::create(dir.join(STATE_FILE)).expect("create");
            let txn = db.begin_write().expect("begin");
            {
                let other: TableDefinition<u64, u64> = TableDefinition::new("orders");
                txn.open_table(other)
                    .expect("open")
                    .insert(1, 2)
                    .expect("insert");
            }
            txn.commit().expect("commit");
        }
        let err = RedbStore::open(&dir)
            .await
            .expect_err("foreign file opened");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(
            err.to_string().contains("another program (tables: orders)"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_newer_format_is_refused() {
        let dir = temp_dir("format");
        drop(RedbStore::open(&dir).await.expect("open"));
        {
            let db = Database::create(dir.join(STATE_FILE)).expect("create");
            let txn = db.begin_write().expect("begin");
            txn.open_table(META)
                .expect("open")
                .insert(FORMAT_KEY, FORMAT + 1)
                .expect("insert");
            txn.commit().expect("commit");
        }
        let err = RedbStore::open(&dir)
            .await
            .expect_err("newer format opened");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("store format 2, this nines reads format 1"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
