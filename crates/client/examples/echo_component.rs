//! A minimal SA-aware component: logs every callback, keeps a count of how many times it was
//! made active in a checkpoint, and exits when the agent asks it to.
//!
//! The agent starts it with `NINES_AGENT_SOCKET` and `NINES_COMPONENT` set; started by hand it
//! says so and exits with status 2.

use std::process::ExitCode;

use nines_client::{ClientError, Component, HaState, Session};

#[derive(Default)]
struct Echo {
    /// Kept from `registered`, so callbacks can use checkpoints.
    session: Option<Session>,
}

impl Component for Echo {
    fn registered(&mut self, session: &Session) {
        eprintln!("echo: registered");
        self.session = Some(session.clone());
    }

    fn csi_set(
        &mut self,
        si: &str,
        csi: &str,
        ha: HaState,
        attrs: &[(String, String)],
    ) -> Result<(), String> {
        eprintln!("echo: csi_set {csi} of {si} -> {ha:?} {attrs:?}");
        let Some(session) = &self.session else {
            return Ok(());
        };
        if ha == HaState::Active {
            // Continue from the previous active's state, then record that we took over. The
            // write is sync: once csi_set returns, a failover cannot lose it.
            let sections = session.checkpoint_read(si).map_err(|e| e.to_string())?;
            let times = sections
                .iter()
                .find(|(name, _)| name == "activations")
                .and_then(|(_, data)| data.as_slice().try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0)
                + 1;
            eprintln!("echo: active (activation #{times})");
            session
                .checkpoint_write(si, "activations", &times.to_be_bytes(), true)
                .map_err(|e| e.to_string())?;
            session
                .track_protection_group(si)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn csi_remove(&mut self, si: &str, csi: &str) -> Result<(), String> {
        eprintln!("echo: csi_remove {csi} of {si}");
        Ok(())
    }

    fn healthcheck(&mut self) -> Result<(), String> {
        eprintln!("echo: healthcheck");
        Ok(())
    }

    fn terminate(&mut self) {
        eprintln!("echo: terminate");
    }

    fn protection_group(&mut self, si: &str, members: &[(String, HaState)]) {
        eprintln!("echo: protection group of {si}: {members:?}");
    }
}

fn main() -> ExitCode {
    let session = match Session::start(Echo::default()) {
        Ok(session) => session,
        Err(e @ ClientError::NotConfigured(_)) => {
            eprintln!("echo: {e}; run it as a component of a nines configuration");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("echo: cannot register: {e}");
            return ExitCode::FAILURE;
        }
    };
    match session.wait() {
        Ok(()) => {
            eprintln!("echo: terminated, bye");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}
