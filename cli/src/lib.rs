//! The `warren` command's library: the in-process stack behind `warren up`
//! and the API client behind `warren session` and `warren node`.
#![forbid(unsafe_code)]

pub mod client;
pub mod ssh;
pub mod stack;

/// Parses `90`, `90s`, `30m`, `2h`, `1d` into seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
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
        assert_eq!(super::parse_duration("30m"), Ok(1800));
        assert_eq!(super::parse_duration("2h"), Ok(7200));
        assert_eq!(super::parse_duration("45"), Ok(45));
        assert!(super::parse_duration("soon").is_err());
        assert!(super::parse_duration("99999999999999999999d").is_err());
    }
}
