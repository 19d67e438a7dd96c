//! From `.kiln.yml` text to a validated [`Pipeline`]: keys, types, bounds, references, cycles.
//!
//! Validation stops at the first problem in file order and reports it with the line of the
//! offending key or value, its field path and what to change.

use std::collections::BTreeMap;
use std::time::Duration;

use super::yaml::{Entry, Node, NodeKind};
use super::{
    AutomaticRetry, BranchPattern, CacheSpec, DEFAULT_RETRY_LIMIT, Pipeline, PipelineError,
    Priority, RetryOn, SecretUse, Step, parse_duration,
};
use crate::deployments::{
    DeploySpec, DeployTarget, EnvironmentName, is_http_url, normalize_publish_dir,
};
use crate::ids::{AgentLabel, SecretName, StageName};
use crate::limits;

const TOP_LEVEL_KEYS: &[&str] = &["priority", "env", "timeout", "steps"];
const STEP_KEYS: &[&str] = &[
    "name",
    "run",
    "depends_on",
    "env",
    "timeout",
    "cache",
    "branches",
    "agents",
    "image",
    "network",
    "retry",
    "artifacts",
    "artifacts_required",
    "needs_artifacts",
    "test_reports",
    "secrets",
    "deploy",
];
const DEPLOY_KEYS: &[&str] = &["environment", "publish", "url"];
const SECRET_KEYS: &[&str] = &["name", "branches"];
const CACHE_KEYS: &[&str] = &["key_files", "paths"];
const RETRY_KEYS: &[&str] = &["automatic"];
const AUTOMATIC_RETRY_KEYS: &[&str] = &["on", "limit"];

/// Keys other CI systems use, and the Kiln key that means the same.
const FOREIGN_KEYS: &[(&str, &str)] = &[
    ("script", "run"),
    ("command", "run"),
    ("commands", "run"),
    ("needs", "depends_on"),
    ("depends", "depends_on"),
    ("dependencies", "depends_on"),
    ("variables", "env"),
    ("environment", "env"),
    ("timeout_in_minutes", "timeout"),
    ("label", "agents"),
    ("labels", "agents"),
    ("tags", "agents"),
    ("runs-on", "agents"),
    ("only", "branches"),
    ("branch", "branches"),
    ("when", "branches"),
    ("container", "image"),
    ("key", "key_files"),
    ("path", "paths"),
];

fn error_at(
    line: usize,
    column: usize,
    field: impl Into<String>,
    message: impl Into<String>,
) -> PipelineError {
    PipelineError {
        line: Some(line),
        column: Some(column),
        field: field.into(),
        message: message.into(),
    }
}

fn error_on(node: &Node, field: impl Into<String>, message: impl Into<String>) -> PipelineError {
    error_at(node.line, node.column, field, message)
}

/// The dependencies as written, with their positions, for the checks that need every step.
struct WrittenDependency {
    name: String,
    line: usize,
    column: usize,
}

