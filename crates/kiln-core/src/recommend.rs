//! Which agent is expected to finish a queued job soonest: its wait for a free slot
//! (the agent's load) plus the step's expected duration on it (its own recent runs of
//! the step, else the fleet's), shortened when the agent holds the job's cache warm;
//! with the reason in words. The scheduler breaks ties with it and the queue view
//! shows it. Pure arithmetic: the server feeds it stored durations and loads.

/// A step with no successful run anywhere is assumed to take this long.
pub const DEFAULT_STEP_MS: i64 = 60_000;
/// A warm cache (the agent saved the job's cache key recently) is expected to make the
/// run take this share of the estimate: installs are skipped, builds are incremental.
pub const WARM_CACHE_FACTOR: f64 = 0.8;
/// One agent is "clearly" sooner than another only by at least this much…
pub const CLEAR_MARGIN_MS: i64 = 1_000;
/// …and by at least this ratio (the other's estimate ≥ 1.25 × the sooner one's).
pub const CLEAR_RATIO: f64 = 1.25;
/// At most this many of an agent's newest runs of a step form its median.
pub const RUNS_PER_AGENT: usize = 20;

/// What is known of one eligible, connected agent for one job.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentOutlook<'a> {
    pub agent_id: i64,
    pub name: &'a str,
    /// Jobs it runs now, and how many it may run at once.
    pub running: i64,
    pub capacity: i64,
    /// Its recent successful runs of the job's step, in milliseconds (any order).
    pub own_runs_ms: &'a [i64],
    /// It saved the job's cache key recently.
    pub warm_cache: bool,
}

/// What is known of the job, whatever the agent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JobOutlook<'a> {
    /// The median of the step's recent successful runs on any agent.
    pub fleet_median_ms: Option<i64>,
    /// The job's cache key, when its step has a cache.
    pub cache_key: Option<&'a str>,
}

/// Where an agent's expected duration comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    /// The median of its own runs (how many).
    Own { runs: usize },
    /// The fleet's median: the agent never ran the step successfully.
    Fleet,
    /// Nothing ran the step yet: [`DEFAULT_STEP_MS`].
    Assumed,
}

/// One agent's expected finish for one job.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub agent_id: i64,
    /// Until a slot is free (0 when one is).
    pub wait_ms: i64,
    /// The step's expected duration on it, the warm cache counted.
    pub run_ms: i64,
    pub basis: Basis,
    /// The median before the warm-cache adjustment.
    pub median_ms: i64,
    pub warm: bool,
}

impl Estimate {
    pub fn finish_ms(&self) -> i64 {
        self.wait_ms.saturating_add(self.run_ms)
    }
}

/// The agent expected to finish the job soonest, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Recommendation {
    pub agent_id: i64,
    pub expected_finish_ms: i64,
    /// E.g. "agent-b: expected to finish in 42 s: 42 s median of 5 runs of this step
    /// on it, idle, warm cache for key 3f2a9c1b0d4e…".
    pub reason: String,
}

/// The median of `values` (mean of the two middle ones, rounded down, for an even
/// count); `None` when
/// empty.
pub fn median(values: &[i64]) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let middle = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        ((i128::from(sorted[middle - 1]) + i128::from(sorted[middle])) / 2) as i64
    })
}

/// One agent's expected finish: wait for a slot + the step's duration on it.
///
/// A free slot means no wait. A full agent is expected to free its first slot after
/// half a typical run of the step per job beyond its capacity, spread over its slots
/// (its running jobs are on average half done).
pub fn estimate(job: &JobOutlook<'_>, agent: &AgentOutlook<'_>) -> Estimate {
    let own = median(&agent.own_runs_ms[..agent.own_runs_ms.len().min(RUNS_PER_AGENT)]);
    let (median_ms, basis) = match (own, job.fleet_median_ms) {
        (Some(own), _) => (
            own,
            Basis::Own {
                runs: agent.own_runs_ms.len().min(RUNS_PER_AGENT),
            },
        ),
        (None, Some(fleet)) => (fleet, Basis::Fleet),
        (None, None) => (DEFAULT_STEP_MS, Basis::Assumed),
    };
    let median_ms = median_ms.max(0);
    let warm = job.cache_key.is_some() && agent.warm_cache;
    let run_ms = if warm {
        (median_ms as f64 * WARM_CACHE_FACTOR).round() as i64
    } else {
        median_ms
    };
    let capacity = agent.capacity.max(1);
    let wait_ms = if agent.running < capacity {
        0
    } else {
        let typical = job.fleet_median_ms.unwrap_or(median_ms).max(0);
        (agent.running - capacity + 1).saturating_mul(typical) / (2 * capacity)
    };
    Estimate {
        agent_id: agent.agent_id,
        wait_ms,
        run_ms,
        basis,
        median_ms,
        warm,
    }
}

