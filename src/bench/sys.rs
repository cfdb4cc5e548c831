//! The two facts about its own process the generator needs from the OS:
//! how many descriptors it may open, and how much CPU it has used.
//!
//! Ten thousand connections need ten thousand descriptors, more than the
//! usual soft limit of 1024. The soft limit may be raised up to the hard
//! limit without privileges, so the generator does that before connecting
//! and refuses to start (instead of failing half the connections) when even
//! the hard limit is too low.
//!
//! CPU time (user plus system, from `getrusage`) is how the generator
//! reports its own cost: on a machine where client and server share the
//! cores, every CPU-second the client burns is one the server did not get.

use std::io;
use std::time::Duration;

use thiserror::Error;

/// Descriptors kept free for stdio, the poller and the runtime.
const SPARE_FDS: u64 = 64;

/// Setting up the process for a run failed.
#[derive(Debug, Error)]
pub enum LimitError {
    /// `getrlimit`/`setrlimit` failed.
    #[error("cannot read or raise the open-file limit: {0}")]
    Os(#[from] io::Error),
    /// Even the hard limit is below what the run needs.
    #[error(
        "{connections} connections need about {needed} open files, but the hard limit \
         (ulimit -Hn) is {hard}"
    )]
    TooLow {
        connections: usize,
        needed: u64,
        hard: u64,
    },
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and checks that it allows
/// `connections` sockets. Returns the new soft limit.
pub fn raise_nofile(connections: usize) -> Result<u64, LimitError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
        lim = raised;
    }
    let needed = connections as u64 + SPARE_FDS;
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < needed {
        return Err(LimitError::TooLow {
            connections,
            needed,
            hard: lim.rlim_max,
        });
    }
    Ok(lim.rlim_cur)
}

/// User plus system CPU time this process has used so far.
pub fn cpu_time() -> io::Result<Duration> {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we pass and nothing else.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Ok(tv(usage.ru_utime) + tv(usage.ru_stime))
}
