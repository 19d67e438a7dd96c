//! The agent recommendation in the claim path: which agents wait in a claim on this
//! replica, a snapshot of the known steps' recent history and cached keys (refreshed off
//! the claim path, at most every `REFRESH_EVERY`, sooner after a job passed), and the
//! `ClaimHints` a claim gets from them (`kiln_core::recommend::better_left_to`).
//!
//! A claim never reads the store for this: it reads the snapshot and the waiting set in
//! memory. Holding is bounded three ways: only for an agent waiting here now (so idle
//! and online), only when that agent is clearly sooner, and only for a job queued less
//! than `HOLD_MS` ago (the store checks that inside the claim's statement).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_core::Millis;
use kiln_core::recommend::{self, AgentOutlook, HOLD_MS, JobOutlook};
use kiln_store::{ClaimHints, Store};
use tokio::sync::Notify;

/// The snapshot is read again at most this often (and after a job passed).
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// History older than this is not read.
pub(crate) const HISTORY_DAYS: i64 = 14;
/// A cache key used longer ago than this is taken as evicted.
pub(crate) const CACHE_DAYS: i64 = 7;
/// How many steps the snapshot follows (the most recently queued, claimed or ended).
const STEPS_FOLLOWED: usize = 256;

const DAY_MS: i64 = 24 * 3600 * 1000;

type Step = (i64, String);

/// What the snapshot knows of one step.
#[derive(Default)]
struct StepFacts {
    fleet_median_ms: Option<i64>,
    /// Per agent, the median of its recent runs (one value, so `estimate` reads it
    /// without sorting again on every claim).
    agent_median_ms: HashMap<i64, [i64; 1]>,
    /// The step's most recently used cache key (a queued job's own key is not known
    /// to the claim: lockfiles rarely change between builds), and the agents holding it.
    latest_key: Option<String>,
    warm: HashSet<i64>,
}

struct Snapshot {
    taken: Option<Instant>,
    steps: HashMap<Step, StepFacts>,
}

pub(crate) struct Recommender {
    snapshot: Mutex<Arc<Snapshot>>,
    refreshing: AtomicBool,
    /// A run passed since the snapshot was taken.
    stale: AtomicBool,
    /// Steps followed, most recent last.
    followed: Mutex<VecDeque<Step>>,
    /// Agents waiting in a claim here now, each with its own wake-up.
    waiting: Mutex<HashMap<i64, Arc<Notify>>>,
}

/// Removes an agent from the waiting set when its claim returns.
pub(crate) struct Waiting<'a> {
    recommender: &'a Recommender,
    agent_id: i64,
    pub(crate) notify: Arc<Notify>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiting = self.recommender.waiting.lock().expect("waiting lock");
        if waiting
            .get(&self.agent_id)
            .is_some_and(|notify| Arc::ptr_eq(notify, &self.notify))
        {
            waiting.remove(&self.agent_id);
        }
    }
}

impl Default for Recommender {
    fn default() -> Self {
        Self {
            snapshot: Mutex::new(Arc::new(Snapshot {
                taken: None,
                steps: HashMap::new(),
            })),
            refreshing: AtomicBool::new(false),
            stale: AtomicBool::new(false),
            followed: Mutex::new(VecDeque::new()),
            waiting: Mutex::new(HashMap::new()),
        }
    }
}

