//! shared-echo: an experimental TCP echo server whose threads share one
//! epoll instance, to measure what a shared poller buys over echo-lab's
//! model, where each connection belongs to one worker and its own epoll.
//!
//! N threads block in `epoll_wait` on the same epoll; the kernel wakes one
//! of them per batch of events, so a ready connection is served by
//! whichever thread is awake, never left waiting for the one that owns it.
//! Connections are registered edge-triggered (`EPOLLIN | EPOLLOUT |
//! EPOLLRDHUP | EPOLLET`, as mio and tokio register them); a thread serves
//! a connection by reading until `EAGAIN` and writing each chunk back.
//!
//! Two threads may be handed events of the same connection (a new edge
//! while one is still serving it). An atomic state per connection makes
//! the serving exclusive without a lock: IDLE -> RUNNING claims it;
//! an event that finds it RUNNING marks it AGAIN and leaves; the runner,
//! finding AGAIN when it tries to go back to IDLE, serves it once more.
//! No event is lost and no two threads touch a connection at once.
//!
//! Every thread also accepts: the listener is in the same epoll
//! (edge-triggered, accept until `EAGAIN`). Connections live in a table
//! indexed by file descriptor, allocated up front (`--max-fd`, default
//! 65 536), so serving never takes a lock on the table either.
//!
//! Usage: `shared-echo ADDR [--workers N] [--max-events N] [--max-fd N]
//! [--timeout-ms N]`. `--timeout-ms` gives `epoll_wait` a timeout (default
//! none), to measure what the kernel's timer per sleep costs.
//! Prints `listening on ADDR` on stdout when ready.

use std::cell::UnsafeCell;
use std::io::{self, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

const IDLE: u8 = 0;
const RUNNING: u8 = 1;
const AGAIN: u8 = 2;
const LISTENER: u64 = u64::MAX;

/// Echo bytes not yet written back (the peer's receive window was full).
struct Conn {
    stream: Option<TcpStream>,
    unsent: Vec<u8>,
}

struct Slot {
    state: AtomicU8,
    /// The poller reported the peer's end of input. Kept, because the
    /// report is an edge: if it came while the echo was waiting for room,
    /// a later short read must not be taken for "nothing more".
    end_reported: AtomicBool,
    conn: UnsafeCell<Conn>,
}

// SAFETY: `conn` is touched only by the thread that moved `state` from
// IDLE to RUNNING, until it moves it back to IDLE.
unsafe impl Sync for Slot {}

struct Shared {
    epfd: RawFd,
    listener: TcpListener,
    slots: Vec<Slot>,
    max_events: usize,
    /// `epoll_wait`'s timeout; -1 = none.
    timeout_ms: i32,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| usage());
    let (mut workers, mut max_events, mut max_fd) = (2usize, 64usize, 65_536usize);
    let mut timeout_ms = -1i32;
    while let Some(a) = args.next() {
        let v = args
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage());
        match a.as_str() {
            "--workers" => workers = v,
            "--max-events" => max_events = v,
            "--max-fd" => max_fd = v,
            "--timeout-ms" => timeout_ms = v as i32,
            _ => usage(),
        }
    }
    let listener = TcpListener::bind(&addr).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epfd >= 0, "epoll_create1: {}", io::Error::last_os_error());
    let slots = (0..max_fd)
        .map(|_| Slot {
            state: AtomicU8::new(IDLE),
            end_reported: AtomicBool::new(false),
            conn: UnsafeCell::new(Conn {
                stream: None,
                unsent: Vec::new(),
            }),
        })
        .collect();
    let shared = Arc::new(Shared {
        epfd,
        listener,
        slots,
        max_events,
        timeout_ms,
    });
    add(
        epfd,
        shared.listener.as_raw_fd(),
        LISTENER,
        libc::EPOLLIN as u32 | libc::EPOLLET as u32,
    );
    let local = shared.listener.local_addr().expect("local_addr");
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let s = Arc::clone(&shared);
            std::thread::spawn(move || run(&s))
        })
        .collect();
    println!("listening on {local}");
    io::stdout().flush().ok();
    for t in threads {
        t.join().ok();
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: shared-echo ADDR [--workers N] [--max-events N] [--max-fd N] [--timeout-ms N]"
    );
    std::process::exit(2)
}

