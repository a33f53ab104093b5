//! The etcd backend and leader election against a real etcd (`nines_store::testing`), one
//! server per test on loopback. Every wait is bounded by [`BOUND`], a generous limit that only
//! catches hangs; the timings the tests rely on are etcd's (a 1 s lease expires in 1–2 s).

mod common;

use std::future::Future;
use std::time::Duration;

use common::{put, TempDir};
use nines_store::testing::EtcdServer;
use nines_store::{
    Change, EtcdOptions, EtcdStore, Leadership, LostReason, RedbStore, Store, StoreError,
    DEFAULT_LEADER_TTL,
};

/// The longest any step may take before the test calls it a hang.
const BOUND: Duration = Duration::from_secs(10);
const ELECTION: &str = "director";

fn start_etcd() -> EtcdServer {
    EtcdServer::start().unwrap_or_else(|e| panic!("starting etcd: {e}"))
}

async fn connect(server: &EtcdServer, namespace: &str) -> EtcdStore {
    bounded(
        "connect",
        EtcdStore::connect(EtcdOptions::new(server.endpoints(), namespace)),
    )
    .await
    .unwrap_or_else(|e| panic!("connect: {e}\netcd log:\n{}", server.log()))
}

async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} took more than {BOUND:?}"),
    }
}

