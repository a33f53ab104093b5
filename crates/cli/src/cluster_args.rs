//! Flags `nines director` and `nines agent` share: the cluster key and the heartbeat timing.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use nines_link::{ClusterKey, LinkConfig};

/// The cluster key file and the link timing (both ends should agree on the timing).
#[derive(Args, Debug, Clone)]
pub(crate) struct LinkArgs {
    /// File holding the cluster key (at least 16 bytes, mode 0600; e.g.
    /// `head -c 32 /dev/urandom > cluster.key && chmod 600 cluster.key`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Heartbeat interval of the links (e.g. 50ms).
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = duration)]
    pub heartbeat_interval: Duration,
    /// Heartbeats missed before the peer is lost.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub miss_count: u32,
}

impl LinkArgs {
    /// The key, or a message that names the file and what is wrong with it.
    pub(crate) fn cluster_key(&self) -> Result<ClusterKey, String> {
        ClusterKey::from_file(&self.key).map_err(|e| format!("--key {}: {e}", self.key.display()))
    }

    /// The link settings.
    pub(crate) fn link(&self) -> LinkConfig {
        LinkConfig {
            heartbeat_interval: self.heartbeat_interval,
            miss_count: self.miss_count,
            ..LinkConfig::default()
        }
    }
}

/// A human duration (`50ms`, `2s`), as in config files.
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    nines_model::duration::parse(text)
}

/// Log lines (warnings and up, or info with `verbose`) on stderr.
pub(crate) fn init_logging(verbose: bool) {
    let level = if verbose {
        tracing::Level::INFO
    } else {
        tracing::Level::WARN
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