fn add(epfd: RawFd, fd: RawFd, data: u64, events: u32) {
    let mut ev = libc::epoll_event { events, u64: data };
    let rc = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    assert!(rc == 0, "epoll_ctl: {}", io::Error::last_os_error());
}

fn run(s: &Shared) {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; s.max_events];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = unsafe {
            libc::epoll_wait(
                s.epfd,
                events.as_mut_ptr(),
                events.len() as i32,
                s.timeout_ms,
            )
        };
        if n < 0 {
            continue; // EINTR
        }
        for ev in &events[..n as usize] {
            match ev.u64 {
                LISTENER => accept_all(s),
                fd => on_event(s, fd as usize, ev.events, &mut buf),
            }
        }
    }
}

fn accept_all(s: &Shared) {
    while let Ok((stream, _)) = s.listener.accept() {
        let fd = stream.as_raw_fd();
        if fd as usize >= s.slots.len() || stream.set_nonblocking(true).is_err() {
            continue; // dropped: closed
        }
        let _ = stream.set_nodelay(true);
        let slot = &s.slots[fd as usize];
        // The descriptor is new, so no event for it can be in flight yet.
        unsafe { (*slot.conn.get()).stream = Some(stream) };
        slot.end_reported.store(false, Ordering::Relaxed);
        let ev = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
        add(s.epfd, fd, fd as u64, ev as u32);
    }
}

/// Claims the connection or leaves a note for the thread serving it.
fn on_event(s: &Shared, fd: usize, events: u32, buf: &mut [u8]) {
    let slot = &s.slots[fd];
    if events & (libc::EPOLLRDHUP | libc::EPOLLHUP) as u32 != 0 {
        slot.end_reported.store(true, Ordering::Release);
    }
    loop {
        match slot.state.load(Ordering::Acquire) {
            IDLE => {
                if slot
                    .state
                    .compare_exchange(IDLE, RUNNING, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    break;
                }
            }
            RUNNING => {
                if slot
                    .state
                    .compare_exchange(RUNNING, AGAIN, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
            }
            _ => return,
        }
    }
    loop {
        // SAFETY: this thread moved the state to RUNNING.
        let conn = unsafe { &mut *slot.conn.get() };
        if !serve(conn, buf, &slot.end_reported) {
            // Ended: free the slot first, then close (which also takes the
            // descriptor out of the epoll), so a new connection given the
            // same descriptor never finds the slot still claimed.
            let stream = conn.stream.take();
            conn.unsent.clear();
            slot.state.store(IDLE, Ordering::Release);
            drop(stream);
            return;
        }
        if slot
            .state
            .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return;
        }
        slot.state.store(RUNNING, Ordering::Release);
    }
}

/// Reads until EAGAIN, echoing each chunk; false when the connection ends.
fn serve(conn: &mut Conn, buf: &mut [u8], end_reported: &AtomicBool) -> bool {
    let Some(stream) = conn.stream.as_ref() else {
        return true;
    };
    let fd = stream.as_raw_fd();
    if !flush(fd, &mut conn.unsent) {
        return false;
    }
    if !conn.unsent.is_empty() {
        return true; // wait for EPOLLOUT before reading more
    }
    loop {
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n == 0 {
            return false;
        }
        if n < 0 {
            return io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock;
        }
        let n = n as usize;
        let w = unsafe { libc::send(fd, buf.as_ptr().cast(), n, libc::MSG_NOSIGNAL) };
        let w = if w < 0 {
            if io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                return false;
            }
            0
        } else {
            w as usize
        };
        if w < n {
            conn.unsent.extend_from_slice(&buf[w..n]);
            return true;
        }
        if n < buf.len() && !end_reported.load(Ordering::Acquire) {
            // A short read: the socket is most likely empty; the next edge
            // brings us back (saves the recv that would say EAGAIN).
            return true;
        }
    }
}

fn flush(fd: RawFd, unsent: &mut Vec<u8>) -> bool {
    while !unsent.is_empty() {
        let w = unsafe { libc::send(fd, unsent.as_ptr().cast(), unsent.len(), libc::MSG_NOSIGNAL) };
        if w < 0 {
            return io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock;
        }
        unsent.drain(..w as usize);
    }
    true
}
