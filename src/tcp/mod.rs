//! The TCP path, from the listening socket to the last byte of a session.
//!
//! | module | owns | never |
//! |---|---|---|
//! | `server` | starting, reloading (prepare, then commit) and draining the TCP side as a whole | touches a connection |
//! | `sockets` | the listening sockets by address: opened, reused on reload, taken from systemd | accepts |
//! | `listener` | the accept loop: the only thread that touches listening sockets | reads a client's bytes |
//! | `pool` | the workers: their table, where each connection goes, resizing, replacing a dead one | serves a connection |
//! | `worker` | one pool thread's event loop and the connections it owns | blocks outside `epoll_wait` |
//! | `spin_governor` | whether a worker's `spin_when_busy` spin is worth taking (spins that find nothing turn it off) | reads a clock |
//! | `connection` | one client as a state machine over a byte transport: echo, backpressure, notices, linger | waits |
//! | [`tls`] | TLS listeners: certificates loaded and swapped on reload, handshake counters, the TLS transport | holds a lock across I/O |
//! | [`proxy`] | the PROXY protocol header (v1, v2) | trusts a source not listed |
//! | `faults` | a listener's bad-network settings per connection: held echo, bandwidth, reset, stall, session end; a worker's fault timers | touches a socket |
//! | `timeouts` | O(1) idle deadlines (a FIFO per timeout value) | scans every connection |
//! | `wake_timer` | a worker's alarm at its next deadline, so its poll needs no timeout | |
//! | [`affinity`] | CPUs: pinning, the CPU a connection's packets arrive on, placement | |
//!
//! Connections pass one way: socket → accept loop → pool's dealer →
//! worker, which owns a connection for its whole life (or hands it to a
//! peer, through the pool). See docs/ARCHITECTURE.md for the threads.

pub mod affinity;
pub(crate) mod connection;
pub(crate) mod faults;
pub(crate) mod listener;
pub(crate) mod pool;
pub mod proxy;
pub(crate) mod server;
pub(crate) mod sockets;
pub(crate) mod spin_governor;
pub(crate) mod timeouts;
pub mod tls;
pub(crate) mod wake_timer;
pub(crate) mod worker;
