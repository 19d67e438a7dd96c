//! Duration prediction from a pipeline's history of successful builds (or of one stage):
//! a recency-weighted median with outliers damped and the builds started near the same
//! hour of the day weighted up, an 80% interval (weighted p10–p90), and its accuracy
//! measured by replaying the history (each past build predicted from the ones before it).
//! Pure arithmetic: the server feeds it stored durations.

use crate::Millis;

/// A past duration and when that build (or stage) started.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub started_at: Millis,
    pub duration_ms: i64,
}

/// What a build (or stage) is expected to take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prediction {
    /// The weighted median.
    pub expected_ms: i64,
    /// The weighted 10th and 90th percentiles: 8 in 10 runs should land between.
    pub low_ms: i64,
    pub high_ms: i64,
    /// How many past runs it is based on.
    pub samples: usize,
}

/// How well predictions would have done on the stored history.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Accuracy {
    /// Median of |predicted − actual| / actual over the replayed runs (0.1 is 10%).
    pub median_ape: f64,
    /// How many runs were predicted (those with at least `MIN_HISTORY` runs before).
    pub replayed: usize,
}

/// At most this many newest runs inform a prediction.
pub const WINDOW: usize = 50;
/// A run's weight halves every this many newer runs.
pub const HALF_LIFE_RUNS: f64 = 20.0;
/// Builds started this many hours apart (on the clock face) weigh e^(-1/2) as much.
pub const HOUR_SIGMA: f64 = 2.0;
/// Replay predicts a run only once this many runs came before it.
pub const MIN_HISTORY: usize = 5;

/// Predicts from `history` (newest first) for a run starting at `at` (`None`: ignore the
/// hour of the day). `None` without history.
pub fn predict(history: &[Sample], at: Option<Millis>) -> Option<Prediction> {
    let window = &history[..history.len().min(WINDOW)];
    if window.is_empty() {
        return None;
    }
    let weights: Vec<f64> = window
        .iter()
        .enumerate()
        .map(|(rank, sample)| {
            let recency = 0.5f64.powf(rank as f64 / HALF_LIFE_RUNS);
            let hour = at.map_or(1.0, |at| hour_weight(sample.started_at, at));
            recency * hour
        })
        .collect();
    let weighted: Vec<(i64, f64)> = window
        .iter()
        .map(|s| s.duration_ms)
        .zip(weights.iter().copied())
        .collect();
    let expected_ms = weighted_quantile(&weighted, 0.5);
    // Outliers damped for the interval: values beyond the median ± 3 scaled weighted
    // MADs (at least ±5% of it) are clamped there, so one hung build does not widen it.
    let deviations: Vec<(i64, f64)> = weighted
        .iter()
        .map(|(value, weight)| ((value - expected_ms).abs(), *weight))
        .collect();
    let mad = weighted_quantile(&deviations, 0.5) as f64 * 1.4826;
    let spread = (3.0 * mad).max(expected_ms.abs() as f64 * 0.05) as i64;
    let damped: Vec<(i64, f64)> = weighted
        .iter()
        .map(|(value, weight)| {
            let low = expected_ms.saturating_sub(spread);
            let high = expected_ms.saturating_add(spread);
            ((*value).clamp(low, high), *weight)
        })
        .collect();
    Some(Prediction {
        expected_ms,
        low_ms: weighted_quantile(&damped, 0.1),
        high_ms: weighted_quantile(&damped, 0.9),
        samples: window.len(),
    })
}

/// Predicts every run of `chronological` (oldest first) from the up to `WINDOW` runs
/// before it, and reports the median absolute percentage error.
pub fn replay(chronological: &[Sample], time_of_day: bool) -> Option<Accuracy> {
    let mut errors = Vec::new();
    for index in MIN_HISTORY..chronological.len() {
        let actual = chronological[index];
        if actual.duration_ms <= 0 {
            continue;
        }
        let start = index.saturating_sub(WINDOW);
        let history: Vec<Sample> = chronological[start..index].iter().rev().copied().collect();
        let at = time_of_day.then_some(actual.started_at);
        if let Some(prediction) = predict(&history, at) {
            let error = (prediction.expected_ms - actual.duration_ms).abs() as f64
                / actual.duration_ms as f64;
            errors.push(error);
        }
    }
    if errors.is_empty() {
        return None;
    }
    errors.sort_by(f64::total_cmp);
    let middle = errors.len() / 2;
    let median_ape = if errors.len() % 2 == 1 {
        errors[middle]
    } else {
        (errors[middle - 1] + errors[middle]) / 2.0
    };
    Some(Accuracy {
        median_ape,
        replayed: errors.len(),
    })
}