async fn campaign(store: &EtcdStore, node: &str) -> Leadership {
    bounded(
        "campaign",
        store.campaign(ELECTION, node, DEFAULT_LEADER_TTL),
    )
    .await
    .unwrap_or_else(|e| panic!("campaign as {node}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_and_reads() {
    let server = start_etcd();
    let store = connect(&server, "/nines/test").await;
    let leader = campaign(&store, "node-1").await;
    let token = leader.token().clone();
    assert!(token.epoch() > 0, "{token}");
    eprintln!("granted TTL {:?}", leader.ttl());

    common::same_behaviour(&Store::Etcd(store.clone()), &token).await;

    // Namespaces do not see each other, and elections live outside the state.
    let other = connect(&server, "/nines/other").await;
    assert!(other.list("").await.expect("list").is_empty());

    // A token of one backend means nothing to the other.
    let dir = TempDir::new("etcd-foreign");
    let redb = RedbStore::open(dir.path()).await.expect("open redb");
    let err = store
        .commit(&redb.owner_token(), vec![put("assign/counter/si", "su-2")])
        .await
        .expect_err("a redb token on etcd");
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    let err = redb
        .commit(&token, vec![put("a", "b")])
        .await
        .expect_err("an etcd token on redb");
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");

    assert_eq!(
        store.get("assign/counter/si").await.expect("get"),
        Some(b"su-1".to_vec())
    );
    assert_eq!(
        store.leader(ELECTION).await.expect("leader").as_deref(),
        Some("node-1")
    );
    leader.resign().await.expect("resign");
    assert_eq!(store.leader(ELECTION).await.expect("leader"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_candidates_make_exactly_one_leader() {
    let server = start_etcd();
    // Two directors: two connections.
    let stores = [
        connect(&server, "/nines/test").await,
        connect(&server, "/nines/test").await,
    ];
    // A TTL of 2 s, so that a loaded machine's scheduling hiccup cannot expire the leader's
    // lease in the 3 s below: what is tested here is exclusion, not lease liveness.
    let ttl = Duration::from_secs(2);
    let mut candidates = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        let store = store.clone();
        candidates.push(tokio::spawn(async move {
            let node = format!("node-{}", i + 1);
            store.campaign(ELECTION, &node, ttl).await
        }));
    }
    // Exactly one wins, and the other is still waiting well past a lease TTL: the leader's
    // lease is being renewed.
    let winner = bounded("the first election", async {
        loop {
            if let Some(i) = candidates.iter().position(|c| c.is_finished()) {
                break i;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let leader = candidates
        .remove(winner)
        .await
        .expect("join")
        .expect("campaign");
    let waiting = candidates.remove(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !waiting.is_finished(),
        "both candidates won (the leader's lease was not kept alive?)"
    );
    assert_eq!(leader.lost_reason(), None);
    assert_eq!(
        stores[0].leader(ELECTION).await.expect("leader").as_deref(),
        Some(leader.node_id())
    );
    stores[winner]
        .commit(leader.token(), vec![put("assign/counter/si", "first")])
        .await
        .expect("the leader commits");

    // The leader resigns: the other takes over at once, with a later epoch, and the old token
    // is refused.
    let old = leader.token().clone();
    let mut old_lost = leader.subscribe();
    leader.resign().await.expect("resign");
    assert_eq!(*old_lost.borrow_and_update(), Some(LostReason::Resigned));
    let successor = bounded("the successor's election", waiting)
        .await
        .expect("join")
        .expect("campaign");
    assert!(successor.token().epoch() > old.epoch());
    let other = 1 - winner;
    let err = stores[winner]
        .commit(&old, vec![put("assign/counter/si", "stale")])
        .await
        .expect_err("the resigned leader committed");
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    stores[other]
        .commit(successor.token(), vec![put("assign/counter/si", "second")])
        .await
        .expect("the successor commits");
    assert_eq!(
        stores[winner].get("assign/counter/si").await.expect("get"),
        Some(b"second".to_vec())
    );
}

/// The leader dies (stops renewing, as a crashed process would): its lease expires, the other
/// candidate wins, and the dead leader's late commit is refused without changing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leaders_lease_expires_and_the_other_wins() {
    let server = start_etcd();
    let a = connect(&server, "/nines/test").await;
    let b = connect(&server, "/nines/test").await;
    let leader = campaign(&a, "node-a").await;
    let stale = leader.token().clone();
    a.commit(&stale, vec![put("assign/counter/si", "su-1")])
        .await
        .expect("commit");
    let candidate = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign(ELECTION, "node-b", DEFAULT_LEADER_TTL).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!candidate.is_finished(), "b won while a was alive");

    let died = std::time::Instant::now();
    leader.abandon();
    let successor = bounded("b's election after a's death", candidate)
        .await
        .expect("join")
        .expect("campaign");
    eprintln!("b won {:?} after a stopped renewing", died.elapsed());
    assert_eq!(successor.node_id(), "node-b");
    assert_eq!(
        b.leader(ELECTION).await.expect("leader").as_deref(),
        Some("node-b")
    );

    let before = b.list("").await.expect("list");
    let err = a
        .commit(
            &stale,
            vec![
                put("assign/counter/si", "su-2"),
                put("admin/counter/sg/su-1", "locked"),
                Change::Delete("assign/counter/si".to_string()),
            ],
        )
        .await
        .expect_err("the dead leader committed");
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert!(err.to_string().contains("nothing was written"), "{err}");
    assert_eq!(
        b.list("").await.expect("list"),
        before,
        "a fenced commit wrote"
    );
    b.commit(successor.token(), vec![put("assign/counter/si", "su-2")])
        .await
        .expect("the successor commits");
}

/// The leader's lease is revoked behind its back (an operator, or etcd deciding it expired):
/// the leader learns it lost, and its commits are refused even before it looks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_is_noticed_and_fences_the_leader() {
    let server = start_etcd();
    let store = connect(&server, "/nines/test").await;
    let leader = campaign(&store, "node-1").await;
    store
        .commit(leader.token(), vec![put("assign/counter/si", "su-1")])
        .await
        .expect("commit");

    let lease = leader.token().lease().expect("an etcd token has a lease");
    let mut raw = etcd_client::Client::connect(server.endpoints(), None)
        .await
        .expect("raw client");
    raw.lease_revoke(lease).await.expect("revoke");
    // Fenced at once, before the leader has heard anything.
    let err = store
        .commit(leader.token(), vec![put("assign/counter/si", "su-2")])
        .await
        .expect_err("a revoked leader committed");
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    let reason = bounded("noticing the revoked lease", leader.lost()).await;
    assert!(
        matches!(reason, LostReason::KeyDeleted | LostReason::LeaseExpired),
        "{reason}"
    );
    assert_eq!(leader.lost_reason(), Some(reason));
    assert_eq!(
        store.get("assign/counter/si").await.expect("get"),
        Some(b"su-1".to_vec())
    );
    // Resigning a lost leadership is not an error.
    leader.resign().await.expect("resign after loss");
}

/// etcd dies under the leader: the keep-alives go unanswered, and the leadership is given up
/// within about a TTL instead of being assumed; requests fail with the endpoint named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_etcd_loses_the_leadership() {
    let mut server = start_etcd();
    let mut options = EtcdOptions::new(server.endpoints(), "/nines/test");
    options.op_timeout = Duration::from_secs(1);
    let store = bounded("connect", EtcdStore::connect(options.clone()))
        .await
        .expect("connect");
    let leader = campaign(&store, "node-1").await;
    server.kill();
    let reason = bounded("noticing that etcd is gone", leader.lost()).await;
    assert!(
        matches!(
            reason,
            LostReason::NoKeepAliveAnswer { .. } | LostReason::WatchFailed(_)
        ),
        "{reason}"
    );
    let err = bounded("a get without etcd", store.get("assign/counter/si"))
        .await
        .expect_err("a get without etcd");
    assert!(matches!(err, StoreError::Backend { .. }), "{err}");
    assert!(
        err.to_string().contains(server.endpoint())
            && err.to_string().contains("get assign/counter/si"),
        "{err}"
    );
    let err = bounded("connecting to no etcd", EtcdStore::connect(options))
        .await
        .expect_err("connected to a dead etcd");
    assert!(err.to_string().contains(server.endpoint()), "{err}");
}

/// A candidate that stops waiting (its campaign future dropped) withdraws: its key goes at
/// once rather than after its TTL, so it can never be elected behind its owner's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_campaign_withdraws_the_candidate() {
    let server = start_etcd();
    let store = connect(&server, "/nines/test").await;
    let leader = campaign(&store, "node-1").await;
    // A long TTL, so that a withdrawal by revocation cannot be mistaken for the lease expiring.
    let ttl = Duration::from_secs(5);
    let candidate = {
        let store = store.clone();
        tokio::spawn(async move { store.campaign(ELECTION, "node-2", ttl).await })
    };
    let mut raw = etcd_client::Client::connect(server.endpoints(), None)
        .await
        .expect("raw client");
    let prefix = format!("/nines/test/election/{ELECTION}/");
    let count = |resp: etcd_client::GetResponse| resp.kvs().len();
    let options = || Some(etcd_client::GetOptions::new().with_prefix());
    bounded("node-2's candidacy", async {
        while count(raw.get(prefix.clone(), options()).await.expect("get")) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    candidate.abort();
    let started = std::time::Instant::now();
    bounded("node-2's withdrawal", async {
        while count(raw.get(prefix.clone(), options()).await.expect("get")) > 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        started.elapsed() < ttl / 2,
        "withdrawn only after {:?}: by lease expiry, not revocation",
        started.elapsed()
    );
    assert_eq!(leader.lost_reason(), None);
    // Whoever subscribed learns when the leadership is dropped.
    let mut subscriber = leader.subscribe();
    drop(leader);
    assert_eq!(*subscriber.borrow_and_update(), Some(LostReason::Resigned));
}
