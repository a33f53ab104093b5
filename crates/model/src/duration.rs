//! Human durations (`500us`, `100ms`, `2s`, `1m30s`, `1h`) as written in config files.
//!
//! Timeouts and probation windows span five orders of magnitude; plain numbers with an implied
//! unit are a classic source of outages, so every duration must carry its unit (only `0` may
//! stand alone).

use std::time::Duration;

/// Units accepted in config files, largest first (for formatting), as (suffix, nanoseconds).
const UNITS: [(&str, u128); 5] = [
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
];

/// The accepted syntax in words, for error messages and `explain`.
pub const SYNTAX: &str =
    "a number with a unit (us, ms, s, m, h), or several like 1m30s; `0` alone is allowed";

/// Parses a duration such as `100ms` or `1m30s`, exactly as the config file accepts them (so a
/// CLI flag can share the syntax). The error says what is wrong with the text.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_string());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = text;
    let mut last_unit = usize::MAX;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "`{text}` is not a duration: expected a number at `{rest}`"
            ));
        }
        let (number, tail) = rest.split_at(digits);
        let number: u128 = number
            .parse()
            .map_err(|_| format!("`{text}` is too large"))?;
        let unit_len = tail.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let (unit, tail) = tail.split_at(unit_len);
        if unit.is_empty() {
            return Err(format!("`{text}` has no unit (use us, ms, s, m or h)"));
        }
        let Some(index) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(format!(
                "`{text}` has an unknown unit `{unit}` (use us, ms, s, m or h)"
            ));
        };
        if last_unit != usize::MAX && index <= last_unit {
            return Err(format!(
                "`{text}`: units must go from largest to smallest, each once"
            ));
        }
        last_unit = index;
        total = number
            .checked_mul(UNITS[index].1)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| format!("`{text}` is too large"))?;
        rest = tail;
    }
    let secs =
        u64::try_from(total / 1_000_000_000).map_err(|_| format!("`{text}` is too large"))?;
    // The remainder is below one second, so it always fits in u32.
    let nanos = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// Formats a duration in the config syntax (so `format` then `parse` is the identity for
/// durations that are whole microseconds); sub-microsecond rests are shown in `ns`.
pub fn format(duration: Duration) -> String {
    let mut rest = duration.as_nanos();
    if rest == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, nanos) in UNITS {
        if rest >= nanos {
            out.push_str(&format!("{}{unit}", rest / nanos));
            rest %= nanos;
        }
    }
    if rest > 0 {
        out.push_str(&format!("{rest}ns"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_bad_text() {
        for bad in [
            "",
            "10",
            "s",
            "10x",
            "1.5s",
            "-1s",
            "1s1m",
            "1s1s",
            "10 s",
            "1h 2m",
            "99999999999999999999999999999999999999999h",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn format_round_trips() {
        for text in ["500us", "100ms", "2s", "1m", "1h", "1m30s", "1h1m1s1ms1us"] {
            let d = parse(text).unwrap();
            assert_eq!(format(d), text);
            assert_eq!(parse(&format(d)), Ok(d));
        }
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_nanos(1_500)), "1us500ns");
    }
}