/// Whether `sooner_ms` is clearly sooner than `other_ms`: by [`CLEAR_MARGIN_MS`] and by
/// [`CLEAR_RATIO`]. The scheduler holds a job back from an agent only then, so noise in
/// the history never moves work.
pub fn clearly_sooner(sooner_ms: i64, other_ms: i64) -> bool {
    other_ms.saturating_sub(sooner_ms) >= CLEAR_MARGIN_MS
        && other_ms as f64 >= sooner_ms as f64 * CLEAR_RATIO
}

/// The agent expected to finish the job soonest among `agents` (the connected agents
/// whose labels the job's are among); `None` when there is none. Equal estimates go to
/// the warm cache, then the lighter load, then the agent named first.
pub fn recommend(job: &JobOutlook<'_>, agents: &[AgentOutlook<'_>]) -> Option<Recommendation> {
    let (agent, estimate) = agents
        .iter()
        .map(|agent| (agent, estimate(job, agent)))
        .min_by(|(a, ea), (b, eb)| {
            ea.finish_ms()
                .cmp(&eb.finish_ms())
                .then(eb.warm.cmp(&ea.warm))
                .then((a.running * b.capacity.max(1)).cmp(&(b.running * a.capacity.max(1))))
                .then(a.name.cmp(b.name))
        })?;
    Some(Recommendation {
        agent_id: agent.agent_id,
        expected_finish_ms: estimate.finish_ms(),
        reason: reason(job, agent, &estimate),
    })
}

/// A job is held back from an agent for another (see [`better_left_to`]) only while it
/// has been queued less than this: past it, any eligible agent takes it, so holding
/// never starves a job.
pub const HOLD_MS: i64 = 3_000;

