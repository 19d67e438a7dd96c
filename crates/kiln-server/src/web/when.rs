//! Times as the dashboard shows them, one way everywhere: a short relative form in the
//! text ("4 min ago", "in 2 h"), the exact UTC time in the tooltip, and the instant in
//! `datetime` for scripts (`kilnAgo` in kiln.js keeps the words current, with the same
//! rule as `relative` here).

use kiln_core::Millis;

/// Times further ahead than this read "in …"; nearer ones (a clock a little ahead)
/// read as now.
const FUTURE_AFTER_MS: i64 = 60_000;

/// One instant as a page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct When {
    /// RFC 3339 (`2027-01-15T08:00:04.100Z`), for `datetime`.
    pub iso: String,
    /// `2027-01-15 08:00:04 UTC`, for the tooltip.
    pub exact: String,
    /// "4 min ago", "in 2 h".
    pub words: String,
}

impl When {
    pub fn new(at: Millis, now: Millis) -> When {
        When {
            iso: at.to_rfc3339(),
            exact: exact(at),
            words: relative(now, at),
        }
    }

    /// The `<time>` element: `datetime`, the exact time as `title`, the words as text.
    /// Every part is made here from a number, so it needs no escaping.
    pub fn html(&self) -> String {
        format!(
            "<time datetime=\"{}\" title=\"{}\" data-ago>{}</time>",
            self.iso, self.exact, self.words
        )
    }
}

/// `2027-01-15 08:00:04 UTC`.
pub(crate) fn exact(at: Millis) -> String {
    let iso = at.to_rfc3339();
    // `YYYY-MM-DDTHH:MM:SS.mmmZ`: the date, the time to the second.
    match (iso.get(..10), iso.get(11..19)) {
        (Some(date), Some(time)) => format!("{date} {time} UTC"),
        _ => iso,
    }
}

/// "3 s ago", "5 min ago", "2 h ago", "4 d ago"; "in 5 min" for a time ahead.
pub(crate) fn relative(now: Millis, then: Millis) -> String {
    let ahead = then.saturating_sub(now);
    if ahead > FUTURE_AFTER_MS {
        return format!("in {}", span((ahead + 500) / 1000));
    }
    let seconds = (now.saturating_sub(then).max(0) + 500) / 1000;
    format!("{} ago", span(seconds))
}

fn span(seconds: i64) -> String {
    match seconds {
        ..=59 => format!("{seconds} s"),
        60..=3599 => format!("{} min", seconds / 60),
        3600..=86_399 => format!("{} h", seconds / 3600),
        _ => format!("{} d", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_form_with_the_exact_time_beside_it() {
        let now = Millis(1_800_000_000_000);
        assert_eq!(relative(now, Millis(now.0 - 3_000)), "3 s ago");
        assert_eq!(relative(now, Millis(now.0 - 300_000)), "5 min ago");
        assert_eq!(relative(now, Millis(now.0 - 7_200_000)), "2 h ago");
        assert_eq!(relative(now, Millis(now.0 - 3 * 86_400_000)), "3 d ago");
        assert_eq!(relative(now, Millis(now.0 + 5_000)), "0 s ago");
        assert_eq!(relative(now, Millis(now.0 + 7_200_000)), "in 2 h");
        let when = When::new(Millis(1_800_000_004_100), now);
        assert_eq!(when.exact, "2027-01-15 08:00:04 UTC");
        assert_eq!(
            when.html(),
            "<time datetime=\"2027-01-15T08:00:04.100Z\" title=\"2027-01-15 08:00:04 UTC\" data-ago>0 s ago</time>"
        );
    }
}
