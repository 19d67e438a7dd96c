//! Blobs in an S3-compatible object store: `{prefix}/{aa}/{bb}/{sha256}` in one bucket,
//! path-style requests signed with AWS Signature Version 4 over the workspace's `reqwest`.
//!
//! Why a hand-written client rather than the `object_store` crate: its `aws` feature
//! brings aws-lc-rs (a C build) as rustls' provider, a second `quick-xml`, `chrono`,
//! `rand`, `crc-fast`, `md-5`, `itertools` and more, for the five requests Kiln makes
//! (HEAD, GET with `Range`, PUT, DELETE and the three of a multipart upload). Signing is
//! one HMAC-SHA256 chain (`sign`, tested against AWS's published example), and this
//! module adds no package to `Cargo.lock`.
//!
//! Bodies stream from and to disk, so memory stays flat whatever a blob's size: a file up
//! to `part_size` is one `PUT` with `Content-Length`, whose payload hash is the blob's
//! own SHA-256 (the store checks the bytes against it); a larger one is a multipart
//! upload of `part_size` parts sent one after the other with `UNSIGNED-PAYLOAD`, aborted
//! on failure. Either way the object appears whole or not at all.

use std::fmt;
use std::io::SeekFrom;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_LENGTH, RANGE};
use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{BlobError, BlobStore, BlobStream};
use crate::secret_box::Secret;

/// Parts of a multipart upload unless configured otherwise.
pub const DEFAULT_PART_SIZE: u64 = 32 * 1024 * 1024;
/// S3's smallest part (all but the last), its largest part and single PUT, and its most
/// parts in one upload.
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;
/// Read buffer of an upload's body.
const CHUNK: usize = 256 * 1024;
/// How much of an error answer is read for its code and message.
const ERROR_BODY_LIMIT: usize = 16 * 1024;
/// The payload hash of an empty body.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// What a store URL or the credentials got wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct S3ConfigError(String);

/// The key pair and region requests are signed with.
#[derive(Clone, Debug)]
pub struct S3Credentials {
    pub access_key: String,
    /// `Debug` shows `Secret(***)`.
    pub secret_key: Secret,
    pub region: String,
}

impl S3Credentials {
    /// From the standard variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, and
    /// `AWS_REGION` (or `AWS_DEFAULT_REGION`; `us-east-1` when neither is set).
    pub fn from_env() -> Result<Self, S3ConfigError> {
        let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let access_key = variable("AWS_ACCESS_KEY_ID")
            .ok_or_else(|| S3ConfigError("AWS_ACCESS_KEY_ID is not set".into()))?;
        let secret_key = variable("AWS_SECRET_ACCESS_KEY")
            .ok_or_else(|| S3ConfigError("AWS_SECRET_ACCESS_KEY is not set".into()))?;
        let region = variable("AWS_REGION")
            .or_else(|| variable("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        Ok(Self {
            access_key,
            secret_key: Secret::new(secret_key),
            region,
        })
    }
}

/// Where and how blobs are stored in an object store.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// `http(s)://host[:port]`, without a path; requests are path-style
    /// (`{endpoint}/{bucket}/{key}`).
    pub endpoint: String,
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
    pub credentials: S3Credentials,
    /// Files larger than this go up in parts of this size (raised to S3's 5 MiB minimum,
    /// and as needed to stay within 10,000 parts).
    pub part_size: u64,
}

