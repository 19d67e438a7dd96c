//! Build reports: one build summed up — project, number, branch, commit, status, times,
//! trigger, stages with durations, failed jobs with the last lines of their logs, the
//! test summary, artifacts with their digests, and its newest deployment — as JSON,
//! and the same rendered as Markdown with every user-supplied string escaped.

use std::fmt::Write;

use kiln_core::JobState;
use kiln_core::junit::TestStatus;
use kiln_protocol::{BuildReport, ReportFailure, ReportStage, ReportTests, ReportTrigger};
use kiln_store::BuildRecord;

use crate::AppState;
use crate::service_error::ServiceError;
use crate::wire::artifact_file;

/// Log lines a failure shows.
pub(crate) const FAILURE_LOG_LINES: usize = 20;
/// The end of a log read for those lines; a longer line is cut.
const LOG_TAIL_BYTES: i64 = 64 * 1024;
/// Failed tests a report names.
const FAILED_TESTS_LISTED: i64 = 20;

/// The report of `build`.
pub(crate) async fn report(
    state: &AppState,
    build: &BuildRecord,
) -> Result<BuildReport, ServiceError> {
    let store = &state.store;
    let first = store.first_events(&[build.id]).await?;
    let data = first.first().and_then(|event| event.payload.get("data"));
    let text = |key: &str| {
        data.and_then(|data| data.get(key))
            .and_then(|value| value.as_str())
            .map(str::to_owned)
    };
    let trigger = ReportTrigger {
        cause: text("trigger").unwrap_or_else(|| "reported".to_owned()),
        by: text("by"),
        retry_of: text("retryOf"),
    };
    let mut failures = Vec::new();
    for job in store.jobs_of_build(build.id).await? {
        if job.state != JobState::Failed {
            continue;
        }
        let offset = (job.log_size - LOG_TAIL_BYTES).max(0);
        let (bytes, _) = store.read_log(job.id, offset, LOG_TAIL_BYTES).await?;
        failures.push(ReportFailure {
            step: job.step,
            exit_code: job.exit_code,
            reason: job.reason,
            last_log_lines: last_lines(&bytes, offset > 0, FAILURE_LOG_LINES),
        });
    }
    let counts = store.build_test_counts(build.id).await?;
    let tests = if counts.is_empty() {
        None
    } else {
        let of = |status: TestStatus| {
            counts
                .iter()
                .filter(|(s, _, _)| *s == status)
                .map(|(_, n, _)| *n)
                .sum::<u64>()
        };
        let failed_cases = store
            .build_test_results(build.id, true, FAILED_TESTS_LISTED)
            .await?;
        Some(ReportTests {
            total: counts.iter().map(|(_, n, _)| *n).sum(),
            passed: of(TestStatus::Passed),
            failed: of(TestStatus::Failed),
            errored: of(TestStatus::Error),
            skipped: of(TestStatus::Skipped),
            failures: failed_cases.into_iter().map(|record| record.key).collect(),
        })
    };
    let artifacts = store
        .build_artifacts(build.id)
        .await?
        .iter()
        .map(artifact_file)
        .collect();
    let deployment = match store
        .deployments_of_build(build.id)
        .await?
        .into_iter()
        .max_by_key(|d| d.id)
    {
        Some(record) => {
            let current = store
                .environment(build.project_id, &record.environment)
                .await?
                .and_then(|environment| environment.current_deployment_id);
            Some(crate::services::deployments::dto(
                state,
                &build.project_slug,
                &record,
                current,
            ))
        }
        None => None,
    };
    let build_state = &build.state;
    Ok(BuildReport {
        project: build.project_slug.clone(),
        run_id: build_state.run_id.to_string(),
        number: build.number,
        branch: build_state.branch.clone(),
        commit: build_state.commit.clone(),
        status: build_state.status.as_str().to_owned(),
        message: build_state.message.clone(),
        started_at: build_state.started_at.to_rfc3339(),
        ended_at: build_state.ended_at.map(|at| at.to_rfc3339()),
        duration_ms: build_state.duration_ms,
        trigger,
        stages: build_state
            .stages
            .iter()
            .map(|stage| ReportStage {
                name: stage.name.as_str().to_owned(),
                status: stage.status.as_str().to_owned(),
                started_at: stage.started_at.to_rfc3339(),
                ended_at: stage.ended_at.map(|at| at.to_rfc3339()),
                duration_ms: stage.duration_ms,
                message: stage.message.clone(),
            })
            .collect(),
        failures,
        tests,
        artifacts,
        deployment,
    })
}

/// The last `count` lines of a log's end, as text without terminal escapes or other
/// control characters. `cut` says the bytes start mid-log, so their first line is
/// partial and dropped.
fn last_lines(bytes: &[u8], cut: bool, count: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if cut && lines.len() > 1 {
        lines.remove(0);
    }
    let start = lines.len().saturating_sub(count);
    lines[start..].iter().map(|line| plain(line)).collect()
}

/// `line` without ANSI escape sequences and control characters (tabs kept).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte in @..~; other escapes: one more char.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// `text` as literal Markdown inline text: the characters Markdown or HTML would read
/// are backslash-escaped and line breaks become spaces, so a branch or a message cannot
/// add links, images, HTML, headings or table cells.
pub(crate) fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '~' | '#' | '&' | '!' | '('
            | ')' | '{' | '}' | '+' | '-' | '.' | '=' | '"' | '\'' | ':' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// `lines` in a fenced code block whose fence no line can close.
