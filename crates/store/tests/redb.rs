//! The embedded backend on real files in a temporary directory.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{put, TempDir};
use nines_store::{Change, RedbStore, Store, StoreError, DEFAULT_LEADER_TTL, STATE_FILE};

#[tokio::test]
async fn put_get_list_delete() {
    let dir = TempDir::new("basic");
    let store = RedbStore::open(dir.path()).await.expect("open");
    assert_eq!(store.path(), dir.path().join(STATE_FILE));
    let token = store.owner_token();
    common::same_behaviour(&Store::Redb(store), &token).await;
}

#[tokio::test]
async fn the_enum_and_its_trivial_leadership_work_on_redb() {
    let dir = TempDir::new("enum");
    let store = Store::Redb(RedbStore::open(dir.path()).await.expect("open"));
    let leadership = store
        .campaign("director", "node-1", DEFAULT_LEADER_TTL)
        .await
        .expect("campaign");
    assert_eq!(leadership.token().epoch(), 0);
    assert_eq!(leadership.ttl(), None);
    assert_eq!(leadership.node_id(), "node-1");
    store
        .commit(leadership.token(), vec![put("assign/counter/si", "su-1")])
        .await
        .expect("commit");
    assert_eq!(
        store.get("assign/counter/si").await.expect("get"),
        Some(b"su-1".to_vec())
    );
    assert_eq!(store.list("assign/").await.expect("list").len(), 1);
    // Never lost on one host.
    let lost = tokio::time::timeout(Duration::from_millis(100), leadership.lost()).await;
    assert!(lost.is_err(), "an owner's leadership was lost: {lost:?}");
    assert_eq!(leadership.lost_reason(), None);
    leadership.resign().await.expect("resign is a no-op");
}

/// Readers running next to a writer never see half a batch: every batch sets both keys to the
/// same number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_half_a_batch() {
    let dir = TempDir::new("atomic");
    let store = RedbStore::open(dir.path()).await.expect("open");
    let token = store.owner_token();
    const BATCHES: u32 = 50;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..BATCHES {
                let n = i.to_string();
                store
                    .commit(&token, vec![put("pair/a", &n), put("pair/b", &n)])
                    .await
                    .expect("commit");
            }
        })
    };
    let mut seen = 0;
    while !writer.is_finished() {
        let pair = store.list("pair/").await.expect("list");
        match pair.as_slice() {
            [] => {}
            [(_, a), (_, b)] => {
                assert_eq!(a, b, "half a batch visible");
                seen += 1;
            }
            other => panic!("half a batch visible: {other:?}"),
        }
    }
    writer.await.expect("writer");
    assert_eq!(
        store.get("pair/b").await.expect("get"),
        Some((BATCHES - 1).to_string().into_bytes())
    );
    eprintln!("{seen} consistent reads during {BATCHES} commits");
}

#[tokio::test]
async fn data_survives_reopening() {
    let dir = TempDir::new("reopen");
    {
        let store = RedbStore::open(dir.path()).await.expect("open");
        store
            .commit(
                &store.owner_token(),
                vec![put("admin/counter/sg/su-1", "locked"), put("x", "y")],
            )
            .await
            .expect("commit");
        store
            .commit(&store.owner_token(), vec![Change::Delete("x".to_string())])
            .await
            .expect("commit");
    }
    let store = RedbStore::open(dir.path()).await.expect("reopen");
    assert_eq!(
        store.list("").await.expect("list"),
        vec![("admin/counter/sg/su-1".to_string(), b"locked".to_vec())]
    );
}

#[tokio::test]
async fn a_second_open_of_the_same_file_is_refused() {
    let dir = TempDir::new("locked");
    let _first = RedbStore::open(dir.path()).await.expect("open");
    let err = RedbStore::open(dir.path()).await.expect_err("second open");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains(STATE_FILE), "{err}");
}

/// Opens `dir` expecting a [`StoreError::Corrupt`] that names the file, and checks the file was
/// left as it was.
async fn expect_corrupt(dir: &Path) -> String {
    let file = dir.join(STATE_FILE);
    let before = std::fs::read(&file).expect("read file");
    let err = RedbStore::open(dir)
        .await
        .expect_err("a damaged file opened");
    let message = err.to_string();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{message}");
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert_eq!(
        std::fs::read(&file).expect("read file"),
        before,
        "file changed"
    );
    message
}

#[tokio::test]
async fn a_garbage_file_is_a_clear_error() {
    let dir = TempDir::new("garbage");
    std::fs::write(
        dir.path().join(STATE_FILE),
        b"this is not a redb file, it is a note".repeat(200),
    )
    .expect("write");
    let message = expect_corrupt(dir.path()).await;
    eprintln!("{message}");
}

#[tokio::test]
async fn a_truncated_file_is_a_clear_error() {
    let dir = TempDir::new("truncated");
    {
        let store = RedbStore::open(dir.path()).await.expect("open");
        let changes = (0..100)
            .map(|i| put(&format!("k/{i:03}"), &"v".repeat(1000)))
            .collect();
        store
            .commit(&store.owner_token(), changes)
            .await
            .expect("commit");
    }
    let file = dir.path().join(STATE_FILE);
    let len = std::fs::metadata(&file).expect("metadata").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect("open for truncation");
    f.set_len(len / 3).expect("truncate");
    drop(f);
    // redb 2.6 asserts (panics) on this file; the store turns that into an error.
    let message = expect_corrupt(dir.path()).await;
    eprintln!("{message}");
}

#[tokio::test]
async fn a_zero_byte_file_is_a_new_store() {
    // redb treats an empty file as new; that is what a crash right after creating it leaves.
    let dir = TempDir::new("empty");
    std::fs::write(dir.path().join(STATE_FILE), b"").expect("write");
    let store = RedbStore::open(dir.path()).await.expect("open");
    assert!(store.list("").await.expect("list").is_empty());
}

#[tokio::test]
async fn a_directory_in_place_of_the_file_is_a_clear_error() {
    let dir = TempDir::new("isdir");
    std::fs::create_dir(dir.path().join(STATE_FILE)).expect("mkdir");
    let err = RedbStore::open(dir.path())
        .await
        .expect_err("opened a directory");
    eprintln!("{err}");
    assert!(err.to_string().contains(STATE_FILE), "{err}");
}
