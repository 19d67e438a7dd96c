//! Wall-clock instants as Unix milliseconds, and their RFC 3339 rendering.

use std::fmt;

/// Milliseconds since the Unix epoch, UTC. Stored as-is in both database engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub i64);

impl Millis {
    pub fn saturating_sub(self, other: Millis) -> i64 {
        self.0.saturating_sub(other.0)
    }

    pub fn plus_ms(self, delta: i64) -> Millis {
        Millis(self.0.saturating_add(delta))
    }

    /// RFC 3339 in UTC with millisecond precision, e.g. `2026-11-24T17:03:09.042Z`.
    pub fn to_rfc3339(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total_ms = self.0;
        let days = total_ms.div_euclid(86_400_000);
        let ms_of_day = total_ms.rem_euclid(86_400_000);
        let (year, month, day) = civil_from_days(days);
        let hours = ms_of_day / 3_600_000;
        let minutes = ms_of_day / 60_000 % 60;
        let seconds = ms_of_day / 1000 % 60;
        let millis = ms_of_day % 1000;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{hours:02}:{minutes:02}:{seconds:02}.{millis:03}Z"
        )
    }
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let day_of_year = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_known_instants() {
        assert_eq!(Millis(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Millis(1_795_539_789_042).to_rfc3339(),
            "2026-11-24T17:03:09.042Z"
        );
        assert_eq!(
            Millis(951_782_400_000).to_rfc3339(),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(Millis(-1).to_rfc3339(), "1969-12-31T23:59:59.999Z");
    }
}
