//! The control socket's protocol: newline-delimited JSON, one request per line, answered on
//! the same connection. Several requests may share a connection; `events` takes the rest of it.
//!
//! Requests:
//! - `{"op":"status"}` → `{"ok":true,"status":{...}}` (a [`Status`] document);
//! - `{"op":"adm","adm":"lock","entity":"app/sg/su-1"}` → `{"ok":true}` or
//!   `{"ok":false,"error":"..."}` (the engine's refusal, or an unknown operation or entity);
//! - `{"op":"events","since":N,"follow":false}` → the event-log lines from line `N` (default
//!   0), exactly as stored, then the connection is closed; with `"follow":true` new lines keep
//!   coming until the client hangs up or the runtime stops.
//!
//! Anything else gets `{"ok":false,"error":"..."}` naming the problem; the connection stays
//! usable after a bad request (except an over-long line, which closes it).

use serde::{Deserialize, Serialize};

use crate::status::Status;

/// Longest request line accepted; a request is a few dozen bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// A request to the running runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The status document. (A struct variant, so unknown fields are refused here too.)
    Status {},
    /// An admin operation.
    Adm {
        /// Operation name as on the command line (`lock`, `lock-in`, ...).
        adm: String,
        /// Entity path.
        entity: String,
    },
    /// The event log.
    Events {
        /// First line to send (a line number of `events.jsonl`, from 0).
        #[serde(default)]
        since: u64,
        /// Keep the connection open and send new lines as they are written.
        #[serde(default)]
        follow: bool,
    },
}

/// The answer to `status` and `adm` (and to any bad request).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The status document (for `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Reply {
    /// Success with nothing to add.
    pub fn ok() -> Reply {
        Reply {
            ok: true,
            ..Reply::default()
        }
    }

    /// Failure, with the reason.
    pub fn error(msg: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(msg.into()),
            status: None,
        }
    }

    /// As one protocol line (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"ok\":false,\"error\":\"cannot encode reply: {e}\"}}"))
    }
}

/// Parses one request line, with an error message precise enough to fix the request.
pub fn parse_request(line: &str) -> Result<Request, String> {
    serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_defaults() {
        assert_eq!(parse_request(r#"{"op":"status"}"#), Ok(Request::Status {}));
        assert_eq!(
            parse_request(r#"{"op":"adm","adm":"lock","entity":"a/sg/su-1"}"#),
            Ok(Request::Adm {
                adm: "lock".into(),
                entity: "a/sg/su-1".into()
            })
        );
        assert_eq!(
            parse_request(r#"{"op":"events"}"#),
            Ok(Request::Events {
                since: 0,
                follow: false
            })
        );
        assert_eq!(
            parse_request(r#"{"op":"events","follow":true,"since":7}"#),
            Ok(Request::Events {
                since: 7,
                follow: true
            })
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let e = parse_request(r#"{"op":"reboot"}"#).expect_err("unknown op");
        assert!(e.contains("unknown variant `reboot`"), "{e}");
        let e = parse_request(r#"{"op":"adm","adm":"lock"}"#).expect_err("missing entity");
        assert!(e.contains("missing field `entity`"), "{e}");
        let e = parse_request("garbage").expect_err("not json");
        assert!(e.starts_with("bad request"), "{e}");
        let e = parse_request(r#"{"op":"status","x":1}"#).expect_err("unknown field");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn replies_omit_what_they_do_not_carry() {
        assert_eq!(Reply::ok().to_line(), r#"{"ok":true}"#);
        assert_eq!(Reply::error("no").to_line(), r#"{"ok":false,"error":"no"}"#);
    }
}
