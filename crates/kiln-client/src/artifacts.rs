//! Artifacts: a file uploaded to a build (by a script's ingest token or by the agent for
//! its job), resumed from the server's offset when a connection breaks; a build's
//! manifest, one file or the whole archive downloaded and checked; verification.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kiln_protocol::{
    ArtifactFile, ArtifactManifest, ArtifactUpload, ArtifactVerification, StartArtifactUpload,
};
use reqwest::Method;
use sha2::{Digest, Sha256};
use tokio::io::AsyncSeekExt;

use super::{Client, ClientError, encode, json_answer};

/// How often an upload is resumed after a broken connection before giving up.
const UPLOAD_TRIES: usize = 5;
/// A transfer may take this long (a large file on a slow link).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);
/// Files at least this large are sent without hashing them first: the CRC-32 of what was
/// sent, summed on the way, confirms them with the last request (the server computes the
/// manifest's SHA-256 as the bytes arrive), so the file is read once and only the server
/// pays for a SHA-256; smaller ones are hashed first, so content the server already holds
/// needs no bytes.
pub const HASH_WHILE_SENDING_FROM: u64 = 8 * 1024 * 1024;

/// Where an upload goes.
#[derive(Clone, Debug)]
pub enum ArtifactTarget {
    /// A build, with an ingest token of its project.
    Build { run_id: String },
    /// The agent's job (the file is recorded as the job's step's).
    Job {
        job_id: i64,
        agent_id: i64,
        attempt: i64,
    },
}

impl ArtifactTarget {
    fn start_path(&self) -> String {
        match self {
            Self::Build { run_id } => format!("/api/v1/builds/{}/artifacts", encode(run_id)),
            Self::Job {
                job_id,
                agent_id,
                attempt,
            } => format!(
                "/api/v1/agent/jobs/{job_id}/artifacts?agentId={agent_id}&attempt={attempt}"
            ),
        }
    }

    fn send_path(&self, upload_id: &str, offset: u64) -> String {
        match self {
            Self::Build { run_id } => format!(
                "/api/v1/builds/{}/artifacts/uploads/{}?offset={offset}",
                encode(run_id),
                encode(upload_id)
            ),
            Self::Job {
                job_id,
                agent_id,
                attempt,
            } => format!(
                "/api/v1/agent/jobs/{job_id}/artifacts/uploads/{}?agentId={agent_id}&attempt={attempt}&offset={offset}",
                encode(upload_id)
            ),
        }
    }
}

/// Reads `path` from its start in pieces of 1 MiB, at most `limit` bytes (all of it
/// without one), giving each piece to `each`; answers the bytes read.
fn read_pieces(
    path: &Path,
    limit: Option<u64>,
    mut each: impl FnMut(&[u8]),
) -> std::io::Result<u64> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?.take(limit.unwrap_or(u64::MAX));
    let mut buffer = vec![0u8; 1024 * 1024];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(size);
        }
        size += read as u64;
        each(&buffer[..read]);
    }
}

/// The SHA-256 (hex) and size of a file, read in pieces.
pub async fn file_sha256(path: &Path) -> std::io::Result<(String, u64)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        let size = read_pieces(&path, None, |piece| hasher.update(piece))?;
        Ok((hex::encode(hasher.finalize()), size))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Chunks of a download queued to its writer and hasher threads.
const QUEUE: usize = 16;
/// Written bytes after which the kernel is asked to start writing them to disk.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

/// Writes the chunks to `file` and syncs it; the error names what failed ("write",
/// "sync").
fn write_synced(
    mut file: std::fs::File,
    mut chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>,
) -> Result<(), (&'static str, std::io::Error)> {
    use std::io::Write;
    let mut written = 0u64;
    let mut flushed = 0u64;
    while let Some(chunk) = chunks.blocking_recv() {
        file.write_all(&chunk).map_err(|e| ("write", e))?;
        written += chunk.len() as u64;
        if written - flushed >= WRITEBACK_EVERY {
            start_writeback(&file, flushed, written - flushed);
            flushed = written;
        }
    }
    file.sync_all().map_err(|e| ("sync", e))
}

