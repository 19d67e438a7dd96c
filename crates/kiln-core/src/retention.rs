//! Artifact retention: a project's rule (keep the newest N builds of each branch, and/or
//! the builds of the last D days) and which builds' artifacts it lets go. Protected builds
//! (pinned, the last good build of a branch, later those a live deployment uses) and
//! builds that have not ended are never chosen.

use std::collections::BTreeMap;

use crate::{FieldError, Millis};

/// The longest `keep_days` a project may set (about 100 years).
pub const MAX_KEEP_DAYS: u32 = 36_500;
/// The most builds per branch `keep_builds` may name.
pub const MAX_KEEP_BUILDS: u32 = 1_000_000;
const DAY_MS: i64 = 86_400_000;

/// A project's retention rule. With neither part set everything is kept. With both set a
/// build's artifacts go only when both let them go: a build is kept while it is among the
/// newest `keep_builds` of its branch **or** ended within `keep_days`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep the artifacts of the newest N ended builds of each branch that hold artifacts.
    pub keep_builds: Option<u32>,
    /// Keep the artifacts of builds that ended within the last D days.
    pub keep_days: Option<u32>,
}

impl RetentionPolicy {
    /// Checks the parts' ranges; the error names the field (`keepBuilds`, `keepDays`).
    pub fn new(keep_builds: Option<u32>, keep_days: Option<u32>) -> Result<Self, FieldError> {
        if let Some(builds) = keep_builds
            && !(1..=MAX_KEEP_BUILDS).contains(&builds)
        {
            return Err(FieldError::new(
                "keepBuilds",
                format!("must be from 1 to {MAX_KEEP_BUILDS} (leave it out to keep every build)"),
            ));
        }
        if let Some(days) = keep_days
            && !(1..=MAX_KEEP_DAYS).contains(&days)
        {
            return Err(FieldError::new(
                "keepDays",
                format!(
                    "must be from 1 to {MAX_KEEP_DAYS} (leave it out to keep builds of any age)"
                ),
            ));
        }
        Ok(Self {
            keep_builds,
            keep_days,
        })
    }

    /// Whether the rule ever lets anything go.
    pub fn keeps_everything(&self) -> bool {
        self.keep_builds.is_none() && self.keep_days.is_none()
    }
}

/// A build that holds artifacts, as the rule sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionCandidate {
    pub build_id: i64,
    /// `None`: a build that reported no branch (such builds form one group of their own).
    pub branch: Option<String>,
    /// The project's build number (higher is newer).
    pub number: i64,
    /// `None` while the build runs: it is kept and not counted.
    pub ended_at: Option<Millis>,
    /// Pinned, the last good build of its branch, or used by a live deployment.
    pub protected: bool,
}