/// For `claiming`, an agent about to claim: the agent among `waiting` (others waiting
/// for work with a free slot, so able to start at once) that is expected to finish the
/// job clearly sooner (see [`clearly_sooner`]), to which the job is better left; `None`
/// when `claiming` should take it. A busy or offline agent is never among `waiting`, so
/// a job is never held back for one.
pub fn better_left_to(
    job: &JobOutlook<'_>,
    claiming: &AgentOutlook<'_>,
    waiting: &[AgentOutlook<'_>],
) -> Option<i64> {
    let own = estimate(job, claiming).finish_ms();
    let best = recommend(job, waiting)?;
    (best.agent_id != claiming.agent_id && clearly_sooner(best.expected_finish_ms, own))
        .then_some(best.agent_id)
}

/// "agent-b: expected to finish in 42 s: 42 s median of 5 runs of this step on it,
/// idle, warm cache for key 3f2a9c1b0d4e…".
fn reason(job: &JobOutlook<'_>, agent: &AgentOutlook<'_>, estimate: &Estimate) -> String {
    let basis = match estimate.basis {
        Basis::Own { runs } => format!(
            "{} median of {runs} run{} of this step on it",
            duration(estimate.median_ms),
            if runs == 1 { "" } else { "s" }
        ),
        Basis::Fleet => format!(
            "no run of this step on it, {} median on the fleet",
            duration(estimate.median_ms)
        ),
        Basis::Assumed => format!(
            "no run of this step yet, {} assumed",
            duration(estimate.median_ms)
        ),
    };
    let load = if agent.running == 0 {
        "idle".to_owned()
    } else if estimate.wait_ms == 0 {
        format!("{} of {} slots busy", agent.running, agent.capacity.max(1))
    } else {
        format!(
            "busy ({} of {} slots), a slot expected in {}",
            agent.running,
            agent.capacity.max(1),
            duration(estimate.wait_ms)
        )
    };
    let cache = match job.cache_key {
        Some(key) if estimate.warm => format!(", warm cache for key {}…", short_key(key)),
        Some(key) => format!(", cold cache for key {}…", short_key(key)),
        None => String::new(),
    };
    format!(
        "{}: expected to finish in {}: {basis}, {load}{cache}",
        agent.name,
        duration(estimate.finish_ms())
    )
}

fn short_key(key: &str) -> &str {
    key.get(..12).unwrap_or(key)
}

/// "850 ms", "4.2 s", "42 s", "3 min 5 s".
fn duration(ms: i64) -> String {
    match ms {
        ..1_000 => format!("{ms} ms"),
        1_000..10_000 => format!("{:.1} s", ms as f64 / 1000.0),
        10_000..120_000 => format!("{} s", (ms + 500) / 1000),
        _ => {
            let seconds = (ms + 500) / 1000;
            format!("{} min {} s", seconds / 60, seconds % 60)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent<'a>(id: i64, name: &'a str, runs: &'a [i64]) -> AgentOutlook<'a> {
        AgentOutlook {
            agent_id: id,
            name,
            running: 0,
            capacity: 1,
            own_runs_ms: runs,
            warm_cache: false,
        }
    }

    const NO_CACHE: JobOutlook<'static> = JobOutlook {
        fleet_median_ms: Some(30_000),
        cache_key: None,
    };

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[5]), Some(5));
        assert_eq!(median(&[9, 1, 5]), Some(5));
        assert_eq!(median(&[1, 2, 4, 10]), Some(3));
        assert_eq!(median(&[3, 4]), Some(3));
    }

    #[test]
    fn the_agent_with_the_shorter_own_history_wins() {
        let agents = [
            agent(1, "slow", &[40_000, 41_000, 39_000]),
            agent(2, "fast", &[12_000, 11_000, 13_000]),
        ];
        let best = recommend(&NO_CACHE, &agents).unwrap();
        assert_eq!(best.agent_id, 2);
        assert_eq!(best.expected_finish_ms, 12_000);
        assert_eq!(
            best.reason,
            "fast: expected to finish in 12 s: 12 s median of 3 runs of this step on it, idle"
        );
    }

    #[test]
    fn an_agent_without_history_is_estimated_by_the_fleet_median() {
        let agents = [agent(1, "new", &[]), agent(2, "known", &[45_000])];
        let best = recommend(&NO_CACHE, &agents).unwrap();
        assert_eq!(best.agent_id, 1);
        assert!(
            best.reason
                .contains("no run of this step on it, 30 s median on the fleet"),
            "{}",
            best.reason
        );
        let nothing = JobOutlook {
            fleet_median_ms: None,
            cache_key: None,
        };
        let best = recommend(&nothing, &[agent(7, "only", &[])]).unwrap();
        assert_eq!(best.expected_finish_ms, DEFAULT_STEP_MS);
        assert!(
            best.reason
                .contains("no run of this step yet, 60 s assumed")
        );
    }

    #[test]
    fn a_warm_cache_shortens_the_estimate_and_is_named() {
        let job = JobOutlook {
            fleet_median_ms: Some(30_000),
            cache_key: Some("3f2a9c1b0d4e5f60718293a4b5c6d7e8"),
        };
        let cold = agent(1, "cold", &[20_000]);
        let warm = AgentOutlook {
            warm_cache: true,
            ..agent(2, "warm", &[22_000])
        };
        // 22 s × 0.8 = 17.6 s beats 20 s.
        let best = recommend(&job, &[cold.clone(), warm.clone()]).unwrap();
        assert_eq!(best.agent_id, 2);
        assert_eq!(best.expected_finish_ms, 17_600);
        assert!(
            best.reason
                .ends_with("idle, warm cache for key 3f2a9c1b0d4e…"),
            "{}",
            best.reason
        );
        // Without a cache on the job, warmth means nothing.
        let best = recommend(&NO_CACHE, &[cold, warm]).unwrap();
        assert_eq!(best.agent_id, 1);
    }

    #[test]
    fn a_full_agent_waits_for_a_slot() {
        let busy = AgentOutlook {
            running: 1,
            ..agent(1, "busy-fast", &[5_000])
        };
        let idle = agent(2, "idle-slow", &[12_000]);
        // The busy one waits half a typical (fleet) run: 15 s + 5 s > 12 s.
        let estimate_busy = estimate(&NO_CACHE, &busy);
        assert_eq!(estimate_busy.wait_ms, 15_000);
        let best = recommend(&NO_CACHE, &[busy.clone(), idle]).unwrap();
        assert_eq!(best.agent_id, 2);
        // With a free slot left, a busy agent does not wait.
        let roomy = AgentOutlook {
            capacity: 2,
            ..busy
        };
        assert_eq!(estimate(&NO_CACHE, &roomy).wait_ms, 0);
        let best = recommend(&NO_CACHE, &[roomy, agent(2, "idle-slow", &[12_000])]).unwrap();
        assert_eq!(best.agent_id, 1);
        assert!(best.reason.contains("1 of 2 slots busy"), "{}", best.reason);
    }

    #[test]
    fn ties_go_to_the_warm_then_lighter_then_first_named_agent() {
        let job = JobOutlook {
            fleet_median_ms: Some(10_000),
            cache_key: None,
        };
        let a = agent(1, "b-agent", &[10_000]);
        let b = agent(2, "a-agent", &[10_000]);
        assert_eq!(
            recommend(&job, &[a.clone(), b.clone()]).unwrap().agent_id,
            2
        );
        let lighter = AgentOutlook {
            capacity: 4,
            running: 1,
            ..b.clone()
        };
        let heavier = AgentOutlook {
            capacity: 4,
            running: 2,
            ..a.clone()
        };
        assert_eq!(recommend(&job, &[heavier, lighter]).unwrap().agent_id, 2);
        assert_eq!(recommend(&job, &[]), None);
    }

    #[test]
    fn only_a_clear_difference_counts() {
        assert!(clearly_sooner(1_000, 30_000));
        assert!(!clearly_sooner(10_000, 11_000)); // 1 s but only 10%
        assert!(!clearly_sooner(100, 900)); // 9× but under a second
        assert!(clearly_sooner(4_000, 5_000));
        assert!(!clearly_sooner(5_000, 4_000));
    }

    #[test]
    fn only_the_newest_runs_count() {
        let mut runs = vec![1_000; RUNS_PER_AGENT];
        runs.extend([90_000; 30]);
        let e = estimate(&NO_CACHE, &agent(1, "a", &runs));
        assert_eq!(e.median_ms, 1_000);
        assert_eq!(
            e.basis,
            Basis::Own {
                runs: RUNS_PER_AGENT
            }
        );
    }

    #[test]
    fn a_job_is_left_only_to_a_clearly_sooner_waiting_agent() {
        let slow = agent(1, "slow", &[30_000]);
        let fast = agent(2, "fast", &[2_000]);
        let similar = agent(3, "similar", &[27_000]);
        assert_eq!(
            better_left_to(&NO_CACHE, &slow, std::slice::from_ref(&fast)),
            Some(2)
        );
        // Not clearly sooner: 27 s against 30 s.
        assert_eq!(better_left_to(&NO_CACHE, &slow, &[similar]), None);
        // The fast one claiming takes it itself.
        assert_eq!(
            better_left_to(&NO_CACHE, &fast, std::slice::from_ref(&slow)),
            None
        );
        // Nobody else waiting (the fast one busy or offline): the slow one takes it.
        assert_eq!(better_left_to(&NO_CACHE, &slow, &[]), None);
        // A new agent is judged by the fleet median (30 s): not clearly slower than 27 s.
        let new = agent(4, "new", &[]);
        assert_eq!(
            better_left_to(&NO_CACHE, &new, &[agent(3, "similar", &[27_000])]),
            None
        );
        assert_eq!(better_left_to(&NO_CACHE, &new, &[fast]), Some(2));
    }

    #[test]
    fn a_warm_cache_alone_moves_a_long_step() {
        let job = JobOutlook {
            fleet_median_ms: Some(60_000),
            cache_key: Some("abc"),
        };
        let cold = agent(1, "cold", &[60_000]);
        let warm = AgentOutlook {
            warm_cache: true,
            ..agent(2, "warm", &[60_000])
        };
        assert_eq!(
            better_left_to(&job, &cold, std::slice::from_ref(&warm)),
            Some(2)
        );
        // A short step: 0.8 × 3 s is not a second sooner.
        let short = JobOutlook {
            fleet_median_ms: Some(3_000),
            cache_key: Some("abc"),
        };
        let cold = agent(1, "cold", &[3_000]);
        let warm = AgentOutlook {
            warm_cache: true,
            ..agent(2, "warm", &[3_000])
        };
        assert_eq!(better_left_to(&short, &cold, &[warm]), None);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(4_200), "4.2 s");
        assert_eq!(duration(42_000), "42 s");
        assert_eq!(duration(185_000), "3 min 5 s");
    }
}
