//! Persisted admin states: the operator's locks survive a restart of `nines run`.
//!
//! Every admin-state change the engine records is kept under `admin/ENTITY` in the director's
//! [`Store`] (on one host `state_dir/state.redb`; on a cluster, later, etcd), keyed by entity
//! path so the record stays meaningful if the config changes between runs. On start, before
//! the engine's `Start`, the stored states are re-applied as admin operations (see
//! [`restore_ops`]); before `Start` nothing runs, so a locked SU never takes work, and a
//! locked-instantiation SU is never started, even for a moment.
//!
//! Writes go to a writer task, in order, so the engine's loop never waits for the disk (a
//! commit fsyncs). The operator's reply is sent when the engine accepts the operation, as
//! before; [`AdminStore::close`] commits what is pending (at shutdown). A state directory of an earlier version kept the states in `admin.json`: that
//! file is imported once and renamed `admin.json.imported`.

use std::collections::BTreeMap;
use std::path::Path;

use nines_engine::AdminState;
use nines_store::{Change, Store, StoreError, Token};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::names;

/// Key prefix of the admin states in the store.
const PREFIX: &str = "admin/";

/// The shape of the `admin.json` of earlier versions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyFile {
    #[allow(dead_code)]
    version: u32,
    /// Entity path → admin state name.
    admin: BTreeMap<String, String>,
}

/// One admin-state change to write: entity path, state name.
type Write = (String, String);

/// Reports a write that failed (the state stays in memory and is written again with the next
/// change of the same entity).
pub type OnError = Box<dyn Fn(String) + Send + Sync>;

/// The admin states set by operators, as last recorded.
pub struct AdminStore {
    states: BTreeMap<String, String>,
    /// `None` once closed.
    tx: Option<mpsc::UnboundedSender<Write>>,
    writer: Option<JoinHandle<()>>,
}

impl AdminStore {
    /// Loads the admin states from `store` (importing `legacy` first if it exists) and starts
    /// the writer. A record or legacy file that does not parse is an error naming it: silently
    /// forgetting an operator's lock could start work they stopped.
    pub async fn open(
        store: Store,
        token: Token,
        legacy: &Path,
        on_error: OnError,
    ) -> Result<(AdminStore, Option<usize>), String> {
        let imported = import_legacy(&store, &token, legacy).await?;
        let mut states = BTreeMap::new();
        for (key, value) in store
            .list(PREFIX)
            .await
            .map_err(|e| format!("cannot read the saved admin states: {e}"))?
        {
            let state = String::from_utf8(value)
                .ok()
                .filter(|s| names::parse_admin(s).is_some())
                .ok_or_else(|| {
                    format!(
                        "{key} in {} is not an admin state (fix or delete it)",
                        store_name(&store)
                    )
                })?;
            states.insert(key[PREFIX.len()..].to_string(), state);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(store, token, rx, on_error));
        Ok((
            AdminStore {
                states,
                tx: Some(tx),
                writer: Some(writer),
            },
            imported,
        ))
    }

    /// The stored states, by entity path.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.states.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Records that `entity` is now in `state` (written in the background, in order).
    pub fn set(&mut self, entity: &str, state: AdminState) {
        let name = names::admin(state);
        if self.states.get(entity).map(String::as_str) == Some(name) {
            return;
        }
        self.states.insert(entity.to_string(), name.to_string());
        if let Some(tx) = &self.tx {
            let _ = tx.send((entity.to_string(), name.to_string()));
        }
    }

    /// Commits what is pending and stops the writer, which closes the store: the next run
    /// (in this process or another) can open it at once.
    pub async fn close(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.await;
        }
    }
}

fn store_name(store: &Store) -> String {
    match store {
        Store::Redb(r) => r.path().display().to_string(),
        Store::Etcd(_) => "etcd".to_string(),
    }
}