pub(super) fn parse_pipeline(text: &str) -> Result<Pipeline, PipelineError> {
    if text.len() > limits::MAX_PIPELINE_FILE_BYTES {
        return Err(PipelineError {
            line: None,
            column: None,
            field: String::new(),
            message: format!(
                "the file is {} KiB; the limit is {} KiB: move long scripts into files in the repository and run them from the step",
                text.len().div_ceil(1024),
                limits::MAX_PIPELINE_FILE_BYTES / 1024
            ),
        });
    }
    let Some(root) = super::yaml::parse_document(text)? else {
        return Err(PipelineError {
            line: None,
            column: None,
            field: String::new(),
            message: "the file is empty: add a 'steps:' list (see docs/pipeline.md)".into(),
        });
    };
    let entries = mapping(&root, "", "a mapping with a 'steps:' list")?;
    check_keys(entries, TOP_LEVEL_KEYS, "")?;

    let mut priority = None;
    let mut env = BTreeMap::new();
    let mut timeout = None;
    let mut steps_node = None;
    for entry in entries {
        let field = entry.key.as_str();
        match field {
            "priority" => priority = Some(parse_priority(&entry.value, field)?),
            "env" => env = parse_env(&entry.value, field)?,
            "timeout" => timeout = Some(parse_timeout(&entry.value, field)?),
            "steps" => steps_node = Some(entry),
            _ => unreachable!("check_keys refused other keys"),
        }
    }
    let Some(steps_entry) = steps_node else {
        return Err(error_on(
            &root,
            "steps",
            "is missing: add a 'steps:' list with at least one step that has a 'name' and a 'run'",
        ));
    };
    let steps_node = &steps_entry.value;
    let NodeKind::Sequence(step_nodes) = &steps_node.kind else {
        return Err(error_at(
            steps_entry.key_line,
            steps_entry.key_column,
            "steps",
            format!(
                "must be a list of steps (each starting with '- name: ...'), found {}",
                steps_node.describe()
            ),
        ));
    };
    if step_nodes.is_empty() {
        return Err(error_on(
            steps_node,
            "steps",
            "is empty: add at least one step with a 'name' and a 'run'",
        ));
    }
    if step_nodes.len() > limits::MAX_PIPELINE_STEPS {
        return Err(error_on(
            &step_nodes[limits::MAX_PIPELINE_STEPS],
            "steps",
            format!(
                "has {} steps; the limit is {}: merge small steps or split the work into several projects",
                step_nodes.len(),
                limits::MAX_PIPELINE_STEPS
            ),
        ));
    }

    let default_timeout = timeout.unwrap_or_else(Step::default_timeout);
    let mut steps = Vec::with_capacity(step_nodes.len());
    let mut written_dependencies = Vec::with_capacity(step_nodes.len());
    for (index, step_node) in step_nodes.iter().enumerate() {
        let (step, dependencies) = parse_step(step_node, index, default_timeout, &steps)?;
        steps.push(step);
        written_dependencies.push(dependencies);
    }
    check_dependencies(&steps, &written_dependencies)?;
    check_cycles(&steps, &written_dependencies)?;
    Ok(Pipeline::new_unchecked(priority, env, timeout, steps))
}

