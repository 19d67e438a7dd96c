//! Checkout against real git repositories made in temp dirs: local paths, `file://`
//! URLs, older commits, refusals, credential masking, timeout and cancel.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_agent::checkout::{CheckoutError, CheckoutInfo, checkout, mask_credentials};
use kiln_agent::output::{OutputChunk, Stream};
use tokio::sync::{mpsc, watch};

const TIMEOUT: Duration = Duration::from_secs(60);

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A repository with two commits on `main`; returns (first sha, second sha).
fn make_repo(dir: &Path) -> (String, String) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("version.txt"), "one\n").unwrap();
    git(dir, &["add", "version.txt"]);
    git(dir, &["commit", "-q", "-m", "First commit\n\nWith a body."]);
    let first = git(dir, &["rev-parse", "HEAD"]);
    std::fs::write(dir.join("version.txt"), "two\n").unwrap();
    git(dir, &["commit", "-q", "-a", "-m", "Second commit"]);
    let second = git(dir, &["rev-parse", "HEAD"]);
    (first, second)
}

struct Run {
    result: Result<CheckoutInfo, CheckoutError>,
    log: String,
    elapsed: Duration,
}

async fn run_checkout(
    repo: &str,
    commit: &str,
    dir: &Path,
    timeout: Duration,
    cancel: watch::Receiver<bool>,
) -> Run {
    let (log_sender, mut log_receiver) = mpsc::channel::<OutputChunk>(4096);
    let started = Instant::now();
    let result = checkout(repo, None, commit, dir, timeout, &log_sender, cancel).await;
    let elapsed = started.elapsed();
    drop(log_sender);
    let mut log = String::new();
    while let Some(chunk) = log_receiver.recv().await {
        assert_eq!(chunk.stream, Stream::Agent);
        log.push_str(&String::from_utf8_lossy(&chunk.bytes));
    }
    Run {
        result,
        log,
        elapsed,
    }
}

fn no_cancel() -> watch::Receiver<bool> {
    watch::channel(false).1
}

fn failure_message(run: &Run) -> String {
    match &run.result {
        Err(CheckoutError::Failed { message }) => message.clone(),
        other => panic!("expected Failed, got {other:?}\nlog:\n{}", run.log),
    }
}

#[tokio::test]
async fn local_path_checks_out_an_older_commit_exactly() {
    let temp = tempfile::tempdir().unwrap();
    let repo = temp.path().join("repo");
    let (first, _second) = make_repo(&repo);
    let workspace = temp.path().join("workspace");

    let run = run_checkout(
        repo.to_str().unwrap(),
        &first,
        &workspace,
        TIMEOUT,
        no_cancel(),
    )
    .await;

    let info = run.result.unwrap();
    assert_eq!(info.commit, first);
    assert_eq!(info.subject, "First commit");
    assert_eq!(info.message, "First commit\n\nWith a body.");
    assert_eq!(
        std::fs::read_to_string(workspace.join("version.txt")).unwrap(),
        "one\n"
    );
    assert_eq!(git(&workspace, &["rev-parse", "HEAD"]), first);
    assert!(run.log.contains("$ git "), "{}", run.log);
    assert!(run.log.contains("fetch --depth=1"), "{}", run.log);
}

#[tokio::test]
async fn file_url_checks_out_the_tip_shallowly() {
    let temp = tempfile::tempdir().unwrap();
    let repo = temp.path().join("repo");
    let (_first, second) = make_repo(&repo);
    let workspace = temp.path().join("workspace");
    std::fs::create_dir(&workspace).unwrap();

    let url = format!("file://{}", repo.display());
    let run = run_checkout(
        &url,
        &second.to_uppercase(),
        &workspace,
        TIMEOUT,
        no_cancel(),
    )
    .await;

    let info = run.result.unwrap();
    assert_eq!(info.commit, second);
    assert_eq!(info.subject, "Second commit");
    assert_eq!(
        std::fs::read_to_string(workspace.join("version.txt")).unwrap(),
        "two\n"
    );
    assert_eq!(git(&workspace, &["rev-list", "--count", "HEAD"]), "1");
    // The URL is not stored in the workspace's configuration.
    let config = std::fs::read_to_string(workspace.join(".git/config")).unwrap();
    assert!(!config.contains("file://"), "{config}");
}

