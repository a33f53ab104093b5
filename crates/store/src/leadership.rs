//! What a won election hands out: the fencing token, and a way to learn that it was lost.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::{StoreError, Token};

/// Why a [`Leadership`] ended. Whatever the reason, the token is (or will be within the lease's
/// TTL) refused by every commit, so the holder must stop acting as the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// etcd answered a keep-alive saying the lease no longer exists (expired or revoked).
    LeaseExpired,
    /// The leader's election key was deleted (its lease revoked, or removed by hand).
    KeyDeleted,
    /// No keep-alive was acknowledged for a whole TTL: the lease may have expired on the server
    /// by now, so the leadership is given up rather than assumed.
    NoKeepAliveAnswer {
        /// The granted TTL that went by unanswered.
        ttl: Duration,
        /// The last error seen, if any.
        last_error: String,
    },
    /// The watch on the leader's key failed, so its deletion could go unnoticed.
    WatchFailed(String),
    /// [`Leadership::resign`] was called, or the `Leadership` was dropped.
    Resigned,
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LostReason::LeaseExpired => write!(f, "the lease expired or was revoked"),
            LostReason::KeyDeleted => write!(f, "the leader key was deleted"),
            LostReason::NoKeepAliveAnswer { ttl, last_error } => {
                write!(f, "no keep-alive answer within the lease TTL ({ttl:?})")?;
                if !last_error.is_empty() {
                    write!(f, "; last error: {last_error}")?;
                }
                Ok(())
            }
            LostReason::WatchFailed(e) => write!(f, "lost the watch on the leader key: {e}"),
            LostReason::Resigned => write!(f, "resigned"),
        }
    }
}

/// The shared slot the background tasks of a leadership report its end in; only the first
/// reason is kept.
pub(crate) type LostSender = Arc<watch::Sender<Option<LostReason>>>;

/// Records `reason` unless a reason is already there, and logs it once.
pub(crate) fn signal_lost(lost: &LostSender, lease: i64, reason: LostReason) {
    let shown = reason.to_string();
    let chosen = reason == LostReason::Resigned;
    let first = lost.send_if_modified(|slot| {
        if slot.is_some() {
            return false;
        }
        *slot = Some(reason);
        true
    });
    match (first, chosen) {
        (false, _) => {}
        (true, true) => tracing::info!(lease = format_args!("{lease:x}"), "leadership resigned"),
        (true, false) => tracing::warn!(
            lease = format_args!("{lease:x}"),
            "leadership lost: {shown}"
        ),
    }
}

/// Waits until a reason is recorded. Never returns if none ever is and the sender lives.
pub(crate) async fn wait_lost(rx: &mut watch::Receiver<Option<LostReason>>) -> LostReason {
    let reason = match rx.wait_for(Option::is_some).await {
        Ok(slot) => (*slot).clone(),
        Err(_) => None,
    };
    match reason {
        Some(reason) => reason,
        // The sender is gone without a reason: nobody will ever say.
        None => std::future::pending().await,
    }
}

/// The etcd side of a leadership: what keeps it alive and how to give it up.
pub(crate) struct EtcdHold {
    pub(crate) client: etcd_client::Client,
    pub(crate) lease: i64,
    /// The keep-alive task and the watch on the leader key.
    pub(crate) tasks: Vec<tokio::task::AbortHandle>,
    /// `etcd <endpoints>`, for error messages.
    pub(crate) backend: String,
    pub(crate) op_timeout: Duration,
    /// Revoke the lease when dropped, so a successor need not wait for the TTL.
    pub(crate) release_on_drop: bool,
}

impl EtcdHold {
    fn stop_tasks(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for EtcdHold {
    fn drop(&mut self) {
        self.stop_tasks();
        if !self.release_on_drop {
            return;
        }
        // Best effort, and only where there is a runtime to do it on; otherwise the lease
        // simply expires after its TTL.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let mut client = self.client.clone();
            let lease = self.lease;
            runtime.spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
            });
        }
    }
}

