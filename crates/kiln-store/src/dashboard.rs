//! Records for the dashboard's reads: what identifies a pipeline for duration estimates.

use crate::BuildRecord;

/// The builds whose durations predict each other: the same project, branch and
/// command. Kiln-run builds have no command, so theirs is the project and branch (the
/// pipeline file of that branch); builds reported by `kiln run` or other emitters carry
/// the command they ran (`npm run build`, a CI job), which tells their pipelines apart
/// within one branch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    pub project_id: i64,
    pub branch: Option<String>,
    pub command: Option<String>,
}

impl PipelineKey {
    pub fn of(build: &BuildRecord) -> PipelineKey {
        PipelineKey {
            project_id: build.project_id,
            branch: build.state.branch.clone(),
            command: build.state.command.clone(),
        }
    }
}

/// How far a Kiln-run build's jobs got: how many passed of how many it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobTally {
    pub build_id: i64,
    pub passed: i64,
    pub total: i64,
}
