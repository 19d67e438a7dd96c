//! The pipeline of a repository without a `.kiln.yml`, inferred from its top-level files.
//!
//! The caller lists the files (it owns the checkout); this module only decides. Each
//! recognised toolchain becomes one step holding all of its commands, because steps may run
//! on different agents and only a step's own cache is restored into its workspace: an
//! install step and a build step apart would not share `node_modules`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{CacheSpec, PIPELINE_FILE, Pipeline, PipelineError, Step};
use crate::ids::StageName;
use crate::limits;

/// What inference needs to know about a repository: the names of the files at its root and
/// the contents of `package.json`, if there is one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepoListing {
    files: BTreeSet<String>,
    package_json: Option<String>,
}

impl RepoListing {
    /// The names (not paths) of the files at the repository's root.
    pub fn new<I, S>(top_level_files: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RepoListing {
            files: top_level_files.into_iter().map(Into::into).collect(),
            package_json: None,
        }
    }

    /// The contents of `package.json`; also marks the file as present.
    pub fn with_package_json(mut self, contents: impl Into<String>) -> Self {
        self.files.insert("package.json".to_owned());
        self.package_json = Some(contents.into());
        self
    }

    pub fn has(&self, file: &str) -> bool {
        self.files.contains(file)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum NodePackageManager {
    Npm,
    Yarn,
    Pnpm,
}

impl NodePackageManager {
    fn command(self) -> &'static str {
        match self {
            Self::Npm => "npm",
            Self::Yarn => "yarn",
            Self::Pnpm => "pnpm",
        }
    }

    /// The lockfiles this manager writes, preferred first.
    fn lockfiles(self) -> &'static [&'static str] {
        match self {
            Self::Npm => &["package-lock.json", "npm-shrinkwrap.json"],
            Self::Yarn => &["yarn.lock"],
            Self::Pnpm => &["pnpm-lock.yaml"],
        }
    }

    fn frozen_install(self) -> &'static str {
        match self {
            Self::Npm => "npm ci",
            Self::Yarn => "yarn install --frozen-lockfile",
            Self::Pnpm => "pnpm install --frozen-lockfile",
        }
    }
}

/// Infers the pipeline of a repository that has no `.kiln.yml`:
///
/// - `package.json`: install with the package manager that `packageManager` names, else
///   the one whose lockfile is present (pnpm, then yarn, then npm), else npm; frozen
///   install (`npm ci`, `yarn install --frozen-lockfile`, `pnpm install --frozen-lockfile`)
///   when the lockfile is there, plain `install` otherwise; then `<pm> run build` when
///   `scripts.build` exists. Cached: `node_modules` (and npm's download cache), keyed on the
///   lockfile.
/// - `Cargo.toml`: `cargo build --locked` and `cargo test --locked` (without `--locked`
///   when there is no `Cargo.lock`). Cached: `target`, keyed on `Cargo.lock`.
/// - `Makefile` (or `makefile`, `GNUmakefile`), only when neither of the above applies,
///   since a Makefile usually drives them: `make`.
///
/// A repository with both `package.json` and `Cargo.toml` gets both steps, independent.
/// Nothing recognisable is an error that tells the user to add a `.kiln.yml`.
pub fn infer(listing: &RepoListing) -> Result<Pipeline, PipelineError> {
    let mut steps = Vec::new();
    if listing.has("package.json") || listing.package_json.is_some() {
        steps.push(node_step(listing)?);
    }
    if listing.has("Cargo.toml") {
        steps.push(cargo_step(listing));
    }
    let has_makefile = ["GNUmakefile", "makefile", "Makefile"]
        .into_iter()
        .any(|name| listing.has(name));
    if steps.is_empty() && has_makefile {
        steps.push(Step::with_commands(stage("make"), vec!["make".to_owned()]));
    }
    if steps.is_empty() {
        return Err(PipelineError {
            line: None,
            column: None,
            field: String::new(),
            message: format!(
                "there is no {PIPELINE_FILE} and Kiln cannot tell how to build this repository (it looks for package.json, Cargo.toml or a Makefile at the root): add a {PIPELINE_FILE} that lists the steps (see docs/pipeline.md)"
            ),
        });
    }
    Ok(Pipeline::new_unchecked(None, BTreeMap::new(), None, steps))
}

