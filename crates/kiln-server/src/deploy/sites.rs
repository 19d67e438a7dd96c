//! The sites listener: published sites served from the blob store through their
//! deployment's manifest, on an origin of their own (never the dashboard's, and never
//! with a session: nothing here authenticates), at `/{project}/{environment}/…` or at
//! `{project}--{environment}.{--sites-domain}`.
//!
//! Each request resolves its site's release once (an `Arc` of the path → file map), so
//! no answer mixes two versions; a rollback swaps that `Arc`. A replica re-reads which
//! deployment an environment serves at most every `check_interval` (one indexed read, by
//! one request while the others go on with the cached release), so every replica follows
//! a switch within that interval. Files up to `SMALL_FILE_BYTES` are kept in memory once
//! read (at most `CACHE_BYTES` in all), which is what lets a small file serve at tens of
//! thousands of requests per second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use kiln_core::deployments::{content_type, site_file, site_from_host};
use kiln_store::Store;
use tokio::sync::OnceCell;

use super::SitesConfig;
use crate::blobs::BlobStore;
use crate::range::{Wanted, wanted};

/// Files this small are kept in memory once read.
const SMALL_FILE_BYTES: u64 = 256 * 1024;
/// The most bytes of files kept in memory, over all sites.
const CACHE_BYTES: u64 = 256 * 1024 * 1024;
/// The most sites a replica keeps a view of.
const MAX_SITES: usize = 10_000;

/// One file of a release.
struct SiteFile {
    sha256: String,
    size: u64,
    content_type: &'static str,
    etag: HeaderValue,
    /// The bytes, once read (small files only).
    bytes: OnceCell<Bytes>,
}

/// What one deployment publishes: paths below its publish directory.
struct Release {
    deployment_id: i64,
    version: i64,
    files: HashMap<String, Arc<SiteFile>>,
}

struct Site {
    /// When the store was last asked, and the release it named.
    view: RwLock<(Instant, Arc<Release>)>,
    /// Held by the one request that asks the store again.
    refreshing: tokio::sync::Mutex<()>,
}

/// The sites listener's state.
#[derive(Clone)]
pub(crate) struct Sites {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    blobs: Option<Arc<dyn BlobStore>>,
    config: SitesConfig,
    sites: RwLock<HashMap<(String, String), Arc<Site>>>,
    cached_bytes: AtomicU64,
}

