//! Persisted admin states: the operator's locks survive a restart of `nines run`.
//!
//! Every admin-state change the engine records is written to `state_dir/admin.json`
//! (atomically), keyed by entity path so the file stays meaningful if the config changes
//! between runs. On start, before the engine's `Start`, the stored states are re-applied as
//! admin operations (see [`restore_ops`]); before `Start` nothing runs, so a locked SU never
//! takes work, and a locked-instantiation SU is never started, even for a moment.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use nines_engine::{AdminOp, AdminState};
use serde::{Deserialize, Serialize};

use crate::{atomic, names};

/// The file's shape. Versioned so a later format can be told apart.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    /// Entity path → admin state name.
    admin: BTreeMap<String, String>,
}

/// The admin states set by operators, as last written.
#[derive(Debug)]
pub struct AdminStore {
    path: PathBuf,
    states: BTreeMap<String, String>,
}

impl AdminStore {
    /// Loads `path`; a missing file is an empty store. A file that does not parse is an error
    /// (naming the file): silently forgetting an operator's lock could start work they stopped.
    pub fn load(path: &Path) -> io::Result<AdminStore> {
        let states = match std::fs::read(path) {
            Ok(bytes) => {
                let f: File = serde_json::from_slice(&bytes).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: {e} (fix it, or delete it to forget every saved admin state)",
                            path.display()
                        ),
                    )
                })?;
                f.admin
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(AdminStore {
            path: path.to_path_buf(),
            states,
        })
    }

    /// The stored states, by entity path.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.states.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Records that `entity` is now in `state`, rewriting the file if that changes it.
    pub fn set(&mut self, entity: &str, state: AdminState) -> io::Result<()> {
        let name = names::admin(state);
        if self.states.get(entity).map(String::as_str) == Some(name) {
            return Ok(());
        }
        self.states.insert(entity.to_string(), name.to_string());
        let f = File {
            version: 1,
            admin: self.states.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&f).map_err(io::Error::other)?;
        bytes.push(b'\n');
        atomic::write(&self.path, &bytes, true)
    }
}

/// The admin operations that take an entity from `current` to `target`, one legal step at a
/// time (unlocked ⇄ locked ⇄ locked-instantiation). A stored `shutting-down` means the run
/// ended mid-shutdown; shutdown ends in `locked`, so that is what is restored.
pub fn restore_ops(current: AdminState, target: AdminState) -> Vec<AdminOp> {
    fn level(a: AdminState) -> u8 {
        match a {
            AdminState::Unlocked => 0,
            AdminState::Locked | AdminState::ShuttingDown => 1,
            AdminState::LockedInstantiation => 2,
        }
    }
    let (mut from, to) = (level(current), level(target));
    let mut ops = Vec::new();
    while from != to {
        if from < to {
            ops.push(if from == 0 {
                AdminOp::Lock
            } else {
                AdminOp::LockInstantiation
            });
            from += 1;
        } else {
            ops.push(if from == 2 {
                AdminOp::UnlockInstantiation
            } else {
                AdminOp::Unlock
            });
            from -= 1;
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_walks_the_admin_ladder() {
        use AdminState::*;
        assert_eq!(restore_ops(Unlocked, Unlocked), vec![]);
        assert_eq!(restore_ops(Unlocked, Locked), vec![AdminOp::Lock]);
        assert_eq!(restore_ops(Unlocked, ShuttingDown), vec![AdminOp::Lock]);
        assert_eq!(
            restore_ops(Unlocked, LockedInstantiation),
            vec![AdminOp::Lock, AdminOp::LockInstantiation]
        );
        assert_eq!(
            restore_ops(LockedInstantiation, Unlocked),
            vec![AdminOp::UnlockInstantiation, AdminOp::Unlock]
        );
    }

    #[test]
    fn states_round_trip_through_the_file_and_bad_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("nines-admin-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("admin.json");
        let _ = std::fs::remove_file(&path);
        let mut s = AdminStore::load(&path).expect("empty store");
        assert_eq!(s.entries().count(), 0);
        s.set("a/sg/su-1", AdminState::Locked).expect("write");
        s.set("node/n1", AdminState::LockedInstantiation)
            .expect("write");
        let s = AdminStore::load(&path).expect("reload");
        let e: Vec<_> = s.entries().collect();
        assert_eq!(
            e,
            vec![("a/sg/su-1", "locked"), ("node/n1", "locked-instantiation")]
        );
        std::fs::write(&path, "{not json").expect("write");
        let err = AdminStore::load(&path).expect_err("corrupt file refused");
        assert!(err.to_string().contains("admin.json"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