fn stage(name: &str) -> StageName {
    StageName::parse("name", name).expect("inferred step names are valid")
}

fn node_step(listing: &RepoListing) -> Result<Step, PipelineError> {
    let package = match &listing.package_json {
        Some(text) => parse_package_json(text)?,
        // Listed but not supplied: treat as a package without scripts.
        None => Value::Object(Default::default()),
    };
    let declared = package
        .get("packageManager")
        .and_then(Value::as_str)
        .and_then(|declared| {
            let name = declared.split('@').next().unwrap_or_default();
            [
                NodePackageManager::Pnpm,
                NodePackageManager::Yarn,
                NodePackageManager::Npm,
            ]
            .into_iter()
            .find(|manager| manager.command() == name)
        });
    let by_lockfile = [
        NodePackageManager::Pnpm,
        NodePackageManager::Yarn,
        NodePackageManager::Npm,
    ]
    .into_iter()
    .find(|manager| manager.lockfiles().iter().any(|file| listing.has(file)));
    let manager = declared.or(by_lockfile).unwrap_or(NodePackageManager::Npm);
    let lockfile = manager
        .lockfiles()
        .iter()
        .find(|file| listing.has(file))
        .copied();

    let pm = manager.command();
    let mut run = vec![match lockfile {
        Some(_) => manager.frozen_install().to_owned(),
        None => format!("{pm} install"),
    }];
    let has_build_script = package
        .get("scripts")
        .and_then(|scripts| scripts.get("build"))
        .and_then(Value::as_str)
        .is_some_and(|script| !script.trim().is_empty());
    if has_build_script {
        run.push(format!("{pm} run build"));
    }
    let mut step = Step::with_commands(stage(pm), run);
    if let Some(lockfile) = lockfile {
        let mut paths = vec!["node_modules".to_owned()];
        if manager == NodePackageManager::Npm {
            // `npm ci` deletes node_modules first, so what makes a second install fast is
            // npm's download cache, kept in the workspace to be cached with the step.
            step.env
                .insert("npm_config_cache".to_owned(), ".npm-cache".to_owned());
            paths.push(".npm-cache".to_owned());
        }
        step.cache = Some(CacheSpec::new(vec![lockfile.to_owned()], paths));
    }
    Ok(step)
}

fn parse_package_json(text: &str) -> Result<Value, PipelineError> {
    if text.len() > limits::MAX_PACKAGE_JSON_BYTES {
        return Err(PipelineError {
            line: None,
            column: None,
            field: "package.json".into(),
            message: format!(
                "is larger than {} KiB, too large to infer a pipeline from: add a {PIPELINE_FILE}",
                limits::MAX_PACKAGE_JSON_BYTES / 1024
            ),
        });
    }
    serde_json::from_str::<Value>(text).map_err(|error| PipelineError {
        line: Some(error.line()),
        column: Some(error.column()),
        field: "package.json".into(),
        message: format!(
            "is not valid JSON ({error}): fix it, or add a {PIPELINE_FILE} so Kiln need not read it"
        ),
    })
}

fn cargo_step(listing: &RepoListing) -> Step {
    let locked = listing.has("Cargo.lock");
    let flag = if locked { " --locked" } else { "" };
    let mut step = Step::with_commands(
        stage("cargo"),
        vec![format!("cargo build{flag}"), format!("cargo test{flag}")],
    );
    let key_file = if locked { "Cargo.lock" } else { "Cargo.toml" };
    step.cache = Some(CacheSpec::new(
        vec![key_file.to_owned()],
        vec!["target".to_owned()],
    ));
    step
}
