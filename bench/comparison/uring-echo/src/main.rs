//! uring-echo: an experimental TCP echo server on io_uring.
//!
//! N worker threads, each with its own io_uring and its own listening socket
//! bound to the same address with SO_REUSEPORT (the kernel spreads incoming
//! connections across them). Per worker:
//!
//! * one multishot accept on its listener; by default the accepted sockets go
//!   straight into the ring's registered (fixed) file table
//!   (IORING_FILE_INDEX_ALLOC), so they never occupy a normal descriptor and
//!   every recv/send skips the fd-table lookup;
//! * per connection exactly one operation in flight: recv into a 4 KiB buffer;
//!   on n > 0 a send of those n bytes (a short send is resubmitted for the
//!   rest); when the whole chunk is sent, recv again; n == 0 or an error
//!   closes the connection;
//! * the loop: one `submit_and_wait(1)`, then drain every CQE, pushing the new
//!   SQEs, then the next `submit_and_wait(1)` submits them all at once.
//!
//! Accepted sockets inherit TCP_NODELAY from the listener.
//!
//! Usage: `uring-echo ADDR [--workers N] [--no-fixed-files]
//!         [--no-defer-taskrun] [--no-single-issuer] [--no-coop-taskrun]
//!         [--entries N]`
//! Prints `listening on ADDR` on stdout once every worker is ready.

use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::mpsc;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

const BUF_SIZE: usize = 4096;

const KIND_ACCEPT: u64 = 0;
const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
const KIND_CLOSE: u64 = 3;

#[derive(Clone, Copy, Debug)]
struct Options {
    workers: usize,
    fixed_files: bool,
    single_issuer: bool,
    defer_taskrun: bool,
    coop_taskrun: bool,
    entries: u32,
}

fn fail(msg: &str) -> ! {
    eprintln!("uring-echo: {msg}");
    std::process::exit(2);
}

fn main() {
    let mut addr: Option<String> = None;
    let mut opts = Options {
        workers: 2,
        fixed_files: true,
        single_issuer: true,
        defer_taskrun: true,
        coop_taskrun: true,
        entries: 4096,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--workers" => match args.next().and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if n > 0 => opts.workers = n,
                _ => fail("--workers needs a positive number"),
            },
            "--entries" => match args.next().and_then(|n| n.parse::<u32>().ok()) {
                Some(n) if n > 0 => opts.entries = n,
                _ => fail("--entries needs a positive number"),
            },
            "--no-fixed-files" => opts.fixed_files = false,
            "--no-defer-taskrun" => opts.defer_taskrun = false,
            "--no-single-issuer" => {
                opts.single_issuer = false;
                opts.defer_taskrun = false; // DEFER_TASKRUN requires SINGLE_ISSUER
            }
            "--no-coop-taskrun" => opts.coop_taskrun = false,
            "-h" | "--help" => {
                println!(
                    "usage: uring-echo ADDR [--workers N] [--no-fixed-files] \
                     [--no-defer-taskrun] [--no-single-issuer] [--no-coop-taskrun] [--entries N]"
                );
                return;
            }
            s if s.starts_with('-') => fail(&format!("unknown option {s}")),
            s => {
                if addr.is_some() {
                    fail("more than one address given");
                }
                addr = Some(s.to_string());
            }
        }
    }
    let addr = addr.unwrap_or_else(|| fail("usage: uring-echo ADDR [--workers N]"));
    let addr: SocketAddr = match addr.to_socket_addrs().ok().and_then(|mut a| a.next()) {
        Some(a) => a,
        None => fail(&format!("cannot resolve {addr}")),
    };

    // SIGPIPE must not kill us if a peer goes away mid-send (sends also carry
    // MSG_NOSIGNAL; this is belt and braces).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }

    // Bind every listener here, so that with port 0 all of them share the
    // port the first one got.
    let first = bind_listener(addr).unwrap_or_else(|e| fail(&format!("cannot listen on {addr}: {e}")));
    let bound = first.local_addr().unwrap_or_else(|e| fail(&format!("local_addr: {e}")));
    let mut listeners = vec![first];
    for _ in 1..opts.workers {
        listeners.push(bind_listener(bound).unwrap_or_else(|e| fail(&format!("cannot listen on {bound}: {e}"))));
    }

    let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
    let mut handles = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let tx = ready_tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("uring-{i}"))
            .spawn(move || {
                let fd: OwnedFd = l.into();
                if let Err(e) = worker(fd, opts, tx) {
                    eprintln!("uring-echo: worker {i}: {e}");
                    std::process::exit(1);
                }
            })
            .unwrap_or_else(|e| fail(&format!("cannot spawn worker: {e}")));
        handles.push(h);
    }
    drop(ready_tx);
    let mut notes = Vec::new();
    for _ in 0..opts.workers {
        match ready_rx.recv() {
            Ok(Ok(note)) => notes.push(note),
            Ok(Err(e)) => fail(&e),
            Err(_) => fail("a worker died during setup"),
        }
    }
    if std::env::var_os("URING_ECHO_VERBOSE").is_some() {
        for n in &notes {
            eprintln!("uring-echo: {n}");
        }
    }
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "listening on {bound}");
    let _ = out.flush();
    drop(out);
    for h in handles {
        let _ = h.join();
    }
}

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for (level, name) in [
            (libc::SOL_SOCKET, libc::SO_REUSEADDR),
            (libc::SOL_SOCKET, libc::SO_REUSEPORT),
            (libc::IPPROTO_TCP, libc::TCP_NODELAY), // inherited by accepted sockets
        ] {
            if libc::setsockopt(
                fd,
                level,
                name,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        let (storage, len) = sockaddr_of(addr);
        if libc::bind(fd, &storage as *const _ as *const libc::sockaddr, len) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::listen(fd, 4096) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(TcpListener::from_raw_fd(owned.into_raw_fd()))
    }
}

