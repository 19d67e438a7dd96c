//! Who is calling: bearer tokens resolved to a `Caller`, and the access rules routes use.
//!
//! Token lookups are cached for `CACHE_TTL` so ingest does not pay a query per request;
//! a revocation takes effect at once on the replica that revoked and within the TTL on
//! the others. `last_used_at` is written at most once per `TOUCH_INTERVAL` per token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use kiln_core::token::{Scope, TokenKind, hash_token};
use kiln_core::{Millis, Role};
use kiln_store::Store;

use crate::clock::Clock;
use crate::error::ApiError;

const CACHE_TTL: Duration = Duration::from_secs(5);
const TOUCH_INTERVAL_MS: i64 = 60_000;
const CACHE_MAX_ENTRIES: usize = 10_000;

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The credential: a token id, or minus the session id for dashboard sessions (so
    /// per-credential limits and revocation keep one key space).
    pub token_id: i64,
    pub kind: TokenKind,
    /// A project token's project.
    pub project_id: Option<i64>,
    pub scopes: Vec<Scope>,
    /// The user a session or a user token acts as.
    pub user_id: Option<i64>,
    /// The admin token, or a user who is an instance admin.
    pub instance_admin: bool,
    /// A user's roles, by project id.
    pub roles: Arc<HashMap<i64, Role>>,
    /// Set for dashboard sessions: unsafe requests must echo it in `X-CSRF-Token`.
    pub csrf_token: Option<String>,
    /// The token's name (what its creator called it); `None` for dashboard sessions.
    pub token_name: Option<String>,
}

/// The access a route requires before its handler runs. Project-level checks (is this
/// build in a project the caller may read?) happen in the handler via `Caller::can_read`,
/// `can_write` and `can_admin`, which answer "not found" for projects the caller may not
/// see at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token needed (health checks, login).
    Public,
    /// Instance administrators only.
    InstanceAdmin,
    /// A project token with the `ingest` scope.
    ProjectIngest,
    /// Viewer: any caller that may read the project concerned (project tokens of it,
    /// its members, instance admins).
    ProjectRead,
    /// Developer: triggering, retrying and cancelling builds (members with the developer
    /// or admin role, ingest tokens of the project, instance admins).
    ProjectWrite,
    /// Project admin: members, tokens, settings (members with the admin role, instance
    /// admins).
    ProjectAdmin,
    /// A user: a dashboard session or a personal token.
    User,
    /// Agent tokens only (`kiln agent`).
    Agent,
    /// A dashboard page: a user (session or personal token), like `User`, but an
    /// anonymous browser is sent to `/login` instead of answered 401, and refusals are
    /// HTML pages.
    Page,
    /// A dashboard page for instance admins (the Users page): like `Page`, and the user
    /// must be an instance admin.
    PageInstanceAdmin,
    /// `GET /metrics`: the scrape token (`--metrics-token`) as a bearer token, or, when
    /// none is set, a client on a loopback address. Checked by the guard alone; no
    /// other credential counts.
    Scrape,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::InstanceAdmin => "instance admin",
            Self::ProjectIngest => "project ingest token",
            Self::ProjectRead => "viewer (project read or ingest token, member, instance admin)",
            Self::ProjectWrite => {
                "developer (member with developer or admin role, project ingest token, instance admin)"
            }
            Self::ProjectAdmin => "project admin (member with admin role, instance admin)",
            Self::User => "user (session or personal token)",
            Self::Agent => "agent token",
            Self::Page => {
                "dashboard page: signed-in user (anonymous browsers are redirected to /login)"
            }
            Self::PageInstanceAdmin => {
                "dashboard page for instance admins: a signed-in instance admin (anonymous browsers are redirected to /login)"
            }
            Self::Scrape => {
                "metrics scrape: the --metrics-token as a bearer token; without one set, loopback clients only"
            }
        }
    }

    /// The dashboard's kinds: an anonymous browser goes to `/login`, refusals are pages.
    pub fn is_page(self) -> bool {
        matches!(self, Self::Page | Self::PageInstanceAdmin)
    }
}

