//! The control protocol, both ends of it: what `echo-labctl status|reload|
//! stop|sources|ready` sends to a running daemon's control socket and what it
//! gets back, and where that socket is by default.
//!
//! A Unix stream socket carrying one JSON request line and one JSON reply
//! line per connection. A [`Request`] is an object whose `cmd` names it
//! (`{"cmd":"status"}`); a [`Response`] is an object whose `reply` names
//! which answer it is (`{"reply":"refused","message":"..."}`), so a caller
//! matches on what came back rather than testing optional fields. The
//! daemon's side (who may ask, threads, timeouts) is the daemon's own;
//! this module is only the language, which is why both programs use it.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::status::{SourceView, Status};

/// Largest request accepted, in bytes.
pub const MAX_REQUEST: usize = 4096;

/// A request line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Report status.
    Status,
    /// Reload the config and say what happened.
    Reload,
    /// Start the drain.
    Stop,
    /// The busiest sources: most open connections, then most refusals.
    Sources {
        /// How many.
        #[serde(default = "default_top")]
        top: usize,
    },
    /// Put the instance in rotation (`on`) or take it out: readiness
    /// only, every session is still served.
    Ready {
        /// Ready for new clients.
        on: bool,
    },
}

fn default_top() -> usize {
    20
}

/// The most sources one `sources` answer lists.
pub const MAX_TOP: usize = 10_000;

/// A reply line: which answer, and what it carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "reply", rename_all = "lowercase")]
pub enum Response {
    /// The answer to [`Request::Status`].
    Status {
        /// The status document.
        status: Box<Status>,
    },
    /// The answer to [`Request::Sources`], busiest first.
    Sources {
        /// One entry per source.
        sources: Vec<SourceView>,
    },
    /// A reload was applied; what changed.
    Reloaded {
        /// The change report, one line.
        summary: String,
    },
    /// The drain has started ([`Request::Stop`]).
    Draining,
    /// The answer to [`Request::Ready`]: readiness now, and why not.
    Readiness {
        /// `GET /readyz` answers 200.
        ready: bool,
        /// Why not, while not ready.
        reason: Option<String>,
    },
    /// The daemon did not do what was asked, and why.
    Refused {
        /// Why (a reload's error names file, line, column and key).
        message: String,
    },
}

impl Response {
    /// A refusal with its reason.
    pub fn refused(message: impl Into<String>) -> Self {
        Response::Refused {
            message: message.into(),
        }
    }
}

/// Where the control socket lives when `control_socket` is not set:
/// `$RUNTIME_DIRECTORY/control.sock` under systemd, `/run/echo-lab/control.sock`
/// for root, else `$XDG_RUNTIME_DIR/echo-lab.sock` or `/tmp/echo-lab-UID.sock`.
pub fn default_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        if !first.is_empty() {
            return Path::new(&first).join("control.sock");
        }
    }
    let uid = rustix::process::geteuid().as_raw();
    if uid == 0 {
        return PathBuf::from("/run/echo-lab/control.sock");
    }
    user_path(uid)
}

fn user_path(uid: u32) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("echo-lab.sock"),
        _ => PathBuf::from(format!("/tmp/echo-lab-{uid}.sock")),
    }
}

/// Where a client looks when not told: the system daemon's socket if it
/// exists, else the caller's own.
pub fn client_default_path() -> PathBuf {
    let system = PathBuf::from("/run/echo-lab/control.sock");
    if system.exists() {
        return system;
    }
    let mine = user_path(rustix::process::geteuid().as_raw());
    if mine.exists() {
        mine
    } else {
        system
    }
}

/// Why a request line was refused, before anything was asked of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The peer closed without sending anything.
    #[error("empty request")]
    Empty,
    /// More than [`MAX_REQUEST`] bytes arrived without a line end.
    #[error("request too large (max {MAX_REQUEST} bytes)")]
    TooLarge,
    /// Not one JSON object naming a known `cmd`.
    #[error("malformed request: {0} (expected one JSON line like {{\"cmd\":\"status\"}})")]
    Malformed(String),
}

/// Parses one request line as read from a peer (its `\n`, if any,
/// included): at most [`MAX_REQUEST`] bytes of one JSON object whose `cmd`
/// names a [`Request`]. Pure, so it is fuzzed on its own
/// (fuzz/fuzz_targets/control.rs).
pub fn parse(line: &[u8]) -> Result<Request, RequestError> {
    if line.len() > MAX_REQUEST {
        return Err(RequestError::TooLarge);
    }
    if line.is_empty() {
        return Err(RequestError::Empty);
    }
    // serde reads an internally tagged enum from a JSON array too
    // (`["stop"]`); the protocol is one object, so nothing else is tried.
    let first = line
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
    if first != Some(&b'{') {
        return Err(RequestError::Malformed("expected a JSON object".into()));
    }
    serde_json::from_slice(line).map_err(|e| RequestError::Malformed(e.to_string()))
}

