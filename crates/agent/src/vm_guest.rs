//! A VM whose guest is a node (`Node::vm`): what the guest needs to join the cluster as that
//! node, handed over as a second initramfs archive appended to the image's.
//!
//! The guest image (`scripts/build-vm-image.sh` with a nines binary) starts `nines agent` at
//! boot when `/etc/nines/node` exists, with `/etc/nines/director` (comma-separated addresses)
//! and `/etc/nines/key` (the cluster key, mode 0600). The kernel unpacks concatenated
//! archives in order, so one small uncompressed `newc` archive written next to the VM's
//! sockets turns one generic image into the image of this node, and the key is never on a
//! command line (QEMU's argv is readable by every local user).
//!
//! A director on the node's loopback is, seen from a guest on QEMU's user-mode network,
//! `10.0.2.2` (the NAT's alias of the host's loopback), same port.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// How a guest reaches the directors and proves it belongs: given to the agent by the node
/// that runs it (`nines agent`'s `--director` and `--key`).
#[derive(Clone)]
pub struct GuestJoin {
    /// The directors, as the node reaches them.
    pub directors: Vec<SocketAddr>,
    /// The cluster key's bytes.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for GuestJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestJoin")
            .field("directors", &self.directors)
            .field("key", &"(secret)")
            .finish()
    }
}

/// The host's loopback as QEMU's user-mode network shows it to the guest.
const SLIRP_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

/// A director address as the guest must dial it.
pub(crate) fn seen_from_guest(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_loopback() {
        SocketAddr::new(IpAddr::V4(SLIRP_HOST), addr.port())
    } else {
        addr
    }
}

/// Writes `base` followed by this node's archive to `out` (mode 0600: it holds the key) and
/// returns `out`.
pub(crate) fn write_initrd(
    base: &Path,
    out: &Path,
    node: &str,
    join: &GuestJoin,
) -> std::io::Result<PathBuf> {
    let mut image = std::fs::read(base)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", base.display())))?;
    // The kernel looks for the next archive at a 4-byte boundary and skips zeros.
    while image.len() % 4 != 0 {
        image.push(0);
    }
    image.extend(node_archive(node, join));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out)?;
    f.write_all(&image)?;
    Ok(out.to_path_buf())
}

/// The node's archive: who the guest is, where its directors are, the key.
fn node_archive(node: &str, join: &GuestJoin) -> Vec<u8> {
    let directors: Vec<String> = join
        .directors
        .iter()
        .map(|a| seen_from_guest(*a).to_string())
        .collect();
    let mut key = join.key.clone();
    key.push(b'\n');
    archive(&[
        Entry::Dir("etc"),
        Entry::Dir("etc/nines"),
        Entry::File("etc/nines/node", 0o644, format!("{node}\n").as_bytes()),
        Entry::File(
            "etc/nines/director",
            0o644,
            format!("{}\n", directors.join(",")).as_bytes(),
        ),
        Entry::File("etc/nines/key", 0o600, &key),
    ])
}

/// One archive member.
enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, u32, &'a [u8]),
}

/// A `newc` cpio archive of `entries`, owned by root, with its trailer.
fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ino, e) in entries.iter().enumerate() {
        let (name, mode, data): (&str, u32, &[u8]) = match e {
            Entry::Dir(n) => (n, 0o040755, &[]),
            Entry::File(n, perm, d) => (n, 0o100000 | perm, d),
        };
        member(&mut out, ino as u32 + 1, name, mode, data);
    }
    member(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

fn member(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let nlink = if mode & 0o040000 != 0 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_director_is_the_nat_alias_and_others_stay() {
        let l: SocketAddr = "127.0.0.1:7400".parse().expect("addr");
        assert_eq!(seen_from_guest(l).to_string(), "10.0.2.2:7400");
        let r: SocketAddr = "192.168.77.1:7400".parse().expect("addr");
        assert_eq!(seen_from_guest(r), r);
    }

    /// `cpio -i` (GNU cpio, as in the image build) reads what the kernel will: the base's
    /// files and then the node's, with the key private.
    #[test]
    fn the_appended_archive_unpacks_after_the_base() {
        // Runs cpio and waits for it: no other test's sweep may reap it first.
        let _alone = crate::reaper::CHILD_TESTS
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = std::env::temp_dir().join(format!("nines-guest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let base = dir.join("base.cpio");
        // A base of odd length: the node's archive must still start aligned.
        let mut b = archive(&[Entry::File("hello", 0o644, b"hi!")]);
        b.push(0);
        b.pop();
        b.extend_from_slice(&[0, 0, 0]);
        std::fs::write(&base, &b).expect("base");
        let join = GuestJoin {
            directors: vec!["127.0.0.1:7400".parse().expect("addr")],
            key: b"0123456789abcdef0123456789abcdef".to_vec(),
        };
        let out = write_initrd(&base, &dir.join("node.cpio"), "guest-1", &join).expect("write");
        let listing = std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet", "-F"])
            .arg(&out)
            .output();
        let Ok(listing) = listing else {
            eprintln!("cpio is not installed; skipping the listing check");
            return;
        };
        let text = String::from_utf8_lossy(&listing.stdout);
        assert!(text.contains("hello"), "{text}");
        let unpack = dir.join("root");
        std::fs::create_dir_all(&unpack).expect("root");
        // GNU cpio stops at the first trailer, like the kernel's first pass; the kernel goes
        // on to the next archive. Read the second archive on its own to check its content.
        let bytes = std::fs::read(&out).expect("read");
        let second = bytes.len() - archive_len(&join, "guest-1");
        std::fs::write(dir.join("second.cpio"), &bytes[second..]).expect("second");
        let st = std::process::Command::new("cpio")
            .args(["-i", "-d", "--quiet", "-F"])
            .arg(dir.join("second.cpio"))
            .current_dir(&unpack)
            .status()
            .expect("cpio -i");
        assert!(st.success());
        let read = |p: &str| std::fs::read_to_string(unpack.join(p)).expect(p);
        assert_eq!(read("etc/nines/node"), "guest-1\n");
        assert_eq!(read("etc/nines/director"), "10.0.2.2:7400\n");
        assert_eq!(read("etc/nines/key"), "0123456789abcdef0123456789abcdef\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(unpack.join("etc/nines/key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(second % 4, 0, "the node's archive starts aligned");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn archive_len(join: &GuestJoin, node: &str) -> usize {
        node_archive(node, join).len()
    }
}
