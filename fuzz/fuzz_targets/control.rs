//! Fuzzes the control request parser, `control::parse`, on any bytes.
//!
//! Invariants: it never panics; it agrees with a plain model of the
//! protocol (more than `MAX_REQUEST` bytes: too large; nothing: empty;
//! else one JSON object with one `cmd` string, `status`, `reload`, `stop`,
//! `sources` with at most one non-negative integer `top` (default 20), or
//! `ready` with exactly one boolean `on`,
//! other members ignored; anything else malformed); and an accepted
//! request prints back to a line that parses to the same request.

#![no_main]

use echo_lab_proto::control::{parse, Request, RequestError, MAX_REQUEST};
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
    let Ok(Members(members)) = serde_json::from_slice::<Members>(data) else {
        return Err(Kind::Malformed);
    };
    // Every occurrence, in order: a key the request knows must appear once.
    let all = |k: &str| {
        members
            .iter()
            .filter(|(m, _)| m == k)
            .map(|(_, v)| v)
            .collect::<Vec<_>>()
    };
    let cmd = all("cmd");
    let [cmd] = cmd.as_slice() else {
        return Err(Kind::Malformed);
    };
    match cmd.as_str() {
        Some("status") => Ok(Request::Status),
        Some("reload") => Ok(Request::Reload),
        Some("stop") => Ok(Request::Stop),
        Some("sources") => match all("top").as_slice() {
            [] => Ok(Request::Sources { top: 20 }),
            [v] => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(|top| Request::Sources { top })
                .ok_or(Kind::Malformed),
            _ => Err(Kind::Malformed),
        },
        Some("ready") => match all("on").as_slice() {
            [v] => v
                .as_bool()
                .map(|on| Request::Ready { on })
                .ok_or(Kind::Malformed),
            _ => Err(Kind::Malformed),
        },
        _ => Err(Kind::Malformed),
    }
}

/// A JSON object's members as written, duplicates kept (a `Value` keeps
/// only the last of each key).
struct Members(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    out.push(entry);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}