/// A control request failed before the daemon could answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens there (or we may not connect).
    #[error("cannot reach the daemon at {path}: {source}")]
    Unreachable {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The daemon's answer was unreadable.
    #[error("bad answer from the daemon: {0}")]
    BadAnswer(String),
}

/// Sends one request and reads the answer.
pub fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let unreachable = |source| ClientError::Unreachable {
        path: path.display().to_string(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(unreachable)?;
    let mut line = serde_json::to_string(req).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
    line.push('\n');
    // A refused caller may find the socket closed before its request is
    // written; the refusal is then waiting to be read, so read regardless.
    let sent = stream.write_all(line.as_bytes());
    let mut answer = String::new();
    let read = BufReader::new(&stream).read_line(&mut answer);
    if answer.trim().is_empty() {
        if let Err(e) = sent {
            return Err(unreachable(e));
        }
    }
    read.map_err(|e| ClientError::BadAnswer(e.to_string()))?;
    if answer.trim().is_empty() {
        return Err(ClientError::BadAnswer(
            "the daemon closed without answering".into(),
        ));
    }
    serde_json::from_str(&answer).map_err(|e| ClientError::BadAnswer(format!("{e}: {answer}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_as_the_client_sends_them() {
        for req in [Request::Status, Request::Reload, Request::Stop] {
            let mut line = serde_json::to_string(&req).unwrap();
            line.push('\n');
            assert_eq!(parse(line.as_bytes()), Ok(req));
        }
        // Other members are ignored; the line end is optional.
        assert_eq!(parse(b"{\"cmd\":\"stop\",\"why\":[1]}"), Ok(Request::Stop));
    }

    #[test]
    fn refusals() {
        assert_eq!(parse(b""), Err(RequestError::Empty));
        assert_eq!(parse(&[b' '; MAX_REQUEST + 1]), Err(RequestError::TooLarge));
        for bad in [
            &b"\n"[..],
            b"{\"cmd\":\"explode\"}\n",
            b"{\"cmd\":\n",
            b"{\"cmd\":\"status\"}garbage\n",
            b"{}\n",
        ] {
            assert!(
                matches!(parse(bad), Err(RequestError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    /// The reply's words as they go over the socket: scripts that talk to
    /// the socket directly match on `reply`.
    #[test]
    fn replies_as_the_daemon_sends_them() {
        let refused = serde_json::to_string(&Response::refused("no")).unwrap();
        assert_eq!(refused, r#"{"reply":"refused","message":"no"}"#);
        let draining = serde_json::to_string(&Response::Draining).unwrap();
        assert_eq!(draining, r#"{"reply":"draining"}"#);
        let reloaded = serde_json::to_string(&Response::Reloaded {
            summary: "no changes".into(),
        })
        .unwrap();
        assert_eq!(reloaded, r#"{"reply":"reloaded","summary":"no changes"}"#);
        let back: Response = serde_json::from_str(&reloaded).unwrap();
        assert!(matches!(back, Response::Reloaded { .. }));
        let readiness = serde_json::to_string(&Response::Readiness {
            ready: false,
            reason: Some("out".into()),
        })
        .unwrap();
        assert_eq!(
            readiness,
            r#"{"reply":"readiness","ready":false,"reason":"out"}"#
        );
    }

    #[test]
    fn ready_requests_as_the_client_sends_them() {
        let off = serde_json::to_string(&Request::Ready { on: false }).unwrap();
        assert_eq!(off, r#"{"cmd":"ready","on":false}"#);
        assert_eq!(parse(off.as_bytes()), Ok(Request::Ready { on: false }));
        assert!(matches!(
            parse(b"{\"cmd\":\"ready\"}"),
            Err(RequestError::Malformed(_))
        ));
    }

    /// Found by fuzz/fuzz_targets/control.rs: serde accepted a JSON array
    /// whose first element is the command (`["stop"]`) as that command.
    #[test]
    fn an_array_is_not_a_request() {
        for bad in [&b"[\"stop\"\n]"[..], b"[\"status\"]\n", b" [\"reload\"]"] {
            assert!(
                matches!(parse(bad), Err(RequestError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