fn parse_step(
    node: &Node,
    index: usize,
    default_timeout: Duration,
    earlier_steps: &[Step],
) -> Result<(Step, Vec<WrittenDependency>), PipelineError> {
    let prefix = format!("steps[{index}]");
    let entries = mapping(node, &prefix, "a step: a mapping with 'name' and 'run'")?;
    check_keys(entries, STEP_KEYS, &prefix)?;
    let find = |key: &str| entries.iter().find(|entry| entry.key == key);

    let name_field = format!("{prefix}.name");
    let Some(name_entry) = find("name") else {
        return Err(error_on(
            node,
            name_field,
            "is missing: every step needs a 'name' (for example 'name: test')",
        ));
    };
    let raw_name = scalar(&name_entry.value, &name_field)?;
    let name = StageName::parse(&name_field, raw_name)
        .map_err(|error| error_on(&name_entry.value, name_field.clone(), error.message))?;
    if let Some(other) = earlier_steps.iter().position(|step| step.name == name) {
        return Err(error_on(
            &name_entry.value,
            name_field,
            format!("'{name}' is already the name of steps[{other}]: step names must be unique"),
        ));
    }

    let run_field = format!("{prefix}.run");
    let Some(run_entry) = find("run") else {
        return Err(error_on(
            node,
            run_field,
            format!("is missing: step '{name}' needs a 'run' with a command or a list of commands"),
        ));
    };
    let mut run = Vec::new();
    for (command, command_node, field) in
        string_list(&run_entry.value, &run_field, limits::MAX_STEP_COMMANDS)?
    {
        if command.trim().is_empty() {
            return Err(error_on(
                command_node,
                field,
                "is an empty command: remove it or write the command",
            ));
        }
        if command.len() > limits::MAX_STEP_COMMAND_BYTES {
            return Err(error_on(
                command_node,
                field,
                format!(
                    "is longer than {} KiB: put the script in a file in the repository and run that",
                    limits::MAX_STEP_COMMAND_BYTES / 1024
                ),
            ));
        }
        run.push(command.to_owned());
    }

    let mut step = Step::with_commands(name, run);
    step.timeout = default_timeout;
    let mut dependencies = Vec::new();
    for entry in entries {
        let field = format!("{prefix}.{}", entry.key);
        let value = &entry.value;
        match entry.key.as_str() {
            "name" | "run" => {}
            "depends_on" => {
                for (dependency, dependency_node, item_field) in
                    string_list(value, &field, limits::MAX_PIPELINE_STEPS)?
                {
                    let dependency = dependency.trim();
                    if dependencies
                        .iter()
                        .any(|written: &WrittenDependency| written.name == dependency)
                    {
                        return Err(error_on(
                            dependency_node,
                            item_field,
                            format!("lists '{dependency}' twice: keep one"),
                        ));
                    }
                    dependencies.push(WrittenDependency {
                        name: dependency.to_owned(),
                        line: dependency_node.line,
                        column: dependency_node.column,
                    });
                }
            }
            "env" => step.env = parse_env(value, &field)?,
            "timeout" => step.timeout = parse_timeout(value, &field)?,
            "cache" => step.cache = Some(parse_cache(value, &field)?),
            "branches" => {
                for (raw, pattern_node, item_field) in
                    string_list(value, &field, limits::MAX_STEP_LIST_ENTRIES)?
                {
                    let pattern = BranchPattern::parse(raw)
                        .map_err(|message| error_on(pattern_node, item_field, message))?;
                    step.branches.push(pattern);
                }
            }
            "agents" => {
                for (raw, label_node, item_field) in
                    string_list(value, &field, limits::MAX_STEP_LIST_ENTRIES)?
                {
                    let label = AgentLabel::parse(&item_field, raw)
                        .map_err(|error| error_on(label_node, item_field, error.message))?;
                    if !step.agents.contains(&label) {
                        step.agents.push(label);
                    }
                }
            }
            "image" => step.image = Some(parse_image(value, &field)?),
            "network" => step.network = parse_bool(value, &field)?,
            "retry" => step.retry = Some(parse_retry(value, &field)?),
            "artifacts" => {
                for (raw, glob_node, item_field) in
                    string_list(value, &field, limits::MAX_STEP_LIST_ENTRIES)?
                {
                    step.artifacts
                        .push(relative_path(raw, glob_node, item_field)?);
                }
            }
            "artifacts_required" => step.artifacts_required = parse_bool(value, &field)?,
            "needs_artifacts" => step.needs_artifacts = parse_bool(value, &field)?,
            "test_reports" => {
                for (raw, glob_node, item_field) in
                    string_list(value, &field, limits::MAX_STEP_LIST_ENTRIES)?
                {
                    step.test_reports
                        .push(relative_path(raw, glob_node, item_field)?);
                }
            }
            "secrets" => step.secrets = parse_secrets(value, &field)?,
            "deploy" => {
                let deploy = parse_deploy(value, &field)?;
                if let Some(other) = earlier_steps.iter().find(|other| {
                    other
                        .deploy
                        .as_ref()
                        .is_some_and(|spec| spec.environment == deploy.environment)
                }) {
                    return Err(error_on(
                        value,
                        format!("{field}.environment"),
                        format!(
                            "step '{}' already deploys '{}': one step per environment deploys",
                            other.name, deploy.environment
                        ),
                    ));
                }
                step.deploy = Some(deploy);
            }
            _ => unreachable!("check_keys refused other keys"),
        }
    }
    step.depends_on = dependencies
        .iter()
        .map(|written| {
            // Validated against the step names in `check_dependencies`; parsing here only
            // normalises (trims) the text.
            StageName::parse("depends_on", &written.name).unwrap_or_else(|_| step.name.clone())
        })
        .collect();
    Ok((step, dependencies))
}

