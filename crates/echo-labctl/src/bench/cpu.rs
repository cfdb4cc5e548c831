//! CPU time: the generator's own, and the server's when its pid is given.
//!
//! On a machine where client and server share the cores, every CPU-second
//! the client burns is one the server did not get, so the generator reports
//! its own cost (user plus system time: its CPU clock,
//! `CLOCK_PROCESS_CPUTIME_ID`, the total `getrusage` splits). What the server
//! costs per round trip is the figure that says how efficient it is whatever
//! the client does: with `--server-pid` the coordinator reads the server's
//! user plus system time (fields 14 and 15 of `/proc/PID/stat`, which count
//! every thread, live or exited) at the start and at the end of the
//! measured window. Those fields count clock ticks (`CLK_TCK`, 100 per
//! second on Linux), so a figure over a window of a second is good to about
//! one per cent of a core.

use std::io;
use std::time::{Duration, Instant};

use rustix::time::{clock_gettime, ClockId};
use thiserror::Error;

/// User plus system CPU time this process has used so far.
pub fn own() -> io::Result<Duration> {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    Ok(Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_nanos(t.tv_nsec.max(0) as u64))
}

/// Reading another process's CPU time failed.
#[derive(Debug, Error)]
pub enum ProcError {
    /// `/proc/PID/stat` could not be read (no such process, most likely).
    #[error("cannot read /proc/{pid}/stat (is {pid} the server's pid?): {source}")]
    Read { pid: u32, source: io::Error },
    /// The file did not have the fields of `proc(5)`.
    #[error("/proc/{pid}/stat is not in the format of proc(5)")]
    Format { pid: u32 },
}

/// User plus system CPU time process `pid` has used so far.
pub fn of_process(pid: u32) -> Result<Duration, ProcError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|source| ProcError::Read { pid, source })?;
    let ticks = stat_ticks(&text).ok_or(ProcError::Format { pid })?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / hz,
    ))
}

/// utime + stime, in clock ticks, from the text of `/proc/PID/stat`.
fn stat_ticks(text: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields are
    // counted from after its last closing parenthesis, where field 3
    // (state) starts, so utime (14) and stime (15) are the 12th and 13th.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The server's CPU over a window: sampled once at its start, once at its
/// end.
#[derive(Debug)]
pub(crate) struct Window {
    pub pid: u32,
    started: Option<(Instant, Duration)>,
}

/// What the server used over the window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Used {
    pub pid: u32,
    pub cpu: Duration,
    pub wall: Duration,
}

impl Window {
    /// Checks that `pid` can be read, so a wrong pid fails before the run.
    pub(crate) fn new(pid: u32) -> Result<Self, ProcError> {
        of_process(pid)?;
        Ok(Window { pid, started: None })
    }

    pub(crate) fn started(&self) -> bool {
        self.started.is_some()
    }

    pub(crate) fn start(&mut self) -> Result<(), ProcError> {
        self.started = Some((Instant::now(), of_process(self.pid)?));
        Ok(())
    }

    /// Ends the window (started now if it never was).
    pub(crate) fn end(&mut self) -> Result<Used, ProcError> {
        if self.started.is_none() {
            self.start()?;
        }
        let (at, before) = self.started.unwrap_or((Instant::now(), Duration::ZERO));
        let after = of_process(self.pid)?;
        Ok(Used {
            pid: self.pid,
            cpu: after.saturating_sub(before),
            wall: at.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_past_a_strange_command_name() {
        let line = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(stat_ticks(line), Some(325));
        assert_eq!(stat_ticks("42 (x) S 1 2"), None);
    }

    #[test]
    fn this_process_is_readable_and_uses_cpu() {
        let pid = std::process::id();
        let start = own().unwrap();
        // Spin until the kernel has charged 20 ms more (bounded: on a loaded
        // machine the wall time it takes varies).
        let t = Instant::now();
        let mut x = 0u64;
        while own().unwrap() < start + Duration::from_millis(20) {
            assert!(t.elapsed() < Duration::from_secs(20), "CPU time never grew");
            for _ in 0..100_000 {
                x = x.wrapping_add(std::hint::black_box(1));
            }
        }
        assert!(x > 0);
        assert!(of_process(pid).is_ok());
        assert!(matches!(of_process(u32::MAX), Err(ProcError::Read { .. })));
    }
}
