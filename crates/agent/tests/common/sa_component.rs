//! A tiny SA-aware component for tests, speaking the raw protocol (so tests control exactly what
//! it answers). It runs inside a re-executed test binary: the agent spawns
//! `env NINES_TEST_SA_MODE=<mode> NINES_TEST_MARKER=<file> <test exe> sa_component_main --exact`,
//! and the `sa_component_main` test calls [`run`]. It notes what it sees in the marker file.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nines_proto::{read_frame, write_frame, Recovery, ToAgent, ToComponent, PROTOCOL_VERSION};

/// The command line that runs this component in `mode`, noting into `marker`.
pub fn argv(mode: &str, marker: &Path) -> Vec<String> {
    let exe = std::env::current_exe().expect("test executable");
    vec![
        "/usr/bin/env".into(),
        format!("NINES_TEST_SA_MODE={mode}"),
        format!("NINES_TEST_MARKER={}", marker.display()),
        exe.display().to_string(),
        "sa_component_main".into(),
        "--exact".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
        "-q".into(),
    ]
}

/// Append `<node>: <line>` to the marker file (components of several nodes may share one).
fn note(line: &str) {
    let node = std::env::var("NINES_NODE").unwrap_or_default();
    if let Ok(path) = std::env::var("NINES_TEST_MARKER") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            // One write per line: O_APPEND keeps lines of several components whole.
            let _ = f.write_all(format!("{node}: {line}\n").as_bytes());
        }
    }
}

/// Run the component in `mode`; never returns.
pub fn run(mode: &str) -> ! {
    // Die with the test process that spawned us, even if it is killed.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    if mode == "client" {
        run_client();
    }
    let code = match session(mode) {
        Ok(code) => code,
        Err(e) => {
            note(&format!("error: {e}"));
            1
        }
    };
    std::process::exit(code)
}

fn idle() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1000));
    }
}

