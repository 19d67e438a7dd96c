//! The checkout of one exact commit into a fresh workspace: a shallow fetch of that
//! commit (with a full fetch of all branches and tags as the fallback when the remote
//! refuses to send a bare sha), a detached checkout, and the check that HEAD is that
//! commit.
//!
//! Git runs with `GIT_TERMINAL_PROMPT=0` (a missing credential fails instead of waiting
//! for a prompt nobody answers), without the system and global git configuration (the
//! agent's own `~/.gitconfig` must not change what a build sees), with the transports
//! limited to `file`, `git`, `http`, `https` and `ssh`, and in its own process group, so
//! a timeout or a cancel kills git together with the `ssh` or `upload-pack` it started.
//! The repository URL is passed on the command line only: it is never written into the
//! workspace's `.git/config`, so a token in it does not outlive the checkout there.
//!
//! Every git command and its output lines go to the job's log as [`Stream::Agent`]
//! chunks, with credentials in URLs masked (`https://user:token@host` → `https://***@host`).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::output::{OutputChunk, OutputSender, Stream};

/// The default time allowed for a whole checkout (init, fetch, checkout).
pub const DEFAULT_CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// How much of a git command's stderr is kept for an error message (its tail).
const STDERR_KEPT_BYTES: usize = 8 * 1024;

/// What was checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutInfo {
    /// The full sha of HEAD, lowercase; equal to the requested commit.
    pub commit: String,
    /// The first line of the commit message.
    pub subject: String,
    /// The whole commit message (`git log -1 --format=%B`), without trailing newlines.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error(
        "'{commit}' is not a full commit sha: the checkout needs all 40 hex digits \
         (resolve a short sha or a branch name to its full sha before queuing the job)"
    )]
    InvalidCommit { commit: String },
    #[error("'{repo}' is not a usable repository address: it must not be empty or start with '-'")]
    InvalidRepository { repo: String },
    #[error(
        "the workspace {} is not empty: a checkout needs a fresh (missing or empty) directory",
        dir.display()
    )]
    WorkspaceNotEmpty { dir: PathBuf },
    #[error("the checkout did not finish within {}s; git was stopped", timeout.as_secs_f64())]
    TimedOut { timeout: Duration },
    #[error("the checkout was cancelled; git was stopped")]
    Cancelled,
    /// Git failed; `message` carries git's own words (stderr), credentials masked.
    #[error("{message}")]
    Failed { message: String },
}

