//! Exit codes, from sysexits(3), that both programs give and that service
//! managers and scripts read: systemd's `RestartPreventExitStatus=78`
//! keeps a daemon with a bad config from restarting in a loop, and a
//! script tells "the daemon is not there" (69) from "you asked wrongly"
//! (64).

/// EX_USAGE: the command line is wrong.
pub const EX_USAGE: i32 = 64;
/// EX_UNAVAILABLE: the daemon (or the echo server) cannot be reached.
pub const EX_UNAVAILABLE: i32 = 69;
/// EX_SOFTWARE: an internal error; the daemon exits with it when one of
/// its threads keeps dying and cannot be restarted.
pub const EX_SOFTWARE: i32 = 70;
/// EX_OSERR: the OS refused something the daemon needs.
pub const EX_OSERR: i32 = 71;
/// EX_CONFIG: the config is invalid.
pub const EX_CONFIG: i32 = 78;
