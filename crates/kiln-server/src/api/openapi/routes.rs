//! What the OpenAPI document says about each route of `api::route_list` that its path,
//! access and types cannot: the request body and answers (as `kiln-protocol` types or
//! media types), success statuses, query parameters and headers, errors beyond the ones
//! every route of its kind may answer, a summary, a tag, and links for stateful testing.

use kiln_core::limits::{MAX_HEARTBEAT_TIMEOUT_SECS, MAX_PAGE_LIMIT};
use kiln_protocol as wire;
use schemars::{JsonSchema, Schema, SchemaGenerator};

/// A schema of a wire type, written by the generator of its direction.
pub(super) type SchemaOf = fn(&mut SchemaGenerator) -> Schema;

pub(super) fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// A request or response body.
#[derive(Clone, Copy)]
pub(super) enum Body {
    /// `application/json` of a `kiln-protocol` type.
    Json(SchemaOf),
    /// `application/json`: one event or an array of them (`POST /api/v1/events`).
    OneOrMany(SchemaOf),
    /// Bytes of the given media type, described in words.
    Raw(&'static str),
    /// Server-sent events.
    EventStream,
    /// No body.
    Empty,
}

fn json<T: JsonSchema>() -> Body {
    Body::Json(schema_of::<T>)
}

/// One query parameter (or request header).
#[derive(Clone, Copy)]
pub(super) struct Param {
    pub(super) name: &'static str,
    pub(super) place: &'static str,
    pub(super) schema: ParamType,
    pub(super) required: bool,
    pub(super) description: &'static str,
}

#[derive(Clone, Copy)]
pub(super) enum ParamType {
    Text,
    /// An integer at least this.
    Integer(i64),
    /// An integer in this range.
    Range(i64, i64),
    Boolean,
    /// Milliseconds since the epoch or an RFC 3339 time.
    Instant,
}

/// What the document says about one route, besides its path and access.
pub(super) struct Operation {
    pub(super) summary: &'static str,
    pub(super) tag: &'static str,
    pub(super) request: Option<(Body, bool)>,
    pub(super) answers: Vec<(u16, &'static str, Body)>,
    pub(super) params: Vec<Param>,
    pub(super) errors: Vec<u16>,
    pub(super) links: Vec<Link>,
}

/// An OpenAPI link: what an answer names that another route takes (schemathesis's
/// stateful phase follows them: create, then read, change, delete what was created).
pub(super) struct Link {
    pub(super) status: u16,
    pub(super) method: &'static str,
    pub(super) path: &'static str,
    pub(super) parameters: &'static [(&'static str, &'static str)],
}

impl Operation {
    fn new(tag: &'static str, summary: &'static str) -> Self {
        Self {
            summary,
            tag,
            request: None,
            answers: Vec::new(),
            params: Vec::new(),
            errors: Vec::new(),
            links: Vec::new(),
        }
    }

    fn body(mut self, body: Body) -> Self {
        self.request = Some((body, true));
        self
    }

    /// A body that may be left empty (the route then takes its defaults).
    fn optional_body(mut self, body: Body) -> Self {
        self.request = Some((body, false));
        self
    }

    fn answer(mut self, status: u16, description: &'static str, body: Body) -> Self {
        self.answers.push((status, description, body));
        self
    }

    fn ok(self, body: Body) -> Self {
        self.answer(200, "OK", body)
    }

    fn created(self, body: Body) -> Self {
        self.answer(201, "Created", body)
    }

    fn no_content(self) -> Self {
        self.answer(204, "No content", Body::Empty)
    }

    fn param(
        mut self,
        place: &'static str,
        name: &'static str,
        schema: ParamType,
        required: bool,
        description: &'static str,
    ) -> Self {
        self.params.push(Param {
            name,
            place,
            schema,
            required,
            description,
        });
        self
    }

    fn query(self, name: &'static str, schema: ParamType, description: &'static str) -> Self {
        self.param("query", name, schema, false, description)
    }

    fn required_query(
        self,
        name: &'static str,
        schema: ParamType,
        description: &'static str,
    ) -> Self {
        self.param("query", name, schema, true, description)
    }

    /// Error statuses beyond the ones every route of its kind may answer.
    fn errors(mut self, statuses: &[u16]) -> Self {
        self.errors.extend_from_slice(statuses);
        self
    }

    /// The answer with `status` names what `method path` takes: each parameter with the
    /// runtime expression that finds it (`$response.body#/id`, `$request.path.slug`).
    fn link(
        mut self,
        status: u16,
        targets: &[(&'static str, &'static str)],
        parameters: &'static [(&'static str, &'static str)],
    ) -> Self {
        for (method, path) in targets {
            self.links.push(Link {
                status,
                method,
                path,
                parameters,
            });
        }
        self
    }