/// Fetches `commit` from `repo` into `dir` and checks it out (detached HEAD).
///
/// `repo` is anything `git fetch` accepts: an https URL (a token in it is masked in the
/// log), an ssh address, a `file://` URL or a local path. `commit` must be a full
/// 40-hex sha. `dir` must be missing or empty. The whole operation is bounded by
/// `timeout` ([`DEFAULT_CHECKOUT_TIMEOUT`] is the usual value) and ends early with
/// [`CheckoutError::Cancelled`] when `cancel` turns `true` (a dropped sender means no
/// cancel).
pub async fn checkout(
    repo: &str,
    credentials: Option<&kiln_protocol::RepoCredentials>,
    commit: &str,
    dir: &Path,
    timeout: Duration,
    log: &OutputSender,
    mut cancel: watch::Receiver<bool>,
) -> Result<CheckoutInfo, CheckoutError> {
    let commit = parse_full_sha(commit)?;
    if repo.trim().is_empty() || repo.starts_with('-') {
        return Err(CheckoutError::InvalidRepository {
            repo: mask_credentials(repo),
        });
    }
    ensure_fresh_dir(dir)?;
    let mut git = Git {
        deadline: Instant::now() + timeout,
        timeout,
        cancel: &mut cancel,
        log,
        credentials,
    };
    let masked_repo = mask_credentials(repo);

    let dir_arg = dir.as_os_str().to_string_lossy().into_owned();
    git.run_checked(
        None,
        &["-c", "init.defaultBranch=main", "init", "-q", &dir_arg],
        Echo::Lines,
        "could not create the git repository in the workspace",
    )
    .await?;

    let shallow_fetch = git
        .run(
            Some(dir),
            &[
                "-c",
                "protocol.version=2",
                "fetch",
                "--depth=1",
                "--no-tags",
                "--",
                repo,
                &commit,
            ],
            Echo::Lines,
        )
        .await?;
    if !shallow_fetch.status.success() && !refused_the_sha(&shallow_fetch.stderr) {
        return Err(CheckoutError::Failed {
            message: format!(
                "could not fetch commit {commit} from {masked_repo} (check the repository \
                 address and the agent's access to it): {}",
                shallow_fetch.stderr_summary()
            ),
        });
    }
    if !shallow_fetch.status.success() {
        // Servers without protocol v2 (or with it disabled) refuse a sha that is not
        // a ref tip unless they set `uploadpack.allowAnySHA1InWant`. Everything that
        // is on a branch or a tag can still be fetched by its refs.
        git.log_line(format!(
            "the remote did not send commit {commit} on its own; fetching all branches and tags instead"
        ))
        .await;
        let full_fetch = git
            .run(
                Some(dir),
                &[
                    "fetch",
                    "--no-tags",
                    "--",
                    repo,
                    "+refs/heads/*:refs/remotes/origin/*",
                    "+refs/tags/*:refs/tags/*",
                ],
                Echo::Lines,
            )
            .await?;
        if !full_fetch.status.success() {
            return Err(CheckoutError::Failed {
                message: format!(
                    "could not fetch commit {commit} from {masked_repo} (check the repository \
                     address and the agent's access to it): {}",
                    full_fetch.stderr_summary()
                ),
            });
        }
        let commit_object = format!("{commit}^{{commit}}");
        let present = git
            .run(Some(dir), &["cat-file", "-e", &commit_object], Echo::Quiet)
            .await?;
        if !present.status.success() {
            return Err(CheckoutError::Failed {
                message: format!(
                    "commit {commit} is not in {masked_repo}: fetching it directly failed ({}), \
                     and no branch or tag contains it. Check that it was pushed and not \
                     force-pushed away.",
                    shallow_fetch.stderr_summary()
                ),
            });
        }
    }

    git.run_checked(
        Some(dir),
        &[
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "-q",
            "--detach",
            &commit,
        ],
        Echo::Lines,
        "could not check out the fetched commit",
    )
    .await?;

    let head = git
        .run_checked(
            Some(dir),
            &["rev-parse", "--verify", "HEAD"],
            Echo::Quiet,
            "could not read HEAD after the checkout",
        )
        .await?;
    let head = head.stdout_text().trim().to_ascii_lowercase();
    if head != commit {
        return Err(CheckoutError::Failed {
            message: format!(
                "after the checkout HEAD is {head}, not the requested commit {commit}"
            ),
        });
    }

    let log_output = git
        .run_checked(
            Some(dir),
            &["log", "-1", "--format=%B", "HEAD"],
            Echo::Quiet,
            "could not read the commit message",
        )
        .await?;
    let message = log_output.stdout_text().trim_end().to_owned();
    let subject = message.lines().next().unwrap_or_default().to_owned();
    git.log_line(format!("checked out {commit}: {subject}"))
        .await;
    Ok(CheckoutInfo {
        commit,
        subject,
        message,
    })
}

/// Replaces the user information of every URL in `text` with `***`:
/// `https://user:token@host/x` → `https://***@host/x`. Used on everything the checkout
/// logs or returns.
pub fn mask_credentials(text: &str) -> String {
    let mut masked = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_end) = rest.find("://") {
        let authority_start = scheme_end + 3;
        masked.push_str(&rest[..authority_start]);
        rest = &rest[authority_start..];
        let authority_end = rest
            .find(|c: char| c == '/' || c == '\'' || c == '"' || c.is_whitespace())
            .unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => {
                masked.push_str("***");
                masked.push_str(&rest[at..authority_end]);
            }
            None => masked.push_str(&rest[..authority_end]),
        }
        rest = &rest[authority_end..];
    }
    masked.push_str(rest);
    masked
}