impl S3Config {
    /// From a store URL `s3://bucket[/prefix]` and an endpoint (`None`: AWS itself,
    /// `https://s3.{region}.amazonaws.com`).
    pub fn from_url(
        store_url: &str,
        endpoint: Option<&str>,
        credentials: S3Credentials,
    ) -> Result<Self, S3ConfigError> {
        let rest = store_url.strip_prefix("s3://").ok_or_else(|| {
            S3ConfigError(format!(
                "the artifact store '{store_url}' is not an s3://bucket/prefix URL"
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let endpoint = match endpoint {
            Some(endpoint) => endpoint.to_owned(),
            None => format!("https://s3.{}.amazonaws.com", credentials.region),
        };
        let config = Self {
            endpoint,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            credentials,
            part_size: DEFAULT_PART_SIZE,
        };
        config.checked()
    }

    /// The configuration with its endpoint and prefix normalised, or what is wrong.
    fn checked(mut self) -> Result<Self, S3ConfigError> {
        let endpoint = url::Url::parse(&self.endpoint).map_err(|error| {
            S3ConfigError(format!("the S3 endpoint '{}': {error}", self.endpoint))
        })?;
        if !matches!(endpoint.scheme(), "http" | "https")
            || endpoint.host_str().is_none()
            || endpoint.path() != "/"
            || endpoint.query().is_some()
            || !endpoint.username().is_empty()
            || endpoint.password().is_some()
        {
            return Err(S3ConfigError(format!(
                "the S3 endpoint must be http(s)://host[:port] with no path, query or credentials, not '{}'",
                endpoint.as_str()
            )));
        }
        self.endpoint = endpoint.as_str().trim_end_matches('/').to_owned();
        let bucket_is_valid = !self.bucket.is_empty()
            && self.bucket.len() <= 255
            && self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !bucket_is_valid {
            return Err(S3ConfigError(format!(
                "'{}' is not a bucket name (letters, digits, '.', '-', '_')",
                self.bucket
            )));
        }
        self.prefix = self.prefix.trim_matches('/').to_owned();
        if self.prefix.split('/').any(|segment| {
            (segment.is_empty() && !self.prefix.is_empty()) || segment == "." || segment == ".."
        }) {
            return Err(S3ConfigError(format!(
                "the key prefix '{}' has an empty, '.' or '..' segment",
                self.prefix
            )));
        }
        if self.credentials.access_key.is_empty() || self.credentials.region.is_empty() {
            return Err(S3ConfigError(
                "the S3 access key and region must not be empty".into(),
            ));
        }
        Ok(self)
    }
}

/// Blobs in one bucket of an S3-compatible store.
#[derive(Clone)]
pub struct S3BlobStore {
    config: S3Config,
    /// `host[:port]` as sent in the `Host` header (and signed).
    host: String,
    client: reqwest::Client,
}

impl fmt::Debug for S3BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3BlobStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl S3BlobStore {
    /// A store over `config` (checked here; no request is made).
    pub fn new(config: S3Config) -> Result<Self, S3ConfigError> {
        let config = config.checked()?;
        let endpoint = url::Url::parse(&config.endpoint)
            .map_err(|error| S3ConfigError(format!("the S3 endpoint: {error}")))?;
        let host = match (endpoint.host_str(), endpoint.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => return Err(S3ConfigError("the S3 endpoint has no host".into())),
        };
        crate::install_crypto_provider();
        // No overall timeout: a blob of gigabytes takes what it takes; a stalled
        // connection is cut by the read timeout instead. No redirects: S3 answers a
        // wrong region with one, which should be an error naming it.
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| S3ConfigError(format!("the HTTP client: {error}")))?;
        Ok(Self {
            config,
            host,
            client,
        })
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// The object key of a digest (checked by the caller: 64 hex digits).
    pub fn key_of(&self, sha256: &str) -> String {
        let (a, b) = (&sha256[..2], &sha256[2..4]);
        if self.config.prefix.is_empty() {
            format!("{a}/{b}/{sha256}")
        } else {
            format!("{}/{a}/{b}/{sha256}", self.config.prefix)
        }
    }

    /// A signed request for `key` with `query` (pairs, unencoded), whose body hashes to
    /// `payload_hash` (or is `UNSIGNED-PAYLOAD`).
    fn request(
        &self,
        method: Method,
        key: &str,
        query: &[(&str, &str)],
        payload_hash: &str,
    ) -> reqwest::RequestBuilder {
        let path = format!(
            "/{}/{}",
            uri_encode(&self.config.bucket, false),
            uri_encode(key, false)
        );
        let query = canonical_query(query);
        let url = if query.is_empty() {
            format!("{}{path}", self.config.endpoint)
        } else {
            format!("{}{path}?{query}", self.config.endpoint)
        };
        let amz_date = amz_date(std::time::SystemTime::now());
        let headers = [
            ("host", self.host.as_str()),
            ("x-amz-content-sha256", payload_hash),
            ("x-amz-date", amz_date.as_str()),
        ];
        let authorization = sign(&SigningInput {
            method: method.as_str(),
            canonical_uri: &path,
            canonical_query: &query,
            headers: &headers,
            payload_hash,
            amz_date: &amz_date,
            region: &self.config.credentials.region,
            access_key: &self.config.credentials.access_key,
            secret_key: self.config.credentials.secret_key.expose(),
        });
        self.client
            .request(method, url)
            .header("x-amz-content-sha256", payload_hash)
            .header("x-amz-date", amz_date)
            .header("authorization", authorization)
    }

    /// HEAD of a key: its length, or `None` when absent.
    async fn head(&self, key: &str, operation: &str) -> Result<Option<u64>, BlobError> {
        let response = self
            .request(Method::HEAD, key, &[], EMPTY_SHA256)
            .send()
            .await
            .map_err(|error| transport_failure(operation, &error))?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => {
                let length = response
                    .headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse().ok())
                    .ok_or_else(|| {
                        BlobError::Failed(format!("{operation}: the answer has no Content-Length"))
                    })?;
                Ok(Some(length))
            }
            _ => Err(status_failure(operation, response).await),
        }
    }

    /// One PUT of the whole file, checked by the store against its SHA-256.
    async fn put_whole(
        &self,
        key: &str,
        sha256: &str,
        file: &Path,
        size: u64,
    ) -> Result<(), BlobError> {
        let operation = "uploading a blob (PUT)";
        let body = file_body(file, 0, size).await?;
        let response = self
            .request(Method::PUT, key, &[], sha256)
            .header(CONTENT_LENGTH, size)
            .body(body)
            .send()
            .await
            .map_err(|error| transport_failure(operation, &error))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(status_failure(operation, response).await)
        }
    }

    /// A multipart upload in parts of `part_size`, aborted when any step fails.
    async fn put_parts(&self, key: &str, file: &Path, size: u64) -> Result<(), BlobError> {
        let operation = "starting a multipart upload (POST ?uploads)";
        let response = self
            .request(Method::POST, key, &[("uploads", "")], EMPTY_SHA256)
            .send()
            .await
            .map_err(|error| transport_failure(operation, &error))?;
        if !response.status().is_success() {
            return Err(status_failure(operation, response).await);
        }
        let answer = response
            .text()
            .await
            .map_err(|error| transport_failure(operation, &error))?;
        let upload_id = xml_element(&answer, "UploadId")
            .ok_or_else(|| BlobError::Failed(format!("{operation}: the answer has no UploadId")))?;
        let result = self.send_parts(key, &upload_id, file, size).await;
        if result.is_err() {
            // Best effort: an upload left behind holds storage until the bucket's
            // lifecycle rule (or a later abort) removes it.
            let abort = self
                .request(
                    Method::DELETE,
                    key,
                    &[("uploadId", &upload_id)],
                    EMPTY_SHA256,
                )
                .send()
                .await;
            if let Err(error) = abort {
                tracing::warn!(key, error = %error, "aborting a failed multipart upload failed");
            }
        }
        result
    }

    async fn send_parts(
        &self,
        key: &str,
        upload_id: &str,
        file: &Path,
        size: u64,
    ) -> Result<(), BlobError> {
        let part_size = part_size_for(self.config.part_size, size);
        let mut etags = Vec::new();
        let mut offset = 0u64;
        while offset < size {
            let part_number = etags.len() + 1;
            let length = part_size.min(size - offset);
            let operation = format!("uploading part {part_number} (PUT ?partNumber)");
            let body = file_body(file, offset, length).await?;
            let part_text = part_number.to_string();
            let response = self
                .request(
                    Method::PUT,
                    key,
                    &[("partNumber", &part_text), ("uploadId", upload_id)],
                    UNSIGNED_PAYLOAD,
                )
                .header(CONTENT_LENGTH, length)
                .body(body)
                .send()
                .await
                .map_err(|error| transport_failure(&operation, &error))?;
            if !response.status().is_success() {
                return Err(status_failure(&operation, response).await);
            }
            let etag = response
                .headers()
                .get("etag")
                .and_then(|value| value.to_str().ok())
                .ok_or_else(|| BlobError::Failed(format!("{operation}: the answer has no ETag")))?
                .to_owned();
            etags.push(etag);
            offset += length;
        }
        let mut document = String::from("<CompleteMultipartUpload>");
        for (index, etag) in etags.iter().enumerate() {
            document.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
                index + 1,
                xml_escape(etag)
            ));
        }
        document.push_str("</CompleteMultipartUpload>");
        let operation = "completing a multipart upload (POST ?uploadId)";
        let payload_hash = hex::encode(Sha256::digest(document.as_bytes()));
        let response = self
            .request(Method::POST, key, &[("uploadId", upload_id)], &payload_hash)
            .body(document)
            .send()
            .await
            .map_err(|error| transport_failure(operation, &error))?;
        if !response.status().is_success() {
            return Err(status_failure(operation, response).await);
        }
        // S3 may answer 200 and still fail: the error is then the body.
        let answer = response
            .text()
            .await
            .map_err(|error| transport_failure(operation, &error))?;
        if answer.contains("<Error>") {
            return Err(BlobError::Failed(format!(
                "{operation}: {}",
                error_summary(StatusCode::OK, &answer)
            )));
        }
        Ok(())
    }
}