    /// `?agentId=&attempt=` of the agent's job routes.
    fn held_job(self) -> Self {
        self.required_query("agentId", ParamType::Integer(0), "the agent's id")
            .required_query(
                "attempt",
                ParamType::Integer(0),
                "the attempt of the job the agent holds",
            )
    }
}

use ParamType::{Boolean, Instant, Integer, Range, Text};

/// The description of every route of `api::route_list`; `None` for a route without one
/// (`tests/openapi.rs` fails then).
pub(super) fn describe(method: &str, path: &str) -> Option<Operation> {
    let project_query =
        |operation: Operation, description| operation.query("project", Text, description);
    let operation = match (method, path) {
        ("GET", "/healthz") => Operation::new("operations", "The server is up (and its storage engine)")
            .ok(json::<wire::Health>()),
        ("GET", "/readyz") => Operation::new("operations", "The database answers")
            .ok(json::<wire::Health>()),
        ("GET", "/metrics") => Operation::new("operations", "Prometheus metrics (text exposition format)")
            .ok(Body::Raw("text/plain")),
        ("GET", "/api/v1/openapi.json") => Operation::new("operations", "This document")
            .ok(Body::Raw("application/json")),

        // Deployments.
        ("GET", "/api/v1/projects/{slug}/environments") => Operation::new("deployments", "A project's environments and what each runs")
            .ok(json::<wire::EnvironmentList>()),
        ("GET", "/api/v1/projects/{slug}/deployments") => Operation::new("deployments", "A project's deployments, newest first")
            .query("environment", Text, "only this environment's")
            .query("before", Integer(1), "the page before this deployment id")
            .query("limit", Range(1, crate::services::deployments::MAX_PAGE), "at most this many")
            .ok(json::<wire::DeploymentList>()),
        ("POST", "/api/v1/projects/{slug}/environments/{environment}/deploy") => Operation::new("deployments", "Deploy a build (or the default branch's tip) to an environment")
            .optional_body(json::<wire::DeployRequest>())
            .created(json::<wire::DeployStarted>()),
        ("POST", "/api/v1/projects/{slug}/environments/{environment}/rollback") => Operation::new("deployments", "Deploy an earlier deployment's build again: a published site switches to its files at once (status deployed); a script deployment's step runs again in a build of its own (status queued, live when the step passes)")
            .body(json::<wire::RollbackRequest>())
            .created(json::<wire::DeploymentDto>()),
        ("GET", "/api/v1/deployments/{id}") => Operation::new("deployments", "One deployment")
            .ok(json::<wire::DeploymentDto>()),
        ("POST", "/api/v1/deployments/{id}/cancel") => Operation::new("deployments", "Cancel a deployment that has not finished")
            .ok(json::<wire::DeploymentDto>()),

        // Inbound hooks.
        ("POST", "/api/v1/hooks/github/{slug}") => Operation::new("hooks", "GitHub webhook (signed with X-Hub-Signature-256): ping, push")
            .param("header", "X-Hub-Signature-256", Text, false, "sha256=HMAC of the body with the project's GitHub secret")
            .param("header", "X-GitHub-Event", Text, false, "`ping`, `push`, …")
            .body(Body::Raw("application/json"))
            .ok(json::<wire::HookPing>())
            .created(json::<wire::TriggeredBuild>())
            .answer(202, "Accepted and ignored (another event, an unbuilt branch)", json::<wire::HookIgnored>())
            .errors(&[401, 404, 409, 413, 422]),
        ("PUT", "/api/v1/projects/{slug}/hooks/github") => Operation::new("hooks", "Set (or replace) the project's GitHub webhook secret")
            .created(json::<wire::GithubHookSecret>()),

        // Secrets.
        ("GET", "/api/v1/projects/{slug}/secrets") => Operation::new("secrets", "The project's secrets: names and times, never values")
            .ok(json::<wire::SecretList>()),
        ("PUT", "/api/v1/projects/{slug}/secrets/{name}") => Operation::new("secrets", "Write a secret (encrypted at rest, never shown again)")
            .body(json::<wire::SetSecret>())
            .ok(json::<wire::SecretDto>())
            .link(
                200,
                &[("DELETE", "/api/v1/projects/{slug}/secrets/{name}")],
                &[("slug", "$request.path.slug"), ("name", "$response.body#/name")],
            ),
        ("DELETE", "/api/v1/projects/{slug}/secrets/{name}") => Operation::new("secrets", "Delete a secret")
            .no_content(),

        // Accounts.
        ("POST", "/api/v1/session") => Operation::new("accounts", "Log in: sets the session cookie, answers the CSRF token")
            .body(json::<wire::Login>())
            .ok(json::<wire::Session>())
            .errors(&[401, 429]),
        ("DELETE", "/api/v1/session") => Operation::new("accounts", "Log out (end the session of the cookie)")
            .no_content(),
        ("GET", "/api/v1/me") => Operation::new("accounts", "The caller's account and roles")
            .ok(json::<wire::Me>()),
        ("GET", "/api/v1/whoami") => Operation::new("accounts", "The calling credential and the projects it reaches")
            .ok(json::<wire::WhoAmI>()),
        ("POST", "/api/v1/me/password") => Operation::new("accounts", "Change the caller's password")
            .body(json::<wire::ChangePassword>())
            .no_content(),
        ("POST", "/api/v1/me/tokens") => Operation::new("accounts", "Create a personal API token (shown once)")
            .body(json::<wire::CreateNamedToken>())
            .created(json::<wire::CreatedToken>())
            .link(201, &[("DELETE", "/api/v1/me/tokens/{id}")], &[("id", "$response.body#/id")]),
        ("GET", "/api/v1/me/tokens") => Operation::new("accounts", "The caller's personal tokens")
            .ok(json::<wire::TokenList>()),
        ("DELETE", "/api/v1/me/tokens/{id}") => Operation::new("accounts", "Revoke a personal token")
            .ok(json::<wire::TokenDto>()),
        ("POST", "/api/v1/users") => Operation::new("accounts", "Create a user")
            .body(json::<wire::CreateUser>())
            .created(json::<wire::UserAnswer>())
            .link(
                201,
                &[
                    ("POST", "/api/v1/users/{user}/disable"),
                    ("POST", "/api/v1/users/{user}/enable"),
                    ("POST", "/api/v1/users/{user}/password"),
                ],
                &[("user", "$response.body#/user/id")],
            ),
        ("GET", "/api/v1/users") => Operation::new("accounts", "Every user")
            .ok(json::<wire::UserList>()),
        ("POST", "/api/v1/users/{user}/disable") => Operation::new("accounts", "Deactivate a user (sessions and tokens stop working)")
            .ok(json::<wire::UserAnswer>()),
        ("POST", "/api/v1/users/{user}/enable") => Operation::new("accounts", "Reactivate a user")
            .ok(json::<wire::UserAnswer>()),
        ("POST", "/api/v1/users/{user}/password") => Operation::new("accounts", "Reset a user's password (generated when absent) and end their sessions")
            .optional_body(json::<wire::ResetPassword>())
            .ok(json::<wire::UserAnswer>()),
        ("GET", "/api/v1/projects/{slug}/members") => Operation::new("members", "The project's members and roles")
            .ok(json::<wire::MemberList>()),
        ("PUT", "/api/v1/projects/{slug}/members/{user}") => Operation::new("members", "Give a user a role in the project")
            .body(json::<wire::SetMemberRole>())
            .ok(json::<wire::MemberDto>()),
        ("DELETE", "/api/v1/projects/{slug}/members/{user}") => Operation::new("members", "Remove a member")
            .no_content(),
        ("GET", "/api/v1/audit") => project_query(Operation::new("members", "The audit log, newest first"), "a project's entries (required unless an instance admin)")
            .query("before", Integer(1), "the page before this entry id")
            .query("limit", Range(1, 1000), "at most this many")
            .ok(json::<wire::AuditLog>()),

        // Projects and their tokens.
        ("POST", "/api/v1/projects") => Operation::new("projects", "Create a project")
            .body(json::<wire::CreateProject>())
            .created(json::<wire::ProjectDto>())
            .link(
                201,
                &[
                    ("GET", "/api/v1/projects/{slug}"),
                    ("POST", "/api/v1/projects/{slug}/tokens"),
                    ("PUT", "/api/v1/projects/{slug}/repo"),
                ],
                &[("slug", "$response.body#/slug")],
            ),
        ("GET", "/api/v1/projects") => Operation::new("projects", "The projects the caller may read")
            .ok(json::<wire::ProjectList>()),
        ("GET", "/api/v1/projects/{slug}") => Operation::new("projects", "One project")
            .ok(json::<wire::ProjectDto>()),
        ("POST", "/api/v1/projects/{slug}/tokens") => Operation::new("projects", "Create a project token (shown once)")
            .body(json::<wire::CreateToken>())
            .created(json::<wire::CreatedToken>())
            .link(
                201,
                &[("DELETE", "/api/v1/projects/{slug}/tokens/{id}")],
                &[("slug", "$request.path.slug"), ("id", "$response.body#/id")],
            ),
        ("GET", "/api/v1/projects/{slug}/tokens") => Operation::new("projects", "The project's tokens")
            .ok(json::<wire::TokenList>()),
        ("DELETE", "/api/v1/projects/{slug}/tokens/{id}") => Operation::new("projects", "Revoke a project token")
            .ok(json::<wire::TokenDto>()),
        ("GET", "/api/v1/projects/{slug}/public-status") => Operation::new("projects", "Whether the project's status page and badges are public")
            .ok(json::<wire::PublicStatusDto>()),
        ("PUT", "/api/v1/projects/{slug}/public-status") => Operation::new("projects", "Publish or withdraw the status page and badges")
            .body(json::<wire::SetPublicStatus>())
            .ok(json::<wire::PublicStatusDto>()),

        // Analytics and tests.
        ("GET", "/api/v1/projects/{slug}/analytics") => Operation::new("analytics", "Build statistics over a time range")
            .query("from", Instant, "start (milliseconds since the epoch or RFC 3339)")
            .query("to", Instant, "end")
            .query("branch", Text, "only this branch")
            .query("pipeline", Text, "only this pipeline")
            .ok(json::<wire::ProjectAnalytics>()),
        ("GET", "/api/v1/projects/{slug}/prediction") => Operation::new("analytics", "The predicted duration of the next build")
            .query("at", Instant, "predict for this time of day")
            .query("branch", Text, "only this branch's history")
            .query("pipeline", Text, "only this pipeline's history")
            .ok(json::<wire::PipelinePrediction>()),
        ("GET", "/api/v1/projects/{slug}/tests/flaky") => Operation::new("tests", "Tests that both passed and failed on one commit")
            .query("days", Range(1, 366), "over this many days")
            .ok(json::<wire::FlakyTests>()),
        ("GET", "/api/v1/projects/{slug}/tests/slowest") => Operation::new("tests", "The slowest tests")
            .query("days", Range(1, 366), "over this many days")
            .query("limit", Range(1, 1000), "at most this many")
            .ok(json::<wire::SlowestTests>()),
        ("GET", "/api/v1/projects/{slug}/tests/history") => Operation::new("tests", "One test's runs")
            .query("days", Range(1, 366), "over this many days")
            .query("key", Text, "the test's key (suite and name)")
            .ok(json::<wire::TestHistory>()),
        ("POST", "/api/v1/builds/{run_id}/tests") => Operation::new("tests", "Upload a JUnit XML report of a build")
            .body(Body::Raw("application/xml"))
            .created(json::<wire::TestReportStored>()),
        ("GET", "/api/v1/builds/{run_id}/tests") => Operation::new("tests", "A build's test results")
            .ok(json::<wire::BuildTests>()),

        // Events and builds.
        ("POST", "/api/v1/events") => Operation::new("events", "Ingest one event or a batch (one transaction)")
            .body(Body::OneOrMany(schema_of::<wire::EventPayload>))
            .answer(200, "Every event was ignored (heartbeats after the end)", json::<wire::IngestResponse>())
            .created(json::<wire::IngestResponse>())
            .link(
                201,
                &[
                    ("GET", "/api/v1/builds/{run_id}"),
                    ("GET", "/api/v1/builds/{run_id}/events"),
                    ("GET", "/api/v1/builds/{run_id}/status"),
                ],
                &[("run_id", "$response.body#/events/0/runId")],
            ),
        ("POST", "/api/internal/build-events") => Operation::new("events", "The seed's ingest route (same as POST /api/v1/events)")
            .body(Body::OneOrMany(schema_of::<wire::EventPayload>))
            .answer(200, "Every event was ignored (heartbeats after the end)", json::<wire::IngestResponse>())
            .created(json::<wire::IngestResponse>()),
        ("POST", "/api/v1/builds/{run_id}/log") => Operation::new("builds", "Append a chunk of a reported step's log (`kiln run`)")
            .required_query("offset", Integer(0), "the log's length so far (0 for the first chunk)")
            .query("step", Text, "the step (default `run`)")
            .query("end", Text, "end the log: `passed`, `failed` or `cancelled`")
            .query("exitCode", Range(0, 255), "the command's exit code")
            .body(Body::Raw("application/octet-stream"))
            .ok(json::<wire::ReportedLogAck>()),
        ("GET", "/api/v1/builds") => project_query(Operation::new("builds", "Builds, newest first"), "only this project's")
            .query("branch", Text, "only this branch")
            .query("status", Text, "only builds with this status")
            .query("before", Integer(1), "the page before this build")
            .query("limit", Range(1, MAX_PAGE_LIMIT), "at most this many")
            .ok(json::<wire::BuildList>()),
        ("GET", "/api/v1/builds/{run_id}") => Operation::new("builds", "One build with its stages")
            .ok(json::<wire::BuildDto>()),
        ("GET", "/api/v1/builds/{run_id}/metrics") => Operation::new("builds", "A build's custom metrics")
            .ok(json::<wire::BuildMetrics>()),
        ("GET", "/api/v1/builds/{run_id}/events") => Operation::new("builds", "A build's events after a cursor")
            .query("lastEventId", Integer(0), "the cursor: events after this id")
            .query("limit", Range(1, MAX_PAGE_LIMIT), "at most this many")
            .ok(json::<wire::EventPage>()),
        ("GET", "/api/v1/builds/{run_id}/status") => Operation::new("builds", "A build's status in brief")
            .ok(json::<wire::BuildStatusDto>()),
        ("GET", "/api/v1/status") => project_query(Operation::new("builds", "Is the project building right now (seed 000)"), "the project (required unless a project token)")
            .query("heartbeatTimeout", Range(1, MAX_HEARTBEAT_TIMEOUT_SECS), "seconds without an event after which a build counts as stale")
            .ok(json::<wire::ProjectStatus>()),
        ("GET", "/api/v1/builds/{run_id}/stream") => Operation::new("live", "A build's events, live (server-sent events)")
            .query("lastEventId", Integer(0), "resume after this event id")
            .query("coalesce", Text, "coalesce progress events within this many milliseconds")
            .param("header", "Last-Event-ID", Text, false, "resume after this event id")
            .ok(Body::EventStream)
            .errors(&[429]),
        ("GET", "/api/v1/stream") => project_query(Operation::new("live", "A project's events, live (server-sent events)"), "the project (required unless a project token)")
            .query("lastEventId", Integer(0), "resume after this event id")
            .query("coalesce", Text, "coalesce progress events within this many milliseconds")
            .param("header", "Last-Event-ID", Text, false, "resume after this event id")
            .ok(Body::EventStream)
            .errors(&[429]),

        // Artifacts, retention, comparison, reports.
        ("POST", "/api/v1/builds/{run_id}/artifacts") => Operation::new("artifacts", "Start or resume an artifact upload")
            .body(json::<wire::StartArtifactUpload>())
            .ok(json::<wire::ArtifactUpload>())
            .link(
                200,
                &[("PUT", "/api/v1/builds/{run_id}/artifacts/uploads/{upload_id}")],
                &[("run_id", "$request.path.run_id"), ("upload_id", "$response.body#/uploadId")],
            ),
        ("PUT", "/api/v1/builds/{run_id}/artifacts/uploads/{upload_id}") => Operation::new("artifacts", "Send an upload's bytes from an offset")
            .required_query("offset", Integer(0), "the bytes the server holds")
            .query("sha256", Text, "the whole file's SHA-256: completes an upload declared without one")
            .query("crc32", Text, "the whole file's CRC-32 (8 hex digits): completes an upload declared without a SHA-256, or is checked beside one")
            .body(Body::Raw("application/octet-stream"))
            .ok(json::<wire::ArtifactUpload>()),
        ("GET", "/api/v1/builds/{run_id}/artifacts") => Operation::new("artifacts", "A build's artifact manifest")
            .ok(json::<wire::ArtifactManifest>()),
        ("GET", "/api/v1/builds/{run_id}/artifacts/files/{path}") => Operation::new("artifacts", "One artifact file (`Range` and `If-None-Match` honoured)")
            .param("header", "Range", Text, false, "one byte range")
            .param("header", "If-None-Match", Text, false, "the file's ETag (its SHA-256)")
            .ok(Body::Raw("application/octet-stream"))
            .answer(206, "Partial content", Body::Raw("application/octet-stream"))
            .answer(304, "Not modified", Body::Empty)
            .errors(&[416]),
        ("GET", "/api/v1/builds/{run_id}/artifacts.tar.gz") => Operation::new("artifacts", "Every artifact of a build as one .tar.gz")
            .ok(Body::Raw("application/gzip")),
        ("POST", "/api/v1/builds/{run_id}/artifacts/verify") => Operation::new("artifacts", "Re-read a build's artifacts and check their digests")
            .ok(json::<wire::ArtifactVerification>()),
        ("GET", "/api/v1/projects/{slug}/artifact-retention") => Operation::new("retention", "The project's artifact retention rule")
            .ok(json::<wire::ArtifactRetention>()),
        ("PUT", "/api/v1/projects/{slug}/artifact-retention") => Operation::new("retention", "Set the artifact retention rule")
            .body(json::<wire::SetArtifactRetention>())
            .ok(json::<wire::ArtifactRetention>()),
        ("POST", "/api/v1/projects/{slug}/artifact-retention/run") => Operation::new("retention", "Apply the retention rule now (or say what it would delete)")
            .query("dryRun", Text, "`true` or `false`")
            .ok(json::<wire::RetentionRun>()),
        ("POST", "/api/v1/builds/{run_id}/pin") => Operation::new("retention", "Keep a build's artifacts whatever the rule")
            .ok(json::<wire::BuildPin>()),
        ("DELETE", "/api/v1/builds/{run_id}/pin") => Operation::new("retention", "Unpin a build")
            .ok(json::<wire::BuildPin>()),
        ("GET", "/api/v1/compare") => Operation::new("artifacts", "Compare two builds' artifacts")
            .required_query("a", Text, "a build's run id")
            .required_query("b", Text, "another build's run id")
            .ok(json::<wire::ArtifactComparison>()),
        ("POST", "/api/v1/builds/{run_id}/rebuild-verify") => Operation::new("artifacts", "Rebuild the same commit and compare the artifacts (each step held for 10 s from the agent that ran it, when another could take it)")
            .created(json::<wire::RebuildVerification>()),
        ("GET", "/api/v1/builds/{run_id}/verification") => Operation::new("artifacts", "A rebuild-to-verify and its comparison")
            .ok(json::<wire::RebuildVerification>()),
        ("GET", "/api/v1/builds/{run_id}/report.json") => Operation::new("reports", "A build's report")
            .ok(json::<wire::BuildReport>()),
        ("GET", "/api/v1/builds/{run_id}/report.md") => Operation::new("reports", "A build's report in Markdown")
            .ok(Body::Raw("text/markdown")),

        // Builds Kiln runs.
        ("PUT", "/api/v1/projects/{slug}/repo") => Operation::new("runs", "Set the project's repository, default branch and concurrency")
            .body(json::<wire::RepoSettings>())
            .ok(json::<wire::RepoDto>()),
        ("GET", "/api/v1/projects/{slug}/branches") => Operation::new("runs", "The branches Kiln builds")
            .ok(json::<wire::BranchList>()),
        ("POST", "/api/v1/projects/{slug}/branches") => Operation::new("runs", "Add or change a built branch")
            .body(json::<wire::SetBranch>())
            .ok(json::<wire::BranchDto>())
            .link(
                200,
                &[("DELETE", "/api/v1/projects/{slug}/branches/{name}")],
                &[("slug", "$request.path.slug"), ("name", "$response.body#/name")],
            ),
        ("DELETE", "/api/v1/projects/{slug}/branches/{name}") => Operation::new("runs", "Stop building a branch")
            .no_content(),
        ("POST", "/api/v1/projects/{slug}/builds") => Operation::new("runs", "Trigger a build (the default branch's tip when the body is empty)")
            .optional_body(json::<wire::TriggerBuild>())
            .created(json::<wire::TriggeredBuild>()),
        ("POST", "/api/v1/projects/{slug}/builds/{run_id}/retry") => Operation::new("runs", "Build the same commit again")
            .created(json::<wire::TriggeredBuild>()),
        ("POST", "/api/v1/projects/{slug}/builds/{run_id}/cancel") => Operation::new("runs", "Cancel a build")
            .ok(json::<wire::CancelledBuild>()),
        ("GET", "/api/v1/projects/{slug}/builds/{run_id}/jobs") => Operation::new("runs", "A build's jobs")
            .ok(json::<wire::JobList>()),
        ("GET", "/api/v1/projects/{slug}/builds/{run_id}/jobs/{job}/log") => Operation::new("runs", "A job's log from an offset (plain text; X-Kiln-Log-Offset, X-Kiln-Log-Size, X-Kiln-Job-State)")
            .query("offset", Integer(0), "from this byte")
            .query("limit", Range(1, super::super::jobs::MAX_LOG_PAGE), "at most this many bytes")
            .ok(Body::Raw("text/plain")),
        ("GET", "/api/v1/projects/{slug}/builds/{run_id}/jobs/{job}/log/stream") => Operation::new("live", "A job's log, live (server-sent events)")
            .query("offset", Integer(0), "from this byte")
            .param("header", "Last-Event-ID", Text, false, "resume from this byte offset")
            .ok(Body::EventStream)
            .errors(&[429]),
        ("GET", "/api/v1/queue") => Operation::new("fleet", "Jobs waiting or running, with why each waits")
            .ok(json::<wire::JobList>()),
        ("GET", "/api/v1/agents") => Operation::new("fleet", "Agents with their health and jobs")
            .ok(json::<wire::AgentList>()),
        ("POST", "/api/v1/agent-tokens") => Operation::new("fleet", "Create an agent token (shown once)")
            .body(json::<wire::CreateNamedToken>())
            .created(json::<wire::CreatedToken>())
            .link(201, &[("DELETE", "/api/v1/agent-tokens/{id}")], &[("id", "$response.body#/id")]),
        ("GET", "/api/v1/agent-tokens") => Operation::new("fleet", "Agent tokens")
            .ok(json::<wire::TokenList>()),
        ("DELETE", "/api/v1/agent-tokens/{id}") => Operation::new("fleet", "Revoke an agent token")
            .ok(json::<wire::TokenDto>()),

        // The agent protocol.
        ("POST", "/api/v1/agent/register") => Operation::new("agent", "Register an agent")
            .body(json::<wire::RegisterAgent>())
            .ok(json::<wire::AgentRegistered>()),
        ("POST", "/api/v1/agent/claim") => Operation::new("agent", "Claim a job (long poll)")
            .body(json::<wire::ClaimRequest>())
            .ok(json::<wire::AgentJob>())
            .no_content(),
        ("POST", "/api/v1/agent/heartbeat") => Operation::new("agent", "Renew the agent's leases; learn what to stop")
            .body(json::<wire::AgentHeartbeat>())
            .ok(json::<wire::HeartbeatReply>()),
        ("POST", "/api/v1/agent/jobs/{id}/log") => Operation::new("agent", "Append a chunk of a job's log")
            .held_job()
            .required_query("offset", Integer(0), "the log's length so far")
            .body(Body::Raw("application/octet-stream"))
            .ok(json::<wire::LogAck>()),
        ("POST", "/api/v1/agent/jobs/{id}/tests") => Operation::new("agent", "Upload a JUnit XML report the step wrote")
            .held_job()
            .body(Body::Raw("application/xml"))
            .created(json::<wire::TestReportStored>()),
        ("POST", "/api/v1/agent/jobs/{id}/artifacts") => Operation::new("agent", "Start or resume an artifact upload of the job")
            .held_job()
            .body(json::<wire::StartArtifactUpload>())
            .ok(json::<wire::ArtifactUpload>()),
        ("PUT", "/api/v1/agent/jobs/{id}/artifacts/uploads/{upload_id}") => Operation::new("agent", "Send an upload's bytes from an offset")
            .held_job()
            .required_query("offset", Integer(0), "the bytes the server holds")
            .query("sha256", Text, "the whole file's SHA-256: completes an upload declared without one")
            .query("crc32", Text, "the whole file's CRC-32 (8 hex digits): completes an upload declared without a SHA-256, or is checked beside one")
            .body(Body::Raw("application/octet-stream"))
            .ok(json::<wire::ArtifactUpload>()),
        ("GET", "/api/v1/agent/jobs/{id}/artifacts/{sha256}") => Operation::new("agent", "Download an artifact of the job's build by SHA-256")
            .held_job()
            .param("header", "Range", Text, false, "one byte range")
            .ok(Body::Raw("application/octet-stream"))
            .answer(206, "Partial content", Body::Raw("application/octet-stream"))
            .answer(304, "Not modified", Body::Empty)
            .errors(&[416]),
        ("POST", "/api/v1/agent/jobs/{id}/finish") => Operation::new("agent", "Report a job's outcome")
            .body(json::<wire::FinishJob>())
            .no_content(),

        // Notifications.
        ("GET", "/api/v1/notifications") => Operation::new("notifications", "The caller's inbox, newest first")
            .query("unread", Boolean, "only unread (true) or read (false)")
            .query("archived", Boolean, "the archive instead of the inbox")
            .query("before", Integer(1), "the page before this notification id")
            .query("limit", Range(1, super::super::notifications::MAX_LIMIT), "at most this many")
            .ok(json::<wire::NotificationList>()),
        ("POST", "/api/v1/notifications/{id}/read") => Operation::new("notifications", "Mark a notification read")
            .ok(json::<wire::NotificationDto>()),
        ("POST", "/api/v1/notifications/read-all") => Operation::new("notifications", "Mark the whole inbox read")
            .ok(json::<wire::MarkedRead>()),
        ("POST", "/api/v1/notifications/{id}/archive") => Operation::new("notifications", "Archive a notification")
            .ok(json::<wire::NotificationDto>()),
        ("GET", "/api/v1/notifications/stats") => Operation::new("notifications", "Unread counts, in total and by kind")
            .ok(json::<wire::NotificationStats>()),
        ("GET", "/api/v1/notifications/mutes") => Operation::new("notifications", "The caller's mutes")
            .ok(json::<wire::MuteList>()),
        ("POST", "/api/v1/notifications/mutes") => Operation::new("notifications", "Mute a project, a kind, or both")
            .body(json::<wire::MuteTarget>())
            .created(json::<wire::MuteDto>())
            .link(
                201,
                &[("DELETE", "/api/v1/notifications/mutes")],
                &[("project", "$response.body#/project"), ("kind", "$response.body#/kind")],
            ),
        ("DELETE", "/api/v1/notifications/mutes") => Operation::new("notifications", "Unmute (target as a JSON body or as query parameters)")
            .query("project", Text, "the muted project")
            .query("kind", Text, "the muted kind")
            .optional_body(json::<wire::MuteTarget>())
            .ok(json::<wire::MuteRemoved>()),

        // Webhooks.
        ("POST", "/api/v1/projects/{slug}/webhooks") => Operation::new("webhooks", "Create a webhook endpoint (its secret shown once)")
            .body(json::<wire::CreateWebhook>())
            .created(json::<wire::WebhookWithSecret>())
            .link(
                201,
                &[
                    ("GET", "/api/v1/projects/{slug}/webhooks/{id}"),
                    ("PATCH", "/api/v1/projects/{slug}/webhooks/{id}"),
                    ("DELETE", "/api/v1/projects/{slug}/webhooks/{id}"),
                    ("POST", "/api/v1/projects/{slug}/webhooks/{id}/rotate-secret"),
                    ("POST", "/api/v1/projects/{slug}/webhooks/{id}/test"),
                    ("GET", "/api/v1/projects/{slug}/webhooks/{id}/deliveries"),
                ],
                &[("slug", "$request.path.slug"), ("id", "$response.body#/id")],
            ),
        ("GET", "/api/v1/projects/{slug}/webhooks") => Operation::new("webhooks", "The project's webhook endpoints")
            .ok(json::<wire::WebhookList>()),
        ("GET", "/api/v1/projects/{slug}/webhooks/{id}") => Operation::new("webhooks", "One endpoint")
            .ok(json::<wire::WebhookDto>()),
        ("PATCH", "/api/v1/projects/{slug}/webhooks/{id}") => Operation::new("webhooks", "Change an endpoint (only the fields given)")
            .body(json::<wire::UpdateWebhook>())
            .ok(json::<wire::WebhookDto>()),
        ("DELETE", "/api/v1/projects/{slug}/webhooks/{id}") => Operation::new("webhooks", "Delete an endpoint")
            .no_content(),
        ("POST", "/api/v1/projects/{slug}/webhooks/{id}/rotate-secret") => Operation::new("webhooks", "Give an endpoint a new secret (shown once)")
            .ok(json::<wire::WebhookWithSecret>()),
        ("POST", "/api/v1/projects/{slug}/webhooks/{id}/test") => Operation::new("webhooks", "Queue a test delivery")
            .answer(202, "Queued", json::<wire::WebhookTestQueued>())
            .link(
                202,
                &[(
                    "POST",
                    "/api/v1/projects/{slug}/webhooks/{id}/deliveries/{delivery}/redeliver",
                )],
                &[
                    ("slug", "$request.path.slug"),
                    ("id", "$request.path.id"),
                    ("delivery", "$response.body#/deliveryId"),
                ],
            ),
        ("GET", "/api/v1/projects/{slug}/webhooks/{id}/deliveries") => Operation::new("webhooks", "An endpoint's deliveries, newest first")
            .query("limit", Range(1, super::super::webhooks::MAX_LOG_LIMIT), "at most this many")
            .ok(json::<wire::WebhookDeliveryList>()),
        ("POST", "/api/v1/projects/{slug}/webhooks/{id}/deliveries/{delivery}/redeliver") => Operation::new("webhooks", "Send a delivery again")
            .answer(202, "Queued", json::<wire::WebhookDeliveryDto>()),
        ("GET", "/api/v1/webhooks/status") => project_query(Operation::new("webhooks", "Delivery status of the endpoints the caller may read"), "only this project's")
            .ok(json::<wire::WebhookStatusDto>()),
        _ => return None,
    };
    Some(operation)
}
