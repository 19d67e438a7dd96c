//! `ExecError`: why a step could not be run or followed to its end (not a failing
//! step: that is a `StepOutcome`). Each message says what to do next.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("step {step}: {problem}; fix the step definition")]
    InvalidStep { step: String, problem: String },

    #[error("workspace {}: {problem}; the checkout must create it before the step runs", path.display())]
    Workspace { path: PathBuf, problem: String },

    #[error(
        "bubblewrap (bwrap) is not installed or not on the agent's PATH: install bubblewrap (apt-get install bubblewrap) or use --executor process"
    )]
    SandboxUnavailable,

    #[error(
        "step {step}: the container executor needs an image; set the step's image or use --executor process"
    )]
    ImageRequired { step: String },

    #[error(
        "image {image} not found by the container engine: pull it first (docker pull {image} / podman pull {image}) or fix the step's image"
    )]
    ImageNotFound { image: String },

    #[error(
        "cannot reach the container engine at {}: {source}; start Docker (or Podman's Docker API: podman system service --time=0 unix://{}) or configure the right socket",
        socket.display(), socket.display()
    )]
    EngineUnreachable {
        socket: PathBuf,
        source: std::io::Error,
    },

    #[error("the container engine failed to {action}: {message}{}", status.map(|status| format!(" (HTTP {status})")).unwrap_or_default())]
    Engine {
        action: String,
        status: Option<u16>,
        message: String,
    },

    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },

    #[error("lost track of the step's process: {source}")]
    Wait { source: std::io::Error },

    #[error(
        "the step did not end within {seconds} s of SIGKILL; check the agent host (processes stuck in the kernel?)"
    )]
    Unkillable { seconds: u64 },
}