impl Caller {
    /// A caller with no rights beyond its credential (the base the authenticator fills).
    fn base(token_id: i64, kind: TokenKind) -> Caller {
        Caller {
            token_id,
            kind,
            project_id: None,
            scopes: Vec::new(),
            user_id: None,
            instance_admin: kind == TokenKind::Admin,
            roles: Arc::new(HashMap::new()),
            csrf_token: None,
            token_name: None,
        }
    }

    /// What kind of caller this is, for logs: `user`, `admin`, `project` or `agent`.
    pub fn kind_name(&self) -> &'static str {
        if self.user_id.is_some() {
            "user"
        } else {
            match self.kind {
                TokenKind::Admin => "admin",
                TokenKind::Project => "project",
                TokenKind::Agent => "agent",
                TokenKind::User => "user",
            }
        }
    }

    pub fn is_admin(&self) -> bool {
        self.instance_admin
    }

    /// The caller's role in a project, if a user.
    pub fn role(&self, project_id: i64) -> Option<Role> {
        self.roles.get(&project_id).copied()
    }

    /// Whether the caller may read the project's builds. Callers that may not are told
    /// "not found", so other projects' existence does not leak.
    pub fn can_read(&self, project_id: i64) -> bool {
        self.is_admin()
            || self.role(project_id).is_some()
            || (self.project_id == Some(project_id)
                && (self.scopes.contains(&Scope::Read) || self.scopes.contains(&Scope::Ingest)))
    }

    /// Whether the caller may trigger, retry and cancel the project's builds.
    pub fn can_write(&self, project_id: i64) -> bool {
        self.is_admin()
            || self.role(project_id) >= Some(Role::Developer)
            || (self.project_id == Some(project_id) && self.scopes.contains(&Scope::Ingest))
    }

    /// Whether the caller administers the project.
    pub fn can_admin(&self, project_id: i64) -> bool {
        self.is_admin() || self.role(project_id) == Some(Role::Admin)
    }

    /// Who did it, for the audit log.
    pub fn actor(&self) -> String {
        match self.user_id {
            Some(user) => format!("user:{user}"),
            None => format!("token:{}", self.token_id),
        }
    }

    pub fn check(&self, access: Access) -> Result<(), ApiError> {
        if self.kind == TokenKind::Agent && !matches!(access, Access::Agent | Access::Public) {
            return Err(ApiError::Forbidden(
                "agent tokens work only on the agent endpoints (/api/v1/agent/…); use a project or admin token here"
                    .into(),
            ));
        }
        match access {
            // Project-level checks happen in the handler, which knows the project.
            Access::Public | Access::ProjectRead | Access::ProjectWrite | Access::ProjectAdmin => {
                Ok(())
            }
            // The guard decides scrapes before it looks for a caller.
            Access::Scrape => Err(ApiError::Forbidden(
                "/metrics takes the scrape token (--metrics-token), not a user's or a project's"
                    .into(),
            )),
            Access::Agent if self.kind == TokenKind::Agent => Ok(()),
            Access::Agent => Err(ApiError::Forbidden(
                "this endpoint is for build agents: use an agent token (`kiln token create --agent`)"
                    .into(),
            )),
            Access::User | Access::Page if self.user_id.is_some() => Ok(()),
            Access::User | Access::Page => Err(ApiError::Forbidden(
                "this belongs to users: log in (POST /api/v1/session) or use a personal token (`kiln login` prints one; POST /api/v1/me/tokens makes more)"
                    .into(),
            )),
            Access::PageInstanceAdmin if self.user_id.is_some() && self.is_admin() => Ok(()),
            Access::PageInstanceAdmin if self.user_id.is_some() => Err(ApiError::Forbidden(
                "this page is for instance admins; ask one to make the change".into(),
            )),
            Access::PageInstanceAdmin => Err(ApiError::Forbidden(
                "this belongs to users: log in (the dashboard's login page) with an instance admin's account"
                    .into(),
            )),
            Access::InstanceAdmin if self.is_admin() => Ok(()),
            Access::InstanceAdmin => Err(ApiError::Forbidden(
                "this needs an instance admin: KILN_ADMIN_TOKEN, the admin token printed by `kiln up`, or a user created with --instance-admin"
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

/// Who made a request, in the words a person reads: the user (email and name) for a
/// session or a personal token, and the token (id and name) for any token. Recorded in
/// a triggered build's `build_queued` event and in a cancel's message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Requester {
    pub email: Option<String>,
    pub name: Option<String>,
    /// The token used, `(id, name)`; `None` for a dashboard session.
    pub token: Option<(i64, String)>,
    /// `dashboard` for a session (the dashboard's forms and scripts), `api` for a token.
    pub via: &'static str,
}

impl Requester {
    /// How a deployment records who asked: the user's email, else the token's name.
    pub fn label(&self) -> Option<String> {
        self.email
            .clone()
            .or_else(|| self.token.as_ref().map(|(_, name)| name.clone()))
    }

    /// The requester behind `caller` (one read of the user, when there is one).
    pub async fn of(
        store: &dyn Store,
        caller: &Caller,
    ) -> Result<Requester, kiln_store::StoreError> {
        let user = match caller.user_id {
            Some(user_id) => store.user_by_id(user_id).await?,
            None => None,
        };
        let session = caller.csrf_token.is_some();
        Ok(Requester {
            email: user.as_ref().map(|user| user.email.clone()),
            name: user.map(|user| user.name),
            token: (!session).then(|| {
                (
                    caller.token_id,
                    caller.token_name.clone().unwrap_or_default(),
                )
            }),
            via: if session { "dashboard" } else { "api" },
        })
    }

    /// "ada@example.com", "ada@example.com with token 'laptop' (#12)", "token 'ci' (#5)".
    pub fn words(&self) -> String {
        let token = self
            .token
            .as_ref()
            .map(|(id, name)| format!("token '{name}' (#{id})"));
        match (&self.email, token) {
            (Some(email), Some(token)) => format!("{email} with {token}"),
            (Some(email), None) => email.clone(),
            (None, Some(token)) => token,
            (None, None) => "an unknown caller".into(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Authenticator {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    cache: Arc<Mutex<HashMap<String, CacheEntry>>>,
}

/// A credential as last resolved: the caller, or why it is refused.
#[derive(Clone)]
struct CacheEntry {
    resolved: Result<Resolved, String>,
    fetched: Instant,
    touched_at: Option<Millis>,
}

#[derive(Clone)]
struct Resolved {
    caller: Caller,
    /// Tokens record their use; sessions do not.
    touch_token: Option<i64>,
    /// Sessions end at this time.
    expires_at: Option<Millis>,
}

/// The dashboard's session cookie.
pub(crate) const SESSION_COOKIE: &str = "kiln_session";

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

/// The session cookie's value, if the request carries one.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
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
        if let Some(token) = presented_token(headers)? {
            return self.authenticate_token(token).await;
        }
        if let Some(session) = session_cookie(headers) {
            return self
                .resolve(&format!("session:{}", hash_token(session)))
                .await;
        }
        Err(ApiError::Unauthorized(
            "a token is required: send `Authorization: Bearer <token>` (or log in: POST /api/v1/session)".into(),
        ))
    }

    /// Resolves a token presented outside the HTTP headers (the Socket.IO handshake's
    /// `auth.token`), with the same cache and rules as `authenticate`.
    pub async fn authenticate_token(&self, token: &str) -> Result<Caller, ApiError> {
        self.resolve(&format!("token:{}", hash_token(token))).await
    }

    async fn resolve(&self, key: &str) -> Result<Caller, ApiError> {
        let cached = self
            .cache
            .lock()
            .expect("auth cache lock")
            .get(key)
            .filter(|entry| entry.fetched.elapsed() < CACHE_TTL)
            .cloned();
        let entry = match cached {
            Some(entry) => entry,
            None => {
                let resolved = self.load(key).await?;
                let mut cache = self.cache.lock().expect("auth cache lock");
                if cache.len() >= CACHE_MAX_ENTRIES {
                    cache.retain(|_, entry| entry.fetched.elapsed() < CACHE_TTL);
                }
                let previous_touch = cache.get(key).and_then(|e| e.touched_at);
                let entry = CacheEntry {
                    resolved,
                    fetched: Instant::now(),
                    touched_at: previous_touch,
                };
                cache.insert(key.to_owned(), entry.clone());
                entry
            }
        };
        let resolved = entry.resolved.map_err(ApiError::Unauthorized)?;
        if resolved
            .expires_at
            .is_some_and(|expires| self.clock.now() >= expires)
        {
            return Err(ApiError::Unauthorized(
                "your session expired; log in again".into(),
            ));
        }
        if let Some(token_id) = resolved.touch_token {
            self.touch(key, token_id, entry.touched_at);
        }
        Ok(resolved.caller)
    }

    /// Reads a credential from the store: `Err(message)` is a refusal to cache.
    async fn load(&self, key: &str) -> Result<Result<Resolved, String>, ApiError> {
        if let Some(hash) = key.strip_prefix("session:") {
            let Some(session) = self.store.session_by_hash(hash).await? else {
                return Ok(Err("unknown session; log in again".into()));
            };
            if session.revoked_at.is_some() {
                return Ok(Err("this session was logged out; log in again".into()));
            }
            let mut caller = Caller::base(-session.id, TokenKind::User);
            caller.csrf_token = Some(session.csrf_token.clone());
            if let Err(refusal) = self.add_user(&mut caller, session.user_id).await? {
                return Ok(Err(refusal));
            }
            return Ok(Ok(Resolved {
                caller,
                touch_token: None,
                expires_at: Some(session.expires_at),
            }));
        }
        let hash = key.strip_prefix("token:").unwrap_or(key);
        let Some(record) = self.store.token_by_hash(hash).await? else {
            return Ok(Err("unknown token; check KILN_TOKEN".into()));
        };
        if record.revoked_at.is_some() {
            return Ok(Err(
                "this token was revoked; ask a project admin for a new one".into(),
            ));
        }
        let mut caller = Caller::base(record.id, record.kind);
        caller.token_name = Some(record.name.clone());
        caller.project_id = record.project_id;
        caller.scopes = record.scopes.clone();
        if record.kind == TokenKind::User {
            let Some(user_id) = record.user_id else {
                return Ok(Err("this user token has no user; create a new one".into()));
            };
            if let Err(refusal) = self.add_user(&mut caller, user_id).await? {
                return Ok(Err(refusal));
            }
        }
        Ok(Ok(Resolved {
            caller,
            touch_token: Some(record.id),
            expires_at: None,
        }))
    }

    /// Makes `caller` act as the user: their instance-admin flag and roles.
    async fn add_user(
        &self,
        caller: &mut Caller,
        user_id: i64,
    ) -> Result<Result<(), String>, ApiError> {
        let Some(user) = self.store.user_by_id(user_id).await? else {
            return Ok(Err("this account no longer exists".into()));
        };
        if user.disabled_at.is_some() {
            return Ok(Err("this account is disabled; ask an instance admin".into()));
        }
        let roles = self
            .store
            .memberships_of_user(user_id)
            .await?
            .into_iter()
            .map(|membership| (membership.project_id, membership.role))
            .collect();
        caller.user_id = Some(user.id);
        caller.instance_admin = user.instance_admin;
        caller.roles = Arc::new(roles);
        Ok(Ok(()))
    }

    /// Records use without delaying the request, at most once per interval.
    fn touch(&self, key: &str, token_id: i64, touched_at: Option<Millis>) {
        let now = self.clock.now();
        if touched_at.is_some_and(|at| now.saturating_sub(at) < TOUCH_INTERVAL_MS) {
            return;
        }
        if let Some(entry) = self.cache.lock().expect("auth cache lock").get_mut(key) {
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