fn checked(sha256: &str) -> Result<(), BlobError> {
    if kiln_core::artifacts::is_sha256_hex(sha256) {
        Ok(())
    } else {
        Err(BlobError::NotFound(sha256.chars().take(80).collect()))
    }
}

/// The part size used for a file of `size`: the configured one within S3's bounds,
/// raised so the file fits in 10,000 parts.
fn part_size_for(configured: u64, size: u64) -> u64 {
    configured
        .clamp(MIN_PART_SIZE, MAX_PART_SIZE)
        .max(size.div_ceil(MAX_PARTS))
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put_file(&self, sha256: &str, file: &Path, size: u64) -> Result<(), BlobError> {
        let result = async {
            checked(sha256)?;
            let key = self.key_of(sha256);
            if self
                .head(&key, "checking whether a blob is stored (HEAD)")
                .await?
                .is_some()
            {
                return Ok(());
            }
            if size <= self.config.part_size.clamp(MIN_PART_SIZE, MAX_PART_SIZE) {
                self.put_whole(&key, sha256, file, size).await
            } else {
                self.put_parts(&key, file, size).await
            }
        }
        .await;
        // The file is consumed whatever happened: a failed upload starts again from
        // the client, as with the local store.
        let _ = tokio::fs::remove_file(file).await;
        result
    }

    async fn size(&self, sha256: &str) -> Result<Option<u64>, BlobError> {
        checked(sha256)?;
        self.head(&self.key_of(sha256), "reading a blob's size (HEAD)")
            .await
    }

    async fn read(
        &self,
        sha256: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<BlobStream, BlobError> {
        checked(sha256)?;
        let operation = "reading a blob (GET)";
        let range = match len {
            // HTTP ranges cannot say "no bytes"; the blob must still exist.
            Some(0) => {
                return match self.size(sha256).await? {
                    Some(_) => Ok(Box::pin(futures_util::stream::empty())),
                    None => Err(BlobError::NotFound(sha256.to_owned())),
                };
            }
            Some(len) => Some(format!("bytes={offset}-{}", offset.saturating_add(len - 1))),
            None if offset > 0 => Some(format!("bytes={offset}-")),
            None => None,
        };
        let mut request = self.request(Method::GET, &self.key_of(sha256), &[], EMPTY_SHA256);
        let ranged = range.is_some();
        if let Some(range) = range {
            request = request.header(RANGE, range);
        }
        let response = request
            .send()
            .await
            .map_err(|error| transport_failure(operation, &error))?;
        match response.status() {
            // HTTP lets a server ignore `Range`: the whole blob is then only right if the
            // range covered all of it.
            StatusCode::OK if ranged => {
                let whole_is_asked = offset == 0
                    && response
                        .content_length()
                        .is_some_and(|length| length <= len.unwrap_or(u64::MAX));
                if whole_is_asked {
                    Ok(response_stream(response))
                } else {
                    Err(BlobError::Failed(format!(
                        "{operation}: the store ignored the Range header"
                    )))
                }
            }
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => Ok(response_stream(response)),
            StatusCode::NOT_FOUND => Err(BlobError::NotFound(sha256.to_owned())),
            // An offset at or past the end reads nothing, as from a local file.
            StatusCode::RANGE_NOT_SATISFIABLE => Ok(Box::pin(futures_util::stream::empty())),
            _ => Err(status_failure(operation, response).await),
        }
    }

    async fn delete(&self, sha256: &str) -> Result<(), BlobError> {
        checked(sha256)?;
        let operation = "removing a blob (DELETE)";
        let response = self
            .request(Method::DELETE, &self.key_of(sha256), &[], EMPTY_SHA256)
            .send()
            .await
            .map_err(|error| transport_failure(operation, &error))?;
        if response.status().is_success() || response.status() == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(status_failure(operation, response).await)
        }
    }

    fn describe(&self) -> String {
        let mut text = format!(
            "s3 bucket '{}' at {}",
            self.config.bucket, self.config.endpoint
        );
        if !self.config.prefix.is_empty() {
            text.push_str(&format!(" (prefix '{}')", self.config.prefix));
        }
        text
    }
}

