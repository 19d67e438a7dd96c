//! What `kiln up` adds to the server: a local agent (its token kept in the data
//! directory) and, with `--demo`, a small git repository with a `.kiln.yml` that is
//! built at once.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use kiln_agent::agent::AgentOptions;
use kiln_core::Millis;
use kiln_store::Store;

const AGENT_TOKEN_FILE: &str = "local-agent.token";

/// The local agent's options, with its token created on first use.
pub async fn local_agent(
    store: &dyn Store,
    data_dir: &Path,
    url: &str,
    executor: &str,
    now: Millis,
) -> anyhow::Result<AgentOptions> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(AGENT_TOKEN_FILE);
    let token = match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => token.trim().to_owned(),
        _ => {
            let token = kiln_server::generate_token();
            write_private(&path, &token)?;
            token
        }
    };
    kiln_server::ensure_agent_token(store, &token, "kiln up local agent", now).await?;
    let data_dir = std::fs::canonicalize(data_dir)?;
    let executor = match executor {
        "container" => kiln_agent::executor::ExecutorKind::Container {
            socket: kiln_agent::executor::DEFAULT_DOCKER_SOCKET.into(),
        },
        other => other
            .parse()
            .map_err(|e| anyhow::anyhow!("--agent-executor: {e}"))?,
    };
    Ok(AgentOptions {
        server: url.to_owned(),
        token,
        name: format!("{}-local", AgentOptions::hostname()),
        labels: vec!["local".into()],
        concurrency: 2,
        executor,
        work_dir: data_dir.join("agent").join("work"),
        cache_dir: data_dir.join("agent").join("cache"),
        cache_max_bytes: 2 * 1024 * 1024 * 1024,
        grace: Duration::from_secs(10),
    })
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

const DEMO_PIPELINE: &str = r#"# A small pipeline Kiln made for `kiln up --demo`; see docs/pipeline.md.
env:
  GREETING: hello from Kiln
steps:
  - name: install
    run: sh install.sh
    cache:
      key_files: deps.lock
      paths: deps
  - name: test
    run:
      - echo "$GREETING"
      - sh test.sh
    depends_on: install
  - name: build
    run: sh build.sh
    depends_on: test
    # Published when the build succeeds: Kiln serves dist/ on its sites listener.
    deploy:
      environment: production
      publish: dist
"#;

const DEMO_BUILD: &str = r#"# Builds a tiny static site into dist/ (Kiln publishes it: see deploy: in .kiln.yml).
mkdir -p dist
cat > dist/index.html <<EOF
<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Kiln demo site</title>
<link rel="stylesheet" href="style.css"></head>
<body><h1>$GREETING</h1><p>Built by Kiln from commit ${KILN_COMMIT:-unknown}, build #${KILN_BUILD_NUMBER:-?}.</p></body></html>
EOF
echo 'body { font-family: sans-serif; margin: 3rem; }' > dist/style.css
echo "built dist/index.html"
"#;

const DEMO_INSTALL: &str = r#"# Pretends to download dependencies: slow the first time, restored from
# the agent's cache on the next builds (the cache key is deps.lock's contents).
if [ -d deps ]; then echo "dependencies restored from the cache"; exit 0; fi
mkdir -p deps
for dep in $(cat deps.lock); do
  echo "fetching $dep"
  sleep 1
  echo "$dep" > "deps/$dep"
done
"#;

const DEMO_TEST: &str = r#"for i in 1 2 3; do echo "test $i passed"; sleep 0.3; done
"#;

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=Kiln demo",
            "-c",
            "user.email=demo@kiln.localhost",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .context("cannot run git: install git (apt-get install git) to build repositories")?;
    if !output.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The demo repository's directory inside the data directory (`kiln up` allows it).
pub const DEMO_REPO_DIR: &str = "demo-repo";

/// Creates (once) the demo repository, points the default project at it, and triggers a
/// build of it once the server answers.
pub async fn demo(
    store: &dyn Store,
    data_dir: &Path,
    url: &str,
    now: Millis,
) -> anyhow::Result<()> {
    let repo = std::fs::canonicalize(data_dir)?.join(DEMO_REPO_DIR);
    if !repo.join(".git").exists() {
        std::fs::create_dir_all(&repo)?;
        std::fs::write(repo.join(".kiln.yml"), DEMO_PIPELINE)?;
        std::fs::write(repo.join("install.sh"), DEMO_INSTALL)?;
        std::fs::write(repo.join("test.sh"), DEMO_TEST)?;
        std::fs::write(repo.join("build.sh"), DEMO_BUILD)?;
        std::fs::write(repo.join("deps.lock"), "left-pad\nis-even\nkiln-sdk\n")?;
        git(&repo, &["init", "-q"])?;
        git(&repo, &["add", "."])?;
        git(
            &repo,
            &["commit", "-q", "-m", "Demo project for kiln up --demo"],
        )?;
    }
    let repo_url = repo.display().to_string();
    kiln_server::set_project_repo(store, "default", &repo_url).await?;
    let token = kiln_server::create_project_token(store, "default", "kiln up --demo", now).await?;
    outln!("  demo: repository {repo_url}; its build starts in a moment");
    let client = kiln_client::Client::new(url, Some(token));
    tokio::spawn(async move {
        for _ in 0..50 {
            if client.healthz().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match client.trigger_build("default", &Default::default()).await {
            Ok(build) => {
                outln!("  demo build #{} queued ({})", build.number, build.run_id);
                outln!(
                    "    follow it: kiln logs -f {} (with KILN_TOKEN set to the project token)",
                    build.run_id
                );
                outln!(
                    "    build again (the install step then restores its cache): kiln trigger --wait"
                );
            }
            Err(error) => errln!("kiln: the demo build could not be queued: {error}"),
        }
    });
    Ok(())
}
