//! Closed days of analytics, for both engines: which part of a range is read from the
//! `analytics_days` rows and which from the builds, the rows' encoding, and the samples
//! a request gets from both.
//!
//! A UTC day is *closed* once it ended more than `CLOSE_MARGIN_MS` ago: no build can
//! start in it any more (a build's start is server time, set when it starts). A closed
//! day whose builds have all ended is kept as one row holding every build of it with its
//! stages and queue waits, unfiltered, as of the event id `computed_through` (the
//! counter in the read's snapshot). Afterwards only an event on an ended build can change
//! what analytics read of it (a custom event's metrics); ingest then raises the row's
//! `changed_at` to that event's id, in the same transaction, and the row is stale from
//! then on until a read computes it again. Event ids commit in order, so a write that
//! the reading snapshot did not see always has an id above `computed_through`: a row
//! never hides a change, whichever of the two commits first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kiln_core::analytics::{BuildSample, Samples, StageSample};
use kiln_core::{BuildStatus, Millis, StageStatus};

use crate::AnalyticsFilter;

pub(super) const DAY_MS: i64 = 86_400_000;

/// How long after its end a day is closed: more than any clock skew between replicas.
pub(super) const CLOSE_MARGIN_MS: i64 = 3_600_000;

/// The encoding's version; a row of another version is read as missing.
const FORMAT: u8 = 1;

/// One build of a range with what analytics take of it.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct DayBuild {
    pub(super) started_at: i64,
    pub(super) ended_at: Option<i64>,
    pub(super) duration_ms: Option<i64>,
    pub(super) status: BuildStatus,
    pub(super) branch: Option<Arc<str>>,
    pub(super) command: Option<Arc<str>>,
    pub(super) metrics: Vec<(Arc<str>, f64)>,
    pub(super) stages: Vec<StageSample>,
    /// Claimed − queued of its agent jobs that were claimed.
    pub(super) waits: Vec<i64>,
}

impl DayBuild {
    fn matches(&self, filter: &AnalyticsFilter) -> bool {
        let wanted = |want: &Option<String>, have: &Option<Arc<str>>| {
            want.as_ref()
                .is_none_or(|want| have.as_deref() == Some(want.as_str()))
        };
        self.started_at >= filter.from.0
            && self.started_at < filter.to.0
            && wanted(&filter.branch, &self.branch)
            && wanted(&filter.command, &self.command)
    }
}

/// A span of start times, `[from, to)`, to read from the builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) from: i64,
    pub(super) to: i64,
}

/// How one request reads its range.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Plan {
    /// Whole closed days inside the range, `[first, end)` by day start: from the rows
    /// where they are valid, otherwise from the builds (and then kept).
    pub(super) closed: Option<Span>,
    /// The rest of the range, read from the builds with the filter.
    pub(super) open: Vec<Span>,
}

fn floor_day(at: i64) -> i64 {
    at.div_euclid(DAY_MS) * DAY_MS
}

fn ceil_day(at: i64) -> i64 {
    floor_day(at + DAY_MS - 1)
}

impl Plan {
    /// The plan of a range; `closed_only` leaves the open rest out (when only keeping
    /// days).
    pub(super) fn new(filter: &AnalyticsFilter, now: Millis, closed_only: bool) -> Plan {
        let mut plan = Self::of_range(filter, now);
        if closed_only {
            plan.open.clear();
        }
        plan
    }

    fn of_range(filter: &AnalyticsFilter, now: Millis) -> Plan {
        let (from, to) = (filter.from.0, filter.to.0);
        let first = ceil_day(from);
        let end = floor_day(to.min(now.0.saturating_sub(CLOSE_MARGIN_MS)));
        if from >= to || first >= end {
            return Plan {
                closed: None,
                open: (from < to)
                    .then_some(Span { from, to })
                    .into_iter()
                    .collect(),
            };
        }
        let open = [Span { from, to: first }, Span { from: end, to }]
            .into_iter()
            .filter(|span| span.from < span.to)
            .collect();
        Plan {
            closed: Some(Span {
                from: first,
                to: end,
            }),
            open,
        }
    }

    /// The closed days without a usable row, as spans of consecutive days.
    pub(super) fn missing(&self, kept: &BTreeSet<i64>) -> Vec<Span> {
        let Some(closed) = self.closed else {
            return Vec::new();
        };
        let mut spans: Vec<Span> = Vec::new();
        let mut day = closed.from;
        while day < closed.to {
            if !kept.contains(&day) {
                match spans.last_mut() {
                    Some(last) if last.to == day => last.to = day + DAY_MS,
                    _ => spans.push(Span {
                        from: day,
                        to: day + DAY_MS,
                    }),
                }
            }
            day += DAY_MS;
        }
        spans
    }
}

