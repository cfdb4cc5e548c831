//! echo-labctl: the client of the echo-lab daemon.
//!
//! | module | owns |
//! |---|---|
//! | [`client`] | `echo-labctl connect`: an interactive or piped TCP echo session |
//! | [`client_tls`] | `echo-labctl connect --tls`: the TLS layer under that session |
//! | [`tls`] | the TLS options, client config and session description, for `connect` and `bench` |
//! | [`client_udp`] | `echo-labctl connect --udp`: one datagram per line |
//! | [`bench`] | `echo-labctl bench`: ping-pong, fixed-rate and UDP load, with a report |
//! | [`who`] | `echo-labctl who`: which instance answered, once or as a tally |
//!
//! The control commands (`status`, `sources`, `reload`, `stop`) speak the
//! control protocol of `echo-lab-proto` and live in the binary. Nothing
//! here depends on the daemon's crate: the client reads the daemon's
//! config through `echo-lab-config` and talks to it through
//! `echo-lab-proto`, the two crates both programs share.

pub mod bench;
pub mod client;
pub mod client_tls;
pub mod client_udp;
pub mod tls;
pub mod who;