/// A response's body as a blob stream (read chunk by chunk as the caller polls).
fn response_stream(response: reqwest::Response) -> BlobStream {
    Box::pin(futures_util::stream::try_unfold(
        response,
        |mut response| async move {
            match response.chunk().await {
                Ok(Some(chunk)) => Ok(Some((chunk, response))),
                Ok(None) => Ok(None),
                Err(error) => Err(std::io::Error::other(error_chain(&error))),
            }
        },
    ))
}

/// `length` bytes of `file` from `offset`, as a body of known length (so it is sent with
/// `Content-Length`, never chunked, which S3 refuses).
async fn file_body(file: &Path, offset: u64, length: u64) -> Result<reqwest::Body, BlobError> {
    let mut opened = tokio::fs::File::open(file)
        .await
        .map_err(|error| BlobError::failed("opening the upload", error))?;
    if offset > 0 {
        opened
            .seek(SeekFrom::Start(offset))
            .await
            .map_err(|error| BlobError::failed("seeking in the upload", error))?;
    }
    Ok(reqwest::Body::wrap(SizedBody {
        stream: ReaderStream::with_capacity(opened.take(length), CHUNK),
        remaining: length,
    }))
}

/// A streamed body whose exact length is known.
struct SizedBody<R> {
    stream: ReaderStream<R>,
    remaining: u64,
}

