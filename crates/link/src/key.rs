//! The cluster key: the one shared secret every director and agent of a cluster holds.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Shortest key accepted, in bytes. The handshake transcript an eavesdropper records lets it
/// test guesses offline, so a short or low-entropy key would fall to a dictionary; 16 bytes of
/// real randomness (32 recommended, `head -c 32 /dev/urandom | base64`) make that hopeless.
pub const MIN_KEY_LEN: usize = 16;

/// The shared secret a link proves knowledge of in its handshake.
///
/// Cheap to clone (shared bytes), and its `Debug` never prints the secret, so it can sit in
/// options structs that get logged.
#[derive(Clone)]
pub struct ClusterKey(Arc<[u8]>);

/// Why a cluster key could not be loaded. Each names where the key was looked for, never the
/// key itself.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key is shorter than [`MIN_KEY_LEN`] bytes (after trimming a trailing newline).
    #[error("cluster key from {from} is {len} bytes; at least {MIN_KEY_LEN} are required")]
    TooShort {
        /// Where the key came from (a file path, an environment variable, `bytes`).
        from: String,
        /// Its length.
        len: usize,
    },
    /// The key file could not be read.
    #[error("cannot read the cluster key file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file can be read by other users than its owner, so the secret is not one.
    #[error(
        "cluster key file {} has mode {mode:o}; it must not be readable by group or others (chmod 600)",
        path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The environment variable is not set or is not valid Unicode.
    #[error("environment variable {var} does not hold a cluster key")]
    NoEnv {
        /// The variable.
        var: String,
    },
}

impl ClusterKey {
    /// A key from raw bytes (for tests, and for callers that got the secret elsewhere).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<Self, KeyError> {
        Self::checked(bytes.into(), "bytes".into())
    }

    /// The secret itself, to hand on to someone who must hold the same key (the guest of a
    /// VM this node starts, which joins the cluster as a node of its own).
    pub fn secret(&self) -> &[u8] {
        &self.0
    }

    /// The key in a file: its whole content, less one trailing newline, so a key written by
    /// `echo` or `base64` works as is. The file must not be group- or world-readable (as with
    /// ssh keys): a secret every local user can read authenticates nobody.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        use std::os::unix::fs::PermissionsExt;
        let read_err = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let mut bytes = std::fs::read(path).map_err(read_err)?;
        trim_newline(&mut bytes);
        Self::checked(bytes, path.display().to_string())
    }

    /// The key in an environment variable (less one trailing newline), for deployments that
    /// inject secrets that way. Only processes of the same user can read another's environment.
    pub fn from_env(var: &str) -> Result<Self, KeyError> {
        let value = std::env::var(var).map_err(|_| KeyError::NoEnv { var: var.into() })?;
        let mut bytes = value.into_bytes();
        trim_newline(&mut bytes);
        Self::checked(bytes, format!("${var}"))
    }

    fn checked(bytes: Vec<u8>, from: String) -> Result<Self, KeyError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort {
                from,
                len: bytes.len(),
            });
        }
        Ok(ClusterKey(bytes.into()))
    }

    /// The secret bytes, for the MACs of the handshake.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

fn trim_newline(bytes: &mut Vec<u8>) {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey(<{} bytes, redacted>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_refused_and_debug_redacts() {
        assert!(matches!(
            ClusterKey::from_bytes(b"short".to_vec()),
            Err(KeyError::TooShort { len: 5, .. })
        ));
        let key = ClusterKey::from_bytes(b"0123456789abcdef-secret".to_vec()).expect("long enough");
        assert!(!format!("{key:?}").contains("secret"));
    }

    #[test]
    fn key_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("nines-link-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("key");
        std::fs::write(&path, b"0123456789abcdef0123\n").expect("write key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = ClusterKey::from_file(&path).expect_err("world-readable");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let key = ClusterKey::from_file(&path).expect("private file");
        assert_eq!(key.bytes(), b"0123456789abcdef0123");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