#[tokio::test]
async fn unknown_commit_fails_with_a_useful_message() {
    let temp = tempfile::tempdir().unwrap();
    let repo = temp.path().join("repo");
    make_repo(&repo);
    let unknown = "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef";

    let run = run_checkout(
        repo.to_str().unwrap(),
        unknown,
        &temp.path().join("workspace"),
        TIMEOUT,
        no_cancel(),
    )
    .await;

    let message = failure_message(&run);
    assert!(message.contains(unknown), "{message}");
    assert!(message.contains("not our ref"), "{message}");
    assert!(
        message.contains("no branch or tag contains it"),
        "{message}"
    );
    assert!(
        run.log.contains("fetching all branches and tags instead"),
        "{}",
        run.log
    );
}

#[tokio::test]
async fn nonexistent_repository_fails_with_gits_message() {
    let temp = tempfile::tempdir().unwrap();
    let missing = temp.path().join("no-such-repo");

    let run = run_checkout(
        missing.to_str().unwrap(),
        "0123456789012345678901234567890123456789",
        &temp.path().join("workspace"),
        TIMEOUT,
        no_cancel(),
    )
    .await;

    let message = failure_message(&run);
    assert!(
        message.contains("does not appear to be a git repository"),
        "{message}"
    );
    assert!(message.contains("could not fetch commit"), "{message}");
}

#[tokio::test]
async fn short_sha_and_option_like_repository_are_refused() {
    let temp = tempfile::tempdir().unwrap();
    let repo = temp.path().join("repo");
    let (first, _) = make_repo(&repo);
    let workspace = temp.path().join("workspace");

    let run = run_checkout(
        repo.to_str().unwrap(),
        &first[..8],
        &workspace,
        TIMEOUT,
        no_cancel(),
    )
    .await;
    let error = run.result.unwrap_err();
    assert!(
        matches!(error, CheckoutError::InvalidCommit { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("all 40 hex digits"), "{error}");

    let run = run_checkout(
        "--upload-pack=touch /tmp/x",
        &first,
        &workspace,
        TIMEOUT,
        no_cancel(),
    )
    .await;
    assert!(matches!(
        run.result,
        Err(CheckoutError::InvalidRepository { .. })
    ));
}

#[tokio::test]
async fn non_empty_workspace_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let repo = temp.path().join("repo");
    let (first, _) = make_repo(&repo);
    let workspace = temp.path().join("workspace");
    std::fs::create_dir(&workspace).unwrap();
    std::fs::write(workspace.join("leftover"), "x").unwrap();

    let run = run_checkout(
        repo.to_str().unwrap(),
        &first,
        &workspace,
        TIMEOUT,
        no_cancel(),
    )
    .await;
    assert!(matches!(
        run.result,
        Err(CheckoutError::WorkspaceNotEmpty { .. })
    ));
}

#[tokio::test]
async fn credentials_are_masked_in_the_log_and_the_error() {
    let temp = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: git fails at once with a connection error.
    let url = "https://x-access-token:s3cr3t-t0ken@127.0.0.1:1/acme/app.git";

    let run = run_checkout(
        url,
        "0123456789012345678901234567890123456789",
        &temp.path().join("workspace"),
        TIMEOUT,
        no_cancel(),
    )
    .await;

    let message = failure_message(&run);
    assert!(!message.contains("s3cr3t"), "{message}");
    assert!(!run.log.contains("s3cr3t"), "{}", run.log);
    assert!(
        run.log.contains("https://***@127.0.0.1:1/acme/app.git"),
        "{}",
        run.log
    );
    assert!(message.contains("127.0.0.1"), "{message}");
}

#[test]
fn mask_credentials_masks_user_information_only() {
    assert_eq!(
        mask_credentials("fatal: unable to access 'https://user:tok@host/x.git/': boom"),
        "fatal: unable to access 'https://***@host/x.git/': boom"
    );
    assert_eq!(mask_credentials("https://tok@host"), "https://***@host");
    assert_eq!(
        mask_credentials("https://host/a@b and ssh://git@host:22/r"),
        "https://host/a@b and ssh://***@host:22/r"
    );
    assert_eq!(
        mask_credentials("git@github.com:acme/app.git"),
        "git@github.com:acme/app.git"
    );
    assert_eq!(mask_credentials("no url here"), "no url here");
}

/// An HTTP server that accepts connections and never answers.
async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            connections.push(socket);
        }
    });
    (format!("http://{address}/acme/app.git"), task)
}