fn session(mode: &str) -> Result<i32, Box<dyn std::error::Error>> {
    let socket = std::env::var(nines_proto::ENV_AGENT_SOCKET)?;
    let me = std::env::var(nines_proto::ENV_COMPONENT)?;
    let name = if mode == "wrong-name" {
        "app/sg/su/nope".to_string()
    } else {
        me
    };
    let mut out = UnixStream::connect(socket)?;
    let mut input = BufReader::new(out.try_clone()?);
    write_frame(
        &mut out,
        &ToAgent::Register {
            component: name,
            pid: std::process::id(),
            version: PROTOCOL_VERSION,
            held: Vec::new(),
        },
    )?;
    match read_frame::<_, ToComponent>(&mut input)? {
        Some(ToComponent::Registered { ok: true, .. }) => note("registered"),
        Some(ToComponent::Registered { ok: false, reason }) => {
            note(&format!("refused: {}", reason.unwrap_or_default()));
            return Ok(3);
        }
        other => return Err(format!("unexpected first message {other:?}").into()),
    }
    match mode {
        "malformed" => {
            // Length 3, right version, then a body that is no message at all.
            out.write_all(&[0, 0, 0, 3, PROTOCOL_VERSION, 0xff, 0xff])?;
        }
        "error-report" => write_frame(
            &mut out,
            &ToAgent::ErrorReport {
                recommended: Recovery::ComponentRestart,
            },
        )?,
        "ckpt" => {
            // Only the component on n1 writes; every one reads and tracks.
            let writes = if std::env::var("NINES_NODE").as_deref() == Ok("n1") {
                vec![(1, "b", vec![2u8]), (2, "a", vec![1u8])]
            } else {
                Vec::new()
            };
            for (request, section, data) in writes {
                write_section(&mut out, request, section, data, request == 1)?;
            }
            write_frame(
                &mut out,
                &ToAgent::CheckpointRead {
                    request: 3,
                    checkpoint: "app/si".into(),
                },
            )?;
            write_frame(
                &mut out,
                &ToAgent::TrackProtectionGroup {
                    si: "app/si".into(),
                },
            )?;
        }
        "ckpt-refused" => {
            // Half a frame synchronously, then an async write that would make the checkpoint
            // too big to read back (refused), then a small async one (stored), then a flush.
            let half = nines_proto::MAX_FRAME / 2;
            let writes = [
                (1, "a", vec![1u8; half], true),
                (2, "b", vec![2u8; half], false),
                (3, "c", vec![3u8], false),
            ];
            for (request, section, data, sync) in writes {
                write_section(&mut out, request, section, data, sync)?;
            }
            write_frame(&mut out, &ToAgent::CheckpointFlush { request: 4 })?;
            write_frame(
                &mut out,
                &ToAgent::CheckpointRead {
                    request: 5,
                    checkpoint: "app/si".into(),
                },
            )?;
        }
        "hc-self" | "hc-self-stop" => {
            let ms = std::time::Duration::from_millis;
            request_and_note(
                &mut out,
                &mut input,
                &ToAgent::HealthcheckStart {
                    request: 1,
                    key: "loop".into(),
                    period: ms(150),
                    max_duration: ms(250),
                },
            )?;
            // Confirm far more often than needed, for two and a half times the limit.
            for _ in 0..50 {
                write_frame(
                    &mut out,
                    &ToAgent::HealthcheckSelfConfirm { key: "loop".into() },
                )?;
                std::thread::sleep(ms(20));
            }
            if mode == "hc-self-stop" {
                request_and_note(
                    &mut out,
                    &mut input,
                    &ToAgent::HealthcheckStop {
                        request: 2,
                        key: "loop".into(),
                    },
                )?;
            }
            note("confirms done");
        }
        "hc-bad" => {
            let ms = std::time::Duration::from_millis;
            let start = |request, key: &str, period, max_duration| ToAgent::HealthcheckStart {
                request,
                key: key.into(),
                period,
                max_duration,
            };
            let stop = |request, key: &str| ToAgent::HealthcheckStop {
                request,
                key: key.into(),
            };
            let requests = [
                start(1, "k", ms(0), ms(100)),
                start(2, "k", ms(100), ms(0)),
                start(3, "", ms(100), ms(100)),
                start(4, "k", std::time::Duration::from_secs(u64::MAX), ms(100)),
                stop(5, "never"),
                start(6, "k", ms(60_000), ms(60_000)),
                start(7, "k", ms(60_000), ms(60_000)),
            ];
            for request in &requests {
                request_and_note(&mut out, &mut input, request)?;
            }
            // Stray confirmations are ignored, however many.
            for _ in 0..3 {
                write_frame(
                    &mut out,
                    &ToAgent::HealthcheckSelfConfirm {
                        key: "never".into(),
                    },
                )?;
            }
            request_and_note(&mut out, &mut input, &stop(8, "k"))?;
            request_and_note(&mut out, &mut input, &stop(9, "k"))?;
            // The session still serves requests.
            write_frame(
                &mut out,
                &ToAgent::CheckpointRead {
                    request: 10,
                    checkpoint: "app/si".into(),
                },
            )?;
        }
        _ => {}
    }
    let mut healthchecks = 0u32;
    loop {
        let msg = match read_frame::<_, ToComponent>(&mut input) {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                note("eof");
                idle();
            }
            Err(e) => {
                note(&format!("read error: {e}"));
                idle();
            }
        };
        match msg {
            ToComponent::CsiSet {
                invocation,
                si,
                csi,
                ha,
                attrs,
                checkpoint,
            } => {
                let sections = checkpoint.map(|c| c.len());
                note(&format!(
                    "csi-set {si} {csi} {ha:?} {attrs:?} checkpoint-sections={sections:?}"
                ));
                if mode == "mute-csi" {
                    continue;
                }
                write_frame(
                    &mut out,
                    &ToAgent::Response {
                        invocation,
                        ok: mode != "refuse-csi",
                    },
                )?;
                if ha == nines_proto::HaState::Quiescing {
                    write_frame(&mut out, &ToAgent::QuiescingComplete { invocation })?;
                }
            }
            ToComponent::CsiRemove {
                invocation, csi, ..
            } => {
                note(&format!("csi-remove {csi}"));
                write_frame(
                    &mut out,
                    &ToAgent::Response {
                        invocation,
                        ok: true,
                    },
                )?;
            }
            ToComponent::Healthcheck { invocation } => {
                healthchecks += 1;
                if mode == "hc-stop" && healthchecks > 3 {
                    if healthchecks == 4 {
                        note("healthchecks ignored from now on");
                    }
                    continue;
                }
                note(&format!("healthcheck {healthchecks}"));
                write_frame(&mut out, &ToAgent::HealthcheckConfirm { invocation })?;
            }
            ToComponent::Terminate { invocation } => {
                note("terminate");
                if mode == "ignore-terminate" {
                    continue;
                }
                write_frame(
                    &mut out,
                    &ToAgent::Response {
                        invocation,
                        ok: true,
                    },
                )?;
                return Ok(0);
            }
            ToComponent::ProtectionGroup { si, members } => note(&format!("pg {si} {members:?}")),
            ToComponent::CheckpointAck {
                request,
                ok,
                reason,
            } => note(&format!("ack {request} {ok} {reason:?}")),
            ToComponent::CheckpointData { request, sections } => {
                let sizes: Vec<(String, usize)> =
                    sections.iter().map(|(s, d)| (s.clone(), d.len())).collect();
                if sizes.iter().any(|(_, len)| *len > 64) {
                    note(&format!("data {request} sizes {sizes:?}"))
                } else {
                    note(&format!("data {request} {sections:?}"))
                }
            }
            ToComponent::CheckpointWriteRefused {
                request,
                checkpoint,
                section,
                reason,
            } => note(&format!(
                "refused {request} {checkpoint} {section}: {reason}"
            )),
            ToComponent::HealthcheckAck {
                request,
                ok,
                reason,
            } => note(&format!("hc-ack {request} {ok} {reason:?}")),
            ToComponent::Registered { .. } => note("registered twice?"),
        }
    }
}

