//! A project's repository and branches as a service: the repository checked against the
//! policy and stored with its credentials sealed, branches set and deleted (the API and
//! the settings page call these).

use crate::AppState;
use crate::auth::Caller;
use crate::scheduler::check_branch;
use crate::service_error::ServiceError;
use crate::services::accounts::audit;
use kiln_core::FieldError;
use kiln_protocol::{RepoSettings, SetBranch};
use kiln_store::BranchRecord;

pub(crate) fn check_repo(repo: &str) -> Result<(), ServiceError> {
    let repo_ok = !repo.trim().is_empty()
        && repo.len() <= kiln_core::limits::MAX_REPO_URL_LEN
        && !repo.starts_with('-')
        && !repo.chars().any(|c| c.is_control());
    if !repo_ok {
        return Err(FieldError::new(
            "repo",
            "must be a git URL (https://…, ssh://…, git@host:path, file://…) or a local path, at most 2048 characters, not starting with '-'",
        )
        .into());
    }
    Ok(())
}

/// Sets the repository, default branch and concurrency limit from
/// `{repo, defaultBranch?, maxConcurrency?}` (the API and the settings page).
pub(crate) async fn set_repo_settings(
    state: &AppState,
    project: &kiln_store::Project,
    settings: &RepoSettings,
) -> Result<kiln_store::Project, ServiceError> {
    let repo = match &settings.repo {
        None => None,
        Some(repo) => {
            // Checked as stored: trimmed first, so " --upload-pack=…" cannot pass.
            let repo = repo.trim();
            check_repo(repo)?;
            state
                .scheduler
                .repo_access(repo)
                .await
                .map_err(|message| crate::scheduler::refused_repo(&project.slug, message))?;
            Some(repo.to_owned())
        }
    };
    let default_branch = match &settings.default_branch {
        None => project.default_branch.clone(),
        Some(branch) => {
            check_branch("defaultBranch", branch.trim())?;
            branch.trim().to_owned()
        }
    };
    let max_concurrency = match settings.max_concurrency {
        None => project.max_concurrency,
        Some(None) => None,
        Some(Some(limit)) => Some(
            Some(limit)
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| {
                    FieldError::new(
                        "maxConcurrency",
                        "must be a whole number from 1 to 10000, or null for no limit",
                    )
                })?,
        ),
    };
    // Credentials leave the URL: the URL is stored without them, they are stored
    // encrypted, and git receives them through its environment.
    let (repo, credentials) = match repo {
        Some(repo) => {
            let (bare, credentials) = kiln_core::net::split_credentials(&repo);
            (Some(bare), credentials)
        }
        None => (None, None),
    };
    let sealed = match credentials {
        Some((username, password)) => {
            let plain = serde_json::to_vec(&kiln_protocol::RepoCredentials { username, password })
                .map_err(|error| ServiceError::Unavailable(error.to_string()))?;
            Some(
                state
                    .config
                    .secret_key
                    .seal(
                        &crate::secret_box::repo_credentials_context(project.id),
                        &plain,
                    )
                    .map_err(ServiceError::Unavailable)?,
            )
        }
        // The same URL again (the settings form's empty field) keeps the credentials.
        None if repo.is_some() && repo == project.repo => project.repo_credentials.clone(),
        None => None,
    };
    state
        .store
        .set_project_repo(
            project.id,
            repo.as_deref(),
            &default_branch,
            max_concurrency,
        )
        .await?;
    state
        .store
        .set_repo_credentials(project.id, repo.as_deref(), sealed.as_deref())
        .await?;
    state
        .store
        .project_by_id(project.id)
        .await?
        .ok_or_else(|| ServiceError::NotFound("project not found".into()))
}

/// The repository as shown: its URL, with `***@` where credentials are kept.
pub(crate) fn shown_repo(project: &kiln_store::Project) -> Option<String> {
    let repo = project.repo.as_deref()?;
    Some(match (&project.repo_credentials, repo.split_once("://")) {
        (Some(_), Some((scheme, rest))) => format!("{scheme}://***@{rest}"),
        _ => crate::scheduler::git::mask_url(repo),
    })
}

/// Adds or updates a branch from `{name, priority?, autoBuild?}` (the API and the
/// settings page).
pub(crate) async fn set_branch(
    state: &AppState,
    caller: &Caller,
    project: &kiln_store::Project,
    request: &SetBranch,
) -> Result<BranchRecord, ServiceError> {
    let name = request.name.trim().to_owned();
    check_branch("name", &name)?;
    let priority = match request.priority {
        None => None,
        Some(priority) => Some(Some(priority).filter(|p| (1..=10).contains(p)).ok_or_else(
            || FieldError::new("priority", "must be a whole number from 1 (highest) to 10"),
        )?),
    };
    let auto_build = request.auto_build.unwrap_or(false);
    let branch = state
        .store
        .upsert_branch(project.id, &name, priority, auto_build, state.clock.now())
        .await?;
    audit(state, caller, "branch.set", Some(project.id), Some(&name)).await;
    Ok(branch)
}

/// Deletes a branch (the API and the settings page).
pub(crate) async fn delete_branch(
    state: &AppState,
    caller: &Caller,
    project: &kiln_store::Project,
    name: &str,
) -> Result<(), ServiceError> {
    let slug = &project.slug;
    state
        .store
        .delete_branch(project.id, name)
        .await
        .map_err(|error| match error {
            kiln_store::StoreError::NotFound(_) => {
                ServiceError::NotFound(format!("branch '{name}' not found in project '{slug}'"))
            }
            other => other.into(),
        })?;
    audit(state, caller, "branch.remove", Some(project.id), Some(name)).await;
    Ok(())
}
