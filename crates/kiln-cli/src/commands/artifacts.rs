//! `kiln artifact upload|list|get|verify`: files stored with a build — uploaded from any
//! script with an ingest token (resumed when the connection breaks), listed with their
//! digests, downloaded and checked against their SHA-256, and verified on the server.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kiln_client::ArtifactTarget;

use super::admin::print_json;
use crate::settings::ClientArgs;

#[derive(Subcommand, Debug)]
pub enum ArtifactCommand {
    /// Upload files (a directory: every file under it) as the build's artifacts
    /// (an ingest token; inside `kiln run` the build is inherited).
    Upload(UploadArgs),
    /// A build's files with size, mode and SHA-256 (--json: MD5 and SHA-512 too).
    List(ListArgs),
    /// Download one file of a build (--all: every file as a .tar.gz), checked against
    /// its SHA-256.
    Get(GetArgs),
    /// Have the server re-hash a build's stored files and name every mismatch (exit 1
    /// when there is one).
    Verify(ListArgs),
}

#[derive(Args, Debug)]
pub struct UploadArgs {
    /// Files or directories, relative to the current directory (their artifact paths).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The build (default: KILN_RUN_ID, set inside `kiln run`).
    #[arg(long, env = "KILN_RUN_ID")]
    run_id: Option<String>,
    /// The step the files come from.
    #[arg(long)]
    step: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// The build's run id.
    run_id: String,
    /// Print the JSON answer.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// The build's run id.
    run_id: String,
    /// The artifact's path (omit with --all).
    path: Option<String>,
    /// Every file, as one .tar.gz.
    #[arg(long, conflicts_with = "path")]
    all: bool,
    /// Where to write it (default: the file's name, or RUN_ID-artifacts.tar.gz).
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(command: ArtifactCommand) -> anyhow::Result<ExitCode> {
    match command {
        ArtifactCommand::Upload(args) => upload(args).await,
        ArtifactCommand::List(args) => list(args).await,
        ArtifactCommand::Get(args) => get(args).await,
        ArtifactCommand::Verify(args) => verify(args).await,
    }
}

/// The files to upload with their artifact paths: a file as written (made relative), a
/// directory's regular files below it; symbolic links are refused.
fn collect(paths: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, String, u32)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = Vec::new();
    for path in paths {
        let metadata = path
            .symlink_metadata()
            .with_context(|| format!("{}: cannot read it", path.display()))?;
        if metadata.file_type().is_symlink() {
            bail!(
                "{}: is a symbolic link; upload what it points to",
                path.display()
            );
        }
        let name = artifact_name(path)?;
        if metadata.is_file() {
            files.push((path.clone(), name, metadata.permissions().mode() & 0o7777));
            continue;
        }
        let mut found = kiln_agent::artifacts::find(path, &["**".to_owned()]).0;
        if found.is_empty() {
            errln!("{}: no file in it", path.display());
        }
        for file in found.drain(..) {
            files.push((file.local, format!("{name}/{}", file.path), file.mode));
        }
    }
    Ok(files)
}

/// `./dist/app.js` → `dist/app.js`; absolute paths and `..` are refused (an artifact's
/// path is relative to the workspace).
fn artifact_name(path: &Path) -> anyhow::Result<String> {
    let text = path.to_string_lossy();
    let trimmed = text.trim_start_matches("./").trim_end_matches('/');
    kiln_core::artifacts::ArtifactPath::parse(trimmed)
        .map(|path| path.as_str().to_owned())
        .map_err(|error| {
            anyhow::anyhow!(
                "{}: {} (run kiln artifact upload from the directory the paths are relative to)",
                path.display(),
                error.message
            )
        })
}

async fn upload(args: UploadArgs) -> anyhow::Result<ExitCode> {
    let run_id = args.run_id.clone().context(
        "no run id: pass --run-id, set KILN_RUN_ID, or call kiln artifact upload inside `kiln run`",
    )?;
    let files = collect(&args.paths)?;
    let client = args.client.client().await?;
    let target = ArtifactTarget::Build {
        run_id: run_id.clone(),
    };
    let mut failed = false;
    for (local, path, mode) in &files {
        match client
            .upload_artifact(&target, local, path, *mode, args.step.as_deref())
            .await
        {
            Ok(stored) => errln!("{path}: {} bytes, sha256 {}", stored.size, stored.sha256),
            Err(error) => {
                errln!("{path}: not stored: {error}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("some files were not stored (see above)");
    }
    errln!("{} files stored for {run_id}", files.len());
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let manifest = args
        .client
        .client()
        .await?
        .artifact_manifest(&args.run_id)
        .await?;
    if args.json {
        print_json(&manifest)?;
        return Ok(ExitCode::SUCCESS);
    }
    for file in &manifest.files {
        outln!(
            "{:o}\t{}\t{}\t{}\t{}",
            file.mode,
            file.size,
            file.sha256,
            file.step.as_deref().unwrap_or("-"),
            file.path
        );
    }
    errln!(
        "{}: {} files, {} bytes",
        manifest.run_id,
        manifest.count,
        manifest.total_bytes
    );
    Ok(ExitCode::SUCCESS)
}

async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client().await?;
    if args.all {
        let dest = args
            .output
            .unwrap_or_else(|| PathBuf::from(format!("{}-artifacts.tar.gz", args.run_id)));
        let bytes = client
            .download_artifact_archive(&args.run_id, &dest)
            .await?;
        errln!("{}: {bytes} bytes", dest.display());
        return Ok(ExitCode::SUCCESS);
    }
    let Some(path) = args.path else {
        bail!(
            "name the artifact's path (kiln artifact list {} shows them), or pass --all",
            args.run_id
        );
    };
    let manifest = client.artifact_manifest(&args.run_id).await?;
    let Some(file) = manifest.files.iter().find(|file| file.path == path) else {
        bail!(
            "build {} has no artifact '{path}'; kiln artifact list {} shows what it has",
            args.run_id,
            args.run_id
        );
    };
    let dest = args
        .output
        .unwrap_or_else(|| PathBuf::from(path.rsplit('/').next().unwrap_or(&path)));
    let bytes = client
        .download_artifact(&args.run_id, &path, &dest, Some(&file.sha256))
        .await?;
    errln!(
        "{}: {bytes} bytes, sha256 {} verified",
        dest.display(),
        file.sha256
    );
    Ok(ExitCode::SUCCESS)
}

async fn verify(args: ListArgs) -> anyhow::Result<ExitCode> {
    let answer = args
        .client
        .client()
        .await?
        .verify_artifacts(&args.run_id)
        .await?;
    if args.json {
        print_json(&answer)?;
    } else {
        for mismatch in &answer.mismatches {
            outln!(
                "MISMATCH\t{}\t{}\texpected {}\tfound {}",
                mismatch.path,
                mismatch.problem,
                mismatch.expected.as_deref().unwrap_or("-"),
                mismatch.actual.as_deref().unwrap_or("-")
            );
        }
        errln!(
            "{}: {} files, {} bytes checked: {}",
            answer.run_id,
            answer.checked,
            answer.bytes,
            if answer.ok {
                "all match their manifest".to_owned()
            } else {
                format!("{} mismatches", answer.mismatches.len())
            }
        );
    }
    Ok(if answer.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
