//! Fuzzes the PROXY protocol header parser, `proxy::parse`, on any bytes.
//!
//! Invariants: it never panics; a header never claims more bytes than it
//! was given, nor more than `MAX_HEADER`; the answer depends only on the
//! header's own bytes (a header parses the same whatever follows it); and
//! the wait is monotone — every prefix of a header, or of bytes still
//! incomplete, is incomplete too, never refused. That last rule is what
//! lets a connection read its header split at any byte.

#![no_main]

use echo_lab::tcp::proxy::{parse, Parsed, MAX_HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let got = parse(data);
    let waited = match &got {
        Parsed::Header { len, source } => {
            assert!(*len <= data.len() && *len <= MAX_HEADER, "len {len}");
            let alone = parse(&data[..*len]);
            assert_eq!(
                alone,
                Parsed::Header {
                    len: *len,
                    source: *source
                },
                "the header alone parses differently"
            );
            *len
        }
        Parsed::Incomplete => data.len(),
        Parsed::Invalid(why) => {
            assert!(!why.is_empty());
            return;
        }
    };
    // Every shorter prefix must still be waiting (sampled on long inputs).
    let step = (waited / 256).max(1);
    for cut in (0..waited).step_by(step) {
        assert_eq!(
            parse(&data[..cut]),
            Parsed::Incomplete,
            "a prefix of {cut} bytes refused"
        );
    }
});
