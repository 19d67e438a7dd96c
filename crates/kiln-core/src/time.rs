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

    /// Parses an RFC 3339 instant (`2026-11-24T17:03:09Z`, fractions and `±HH:MM`
    /// offsets accepted) or a bare date (`2026-11-24`, midnight UTC).
    pub fn parse_rfc3339(text: &str) -> Option<Millis> {
        let bytes = text.as_bytes();
        let digits = |range: std::ops::Range<usize>| -> Option<i64> {
            let part = text.get(range)?;
            part.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| part.parse().ok())?
        };
        if bytes.len() < 10 || bytes[4] != b'-' || bytes[7] != b'-' {
            return None;
        }
        let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month as u32) {
            return None;
        }
        let days = days_from_civil(year, month as u32, day as u32);
        if bytes.len() == 10 {
            return Some(Millis(days * 86_400_000));
        }
        if !matches!(bytes[10], b'T' | b't' | b' ') || bytes.len() < 20 {
            return None;
        }
        if bytes[13] != b':' || bytes[16] != b':' {
            return None;
        }
        let (hours, minutes, seconds) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
        if hours > 23 || minutes > 59 || seconds > 60 {
            return None;
        }
        let mut rest = &text[19..];
        let mut millis = 0;
        if let Some(fraction) = rest.strip_prefix('.') {
            let length = fraction.bytes().take_while(u8::is_ascii_digit).count();
            if length == 0 {
                return None;
            }
            let padded = format!("{:0<3}", &fraction[..length.min(3)]);
            millis = padded.parse::<i64>().ok()?;
            rest = &fraction[length..];
        }
        let offset_minutes = match rest {
            "Z" | "z" => 0,
            _ => {
                let sign = match rest.as_bytes().first()? {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return None,
                };
                let offset = rest.get(1..)?;
                if offset.len() != 5 || offset.as_bytes()[2] != b':' {
                    return None;
                }
                let (h, m) = (
                    offset.get(0..2)?.parse::<i64>().ok()?,
                    offset.get(3..5)?.parse::<i64>().ok()?,
                );
                if h > 23 || m > 59 {
                    return None;
                }
                sign * (h * 60 + m)
            }
        };
        let local = ((days * 24 + hours) * 60 + minutes) * 60_000 + seconds * 1000 + millis;
        Some(Millis(local - offset_minutes * 60_000))
    }

    /// The UTC calendar date, `YYYY-MM-DD`.
    pub fn date(self) -> String {
        let (year, month, day) = civil_from_days(self.0.div_euclid(86_400_000));
        format!("{year:04}-{month:02}-{day:02}")
    }

    /// Midnight UTC of this instant's day.
    pub fn start_of_day(self) -> Millis {
        Millis(self.0.div_euclid(86_400_000) * 86_400_000)
    }

    /// The UTC hour of the day, 0 to 23.
    pub fn hour_of_day(self) -> u32 {
        (self.0.rem_euclid(86_400_000) / 3_600_000) as u32
    }
}

fn days_in_month(year: i64, month: u32) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
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

/// Howard Hinnant's `days_from_civil`: (year, month, day) to days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an HTTP-date (RFC 9110: `Sun, 06 Nov 1994 08:49:37 GMT`, and the obsolete
/// `Sunday, 06-Nov-94 08:49:37 GMT` and asctime `Sun Nov  6 08:49:37 1994` forms).
pub fn parse_http_date(text: &str) -> Option<Millis> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month_of = |name: &str| MONTHS.iter().position(|m| *m == name).map(|i| i as u32 + 1);
    let words: Vec<&str> = text.split_whitespace().collect();
    let (day, month, year, clock) = match words.as_slice() {
        // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        [_, day, month, year, clock, "GMT"] => (
            day.parse::<u32>().ok()?,
            month_of(month)?,
            year.parse::<i64>().ok()?,
            *clock,
        ),
        // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        [_, date, clock, "GMT"] => {
            let mut parts = date.split('-');
            let day = parts.next()?.parse::<u32>().ok()?;
            let month = month_of(parts.next()?)?;
            let year = parts.next()?.parse::<i64>().ok()?;
            (
                day,
                month,
                if year < 70 { 2000 + year } else { 1900 + year },
                *clock,
            )
        }
        // asctime: Sun Nov  6 08:49:37 1994
        [_, month, day, clock, year] => (
            day.parse::<u32>().ok()?,
            month_of(month)?,
            year.parse::<i64>().ok()?,
            *clock,
        ),
        _ => return None,
    };
    let mut hms = clock.split(':').map(|part| part.parse::<i64>().ok());
    let (hours, minutes, seconds) = (hms.next()??, hms.next()??, hms.next()??);
    if !(1..=31).contains(&day) || hours > 23 || minutes > 59 || seconds > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(Millis(
        ((days * 24 + hours) * 60 + minutes) * 60_000 + seconds * 1000,
    ))
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
    fn rfc3339_instants_and_dates_parse() {
        let instant = Millis(1_795_000_000_042);
        assert_eq!(Millis::parse_rfc3339(&instant.to_rfc3339()), Some(instant));
        assert_eq!(
            Millis::parse_rfc3339("2026-11-24T17:03:09+01:30").map(Millis::to_rfc3339),
            Some("2026-11-24T15:33:09.000Z".into())
        );
        assert_eq!(
            Millis::parse_rfc3339("2026-11-24T17:03:09.5Z").map(Millis::to_rfc3339),
            Some("2026-11-24T17:03:09.500Z".into())
        );
        assert_eq!(
            Millis::parse_rfc3339("2024-02-29").map(Millis::to_rfc3339),
            Some("2024-02-29T00:00:00.000Z".into())
        );
        assert_eq!(instant.date(), "2026-11-18");
        assert_eq!(
            Millis(86_400_000 * 3 + 5).start_of_day(),
            Millis(86_400_000 * 3)
        );
        assert_eq!(Millis(3_600_000 * 25).hour_of_day(), 1);
        for bad in [
            "",
            "2026-13-01",
            "2025-02-29",
            "2026-11-24T25:00:00Z",
            "2026-11-24T17:03:09",
            "2026-11-24T17:03:09.Z",
            "2026-11-24T17:03:09+1:00",
            "yesterday",
            "2026-1-01",
            "+026-11-24",
        ] {
            assert_eq!(Millis::parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn http_dates_parse_in_all_three_forms() {
        let expected = Some(Millis(784_111_777_000));
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), expected);
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), expected);
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), expected);
        assert_eq!(
            parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").map(|m| m.to_rfc3339()),
            Some("2026-10-21T07:28:00.000Z".into())
        );
        for bad in [
            "",
            "120",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

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