/// The builds whose artifacts `policy` lets go at `now`, newest first within each branch,
/// branches by name. Protected and unended builds are never in it; protected ended builds
/// still count among the newest N of their branch.
pub fn expired_builds(
    policy: &RetentionPolicy,
    candidates: &[RetentionCandidate],
    now: Millis,
) -> Vec<i64> {
    if policy.keeps_everything() {
        return Vec::new();
    }
    let mut by_branch: BTreeMap<Option<&str>, Vec<&RetentionCandidate>> = BTreeMap::new();
    for candidate in candidates.iter().filter(|c| c.ended_at.is_some()) {
        by_branch
            .entry(candidate.branch.as_deref())
            .or_default()
            .push(candidate);
    }
    let cutoff = policy
        .keep_days
        .map(|days| Millis(now.0.saturating_sub(i64::from(days) * DAY_MS)));
    let mut expired = Vec::new();
    for builds in by_branch.values_mut() {
        builds.sort_by(|a, b| b.number.cmp(&a.number).then(b.build_id.cmp(&a.build_id)));
        for (rank, build) in builds.iter().enumerate() {
            if build.protected {
                continue;
            }
            let past_count = policy.keep_builds.is_none_or(|keep| rank >= keep as usize);
            let past_age = match (cutoff, build.ended_at) {
                (Some(cutoff), Some(ended_at)) => ended_at < cutoff,
                _ => true,
            };
            if past_count && past_age {
                expired.push(build.build_id);
            }
        }
    }
    expired
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = Millis(1_800_000_000_000);

    fn build(id: i64, branch: &str, days_ago: i64) -> RetentionCandidate {
        RetentionCandidate {
            build_id: id,
            branch: Some(branch.to_owned()),
            number: id,
            ended_at: Some(Millis(NOW.0 - days_ago * DAY_MS)),
            protected: false,
        }
    }

    #[test]
    fn no_rule_keeps_everything() {
        let builds = [build(1, "main", 400), build(2, "main", 300)];
        assert!(expired_builds(&RetentionPolicy::default(), &builds, NOW).is_empty());
    }

    #[test]
    fn keep_builds_keeps_the_newest_of_each_branch() {
        let builds = [
            build(1, "main", 5),
            build(2, "main", 4),
            build(3, "feature", 3),
            build(4, "main", 2),
            build(5, "main", 1),
        ];
        let policy = RetentionPolicy::new(Some(2), None).unwrap();
        // main keeps 5 and 4; feature keeps its only build.
        assert_eq!(expired_builds(&policy, &builds, NOW), vec![2, 1]);
    }

    #[test]
    fn keep_days_lets_older_builds_go() {
        let builds = [build(1, "main", 10), build(2, "main", 3), build(3, "x", 8)];
        let policy = RetentionPolicy::new(None, Some(7)).unwrap();
        assert_eq!(expired_builds(&policy, &builds, NOW), vec![1, 3]);
    }

    #[test]
    fn with_both_a_build_goes_only_when_both_let_it_go() {
        // Newest first: 4 (1 day), 3 (20 days), 2 (30 days), 1 (2 days, but old number).
        let builds = [
            build(1, "main", 2),
            build(2, "main", 30),
            build(3, "main", 20),
            build(4, "main", 1),
        ];
        let policy = RetentionPolicy::new(Some(2), Some(7)).unwrap();
        // 4 and 3 are the newest two; 1 is recent; only 2 is outside both.
        assert_eq!(expired_builds(&policy, &builds, NOW), vec![2]);
    }

    #[test]
    fn protected_and_running_builds_are_never_chosen() {
        let mut pinned = build(1, "main", 50);
        pinned.protected = true;
        let mut running = build(2, "main", 0);
        running.ended_at = None;
        let builds = [pinned, running, build(3, "main", 40), build(4, "main", 1)];
        let policy = RetentionPolicy::new(Some(1), None).unwrap();
        // The running build is not counted: 4 is the newest ended; the pinned 1 stays.
        assert_eq!(expired_builds(&policy, &builds, NOW), vec![3]);
    }

    #[test]
    fn protected_builds_count_among_the_newest() {
        let mut last_good = build(3, "main", 1);
        last_good.protected = true;
        let builds = [build(1, "main", 3), build(2, "main", 2), last_good];
        let policy = RetentionPolicy::new(Some(2), None).unwrap();
        assert_eq!(expired_builds(&policy, &builds, NOW), vec![1]);
    }

    #[test]
    fn builds_without_a_branch_form_their_own_group() {
        let mut a = build(1, "", 5);
        a.branch = None;
        let mut b = build(2, "", 4);
        b.branch = None;
        let builds = [a, b, build(3, "main", 1)];
        let policy = RetentionPolicy::new(Some(1), None).unwrap();
        assert_eq!(expired_builds(&policy, &builds, NOW), vec![1]);
    }

    #[test]
    fn out_of_range_parts_are_refused_with_their_field() {
        assert_eq!(
            RetentionPolicy::new(Some(0), None).unwrap_err().field,
            "keepBuilds"
        );
        assert_eq!(
            RetentionPolicy::new(None, Some(0)).unwrap_err().field,
            "keepDays"
        );
        assert!(RetentionPolicy::new(Some(3), Some(30)).is_ok());
    }
}