impl Sites {
    pub fn new(
        store: Arc<dyn Store>,
        blobs: Option<Arc<dyn BlobStore>>,
        config: SitesConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                blobs,
                config,
                sites: RwLock::new(HashMap::new()),
                cached_bytes: AtomicU64::new(0),
            }),
        }
    }

    /// The release a site serves now, if it serves one.
    async fn release(&self, project: &str, environment: &str) -> Result<Option<Arc<Release>>, ()> {
        let key = (project.to_owned(), environment.to_owned());
        let site = self
            .inner
            .sites
            .read()
            .ok()
            .and_then(|sites| sites.get(&key).cloned());
        let Some(site) = site else {
            return self.load(key).await;
        };
        let (checked, release) = site.view.read().map_err(|_| ())?.clone();
        if checked.elapsed() < self.inner.config.check_interval {
            return Ok(Some(release));
        }
        // One request asks the store; the others serve the release they have meanwhile.
        let Ok(_guard) = site.refreshing.try_lock() else {
            return Ok(Some(release));
        };
        let served = self
            .inner
            .store
            .served_release(project, environment)
            .await
            .map_err(|error| {
                tracing::warn!(error = %error.chain(), "could not read which deployment a site serves");
            });
        let served = match served {
            Ok(served) => served,
            // The database is away: keep serving what was live.
            Err(()) => return Ok(Some(release)),
        };
        match served {
            Some(served)
                if served.deployment_id == release.deployment_id
                    && served.version == release.version =>
            {
                if let Ok(mut view) = site.view.write() {
                    view.0 = Instant::now();
                }
                Ok(Some(release))
            }
            Some(served) => {
                let fresh = Arc::new(self.manifest(&served).await?);
                if let Ok(mut view) = site.view.write() {
                    *view = (Instant::now(), fresh.clone());
                }
                Ok(Some(fresh))
            }
            None => {
                if let Ok(mut sites) = self.inner.sites.write() {
                    sites.remove(&key);
                }
                Ok(None)
            }
        }
    }

    /// A site not in the cache: read it, and keep it if it exists.
    async fn load(&self, key: (String, String)) -> Result<Option<Arc<Release>>, ()> {
        let served = self
            .inner
            .store
            .served_release(&key.0, &key.1)
            .await
            .map_err(|error| {
                tracing::warn!(error = %error.chain(), "could not read which deployment a site serves");
            })?;
        let Some(served) = served else {
            return Ok(None);
        };
        let release = Arc::new(self.manifest(&served).await?);
        if let Ok(mut sites) = self.inner.sites.write() {
            if sites.len() >= MAX_SITES {
                sites.clear();
            }
            sites.entry(key).or_insert_with(|| {
                Arc::new(Site {
                    view: RwLock::new((Instant::now(), release.clone())),
                    refreshing: tokio::sync::Mutex::new(()),
                })
            });
        }
        Ok(Some(release))
    }

    async fn manifest(&self, served: &kiln_store::ServedRelease) -> Result<Release, ()> {
        let records = self
            .inner
            .store
            .build_artifacts(served.build_id)
            .await
            .map_err(|error| {
                tracing::warn!(error = %error.chain(), "could not read a release's files");
            })?;
        let dir = served.publish_dir.as_str();
        let files = records
            .into_iter()
            .filter(|record| super::under(dir, &record.path))
            .map(|record| {
                let path = if dir.is_empty() {
                    record.path.clone()
                } else {
                    record.path[dir.len() + 1..].to_owned()
                };
                let etag = HeaderValue::from_str(&format!("\"{}\"", record.sha256))
                    .unwrap_or_else(|_| HeaderValue::from_static("\"\""));
                (
                    path.clone(),
                    Arc::new(SiteFile {
                        content_type: content_type(&path),
                        sha256: record.sha256,
                        size: record.size,
                        etag,
                        bytes: OnceCell::new(),
                    }),
                )
            })
            .collect();
        Ok(Release {
            deployment_id: served.deployment_id,
            version: served.version,
            files,
        })
    }

    /// A small file's bytes, read once.
    async fn small_bytes(&self, file: &SiteFile) -> Option<Bytes> {
        let blobs = self.inner.blobs.as_ref()?;
        if let Some(bytes) = file.bytes.get() {
            return Some(bytes.clone());
        }
        let read = async {
            let mut stream = blobs.read(&file.sha256, 0, None).await.ok()?;
            let mut bytes = Vec::with_capacity(file.size as usize);
            while let Some(chunk) = stream.next().await {
                bytes.extend_from_slice(&chunk.ok()?);
            }
            (bytes.len() as u64 == file.size).then(|| Bytes::from(bytes))
        };
        let cached = self.inner.cached_bytes.load(Ordering::Relaxed);
        if cached + file.size > CACHE_BYTES {
            return read.await;
        }
        let mut loaded = false;
        let bytes = file
            .bytes
            .get_or_try_init(|| async {
                loaded = true;
                read.await.ok_or(())
            })
            .await
            .ok()?
            .clone();
        if loaded {
            self.inner
                .cached_bytes
                .fetch_add(file.size, Ordering::Relaxed);
        }
        Some(bytes)
    }
}

/// The sites router: every path goes to [`serve_site`].
pub(crate) fn router(sites: Sites) -> Router {
    Router::new().fallback(serve_site).with_state(sites)
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        text,
    )
        .into_response()
}

/// Which site and file a request names: `(project, environment, encoded rest)`, or a
/// redirect to the site's root with its trailing slash.
enum Target<'a> {
    File(&'a str, &'a str, &'a str),
    Redirect(String),
    Nothing,
}

