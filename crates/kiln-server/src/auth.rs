//! Who is calling: bearer tokens resolved to a `Caller`, and the access rules routes use.
//!
//! Token lookups are cached for `CACHE_TTL` so ingest does not pay a query per request;
//! a revocation takes effect at once on the replica that revoked and within the TTL on
//! the others. `last_used_at` is written at most once per `TOUCH_INTERVAL` per token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use kiln_core::Millis;
use kiln_core::token::{Scope, TokenKind, hash_token};
use kiln_store::{Store, TokenRecord};

use crate::clock::Clock;
use crate::error::ApiError;

const CACHE_TTL: Duration = Duration::from_secs(5);
const TOUCH_INTERVAL_MS: i64 = 60_000;
const CACHE_MAX_ENTRIES: usize = 10_000;

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub token_id: i64,
    pub kind: TokenKind,
    pub project_id: Option<i64>,
    pub scopes: Vec<Scope>,
}

/// The access a route requires before its handler runs. Project-level checks (is this
/// build in the caller's project?) happen in the handler via `Caller::can_read`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token needed (health checks).
    Public,
    /// Instance administrators only.
    InstanceAdmin,
    /// A project token with the `ingest` scope.
    ProjectIngest,
    /// Any valid token; the handler checks it may read the project concerned.
    ProjectRead,
    /// Triggering, retrying and cancelling builds: an instance admin or a project token
    /// with the `ingest` scope; the handler checks the project.
    ProjectWrite,
    /// Agent tokens only (`kiln agent`).
    Agent,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::InstanceAdmin => "instance admin",
            Self::ProjectIngest => "project ingest token",
            Self::ProjectRead => "project read or ingest token, or instance admin",
            Self::ProjectWrite => "project ingest token, or instance admin",
            Self::Agent => "agent token",
        }
    }
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.kind == TokenKind::Admin
    }

    /// Whether the caller may read the project's builds. Callers that may not are told
    /// "not found", so other projects' existence does not leak.
    pub fn can_read(&self, project_id: i64) -> bool {
        self.is_admin()
            || (self.project_id == Some(project_id)
                && (self.scopes.contains(&Scope::Read) || self.scopes.contains(&Scope::Ingest)))
    }

    /// Whether the caller may trigger, retry and cancel the project's builds.
    pub fn can_write(&self, project_id: i64) -> bool {
        self.is_admin()
            || (self.project_id == Some(project_id) && self.scopes.contains(&Scope::Ingest))
    }

    pub fn check(&self, access: Access) -> Result<(), ApiError> {
        if self.kind == TokenKind::Agent && !matches!(access, Access::Agent | Access::Public) {
            return Err(ApiError::Forbidden(
                "agent tokens work only on the agent endpoints (/api/v1/agent/…); use a project or admin token here"
                    .into(),
            ));
        }
        match access {
            Access::Public | Access::ProjectRead => Ok(()),
            Access::Agent if self.kind == TokenKind::Agent => Ok(()),
            Access::Agent => Err(ApiError::Forbidden(
                "this endpoint is for build agents: use an agent token (`kiln token create --agent`)"
                    .into(),
            )),
            Access::ProjectWrite if self.is_admin() || self.scopes.contains(&Scope::Ingest) => {
                Ok(())
            }
            Access::ProjectWrite => Err(ApiError::Forbidden(
                "triggering, retrying and cancelling builds needs a project token with the \"ingest\" scope or an instance-admin token"
                    .into(),
            )),
            Access::InstanceAdmin if self.is_admin() => Ok(()),
            Access::InstanceAdmin => Err(ApiError::Forbidden(
                "this needs an instance-admin token (KILN_ADMIN_TOKEN or one printed by `kiln up`)"
                    .into(),
            )),
            Access::ProjectIngest
                if self.kind == TokenKind::Project && self.scopes.contains(&Scope::Ingest) =>
            {
                Ok(())
            }
            Access::ProjectIngest => Err(ApiError::Forbidden(
                "events are written with a project token that has the \"ingest\" scope; create one with `kiln token create --project SLUG --scope ingest`"
                    .into(),
            )),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Authenticator {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    cache: Arc<Mutex<HashMap<String, CacheEntry>>>,
}

#[derive(Clone)]
struct CacheEntry {
    token: Option<TokenRecord>,
    fetched: Instant,
    touched_at: Option<Millis>,
}

/// The token in `Authorization: Bearer …` or the seed's `X-OM-BUILD-TOKEN`.
fn presented_token(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| {
            ApiError::Unauthorized("the Authorization header is not valid text".into())
        })?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::Unauthorized("use `Authorization: Bearer <token>`".into()))?;
        return Ok(Some(token.trim()));
    }
    if let Some(value) = headers.get("x-om-build-token") {
        return Ok(Some(value.to_str().map_err(|_| {
            ApiError::Unauthorized("the X-OM-BUILD-TOKEN header is not valid text".into())
        })?));
    }
    Ok(None)
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = presented_token(headers)?.ok_or_else(|| {
            ApiError::Unauthorized(
                "a token is required: send `Authorization: Bearer <token>`".into(),
            )
        })?;
        self.authenticate_token(token).await
    }

    /// Resolves a token presented outside the HTTP headers (the Socket.IO handshake's
    /// `auth.token`), with the same cache and rules as `authenticate`.
    pub async fn authenticate_token(&self, token: &str) -> Result<Caller, ApiError> {
        let token_hash = hash_token(token);
        let cached = self
            .cache
            .lock()
            .expect("auth cache lock")
            .get(&token_hash)
            .filter(|entry| entry.fetched.elapsed() < CACHE_TTL)
            .cloned();
        let entry = match cached {
            Some(entry) => entry,
            None => {
                let token = self.store.token_by_hash(&token_hash).await?;
                let entry = CacheEntry {
                    token,
                    fetched: Instant::now(),
                    touched_at: None,
                };
                let mut cache = self.cache.lock().expect("auth cache lock");
                if cache.len() >= CACHE_MAX_ENTRIES {
                    cache.retain(|_, entry| entry.fetched.elapsed() < CACHE_TTL);
                }
                let previous_touch = cache.get(&token_hash).and_then(|e| e.touched_at);
                let entry = CacheEntry {
                    touched_at: previous_touch,
                    ..entry
                };
                cache.insert(token_hash.clone(), entry.clone());
                entry
            }
        };
        let record = entry
            .token
            .ok_or_else(|| ApiError::Unauthorized("unknown token; check KILN_TOKEN".into()))?;
        if record.revoked_at.is_some() {
            return Err(ApiError::Unauthorized(
                "this token was revoked; ask a project admin for a new one".into(),
            ));
        }
        self.touch(&token_hash, record.id, entry.touched_at);
        Ok(Caller {
            token_id: record.id,
            kind: record.kind,
            project_id: record.project_id,
            scopes: record.scopes,
        })
    }

    /// Records use without delaying the request, at most once per interval.
    fn touch(&self, token_hash: &str, token_id: i64, touched_at: Option<Millis>) {
        let now = self.clock.now();
        if touched_at.is_some_and(|at| now.saturating_sub(at) < TOUCH_INTERVAL_MS) {
            return;
        }
        if let Some(entry) = self
            .cache
            .lock()
            .expect("auth cache lock")
            .get_mut(token_hash)
        {
            entry.touched_at = Some(now);
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(error) = store.touch_token(token_id, now).await {
                tracing::warn!(token_id, %error, "could not record token use");
            }
        });
    }

    /// Forgets cached lookups, so a revocation applies at once on this replica.
    pub fn forget_all(&self) {
        self.cache.lock().expect("auth cache lock").clear();
    }
}
