//! Fuzzes a TLS connection: any bytes as everything a client sends (then
//! the end of its input), through the TLS transport and the connection
//! state machine, over a real loopback socket
//! (`echo_lab::tcp::tls::serve_client_bytes`).
//!
//! Invariants: it never panics; the connection closes; its handshake is
//! counted exactly once (a client that cannot finish one — no fuzzer can
//! forge the server's randomness — ends as `closed` or `protocol_error`);
//! nothing is echoed, since no handshake finished.

#![no_main]

use libfuzzer_sys::fuzz_target;

const CERT: &[u8] = include_bytes!("../tls/cert.pem");
const KEY: &[u8] = include_bytes!("../tls/key.pem");

fuzz_target!(|data: &[u8]| {
    let Ok((back, closed, counted)) = echo_lab::tcp::tls::serve_client_bytes(CERT, KEY, data)
    else {
        return; // the loopback socket itself failed: not the code under test
    };
    assert!(closed, "the connection did not close");
    assert_eq!(counted, 1, "handshake outcomes counted");
    // Whatever came back is TLS records (handshake, alerts), never the
    // client's bytes echoed in the clear.
    if let Some(&first) = back.first() {
        assert!((20..=23).contains(&first), "not a TLS record: {first}");
    }
});
