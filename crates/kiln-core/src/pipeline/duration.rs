//! Durations as the pipeline file writes them: `90s`, `10m`, `1h30m`, or whole seconds.

use std::time::Duration;

/// Parses `90s`, `10m`, `2h`, `1h30m`, `1h30m15s` (units in that order, each at most once)
/// or a bare number of seconds (`600`). Bounds are the caller's business.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const HINT: &str = "write a duration such as 90s, 10m or 1h30m, or a number of seconds";
    let text = text.trim();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("is too large: {HINT}"));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    // Units must appear in decreasing order: h, then m, then s.
    let mut last_unit_rank = 0;
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let (rank, seconds_per_unit) = match c {
            'h' => (1, 3600),
            'm' => (2, 60),
            's' => (3, 1),
            _ => return Err(format!("'{text}' is not a duration: {HINT}")),
        };
        if digits.is_empty() || rank <= last_unit_rank {
            return Err(format!("'{text}' is not a duration: {HINT}"));
        }
        let amount: u64 = digits
            .parse()
            .map_err(|_| format!("'{text}' is too large: {HINT}"))?;
        total = amount
            .checked_mul(seconds_per_unit)
            .and_then(|seconds| total.checked_add(seconds))
            .ok_or_else(|| format!("'{text}' is too large: {HINT}"))?;
        digits.clear();
        last_unit_rank = rank;
    }
    if !digits.is_empty() || last_unit_rank == 0 {
        return Err(format!("'{text}' is not a duration: {HINT}"));
    }
    Ok(Duration::from_secs(total))
}

/// Renders whole seconds the way [`parse_duration`] reads them: `1h30m`, `90s` → `1m30s`.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if seconds == 0 {
        return "0s".to_owned();
    }
    let parts = [
        (seconds / 3600, "h"),
        (seconds % 3600 / 60, "m"),
        (seconds % 60, "s"),
    ];
    parts
        .iter()
        .filter(|(amount, _)| *amount > 0)
        .map(|(amount, unit)| format!("{amount}{unit}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_seconds() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h30m15s"), Ok(Duration::from_secs(5415)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("600"), Ok(Duration::from_secs(600)));
        for bad in ["", "m", "10x", "1m1h", "1h1h", "1.5h", "-5m", "1 h", "h1"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for seconds in [1, 59, 60, 90, 3600, 5400, 5415, 72 * 3600] {
            let duration = Duration::from_secs(seconds);
            assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
    }
}
