//! Fuzzes the control request parser, `control::parse`, on any bytes.
//!
//! Invariants: it never panics; it agrees with a plain model of the
//! protocol (more than `MAX_REQUEST` bytes: too large; nothing: empty;
//! else one JSON object whose `cmd` string is `status`, `reload` or `stop`,
//! other members ignored; anything else malformed); and an accepted request
//! prints back to a line that parses to the same request.

#![no_main]

use echo_lab::control::{parse, Request, RequestError, MAX_REQUEST};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let got = parse(data);
    match (&got, model(data)) {
        (Ok(r), Ok(m)) => assert_eq!(r, &m, "{:?}", String::from_utf8_lossy(data)),
        (Err(RequestError::TooLarge), Err(Kind::TooLarge))
        | (Err(RequestError::Empty), Err(Kind::Empty))
        | (Err(RequestError::Malformed(_)), Err(Kind::Malformed)) => {}
        (got, want) => panic!(
            "parse gave {got:?}, the model {want:?}, for {:?}",
            String::from_utf8_lossy(data)
        ),
    }
    if let Ok(r) = got {
        let mut line = serde_json::to_string(&r).expect("a request prints");
        line.push('\n');
        assert_eq!(parse(line.as_bytes()), Ok(r), "{line:?}");
    }
});

#[derive(Debug)]
enum Kind {
    TooLarge,
    Empty,
    Malformed,
}

fn model(data: &[u8]) -> Result<Request, Kind> {
    if data.len() > MAX_REQUEST {
        return Err(Kind::TooLarge);
    }
    if data.is_empty() {
        return Err(Kind::Empty);
    }
    let Ok(Value::Object(members)) = serde_json::from_slice::<Value>(data) else {
        return Err(Kind::Malformed);
    };
    match members.get("cmd").and_then(Value::as_str) {
        Some("status") => Ok(Request::Status),
        Some("reload") => Ok(Request::Reload),
        Some("stop") => Ok(Request::Stop),
        _ => Err(Kind::Malformed),
    }
}
