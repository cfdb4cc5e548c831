//! What the daemon speaks with systemd, its service manager.
//!
//! | module | owns |
//! |---|---|
//! | `notify` | the notify protocol (`READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=`, `WATCHDOG=1`) and the fd store |
//! | `activation` | sockets passed by systemd (socket activation, the fd store) matched to what the config asks for |
//!
//! Both work without systemd: with no `NOTIFY_SOCKET` nothing is sent,
//! with no `LISTEN_FDS` nothing is taken. Nothing here decides anything:
//! the supervisor and the startup say what to announce and what to adopt.

pub(crate) mod activation;
pub(crate) mod notify;