fn sockaddr_of(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Builds the ring, dropping setup flags the kernel refuses (most wanted
/// first). Returns the ring and a description of the flags in force.
fn build_ring(opts: &Options) -> io::Result<(IoUring, String)> {
    // (single_issuer, defer_taskrun, coop_taskrun)
    let mut tries: Vec<(bool, bool, bool)> = Vec::new();
    let si = opts.single_issuer;
    let dt = opts.defer_taskrun && si;
    let ct = opts.coop_taskrun;
    for t in [(si, dt, ct), (si, dt, false), (si, false, ct), (false, false, ct), (false, false, false)] {
        if !tries.contains(&t) {
            tries.push(t);
        }
    }
    let mut last_err = None;
    let mut refused = Vec::new();
    for (si, dt, ct) in tries {
        let mut b = IoUring::builder();
        b.setup_cqsize(opts.entries * 2).setup_submit_all();
        if si {
            b.setup_single_issuer();
        }
        if dt {
            b.setup_defer_taskrun();
        }
        if ct {
            b.setup_coop_taskrun();
        }
        let desc = format!(
            "SUBMIT_ALL CQSIZE={}{}{}{}",
            opts.entries * 2,
            if si { " SINGLE_ISSUER" } else { "" },
            if dt { " DEFER_TASKRUN" } else { "" },
            if ct { " COOP_TASKRUN" } else { "" },
        );
        match b.build(opts.entries) {
            Ok(r) => {
                let mut note = format!("ring entries={} flags: {desc}", opts.entries);
                if !refused.is_empty() {
                    note.push_str(&format!(" (refused: {})", refused.join("; ")));
                    eprintln!("uring-echo: kernel refused setup flags: {}", refused.join("; "));
                }
                return Ok((r, note));
            }
            Err(e) => {
                refused.push(format!("[{desc}]: {e}"));
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap())
}

struct Conn {
    buf: Box<[u8; BUF_SIZE]>,
    /// bytes of the current chunk received (to be echoed)
    len: u32,
    /// bytes of the current chunk already sent
    sent: u32,
}

#[inline]
fn ud(kind: u64, idx: u32) -> u64 {
    (kind << 32) | idx as u64
}

#[inline]
fn recv_sqe(fixed: bool, idx: u32, buf: *mut u8) -> squeue::Entry {
    let e = if fixed {
        opcode::Recv::new(types::Fixed(idx), buf, BUF_SIZE as u32).build()
    } else {
        opcode::Recv::new(types::Fd(idx as RawFd), buf, BUF_SIZE as u32).build()
    };
    e.user_data(ud(KIND_RECV, idx))
}

#[inline]
fn send_sqe(fixed: bool, idx: u32, buf: *const u8, len: u32) -> squeue::Entry {
    let e = if fixed {
        opcode::Send::new(types::Fixed(idx), buf, len).flags(libc::MSG_NOSIGNAL).build()
    } else {
        opcode::Send::new(types::Fd(idx as RawFd), buf, len).flags(libc::MSG_NOSIGNAL).build()
    };
    e.user_data(ud(KIND_SEND, idx))
}

fn worker(listener: OwnedFd, opts: Options, ready: mpsc::Sender<Result<String, String>>) -> io::Result<()> {
    // The ring is created on this thread: SINGLE_ISSUER binds it to its creator.
    let (mut ring, mut note) = match build_ring(&opts) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(format!("io_uring setup failed: {e}")));
            return Err(e);
        }
    };

    let mut fixed = opts.fixed_files;
    let mut table_size: u32 = 0;
    if fixed {
        // A sparse table as large as the descriptor limit allows.
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
        table_size = (rl.rlim_cur as u64).clamp(64, 65536) as u32;
        if let Err(e) = ring.submitter().register_files_sparse(table_size) {
            eprintln!("uring-echo: register_files_sparse({table_size}) failed: {e}; using plain fds");
            note.push_str(&format!(" register_files_sparse failed: {e}"));
            fixed = false;
        }
    }
    note.push_str(if fixed { " fixed-files=yes" } else { " fixed-files=no" });
    if fixed {
        note.push_str(&format!(" table={table_size}"));
    }
    let _ = ready.send(Ok(note));
    drop(ready);

    let lfd = listener.as_raw_fd();
    let accept_sqe = || {
        if fixed {
            opcode::AcceptMulti::new(types::Fd(lfd)).allocate_file_index(true).build().user_data(ud(KIND_ACCEPT, 0))
        } else {
            opcode::AcceptMulti::new(types::Fd(lfd))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(ud(KIND_ACCEPT, 0))
        }
    };

    // Connections indexed by fixed-file slot (or by fd without fixed files).
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut pool: Vec<Box<[u8; BUF_SIZE]>> = Vec::new();
    let mut pending: Vec<squeue::Entry> = Vec::with_capacity(1024);
    pending.push(accept_sqe());

    let (submitter, mut sq, mut cq) = ring.split();
    loop {
        // Push everything queued; if the SQ fills, submit without waiting.
        let mut i = 0;
        while i < pending.len() {
            if unsafe { sq.push(&pending[i]) }.is_ok() {
                i += 1;
            } else {
                sq.sync();
                match submitter.submit() {
                    Ok(_) => {}
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {}
                    Err(e) => return Err(e),
                }
                sq.sync();
            }
        }
        pending.clear();
        sq.sync();
        match submitter.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {}
            Err(e) => return Err(e),
        }
        cq.sync();
        for cqe in &mut cq {
            let data = cqe.user_data();
            let kind = data >> 32;
            let idx = data as u32;
            let res = cqe.result();
            match kind {
                KIND_ACCEPT => {
                    if res >= 0 {
                        let slot = res as u32;
                        let s = slot as usize;
                        if s >= conns.len() {
                            conns.resize_with((s + 1).max(conns.len() * 2).max(64), || None);
                        }
                        let mut buf = pool.pop().unwrap_or_else(|| Box::new([0u8; BUF_SIZE]));
                        let p = buf.as_mut_ptr();
                        debug_assert!(conns[s].is_none());
                        conns[s] = Some(Conn { buf, len: 0, sent: 0 });
                        pending.push(recv_sqe(fixed, slot, p));
                    } else {
                        let err = io::Error::from_raw_os_error(-res);
                        if !matches!(-res, libc::EINTR | libc::EAGAIN | libc::ECONNABORTED) {
                            eprintln!("uring-echo: accept: {err}");
                        }
                    }
                    if !cqueue::more(cqe.flags()) {
                        // Multishot ended (error or kernel decision): re-arm.
                        pending.push(accept_sqe());
                    }
                }
                KIND_RECV => {
                    let s = idx as usize;
                    let Some(c) = conns.get_mut(s).and_then(|c| c.as_mut()) else { continue };
                    if res > 0 {
                        c.len = res as u32;
                        c.sent = 0;
                        pending.push(send_sqe(fixed, idx, c.buf.as_ptr(), c.len));
                    } else if res == -libc::EINTR || res == -libc::EAGAIN {
                        pending.push(recv_sqe(fixed, idx, c.buf.as_mut_ptr()));
                    } else {
                        close_conn(&mut conns, &mut pool, &mut pending, fixed, idx);
                    }
                }
                KIND_SEND => {
                    let s = idx as usize;
                    let Some(c) = conns.get_mut(s).and_then(|c| c.as_mut()) else { continue };
                    if res > 0 {
                        c.sent += res as u32;
                        if c.sent < c.len {
                            let p = unsafe { c.buf.as_ptr().add(c.sent as usize) };
                            pending.push(send_sqe(fixed, idx, p, c.len - c.sent));
                        } else {
                            pending.push(recv_sqe(fixed, idx, c.buf.as_mut_ptr()));
                        }
                    } else if res == -libc::EINTR || res == -libc::EAGAIN {
                        let p = unsafe { c.buf.as_ptr().add(c.sent as usize) };
                        pending.push(send_sqe(fixed, idx, p, c.len - c.sent));
                    } else {
                        close_conn(&mut conns, &mut pool, &mut pending, fixed, idx);
                    }
                }
                KIND_CLOSE => {
                    if res < 0 {
                        eprintln!("uring-echo: close slot {idx}: {}", io::Error::from_raw_os_error(-res));
                    }
                }
                _ => {}
            }
        }
    }
}

/// Called only when the connection has no operation in flight.
fn close_conn(
    conns: &mut [Option<Conn>],
    pool: &mut Vec<Box<[u8; BUF_SIZE]>>,
    pending: &mut Vec<squeue::Entry>,
    fixed: bool,
    idx: u32,
) {
    if let Some(c) = conns[idx as usize].take() {
        if pool.len() < 4096 {
            pool.push(c.buf);
        }
        if fixed {
            // The slot is freed when the close is issued; the kernel cannot
            // hand it to a new accept before that, and the entry is already
            // gone from `conns`.
            pending.push(opcode::Close::new(types::Fixed(idx)).build().user_data(ud(KIND_CLOSE, idx)));
        } else {
            unsafe { libc::close(idx as RawFd) };
        }
    }
}
