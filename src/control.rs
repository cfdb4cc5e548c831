//! The control socket: how `echo-labctl status|reload|stop` talk to a
//! running daemon, and who may.
//!
//! Requests: `status`, `reload`, `stop` and `sources` (the busiest
//! sources, from [`crate::admission`]).
//!
//! A Unix stream socket, mode 0660, carrying one JSON request line and one
//! JSON response line per connection. Access is checked twice: by the file
//! mode (and group, with `control_group`), and for every connection by the
//! peer's credentials from `SO_PEERCRED` — root, the daemon's own user, and
//! members of `control_group` are served; anyone else gets a clear refusal.
//! Each connection is served on its own short-lived thread (at most 256 at
//! once; more are told "busy" at once) with short timeouts and a size cap
//! on requests, so a malformed, oversized or stalled request costs an error
//! answer, never a crash, a hang, or an operator locked out. Requests
//! are handed to the supervisor as [`Event`]s, so a reload asked here is the
//! same as a SIGHUP — except that the caller learns the outcome.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::admission::SourceView;
use crate::event::{Event, Status};
use crate::throttle::Throttle;

/// Largest request accepted, in bytes.
pub const MAX_REQUEST: usize = 4096;

/// Control connections served at once. Only allowed users get this far
/// (file mode), and a stalled one holds a small thread for at most
/// [`IO_TIMEOUT`]; beyond the cap a peer is told "busy" at once.
const MAX_CLIENTS: usize = 256;

/// Stack of a control connection's thread: it parses one short line.
const CLIENT_STACK: usize = 128 * 1024;

/// At most one accept-error log line per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How long a peer may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a reload may take before the caller is told it timed out.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

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
}

fn default_top() -> usize {
    20
}

/// The most sources one `sources` answer lists.
pub const MAX_TOP: usize = 10_000;

/// A response line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Response {
    /// The daemon did what was asked.
    pub ok: bool,
    /// What happened, or why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// For `sources`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<SourceView>>,
}

impl Response {
    fn error(message: impl Into<String>) -> Self {
        Response {
            ok: false,
            message: Some(message.into()),
            status: None,
            sources: None,
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

/// Resolves a group name or number to a gid.
pub fn resolve_group(name: &str) -> io::Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let content = std::fs::read_to_string("/etc/group")?;
    content
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let n = f.next()?;
            let gid = f.nth(1)?.parse::<u32>().ok()?;
            (n == name).then_some(gid)
        })
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no group named '{name}'")))
}

/// Who is at the other end of a Unix socket.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Reads `SO_PEERCRED`.
pub fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// The access rule: root, our own uid, or a member of `group`.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// The daemon's effective uid.
    pub own_uid: u32,
    /// `control_group`, resolved.
    pub group: Option<u32>,
}

impl Access {
    /// May `peer` use the control socket?
    pub fn allows(&self, peer: &Peer) -> bool {
        if peer.uid == 0 || peer.uid == self.own_uid {
            return true;
        }
        match self.group {
            Some(g) => peer.gid == g || supplementary_groups(peer.pid).contains(&g),
            None => false,
        }
    }

    fn describe(&self) -> String {
        match self.group {
            Some(g) => format!("root, uid {} and group {g}", self.own_uid),
            None => format!("root and uid {}", self.own_uid),
        }
    }
}

/// The peer process's supplementary groups, from /proc.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// The running control socket; removes its file when dropped.
pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the control socket and serves it on its own thread.
pub fn spawn(path: &Path, access: Access, events: Sender<Event>) -> io::Result<ControlServer> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another running daemon", path.display()),
            ));
        }
        // A stale socket from a daemon that did not exit cleanly.
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = access.group {
        // No owner: it stays as it is.
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    // Opened before the thread starts, so the daemon's descriptor count is
    // settled once `spawn` returns.
    let reserve = std::fs::File::open("/dev/null").ok();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || accept_loop(listener, access, events, reserve))?;
    Ok(ControlServer {
        path: path.to_path_buf(),
    })
}

