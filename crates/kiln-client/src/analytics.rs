//! A project's analytics and predicted build durations.

use kiln_protocol::{PipelinePrediction, ProjectAnalytics};

use super::{Client, ClientError, encode};

/// The query of `analytics` and `prediction`: each set parameter is sent.
fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let set: Vec<String> = pairs
        .iter()
        .filter_map(|(key, value)| value.map(|value| format!("{key}={}", encode(value))))
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!("?{}", set.join("&"))
    }
}

impl Client {
    /// `from`/`to`: dates (`2026-11-01`) or RFC 3339 times; the server defaults to the
    /// last 30 days.
    pub async fn analytics(
        &self,
        project: &str,
        from: Option<&str>,
        to: Option<&str>,
        branch: Option<&str>,
        pipeline: Option<&str>,
    ) -> Result<ProjectAnalytics, ClientError> {
        let query = query(&[
            ("from", from),
            ("to", to),
            ("branch", branch),
            ("pipeline", pipeline),
        ]);
        self.get(&format!(
            "/api/v1/projects/{}/analytics{query}",
            encode(project)
        ))
        .await
    }

    /// What a build of the pipeline is expected to take (`at`: its start, default now).
    pub async fn prediction(
        &self,
        project: &str,
        branch: Option<&str>,
        pipeline: Option<&str>,
        at: Option<&str>,
    ) -> Result<PipelinePrediction, ClientError> {
        let query = query(&[("branch", branch), ("pipeline", pipeline), ("at", at)]);
        self.get(&format!(
            "/api/v1/projects/{}/prediction{query}",
            encode(project)
        ))
        .await
    }
}