fn check_dependencies(
    steps: &[Step],
    written: &[Vec<WrittenDependency>],
) -> Result<(), PipelineError> {
    for (index, dependencies) in written.iter().enumerate() {
        for (position, dependency) in dependencies.iter().enumerate() {
            let field = format!("steps[{index}].depends_on[{position}]");
            if dependency.name == steps[index].name.as_str() {
                return Err(error_at(
                    dependency.line,
                    dependency.column,
                    field,
                    format!(
                        "step '{}' depends on itself: remove it from its depends_on",
                        dependency.name
                    ),
                ));
            }
            if !steps
                .iter()
                .any(|step| step.name.as_str() == dependency.name)
            {
                let names: Vec<&str> = steps.iter().map(|step| step.name.as_str()).collect();
                let hint = match closest(&dependency.name, &names) {
                    Some(close) => format!("did you mean '{close}'? "),
                    None => String::new(),
                };
                return Err(error_at(
                    dependency.line,
                    dependency.column,
                    field,
                    format!(
                        "names '{}', which is not a step of this pipeline: {hint}the steps are {}",
                        dependency.name,
                        quoted_list(&names)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Depth-first search; the first back edge found (visiting steps in file order) is reported
/// on the dependency entry that closes the cycle.
fn check_cycles(steps: &[Step], written: &[Vec<WrittenDependency>]) -> Result<(), PipelineError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let index_of = |name: &str| {
        steps
            .iter()
            .position(|step| step.name.as_str() == name)
            .expect("dependencies were checked")
    };
    let mut marks = vec![Mark::New; steps.len()];
    for start in 0..steps.len() {
        if marks[start] != Mark::New {
            continue;
        }
        // The path from `start`, each with the position of the next dependency to visit.
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        marks[start] = Mark::OnPath;
        while let Some((step, next)) = path.last_mut() {
            let step = *step;
            let Some(dependency) = written[step].get(*next) else {
                marks[step] = Mark::Done;
                path.pop();
                continue;
            };
            let position = *next;
            *next += 1;
            let target = index_of(&dependency.name);
            match marks[target] {
                Mark::Done => {}
                Mark::New => {
                    marks[target] = Mark::OnPath;
                    path.push((target, 0));
                }
                Mark::OnPath => {
                    let from = path
                        .iter()
                        .position(|(on_path, _)| *on_path == target)
                        .expect("a step marked on the path is on it");
                    // The path runs from dependents to dependencies; show it in run order.
                    let mut cycle: Vec<&str> = path[from..]
                        .iter()
                        .map(|(on_path, _)| steps[*on_path].name.as_str())
                        .collect();
                    cycle.push(steps[target].name.as_str());
                    cycle.reverse();
                    return Err(error_at(
                        dependency.line,
                        dependency.column,
                        format!("steps[{step}].depends_on[{position}]"),
                        format!(
                            "the steps depend on each other in a cycle ({}), so none of them could ever start: remove one of these dependencies",
                            cycle.join(" → ")
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn mapping<'a>(node: &'a Node, field: &str, expected: &str) -> Result<&'a [Entry], PipelineError> {
    match &node.kind {
        NodeKind::Mapping(entries) => Ok(entries),
        _ => Err(error_on(
            node,
            field,
            format!("must be {expected}, found {}", node.describe()),
        )),
    }
}

fn check_keys(entries: &[Entry], allowed: &[&str], prefix: &str) -> Result<(), PipelineError> {
    for entry in entries {
        if allowed.contains(&entry.key.as_str()) {
            continue;
        }
        let field = if prefix.is_empty() {
            entry.key.clone()
        } else {
            format!("{prefix}.{}", entry.key)
        };
        let suggestion = FOREIGN_KEYS
            .iter()
            .find(|(foreign, _)| *foreign == entry.key)
            .map(|(_, kiln)| *kiln)
            .filter(|kiln| allowed.contains(kiln))
            .or_else(|| closest(&entry.key, allowed));
        let hint = match suggestion {
            Some(key) => format!("did you mean '{key}'? "),
            None => String::new(),
        };
        return Err(error_at(
            entry.key_line,
            entry.key_column,
            field,
            format!(
                "unknown key '{}': {hint}the keys allowed here are {}",
                entry.key,
                quoted_list(allowed)
            ),
        ));
    }
    Ok(())
}

/// The text of a single value; numbers and booleans are taken as written.
fn scalar<'a>(node: &'a Node, field: &str) -> Result<&'a str, PipelineError> {
    match &node.kind {
        _ if node.is_null() => Err(error_on(node, field, "has no value: write one")),
        NodeKind::Scalar { text, .. } => Ok(text),
        _ => Err(error_on(
            node,
            field,
            format!("must be a single value, found {}", node.describe()),
        )),
    }
}

/// A single value or a list of values, each with its node and field path.
fn string_list<'a>(
    node: &'a Node,
    field: &str,
    max_entries: usize,
) -> Result<Vec<(&'a str, &'a Node, String)>, PipelineError> {
    match &node.kind {
        NodeKind::Scalar { .. } => Ok(vec![(scalar(node, field)?, node, field.to_owned())]),
        NodeKind::Sequence(items) => {
            if items.len() > max_entries {
                return Err(error_on(
                    node,
                    field,
                    format!("has {} entries; the limit is {max_entries}", items.len()),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    let item_field = format!("{field}[{index}]");
                    Ok((scalar(item, &item_field)?, item, item_field))
                })
                .collect()
        }
        NodeKind::Mapping(_) => Err(error_on(
            node,
            field,
            "must be a value or a list of values, found a mapping",
        )),
    }
}

fn parse_whole_number(node: &Node, field: &str, what: &str) -> Result<i64, PipelineError> {
    let text = scalar(node, field)?;
    text.trim()
        .parse::<i64>()
        .map_err(|_| error_on(node, field, format!("must be {what}, found '{text}'")))
}

fn parse_priority(node: &Node, field: &str) -> Result<Priority, PipelineError> {
    const WHAT: &str = "a whole number from 1 (highest) to 10 (lowest)";
    let value = parse_whole_number(node, field, WHAT)?;
    Priority::new(value)
        .ok_or_else(|| error_on(node, field, format!("must be {WHAT}, found {value}")))
}

fn parse_timeout(node: &Node, field: &str) -> Result<Duration, PipelineError> {
    let text = scalar(node, field)?;
    let duration = parse_duration(text).map_err(|message| error_on(node, field, message))?;
    let seconds = duration.as_secs();
    if !(limits::MIN_STEP_TIMEOUT_SECS..=limits::MAX_STEP_TIMEOUT_SECS).contains(&seconds) {
        return Err(error_on(
            node,
            field,
            format!(
                "must be between 1s and {}h, found '{text}'",
                limits::MAX_STEP_TIMEOUT_SECS / 3600
            ),
        ));
    }
    Ok(duration)
}

fn parse_env(node: &Node, field: &str) -> Result<BTreeMap<String, String>, PipelineError> {
    if node.is_null() {
        return Ok(BTreeMap::new());
    }
    let entries = mapping(node, field, "a mapping of variable names to values")?;
    if entries.len() > limits::MAX_ENV_VARS {
        return Err(error_on(
            node,
            field,
            format!(
                "has {} variables; the limit is {}",
                entries.len(),
                limits::MAX_ENV_VARS
            ),
        ));
    }
    let mut env = BTreeMap::new();
    for entry in entries {
        let entry_field = format!("{field}.{}", entry.key);
        if !is_shell_name(&entry.key) {
            return Err(error_at(
                entry.key_line,
                entry.key_column,
                entry_field,
                format!(
                    "'{}' is not a valid variable name: use letters, digits and '_', not starting with a digit, at most {} characters",
                    entry.key,
                    limits::MAX_ENV_NAME_LEN
                ),
            ));
        }
        let value = match &entry.value.kind {
            _ if entry.value.is_null() => {
                return Err(error_on(
                    &entry.value,
                    entry_field,
                    "has no value: write '' for an empty value",
                ));
            }
            NodeKind::Scalar { text, .. } => text,
            _ => {
                return Err(error_on(
                    &entry.value,
                    entry_field,
                    format!(
                        "must be a single value (quote it if in doubt), found {}",
                        entry.value.describe()
                    ),
                ));
            }
        };
        if value.len() > limits::MAX_ENV_VALUE_BYTES {
            return Err(error_on(
                &entry.value,
                entry_field,
                format!("is longer than {} KiB", limits::MAX_ENV_VALUE_BYTES / 1024),
            ));
        }
        if value.contains('\0') {
            return Err(error_on(
                &entry.value,
                entry_field,
                "contains a NUL character, which environment variables cannot hold",
            ));
        }
        env.insert(entry.key.clone(), value.clone());
    }
    Ok(env)
}

fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= limits::MAX_ENV_NAME_LEN
        && chars
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `secrets: [A, B]`, or entries `{name: A, branches: [main]}` for a secret given only
/// on those branches.
fn parse_secrets(node: &Node, field: &str) -> Result<Vec<SecretUse>, PipelineError> {
    let items: Vec<&Node> = match &node.kind {
        NodeKind::Sequence(items) => items.iter().collect(),
        _ => vec![node],
    };
    if items.len() > limits::MAX_STEP_LIST_ENTRIES {
        return Err(error_on(
            node,
            field,
            format!(
                "has {} entries; the limit is {}",
                items.len(),
                limits::MAX_STEP_LIST_ENTRIES
            ),
        ));
    }
    let mut secrets: Vec<SecretUse> = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let item_field = if matches!(node.kind, NodeKind::Sequence(_)) {
            format!("{field}[{index}]")
        } else {
            field.to_owned()
        };
        let (name_node, name_field, branches) = match &item.kind {
            NodeKind::Mapping(entries) => {
                check_keys(entries, SECRET_KEYS, &item_field)?;
                let name_field = format!("{item_field}.name");
                let Some(name) = entries.iter().find(|entry| entry.key == "name") else {
                    return Err(error_on(
                        item,
                        name_field,
                        "is missing: name the project secret ('name: DEPLOY_TOKEN')",
                    ));
                };
                let mut branches = Vec::new();
                if let Some(entry) = entries.iter().find(|entry| entry.key == "branches") {
                    let branches_field = format!("{item_field}.branches");
                    for (raw, pattern_node, pattern_field) in
                        string_list(&entry.value, &branches_field, limits::MAX_STEP_LIST_ENTRIES)?
                    {
                        branches.push(
                            BranchPattern::parse(raw).map_err(|message| {
                                error_on(pattern_node, pattern_field, message)
                            })?,
                        );
                    }
                }
                (&name.value, name_field, branches)
            }
            _ => (item, item_field.clone(), Vec::new()),
        };
        let raw = scalar(name_node, &name_field)?;
        let name = SecretName::parse(&name_field, raw.trim())
            .map_err(|error| error_on(name_node, name_field.clone(), error.message))?;
        if secrets.iter().any(|secret| secret.name == name) {
            return Err(error_on(
                name_node,
                name_field,
                format!("lists '{}' twice: keep one", name.as_str()),
            ));
        }
        secrets.push(SecretUse { name, branches });
    }
    Ok(secrets)
}

fn parse_cache(node: &Node, field: &str) -> Result<CacheSpec, PipelineError> {
    let entries = mapping(node, field, "a mapping with 'key_files' and 'paths'")?;
    check_keys(entries, CACHE_KEYS, field)?;
    let mut lists = [Vec::new(), Vec::new()];
    for (slot, key, what) in [
        (
            0,
            "key_files",
            "the files whose contents make the key, usually lockfiles ('key_files: [Cargo.lock]')",
        ),
        (
            1,
            "paths",
            "the directories to restore and save ('paths: [target]')",
        ),
    ] {
        let item_field = format!("{field}.{key}");
        let Some(entry) = entries.iter().find(|entry| entry.key == key) else {
            return Err(error_on(
                node,
                item_field,
                format!("is missing: list {what}"),
            ));
        };
        for (raw, path_node, path_field) in
            string_list(&entry.value, &item_field, limits::MAX_STEP_LIST_ENTRIES)?
        {
            lists[slot].push(relative_path(raw, path_node, path_field)?);
        }
    }
    let [key_files, paths] = lists;
    Ok(CacheSpec::new(key_files, paths))
}

/// A path or glob inside the workspace.
fn parse_deploy(node: &Node, field: &str) -> Result<DeploySpec, PipelineError> {
    let entries = mapping(
        node,
        field,
        "a mapping with 'environment' and either 'publish' or 'url' ('deploy: {environment: production, publish: dist}')",
    )?;
    check_keys(entries, DEPLOY_KEYS, field)?;
    let find = |key: &str| entries.iter().find(|entry| entry.key == key);
    let environment_field = format!("{field}.environment");
    let Some(environment_entry) = find("environment") else {
        return Err(error_on(
            node,
            environment_field,
            "is missing: name the environment this step deploys ('environment: production')",
        ));
    };
    let raw = scalar(&environment_entry.value, &environment_field)?;
    let environment = EnvironmentName::parse(&environment_field, raw.trim())
        .map_err(|error| error_on(&environment_entry.value, environment_field, error.message))?;
    let target = match (find("publish"), find("url")) {
        (Some(_), Some(url)) => {
            return Err(error_on(
                &url.value,
                format!("{field}.url"),
                "is set together with 'publish': a step either publishes a directory Kiln serves ('publish: dist') or deploys with its own script to a 'url', not both",
            ));
        }
        (None, None) => {
            return Err(error_on(
                node,
                format!("{field}.publish"),
                "is missing: say what is deployed, either 'publish: dist' (Kiln serves that directory) or 'url: https://…' (your script deploys there)",
            ));
        }
        (Some(publish), None) => {
            let publish_field = format!("{field}.publish");
            let raw = scalar(&publish.value, &publish_field)?;
            let dir = relative_path(raw, &publish.value, publish_field.clone())?;
            if dir.contains(['*', '?']) {
                return Err(error_on(
                    &publish.value,
                    publish_field,
                    "is a glob: name one directory, such as 'dist'",
                ));
            }
            DeployTarget::Publish(normalize_publish_dir(&dir))
        }
        (None, Some(url)) => {
            let url_field = format!("{field}.url");
            let raw = scalar(&url.value, &url_field)?.trim();
            if !is_http_url(raw) {
                return Err(error_on(
                    &url.value,
                    url_field,
                    "must be an http:// or https:// URL with a host and no credentials, such as 'https://staging.example.com'",
                ));
            }
            DeployTarget::Url(raw.to_owned())
        }
    };
    Ok(DeploySpec {
        environment,
        target,
    })
}

fn relative_path(raw: &str, node: &Node, field: String) -> Result<String, PipelineError> {
    let path = raw.trim();
    let problem = if path.is_empty() {
        Some("is empty")
    } else if path.len() > limits::MAX_PIPELINE_PATH_LEN {
        Some("is too long")
    } else if path.chars().any(char::is_control) {
        Some("contains control characters")
    } else if path.starts_with('/') || path.starts_with('~') || path.starts_with('\\') {
        Some("is absolute")
    } else if path.split(['/', '\\']).any(|segment| segment == "..") {
        Some("leaves the workspace with '..'")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(error_on(
            node,
            field,
            format!(
                "{problem}: write a path relative to the workspace, such as 'target' or 'dist/**'"
            ),
        )),
        None => Ok(path.to_owned()),
    }
}

fn parse_bool(node: &Node, field: &str) -> Result<bool, PipelineError> {
    match scalar(node, field)?.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(error_on(
            node,
            field,
            format!("must be true or false, found '{other}'"),
        )),
    }
}

fn parse_image(node: &Node, field: &str) -> Result<String, PipelineError> {
    let image = scalar(node, field)?.trim();
    if image.is_empty()
        || image.len() > limits::MAX_IMAGE_LEN
        || image.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(error_on(
            node,
            field,
            format!(
                "must be an image reference of at most {} characters without spaces, such as 'rust:1.94' or 'docker.io/library/node:22'",
                limits::MAX_IMAGE_LEN
            ),
        ));
    }
    Ok(image.to_owned())
}

fn parse_retry(node: &Node, field: &str) -> Result<AutomaticRetry, PipelineError> {
    let entries = mapping(
        node,
        field,
        "a mapping such as 'automatic: {on: [agent_lost], limit: 2}'",
    )?;
    check_keys(entries, RETRY_KEYS, field)?;
    let automatic_field = format!("{field}.automatic");
    let Some(automatic) = entries.iter().find(|entry| entry.key == "automatic") else {
        return Err(error_on(
            node,
            automatic_field,
            "is missing: write 'automatic: {on: [agent_lost], limit: 2}'",
        ));
    };
    let automatic_node = &automatic.value;
    let entries = mapping(
        automatic_node,
        &automatic_field,
        "a mapping such as '{on: [agent_lost], limit: 2}'",
    )?;
    check_keys(entries, AUTOMATIC_RETRY_KEYS, &automatic_field)?;

    let on_field = format!("{automatic_field}.on");
    let Some(on_entry) = entries.iter().find(|entry| entry.key == "on") else {
        return Err(error_on(
            automatic_node,
            on_field,
            "is missing: list the failures to retry, such as [agent_lost, \"exit_status:*\"]",
        ));
    };
    let mut on = Vec::new();
    for (raw, condition_node, item_field) in
        string_list(&on_entry.value, &on_field, limits::MAX_STEP_LIST_ENTRIES)?
    {
        let condition = parse_retry_on(raw.trim()).ok_or_else(|| {
            error_on(
                condition_node,
                item_field,
                format!(
                    "'{raw}' is not a failure Kiln retries: use agent_lost, \"exit_status:N\" (N from 0 to 255) or \"exit_status:*\""
                ),
            )
        })?;
        if !on.contains(&condition) {
            on.push(condition);
        }
    }

    let limit = match entries.iter().find(|entry| entry.key == "limit") {
        None => DEFAULT_RETRY_LIMIT,
        Some(entry) => {
            let limit_field = format!("{automatic_field}.limit");
            let what = format!(
                "a whole number of retries from 0 to {}",
                limits::MAX_RETRY_LIMIT
            );
            let value = parse_whole_number(&entry.value, &limit_field, &what)?;
            u32::try_from(value)
                .ok()
                .filter(|limit| *limit <= limits::MAX_RETRY_LIMIT)
                .ok_or_else(|| {
                    error_on(
                        &entry.value,
                        limit_field,
                        format!("must be {what}, found {value}"),
                    )
                })?
        }
    };
    Ok(AutomaticRetry::new(on, limit))
}

pub(crate) fn parse_retry_on(raw: &str) -> Option<RetryOn> {
    if raw == "agent_lost" {
        return Some(RetryOn::AgentLost);
    }
    let status = raw.strip_prefix("exit_status:")?;
    if status == "*" {
        return Some(RetryOn::AnyExitStatus);
    }
    if status.is_empty() || !status.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    status.parse::<u8>().ok().map(RetryOn::ExitStatus)
}

/// The candidate nearest to `word` by edit distance, if it is close enough to be a typo.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_lowercase();
    candidates
        .iter()
        .map(|candidate| (edit_distance(&word, &candidate.to_lowercase()), *candidate))
        .filter(|(distance, candidate)| *distance <= 2.max(candidate.chars().count() / 4))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(left: &str, right: &str) -> usize {
    let right: Vec<char> = right.chars().collect();
    let mut previous: Vec<usize> = (0..=right.len()).collect();
    for (i, left_char) in left.chars().enumerate() {
        let mut current = vec![i + 1; right.len() + 1];
        for (j, right_char) in right.iter().enumerate() {
            let substitution = previous[j] + usize::from(left_char != *right_char);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[right.len()]
}

fn quoted_list(names: &[&str]) -> String {
    if names.len() > 20 {
        let first: Vec<String> = names[..20].iter().map(|name| format!("'{name}'")).collect();
        return format!("{}, … ({} in all)", first.join(", "), names.len());
    }
    names
        .iter()
        .map(|name| format!("'{name}'"))
        .collect::<Vec<_>>()
        .join(", ")
}