/// Accepts control connections forever.
///
/// An operator must be able to ask a daemon that has run out of file
/// descriptors what is going on, so one descriptor is held in reserve (an
/// open /dev/null): when accept fails with EMFILE/ENFILE the reserve is
/// released and the accept retried at once, and the reserve is taken back
/// when a descriptor is free again. Accept errors are logged at most once
/// per interval.
fn accept_loop(
    listener: UnixListener,
    access: Access,
    events: Sender<Event>,
    mut reserve: Option<std::fs::File>,
) {
    let busy = Arc::new(AtomicUsize::new(0));
    let mut log = Throttle::new(LOG_INTERVAL);
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                dispatch(stream, access, &events, &busy);
                if reserve.is_none() {
                    reserve = std::fs::File::open("/dev/null").ok();
                }
            }
            Err(e) => {
                let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if out_of_fds && reserve.take().is_some() {
                    continue;
                }
                if log.ready(std::time::Instant::now()) {
                    log::warn!("control socket accept: {e}");
                }
                std::thread::sleep(Duration::from_millis(100));
                if reserve.is_none() {
                    reserve = std::fs::File::open("/dev/null").ok();
                }
            }
        }
    }
}

/// Serves each control connection on its own short-lived thread, so a
/// peer that stalls (up to [`IO_TIMEOUT`]) delays nobody else; at most
/// [`MAX_CLIENTS`] at once, beyond which a peer is answered "busy" at once.
fn dispatch(stream: UnixStream, access: Access, events: &Sender<Event>, busy: &Arc<AtomicUsize>) {
    if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
        busy.fetch_sub(1, Ordering::AcqRel);
        reply(
            stream,
            &Response::error("busy: too many control connections; try again"),
        );
        return;
    }
    let events = events.clone();
    let guard = Busy(busy.clone());
    let spawned = std::thread::Builder::new()
        .name("control-conn".into())
        .stack_size(CLIENT_STACK)
        .spawn(move || {
            let _guard = guard;
            serve(stream, &access, &events);
        });
    if let Err(e) = spawned {
        log::warn!("control socket: cannot start a thread: {e}");
    }
}

/// Counts a control connection in service until dropped.
struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn reply(mut stream: UnixStream, response: &Response) {
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    if let Ok(mut line) = serde_json::to_string(response) {
        line.push('\n');
        let _ = stream.write_all(line.as_bytes());
    }
}

fn serve(stream: UnixStream, access: &Access, events: &Sender<Event>) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let response = match peer_of(&stream) {
        Ok(peer) if access.allows(&peer) => answer(&stream, events),
        Ok(peer) => {
            log::warn!(
                "control socket: refused uid {} (pid {})",
                peer.uid,
                peer.pid
            );
            Response::error(format!(
                "permission denied: uid {} may not control this daemon (allowed: {})",
                peer.uid,
                access.describe()
            ))
        }
        Err(e) => Response::error(format!("cannot identify the caller: {e}")),
    };
    reply(stream, &response);
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

fn answer(stream: &UnixStream, events: &Sender<Event>) -> Response {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream.take(MAX_REQUEST as u64 + 1));
    if let Err(e) = reader.read_until(b'\n', &mut line) {
        return Response::error(format!("cannot read request: {e}"));
    }
    let request = match parse(&line) {
        Ok(r) => r,
        Err(e) => return Response::error(e.to_string()),
    };
    match request {
        Request::Status => {
            let (tx, rx) = std::sync::mpsc::channel();
            if events.send(Event::Status(tx)).is_err() {
                return Response::error("the daemon is shutting down");
            }
            match rx.recv_timeout(REPLY_TIMEOUT) {
                Ok(status) => Response {
                    ok: true,
                    message: None,
                    status: Some(status),
                    sources: None,
                },
                Err(_) => Response::error("no answer from the daemon"),
            }
        }
        Request::Reload => {
            let (tx, rx) = std::sync::mpsc::channel();
            if events.send(Event::Reload(Some(tx))).is_err() {
                return Response::error("the daemon is shutting down");
            }
            match rx.recv_timeout(REPLY_TIMEOUT) {
                Ok(Ok(summary)) => Response {
                    ok: true,
                    message: Some(format!("reloaded: {summary}")),
                    status: None,
                    sources: None,
                },
                Ok(Err(e)) => Response::error(e),
                Err(_) => Response::error("no answer from the daemon"),
            }
        }
        Request::Stop => {
            if events.send(Event::Terminate).is_err() {
                return Response::error("the daemon is shutting down");
            }
            Response {
                ok: true,
                message: Some("draining".into()),
                status: None,
                sources: None,
            }
        }
        Request::Sources { top } => {
            let (tx, rx) = std::sync::mpsc::channel();
            if events
                .send(Event::Sources(top.clamp(1, MAX_TOP), tx))
                .is_err()
            {
                return Response::error("the daemon is shutting down");
            }
            match rx.recv_timeout(REPLY_TIMEOUT) {
                Ok(sources) => Response {
                    ok: true,
                    message: None,
                    status: None,
                    sources: Some(sources),
                },
                Err(_) => Response::error("no answer from the daemon"),
            }
        }
    }
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
