//! The counter as an SA-aware component: what each HA state means for the listener.
//!
//! | HA state                      | what the component does                                 |
//! |-------------------------------|---------------------------------------------------------|
//! | active                        | read the SI's checkpoint, bind the CSI's `port`, serve  |
//! | standby                       | no listener; the agent keeps the checkpoint replicated  |
//! | quiescing, quiesced, removed  | stop serving, close the listener and the connections    |
//!
//! CSI attributes: `port` (required for active: the TCP port), `host` (the IPv4 address to
//! listen on, default 127.0.0.1; `0.0.0.0` for clients on other hosts) and `fail_hook`
//! (`on` enables the benchmark's `fail` request; anything else, or absent, leaves it off).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use nines_client::{Component, HaState, Recovery, Session};
use rustix::event::{PollFd, PollFlags, Timespec};

use crate::counter::{self, Checkpoint, Counter};
use crate::log_line;
use crate::server::{Endpoint, FailHook, Listening, Service};

/// The SI's checkpoint as the counter sees it: one section in the checkpoint named after the
/// SI, written synchronously so an acknowledged value is on the standby's node before the
/// client hears of it.
pub struct SiCheckpoint {
    session: Session,
    si: String,
}

impl SiCheckpoint {
    /// The checkpoint of `si`, through `session`.
    pub fn new(session: Session, si: &str) -> SiCheckpoint {
        SiCheckpoint {
            session,
            si: si.to_owned(),
        }
    }
}

impl Checkpoint for SiCheckpoint {
    fn load(&self) -> Result<Option<u64>, String> {
        let sections = self
            .session
            .checkpoint_read(&self.si)
            .map_err(|e| format!("cannot read checkpoint {}: {e}", self.si))?;
        match sections.iter().find(|(name, _)| name == counter::SECTION) {
            Some((_, data)) => counter::decode(data).map(Some),
            None => Ok(None),
        }
    }

    fn store(&self, value: u64) -> Result<(), String> {
        self.session
            .checkpoint_write(&self.si, counter::SECTION, &counter::encode(value), true)
            .map_err(|e| e.to_string())
    }
}

/// One CSI this component has been given.
struct Assigned {
    counter: Arc<Counter>,
    /// While active: the listener and its connections, served by the component's event loop.
    endpoint: Option<Endpoint>,
}

/// The counter component: one counter (and, while active, one listener) per CSI.
///
/// It starts no thread: its listeners and connections are served by the same event loop that
/// dispatches its callbacks ([`crate::run`]), through [`poll_fds`](Self::poll_fds),
/// [`serve_ready`](Self::serve_ready) and [`poll_timeout`](Self::poll_timeout).
#[derive(Default)]
pub struct CounterComponent {
    session: Option<Session>,
    csis: BTreeMap<String, Assigned>,
}

/// The value of attribute `name`, if configured.
fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The `host` attribute: the IPv4 address to listen on (default 127.0.0.1; `0.0.0.0` serves
/// clients on other hosts of a cluster).
pub fn host_of(attrs: &[(String, String)]) -> Result<std::net::Ipv4Addr, String> {
    match attr(attrs, "host") {
        None => Ok(std::net::Ipv4Addr::LOCALHOST),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|_| format!("the CSI's `host` attribute {raw:?} is not an IPv4 address")),
    }
}

/// The `port` attribute, checked: without a valid port the component cannot serve, and
/// saying so is better than listening somewhere nobody looks.
pub fn port_of(attrs: &[(String, String)]) -> Result<u16, String> {
    let raw = attr(attrs, "port").ok_or("the CSI has no `port` attribute")?;
    match raw.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "the CSI's `port` attribute {raw:?} is not a port number (1-65535)"
        )),
        Ok(p) => Ok(p),
    }
}

impl CounterComponent {
    /// A component with no CSI yet.
    pub fn new() -> CounterComponent {
        CounterComponent::default()
    }

