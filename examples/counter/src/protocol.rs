//! The counter's wire protocol: one request per line, one reply line per request.
//!
//! Text lines rather than a binary format so that a person can talk to the service with
//! `nc 127.0.0.1 7100` and the benchmark probe needs no library. Parsing is separate from the
//! socket code so that it is unit-tested without one.
//!
//! | request | reply                                                          |
//! |---------|----------------------------------------------------------------|
//! | `inc`   | `N`: the new value, sent only once the checkpoint holds it     |
//! | `get`   | `N`: the current value, unchanged                              |
//! | `fail`  | `failing`: the component reports itself faulty (if enabled)    |
//! | other   | `ERR message`                                                  |

/// A request line, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Increment the counter and return its new value.
    Inc,
    /// Return the counter's value without changing it (for people and for checks).
    Get,
    /// Fault injection for the benchmark: report an error recommending component failover.
    /// Refused unless the CSI enables it, so a production-like config cannot be failed by any
    /// client that can reach the port.
    Fail,
}

/// Longest request line accepted, in bytes. Requests are a few bytes; the bound keeps a
/// client that never sends a newline from making the service buffer without end.
pub const MAX_LINE: usize = 256;

/// Parses one request line (without or with its `\n`; surrounding blanks are ignored).
pub fn parse(line: &str) -> Result<Request, String> {
    match line.trim() {
        "inc" => Ok(Request::Inc),
        "get" => Ok(Request::Get),
        "fail" => Ok(Request::Fail),
        "" => Err("empty request (try inc, get)".to_owned()),
        other => Err(format!(
            "unknown request {:?} (try inc, get)",
            truncate(other, 32)
        )),
    }
}

/// The reply line for a counter value.
pub fn value_reply(value: u64) -> String {
    format!("{value}\n")
}

/// The reply line for a failure; newlines in `msg` are flattened so it stays one line.
pub fn error_reply(msg: &str) -> String {
    format!("ERR {}\n", msg.replace(['\n', '\r'], " "))
}

/// Parses a reply line into a counter value; any other reply is the error it carries. Shared
/// with clients (the demo and benchmark probes) so that both ends agree on the format.
pub fn parse_reply(line: &str) -> Result<u64, String> {
    let line = line.trim_end_matches(['\n', '\r']);
    if let Some(msg) = line.strip_prefix("ERR ") {
        return Err(msg.to_owned());
    }
    line.parse::<u64>()
        .map_err(|_| format!("unexpected reply {:?}", truncate(line, 32)))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_or_without_newline() {
        assert_eq!(parse("inc\n"), Ok(Request::Inc));
        assert_eq!(parse("  get \r\n"), Ok(Request::Get));
        assert_eq!(parse("fail"), Ok(Request::Fail));
        assert!(parse("").is_err());
        let e = parse("increment please").expect_err("unknown");
        assert!(e.contains("unknown request"), "{e}");
    }

    #[test]
    fn unknown_requests_are_quoted_shortly() {
        let long = "x".repeat(1000);
        let e = parse(&long).expect_err("unknown");
        assert!(e.len() < 100, "{e}");
        // Multi-byte characters are cut on a boundary, never in the middle.
        let e = parse(&"é".repeat(100)).expect_err("unknown");
        assert!(e.contains('é'));
    }

    #[test]
    fn replies_round_trip() {
        assert_eq!(value_reply(42), "42\n");
        assert_eq!(parse_reply(&value_reply(42)), Ok(42));
        assert_eq!(error_reply("no\nway"), "ERR no way\n");
        assert_eq!(
            parse_reply(&error_reply("not active")),
            Err("not active".into())
        );
        assert!(parse_reply("forty-two\n").is_err());
    }
}
