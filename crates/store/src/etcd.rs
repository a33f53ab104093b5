//! The cluster backend: etcd, with leader election.
//!
//! Layout under the namespace (e.g. `/nines/demo`): state key `k` is `<ns>/state/k`; election
//! `name` uses etcd's election API on `<ns>/election/name`, whose candidates' keys are
//! `<ns>/election/name/<lease id in hex>`, the oldest (lowest create revision) being the leader.
//! A commit is one etcd transaction that first compares the create revision of the token's
//! leader key: a deposed leader's key is gone (or, in principle, recreated with a later
//! revision), so the compare fails and nothing is written.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream,
    LeaseKeeper, SortOrder, SortTarget, Txn, TxnOp, WatchOptions,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::leadership::{signal_lost, wait_lost, EtcdHold, LostSender};
use crate::{
    batch_name, check_key, prepare_batch, Change, Leadership, LostReason, StoreError, Token,
    TokenKind,
};

/// A list of the whole state may be large; tonic's default limit (4 MiB) is not a state size
/// limit we want.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// Keep-alives are sent this often, relative to the TTL (etcd's own clients use a third).
const KEEP_ALIVE_DIVISOR: u32 = 3;

/// How to reach etcd and where in it to keep the state.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// The key prefix everything lives under, e.g. `/nines/demo`, so several clusters can share
    /// one etcd. No trailing slash.
    pub namespace: String,
    /// The longest any single request (other than a campaign, which waits for its turn) may take
    /// before it fails as [`StoreError::Backend`].
    pub op_timeout: Duration,
    /// The longest establishing a connection may take.
    pub connect_timeout: Duration,
}

