//! What crosses a process boundary between echo-lab and its clients.
//!
//! The daemon and `echo-labctl` are separate programs, often of separate
//! versions on one machine (a package upgraded while a daemon runs). What
//! one writes and the other reads is declared once, here, apart from
//! either program's internals:
//!
//! | module | owns |
//! |---|---|
//! | [`protocol`] | the echo protocol's words: `disconnect`, the notices the server sends |
//! | [`control`] | the control socket's requests and replies, and where the socket is |
//! | [`status`] | the status document (`echo-labctl status --json`), versioned |
//! | [`exit`] | the exit codes both programs give |
//!
//! Nothing here opens a listener or starts a thread.

pub mod control;
pub mod exit;
pub mod protocol;
pub mod status;
