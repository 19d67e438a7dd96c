//! Renders a [`Pipeline`] as `.kiln.yml` text that parses back to an equal pipeline.

use std::fmt::Write as _;

use super::{Pipeline, Step, format_duration};

pub(super) fn render(pipeline: &Pipeline) -> String {
    let mut out = String::new();
    if let Some(priority) = pipeline.priority {
        let _ = writeln!(out, "priority: {priority}");
    }
    if let Some(timeout) = pipeline.timeout {
        let _ = writeln!(out, "timeout: {}", format_duration(timeout));
    }
    render_env(&mut out, "", &pipeline.env);
    out.push_str("steps:\n");
    let default_timeout = pipeline.timeout.unwrap_or_else(Step::default_timeout);
    for step in &pipeline.steps {
        let _ = writeln!(out, "  - name: {}", quote(step.name.as_str()));
        if let [command] = step.run.as_slice() {
            let _ = writeln!(out, "    run: {}", quote(command));
        } else {
            out.push_str("    run:\n");
            for command in &step.run {
                let _ = writeln!(out, "      - {}", quote(command));
            }
        }
        list(
            &mut out,
            "    ",
            "depends_on",
            step.depends_on.iter().map(|name| name.as_str()),
        );
        render_env(&mut out, "    ", &step.env);
        if step.timeout != default_timeout {
            let _ = writeln!(out, "    timeout: {}", format_duration(step.timeout));
        }
        if let Some(cache) = &step.cache {
            out.push_str("    cache:\n");
            list(
                &mut out,
                "      ",
                "key_files",
                cache.key_files.iter().map(String::as_str),
            );
            list(
                &mut out,
                "      ",
                "paths",
                cache.paths.iter().map(String::as_str),
            );
        }
        let branches: Vec<String> = step.branches.iter().map(ToString::to_string).collect();
        list(
            &mut out,
            "    ",
            "branches",
            branches.iter().map(String::as_str),
        );
        list(
            &mut out,
            "    ",
            "agents",
            step.agents.iter().map(|label| label.as_str()),
        );
        if let Some(image) = &step.image {
            let _ = writeln!(out, "    image: {}", quote(image));
        }
        if step.network {
            out.push_str("    network: true\n");
        }
        if let Some(retry) = &step.retry {
            let on: Vec<String> = retry.on.iter().map(ToString::to_string).collect();
            out.push_str("    retry:\n      automatic:\n");
            list(&mut out, "        ", "on", on.iter().map(String::as_str));
            let _ = writeln!(out, "        limit: {}", retry.limit);
        }
        list(
            &mut out,
            "    ",
            "artifacts",
            step.artifacts.iter().map(String::as_str),
        );
        if step.artifacts_required {
            out.push_str("    artifacts_required: true\n");
        }
        if !step.needs_artifacts {
            out.push_str("    needs_artifacts: false\n");
        }
        list(
            &mut out,
            "    ",
            "test_reports",
            step.test_reports.iter().map(String::as_str),
        );
        if !step.secrets.is_empty() {
            out.push_str("    secrets:\n");
            for secret in &step.secrets {
                if secret.branches.is_empty() {
                    let _ = writeln!(out, "      - {}", quote(secret.name.as_str()));
                } else {
                    let _ = writeln!(out, "      - name: {}", quote(secret.name.as_str()));
                    let branches: Vec<String> =
                        secret.branches.iter().map(ToString::to_string).collect();
                    list(
                        &mut out,
                        "        ",
                        "branches",
                        branches.iter().map(String::as_str),
                    );
                }
            }
        }
        if let Some(deploy) = &step.deploy {
            out.push_str("    deploy:\n");
            let _ = writeln!(
                out,
                "      environment: {}",
                quote(deploy.environment.as_str())
            );
            match &deploy.target {
                crate::deployments::DeployTarget::Publish(dir) => {
                    let dir = if dir.is_empty() { "." } else { dir.as_str() };
                    let _ = writeln!(out, "      publish: {}", quote(dir));
                }
                crate::deployments::DeployTarget::Url(url) => {
                    let _ = writeln!(out, "      url: {}", quote(url));
                }
            }
        }
    }
    out
}

fn render_env(out: &mut String, indent: &str, env: &std::collections::BTreeMap<String, String>) {
    if env.is_empty() {
        return;
    }
    let _ = writeln!(out, "{indent}env:");
    for (name, value) in env {
        let _ = writeln!(out, "{indent}  {name}: {}", quote(value));
    }
}

fn list<'a>(out: &mut String, indent: &str, key: &str, items: impl Iterator<Item = &'a str>) {
    let items: Vec<String> = items.map(quote).collect();
    if !items.is_empty() {
        let _ = writeln!(out, "{indent}{key}: [{}]", items.join(", "));
    }
}

/// A YAML double-quoted scalar: safe for any text, whatever it looks like unquoted.
fn quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            // YAML's printable set excludes C0 and C1 controls, DEL and the BOM.
            c if c.is_control() || c == '\u{feff}' => {
                let _ = write!(quoted, "\\u{:04x}", u32::from(c));
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}