/// Asks the kernel to start writing `len` bytes at `offset` to disk now, so the final
/// sync waits only for the last few MiB. `POSIX_FADV_DONTNEED` on pages still dirty starts
/// their writeback without waiting and drops none of them from the cache (the safe-Rust
/// way to `sync_file_range(SYNC_FILE_RANGE_WRITE)`). A hint only: the sync stays.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        let _ = nix::fcntl::posix_fadvise(
            file,
            offset,
            len,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// The CRC-32 of a file's bytes sent so far, in order from its first byte.
#[derive(Default)]
struct SentSum {
    length: u64,
    hasher: crc32fast::Hasher,
}

/// The CRC-32 of the first `length` bytes of `path` (bytes a resumed upload sent before).
async fn file_crc32(path: &Path, length: u64) -> std::io::Result<crc32fast::Hasher> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut hasher = crc32fast::Hasher::new();
        let read_in_all = read_pieces(&path, Some(length), |piece| hasher.update(piece))?;
        if read_in_all != length {
            return Err(std::io::Error::other(format!(
                "the file has {read_in_all} bytes, not the {length} sent: it changed while it was uploaded"
            )));
        }
        Ok(hasher)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// A file's size and modification time: the same before and after sending, or it changed.
fn file_version(path: &Path) -> std::io::Result<(u64, Option<std::time::SystemTime>)> {
    let metadata = std::fs::metadata(path)?;
    Ok((metadata.len(), metadata.modified().ok()))
}

/// Makes `sent` the CRC-32 of the first `held` bytes of `local`: as summed while
/// sending when that got exactly there, else read again (a resumed upload: the server
/// holds bytes sent before, or fewer than were read for a connection that broke).
async fn sum_held(sent: &Arc<Mutex<SentSum>>, local: &Path, held: u64) -> std::io::Result<()> {
    if sent.lock().expect("sum lock").length == held {
        return Ok(());
    }
    let hasher = file_crc32(local, held).await?;
    *sent.lock().expect("sum lock") = SentSum {
        length: held,
        hasher,
    };
    Ok(())
}