/// Write one section of the SI's checkpoint.
fn write_section(
    out: &mut UnixStream,
    request: u64,
    section: &str,
    data: Vec<u8>,
    sync: bool,
) -> Result<(), nines_proto::FrameError> {
    write_frame(
        out,
        &ToAgent::CheckpointWrite {
            request,
            checkpoint: "app/si".into(),
            section: section.into(),
            data,
            sync,
        },
    )
}

/// Send a request whose answer is the next frame (nothing else is pending in the modes that
/// use it), and note the answer.
fn request_and_note(
    out: &mut UnixStream,
    input: &mut BufReader<UnixStream>,
    request: &ToAgent,
) -> Result<(), Box<dyn std::error::Error>> {
    write_frame(out, request)?;
    match read_frame::<_, ToComponent>(input)? {
        Some(ToComponent::HealthcheckAck {
            request,
            ok,
            reason,
        }) => note(&format!("hc-ack {request} {ok} {reason:?}")),
        other => note(&format!("unexpected answer {other:?}")),
    }
    Ok(())
}

/// The same kind of component written with the real client library (`nines-client`): it
/// checkpoints on becoming active, reads the checkpoint back, and exits when terminated.
fn run_client() -> ! {
    struct Counter {
        session: Option<nines_client::Session>,
    }
    impl nines_client::Component for Counter {
        fn registered(&mut self, session: &nines_client::Session) {
            note("client registered");
            self.session = Some(session.clone());
        }
        fn csi_set(
            &mut self,
            _si: &str,
            csi: &str,
            ha: nines_client::HaState,
            _attrs: &[(String, String)],
        ) -> Result<(), String> {
            note(&format!("client csi-set {csi} {ha:?}"));
            if ha == nines_client::HaState::Active {
                let s = self.session.as_ref().ok_or("no session")?;
                s.checkpoint_write("app/si", "count", b"41", true)
                    .map_err(|e| e.to_string())?;
                // Asynchronous writes, then a read on the same session: it sees the last one.
                for seq in 1..=20u8 {
                    s.checkpoint_write("app/si", "seq", &[seq], false)
                        .map_err(|e| e.to_string())?;
                }
                let sections = s.checkpoint_read("app/si").map_err(|e| e.to_string())?;
                note(&format!("client read {sections:?}"));
                s.checkpoint_flush().map_err(|e| e.to_string())?;
                note("client flushed");
            }
            Ok(())
        }
        fn csi_remove(&mut self, _si: &str, csi: &str) -> Result<(), String> {
            note(&format!("client csi-remove {csi}"));
            Ok(())
        }
        fn healthcheck(&mut self) -> Result<(), String> {
            note("client healthcheck");
            Ok(())
        }
        fn terminate(&mut self) {
            note("client terminate");
        }
    }
    let code = match nines_client::Session::start(Counter { session: None }) {
        Ok(session) => match start_self_healthcheck(&session).and_then(|()| session.wait()) {
            Ok(()) => 0,
            Err(e) => {
                note(&format!("client wait: {e}"));
                2
            }
        },
        Err(e) => {
            note(&format!("client start: {e}"));
            1
        }
    };
    std::process::exit(code)
}

/// A component-invoked healthcheck, confirmed from a thread of the component's own.
fn start_self_healthcheck(
    session: &nines_client::Session,
) -> Result<(), nines_client::ClientError> {
    let ms = std::time::Duration::from_millis;
    session.healthcheck_start("main", ms(50), ms(500))?;
    note("client self-healthcheck started");
    let s = session.clone();
    std::thread::spawn(move || {
        while s.healthcheck_confirm("main").is_ok() {
            std::thread::sleep(ms(10));
        }
    });
    Ok(())
}
