//! Build analytics from stored samples, without I/O: builds and success rate per day,
//! duration quantiles and their trend, per-stage statistics, queue waits, time to
//! recovery, the stages that fail most and the busiest hours.
//!
//! Quantiles are nearest-rank: the p-th percentile of n sorted values is the value at
//! rank ⌈p·n/100⌉ (so always a value that occurred). A build counts towards the success
//! rate once it ended as `success`, `failed` or `stale`; cancelled builds are left out
//! (someone stopped them; they neither passed nor failed). Days and hours are UTC.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::{BuildStatus, Millis, StageStatus};

/// One build of the range, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildSample {
    pub started_at: Millis,
    pub ended_at: Option<Millis>,
    pub duration_ms: Option<i64>,
    pub status: BuildStatus,
    /// Shared, not copied: a range's builds name few branches.
    pub branch: Option<Arc<str>>,
    /// Its custom metrics (last value of each name), by name.
    pub metrics: Vec<(Arc<str>, f64)>,
}

/// One stage of a build of the range.
#[derive(Clone, Debug, PartialEq)]
pub struct StageSample {
    /// Shared, not copied: a range's stages have few names.
    pub name: Arc<str>,
    pub status: StageStatus,
    pub duration_ms: Option<i64>,
}

/// What analytics are computed from: the builds started in `[from, to)`, their stages,
/// and the queue waits (claimed − queued) of their jobs.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    pub builds: Vec<BuildSample>,
    pub stages: Vec<StageSample>,
    pub queue_waits_ms: Vec<i64>,
}

/// p50, p90 and p95 of a sample (all `None` when it is empty).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Quantiles {
    pub count: u64,
    pub p50: Option<i64>,
    pub p90: Option<i64>,
    pub p95: Option<i64>,
}

impl Quantiles {
    /// The quantiles of values in any order: each found by selection (linear), not by
    /// sorting them all, from the highest down so each looks only below the last.
    pub fn of(mut values: Vec<i64>) -> Quantiles {
        let count = values.len();
        let mut select = |p: f64, within: usize| -> Option<(i64, usize)> {
            let index = rank(count, p)? - 1;
            let (_, value, _) = values[..within].select_nth_unstable(index);
            Some((*value, index + 1))
        };
        let p95 = select(95.0, count);
        let p90 = p95.and_then(|(_, within)| select(90.0, within));
        let p50 = p90.and_then(|(_, within)| select(50.0, within));
        Quantiles {
            count: count as u64,
            p50: p50.map(|(value, _)| value),
            p90: p90.map(|(value, _)| value),
            p95: p95.map(|(value, _)| value),
        }
    }
}

/// The 1-based nearest rank of the p-th percentile of `len` values.
fn rank(len: usize, p: f64) -> Option<usize> {
    (len > 0).then(|| (((p / 100.0) * len as f64).ceil() as usize).clamp(1, len))
}

/// The nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    Some(sorted[rank(sorted.len(), p)? - 1])
}

/// One UTC day of the range.
#[derive(Clone, Debug, PartialEq)]
pub struct DayStats {
    /// `YYYY-MM-DD`.
    pub date: String,
    pub builds: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub success_rate: Option<f64>,
    pub duration: Quantiles,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StageStats {
    pub name: String,
    pub runs: u64,
    pub failed: u64,
    pub failure_rate: Option<f64>,
    pub duration: Quantiles,
}

/// Mean time to recovery: from a failed build's end to the end of the next successful
/// build of the same branch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Recovery {
    pub incidents: u64,
    pub mean_ms: Option<i64>,
    pub median_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Analytics {
    pub from: Millis,
    pub to: Millis,
    pub builds: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Queued or running at the time of the query.
    pub unfinished: u64,
    pub success_rate: Option<f64>,
    /// Of the builds that ended as `success`.
    pub duration: Quantiles,
    /// The p50 of the range's second half against its first, as a fraction (`0.1` is
    /// 10% slower); `None` while either half has no successful build.
    pub duration_trend: Option<f64>,
    pub days: Vec<DayStats>,
    pub stages: Vec<StageStats>,
    pub queue_wait: Quantiles,
    pub recovery: Recovery,
    /// The five stages that failed most, most first (ties by name).
    pub top_failing_stages: Vec<(String, u64)>,
    /// Builds started in each UTC hour of the day, 0 to 23.
    pub busiest_hours: [u64; 24],
    /// The custom metrics builds reported, most reported first (at most
    /// `MAX_METRIC_TRENDS`).
    pub metrics: Vec<MetricTrend>,
}

/// How many metric names the analytics answer carries.
pub const MAX_METRIC_TRENDS: usize = 20;

/// A custom metric over the range: its median and its median per day.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricTrend {
    pub name: String,
    /// Builds that reported it.
    pub builds: u64,
    pub p50: f64,
    pub min: f64,
    pub max: f64,
    /// The value of the newest build that reported it.
    pub latest: f64,
    /// Per day of `Analytics::days` (same order): the median, `None` on days without it.
    pub days: Vec<Option<f64>>,
}