/// Whether a failed fetch of a bare sha failed because the server would not send that
/// object by itself (as opposed to an unreachable or missing repository).
fn refused_the_sha(stderr: &str) -> bool {
    [
        "not our ref",
        "unadvertised object",
        "couldn't find remote ref",
        "does not allow request",
    ]
    .iter()
    .any(|pattern| stderr.contains(pattern))
}

fn parse_full_sha(commit: &str) -> Result<String, CheckoutError> {
    let trimmed = commit.trim();
    if trimmed.len() == 40 && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(trimmed.to_ascii_lowercase())
    } else {
        Err(CheckoutError::InvalidCommit {
            commit: commit.to_owned(),
        })
    }
}

fn ensure_fresh_dir(dir: &Path) -> Result<(), CheckoutError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                Err(CheckoutError::WorkspaceNotEmpty {
                    dir: dir.to_owned(),
                })
            } else {
                Ok(())
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(CheckoutError::Failed {
            message: format!("could not read the workspace {}: {error}", dir.display()),
        }),
    }
}

/// Whether a command's output lines go to the job's log.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Echo {
    Lines,
    Quiet,
}

struct GitOutput {
    status: ExitStatus,
    stdout: Vec<u8>,
    /// The tail of stderr, credentials masked.
    stderr: String,
}

impl GitOutput {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn stderr_summary(&self) -> String {
        let text = self.stderr.trim();
        if text.is_empty() {
            format!("git exited with {} and wrote nothing", self.status)
        } else {
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(" / ")
        }
    }
}

/// Runs git commands under one deadline and one cancel signal.
struct Git<'a> {
    deadline: Instant,
    timeout: Duration,
    cancel: &'a mut watch::Receiver<bool>,
    log: &'a OutputSender,
    credentials: Option<&'a kiln_protocol::RepoCredentials>,
}

enum Finish {
    Exited(std::io::Result<ExitStatus>, Vec<u8>, String),
    TimedOut,
    Cancelled,
}