/// A won election (or, on one host, the trivial ownership of the embedded store).
///
/// Holds the fencing [`Token`] every commit must carry, and tells when the leadership is lost
/// ([`lost`](Leadership::lost), [`subscribe`](Leadership::subscribe)). On etcd a background task
/// renews the lease every third of its TTL, and another watches the leader key; the leadership
/// counts as lost as soon as etcd says the lease is gone, the key disappears, or no renewal was
/// acknowledged for a whole TTL. Losing it is final: campaign again for a new one.
///
/// Dropping it stops the renewals and revokes the lease (best effort), which lets a successor
/// in at once, and tells subscribers [`LostReason::Resigned`]; [`resign`](Leadership::resign)
/// does the same and reports whether the revocation worked.
pub struct Leadership {
    token: Token,
    node_id: String,
    ttl: Option<Duration>,
    lost: LostSender,
    etcd: Option<EtcdHold>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("token", &self.token)
            .field("node_id", &self.node_id)
            .field("ttl", &self.ttl)
            .field("lost", &*self.lost.borrow())
            .finish()
    }
}

impl Drop for Leadership {
    /// Tells the subscribers, who may outlive it, that an etcd leadership is over (a no-op
    /// after `resign` or a loss; an owner's leadership is never lost). The lease is released by
    /// `EtcdHold`'s own drop.
    fn drop(&mut self) {
        if let Some(lease) = self.token.lease() {
            signal_lost(&self.lost, lease, LostReason::Resigned);
        }
    }
}

impl Leadership {
    /// The never-lost leadership of an embedded store's owner.
    pub(crate) fn owner(token: Token, node_id: &str) -> Leadership {
        Leadership {
            token,
            node_id: node_id.to_string(),
            ttl: None,
            lost: Arc::new(watch::channel(None).0),
            etcd: None,
        }
    }

    /// A won etcd election; `lost` is already fed by the tasks in `hold`.
    pub(crate) fn etcd(
        token: Token,
        node_id: &str,
        ttl: Duration,
        lost: LostSender,
        hold: EtcdHold,
    ) -> Leadership {
        Leadership {
            token,
            node_id: node_id.to_string(),
            ttl: Some(ttl),
            lost,
            etcd: Some(hold),
        }
    }

    /// The fencing token to pass to every commit.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// The node id this leadership was won as (the value etcd stores under the leader key).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The lease TTL etcd granted (may exceed the one asked for); `None` on one host, where
    /// nothing expires.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// Why the leadership ended, or `None` while it holds (as far as this process can tell: the
    /// commit's fencing is the authority).
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.lost.borrow().clone()
    }

    /// Waits until the leadership is lost; never returns on one host.
    pub async fn lost(&self) -> LostReason {
        let mut rx = self.lost.subscribe();
        wait_lost(&mut rx).await
    }

    /// A receiver that turns `Some(reason)` when the leadership is lost, for tasks that do not
    /// own the `Leadership` (e.g. in a `select!` loop).
    pub fn subscribe(&self) -> watch::Receiver<Option<LostReason>> {
        self.lost.subscribe()
    }

    /// Gives the leadership up now: stops the renewals and revokes the lease, which deletes the
    /// leader key so the next candidate wins at once. Subscribers see
    /// [`LostReason::Resigned`] (unless it was already lost). A lease that is already gone is
    /// not an error. A no-op on one host.
    pub async fn resign(mut self) -> Result<(), StoreError> {
        let Some(mut hold) = self.etcd.take() else {
            return Ok(());
        };
        hold.stop_tasks();
        hold.release_on_drop = false;
        signal_lost(&self.lost, hold.lease, LostReason::Resigned);
        let key = self.token.to_string();
        let timeout = hold.op_timeout;
        match tokio::time::timeout(timeout, hold.client.lease_revoke(hold.lease)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.to_string().contains("lease not found") => Ok(()),
            Ok(Err(e)) => Err(StoreError::Backend {
                backend: hold.backend.clone(),
                op: "resign",
                key,
                detail: e.to_string(),
            }),
            Err(_) => Err(StoreError::Backend {
                backend: hold.backend.clone(),
                op: "resign",
                key,
                detail: format!("no answer within {timeout:?}"),
            }),
        }
    }

    /// Stops renewing the lease without revoking it, as a crashed or frozen director would: the
    /// lease, and with it the leadership, ends when etcd expires it after the TTL. Tests use it
    /// to stage a leader's death.
    #[cfg(feature = "testing")]
    pub fn abandon(mut self) {
        if let Some(mut hold) = self.etcd.take() {
            hold.release_on_drop = false;
        }
    }
}