fn hash_chunks(mut chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> String {
    let mut hasher = Sha256::new();
    while let Some(chunk) = chunks.blocking_recv() {
        hasher.update(&chunk);
    }
    hex::encode(hasher.finalize())
}

/// The `POST …/artifacts` body of a file (`sha256` left out: confirmed at the end).
fn declare(
    path: &str,
    size: u64,
    sha256: Option<String>,
    mode: u32,
    step: Option<&str>,
) -> StartArtifactUpload {
    StartArtifactUpload {
        path: path.to_owned(),
        size,
        sha256,
        mode: Some(mode),
        step: step.map(str::to_owned),
    }
}

/// How an upload that hashes while sending ended short of a file.
enum HashWhileSending {
    /// The server wants the SHA-256 in the declaration (an older Kiln).
    Refused,
    Failed(ClientError),
}

fn io_error(context: &str, error: std::io::Error) -> ClientError {
    ClientError::Transport(format!("{context}: {error}"))
}

impl Client {
    /// Uploads the local file `local` as `path` of the target's build; resumes where the
    /// server stopped when the connection breaks. Answers the manifest entry.
    pub async fn upload_artifact(
        &self,
        target: &ArtifactTarget,
        local: &Path,
        path: &str,
        mode: u32,
        step: Option<&str>,
    ) -> Result<ArtifactFile, ClientError> {
        let cannot_read = |e| io_error(&format!("cannot read {}", local.display()), e);
        let size = tokio::fs::metadata(local).await.map_err(cannot_read)?.len();
        if size >= HASH_WHILE_SENDING_FROM {
            match self
                .upload_hashing_while_sending(target, local, path, mode, step, size)
                .await
            {
                // A server older than the confirmation wants the SHA-256 first.
                Err(HashWhileSending::Refused) => {}
                Err(HashWhileSending::Failed(error)) => return Err(error),
                Ok(artifact) => return Ok(artifact),
            }
        }
        let (sha256, size) = file_sha256(local).await.map_err(cannot_read)?;
        let declaration = declare(path, size, Some(sha256), mode, step);
        let mut last_error = None;
        for _ in 0..UPLOAD_TRIES {
            let upload: ArtifactUpload = self
                .call(Method::POST, &target.start_path(), Some(&declaration))
                .await?;
            if let Some(artifact) = upload.artifact {
                return Ok(artifact);
            }
            match self.send_from(target, &upload, local, None).await {
                Ok(ArtifactUpload {
                    artifact: Some(artifact),
                    ..
                }) => return Ok(artifact),
                // Short of the end (the file changed?) or a broken connection: ask again.
                Ok(_) => last_error = None,
                Err(error @ (ClientError::Transport(_) | ClientError::Unreachable(_))) => {
                    last_error = Some(error);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(ClientError::Api { status: 409, body })
                    if body.error.code == "upload_offset" =>
                {
                    last_error = Some(ClientError::Api { status: 409, body });
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            ClientError::Transport(format!(
                "the upload of {path} did not complete after {UPLOAD_TRIES} tries (did the file change while it was sent?)"
            ))
        }))
    }

    /// Declares the upload without a SHA-256, sends the file summing a CRC-32 of what is
    /// sent, then confirms that CRC-32 with an empty `PUT` at the end (a server older than
    /// `?crc32=` ignores it and is confirmed with the SHA-256). Resumes like the other way;
    /// `Refused` when the server wants the SHA-256 in the declaration.
    async fn upload_hashing_while_sending(
        &self,
        target: &ArtifactTarget,
        local: &Path,
        path: &str,
        mode: u32,
        step: Option<&str>,
        size: u64,
    ) -> Result<ArtifactFile, HashWhileSending> {
        let failed = HashWhileSending::Failed;
        let cannot_read = |e| io_error(&format!("cannot read {}", local.display()), e);
        let version = file_version(local).map_err(|e| failed(cannot_read(e)))?;
        let sent = Arc::new(Mutex::new(SentSum::default()));
        let declaration = declare(path, size, None, mode, step);
        let mut last_error = None;
        for attempt in 0..UPLOAD_TRIES {
            let mut upload: ArtifactUpload = match self
                .call(Method::POST, &target.start_path(), Some(&declaration))
                .await
            {
                Ok(upload) => upload,
                Err(ClientError::Api { status: 400, body })
                    if attempt == 0 && body.error.field.as_deref() == Some("sha256") =>
                {
                    return Err(HashWhileSending::Refused);
                }
                Err(error) => return Err(failed(error)),
            };
            if upload.offset < upload.size {
                sum_held(&sent, local, upload.offset)
                    .await
                    .map_err(|e| failed(cannot_read(e)))?;
                match self
                    .send_from(target, &upload, local, Some(sent.clone()))
                    .await
                {
                    Ok(answer) => upload = answer,
                    Err(error @ (ClientError::Transport(_) | ClientError::Unreachable(_))) => {
                        last_error = Some(error);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    Err(ClientError::Api { status: 409, body })
                        if body.error.code == "upload_offset" =>
                    {
                        last_error = Some(ClientError::Api { status: 409, body });
                        continue;
                    }
                    Err(error) => return Err(failed(error)),
                }
            }
            if let Some(artifact) = upload.artifact {
                return Ok(artifact);
            }
            if upload.offset < upload.size {
                // Short of the end (the file shrank while it was sent?): ask again.
                last_error = None;
                continue;
            }
            sum_held(&sent, local, size)
                .await
                .map_err(|e| failed(cannot_read(e)))?;
            if file_version(local).map_err(|e| failed(cannot_read(e)))? != version {
                return Err(failed(ClientError::Transport(format!(
                    "{} changed while it was uploaded; upload it again",
                    local.display()
                ))));
            }
            let crc32 = sent.lock().expect("sum lock").hasher.clone().finalize();
            let confirmed = self
                .confirm_upload(target, &upload, &format!("crc32={crc32:08x}"))
                .await;
            let confirmed = match confirmed {
                // A server that does not know `?crc32=` still awaits the SHA-256.
                Ok(answer) if answer.artifact.is_none() && answer.awaiting_sha256 => {
                    let (sha256, _) = file_sha256(local)
                        .await
                        .map_err(|e| failed(cannot_read(e)))?;
                    self.confirm_upload(target, &upload, &format!("sha256={sha256}"))
                        .await
                }
                other => other,
            };
            match confirmed {
                Ok(ArtifactUpload {
                    artifact: Some(artifact),
                    ..
                }) => return Ok(artifact),
                Ok(_) => last_error = None,
                Err(error @ (ClientError::Transport(_) | ClientError::Unreachable(_))) => {
                    last_error = Some(error);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => return Err(failed(error)),
            }
        }
        Err(failed(last_error.unwrap_or_else(|| {
            ClientError::Transport(format!(
                "the upload of {path} did not complete after {UPLOAD_TRIES} tries (did the file change while it was sent?)"
            ))
        })))
    }

    /// The `PUT` at an upload's end with `query` (`sha256=…` or `crc32=…`), empty.
    async fn confirm_upload(
        &self,
        target: &ArtifactTarget,
        upload: &ArtifactUpload,
        query: &str,
    ) -> Result<ArtifactUpload, ClientError> {
        let request = self
            .request(
                Method::PUT,
                &format!(
                    "{}&{query}",
                    target.send_path(&upload.upload_id, upload.size)
                ),
            )
            .header("content-type", "application/octet-stream")
            .header("content-length", 0)
            .body(Vec::<u8>::new());
        let (_, _, body) = Self::exchange(request).await?;
        json_answer(&body)
    }

    /// Sends `local` from the upload's offset to its end; each chunk read goes into `sum`
    /// (when given) as it is sent.
    async fn send_from(
        &self,
        target: &ArtifactTarget,
        upload: &ArtifactUpload,
        local: &Path,
        sum: Option<Arc<Mutex<SentSum>>>,
    ) -> Result<ArtifactUpload, ClientError> {
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(|e| io_error(&format!("cannot open {}", local.display()), e))?;
        file.seek(std::io::SeekFrom::Start(upload.offset))
            .await
            .map_err(|e| io_error("cannot seek", e))?;
        let remaining = upload.size.saturating_sub(upload.offset);
        let stream = tokio_util::io::ReaderStream::with_capacity(
            tokio::io::AsyncReadExt::take(file, remaining),
            256 * 1024,
        )
        .inspect(move |chunk| {
            if let (Some(sum), Ok(chunk)) = (&sum, chunk) {
                let mut sum = sum.lock().expect("sum lock");
                sum.hasher.update(chunk);
                sum.length += chunk.len() as u64;
            }
        });
        let request = self
            .request(
                Method::PUT,
                &target.send_path(&upload.upload_id, upload.offset),
            )
            .timeout(TRANSFER_TIMEOUT)
            .header("content-type", "application/octet-stream")
            .header("content-length", remaining)
            .body(reqwest::Body::wrap_stream(stream));
        let (_, _, body) = Self::exchange(request).await?;
        json_answer(&body)
    }

    pub async fn artifact_manifest(&self, run_id: &str) -> Result<ArtifactManifest, ClientError> {
        self.get(&format!("/api/v1/builds/{}/artifacts", encode(run_id)))
            .await
    }

    pub async fn verify_artifacts(
        &self,
        run_id: &str,
    ) -> Result<ArtifactVerification, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/builds/{}/artifacts/verify", encode(run_id)),
            None,
        )
        .await
    }

    /// Downloads one file of a build into `dest` (written to a temporary name and renamed,
    /// so `dest` never holds half a file) and checks it against `sha256` when given.
    /// Answers the bytes written.
    pub async fn download_artifact(
        &self,
        run_id: &str,
        path: &str,
        dest: &Path,
        sha256: Option<&str>,
    ) -> Result<u64, ClientError> {
        let encoded: Vec<String> = path.split('/').map(encode).collect();
        let url = format!(
            "/api/v1/builds/{}/artifacts/files/{}",
            encode(run_id),
            encoded.join("/")
        );
        self.download_to(&url, dest, sha256).await
    }

    /// The agent's download of a blob of its job's build.
    pub async fn download_job_artifact(
        &self,
        job_id: i64,
        agent_id: i64,
        attempt: i64,
        sha256: &str,
        dest: &Path,
    ) -> Result<u64, ClientError> {
        let url = format!(
            "/api/v1/agent/jobs/{job_id}/artifacts/{}?agentId={agent_id}&attempt={attempt}",
            encode(sha256)
        );
        self.download_to(&url, dest, Some(sha256)).await
    }

    /// All of a build's files as one `.tar.gz`, into `dest`.
    pub async fn download_artifact_archive(
        &self,
        run_id: &str,
        dest: &Path,
    ) -> Result<u64, ClientError> {
        let url = format!("/api/v1/builds/{}/artifacts.tar.gz", encode(run_id));
        self.download_to(&url, dest, None).await
    }

    async fn download_to(
        &self,
        url: &str,
        dest: &Path,
        sha256: Option<&str>,
    ) -> Result<u64, ClientError> {
        let response = self
            .request(Method::GET, url)
            .timeout(TRANSFER_TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    ClientError::Unreachable(super::describe(&e))
                } else {
                    ClientError::Transport(e.to_string())
                }
            })?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(super::api_error(status, &bytes));
        }
        let file_name = dest
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "download".into());
        let partial = dest.with_file_name(format!(".{file_name}.kiln-partial"));
        let file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| io_error(&format!("cannot write {}", partial.display()), e))?
            .into_std()
            .await;
        // Written and hashed on two threads while the next chunks arrive; the disk is
        // asked to write as the file grows, so the final sync waits for little.
        let (to_writer, from_download) = tokio::sync::mpsc::channel::<bytes::Bytes>(QUEUE);
        let (to_hasher, from_download_too) = tokio::sync::mpsc::channel::<bytes::Bytes>(QUEUE);
        let writer = tokio::task::spawn_blocking(move || write_synced(file, from_download));
        let hasher = tokio::task::spawn_blocking(move || hash_chunks(from_download_too));
        let mut written = 0u64;
        let mut stream = response.bytes_stream();
        let received: Result<(), ClientError> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk
                    .map_err(|e| ClientError::Transport(format!("the download broke off: {e}")))?;
                written += chunk.len() as u64;
                let _ = to_hasher.send(chunk.clone()).await;
                if to_writer.send(chunk).await.is_err() {
                    break;
                }
            }
            Ok(())
        }
        .await;
        drop((to_writer, to_hasher));
        let stored = writer
            .await
            .map_err(|e| io_error("cannot write", std::io::Error::other(e)))
            .and_then(|result| {
                result.map_err(|(context, e)| {
                    io_error(
                        &match context {
                            "write" => format!("cannot write {}", partial.display()),
                            other => format!("cannot {other}"),
                        },
                        e,
                    )
                })
            });
        let actual = hasher
            .await
            .map_err(|e| ClientError::Transport(e.to_string()));
        let result: Result<(), ClientError> = (|| {
            received?;
            stored?;
            let actual = actual?;
            if let Some(expected) = sha256
                && actual != expected
            {
                return Err(ClientError::Transport(format!(
                    "the download of {} has SHA-256 {actual}, not {expected}; it was not kept",
                    dest.display()
                )));
            }
            Ok(())
        })();
        if let Err(error) = result {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(error);
        }
        tokio::fs::rename(&partial, dest)
            .await
            .map_err(|e| io_error(&format!("cannot write {}", dest.display()), e))?;
        Ok(written)
    }
}
