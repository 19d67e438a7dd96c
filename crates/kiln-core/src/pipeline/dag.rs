//! The step graph the queue schedules from: a topological order and the ready set.

use std::collections::BTreeSet;

use super::Step;
use crate::ids::StageName;

/// The dependency graph of a pipeline's steps (all of them, or those of one branch).
///
/// Nodes keep the file order; [`Dag::topological_order`] breaks ties by it, so the order is
/// deterministic. Built from a validated [`super::Pipeline`], the graph has no cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dag {
    nodes: Vec<DagNode>,
    order: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct DagNode {
    name: StageName,
    /// Indices into `nodes`, sorted and without duplicates.
    depends_on: Vec<usize>,
}

impl Dag {
    /// Builds the graph of the steps for which `included` holds. A dependency on an excluded
    /// step is replaced by that step's own dependencies, transitively, so `a → b → c` with
    /// `b` excluded becomes `a → c`.
    pub(super) fn new(steps: &[Step], included: impl Fn(&Step) -> bool) -> Dag {
        let index_of = |name: &StageName| steps.iter().position(|step| &step.name == name);
        let keep: Vec<bool> = steps.iter().map(&included).collect();
        // New index of each kept step.
        let mut new_index = vec![usize::MAX; steps.len()];
        let mut nodes = Vec::new();
        for (old, step) in steps.iter().enumerate() {
            if keep[old] {
                new_index[old] = nodes.len();
                nodes.push(DagNode {
                    name: step.name.clone(),
                    depends_on: Vec::new(),
                });
            }
        }
        for (old, step) in steps.iter().enumerate() {
            if !keep[old] {
                continue;
            }
            let mut effective = BTreeSet::new();
            let mut pending: Vec<usize> = step.depends_on.iter().filter_map(index_of).collect();
            let mut visited = BTreeSet::new();
            while let Some(dependency) = pending.pop() {
                if !visited.insert(dependency) {
                    continue;
                }
                if keep[dependency] {
                    effective.insert(new_index[dependency]);
                } else {
                    pending.extend(steps[dependency].depends_on.iter().filter_map(index_of));
                }
            }
            // A step never waits for itself, even in a hand-made cyclic pipeline.
            effective.remove(&new_index[old]);
            nodes[new_index[old]].depends_on = effective.into_iter().collect();
        }
        let order = topological_order(&nodes);
        Dag { nodes, order }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether the graph has a step with this name.
    pub fn contains(&self, step: &str) -> bool {
        self.position(step).is_some()
    }

    /// Step names in file order.
    pub fn names(&self) -> impl Iterator<Item = &StageName> {
        self.nodes.iter().map(|node| &node.name)
    }

    /// Every step after all of its dependencies; among steps free to go at the same time,
    /// file order.
    pub fn topological_order(&self) -> Vec<&StageName> {
        self.order
            .iter()
            .map(|&index| &self.nodes[index].name)
            .collect()
    }

    /// The steps that `step` waits for in this graph (after branch filtering), in file
    /// order; `None` for an unknown step.
    pub fn dependencies(&self, step: &str) -> Option<Vec<&StageName>> {
        let index = self.position(step)?;
        Some(
            self.nodes[index]
                .depends_on
                .iter()
                .map(|&dependency| &self.nodes[dependency].name)
                .collect(),
        )
    }

    /// The steps not in `done` whose dependencies are all in `done`, in file order. The
    /// caller removes the ones it already started; `done` holds only steps that succeeded,
    /// so the dependents of a failed step never become ready.
    pub fn ready(&self, done: &BTreeSet<StageName>) -> Vec<&StageName> {
        self.nodes
            .iter()
            .filter(|node| !done.contains(&node.name))
            .filter(|node| {
                node.depends_on
                    .iter()
                    .all(|&dependency| done.contains(&self.nodes[dependency].name))
            })
            .map(|node| &node.name)
            .collect()
    }

    /// Every step that depends on `step`, directly or not, in file order: what to skip
    /// when `step` failed for good.
    pub fn downstream(&self, step: &str) -> Vec<&StageName> {
        let Some(start) = self.position(step) else {
            return Vec::new();
        };
        let mut reached = vec![false; self.nodes.len()];
        reached[start] = true;
        // Dependents always come later in topological order, so one pass suffices.
        for &index in &self.order {
            if self.nodes[index]
                .depends_on
                .iter()
                .any(|&dependency| reached[dependency])
            {
                reached[index] = true;
            }
        }
        reached[start] = false;
        self.nodes
            .iter()
            .zip(reached)
            .filter(|(_, reached)| *reached)
            .map(|(node, _)| &node.name)
            .collect()
    }

    fn position(&self, step: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|node| node.name.as_str() == step)
    }
}

/// Kahn's algorithm, always taking the earliest step in file order among the free ones.
/// Steps on a cycle (possible only in a hand-built pipeline) are left out.
fn topological_order(nodes: &[DagNode]) -> Vec<usize> {
    let mut waiting_on: Vec<usize> = nodes.iter().map(|node| node.depends_on.len()).collect();
    let mut dependents = vec![Vec::new(); nodes.len()];
    for (index, node) in nodes.iter().enumerate() {
        for &dependency in &node.depends_on {
            dependents[dependency].push(index);
        }
    }
    let mut free: BTreeSet<usize> = (0..nodes.len())
        .filter(|&index| waiting_on[index] == 0)
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(index) = free.pop_first() {
        order.push(index);
        for &dependent in &dependents[index] {
            waiting_on[dependent] -= 1;
            if waiting_on[dependent] == 0 {
                free.insert(dependent);
            }
        }
    }
    order
}