impl<R: AsyncRead + Unpin> http_body::Body for SizedBody<R> {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        match Pin::new(&mut self.stream).poll_next(context) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.remaining = self.remaining.saturating_sub(chunk.len() as u64);
                Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
            Poll::Ready(None) if self.remaining > 0 => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the upload file is shorter than its declared size",
            )))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// A request that got no answer: the operation and the cause (connection refused, DNS,
/// timeout). URLs hold no credentials (they travel in the `Authorization` header).
fn transport_failure(operation: &str, error: &reqwest::Error) -> BlobError {
    BlobError::Failed(format!("{operation}: {}", error_chain(error)))
}

/// An error and its causes, joined.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// An error answer: the operation, the HTTP status and S3's error code and message.
async fn status_failure(operation: &str, mut response: reqwest::Response) -> BlobError {
    let status = response.status();
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    BlobError::Failed(format!(
        "{operation}: {}",
        error_summary(status, &String::from_utf8_lossy(&body))
    ))
}

/// `HTTP 403 Forbidden, S3 error SignatureDoesNotMatch: …` from a status and an error
/// document (HEAD answers have none: then a hint from the status alone).
fn error_summary(status: StatusCode, body: &str) -> String {
    let mut text = format!("HTTP {status}");
    match (xml_element(body, "Code"), xml_element(body, "Message")) {
        (Some(code), Some(message)) => text.push_str(&format!(", S3 error {code}: {message}")),
        (Some(code), None) => text.push_str(&format!(", S3 error {code}")),
        _ if status == StatusCode::FORBIDDEN => text
            .push_str(" (the access key or secret was refused, or lacks permission on the bucket)"),
        _ => {}
    }
    text
}

/// The text of the first `<name>` element of a small, trusted-shape XML answer.
fn xml_element(document: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = document.find(&open)? + open.len();
    let end = start + document[start..].find(&close)?;
    Some(xml_unescape(&document[start..end]))
}