#[tokio::test]
async fn a_hanging_fetch_is_stopped_at_the_timeout() {
    let temp = tempfile::tempdir().unwrap();
    let (url, server) = silent_server().await;

    let run = run_checkout(
        &url,
        "0123456789012345678901234567890123456789",
        &temp.path().join("workspace"),
        Duration::from_millis(800),
        no_cancel(),
    )
    .await;

    assert!(
        matches!(run.result, Err(CheckoutError::TimedOut { .. })),
        "{:?}",
        run.result
    );
    assert!(run.elapsed < Duration::from_secs(5), "{:?}", run.elapsed);
    assert!(run.log.contains("git was stopped"), "{}", run.log);
    server.abort();
}

#[tokio::test]
async fn a_tiny_timeout_on_a_real_fetch_times_out() {
    let temp = tempfile::tempdir().unwrap();
    let repo = temp.path().join("repo");
    let (first, _) = make_repo(&repo);

    let run = run_checkout(
        repo.to_str().unwrap(),
        &first,
        &temp.path().join("workspace"),
        Duration::from_millis(1),
        no_cancel(),
    )
    .await;

    assert!(
        matches!(run.result, Err(CheckoutError::TimedOut { .. })),
        "{:?}",
        run.result
    );
}

#[tokio::test]
async fn cancel_stops_a_hanging_fetch() {
    let temp = tempfile::tempdir().unwrap();
    let (url, server) = silent_server().await;
    let (cancel_sender, cancel_receiver) = watch::channel(false);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel_sender.send(true).unwrap();
        // Keep the sender alive until the checkout has seen the cancel.
        tokio::time::sleep(Duration::from_secs(10)).await;
    });

    let run = run_checkout(
        &url,
        "0123456789012345678901234567890123456789",
        &temp.path().join("workspace"),
        TIMEOUT,
        cancel_receiver,
    )
    .await;

    assert!(
        matches!(run.result, Err(CheckoutError::Cancelled)),
        "{:?}",
        run.result
    );
    assert!(run.elapsed < Duration::from_secs(5), "{:?}", run.elapsed);
    server.abort();
}

/// The credential settings the agent and the server give git hand the credentials over
/// from the environment (real git's `credential fill`), so they never need to be in a
/// URL or on a command line.
#[test]
fn git_takes_credentials_from_the_environment() {
    let mut command = std::process::Command::new("git");
    for setting in kiln_core::net::GIT_CREDENTIAL_SETTINGS {
        command.arg("-c").arg(setting);
    }
    let mut child = command
        .args(["credential", "fill"])
        .env("KILN_GIT_USERNAME", "ci-bot")
        .env("KILN_GIT_PASSWORD", "pa@ss word")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"protocol=https\nhost=git.example.com\n\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("username=ci-bot\n"), "{text}");
    assert!(text.contains("password=pa@ss word\n"), "{text}");
}
