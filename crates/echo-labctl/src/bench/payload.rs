//! Message contents: a different, reproducible message for every round trip.
//!
//! An echo server that answers with the right number of bytes but the wrong
//! ones (a stale buffer, another connection's data, a reordered or shifted
//! stream) must not pass the benchmark. If every message were the same, such
//! an answer would compare equal. So each message is derived from the pair
//! (connection number, round number) by a small pseudo-random generator: two
//! messages of one connection differ, and so do the messages of two
//! connections in the same round. The generator is splitmix64, which writes
//! eight bytes per step; filling a 4 KiB message costs a few hundred
//! nanoseconds, far below one loopback round trip.
//!
//! Verification compares the echo with the bytes that were sent (the sender
//! keeps its buffer), so it is a `memcmp`, not a second generation pass.

/// One step of splitmix64 (Steele, Lea and Flood): a full-period 64-bit
/// generator whose every output bit depends on every state bit.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` with the message of round `round` on connection `conn`.
pub(crate) fn fill(buf: &mut [u8], conn: u64, round: u64) {
    let mut state = conn.rotate_left(32) ^ round;
    // One throw-away step so that neighbouring (conn, round) pairs start far
    // apart.
    splitmix64(&mut state);
    for chunk in buf.chunks_mut(8) {
        let word = splitmix64(&mut state).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::fill;

    #[test]
    fn messages_differ_between_rounds_and_connections() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        let mut c = [0u8; 64];
        fill(&mut a, 1, 1);
        fill(&mut b, 1, 2);
        fill(&mut c, 2, 1);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
    }

    #[test]
    fn messages_are_reproducible_and_any_length() {
        for len in [1, 7, 8, 9, 4096] {
            let mut a = vec![0u8; len];
            let mut b = vec![0u8; len];
            fill(&mut a, 3, 9);
            fill(&mut b, 3, 9);
            assert_eq!(a, b);
        }
    }
}