impl Git<'_> {
    async fn log_line(&self, line: String) {
        // A closed log channel must not fail the checkout: the job still runs.
        let _ = self.log.send(OutputChunk::agent(line)).await;
    }

    /// Runs git and fails with `what` and git's stderr when it exits non-zero.
    async fn run_checked(
        &mut self,
        cwd: Option<&Path>,
        args: &[&str],
        echo: Echo,
        what: &str,
    ) -> Result<GitOutput, CheckoutError> {
        let output = self.run(cwd, args, echo).await?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(CheckoutError::Failed {
                message: format!("{what}: {}", output.stderr_summary()),
            })
        }
    }

    /// Runs git; a non-zero exit is returned as output, only timeout, cancel and a
    /// failure to start git are errors.
    async fn run(
        &mut self,
        cwd: Option<&Path>,
        args: &[&str],
        echo: Echo,
    ) -> Result<GitOutput, CheckoutError> {
        if *self.cancel.borrow() {
            return Err(CheckoutError::Cancelled);
        }
        if echo == Echo::Lines {
            self.log_line(format!("$ git {}", mask_credentials(&args.join(" "))))
                .await;
        }
        let mut command = Command::new("git");
        if let Some(cwd) = cwd {
            command.arg("-C").arg(cwd);
        }
        // Credentials reach git through its environment and a credential helper, never
        // its command line (which `ps` shows to every user of the machine).
        if let Some(credentials) = self.credentials {
            for setting in kiln_core::net::GIT_CREDENTIAL_SETTINGS {
                command.arg("-c").arg(setting);
            }
            command
                .env("KILN_GIT_USERNAME", &credentials.username)
                .env("KILN_GIT_PASSWORD", &credentials.password);
        }
        command
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_ALLOW_PROTOCOL", "file:git:http:https:ssh")
            .env("LC_ALL", "C")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .env_remove("GIT_OBJECT_DIRECTORY")
            .env_remove("GIT_ALTERNATE_OBJECT_DIRECTORIES")
            .env_remove("GIT_CONFIG_PARAMETERS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if std::env::var_os("GIT_SSH_COMMAND").is_none() && std::env::var_os("GIT_SSH").is_none() {
            // Never wait for a host-key or passphrase prompt.
            command.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
        }
        let mut child = command.spawn().map_err(|error| CheckoutError::Failed {
            message: format!("could not start git (is git installed on the agent?): {error}"),
        })?;
        let process_group = child.id().and_then(|id| i32::try_from(id).ok());
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let log = self.log;
        let finish = {
            let collect = async {
                let (stdout_bytes, stderr_text) = tokio::join!(
                    pump_stdout(stdout, echo, log),
                    pump_stderr(stderr, echo, log)
                );
                (child.wait().await, stdout_bytes, stderr_text)
            };
            tokio::select! {
                (status, stdout_bytes, stderr_text) = collect => {
                    Finish::Exited(status, stdout_bytes, stderr_text)
                }
                () = tokio::time::sleep_until(self.deadline) => Finish::TimedOut,
                () = cancelled(self.cancel) => Finish::Cancelled,
            }
        };
        match finish {
            Finish::Exited(status, stdout, stderr) => {
                let status = status.map_err(|error| CheckoutError::Failed {
                    message: format!("could not wait for git: {error}"),
                })?;
                Ok(GitOutput {
                    status,
                    stdout,
                    stderr,
                })
            }
            Finish::TimedOut | Finish::Cancelled => {
                if let Some(process_group) = process_group {
                    // The group may already be gone; there is nothing else to do then.
                    let _ = killpg(Pid::from_raw(process_group), Signal::SIGKILL);
                }
                let _ = child.kill().await;
                if matches!(finish, Finish::TimedOut) {
                    self.log_line(format!(
                        "the checkout took longer than {}s; git was stopped",
                        self.timeout.as_secs_f64()
                    ))
                    .await;
                    Err(CheckoutError::TimedOut {
                        timeout: self.timeout,
                    })
                } else {
                    self.log_line("the checkout was cancelled; git was stopped".to_owned())
                        .await;
                    Err(CheckoutError::Cancelled)
                }
            }
        }
    }
}

/// Resolves when the value turns `true`; never when the sender is dropped first.
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|is_cancelled| *is_cancelled).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn pump_stdout(
    pipe: Option<impl AsyncRead + Unpin>,
    echo: Echo,
    log: &OutputSender,
) -> Vec<u8> {
    let mut all = Vec::new();
    for_each_line(
        pipe,
        |line| {
            all.extend_from_slice(line);
            (echo == Echo::Lines).then(|| masked_line(line))
        },
        log,
    )
    .await;
    all
}

async fn pump_stderr(
    pipe: Option<impl AsyncRead + Unpin>,
    echo: Echo,
    log: &OutputSender,
) -> String {
    let mut tail = String::new();
    for_each_line(
        pipe,
        |line| {
            let masked = masked_line(line);
            tail.push_str(&masked);
            tail.push('\n');
            if tail.len() > STDERR_KEPT_BYTES {
                let mut cut = tail.len() - STDERR_KEPT_BYTES;
                while !tail.is_char_boundary(cut) {
                    cut += 1;
                }
                tail.drain(..cut);
            }
            (echo == Echo::Lines).then_some(masked)
        },
        log,
    )
    .await;
    tail
}

fn masked_line(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    mask_credentials(text.trim_end_matches(['\n', '\r']))
}

/// Reads `pipe` line by line; `on_line` returns what to log for the line, if anything.
async fn for_each_line(
    pipe: Option<impl AsyncRead + Unpin>,
    mut on_line: impl FnMut(&[u8]) -> Option<String>,
    log: &OutputSender,
) {
    let Some(pipe) = pipe else { return };
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if let Some(text) = on_line(&line) {
                    let _ = log.send(OutputChunk::new(Stream::Agent, text + "\n")).await;
                }
            }
        }
    }
}
