//! Process resource limits the daemon depends on.
//!
//! Every connection is a file descriptor, and distributions start services
//! with a soft RLIMIT_NOFILE of 1024 while allowing far more: like nginx's
//! `worker_rlimit_nofile`, the daemon raises its soft limit to the hard
//! limit at start and warns when `max_connections` cannot fit in it.

use std::io;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors the daemon needs besides client connections: listeners,
/// pollers, wakers, control socket, log, standard streams.
pub const RESERVED_FDS: u64 = 64;

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft
/// limit.
pub fn raise_nofile() -> io::Result<u64> {
    let lim = getrlimit(Resource::Nofile);
    // `None` is RLIM_INFINITY.
    let hard = lim.maximum.unwrap_or(u64::MAX);
    let soft = lim.current.unwrap_or(u64::MAX);
    if soft < hard {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            },
        )?;
        return Ok(hard);
    }
    Ok(soft)
}

/// The warning to log if `max_connections` does not fit under `nofile`.
pub fn nofile_warning(max_connections: usize, nofile: u64) -> Option<String> {
    let need = max_connections as u64 + RESERVED_FDS;
    (need > nofile).then(|| {
        format!(
            "max_connections = {max_connections} needs about {need} file descriptors but \
             RLIMIT_NOFILE is {nofile}; accepts will fail beyond about {} connections \
             (raise LimitNOFILE= or ulimit -n)",
            nofile.saturating_sub(RESERVED_FDS)
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn warns_only_when_short() {
        assert!(super::nofile_warning(100, 1024).is_none());
        assert!(super::nofile_warning(10_000, 1024)
            .unwrap()
            .contains("10064"));
    }
}