impl Recommender {
    /// Marks the agent as waiting for work until the guard drops.
    pub(crate) fn wait(&self, agent_id: i64) -> Waiting<'_> {
        let notify = Arc::new(Notify::new());
        self.waiting
            .lock()
            .expect("waiting lock")
            .insert(agent_id, notify.clone());
        Waiting {
            recommender: self,
            agent_id,
            notify,
        }
    }

    /// Wakes the claims of these agents (a job was left to them).
    pub(crate) fn wake(&self, agent_ids: &[i64]) {
        let waiting = self.waiting.lock().expect("waiting lock");
        for agent_id in agent_ids {
            if let Some(notify) = waiting.get(agent_id) {
                notify.notify_one();
            }
        }
    }

    /// Follows a step (queued, claimed or ended); `changed` marks the snapshot stale
    /// (a run passed: new history, maybe a new cache key).
    pub(crate) fn follow(&self, project_id: i64, step: &str, changed: bool) {
        {
            let mut followed = self.followed.lock().expect("followed lock");
            if let Some(at) = followed
                .iter()
                .position(|(project, name)| *project == project_id && name == step)
            {
                followed.remove(at);
            }
            followed.push_back((project_id, step.to_owned()));
            while followed.len() > STEPS_FOLLOWED {
                followed.pop_front();
            }
        }
        if changed {
            self.stale.store(true, Ordering::Release);
        }
    }

    /// Starts a refresh in the background when the snapshot is stale and none runs.
    pub(crate) fn refresh_if_stale(self: &Arc<Self>, store: Arc<dyn Store>, now: Millis) {
        let stale = self.stale.load(Ordering::Acquire) || {
            let snapshot = self.snapshot.lock().expect("snapshot lock");
            snapshot
                .taken
                .is_none_or(|taken| taken.elapsed() >= REFRESH_EVERY)
        };
        if !stale || self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let recommender = self.clone();
        tokio::spawn(async move {
            if let Err(error) = recommender.refresh(&*store, now).await {
                tracing::warn!(%error, "agent recommendation: history not read; claims go in plain order");
            }
            recommender.refreshing.store(false, Ordering::Release);
        });
    }

    async fn refresh(&self, store: &dyn Store, now: Millis) -> Result<(), kiln_store::StoreError> {
        let steps: Vec<Step> = self
            .followed
            .lock()
            .expect("followed lock")
            .iter()
            .cloned()
            .collect();
        let taken = Instant::now();
        self.stale.store(false, Ordering::Release);
        let runs = store
            .step_runs(
                &steps,
                Millis(now.0 - HISTORY_DAYS * DAY_MS),
                recommend::RUNS_PER_AGENT as i64,
            )
            .await?;
        let caches = store
            .agent_caches(&steps, Millis(now.0 - CACHE_DAYS * DAY_MS))
            .await?;
        let mut by_step: HashMap<Step, HashMap<i64, Vec<i64>>> = HashMap::new();
        for run in runs {
            by_step
                .entry((run.project_id, run.step))
                .or_default()
                .entry(run.agent_id)
                .or_default()
                .push(run.duration_ms);
        }
        let mut facts: HashMap<Step, StepFacts> = HashMap::new();
        for (step, agents) in by_step {
            let all: Vec<i64> = agents.values().flatten().copied().collect();
            facts.insert(
                step,
                StepFacts {
                    fleet_median_ms: recommend::median(&all),
                    agent_median_ms: agents
                        .iter()
                        .filter_map(|(agent, runs)| Some((*agent, [recommend::median(runs)?])))
                        .collect(),
                    ..StepFacts::default()
                },
            );
        }
        // `agent_caches` answers newest first: the first key of a step is its latest.
        for cache in caches {
            let entry = facts.entry((cache.project_id, cache.step)).or_default();
            let latest = entry
                .latest_key
                .get_or_insert_with(|| cache.cache_key.clone());
            if *latest == cache.cache_key {
                entry.warm.insert(cache.agent_id);
            }
        }
        *self.snapshot.lock().expect("snapshot lock") = Arc::new(Snapshot {
            taken: Some(taken),
            steps: facts,
        });
        Ok(())
    }

    /// The hints for `agent_id`'s claim: steps better left to another agent waiting
    /// here (their jobs queued within `HOLD_MS` are passed over), and steps this agent
    /// is the best waiting one for (preferred among equal aged priority). Also the
    /// agents the held steps are left to, to wake when the claim passed them over.
    pub(crate) fn hints(&self, agent_id: i64, now: Millis) -> (ClaimHints, Vec<i64>) {
        let snapshot = self.snapshot.lock().expect("snapshot lock").clone();
        let waiting: Vec<i64> = self
            .waiting
            .lock()
            .expect("waiting lock")
            .keys()
            .copied()
            .filter(|id| *id != agent_id)
            .collect();
        let mut hints = ClaimHints {
            hold_queued_after: Millis(now.0 - HOLD_MS),
            ..ClaimHints::default()
        };
        let mut left_to = Vec::new();
        if waiting.is_empty() {
            return (hints, left_to);
        }
        for (step, facts) in &snapshot.steps {
            let outlook = |id: i64| AgentOutlook {
                agent_id: id,
                name: "",
                running: 0,
                capacity: 1,
                own_runs_ms: facts.agent_median_ms.get(&id).map_or(&[], |m| &m[..]),
                warm_cache: facts.warm.contains(&id),
            };
            // Only agents that ran the step or hold its cache: they proved they may
            // run it (labels), so a job is never held for one that cannot take it.
            let others: Vec<AgentOutlook<'_>> = waiting
                .iter()
                .copied()
                .filter(|id| facts.agent_median_ms.contains_key(id) || facts.warm.contains(id))
                .map(outlook)
                .collect();
            if others.is_empty() {
                continue;
            }
            let job = JobOutlook {
                fleet_median_ms: facts.fleet_median_ms,
                cache_key: facts.latest_key.as_deref(),
            };
            let claiming = outlook(agent_id);
            match recommend::better_left_to(&job, &claiming, &others) {
                Some(other) => {
                    hints.held_steps.push(step.clone());
                    left_to.push(other);
                }
                None => {
                    let mut all = others;
                    all.push(claiming);
                    if recommend::recommend(&job, &all)
                        .is_some_and(|best| best.agent_id == agent_id)
                    {
                        hints.preferred_steps.push(step.clone());
                    }
                }
            }
        }
        left_to.sort_unstable();
        left_to.dedup();
        (hints, left_to)
    }
}