fn target<'a>(config: &SitesConfig, headers: &'a HeaderMap, path: &'a str) -> Target<'a> {
    if let Some(domain) = &config.domain {
        let host = headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        if let Some((project, environment)) = site_from_host(host, domain) {
            return Target::File(project, environment, path.trim_start_matches('/'));
        }
    }
    let rest = path.strip_prefix('/').unwrap_or(path);
    let mut parts = rest.splitn(3, '/');
    let (Some(project), Some(environment)) = (parts.next(), parts.next()) else {
        return Target::Nothing;
    };
    if project.is_empty() || environment.is_empty() {
        return Target::Nothing;
    }
    match parts.next() {
        Some(file) => Target::File(project, environment, file),
        None => Target::Redirect(format!("/{project}/{environment}/")),
    }
}

async fn serve_site(State(sites): State<Sites>, request: Request) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "published sites answer GET and HEAD only\n",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let headers = request.headers();
    let path = request.uri().path();
    let (project, environment, rest) = match target(&sites.inner.config, headers, path) {
        Target::File(project, environment, rest) => (project, environment, rest),
        Target::Redirect(location) => {
            return match HeaderValue::from_str(&location) {
                Ok(location) => (
                    StatusCode::MOVED_PERMANENTLY,
                    [(header::LOCATION, location)],
                )
                    .into_response(),
                Err(_) => plain(StatusCode::BAD_REQUEST, "bad request\n"),
            };
        }
        Target::Nothing => return plain(StatusCode::NOT_FOUND, "no site here\n"),
    };
    let Ok(file_path) = site_file(rest) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "refused: the path leaves the site or holds characters no published file has\n",
        );
    };
    let release = match sites.release(project, environment).await {
        Ok(Some(release)) => release,
        Ok(None) => return plain(StatusCode::NOT_FOUND, "no site is published here\n"),
        Err(()) => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the site cannot be read right now; try again\n",
            );
        }
    };
    let Some(file) = release.files.get(&file_path).cloned() else {
        // A directory with an index page is asked for without its slash: send the
        // browser to it, so the page's relative links resolve. Directories are never
        // listed.
        let index = format!("{file_path}/index.html");
        if !rest.is_empty() && !rest.ends_with('/') && release.files.contains_key(&index) {
            let location = format!("{}/", path);
            if let Ok(location) = HeaderValue::from_str(&location) {
                return (
                    StatusCode::MOVED_PERMANENTLY,
                    [(header::LOCATION, location)],
                )
                    .into_response();
            }
        }
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    file_response(&sites, &file, headers).await
}

async fn file_response(sites: &Sites, file: &SiteFile, headers: &HeaderMap) -> Response {
    let common = [
        (header::ETAG, file.etag.clone()),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        // Revalidated every time (cheap: 304 by ETag), so a rollback is seen at once.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    let not_modified = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.as_bytes() == file.etag.as_bytes()
        });
    if not_modified {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let size = file.size;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, length) = match wanted(range, size) {
        Wanted::All => (StatusCode::OK, 0, size),
        Wanted::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Wanted::Unsatisfiable => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                common,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response();
        }
    };
    let body = if size <= SMALL_FILE_BYTES {
        match sites.small_bytes(file).await {
            Some(bytes) => Body::from(bytes.slice(start as usize..(start + length) as usize)),
            None => return missing_blob(),
        }
    } else {
        let Some(blobs) = sites.inner.blobs.as_ref() else {
            return missing_blob();
        };
        match blobs.read(&file.sha256, start, Some(length)).await {
            Ok(stream) => Body::from_stream(stream),
            Err(_) => return missing_blob(),
        }
    };
    let mut response = (status, common, body).into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(file.content_type),
    );
    response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(value) =
            HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + length - 1))
    {
        response_headers.insert(header::CONTENT_RANGE, value);
    }
    response
}

fn missing_blob() -> Response {
    tracing::error!("a published file's stored bytes are missing; verify the build's artifacts");
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "this file's stored bytes cannot be read\n",
    )
}
