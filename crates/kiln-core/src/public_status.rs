//! The rules of a project's public status: what a badge says for a branch's latest
//! build and how it looks (the flat shields.io style READMEs are full of), and the
//! figures of the public page (success rate, the latest build per branch, the duration
//! trend). Pure functions over build statuses: the server reads the builds, renders and
//! caches.

use crate::BuildStatus;

/// What a badge says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadgeState {
    Passing,
    Failing,
    Running,
    Cancelled,
    /// No build of that branch (among the recent ones).
    Unknown,
}

impl BadgeState {
    /// The badge of a branch whose latest build has `status` (`None`: no build).
    pub fn of(status: Option<BuildStatus>) -> Self {
        match status {
            Some(BuildStatus::Success) => Self::Passing,
            Some(BuildStatus::Failed | BuildStatus::Stale) => Self::Failing,
            Some(BuildStatus::Queued | BuildStatus::Running) => Self::Running,
            Some(BuildStatus::Cancelled) => Self::Cancelled,
            None => Self::Unknown,
        }
    }

    /// The right-hand word.
    pub fn message(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Failing => "failing",
            Self::Running => "running",
            Self::Cancelled => "cancelled",
            Self::Unknown => "unknown",
        }
    }

    /// The right-hand colour: shields.io's bright green and red, grey otherwise.
    pub fn colour(self) -> &'static str {
        match self {
            Self::Passing => "#4c1",
            Self::Failing => "#e05d44",
            Self::Running | Self::Cancelled | Self::Unknown => "#9f9f9f",
        }
    }
}

/// The width Verdana 11px gives `text`, in pixels (near enough for a badge: shields.io
/// measures the font; this sorts characters into narrow, wide and the rest).
fn text_width(text: &str) -> u32 {
    let tenths: u32 = text
        .chars()
        .map(|c| match c {
            'i' | 'j' | 'l' | '.' | ',' | ':' | ';' | '!' | '|' | '\'' | 'I' => 35,
            'f' | 'r' | 't' | ' ' | '-' | '(' | ')' | '/' => 48,
            'm' | 'w' | 'M' | 'W' => 100,
            c if c.is_ascii_uppercase() => 75,
            _ => 68,
        })
        .sum();
    tenths.div_ceil(10)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A flat badge: `label` on grey, the state's word on its colour, with a title and an
/// `aria-label` for screen readers.
pub fn badge_svg(label: &str, state: BadgeState) -> String {
    let message = state.message();
    let left = text_width(label) + 10;
    let right = text_width(message) + 10;
    let width = left + right;
    let label = escape(label);
    let colour = state.colour();
    // Text is drawn at 10× and scaled down, as shields.io does, for crisp positioning.
    let left_x = left * 5;
    let right_x = left * 10 + right * 5;
    let left_length = (left - 10) * 10;
    let right_length = (right - 10) * 10;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"20\" role=\"img\" aria-label=\"{label}: {message}\">\
<title>{label}: {message}</title>\
<linearGradient id=\"s\" x2=\"0\" y2=\"100%\"><stop offset=\"0\" stop-color=\"#bbb\" stop-opacity=\".1\"/><stop offset=\"1\" stop-opacity=\".1\"/></linearGradient>\
<clipPath id=\"r\"><rect width=\"{width}\" height=\"20\" rx=\"3\" fill=\"#fff\"/></clipPath>\
<g clip-path=\"url(#r)\"><rect width=\"{left}\" height=\"20\" fill=\"#555\"/><rect x=\"{left}\" width=\"{right}\" height=\"20\" fill=\"{colour}\"/><rect width=\"{width}\" height=\"20\" fill=\"url(#s)\"/></g>\
<g fill=\"#fff\" text-anchor=\"middle\" font-family=\"Verdana,Geneva,DejaVu Sans,sans-serif\" text-rendering=\"geometricPrecision\" font-size=\"110\">\
<text aria-hidden=\"true\" x=\"{left_x}\" y=\"150\" fill=\"#010101\" fill-opacity=\".3\" transform=\"scale(.1)\" textLength=\"{left_length}\">{label}</text>\
<text x=\"{left_x}\" y=\"140\" transform=\"scale(.1)\" fill=\"#fff\" textLength=\"{left_length}\">{label}</text>\
<text aria-hidden=\"true\" x=\"{right_x}\" y=\"150\" fill=\"#010101\" fill-opacity=\".3\" transform=\"scale(.1)\" textLength=\"{right_length}\">{message}</text>\
<text x=\"{right_x}\" y=\"140\" transform=\"scale(.1)\" fill=\"#fff\" textLength=\"{right_length}\">{message}</text>\
</g></svg>"
    )
}

/// Successes among ended builds, and how many ended builds count: success, failed and
/// stale do; cancelled builds (a person stopped them) and builds not ended do not.
pub fn success_rate(statuses: impl IntoIterator<Item = BuildStatus>) -> (u64, u64) {
    statuses
        .into_iter()
        .fold((0, 0), |(successes, counted), status| match status {
            BuildStatus::Success => (successes + 1, counted + 1),
            BuildStatus::Failed | BuildStatus::Stale => (successes, counted + 1),
            _ => (successes, counted),
        })
}

/// The percentage, rounded down to a whole number, or `None` without ended builds.
pub fn percent(successes: u64, counted: u64) -> Option<u64> {
    (counted > 0).then(|| successes * 100 / counted)
}

/// The first item of each key, in order of first appearance: applied to builds newest
/// first, the latest build of each branch.
pub fn latest_per_key<T, K: PartialEq>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> K,
) -> Vec<T> {
    let mut seen: Vec<K> = Vec::new();
    let mut latest = Vec::new();
    for item in items {
        let item_key = key(&item);
        if !seen.contains(&item_key) {
            seen.push(item_key);
            latest.push(item);
        }
    }
    latest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_badge_names_the_latest_builds_state() {
        assert_eq!(
            BadgeState::of(Some(BuildStatus::Success)),
            BadgeState::Passing
        );
        assert_eq!(
            BadgeState::of(Some(BuildStatus::Stale)),
            BadgeState::Failing
        );
        assert_eq!(
            BadgeState::of(Some(BuildStatus::Queued)),
            BadgeState::Running
        );
        assert_eq!(BadgeState::of(None), BadgeState::Unknown);
        let svg = badge_svg("build", BadgeState::Passing);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.contains("#4c1") && svg.contains(">passing</text>"));
        assert!(svg.contains("aria-label=\"build: passing\""));
        assert!(badge_svg("build", BadgeState::Failing).contains("#e05d44"));
        assert!(badge_svg("<b>", BadgeState::Unknown).contains("&lt;b&gt;"));
    }

    #[test]
    fn the_success_rate_counts_ended_builds_but_cancelled_ones() {
        use BuildStatus::*;
        let (successes, counted) =
            success_rate([Success, Failed, Success, Cancelled, Running, Stale, Success]);
        assert_eq!((successes, counted), (3, 5));
        assert_eq!(percent(successes, counted), Some(60));
        assert_eq!(percent(0, 0), None);
    }

    #[test]
    fn the_latest_item_per_key_keeps_the_first_seen() {
        let builds = [("main", 9), ("dev", 8), ("main", 7), ("x", 6), ("dev", 5)];
        let latest = latest_per_key(builds, |(branch, _)| *branch);
        assert_eq!(latest, [("main", 9), ("dev", 8), ("x", 6)]);
    }
}