fn code_block(out: &mut String, lines: &[String]) {
    let longest_run = lines
        .iter()
        .flat_map(|line| line.split(|c| c != '`'))
        .map(str::len)
        .max()
        .unwrap_or(0);
    let fence = "`".repeat(longest_run.max(2) + 1);
    let _ = writeln!(out, "{fence}text");
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "{fence}");
}

fn duration(ms: Option<i64>) -> String {
    match ms {
        None => "—".to_owned(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// The report as Markdown.
pub(crate) fn markdown(report: &BuildReport) -> String {
    let e = |text: &str| escape_markdown(text);
    let or_dash = |text: &Option<String>| text.as_deref().map(e).unwrap_or_else(|| "—".into());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# {} build #{}: {}\n",
        e(&report.project),
        report.number,
        e(&report.status)
    );
    let _ = writeln!(out, "- **Run:** {}", e(&report.run_id));
    let _ = writeln!(out, "- **Branch:** {}", or_dash(&report.branch));
    let _ = writeln!(out, "- **Commit:** {}", or_dash(&report.commit));
    let _ = writeln!(out, "- **Started:** {}", e(&report.started_at));
    let _ = writeln!(out, "- **Ended:** {}", or_dash(&report.ended_at));
    let _ = writeln!(out, "- **Duration:** {}", duration(report.duration_ms));
    let mut trigger = e(&report.trigger.cause);
    if let Some(by) = &report.trigger.by {
        let _ = write!(trigger, " by {}", e(by));
    }
    if let Some(of) = &report.trigger.retry_of {
        let _ = write!(trigger, " of {}", e(of));
    }
    let _ = writeln!(out, "- **Trigger:** {trigger}");
    if let Some(message) = &report.message {
        let _ = writeln!(out, "- **Message:** {}", e(message));
    }
    let _ = writeln!(out, "\n## Stages\n");
    if report.stages.is_empty() {
        let _ = writeln!(out, "No stages.");
    } else {
        let _ = writeln!(out, "| Stage | Status | Duration |\n|---|---|---|");
        for stage in &report.stages {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                e(&stage.name),
                e(&stage.status),
                duration(stage.duration_ms)
            );
        }
    }
    if !report.failures.is_empty() {
        let _ = writeln!(out, "\n## Failures");
        for failure in &report.failures {
            let _ = write!(out, "\n### {}", e(&failure.step));
            if let Some(code) = failure.exit_code {
                let _ = write!(out, " (exit code {code})");
            }
            let _ = writeln!(out, "\n");
            if let Some(reason) = &failure.reason {
                let _ = writeln!(out, "{}\n", e(reason));
            }
            if failure.last_log_lines.is_empty() {
                let _ = writeln!(out, "The log is empty.");
            } else {
                code_block(&mut out, &failure.last_log_lines);
            }
        }
    }
    if let Some(tests) = &report.tests {
        let _ = writeln!(
            out,
            "\n## Tests\n\n{} tests: {} passed, {} failed, {} errored, {} skipped.",
            tests.total, tests.passed, tests.failed, tests.errored, tests.skipped
        );
        for name in &tests.failures {
            let _ = writeln!(out, "- {}", e(name));
        }
    }
    let _ = writeln!(out, "\n## Artifacts\n");
    if report.artifacts.is_empty() {
        let _ = writeln!(out, "No artifacts.");
    } else {
        let _ = writeln!(
            out,
            "| Path | Size | MD5 | SHA-256 | SHA-512 |\n|---|---|---|---|---|"
        );
        for file in &report.artifacts {
            let _ = writeln!(
                out,
                "| {} | {} | `{}` | `{}` | `{}` |",
                e(&file.path),
                file.size,
                file.md5.as_deref().unwrap_or("(computing)"),
                file.sha256,
                file.sha512.as_deref().unwrap_or("(computing)")
            );
        }
    }
    let _ = writeln!(out, "\n## Deployment\n");
    match &report.deployment {
        None => {
            let _ = writeln!(out, "Not deployed.");
        }
        Some(deployment) => {
            let _ = writeln!(
                out,
                "- environment: {}\n- status: {}{}\n- step: {}",
                e(&deployment.environment),
                e(&deployment.status),
                if deployment.current {
                    " (live now)"
                } else {
                    ""
                },
                e(&deployment.step)
            );
            if let Some(url) = &deployment.url {
                let _ = writeln!(out, "- URL: <{}>", url.replace(['<', '>', ' '], ""));
            }
            if let Some(message) = &deployment.message {
                let _ = writeln!(out, "- message: {}", e(message));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_in_user_strings_is_escaped() {
        assert_eq!(
            escape_markdown("[x](http://e.io) <b>|*_#\nnext"),
            "\\[x\\]\\(http\\://e\\.io\\) \\<b\\>\\|\\*\\_\\# next"
        );
    }

    #[test]
    fn log_lines_are_the_last_ones_without_escapes() {
        let log = b"partial\none\n\x1b[31mtwo\x1b[0m\nthree\n";
        assert_eq!(last_lines(log, true, 2), vec!["two", "three"]);
        assert_eq!(last_lines(log, false, 10)[0], "partial");
        assert_eq!(last_lines(log, true, 10)[0], "one");
    }

    #[test]
    fn a_code_block_outlasts_the_backticks_it_holds() {
        let mut out = String::new();
        code_block(&mut out, &["a ```` b".to_owned()]);
        assert!(out.starts_with("`````text\n"), "{out}");
        assert!(out.ends_with("\n`````\n"), "{out}");
    }
}