/// Decodes the kept rows of the closed span straight into `samples` (the builds the
/// filter takes), and answers the days that decoded; a row that does not counts as
/// missing (what it added is taken out again).
pub(super) fn decode_rows(
    rows: Vec<(i64, Vec<u8>)>,
    filter: &AnalyticsFilter,
    samples: &mut Samples,
) -> BTreeSet<i64> {
    let mut decoded = BTreeSet::new();
    for (day, data) in rows {
        let lengths = (
            samples.builds.len(),
            samples.stages.len(),
            samples.queue_waits_ms.len(),
        );
        if decode_into(day, &data, filter, samples).is_some() {
            decoded.insert(day);
        } else {
            samples.builds.truncate(lengths.0);
            samples.stages.truncate(lengths.1);
            samples.queue_waits_ms.truncate(lengths.2);
            tracing::warn!(
                day,
                "an analytics_days row did not decode; reading its builds"
            );
        }
    }
    decoded
}

/// Adds a build read from the builds to `samples` when the filter takes it.
fn push_sample(samples: &mut Samples, filter: &AnalyticsFilter, build: DayBuild) {
    if !build.matches(filter) {
        return;
    }
    samples.builds.push(BuildSample {
        started_at: Millis(build.started_at),
        ended_at: build.ended_at.map(Millis),
        duration_ms: build.duration_ms,
        status: build.status,
        branch: build.branch,
        metrics: build.metrics,
    });
    samples.stages.extend(build.stages);
    samples.queue_waits_ms.extend(build.waits);
}

/// Adds what was read from the builds (closed days without a valid row, and the open
/// rest) to `samples`, and answers the closed days whose builds have all ended as rows
/// to keep (day, encoding).
pub(super) fn assemble(
    filter: &AnalyticsFilter,
    samples: &mut Samples,
    kept: &BTreeSet<i64>,
    read_closed: Vec<DayBuild>,
    read_open: Vec<DayBuild>,
    plan: &Plan,
) -> Vec<(i64, Vec<u8>)> {
    let mut fresh: BTreeMap<i64, Vec<DayBuild>> = BTreeMap::new();
    for span in plan.missing(kept) {
        let mut day = span.from;
        while day < span.to {
            fresh.insert(day, Vec::new());
            day += DAY_MS;
        }
    }
    for build in read_closed {
        fresh
            .entry(floor_day(build.started_at))
            .or_default()
            .push(build);
    }
    let to_keep = fresh
        .iter()
        .filter(|(_, builds)| builds.iter().all(|b| b.status.is_terminal()))
        .map(|(day, builds)| (*day, encode(*day, builds)))
        .collect();
    for build in fresh.into_values().flatten().chain(read_open) {
        push_sample(samples, filter, build);
    }
    to_keep
}

// The encoding: a version byte, a table of the strings (names, branches, commands,
// statuses), then each build. Integers are LEB128 varints, signed ones zigzagged;
// optional values carry a presence bit in a flags byte.

struct Writer {
    out: Vec<u8>,
    strings: Vec<String>,
    index: std::collections::HashMap<String, u64>,
}

impl Writer {
    fn uint(out: &mut Vec<u8>, mut value: u64) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn int(out: &mut Vec<u8>, value: i64) {
        Self::uint(out, ((value << 1) ^ (value >> 63)) as u64);
    }

    fn string(&mut self, value: &str) {
        let next = self.strings.len() as u64;
        let index = *self.index.entry(value.to_owned()).or_insert_with(|| {
            self.strings.push(value.to_owned());
            next
        });
        Self::uint(&mut self.out, index);
    }
}

