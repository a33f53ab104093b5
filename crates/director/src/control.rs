//! The control socket server (`state_dir/control.sock`, mode 0600): how `nines status`, `adm`
//! and `events` talk to the running runtime. The protocol is in [`crate::protocol`].
//!
//! Each connection is its own task; a request never blocks another. Requests that need the
//! engine go through the engine loop's queue like everything else; `events` reads the log
//! directly. Nothing a client sends can crash the server: bad lines get an error reply.

use std::sync::Arc;

use nines_engine::AdminOp;
use nines_model::Model;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::event_log::{EventLog, LogLine};
use crate::msg::Msg;
use crate::protocol::{parse_request, Reply, Request, MAX_REQUEST};
use crate::suggest;

/// What connection handlers share.
pub(crate) struct ControlCtx {
    pub model: Arc<Model>,
    pub tx: mpsc::UnboundedSender<Msg>,
    pub log: Arc<EventLog>,
}

/// Accepts connections until `stop` turns true; each connection also ends then.
pub(crate) async fn serve(
    listener: UnixListener,
    ctx: Arc<ControlCtx>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = tokio::task::JoinSet::new();
    let conn_stop = stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let ctx = ctx.clone();
                    let stop = conn_stop.clone();
                    conns.spawn(async move { connection(stream, ctx, stop).await });
                }
                Err(e) => {
                    tracing::warn!("control socket accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = stopped(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

/// Resolves once the runtime stops (the guard `wait_for` returns must not live across awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Why a connection ends early.
enum End {
    /// The client is gone or the runtime stops: just close.
    Close,
}

async fn connection(stream: UnixStream, ctx: Arc<ControlCtx>, mut stop: watch::Receiver<bool>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let mut limited = (&mut reader).take(MAX_REQUEST as u64 + 1);
        let n = tokio::select! {
            n = limited.read_until(b'\n', &mut line) => n,
            _ = stopped(&mut stop) => return,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.len() > MAX_REQUEST {
            let msg = format!("bad request: longer than {MAX_REQUEST} bytes");
            let _ = send(&mut write, &Reply::error(msg).to_line()).await;
            return;
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        let request = match parse_request(&text) {
            Ok(r) => r,
            Err(e) => {
                if send(&mut write, &Reply::error(e).to_line()).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let reply = match request {
            Request::Status {} => status(&ctx).await,
            Request::Adm { adm, entity } => adm_request(&ctx, &adm, &entity).await,
            Request::Events { since, follow } => {
                let _ = events(&ctx, &mut write, since, follow, &mut stop).await;
                return;
            }
        };
        if send(&mut write, &reply.to_line()).await.is_err() {
            return;
        }
    }
}

async fn send(write: &mut OwnedWriteHalf, line: &str) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    write.write_all(&bytes).await
}

const STOPPING: &str = "the runtime is shutting down";

async fn status(ctx: &ControlCtx) -> Reply {
    let (reply, rx) = oneshot::channel();
    if ctx.tx.send(Msg::Status { reply }).is_err() {
        return Reply::error(STOPPING);
    }
    match rx.await {
        Ok(s) => Reply {
            ok: true,
            error: None,
            status: Some(s),
        },
        Err(_) => Reply::error(STOPPING),
    }
}

async fn adm_request(ctx: &ControlCtx, op: &str, entity: &str) -> Reply {
    let Some(op) = AdminOp::parse(op) else {
        let names: Vec<&str> = AdminOp::ALL.iter().map(|o| o.name()).collect();
        return Reply::error(format!(
            "unknown admin operation {op} (one of {})",
            names.join(", ")
        ));
    };
    let Some(target) = ctx.model.find(entity) else {
        return Reply::error(suggest::unknown_entity(&ctx.model, entity));
    };
    let (reply, rx) = oneshot::channel();
    if ctx.tx.send(Msg::Admin { op, target, reply }).is_err() {
        return Reply::error(STOPPING);
    }
    match rx.await {
        Ok(Ok(())) => Reply::ok(),
        Ok(Err(e)) => Reply::error(e.to_string()),
        Err(_) => Reply::error(STOPPING),
    }
}

/// Sends the log from line `since`, then (with `follow`) every new line as it is written.
/// Without `follow` the lines queued for the next batch are written first, so the answer holds
/// everything recorded before the request (an `events` right after an `adm` shows its lines).
async fn events(
    ctx: &ControlCtx,
    write: &mut OwnedWriteHalf,
    since: u64,
    follow: bool,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), End> {
    if !follow {
        ctx.log.flush();
    }
    let (backlog, mut rx) = match ctx.log.subscribe(since) {
        Ok(x) => x,
        Err(e) => {
            let msg = format!("cannot read {}: {e}", ctx.log.path().display());
            let _ = send(write, &Reply::error(msg).to_line()).await;
            return Err(End::Close);
        }
    };
    let mut next = since;
    for l in &backlog {
        send_line(write, l, &mut next).await?;
    }
    if !follow {
        return Ok(());
    }
    loop {
        let got = tokio::select! {
            got = rx.recv() => got,
            _ = stopped(stop) => return Err(End::Close),
        };
        match got {
            Ok(l) => send_line(write, &l, &mut next).await?,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Fell behind the live feed: catch up from the file, then follow again.
                let (backlog, new_rx) = ctx.log.subscribe(next).map_err(|_| End::Close)?;
                rx = new_rx;
                for l in &backlog {
                    send_line(write, l, &mut next).await?;
                }
            }
            Err(broadcast::error::RecvError::Closed) => return Err(End::Close),
        }
    }
}

/// Sends one log line unless it was already sent (`next` is the next line number wanted).
async fn send_line(write: &mut OwnedWriteHalf, l: &LogLine, next: &mut u64) -> Result<(), End> {
    if l.seq < *next {
        return Ok(());
    }
    *next = l.seq + 1;
    send(write, &l.json).await.map_err(|_| End::Close)
}