    /// Appends the descriptors of every active CSI's endpoint (in a fixed order: nothing but
    /// a callback adds or removes an endpoint) for the event loop to poll.
    pub fn poll_fds<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) {
        for endpoint in self.csis.values().filter_map(|a| a.endpoint.as_ref()) {
            endpoint.poll_fds(fds);
        }
    }

    /// Serves what poll reported for the descriptors of [`poll_fds`](Self::poll_fds), in the
    /// same order. No callback may run in between (it could add or remove an endpoint).
    pub fn serve_ready(&mut self, ready: &[PollFlags]) {
        let mut rest = ready;
        for endpoint in self.csis.values_mut().filter_map(|a| a.endpoint.as_mut()) {
            let (mine, others) = rest.split_at(endpoint.fd_count().min(rest.len()));
            endpoint.serve_ready(mine);
            rest = others;
        }
    }

    /// The longest the event loop's poll may wait (`None`: no limit).
    pub fn poll_timeout(&self) -> Option<Timespec> {
        self.csis
            .values()
            .filter_map(|a| a.endpoint.as_ref()?.poll_timeout())
            .min_by_key(|t| (t.tv_sec, t.tv_nsec))
    }

    fn activate(&mut self, si: &str, csi: &str, attrs: &[(String, String)]) -> Result<(), String> {
        let session = self.session.clone().ok_or("not registered yet")?;
        let entry = self.csis.entry(csi.to_owned()).or_insert_with(|| Assigned {
            counter: Arc::new(Counter::new()),
            endpoint: None,
        });
        if entry.endpoint.is_some() && entry.counter.is_serving() {
            return Ok(());
        }
        let port = port_of(attrs)?;
        let host = host_of(attrs)?;
        let t0 = Instant::now();
        // Listen before reading: clients connecting meanwhile wait in the backlog.
        let listening = Listening::bind_on(host, port)
            .map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?;
        let t1 = Instant::now();
        let checkpoint: Arc<dyn Checkpoint> = Arc::new(SiCheckpoint::new(session.clone(), si));
        let value = entry.counter.activate(&*checkpoint)?;
        let t2 = Instant::now();
        let fail: Option<FailHook> = (attr(attrs, "fail_hook") == Some("on")).then(|| {
            let session = session.clone();
            Arc::new(move || {
                session
                    .report_error(Recovery::ComponentFailover)
                    .map_err(|e| e.to_string())
            }) as FailHook
        });
        let service = Service {
            counter: Arc::clone(&entry.counter),
            checkpoint,
            fail,
        };
        match listening.endpoint(service) {
            Ok(endpoint) => {
                log_line(&format!(
                    "counter: active for {csi} on {host}:{port}, continuing from {value} \
                     (listening after {} us, checkpoint read in {} us, serving after {} us)",
                    (t1 - t0).as_micros(),
                    (t2 - t1).as_micros(),
                    t0.elapsed().as_micros()
                ));
                entry.endpoint = Some(endpoint);
                Ok(())
            }
            Err(e) => {
                entry.counter.deactivate();
                Err(format!("cannot serve on {host}:{port}: {e}"))
            }
        }
    }

    /// Stops serving `csi`: the counter first (later increments are refused, so nothing is
    /// acknowledged afterwards), then the listener and connections, closed at once (the port
    /// is free for the next active when this returns).
    fn stop(&mut self, csi: &str) {
        if let Some(entry) = self.csis.get_mut(csi) {
            entry.counter.deactivate();
            entry.endpoint = None;
        }
    }
}

impl Component for CounterComponent {
    fn registered(&mut self, session: &Session) {
        self.session = Some(session.clone());
    }

    fn csi_set(
        &mut self,
        si: &str,
        csi: &str,
        ha: HaState,
        attrs: &[(String, String)],
    ) -> Result<(), String> {
        match ha {
            HaState::Active => self.activate(si, csi, attrs),
            HaState::Standby | HaState::Quiescing | HaState::Quiesced => {
                self.stop(csi);
                self.csis.entry(csi.to_owned()).or_insert_with(|| Assigned {
                    counter: Arc::new(Counter::new()),
                    endpoint: None,
                });
                Ok(())
            }
        }
    }

    fn csi_remove(&mut self, _si: &str, csi: &str) -> Result<(), String> {
        self.stop(csi);
        self.csis.remove(csi);
        Ok(())
    }

    fn terminate(&mut self) {
        let csis: Vec<String> = self.csis.keys().cloned().collect();
        for csi in csis {
            self.stop(&csi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_port_attribute_is_checked() {
        assert_eq!(port_of(&attrs(&[("port", "7100")])), Ok(7100));
        assert_eq!(port_of(&attrs(&[("port", " 80 ")])), Ok(80));
        assert!(port_of(&attrs(&[])).is_err());
        assert_eq!(host_of(&attrs(&[])), Ok(std::net::Ipv4Addr::LOCALHOST));
        assert_eq!(
            host_of(&attrs(&[("host", "0.0.0.0")])),
            Ok(std::net::Ipv4Addr::UNSPECIFIED)
        );
        let e = host_of(&attrs(&[("host", "localhost")])).expect_err("not an address");
        assert!(e.contains("`host`"), "{e}");
        assert!(port_of(&attrs(&[("port", "0")])).is_err());
        assert!(port_of(&attrs(&[("port", "70000")])).is_err());
        let e = port_of(&attrs(&[("port", "http")])).expect_err("not a number");
        assert!(e.contains("\"http\""), "{e}");
    }

    #[test]
    fn becoming_active_before_registration_is_refused() {
        let mut c = CounterComponent::new();
        let e = c
            .csi_set(
                "a/si",
                "a/si/main",
                HaState::Active,
                &attrs(&[("port", "7100")]),
            )
            .expect_err("no session");
        assert!(e.contains("not registered"), "{e}");
        // Standby needs nothing and always succeeds.
        assert_eq!(
            c.csi_set("a/si", "a/si/main", HaState::Standby, &[]),
            Ok(())
        );
        assert_eq!(c.csi_remove("a/si", "a/si/main"), Ok(()));
    }
}
