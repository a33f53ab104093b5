//! What agents of one cluster in one process share: they run on the same host.
//!
//! `nines run` may map several nodes of a config to one host and start one agent per node in
//! one process. Those agents must behave as one host: a standby on node-2 reads the checkpoint
//! the active on node-1 wrote, and a protection group lists the members on both. Agents started
//! with the same `Arc<Model>` (the same cluster) therefore share one [`Host`]; agents of
//! different clusters in one process (parallel tests) never see each other's state. Across
//! hosts, replication between agents comes with issue 4 behind the same [`CheckpointStore`].

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use nines_model::Model;

use crate::checkpoint::CheckpointStore;
use crate::protection::ProtectionGroups;
use crate::vip::Lanes;

/// State shared by the agents of one cluster in this process.
#[derive(Default)]
pub(crate) struct Host {
    /// Checkpoints written through any of these agents.
    pub checkpoints: CheckpointStore,
    groups: Mutex<ProtectionGroups>,
    /// The floating IPs' lanes: one host has one network namespace, so its agents share them.
    pub vips: Lanes,
}

impl Host {
    /// Protection groups of every SI, with members on any of these agents.
    pub(crate) fn groups(&self) -> MutexGuard<'_, ProtectionGroups> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Live hosts by the model they serve (compared by pointer: the same `Arc`).
static HOSTS: Mutex<Vec<(Weak<Model>, Weak<Host>)>> = Mutex::new(Vec::new());

/// The host shared by every live agent started with this very `model`.
pub(crate) fn host_for(model: &Arc<Model>) -> Arc<Host> {
    let mut hosts = HOSTS.lock().unwrap_or_else(|e| e.into_inner());
    hosts.retain(|(m, h)| m.strong_count() > 0 && h.strong_count() > 0);
    let found = hosts
        .iter()
        .find(|(m, _)| std::ptr::eq(m.as_ptr(), Arc::as_ptr(model)))
        .and_then(|(_, h)| h.upgrade());
    if let Some(host) = found {
        return host;
    }
    let host = Arc::new(Host::default());
    hosts.push((Arc::downgrade(model), Arc::downgrade(&host)));
    host
}
