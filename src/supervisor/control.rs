//! The control socket: how `echo-labctl status|reload|stop` talk to a
//! running daemon, and who may.
//!
//! Requests: `status`, `reload`, `stop`, `sources` (the busiest
//! sources, from [`crate::admission`]) and `ready` (in or out of
//! rotation, [`crate::observe::probe`]).
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
//!
//! The accepting thread is watched ([`crate::watch`]); the server
//! keeps a duplicate of the listening socket, so when the thread dies
//! [`ControlServer::revive`] starts a new one on the same socket file.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use crate::supervisor::event::Event;
use crate::throttle::Throttle;
use crate::watch::Watched;
pub(crate) use echo_lab_proto::control::{
    default_path, parse, Request, Response, MAX_REQUEST, MAX_TOP,
};

/// The accepting thread's name (what its death is reported as).
pub(crate) const THREAD: &str = "control";

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
    /// Our duplicate of the listener and what the thread needs, kept to
    /// start a new thread if this one dies.
    listener: UnixListener,
    access: Access,
    events: Sender<Event>,
    thread: Watched,
}

impl ControlServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts a new accepting thread on the same socket if `id` is the one
    /// serving (it died); true if so.
    pub fn revive(&mut self, id: u64) -> io::Result<bool> {
        if self.thread.id() != id {
            return Ok(false);
        }
        self.thread = launch(&self.listener, self.access, &self.events)?;
        Ok(true)
    }
}

/// Starts the accepting thread on a duplicate of `listener`.
fn launch(listener: &UnixListener, access: Access, events: &Sender<Event>) -> io::Result<Watched> {
    let theirs = listener.try_clone()?;
    // Opened before the thread starts, so the daemon's descriptor count is
    // settled once this returns.
    let reserve = std::fs::File::open("/dev/null").ok();
    let events = events.clone();
    crate::supervisor::event::watcher(&events).spawn(THREAD, move || {
        accept_loop(theirs, access, events, reserve);
        Ok(())
    })
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
    let thread = launch(&listener, access, &events)?;
    Ok(ControlServer {
        path: path.to_path_buf(),
        listener,
        access,
        events,
        thread,
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
                #[cfg(feature = "fault-injection")]
                crate::fault::thread_event(THREAD);
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
            &Response::refused("busy: too many control connections; try again"),
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
            Response::refused(format!(
                "permission denied: uid {} may not control this daemon (allowed: {})",
                peer.uid,
                access.describe()
            ))
        }
        Err(e) => Response::refused(format!("cannot identify the caller: {e}")),
    };
    reply(stream, &response);
}

fn answer(stream: &UnixStream, events: &Sender<Event>) -> Response {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream.take(MAX_REQUEST as u64 + 1));
    if let Err(e) = reader.read_until(b'\n', &mut line) {
        return Response::refused(format!("cannot read request: {e}"));
    }
    let request = match parse(&line) {
        Ok(r) => r,
        Err(e) => return Response::refused(e.to_string()),
    };
    let answered = match request {
        Request::Status => ask(events, Event::Status).map(|status| Response::Status {
            status: Box::new(status),
        }),
        Request::Reload => ask(events, |tx| Event::Reload(Some(tx))).map(|outcome| match outcome {
            Ok(reloaded) => Response::Reloaded {
                summary: reloaded.to_string(),
            },
            Err(e) => Response::refused(e.to_string()),
        }),
        Request::Stop => tell(events, Event::Terminate).map(|()| Response::Draining),
        Request::Sources { top } => ask(events, |tx| Event::Sources(top.clamp(1, MAX_TOP), tx))
            .map(|sources| Response::Sources { sources }),
        Request::Ready { on } => ask(events, |tx| Event::Ready(on, tx))
            .map(|(ready, reason)| Response::Readiness { ready, reason }),
    };
    answered.unwrap_or_else(Response::refused)
}

/// Hands the supervisor an event that carries a reply channel, and waits
/// (at most [`REPLY_TIMEOUT`]) for the reply: the one way a control
/// request asks the supervisor something.
fn ask<T>(
    events: &Sender<Event>,
    event: impl FnOnce(Sender<T>) -> Event,
) -> Result<T, &'static str> {
    let (tx, rx) = std::sync::mpsc::channel();
    tell(events, event(tx))?;
    rx.recv_timeout(REPLY_TIMEOUT)
        .map_err(|_| "no answer from the daemon")
}

/// Hands the supervisor an event that needs no reply.
fn tell(events: &Sender<Event>, event: Event) -> Result<(), &'static str> {
    events
        .send(event)
        .map_err(|_| "the daemon is shutting down")
}