/// The nearest-rank median of values (sorted here).
fn median_of(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = (values.len() as f64 * 0.5).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn metric_trends(builds: &[&BuildSample], day_starts: &[i64]) -> Vec<MetricTrend> {
    let mut by_name: BTreeMap<&str, Vec<(Millis, f64)>> = BTreeMap::new();
    for build in builds {
        for (name, value) in &build.metrics {
            by_name
                .entry(&**name)
                .or_default()
                .push((build.started_at, *value));
        }
    }
    let mut trends: Vec<MetricTrend> = by_name
        .into_iter()
        .map(|(name, mut points)| {
            points.sort_by_key(|(at, _)| *at);
            let mut values: Vec<f64> = points.iter().map(|(_, v)| *v).collect();
            let latest = values[values.len() - 1];
            let p50 = median_of(&mut values);
            let mut per_day: FxHashMap<i64, Vec<f64>> = FxHashMap::default();
            for (at, value) in &points {
                per_day.entry(at.start_of_day().0).or_default().push(*value);
            }
            let days = day_starts
                .iter()
                .map(|day| per_day.get_mut(day).map(|values| median_of(values)))
                .collect();
            MetricTrend {
                name: name.to_owned(),
                builds: points.len() as u64,
                p50,
                min: values[0],
                max: values[values.len() - 1],
                latest,
                days,
            }
        })
        .collect();
    trends.sort_by(|a, b| b.builds.cmp(&a.builds).then_with(|| a.name.cmp(&b.name)));
    trends.truncate(MAX_METRIC_TRENDS);
    trends
}

fn is_failure(status: BuildStatus) -> bool {
    matches!(status, BuildStatus::Failed | BuildStatus::Stale)
}

fn rate(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Computes the analytics of `[from, to)` from its samples (builds outside the range are
/// ignored, so a caller may pass a superset).
pub fn analyze(from: Millis, to: Millis, samples: &Samples) -> Analytics {
    let builds: Vec<&BuildSample> = samples
        .builds
        .iter()
        .filter(|b| b.started_at >= from && b.started_at < to)
        .collect();
    let count = |wanted: &dyn Fn(BuildStatus) -> bool| {
        builds.iter().filter(|b| wanted(b.status)).count() as u64
    };
    let succeeded = count(&|s| s == BuildStatus::Success);
    let failed = count(&is_failure);
    let cancelled = count(&|s| s == BuildStatus::Cancelled);
    let unfinished = count(&|s| matches!(s, BuildStatus::Queued | BuildStatus::Running));
    let success_durations = |set: &mut dyn Iterator<Item = &&BuildSample>| -> Vec<i64> {
        set.filter(|b| b.status == BuildStatus::Success)
            .filter_map(|b| b.duration_ms)
            .collect()
    };

    // Per day, every day of the range (empty days too, so charts keep their axis).
    let mut days: BTreeMap<i64, Vec<&BuildSample>> = BTreeMap::new();
    let mut day = from.start_of_day().0;
    while day < to.0 {
        days.insert(day, Vec::new());
        day += 86_400_000;
    }
    for build in &builds {
        days.entry(build.started_at.start_of_day().0)
            .or_default()
            .push(build);
    }
    let day_starts: Vec<i64> = days.keys().copied().collect();
    let days = days
        .into_iter()
        .map(|(day, set)| {
            let succeeded = set
                .iter()
                .filter(|b| b.status == BuildStatus::Success)
                .count() as u64;
            let failed = set.iter().filter(|b| is_failure(b.status)).count() as u64;
            DayStats {
                date: Millis(day).date(),
                builds: set.len() as u64,
                succeeded,
                failed,
                success_rate: rate(succeeded, succeeded + failed),
                duration: Quantiles::of(success_durations(&mut set.iter())),
            }
        })
        .collect();

    let middle = Millis(from.0 + (to.0 - from.0) / 2);
    let half = |first: bool| {
        Quantiles::of(success_durations(
            &mut builds.iter().filter(|b| (b.started_at < middle) == first),
        ))
        .p50
    };
    let duration_trend = match (half(true), half(false)) {
        (Some(before), Some(after)) if before > 0 => Some((after - before) as f64 / before as f64),
        _ => None,
    };

    let mut stages: FxHashMap<&str, (u64, u64, Vec<i64>)> = FxHashMap::default();
    for stage in &samples.stages {
        let entry = stages.entry(&*stage.name).or_default();
        if stage.status == StageStatus::Running {
            continue;
        }
        entry.0 += 1;
        if stage.status == StageStatus::Failed {
            entry.1 += 1;
        }
        if let (StageStatus::Success, Some(ms)) = (stage.status, stage.duration_ms) {
            entry.2.push(ms);
        }
    }
    let mut stages: Vec<StageStats> = stages
        .into_iter()
        .filter(|(_, (runs, _, _))| *runs > 0)
        .map(|(name, (runs, failed, durations))| StageStats {
            name: name.to_owned(),
            runs,
            failed,
            failure_rate: rate(failed, runs),
            duration: Quantiles::of(durations),
        })
        .collect();
    stages.sort_by(|a, b| a.name.cmp(&b.name));
    let mut top_failing_stages: Vec<(String, u64)> = stages
        .iter()
        .filter(|s| s.failed > 0)
        .map(|s| (s.name.clone(), s.failed))
        .collect();
    top_failing_stages.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top_failing_stages.truncate(5);

    let mut busiest_hours = [0u64; 24];
    for build in &builds {
        busiest_hours[build.started_at.hour_of_day() as usize] += 1;
    }

    Analytics {
        from,
        to,
        builds: builds.len() as u64,
        succeeded,
        failed,
        cancelled,
        unfinished,
        success_rate: rate(succeeded, succeeded + failed),
        duration: Quantiles::of(success_durations(&mut builds.iter())),
        duration_trend,
        days,
        stages,
        queue_wait: Quantiles::of(samples.queue_waits_ms.clone()),
        recovery: recovery(&builds),
        top_failing_stages,
        busiest_hours,
        metrics: metric_trends(&builds, &day_starts),
    }
}

/// Per branch, in start order: a failure opens an incident (unless one is open), the
/// next success closes it.
fn recovery(builds: &[&BuildSample]) -> Recovery {
    let mut by_branch: FxHashMap<Option<&str>, Vec<&BuildSample>> = FxHashMap::default();
    for build in builds {
        by_branch
            .entry(build.branch.as_deref())
            .or_default()
            .push(build);
    }
    let mut times = Vec::new();
    for (_, mut set) in by_branch {
        set.sort_by_key(|b| b.started_at);
        let mut open: Option<Millis> = None;
        for build in set {
            let ended = build.ended_at.unwrap_or(build.started_at);
            match build.status {
                status if is_failure(status) => {
                    open.get_or_insert(ended);
                }
                BuildStatus::Success => {
                    if let Some(failed_at) = open.take() {
                        times.push(ended.saturating_sub(failed_at).max(0));
                    }
                }
                _ => {}
            }
        }
    }
    let incidents = times.len() as u64;
    let mean_ms = (incidents > 0).then(|| times.iter().sum::<i64>() / incidents as i64);
    Recovery {
        incidents,
        mean_ms,
        median_ms: Quantiles::of(times).p50,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;
    const HOUR: i64 = 3_600_000;

    fn build(start: i64, minutes: i64, status: BuildStatus, branch: &str) -> BuildSample {
        BuildSample {
            started_at: Millis(start),
            ended_at: Some(Millis(start + minutes * 60_000)),
            duration_ms: Some(minutes * 60_000),
            status,
            branch: Some(branch.into()),
            metrics: Vec::new(),
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<i64> = (1..=20).collect();
        assert_eq!(percentile(&values, 50.0), Some(10));
        assert_eq!(percentile(&values, 90.0), Some(18));
        assert_eq!(percentile(&values, 95.0), Some(19));
        assert_eq!(percentile(&values, 100.0), Some(20));
        assert_eq!(percentile(&[7], 95.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(Quantiles::of(vec![3, 1, 2]).p50, Some(2));
        // Selection answers what sorting answers, duplicates and all.
        let mut seed = 7u64;
        for len in 0..200usize {
            let values: Vec<i64> = (0..len)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 40) as i64 % 50
                })
                .collect();
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let q = Quantiles::of(values);
            assert_eq!(
                (q.count, q.p50, q.p90, q.p95),
                (
                    len as u64,
                    percentile(&sorted, 50.0),
                    percentile(&sorted, 90.0),
                    percentile(&sorted, 95.0)
                ),
                "{len} values"
            );
        }
    }

    #[test]
    fn days_rates_trend_and_hours() {
        let from = Millis(20_000 * DAY);
        let to = Millis(20_004 * DAY);
        let samples = Samples {
            builds: vec![
                build(from.0 + 9 * HOUR, 10, BuildStatus::Success, "main"),
                build(from.0 + 10 * HOUR, 12, BuildStatus::Failed, "main"),
                build(from.0 + DAY + 9 * HOUR, 14, BuildStatus::Cancelled, "main"),
                build(
                    from.0 + 3 * DAY + 9 * HOUR,
                    20,
                    BuildStatus::Success,
                    "main",
                ),
                build(from.0 + 3 * DAY + 11 * HOUR, 22, BuildStatus::Stale, "dev"),
                // Outside the range: ignored.
                build(to.0 + HOUR, 1, BuildStatus::Success, "main"),
            ],
            stages: vec![],
            queue_waits_ms: vec![1000, 3000, 2000],
        };
        let analytics = analyze(from, to, &samples);
        assert_eq!(analytics.builds, 5);
        assert_eq!(
            (analytics.succeeded, analytics.failed, analytics.cancelled),
            (2, 2, 1)
        );
        assert_eq!(analytics.success_rate, Some(0.5));
        assert_eq!(analytics.days.len(), 4);
        assert_eq!(analytics.days[2].builds, 0);
        assert_eq!(analytics.days[0].success_rate, Some(0.5));
        assert_eq!(analytics.days[1].success_rate, None);
        assert_eq!(analytics.duration.p50, Some(10 * 60_000));
        // First half p50 10 min, second half 20 min: twice as slow.
        assert_eq!(analytics.duration_trend, Some(1.0));
        assert_eq!(analytics.queue_wait.p50, Some(2000));
        assert_eq!(analytics.busiest_hours[9], 3);
        assert_eq!(analytics.busiest_hours[11], 1);
        // main: failed at day 0 10:12, recovered at day 3 09:20.
        assert_eq!(analytics.recovery.incidents, 1);
        assert_eq!(
            analytics.recovery.mean_ms,
            Some(3 * DAY - HOUR + 8 * 60_000)
        );
    }

    #[test]
    fn metric_trends_per_day() {
        let from = Millis(20_000 * DAY);
        let with = |start: i64, kb: f64| BuildSample {
            metrics: vec![("bundle_kb".into(), kb)],
            ..build(start, 1, BuildStatus::Success, "main")
        };
        let samples = Samples {
            builds: vec![
                with(from.0 + HOUR, 400.0),
                with(from.0 + 2 * HOUR, 410.0),
                with(from.0 + 3 * HOUR, 390.0),
                with(from.0 + 2 * DAY, 500.0),
                build(from.0 + 2 * DAY, 1, BuildStatus::Success, "main"),
            ],
            ..Samples::default()
        };
        let analytics = analyze(from, Millis(from.0 + 3 * DAY), &samples);
        assert_eq!(analytics.metrics.len(), 1);
        let trend = &analytics.metrics[0];
        assert_eq!((trend.name.as_str(), trend.builds), ("bundle_kb", 4));
        assert_eq!((trend.p50, trend.min, trend.max), (400.0, 390.0, 500.0));
        assert_eq!(trend.latest, 500.0);
        assert_eq!(trend.days, vec![Some(400.0), None, Some(500.0)]);
    }

    #[test]
    fn stages_and_their_failures() {
        let stage = |name: &str, status, ms| StageSample {
            name: name.into(),
            status,
            duration_ms: Some(ms),
        };
        let samples = Samples {
            builds: vec![],
            stages: vec![
                stage("test", StageStatus::Failed, 5),
                stage("test", StageStatus::Success, 10),
                stage("test", StageStatus::Failed, 7),
                stage("lint", StageStatus::Failed, 1),
                stage("build", StageStatus::Success, 30),
                stage("build", StageStatus::Running, 0),
            ],
            queue_waits_ms: vec![],
        };
        let analytics = analyze(Millis(0), Millis(DAY), &samples);
        let test = analytics.stages.iter().find(|s| s.name == "test").unwrap();
        assert_eq!((test.runs, test.failed), (3, 2));
        assert_eq!(test.duration.p50, Some(10));
        let build = analytics.stages.iter().find(|s| s.name == "build").unwrap();
        assert_eq!((build.runs, build.failure_rate), (1, Some(0.0)));
        assert_eq!(
            analytics.top_failing_stages,
            vec![("test".to_owned(), 2), ("lint".to_owned(), 1)]
        );
        assert_eq!(analytics.success_rate, None);
        assert_eq!(analytics.duration_trend, None);
    }
}