fn encode(day: i64, builds: &[DayBuild]) -> Vec<u8> {
    let mut writer = Writer {
        out: Vec::with_capacity(builds.len() * 32),
        strings: Vec::new(),
        index: std::collections::HashMap::new(),
    };
    Writer::uint(&mut writer.out, builds.len() as u64);
    for build in builds {
        let flags = u8::from(build.ended_at.is_some())
            | u8::from(build.duration_ms.is_some()) << 1
            | u8::from(build.branch.is_some()) << 2
            | u8::from(build.command.is_some()) << 3;
        writer.out.push(flags);
        Writer::int(&mut writer.out, build.started_at - day);
        if let Some(ended_at) = build.ended_at {
            Writer::int(&mut writer.out, ended_at - build.started_at);
        }
        if let Some(duration) = build.duration_ms {
            Writer::int(&mut writer.out, duration);
        }
        writer.string(build.status.as_str());
        if let Some(branch) = &build.branch {
            writer.string(branch);
        }
        if let Some(command) = &build.command {
            writer.string(command);
        }
        Writer::uint(&mut writer.out, build.metrics.len() as u64);
        for (name, value) in &build.metrics {
            writer.string(name);
            writer.out.extend_from_slice(&value.to_bits().to_le_bytes());
        }
        Writer::uint(&mut writer.out, build.stages.len() as u64);
        for stage in &build.stages {
            writer.string(&stage.name);
            writer.string(stage.status.as_str());
            writer.out.push(u8::from(stage.duration_ms.is_some()));
            if let Some(duration) = stage.duration_ms {
                Writer::int(&mut writer.out, duration);
            }
        }
        Writer::uint(&mut writer.out, build.waits.len() as u64);
        for wait in &build.waits {
            Writer::int(&mut writer.out, *wait);
        }
    }
    let mut data = Vec::with_capacity(writer.out.len() + writer.strings.len() * 8 + 8);
    data.push(FORMAT);
    Writer::uint(&mut data, writer.strings.len() as u64);
    for string in &writer.strings {
        Writer::uint(&mut data, string.len() as u64);
        data.extend_from_slice(string.as_bytes());
    }
    data.extend_from_slice(&writer.out);
    data
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let byte = *self.data.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    fn uint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn int(&mut self) -> Option<i64> {
        let raw = self.uint()?;
        Some((raw >> 1) as i64 ^ -((raw & 1) as i64))
    }

    fn count(&mut self) -> Option<usize> {
        let count = usize::try_from(self.uint()?).ok()?;
        // Every item takes at least a byte: a count beyond the rest is corrupt.
        (count <= self.data.len() - self.at).then_some(count)
    }

    fn bytes(&mut self, len: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(len)?;
        let slice = self.data.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }
}

/// Decodes one kept day into `samples`, the builds the filter takes; `None` when the
/// row is not of this encoding or is damaged (what was added is then partial).
fn decode_into(
    day: i64,
    data: &[u8],
    filter: &AnalyticsFilter,
    samples: &mut Samples,
) -> Option<()> {
    let mut reader = Reader { data, at: 0 };
    if reader.byte()? != FORMAT {
        return None;
    }
    let count = reader.count()?;
    let mut strings: Vec<Arc<str>> = Vec::with_capacity(count);
    for _ in 0..count {
        let len = reader.count()?;
        strings.push(Arc::from(std::str::from_utf8(reader.bytes(len)?).ok()?));
    }
    let string = |reader: &mut Reader| -> Option<&Arc<str>> {
        strings.get(usize::try_from(reader.uint()?).ok()?)
    };
    let wanted = |want: &Option<String>, have: Option<&Arc<str>>| {
        want.as_ref()
            .is_none_or(|want| have.map(|have| &**have) == Some(want.as_str()))
    };
    let count = reader.count()?;
    samples.builds.reserve(count);
    for _ in 0..count {
        let flags = reader.byte()?;
        let started_at = day.checked_add(reader.int()?)?;
        let ended_at = if flags & 1 != 0 {
            Some(started_at.checked_add(reader.int()?)?)
        } else {
            None
        };
        let duration_ms = if flags & 2 != 0 {
            Some(reader.int()?)
        } else {
            None
        };
        let status = BuildStatus::from_name(string(&mut reader)?)?;
        let branch = if flags & 4 != 0 {
            Some(string(&mut reader)?)
        } else {
            None
        };
        let command = if flags & 8 != 0 {
            Some(string(&mut reader)?)
        } else {
            None
        };
        let take = started_at >= filter.from.0
            && started_at < filter.to.0
            && wanted(&filter.branch, branch)
            && wanted(&filter.command, command);
        let branch = branch.cloned();
        let metric_count = reader.count()?;
        let mut metrics = Vec::with_capacity(if take { metric_count } else { 0 });
        for _ in 0..metric_count {
            let name = string(&mut reader)?;
            let bits: [u8; 8] = reader.bytes(8)?.try_into().ok()?;
            if take {
                metrics.push((name.clone(), f64::from_bits(u64::from_le_bytes(bits))));
            }
        }
        for _ in 0..reader.count()? {
            let name = string(&mut reader)?;
            let status = StageStatus::from_name(string(&mut reader)?)?;
            let duration_ms = if reader.byte()? != 0 {
                Some(reader.int()?)
            } else {
                None
            };
            if take {
                samples.stages.push(StageSample {
                    name: name.clone(),
                    status,
                    duration_ms,
                });
            }
        }
        for _ in 0..reader.count()? {
            let wait = reader.int()?;
            if take {
                samples.queue_waits_ms.push(wait);
            }
        }
        if take {
            samples.builds.push(BuildSample {
                started_at: Millis(started_at),
                ended_at: ended_at.map(Millis),
                duration_ms,
                status,
                branch,
                metrics,
            });
        }
    }
    (reader.at == data.len()).then_some(())
}