impl EtcdOptions {
    /// Options with the default timeouts (5 s per request, 2 s to connect).
    pub fn new(endpoints: Vec<String>, namespace: impl Into<String>) -> EtcdOptions {
        EtcdOptions {
            endpoints,
            namespace: namespace.into(),
            op_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// The store of a cluster, in etcd. Cheap to clone (clones share one connection).
#[derive(Clone)]
pub struct EtcdStore {
    /// Behind an `Arc` to keep [`crate::Store`] small; `Client` is a bundle of gRPC clients.
    client: Arc<Client>,
    /// `etcd <endpoints> <namespace>`, for error messages.
    name: Arc<str>,
    /// `<ns>/state/`.
    state_prefix: String,
    /// `<ns>/election/`.
    election_prefix: String,
    op_timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("name", &self.name)
            .finish()
    }
}

impl EtcdStore {
    /// Connects to etcd and checks, with one request, that it answers.
    pub async fn connect(options: EtcdOptions) -> Result<EtcdStore, StoreError> {
        let namespace = options.namespace.trim_end_matches('/').to_string();
        let name: Arc<str> = format!("etcd {} {namespace}", options.endpoints.join(",")).into();
        let fail = |detail: String| StoreError::Backend {
            backend: name.to_string(),
            op: "connect",
            key: String::new(),
            detail,
        };
        if options.endpoints.is_empty() {
            return Err(fail("no endpoints given".to_string()));
        }
        check_key(&name, "connect", &namespace, true)?;
        let connect = Client::connect(
            &options.endpoints,
            Some(ConnectOptions::new().with_connect_timeout(options.connect_timeout)),
        );
        let client = match tokio::time::timeout(options.op_timeout, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Err(_) => return Err(fail(format!("no answer within {:?}", options.op_timeout))),
        };
        let store = EtcdStore {
            client: Arc::new(client),
            state_prefix: format!("{namespace}/state/"),
            election_prefix: format!("{namespace}/election/"),
            name,
            op_timeout: options.op_timeout,
        };
        let mut kv = store.client.kv_client();
        store
            .timed("connect", "", kv.get(store.state_prefix.clone(), None))
            .await?;
        Ok(store)
    }

    /// The value of `key`, or `None` if it is not set. Linearizable: it sees every commit that
    /// returned before it was sent.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(&self.name, "get", key, false)?;
        let mut kv = self.client.kv_client();
        let resp = self
            .timed("get", key, kv.get(self.state_key(key), None))
            .await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Every key starting with `prefix` and its value, sorted by key (bytewise).
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        check_key(&self.name, "list", prefix, true)?;
        let what = format!("{prefix}*");
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        let mut resp = self
            .timed("list", &what, kv.get(self.state_key(prefix), Some(options)))
            .await?;
        let mut out = Vec::new();
        for kv in resp.take_kvs() {
            let (key, value) = kv.into_key_value();
            let key = String::from_utf8(key)
                .ok()
                .and_then(|k| k.strip_prefix(&self.state_prefix).map(str::to_string));
            match key {
                Some(key) => out.push((key, value)),
                None => {
                    return Err(StoreError::Backend {
                        backend: self.name.to_string(),
                        op: "list",
                        key: what,
                        detail: "etcd holds a key under the state prefix that is not UTF-8 \
                                 (written by something other than nines?)"
                            .to_string(),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Applies `changes` atomically, if `token` still belongs to the current leader: one etcd
    /// transaction compares the create revision of the token's leader key, then writes. A stale
    /// token gets [`StoreError::Fenced`] and nothing is written. An empty batch only checks the
    /// token.
    pub async fn commit(&self, token: &Token, changes: Vec<Change>) -> Result<(), StoreError> {
        let what = batch_name(&changes);
        let (leader_key, revision) = match &token.0 {
            TokenKind::Leader { key, revision, .. } => (key.clone(), *revision),
            TokenKind::Owner => {
                return Err(StoreError::Fenced {
                    backend: self.name.to_string(),
                    key: what,
                    detail: "an embedded store's owner token proves nothing to etcd".to_string(),
                })
            }
        };
        let batch = prepare_batch(&self.name, changes)?;
        let ops: Vec<TxnOp> = batch
            .into_iter()
            .map(|change| match change {
                Change::Put(key, value) => TxnOp::put(self.state_key(&key), value, None),
                Change::Delete(key) => TxnOp::delete(self.state_key(&key), None),
            })
            .collect();
        let txn = Txn::new()
            .when([Compare::create_revision(
                leader_key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then(ops);
        let mut kv = self.client.kv_client();
        let resp = self.timed("commit", &what, kv.txn(txn)).await?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(StoreError::Fenced {
                backend: self.name.to_string(),
                key: what,
                detail: format!(
                    "{token}: the leader key no longer exists with create revision {revision} \
                     (lease expired or revoked, or the leader resigned)"
                ),
            })
        }
    }

    /// Becomes the leader of election `name` as `node_id`, waiting for as long as another
    /// candidate leads. A lease of `ttl` (rounded up to whole seconds; etcd may grant more, see
    /// [`Leadership::ttl`]) is granted first and renewed in the background while waiting and
    /// while leading, so the wait survives any length of time. The returned leadership's token
    /// fences every commit.
    ///
    /// Dropping the future while it waits withdraws the candidacy (best effort, else the lease
    /// expires after its TTL). Fails if etcd cannot be reached, or if the lease is lost while
    /// waiting.
    pub async fn campaign(
        &self,
        name: &str,
        node_id: &str,
        ttl: Duration,
    ) -> Result<Leadership, StoreError> {
        check_key(&self.name, "campaign", name, false)?;
        if name.contains('/') {
            return Err(StoreError::Invalid {
                backend: self.name.to_string(),
                op: "campaign",
                key: name.to_string(),
                reason: "an election name must not contain '/'".to_string(),
            });
        }
        let election = format!("{}{name}", self.election_prefix);
        let ttl_secs = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
            .unwrap_or(i64::MAX)
            .max(1);
        let asked_at = Instant::now();
        let mut leases = self.client.lease_client();
        let grant = self
            .timed("campaign", &election, leases.grant(ttl_secs, None))
            .await?;
        let lease = grant.id();
        let granted = Duration::from_secs(u64::try_from(grant.ttl()).unwrap_or(0).max(1));
        let lost: LostSender = Arc::new(watch::channel(None).0);
        let keeper = tokio::spawn(keep_alive(
            Client::clone(&self.client),
            lease,
            granted,
            asked_at,
            Arc::clone(&lost),
        ));
        // From here on, dropping `hold` (an error below, or the caller dropping this future)
        // stops the renewals and revokes the lease, which withdraws the candidacy.
        let mut hold = EtcdHold {
            client: Client::clone(&self.client),
            lease,
            tasks: vec![keeper.abort_handle()],
            backend: self.name.to_string(),
            op_timeout: self.op_timeout,
            release_on_drop: true,
        };
        let mut elections = self.client.election_client();
        let mut lost_rx = lost.subscribe();
        let resp = tokio::select! {
            resp = elections.campaign(election.clone(), node_id, lease) => {
                resp.map_err(|e| self.backend_error("campaign", &election, e.to_string()))?
            }
            reason = wait_lost(&mut lost_rx) => {
                return Err(self.backend_error(
                    "campaign",
                    &election,
                    format!("lost the lease while waiting to be elected: {reason}"),
                ));
            }
        };
        let (key, revision) = match resp.leader() {
            Some(leader) => match leader.key_str() {
                Ok(key) => (key.to_string(), leader.rev()),
                Err(e) => return Err(self.backend_error("campaign", &election, e.to_string())),
            },
            None => {
                return Err(self.backend_error(
                    "campaign",
                    &election,
                    "etcd answered the campaign without a leader key".to_string(),
                ))
            }
        };
        let watcher = tokio::spawn(watch_leader_key(
            Client::clone(&self.client),
            key.clone(),
            revision,
            lease,
            ttl,
            Arc::clone(&lost),
        ));
        hold.tasks.push(watcher.abort_handle());
        Ok(Leadership::etcd(
            Token::leader(key, revision, lease),
            node_id,
            granted,
            lost,
            hold,
        ))
    }

    /// The node id of the current leader of election `name`, or `None` if there is none; for
    /// the directors that are not leading (to tell operators who is, or to forward to it).
    pub async fn leader(&self, name: &str) -> Result<Option<String>, StoreError> {
        check_key(&self.name, "leader", name, false)?;
        // The oldest candidate key is the leader (as etcd's election API defines it); reading it
        // directly avoids recognising the API's "no leader" error by its text.
        let candidates = format!("{}{name}/", self.election_prefix);
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let mut kv = self.client.kv_client();
        let resp = self
            .timed("leader", name, kv.get(candidates, Some(options)))
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    fn state_key(&self, key: &str) -> String {
        format!("{}{key}", self.state_prefix)
    }

    fn backend_error(&self, op: &'static str, key: &str, detail: String) -> StoreError {
        StoreError::Backend {
            backend: self.name.to_string(),
            op,
            key: key.to_string(),
            detail,
        }
    }

    /// Runs one request with the store's timeout.
    async fn timed<T>(
        &self,
        op: &'static str,
        key: &str,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.op_timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.backend_error(op, key, e.to_string())),
            Err(_) => {
                Err(self.backend_error(op, key, format!("no answer within {:?}", self.op_timeout)))
            }
        }
    }
}

/// Renews `lease` until it is lost, then records why and revokes it (best effort, so a
/// successor need not wait for the TTL). The lease counts as alive until `ttl` after the
/// sending of the last acknowledged renewal (or after the grant was asked for): a conservative
/// bound, since the server's clock started later.
async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    asked_at: Instant,
    lost: LostSender,
) {
    let period = (ttl / KEEP_ALIVE_DIVISOR).max(Duration::from_millis(50));
    let mut deadline = asked_at + ttl;
    let mut lost_rx = lost.subscribe();
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    // Send instants of renewals not answered yet, oldest first (answers come in order).
    let mut outstanding: VecDeque<Instant> = VecDeque::new();
    let mut last_error = String::new();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    enum Step {
        Tick,
        /// A renewal's answer: the lease's remaining TTL in seconds.
        Answer(i64),
        Broken(String),
        Deadline,
        AlreadyLost,
    }

    let reason = loop {
        let Some((keeper, answers)) = stream.as_mut() else {
            // (Re)open the renewal stream, no later than the deadline. Opening sends a first
            // renewal and waits for its answer, which renews the lease for a full TTL.
            let sent = Instant::now();
            match tokio::time::timeout_at(deadline, client.lease_keep_alive(lease)).await {
                Ok(Ok(opened)) => {
                    stream = Some(opened);
                    outstanding.clear();
                    deadline = deadline.max(sent + ttl);
                }
                // How etcd-client reports a first answer with TTL 0.
                Ok(Err(e)) if e.to_string().contains("lease not found") => {
                    break LostReason::LeaseExpired;
                }
                Ok(Err(e)) => {
                    last_error = e.to_string();
                    tokio::time::sleep(
                        period.min(deadline.saturating_duration_since(Instant::now())),
                    )
                    .await;
                }
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                break LostReason::NoKeepAliveAnswer { ttl, last_error };
            }
            continue;
        };
        let step = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => Step::Deadline,
            _ = wait_lost(&mut lost_rx) => Step::AlreadyLost,
            // The send only queues the renewal, but bound it anyway: a full queue must not
            // keep the deadline from being noticed.
            _ = tick.tick() => match tokio::time::timeout_at(deadline, keeper.keep_alive()).await {
                Ok(Ok(())) => {
                    outstanding.push_back(Instant::now());
                    Step::Tick
                }
                Ok(Err(e)) => Step::Broken(e.to_string()),
                Err(_) => Step::Deadline,
            },
            answer = answers.message() => match answer {
                Ok(Some(resp)) => Step::Answer(resp.ttl()),
                Ok(None) => Step::Broken("etcd closed the keep-alive stream".to_string()),
                Err(e) => Step::Broken(e.to_string()),
            },
        };
        match step {
            Step::Tick => {}
            Step::Answer(remaining) => {
                let sent = outstanding.pop_front();
                if remaining <= 0 {
                    break LostReason::LeaseExpired;
                }
                if let Some(sent) = sent {
                    let remaining = Duration::from_secs(u64::try_from(remaining).unwrap_or(0));
                    deadline = deadline.max(sent + remaining);
                }
            }
            Step::Broken(e) => {
                last_error = e;
                stream = None;
            }
            Step::Deadline => break LostReason::NoKeepAliveAnswer { ttl, last_error },
            // The watch recorded its reason; this one is dropped by `signal_lost`.
            Step::AlreadyLost => break LostReason::KeyDeleted,
        }
    };
    signal_lost(&lost, lease, reason);
    let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
}

/// Watches the leader key from its creation on and records the leadership lost when the key is
/// deleted. Starting at the key's create revision replays a deletion that happened before the
/// watch was set up, so a watch that broke (the etcd member it was on died) is simply set up
/// again; only a watch that cannot be re-established within the lease's TTL (a deletion could
/// then go unseen for longer than the lease would have kept it) loses the leadership.
async fn watch_leader_key(
    mut client: Client,
    key: String,
    revision: i64,
    lease: i64,
    ttl: Duration,
    lost: LostSender,
) {
    let mut broken_since: Option<Instant> = None;
    let mut last_error = String::new();
    let reason = 'outer: loop {
        if let Some(since) = broken_since {
            if since.elapsed() > ttl {
                break LostReason::WatchFailed(last_error);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let options = WatchOptions::new().with_start_revision(revision);
        let mut stream = match client.watch(key.clone(), Some(options)).await {
            Ok(stream) => stream,
            Err(e) => {
                last_error = e.to_string();
                broken_since.get_or_insert_with(Instant::now);
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    // The watch works again: a later break gets a full TTL to recover.
                    broken_since = None;
                    if resp
                        .events()
                        .iter()
                        .any(|event| event.event_type() == EventType::Delete)
                    {
                        break 'outer LostReason::KeyDeleted;
                    }
                    if resp.canceled() {
                        // Compacted past the create revision, or refused: a deletion may be
                        // unseen; do not guess.
                        break 'outer LostReason::WatchFailed(format!(
                            "etcd cancelled the watch: {}",
                            resp.cancel_reason()
                        ));
                    }
                }
                Ok(None) => {
                    last_error = "etcd closed the watch".to_string();
                    break;
                }
                Err(e) => {
                    last_error = e.to_string();
                    break;
                }
            }
        }
        broken_since.get_or_insert_with(Instant::now);
    };
    signal_lost(&lost, lease, reason);
}