async fn write_loop(
    store: Store,
    token: Token,
    mut rx: mpsc::UnboundedReceiver<Write>,
    on_error: OnError,
) {
    while let Some(first) = rx.recv().await {
        // Everything queued goes into one commit (the latest state of each entity).
        let mut puts: BTreeMap<String, String> = BTreeMap::new();
        let mut next = Some(first);
        while let Some((entity, state)) = next {
            puts.insert(entity, state);
            next = rx.try_recv().ok();
        }
        let changes = puts
            .into_iter()
            .map(|(e, s)| Change::Put(format!("{PREFIX}{e}"), s.into_bytes()))
            .collect();
        if let Err(e) = store.commit(&token, changes).await {
            on_error(e.to_string());
        }
    }
}

/// Imports `admin.json` of an earlier version into the store, then renames it; the number of
/// states imported, `None` if there was no such file.
async fn import_legacy(store: &Store, token: &Token, path: &Path) -> Result<Option<usize>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let f: LegacyFile = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{}: {e} (fix it, or delete it to forget every saved admin state)",
            path.display()
        )
    })?;
    let changes: Vec<Change> = f
        .admin
        .iter()
        .filter(|(_, s)| names::parse_admin(s).is_some())
        .map(|(e, s)| Change::Put(format!("{PREFIX}{e}"), s.clone().into_bytes()))
        .collect();
    let n = changes.len();
    store
        .commit(token, changes)
        .await
        .map_err(|e: StoreError| format!("cannot import {}: {e}", path.display()))?;
    let done = path.with_extension("json.imported");
    std::fs::rename(path, &done).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nines_store::RedbStore;

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("nines-admin-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    async fn open(dir: &Path) -> Result<(AdminStore, Option<usize>), String> {
        let redb = RedbStore::open(dir).await.map_err(|e| e.to_string())?;
        let token = redb.owner_token();
        AdminStore::open(
            Store::Redb(redb),
            token,
            &dir.join("admin.json"),
            Box::new(|e| panic!("write failed: {e}")),
        )
        .await
    }

    #[tokio::test]
    async fn states_survive_a_reopen() {
        let dir = temp_dir("rt");
        let (mut s, imported) = open(&dir).await.expect("empty store");
        assert_eq!(imported, None);
        assert_eq!(s.entries().count(), 0);
        s.set("a/sg/su-1", AdminState::Locked);
        s.set("node/n1", AdminState::LockedInstantiation);
        s.set("a/sg/su-1", AdminState::LockedInstantiation);
        s.close().await;
        let (mut s, _) = open(&dir).await.expect("reopen");
        let e: Vec<_> = s.entries().collect();
        assert_eq!(
            e,
            vec![
                ("a/sg/su-1", "locked-instantiation"),
                ("node/n1", "locked-instantiation")
            ]
        );
        s.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_admin_json_of_an_earlier_version_is_imported_once() {
        let dir = temp_dir("import");
        std::fs::write(
            dir.join("admin.json"),
            r#"{"version":1,"admin":{"a/sg/su-2":"locked","node/n2":"unlocked"}}"#,
        )
        .expect("write");
        let (mut s, imported) = open(&dir).await.expect("import");
        assert_eq!(imported, Some(2));
        assert_eq!(
            s.entries().find(|(e, _)| *e == "a/sg/su-2"),
            Some(("a/sg/su-2", "locked"))
        );
        s.close().await;
        assert!(!dir.join("admin.json").exists());
        assert!(dir.join("admin.json.imported").exists());
        let (mut s, imported) = open(&dir).await.expect("reopen");
        assert_eq!(imported, None, "imported only once");
        assert_eq!(s.entries().count(), 2);
        s.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_bad_admin_json_is_refused_naming_the_file() {
        let dir = temp_dir("bad");
        std::fs::write(dir.join("admin.json"), "{not json").expect("write");
        let err = open(&dir).await.err().expect("corrupt file refused");
        assert!(err.contains("admin.json"), "{err}");
        assert!(dir.join("admin.json").exists(), "nothing lost");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