/// The days of ended builds that a write changed: `(project, day, event id)` for the
/// `changed_at` of their rows.
pub(super) fn touched_days(
    builds: impl Iterator<Item = (i64, Millis, i64)>,
) -> Vec<(i64, i64, i64)> {
    let mut days: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for (project_id, started_at, event_id) in builds {
        let entry = days
            .entry((project_id, floor_day(started_at.0)))
            .or_default();
        *entry = (*entry).max(event_id);
    }
    days.into_iter()
        .map(|((project_id, day), event_id)| (project_id, day, event_id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY0: i64 = 1_800_000_000_000 / DAY_MS * DAY_MS;

    fn build(started_at: i64, status: BuildStatus, branch: Option<&str>) -> DayBuild {
        DayBuild {
            started_at,
            ended_at: status.is_terminal().then_some(started_at + 90_000),
            duration_ms: status.is_terminal().then_some(90_000),
            status,
            branch: branch.map(Into::into),
            command: Some("make test".into()),
            metrics: vec![("bundle_kb".into(), 412.5)],
            stages: vec![
                StageSample {
                    name: "build".into(),
                    status: StageStatus::Success,
                    duration_ms: Some(60_000),
                },
                StageSample {
                    name: "test".into(),
                    status: StageStatus::Running,
                    duration_ms: None,
                },
            ],
            waits: vec![0, 1_250],
        }
    }

    /// What decoding `data` gives, with no filter but the day.
    fn decode(day: i64, data: &[u8]) -> Option<Samples> {
        let mut samples = Samples::default();
        decode_into(day, data, &filter(day, day + DAY_MS), &mut samples)?;
        Some(samples)
    }

    /// The samples of builds as read from the builds.
    fn samples_of(day: i64, builds: Vec<DayBuild>) -> Samples {
        let mut samples = Samples::default();
        for build in builds {
            push_sample(&mut samples, &filter(day, day + DAY_MS), build);
        }
        samples
    }

    fn same(a: Option<Samples>, b: Option<Samples>) {
        let parts = |s: Option<Samples>| s.map(|s| (s.builds, s.stages, s.queue_waits_ms));
        assert_eq!(parts(a), parts(b));
    }

    fn filter(from: i64, to: i64) -> AnalyticsFilter {
        AnalyticsFilter {
            project_id: 1,
            from: Millis(from),
            to: Millis(to),
            branch: None,
            command: None,
        }
    }

    #[test]
    fn a_day_round_trips_through_its_encoding() {
        let builds = vec![
            build(DAY0 + 5, BuildStatus::Success, Some("main")),
            build(DAY0 + DAY_MS - 1, BuildStatus::Failed, None),
            DayBuild {
                command: None,
                metrics: Vec::new(),
                stages: Vec::new(),
                waits: Vec::new(),
                ..build(DAY0 + 7, BuildStatus::Cancelled, Some("dev"))
            },
        ];
        let data = encode(DAY0, &builds);
        same(decode(DAY0, &data), Some(samples_of(DAY0, builds)));
        same(decode(DAY0, &encode(DAY0, &[])), Some(Samples::default()));
    }

    #[test]
    fn a_damaged_row_reads_as_missing() {
        let data = encode(DAY0, &[build(DAY0, BuildStatus::Success, Some("main"))]);
        for cut in 0..data.len() {
            assert!(decode(DAY0, &data[..cut]).is_none(), "cut at {cut}");
        }
        let mut other_version = data.clone();
        other_version[0] = 2;
        assert!(decode(DAY0, &other_version).is_none());
        let mut longer = data;
        longer.push(0);
        assert!(decode(DAY0, &longer).is_none());
        // A damaged day adds nothing; the good day beside it is read.
        let good = encode(
            DAY0 + DAY_MS,
            &[build(DAY0 + DAY_MS + 1, BuildStatus::Success, None)],
        );
        let mut damaged = encode(
            DAY0,
            &[
                build(DAY0 + 1, BuildStatus::Success, None),
                build(DAY0 + 2, BuildStatus::Success, None),
            ],
        );
        damaged.truncate(damaged.len() - 3);
        let mut samples = Samples::default();
        let decoded = decode_rows(
            vec![(DAY0, damaged), (DAY0 + DAY_MS, good)],
            &filter(DAY0, DAY0 + 2 * DAY_MS),
            &mut samples,
        );
        assert_eq!(decoded.into_iter().collect::<Vec<_>>(), vec![DAY0 + DAY_MS]);
        assert_eq!(samples.builds.len(), 1);
        assert_eq!(samples.stages.len(), 2);
        assert_eq!(samples.queue_waits_ms.len(), 2);
    }

    #[test]
    fn only_whole_days_that_closed_an_hour_ago_come_from_rows() {
        let now = Millis(DAY0 + 10 * DAY_MS + 30 * 60_000);
        // 10:00 on day 0 to now: days 1–8 closed (day 9 ended 30 minutes ago).
        let plan = Plan::new(&filter(DAY0 + 36_000_000, now.0), now, false);
        assert_eq!(
            plan.closed,
            Some(Span {
                from: DAY0 + DAY_MS,
                to: DAY0 + 9 * DAY_MS
            })
        );
        assert_eq!(
            plan.open,
            vec![
                Span {
                    from: DAY0 + 36_000_000,
                    to: DAY0 + DAY_MS
                },
                Span {
                    from: DAY0 + 9 * DAY_MS,
                    to: now.0
                }
            ]
        );
        // Aligned on days and long closed: all of it.
        let plan = Plan::new(&filter(DAY0, DAY0 + 3 * DAY_MS), now, false);
        assert_eq!(plan.open, Vec::new());
        // Today only: nothing closed.
        let plan = Plan::new(&filter(DAY0 + 10 * DAY_MS, now.0), now, false);
        assert_eq!(plan.closed, None);
        assert_eq!(plan.open.len(), 1);
        // Missing days come back as runs of consecutive days.
        let plan = Plan::new(&filter(DAY0, DAY0 + 5 * DAY_MS), now, false);
        let kept: BTreeSet<i64> = [DAY0 + DAY_MS, DAY0 + 2 * DAY_MS].into();
        assert_eq!(
            plan.missing(&kept),
            vec![
                Span {
                    from: DAY0,
                    to: DAY0 + DAY_MS
                },
                Span {
                    from: DAY0 + 3 * DAY_MS,
                    to: DAY0 + 5 * DAY_MS
                }
            ]
        );
    }

    #[test]
    fn days_with_a_running_build_are_not_kept_and_filters_apply_to_kept_days() {
        let now = Millis(DAY0 + 10 * DAY_MS);
        let plan = Plan::new(&filter(DAY0, DAY0 + 3 * DAY_MS), now, false);
        let mut main = filter(DAY0, DAY0 + 3 * DAY_MS);
        main.branch = Some("main".into());
        let row = encode(
            DAY0,
            &[
                build(DAY0 + 1, BuildStatus::Success, Some("main")),
                build(DAY0 + 2, BuildStatus::Success, Some("dev")),
            ],
        );
        let mut samples = Samples::default();
        let kept = decode_rows(vec![(DAY0, row)], &main, &mut samples);
        let read = vec![
            build(DAY0 + DAY_MS + 1, BuildStatus::Success, Some("main")),
            build(DAY0 + 2 * DAY_MS + 1, BuildStatus::Running, Some("main")),
        ];
        let to_keep = assemble(&main, &mut samples, &kept, read, Vec::new(), &plan);
        assert_eq!(samples.builds.len(), 3);
        assert_eq!(samples.stages.len(), 6);
        assert_eq!(samples.queue_waits_ms.len(), 6);
        assert_eq!(
            to_keep.iter().map(|(day, _)| *day).collect::<Vec<_>>(),
            vec![DAY0 + DAY_MS],
            "day 2 has a running build"
        );
    }

    #[test]
    fn touched_days_keep_the_newest_event_per_day() {
        let days = touched_days(
            [
                (1, Millis(DAY0 + 5), 10),
                (1, Millis(DAY0 + 9), 12),
                (1, Millis(DAY0 + DAY_MS), 11),
                (2, Millis(DAY0), 3),
            ]
            .into_iter(),
        );
        assert_eq!(
            days,
            vec![(1, DAY0, 12), (1, DAY0 + DAY_MS, 11), (2, DAY0, 3)]
        );
    }
}