/// A weight from 1 (same hour) down to a floor of 0.05 (far side of the clock).
fn hour_weight(sample: Millis, at: Millis) -> f64 {
    let minute = |m: Millis| (m.0.rem_euclid(86_400_000) / 60_000) as f64;
    let apart = (minute(sample) - minute(at)).abs();
    let hours = apart.min(1440.0 - apart) / 60.0;
    (-(hours * hours) / (2.0 * HOUR_SIGMA * HOUR_SIGMA))
        .exp()
        .max(0.05)
}

/// The smallest value whose cumulative weight reaches `q` of the total.
fn weighted_quantile(values: &[(i64, f64)], q: f64) -> i64 {
    let mut sorted = values.to_vec();
    sorted.sort_by_key(|(value, _)| *value);
    let total: f64 = sorted.iter().map(|(_, weight)| weight).sum();
    let mut cumulative = 0.0;
    for (value, weight) in &sorted {
        cumulative += weight;
        if cumulative >= q * total {
            return *value;
        }
    }
    sorted.last().map_or(0, |(value, _)| *value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    const MINUTE: i64 = 60_000;

    fn sample(hour: i64, minutes: i64) -> Sample {
        Sample {
            started_at: Millis(hour * HOUR),
            duration_ms: minutes * MINUTE,
        }
    }

    #[test]
    fn an_outlier_does_not_drag_the_prediction() {
        let mut history: Vec<Sample> = (0..20).map(|i| sample(i, 10)).collect();
        history[0].duration_ms = 600 * MINUTE;
        let prediction = predict(&history, None).unwrap();
        assert_eq!(prediction.expected_ms, 10 * MINUTE);
        assert!(prediction.high_ms < 11 * MINUTE, "{prediction:?}");
        assert_eq!(prediction.samples, 20);
        assert_eq!(predict(&[], None), None);
    }

    #[test]
    fn recent_runs_weigh_more() {
        // The newest 20 runs take 20 minutes, the 30 before them 10: a minority by
        // count, a majority by weight.
        let history: Vec<Sample> = (0..50)
            .map(|i| sample(i, if i < 20 { 20 } else { 10 }))
            .collect();
        assert_eq!(predict(&history, None).unwrap().expected_ms, 20 * MINUTE);
        // Ten new runs are not yet enough to forget thirty.
        assert_eq!(
            predict(&history[10..], None).unwrap().expected_ms,
            10 * MINUTE
        );
    }

    /// Builds started during the day take twice as long as those at night (busy shared
    /// runners), with ±5% noise: the prediction follows the hour, and replayed it stays
    /// within 15% (ignoring the hour, every day build would be half off).
    #[test]
    fn time_of_day_patterns_are_learned() {
        let mut noise = 7u64;
        let mut next = || {
            noise = noise
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((noise >> 33) % 1000) as f64 / 1000.0 * 0.1 - 0.05
        };
        let history: Vec<Sample> = (0..300)
            .map(|i| {
                let started = i * 5 * HOUR;
                let hour = (started / HOUR) % 24;
                let base = if (8..18).contains(&hour) { 20.0 } else { 10.0 };
                Sample {
                    started_at: Millis(started),
                    duration_ms: (base * (1.0 + next()) * MINUTE as f64) as i64,
                }
            })
            .collect();
        let aware = replay(&history, true).unwrap();
        assert!(aware.median_ape <= 0.15, "{aware:?}");
        assert_eq!(aware.replayed, 300 - MIN_HISTORY);
        let newest_first: Vec<Sample> = history.iter().rev().copied().collect();
        let at = |hour: i64| Some(Millis(400 * 24 * HOUR + hour * HOUR));
        let day = predict(&newest_first, at(13)).unwrap().expected_ms as f64;
        let night = predict(&newest_first, at(2)).unwrap().expected_ms as f64;
        assert!((day / (20.0 * MINUTE as f64) - 1.0).abs() < 0.06, "{day}");
        assert!(
            (night / (10.0 * MINUTE as f64) - 1.0).abs() < 0.06,
            "{night}"
        );
        let blind = predict(&newest_first, None).unwrap().expected_ms;
        assert!(
            blind == predict(&newest_first, None).unwrap().expected_ms
                && ((blind as f64) - day)
                    .abs()
                    .min((blind as f64 - night).abs())
                    < 0.06 * day
        );
    }
}
