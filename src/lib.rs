//! echo-lab: a TCP echo daemon (RFC 862) built the way trusted Linux daemons
//! are built.

pub mod bench;