fn xml_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// SigV4's URI encoding: every byte but `A-Z a-z 0-9 - _ . ~` as `%XX`, and `/` too
/// unless it separates path segments.
fn uri_encode(text: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_' | b'.' | b'~')
            || (byte == b'/' && !encode_slash)
        {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The query as signed and sent: encoded pairs sorted by name, then value.
fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(name, value)| (uri_encode(name, true), uri_encode(value, true)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
fn amz_date(now: std::time::SystemTime) -> String {
    let seconds = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0);
    // `Millis` renders `2026-11-24T17:03:09.000Z`.
    let text = kiln_core::time::Millis(seconds * 1000).to_rfc3339();
    format!(
        "{}{}{}T{}{}{}Z",
        &text[0..4],
        &text[5..7],
        &text[8..10],
        &text[11..13],
        &text[14..16],
        &text[17..19]
    )
}

/// What one request's signature covers.
struct SigningInput<'a> {
    method: &'a str,
    /// Already URI-encoded.
    canonical_uri: &'a str,
    /// Already encoded and sorted.
    canonical_query: &'a str,
    /// Lowercase names, sorted, values trimmed.
    headers: &'a [(&'a str, &'a str)],
    payload_hash: &'a str,
    amz_date: &'a str,
    region: &'a str,
    access_key: &'a str,
    secret_key: &'a str,
}

/// The `Authorization` header of AWS Signature Version 4 for service `s3`.
fn sign(input: &SigningInput<'_>) -> String {
    let canonical_headers: String = input
        .headers
        .iter()
        .map(|(name, value)| format!("{name}:{}\n", value.trim()))
        .collect();
    let signed_headers = input
        .headers
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        input.method, input.canonical_uri, input.canonical_query, input.payload_hash
    );
    let date = &input.amz_date[..8];
    let scope = format!("{date}/{}/s3/aws4_request", input.region);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        input.amz_date,
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac_sha256(
        format!("AWS4{}", input.secret_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [input.region, "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac_sha256(&key, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope},SignedHeaders={signed_headers},Signature={signature}",
        input.access_key
    )
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    const EXAMPLE_ACCESS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
    const EXAMPLE_SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn credentials() -> S3Credentials {
        S3Credentials {
            access_key: EXAMPLE_ACCESS_KEY.into(),
            secret_key: Secret::new(EXAMPLE_SECRET_KEY),
            region: "us-east-1".into(),
        }
    }

    /// AWS's published example "GET Object" (Signature Version 4, header-based auth for
    /// S3): the first ten bytes of `test.txt`, signed on 2013-05-24.
    #[test]
    fn the_signature_matches_aws_published_get_object_example() {
        let authorization = sign(&SigningInput {
            method: "GET",
            canonical_uri: "/test.txt",
            canonical_query: "",
            headers: &[
                ("host", "examplebucket.s3.amazonaws.com"),
                ("range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", "20130524T000000Z"),
            ],
            payload_hash: EMPTY_SHA256,
            amz_date: "20130524T000000Z",
            region: "us-east-1",
            access_key: EXAMPLE_ACCESS_KEY,
            secret_key: EXAMPLE_SECRET_KEY,
        });
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// AWS's published example "GET Bucket (List Objects)": a query string, sorted.
    #[test]
    fn the_signature_matches_aws_published_list_objects_example() {
        let query = canonical_query(&[("prefix", "J"), ("max-keys", "2")]);
        assert_eq!(query, "max-keys=2&prefix=J");
        let authorization = sign(&SigningInput {
            method: "GET",
            canonical_uri: "/",
            canonical_query: &query,
            headers: &[
                ("host", "examplebucket.s3.amazonaws.com"),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", "20130524T000000Z"),
            ],
            payload_hash: EMPTY_SHA256,
            amz_date: "20130524T000000Z",
            region: "us-east-1",
            access_key: EXAMPLE_ACCESS_KEY,
            secret_key: EXAMPLE_SECRET_KEY,
        });
        assert!(authorization.ends_with(
            "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        ));
    }

    #[test]
    fn encoding_dates_and_part_sizes() {
        assert_eq!(uri_encode("a b/c~d+é", false), "a%20b/c~d%2B%C3%A9");
        assert_eq!(uri_encode("a/b=", true), "a%2Fb%3D");
        assert_eq!(canonical_query(&[("uploads", "")]), "uploads=");
        assert_eq!(
            amz_date(std::time::UNIX_EPOCH + Duration::from_secs(1_369_353_600)),
            "20130524T000000Z"
        );
        assert_eq!(part_size_for(1024, 1 << 30), MIN_PART_SIZE);
        assert_eq!(part_size_for(DEFAULT_PART_SIZE, 1 << 30), DEFAULT_PART_SIZE);
        // 10,000 parts at most: a 1 TiB file needs parts of about 105 MiB.
        assert_eq!(
            part_size_for(DEFAULT_PART_SIZE, 1 << 40),
            (1u64 << 40).div_ceil(10_000)
        );
        assert_eq!(
            xml_element(
                "<Error><Code>NoSuchKey</Code><Message>a &amp; b</Message></Error>",
                "Message"
            ),
            Some("a & b".into())
        );
        assert_eq!(xml_escape("\"abc\""), "&quot;abc&quot;");
    }

    #[test]
    fn configuration_from_a_store_url_hides_the_secret() {
        let config = S3Config::from_url(
            "s3://kiln/artifacts/",
            Some("http://127.0.0.1:9000/"),
            credentials(),
        )
        .unwrap();
        assert_eq!(config.bucket, "kiln");
        assert_eq!(config.prefix, "artifacts");
        assert_eq!(config.endpoint, "http://127.0.0.1:9000");
        let debug = format!("{config:?}");
        assert!(!debug.contains(EXAMPLE_SECRET_KEY), "{debug}");
        let store = S3BlobStore::new(config).unwrap();
        assert_eq!(
            store.describe(),
            "s3 bucket 'kiln' at http://127.0.0.1:9000 (prefix 'artifacts')"
        );
        assert!(!format!("{store:?}").contains(EXAMPLE_SECRET_KEY));
        let digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(store.key_of(digest), format!("artifacts/ba/78/{digest}"));

        let aws = S3Config::from_url("s3://kiln", None, credentials()).unwrap();
        assert_eq!(aws.endpoint, "https://s3.us-east-1.amazonaws.com");
        assert_eq!(aws.prefix, "");
        let store = S3BlobStore::new(aws).unwrap();
        assert_eq!(store.key_of(digest), format!("ba/78/{digest}"));
        assert_eq!(
            store.describe(),
            "s3 bucket 'kiln' at https://s3.us-east-1.amazonaws.com"
        );

        for (url, endpoint) in [
            ("kiln/artifacts", "http://127.0.0.1:9000"),
            ("s3:///artifacts", "http://127.0.0.1:9000"),
            ("s3://kiln/a//b", "http://127.0.0.1:9000"),
            ("s3://kiln/../b", "http://127.0.0.1:9000"),
            ("s3://kiln", "ftp://127.0.0.1:9000"),
            ("s3://kiln", "http://127.0.0.1:9000/path"),
            ("s3://kiln", "http://user:pass@127.0.0.1:9000"),
        ] {
            assert!(
                S3Config::from_url(url, Some(endpoint), credentials()).is_err(),
                "{url} at {endpoint}"
            );
        }
    }

    /// A file is sent with `Content-Length` (S3 refuses chunked bodies), whole, and its
    /// payload hash is the blob's SHA-256; the staged file is gone afterwards.
    #[tokio::test]
    async fn a_streamed_put_has_a_content_length_and_the_blobs_hash() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut requests = Vec::new();
            for _ in 0..2 {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut received = Vec::new();
                let mut buffer = [0u8; 8192];
                let head_end = loop {
                    let read = socket.read(&mut buffer).await.unwrap();
                    received.extend_from_slice(&buffer[..read]);
                    if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                };
                let head = String::from_utf8_lossy(&received[..head_end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .map(|value| value.trim().parse().unwrap())
                    .unwrap_or(0);
                while received.len() < head_end + length {
                    let read = socket.read(&mut buffer).await.unwrap();
                    received.extend_from_slice(&buffer[..read]);
                }
                let answer: &[u8] = if head.starts_with("head ") {
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                };
                socket.write_all(answer).await.unwrap();
                requests.push((head, received[head_end..].to_vec()));
            }
            requests
        });
        let config = S3Config::from_url("s3://kiln/p", Some(&endpoint), credentials()).unwrap();
        let store = S3BlobStore::new(config).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let staged = dir.path().join("upload");
        std::fs::write(&staged, b"abc").unwrap();
        let digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        store.put_file(digest, &staged, 3).await.unwrap();
        assert!(!staged.exists());
        let requests = server.await.unwrap();
        let (head, body) = &requests[1];
        assert!(
            head.starts_with(&format!("put /kiln/p/ba/78/{digest} http/1.1")),
            "{head}"
        );
        assert!(head.contains("content-length: 3\r\n"), "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert!(
            head.contains(&format!("x-amz-content-sha256: {digest}\r\n")),
            "{head}"
        );
        assert!(!head.contains(&EXAMPLE_SECRET_KEY.to_lowercase()), "{head}");
        assert_eq!(body, b"abc");
    }
}
