//! `AdminForm`, the extractor behind every project-admin form: the preamble the settings
//! forms share (who calls, the administered project of the path's `{slug}`, the page's
//! own path parameters, the form body and its CSRF token), and the rule that a refused
//! action shows its page again.

use std::collections::HashMap;
use std::future::Future;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::response::{IntoResponse, Response};
use kiln_store::Project;

use super::ProjectSettingsPage;
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::services::members::administered_project;
use crate::web::form::{FormFields, fields};
use crate::web::{PageError, PageResult};

/// The page an admin form belongs to: what it reads from the path besides `{slug}`,
/// and how it shows a refusal of the form's action.
pub(crate) trait AdminPage: Send + Sync + Sized + 'static {
    /// Parses the page's own path parameters (a webhook endpoint's `{id}`); runs after
    /// the admin check and before the CSRF check.
    fn from_path(params: &HashMap<String, String>) -> Result<Self, PageError>;

    /// The page again, with the reason for `refusal` and its status.
    fn refused(
        &self,
        state: &AppState,
        caller: &Caller,
        project: &Project,
        refusal: ApiError,
    ) -> impl Future<Output = PageResult> + Send;
}

/// A form posted by a project admin, extracted in the order the handlers always
/// checked it: the path and the body as axum reads them (its own rejections), then
/// `administered_project` (404 for a project the caller may not see, 403 naming the
/// admin role otherwise), then the page's path parameters, then the `_csrf` field.
/// A refused preamble is answered as an error page with the refusal's status.
pub(crate) struct AdminForm<P: AdminPage = ProjectSettingsPage> {
    pub state: AppState,
    pub caller: Caller,
    pub project: Project,
    pub page: P,
    pub form: FormFields,
}

impl<P: AdminPage> FromRequest<AppState> for AdminForm<P> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let Extension(caller) = Extension::<Caller>::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let body = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        let slug = params.get("slug").map(String::as_str).unwrap_or_default();
        let project = administered_project(state, &caller, slug)
            .await
            .map_err(|refusal| PageError(refusal.into()).into_response())?;
        let page = P::from_path(&params).map_err(IntoResponse::into_response)?;
        let form = fields(&body);
        form.check_csrf(&caller)
            .map_err(IntoResponse::into_response)?;
        Ok(AdminForm {
            state: state.clone(),
            caller,
            project,
            page,
            form,
        })
    }
}

impl<P: AdminPage> AdminForm<P> {
    /// Runs the form's action: its answer on success; a refusal (4xx) shows the page
    /// again with the reason; a server error is an error page.
    pub async fn run(
        self,
        action: impl AsyncFnOnce(&AdminForm<P>) -> Result<Response, ApiError>,
    ) -> PageResult {
        match action(&self).await {
            Ok(response) => Ok(response),
            Err(error) if error.status().is_server_error() => Err(PageError(error)),
            Err(error) => {
                let AdminForm {
                    state,
                    caller,
                    project,
                    page,
                    ..
                } = &self;
                page.refused(state, caller, project, error).await
            }
        }
    }
}
