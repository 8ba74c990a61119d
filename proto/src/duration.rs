//! Durations as people type them on a command line: `90`, `90s`, `30m`,
//! `2h`, `1d` (the CLI's `--ttl`, `--timeout`, the load test's phases).

/// Parses `90`, `90s`, `30m`, `2h`, `1d` into seconds.
pub fn parse_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        Some('d') => (&s[..s.len() - 1], 86_400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a duration (like 90s, 30m, 2h)"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_secs("30m"), Ok(1800));
        assert_eq!(super::parse_secs("2h"), Ok(7200));
        assert_eq!(super::parse_secs("45"), Ok(45));
        assert_eq!(super::parse_secs("20s"), Ok(20));
        assert!(super::parse_secs("soon").is_err());
        assert!(super::parse_secs("99999999999999999999d").is_err());
    }
}
