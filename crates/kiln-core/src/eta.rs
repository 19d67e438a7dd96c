//! How long a running build still needs: from its own reported progress, or else from
//! the duration `predict` expects from recent successful builds of the same pipeline.
//! Pure arithmetic; the dashboard feeds it stored numbers and renders the result.

/// Where an estimate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtaSource {
    /// The build's own `progress`: elapsed × (100 − progress) / progress.
    Progress,
    /// The predicted duration (`crate::predict`) of the pipeline, minus elapsed.
    History,
}

impl EtaSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Progress => "progress",
            Self::History => "history",
        }
    }
}

/// An estimate of the time left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eta {
    /// Milliseconds left, never negative.
    pub remaining_ms: i64,
    /// The build has already run longer than the history predicts.
    pub overdue: bool,
    pub source: EtaSource,
}

/// How many recent successful builds the history estimate predicts from.
pub const ETA_SAMPLE: i64 = crate::predict::WINDOW as i64;

/// The time left for a build that has run `elapsed_ms`. A reported progress strictly
/// between 0 and 100 wins (it knows this build); otherwise the history's predicted duration, if any.
/// 100 % or more means nothing is left. Without either there is no estimate.
pub fn estimate(
    elapsed_ms: i64,
    progress: Option<f64>,
    history_expected_ms: Option<i64>,
) -> Option<Eta> {
    let elapsed_ms = elapsed_ms.max(0);
    if let Some(progress) = progress.filter(|p| p.is_finite() && *p > 0.0) {
        let remaining = if progress >= 100.0 {
            0.0
        } else {
            elapsed_ms as f64 * (100.0 - progress) / progress
        };
        return Some(Eta {
            remaining_ms: remaining.round().min(i64::MAX as f64) as i64,
            overdue: false,
            source: EtaSource::Progress,
        });
    }
    let median_ms = history_expected_ms.filter(|m| *m > 0)?;
    let remaining = median_ms.saturating_sub(elapsed_ms);
    Some(Eta {
        remaining_ms: remaining.max(0),
        overdue: remaining < 0,
        source: EtaSource::History,
    })
}

/// The share done, in percent, for a progress bar: the reported progress (clamped to
/// 0–100), or else elapsed over the predicted duration, capped at 99 (a build is not done
/// until it ends); `None` without either.
pub fn percent_done(
    elapsed_ms: i64,
    progress: Option<f64>,
    history_expected_ms: Option<i64>,
) -> Option<f64> {
    if let Some(progress) = progress.filter(|p| p.is_finite()) {
        return Some(progress.clamp(0.0, 100.0));
    }
    let median_ms = history_expected_ms.filter(|m| *m > 0)?;
    Some((elapsed_ms.max(0) as f64 * 100.0 / median_ms as f64).min(99.0))
}

/// "about 2 min left", "less than a minute left", "about 1 h 5 min left", or "longer
/// than usual" for an overdue build (the dashboard's script renders the same words).
pub fn describe_remaining(eta: &Eta) -> String {
    if eta.overdue {
        return "taking longer than usual".into();
    }
    let seconds = (eta.remaining_ms + 999) / 1000;
    if seconds < 60 {
        return "less than a minute left".into();
    }
    let minutes = (seconds + 59) / 60;
    if minutes < 60 {
        format!("about {minutes} min left")
    } else {
        format!("about {} h {} min left", minutes / 60, minutes % 60)
    }
}

/// A duration for people: "850 ms", "42 s", "3 min 4 s", "1 h 2 min".
pub fn format_duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms} ms");
    }
    let seconds = ms / 1000;
    if seconds < 60 {
        return format!("{seconds} s");
    }
    let minutes = seconds / 60;
    if minutes < 60 {
        return format!("{minutes} min {} s", seconds % 60);
    }
    format!("{} h {} min", minutes / 60, minutes % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_wins_over_history() {
        let eta = estimate(60_000, Some(25.0), Some(10_000)).unwrap();
        assert_eq!(eta.source, EtaSource::Progress);
        assert_eq!(eta.remaining_ms, 180_000);
        assert!(!eta.overdue);
        assert_eq!(estimate(60_000, Some(100.0), None).unwrap().remaining_ms, 0);
        assert_eq!(estimate(60_000, Some(150.0), None).unwrap().remaining_ms, 0);
    }

    #[test]
    fn zero_or_missing_progress_falls_back_to_history() {
        for progress in [None, Some(0.0), Some(-5.0), Some(f64::NAN)] {
            let eta = estimate(30_000, progress, Some(120_000)).unwrap();
            assert_eq!(eta.source, EtaSource::History);
            assert_eq!(eta.remaining_ms, 90_000);
        }
    }

    #[test]
    fn history_overrun_is_overdue_not_negative() {
        let eta = estimate(200_000, None, Some(120_000)).unwrap();
        assert_eq!(eta.remaining_ms, 0);
        assert!(eta.overdue);
        assert_eq!(describe_remaining(&eta), "taking longer than usual");
    }

    #[test]
    fn nothing_to_go_on_means_no_estimate() {
        assert_eq!(estimate(1_000, None, None), None);
        assert_eq!(estimate(1_000, Some(0.0), Some(0)), None);
    }

    #[test]
    fn percent_done_from_progress_or_history() {
        assert_eq!(percent_done(10_000, Some(40.0), Some(1)), Some(40.0));
        assert_eq!(percent_done(10_000, Some(140.0), None), Some(100.0));
        assert_eq!(percent_done(30_000, None, Some(120_000)), Some(25.0));
        assert_eq!(percent_done(500_000, None, Some(120_000)), Some(99.0));
        assert_eq!(percent_done(500_000, None, None), None);
    }

    #[test]
    fn remaining_time_in_words() {
        let words = |ms| {
            describe_remaining(&Eta {
                remaining_ms: ms,
                overdue: false,
                source: EtaSource::History,
            })
        };
        assert_eq!(words(0), "less than a minute left");
        assert_eq!(words(59_000), "less than a minute left");
        assert_eq!(words(60_000), "about 1 min left");
        assert_eq!(words(61_000), "about 2 min left");
        assert_eq!(words(3_600_000), "about 1 h 0 min left");
        assert_eq!(words(3_900_000), "about 1 h 5 min left");
    }

    #[test]
    fn durations_in_words() {
        assert_eq!(format_duration(-1), "0 ms");
        assert_eq!(format_duration(850), "850 ms");
        assert_eq!(format_duration(42_000), "42 s");
        assert_eq!(format_duration(184_000), "3 min 4 s");
        assert_eq!(format_duration(3_720_000), "1 h 2 min");
    }
}
