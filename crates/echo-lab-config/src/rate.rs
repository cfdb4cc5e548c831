//! A connection rate as written in the config (`connection_rate_per_source`):
//! `"N/s"` or `"N/m"` (0 = off), optionally followed by `burst B`. The
//! daemon's token bucket that enforces it and the counter that measures a
//! source's rate are the daemon's own (its `admission::rate`).

use std::fmt;

/// The period over which a source's connection rate is measured.
pub const PERIOD_SECS: u32 = 10;

/// A rate of new connections per source; `count == 0` is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRate {
    /// Connections per unit.
    pub count: u32,
    /// The unit, in seconds: 1 (`/s`) or 60 (`/m`).
    pub per_secs: u32,
    /// The most connections a source may open at once after a quiet spell.
    pub burst: u32,
}

impl ConnRate {
    /// No rate limit.
    pub const OFF: ConnRate = ConnRate {
        count: 0,
        per_secs: 1,
        burst: 0,
    };

    /// True when the rate limits anything.
    pub fn is_on(&self) -> bool {
        self.count > 0
    }

    /// Tokens added per millisecond.
    pub fn per_ms(&self) -> f64 {
        f64::from(self.count) / (f64::from(self.per_secs) * 1000.0)
    }

    /// Parses `"20/s"`, `"300/m"`, `"20/s burst 40"`, `"0"`; the error
    /// says what is wrong.
    pub fn parse(text: &str) -> Result<ConnRate, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let expected =
            "expected \"N/s\" or \"N/m\", optionally followed by \"burst B\", or 0 (off)";
        let (rate, burst) = match words.as_slice() {
            [rate] => (*rate, None),
            [rate, kw, b] if kw.eq_ignore_ascii_case("burst") => (*rate, Some(*b)),
            _ => return Err(format!("\"{text}\" is not a rate; {expected}")),
        };
        if rate == "0" && burst.is_none() {
            return Ok(ConnRate::OFF);
        }
        let (n, unit) = rate
            .split_once('/')
            .ok_or_else(|| format!("\"{rate}\" has no unit; {expected}"))?;
        let per_secs = match unit {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            _ => return Err(format!("\"{unit}\" is not a unit (s or m); {expected}")),
        };
        let count: u32 = n
            .parse()
            .ok()
            .filter(|c| *c <= 1_000_000)
            .ok_or_else(|| format!("\"{n}\" is not a count from 0 to 1000000; {expected}"))?;
        if count == 0 {
            return if burst.is_none() {
                Ok(ConnRate::OFF)
            } else {
                Err(format!("a rate of 0 is off and takes no burst; {expected}"))
            };
        }
        let burst = match burst {
            None => count,
            Some(b) => b
                .parse()
                .ok()
                .filter(|b| (1..=1_000_000).contains(b))
                .ok_or_else(|| format!("burst \"{b}\" is not a count from 1 to 1000000"))?,
        };
        Ok(ConnRate {
            count,
            per_secs,
            burst,
        })
    }
}

impl fmt::Display for ConnRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.is_on() {
            return f.write_str("0");
        }
        let unit = if self.per_secs == 60 { "m" } else { "s" };
        write!(f, "{}/{unit}", self.count)?;
        if self.burst != self.count {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print_back() {
        for text in ["0", "20/s", "300/m", "20/s burst 40", "1/m burst 5"] {
            assert_eq!(ConnRate::parse(text).unwrap().to_string(), text);
        }
        let r = ConnRate::parse("20/s").unwrap();
        assert_eq!((r.count, r.per_secs, r.burst), (20, 1, 20));
        assert_eq!(ConnRate::parse("0/s").unwrap(), ConnRate::OFF);
        assert_eq!(ConnRate::parse("5/min").unwrap().to_string(), "5/m");
    }

    #[test]
    fn bad_rates_say_what_is_wrong() {
        let e = |t: &str| ConnRate::parse(t).unwrap_err();
        assert!(e("20").contains("no unit"));
        assert!(e("20/h").contains("not a unit"));
        assert!(e("x/s").contains("not a count"));
        assert!(e("-1/s").contains("not a count"));
        assert!(e("20/s burst 0").contains("burst \"0\""));
        assert!(e("20/s burst").contains("not a rate"));
        assert!(e("0/s burst 3").contains("takes no burst"));
    }
}
