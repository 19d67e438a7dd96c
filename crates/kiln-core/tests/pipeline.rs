//! The pipeline file end to end: a full file, every refusal with its line, cycles, branch
//! filters, the ready set and inference.

use std::collections::BTreeSet;
use std::time::Duration;

use kiln_core::StageName;
use kiln_core::pipeline::{
    Pipeline, PipelineError, Priority, RepoListing, RetryOn, StepFailure, infer,
};

const FULL: &str = r#"# A pipeline that uses every key.
priority: 2
timeout: 30m
env:
  CI: "true"
  RUST_LOG: info
steps:
  - name: install
    run: npm ci
    cache:
      key_files: [package-lock.json]
      paths: [node_modules]
  - name: lint
    run:
      - npm run lint
      - npm run typecheck
    depends_on: install
    agents: [linux]
  - name: test
    run: |
      npm test
      npm run coverage
    depends_on: [install]
    env:
      RUST_LOG: debug
      PORT: 8080
    timeout: 1h30m
    retry:
      automatic:
        on: [agent_lost, "exit_status:137", "exit_status:*"]
        limit: 3
    image: node:22
    network: true
    artifacts: [coverage/**, "reports/*.xml"]
  - name: deploy
    run: ./deploy.sh
    depends_on: [lint, test]
    branches: [main, "release/*", "!release/old"]
    agents: [linux, deploy]
    timeout: 600
    deploy:
      environment: staging
      url: https://staging.example.com/app
"#;

fn names<'a>(items: impl IntoIterator<Item = &'a StageName>) -> Vec<&'a str> {
    items.into_iter().map(StageName::as_str).collect()
}

fn refusal(text: &str) -> PipelineError {
    Pipeline::parse(text).expect_err("the file should be refused")
}

#[test]
fn full_file_parses_to_the_values_written() {
    let pipeline = Pipeline::parse(FULL).unwrap();
    assert_eq!(pipeline.priority, Priority::new(2));
    assert_eq!(pipeline.timeout, Some(Duration::from_secs(1800)));
    assert_eq!(pipeline.env["CI"], "true");
    assert_eq!(pipeline.steps.len(), 4);

    let install = pipeline.step("install").unwrap();
    assert_eq!(install.run, vec!["npm ci"]);
    assert_eq!(
        install.timeout,
        Duration::from_secs(1800),
        "the top-level default"
    );
    let cache = install.cache.as_ref().unwrap();
    assert_eq!(cache.key_files, vec!["package-lock.json"]);
    assert_eq!(cache.paths, vec!["node_modules"]);
    assert!(install.depends_on.is_empty());
    assert!(install.retry.is_none());

    let lint = pipeline.step("lint").unwrap();
    assert_eq!(lint.run, vec!["npm run lint", "npm run typecheck"]);
    assert_eq!(names(&lint.depends_on), vec!["install"]);
    assert_eq!(lint.agents[0].as_str(), "linux");

    let test = pipeline.step("test").unwrap();
    assert_eq!(test.run, vec!["npm test\nnpm run coverage\n"]);
    assert_eq!(test.timeout, Duration::from_secs(5400));
    assert_eq!(test.env["PORT"], "8080");
    assert_eq!(pipeline.env_for(test)["RUST_LOG"], "debug");
    assert_eq!(pipeline.env_for(test)["CI"], "true");
    let retry = test.retry.as_ref().unwrap();
    assert_eq!(
        retry.on,
        vec![
            RetryOn::AgentLost,
            RetryOn::ExitStatus(137),
            RetryOn::AnyExitStatus
        ]
    );
    assert_eq!(retry.limit, 3);
    assert_eq!(test.image.as_deref(), Some("node:22"));
    assert!(test.network);
    assert!(!install.network, "network is off unless asked for");
    assert_eq!(test.artifacts, vec!["coverage/**", "reports/*.xml"]);

    let deploy = pipeline.step("deploy").unwrap();
    assert_eq!(names(&deploy.depends_on), vec!["lint", "test"]);
    assert_eq!(deploy.timeout, Duration::from_secs(600));
    let branches: Vec<String> = deploy.branches.iter().map(ToString::to_string).collect();
    assert_eq!(branches, vec!["main", "release/*", "!release/old"]);
    assert_eq!(deploy.agents.len(), 2);
}

#[test]
fn rendering_parses_back_to_the_same_pipeline() {
    let pipeline = Pipeline::parse(FULL).unwrap();
    let rendered = pipeline.to_yaml();
    assert_eq!(Pipeline::parse(&rendered).unwrap(), pipeline, "{rendered}");

    let awkward = "steps:\n  - name: 'yes'\n    run: \"echo \\\"hi\\\"\\t\\u0007 # not a comment: {x}\"\n    env: {A: '', B: 'null'}\n";
    let pipeline = Pipeline::parse(awkward).unwrap();
    assert_eq!(pipeline.steps[0].name.as_str(), "yes");
    assert_eq!(pipeline.steps[0].env["A"], "");
    assert_eq!(pipeline.steps[0].env["B"], "null");
    assert_eq!(Pipeline::parse(&pipeline.to_yaml()).unwrap(), pipeline);
}

#[test]
fn defaults_apply_to_a_minimal_file() {
    let pipeline = Pipeline::parse("steps:\n  - name: build\n    run: make\n").unwrap();
    assert_eq!(pipeline.priority, None);
    assert_eq!(pipeline.priority_or_default(), Priority::DEFAULT);
    assert_eq!(pipeline.steps[0].timeout, Duration::from_secs(3600));
    assert!(pipeline.env.is_empty());
    let retry = Pipeline::parse(
        "steps:\n  - name: a\n    run: x\n    retry: {automatic: {on: agent_lost}}\n",
    )
    .unwrap();
    assert_eq!(retry.steps[0].retry.as_ref().unwrap().limit, 2);
}

#[test]
fn scalars_keep_their_text() {
    let pipeline = Pipeline::parse(
        "steps:\n  - name: 1.10\n    run: true\n    env: {RATIO: 1.10, ON: yes, OFF: false}\n",
    )
    .unwrap();
    let step = &pipeline.steps[0];
    assert_eq!(step.name.as_str(), "1.10");
    assert_eq!(step.run, vec!["true"]);
    assert_eq!(step.env["RATIO"], "1.10");
    assert_eq!(step.env["ON"], "yes");
    assert_eq!(step.env["OFF"], "false");
}

/// Each refusal: (file, line, field, a phrase of the message).
#[test]
fn every_refusal_names_its_line_field_and_reason() {
    let cases: &[(&str, Option<usize>, &str, &str)] = &[
        ("", None, "", "the file is empty"),
        ("- a\n- b\n", Some(1), "", "must be a mapping"),
        ("steps: [\n", Some(2), "", "not valid YAML"),
        ("priority: 1\n", Some(1), "steps", "is missing"),
        ("steps: []\n", Some(1), "steps", "is empty"),
        ("steps: make\n", Some(1), "steps", "must be a list of steps"),
        (
            "stesp:\n  - name: a\n",
            Some(1),
            "stesp",
            "unknown key 'stesp': did you mean 'steps'?",
        ),
        (
            "steps:\n  - name: a\n    run: x\n  - name: b\n    run: y\n    depend_on: [a]\n",
            Some(6),
            "steps[1].depend_on",
            "did you mean 'depends_on'?",
        ),
        (
            "steps:\n  - name: a\n    script: x\n",
            Some(3),
            "steps[0].script",
            "did you mean 'run'?",
        ),
        (
            "steps:\n  - run: x\n",
            Some(2),
            "steps[0].name",
            "every step needs a 'name'",
        ),
        (
            "steps:\n  - name: '  '\n    run: x\n",
            Some(2),
            "steps[0].name",
            "must not be empty",
        ),
        (
            "steps:\n  - name: \"a\\nb\"\n    run: x\n",
            Some(2),
            "steps[0].name",
            "control characters",
        ),
        (
            "steps:\n  - name: a\n    run: x\n  - name: a\n    run: y\n",
            Some(4),
            "steps[1].name",
            "'a' is already the name of steps[0]",
        ),
        (
            "steps:\n  - name: a\n",
            Some(2),
            "steps[0].run",
            "needs a 'run'",
        ),
        (
            "steps:\n  - name: a\n    run: [x, '']\n",
            Some(3),
            "steps[0].run[1]",
            "empty command",
        ),
        (
            "steps:\n  - name: a\n    run:\n",
            Some(3),
            "steps[0].run",
            "has no value",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    depends_on: [tset]\n  - name: test\n    run: y\n",
            Some(4),
            "steps[0].depends_on[0]",
            "names 'tset', which is not a step of this pipeline: did you mean 'test'?",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    depends_on: a\n",
            Some(4),
            "steps[0].depends_on[0]",
            "depends on itself",
        ),
        (
            "steps:\n  - name: a\n    run: x\n  - name: b\n    run: x\n    depends_on: [a, a]\n",
            Some(6),
            "steps[1].depends_on[1]",
            "lists 'a' twice",
        ),
        (
            "priority: 0\nsteps: []\n",
            Some(1),
            "priority",
            "from 1 (highest) to 10",
        ),
        ("priority: 11\nsteps: []\n", Some(1), "priority", "found 11"),
        (
            "priority: high\nsteps: []\n",
            Some(1),
            "priority",
            "found 'high'",
        ),
        (
            "timeout: 10 minutes\nsteps: []\n",
            Some(1),
            "timeout",
            "90s, 10m or 1h30m",
        ),
        (
            "timeout: 0\nsteps: []\n",
            Some(1),
            "timeout",
            "between 1s and 72h",
        ),
        (
            "timeout: 73h\nsteps: []\n",
            Some(1),
            "timeout",
            "between 1s and 72h",
        ),
        (
            "env:\n  OK: 1\n  1BAD: x\nsteps: []\n",
            Some(3),
            "env.1BAD",
            "not a valid variable name",
        ),
        (
            "env:\n  A-B: x\nsteps: []\n",
            Some(2),
            "env.A-B",
            "not a valid variable name",
        ),
        (
            "env:\n  EMPTY:\nsteps: []\n",
            Some(2),
            "env.EMPTY",
            "write '' for an empty value",
        ),
        (
            "env: [A]\nsteps: []\n",
            Some(1),
            "env",
            "must be a mapping of variable names",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    retry:\n      automatic:\n        on: [agent_lost, exit_status:256]\n",
            Some(6),
            "steps[0].retry.automatic.on[1]",
            "is not a failure Kiln retries",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    retry: {automatic: {on: [timeout]}}\n",
            Some(4),
            "steps[0].retry.automatic.on[0]",
            "'timeout' is not a failure",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    retry: {automatic: {on: agent_lost, limit: 11}}\n",
            Some(4),
            "steps[0].retry.automatic.limit",
            "from 0 to 10, found 11",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    retry: {automatic: {limit: 1}}\n",
            Some(4),
            "steps[0].retry.automatic.on",
            "is missing",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    retry: {manual: true}\n",
            Some(4),
            "steps[0].retry.manual",
            "unknown key 'manual'",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    cache:\n      key_files: [Cargo.lock]\n",
            Some(5),
            "steps[0].cache.paths",
            "is missing",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    cache:\n      key_files: Cargo.lock\n      paths: [../outside]\n",
            Some(6),
            "steps[0].cache.paths[0]",
            "leaves the workspace",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    artifacts: [/etc/passwd]\n",
            Some(4),
            "steps[0].artifacts[0]",
            "is absolute",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    branches: ['!']\n",
            Some(4),
            "steps[0].branches[0]",
            "is empty",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    agents: [linux, 'has space']\n",
            Some(4),
            "steps[0].agents[1]",
            "letters, digits",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    image: 'node 22'\n",
            Some(4),
            "steps[0].image",
            "without spaces",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    agents: {os: linux}\n",
            Some(4),
            "steps[0].agents",
            "found a mapping",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    name: b\n",
            Some(4),
            "",
            "appears twice",
        ),
        (
            "steps:\n  - name: a\n    run: !custom x\n",
            Some(3),
            "",
            "tag '!custom' is not supported",
        ),
        (
            "steps:\n  - name: a\n    run: x\n---\nsteps: []\n",
            Some(4),
            "",
            "more than one YAML document",
        ),
        ("steps:\n  - name: a\n    run: *nowhere\n", Some(3), "", ""),
    ];
    for (text, line, field, phrase) in cases {
        let error = refusal(text);
        assert_eq!(error.line, *line, "line for {text:?}: {error}");
        assert_eq!(error.field, *field, "field for {text:?}: {error}");
        assert!(
            error.message.contains(phrase),
            "message for {text:?} should contain {phrase:?}: {error}"
        );
    }
}

#[test]
fn network_takes_only_true_or_false() {
    let error = refusal("steps:\n  - name: a\n    run: x\n    network: yes\n");
    assert_eq!(error.field, "steps[0].network");
    assert!(error.message.contains("true or false"), "{error}");
}

#[test]
fn errors_display_line_field_and_message() {
    let error = refusal("steps:\n  - name: a\n    run: x\n    depend_on: [b]\n");
    assert_eq!(error.column, Some(5));
    assert_eq!(
        error.to_string(),
        "line 4: steps[0].depend_on: unknown key 'depend_on': did you mean 'depends_on'? the keys allowed here are 'name', 'run', 'depends_on', 'env', 'timeout', 'cache', 'branches', 'agents', 'image', 'network', 'retry', 'artifacts', 'artifacts_required', 'needs_artifacts', 'test_reports', 'secrets', 'deploy'"
    );
}

#[test]
fn cycles_are_refused_naming_the_cycle() {
    let error = refusal(
        "steps:\n  - name: a\n    run: x\n    depends_on: [c]\n  - name: b\n    run: x\n    depends_on: [a]\n  - name: c\n    run: x\n    depends_on: [b]\n",
    );
    // Found from 'a' (the first step): a needs c, c needs b, and b's need of a closes it.
    assert_eq!(error.line, Some(7));
    assert_eq!(error.field, "steps[1].depends_on[0]");
    assert!(error.message.contains("(a → b → c → a)"), "{error}");

    // A cycle off to the side of a valid chain is still found.
    let error = refusal(
        "steps:\n  - name: root\n    run: x\n  - name: p\n    run: x\n    depends_on: [root, q]\n  - name: q\n    run: x\n    depends_on: [p]\n",
    );
    assert_eq!(error.field, "steps[2].depends_on[0]");
    assert!(error.message.contains("p → q → p"), "{error}");
}

#[test]
fn limits_are_enforced() {
    let huge = format!(
        "steps:\n  - name: a\n    run: \"{}\"\n",
        "x".repeat(300 * 1024)
    );
    let error = refusal(&huge);
    assert_eq!(error.line, None);
    assert!(error.message.contains("the limit is 256 KiB"), "{error}");

    let mut many = String::from("steps:\n");
    for index in 0..201 {
        many.push_str(&format!("  - {{name: s{index}, run: x}}\n"));
    }
    let error = refusal(&many);
    assert_eq!(error.field, "steps");
    assert_eq!(error.line, Some(202));
    assert!(error.message.contains("the limit is 200"), "{error}");

    let deep = format!("steps: {}{}\n", "[".repeat(100), "]".repeat(100));
    let error = refusal(&deep);
    assert!(error.message.contains("deeper than 32 levels"), "{error}");
    assert_eq!(error.line, Some(1));
    // Far deeper nesting, in flow and in block style, is refused without exhausting the
    // stack.
    let deeper = format!("steps: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(refusal(&deeper).line, Some(1));
    let block = format!("steps:\n  {}x\n", "- ".repeat(50_000));
    let error = refusal(&block);
    assert!(error.message.contains("deeper than 32 levels"), "{error}");

    let laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n";
    let error = refusal(laughs);
    assert!(
        error.message.contains("aliases expand to more than"),
        "{error}"
    );
}

#[test]
fn anchors_and_aliases_work_within_limits() {
    let pipeline = Pipeline::parse(
        "steps:\n  - name: a\n    run: x\n    env: &common {A: '1'}\n  - name: b\n    run: y\n    env: *common\n",
    )
    .unwrap();
    assert_eq!(pipeline.steps[1].env["A"], "1");
}

const BRANCHY: &str = "steps:
  - name: build
    run: make
  - name: docs
    run: make docs
    depends_on: [build]
    branches: ['!wip/**']
  - name: package
    run: make package
    depends_on: [docs]
    branches: [main, 'release/*']
  - name: publish
    run: make publish
    depends_on: [package]
";

#[test]
fn branch_filters_select_steps() {
    let pipeline = Pipeline::parse(BRANCHY).unwrap();
    let on = |branch: &str| -> Vec<&str> {
        pipeline
            .steps_for_branch(branch)
            .iter()
            .map(|step| step.name.as_str())
            .collect()
    };
    assert_eq!(on("main"), vec!["build", "docs", "package", "publish"]);
    assert_eq!(
        on("release/1.0"),
        vec!["build", "docs", "package", "publish"]
    );
    assert_eq!(on("release/1.0/rc"), vec!["build", "docs", "publish"]);
    assert_eq!(on("feature/x"), vec!["build", "docs", "publish"]);
    assert_eq!(on("wip/me/try"), vec!["build", "publish"]);
}

#[test]
fn filtered_out_dependencies_are_bridged() {
    let pipeline = Pipeline::parse(BRANCHY).unwrap();
    let dag = pipeline.dag_for_branch("wip/me/try");
    assert_eq!(names(dag.names()), vec!["build", "publish"]);
    // publish → package (filtered) → docs (filtered) → build.
    assert_eq!(names(dag.dependencies("publish").unwrap()), vec!["build"]);
    assert_eq!(dag.dependencies("package"), None);

    let dag = pipeline.dag_for_branch("feature/x");
    assert_eq!(names(dag.dependencies("publish").unwrap()), vec!["docs"]);
}

#[test]
fn ready_set_follows_the_graph() {
    let pipeline = Pipeline::parse(FULL).unwrap();
    let dag = pipeline.dag_for_branch("main");
    assert_eq!(
        names(dag.topological_order()),
        vec!["install", "lint", "test", "deploy"]
    );
    let mut done = BTreeSet::new();
    assert_eq!(names(dag.ready(&done)), vec!["install"]);
    done.insert(StageName::parse("s", "install").unwrap());
    assert_eq!(names(dag.ready(&done)), vec!["lint", "test"]);
    done.insert(StageName::parse("s", "lint").unwrap());
    assert_eq!(names(dag.ready(&done)), vec!["test"]);
    done.insert(StageName::parse("s", "test").unwrap());
    assert_eq!(names(dag.ready(&done)), vec!["deploy"]);
    done.insert(StageName::parse("s", "deploy").unwrap());
    assert!(dag.ready(&done).is_empty());

    assert_eq!(
        names(dag.downstream("install")),
        vec!["lint", "test", "deploy"]
    );
    assert_eq!(names(dag.downstream("test")), vec!["deploy"]);
    assert!(dag.downstream("deploy").is_empty());

    // deploy does not run on a feature branch.
    let dag = pipeline.dag_for_branch("feature/x");
    assert_eq!(dag.len(), 3);
    assert!(!dag.contains("deploy"));
}

#[test]
fn topological_order_puts_dependencies_first_even_when_written_later() {
    let pipeline = Pipeline::parse(
        "steps:\n  - {name: c, run: x, depends_on: [b]}\n  - {name: b, run: x, depends_on: [a]}\n  - {name: a, run: x}\n  - {name: d, run: x}\n",
    )
    .unwrap();
    assert_eq!(
        names(pipeline.dag().topological_order()),
        vec!["a", "b", "c", "d"]
    );
}

#[test]
fn automatic_retry_rules() {
    let pipeline = Pipeline::parse(FULL).unwrap();
    let retry = pipeline.step("test").unwrap().retry.clone().unwrap();
    assert!(retry.allows(StepFailure::AgentLost, 0));
    assert!(retry.allows(StepFailure::ExitStatus(1), 2));
    assert!(
        !retry.allows(StepFailure::ExitStatus(1), 3),
        "limit reached"
    );
    assert!(!retry.allows(StepFailure::TimedOut, 0));
    assert!(!retry.allows(StepFailure::Cancelled, 0));

    let only_137 = Pipeline::parse(
        "steps:\n  - name: a\n    run: x\n    retry: {automatic: {on: ['exit_status:137'], limit: 1}}\n",
    )
    .unwrap();
    let retry = only_137.steps[0].retry.clone().unwrap();
    assert!(retry.allows(StepFailure::ExitStatus(137), 0));
    assert!(!retry.allows(StepFailure::ExitStatus(1), 0));
    assert!(!retry.allows(StepFailure::AgentLost, 0));
}

#[test]
fn infers_node_with_each_package_manager() {
    let scripts = r#"{"name": "web", "scripts": {"build": "vite build", "test": "vitest"}}"#;
    let cases = [
        ("package-lock.json", "npm", "npm ci", "npm run build"),
        (
            "yarn.lock",
            "yarn",
            "yarn install --frozen-lockfile",
            "yarn run build",
        ),
        (
            "pnpm-lock.yaml",
            "pnpm",
            "pnpm install --frozen-lockfile",
            "pnpm run build",
        ),
    ];
    for (lockfile, step_name, install, build) in cases {
        let listing = RepoListing::new(["README.md", lockfile]).with_package_json(scripts);
        let pipeline = infer(&listing).unwrap();
        assert_eq!(pipeline.steps.len(), 1);
        let step = &pipeline.steps[0];
        assert_eq!(step.name.as_str(), step_name);
        assert_eq!(step.run, vec![install, build]);
        let cache = step.cache.as_ref().unwrap();
        assert_eq!(cache.key_files, vec![lockfile]);
        assert_eq!(cache.paths[0], "node_modules");
        assert_eq!(Pipeline::parse(&pipeline.to_yaml()).unwrap(), pipeline);
    }
}

#[test]
fn infers_node_without_build_script_or_lockfile() {
    let listing =
        RepoListing::new(["pnpm-lock.yaml"]).with_package_json(r#"{"scripts": {"test": "x"}}"#);
    let pipeline = infer(&listing).unwrap();
    assert_eq!(
        pipeline.steps[0].run,
        vec!["pnpm install --frozen-lockfile"]
    );

    let listing = RepoListing::new(["index.js"]).with_package_json("{}");
    let pipeline = infer(&listing).unwrap();
    assert_eq!(pipeline.steps[0].run, vec!["npm install"]);
    assert!(pipeline.steps[0].cache.is_none());

    // packageManager breaks the tie between two lockfiles.
    let listing = RepoListing::new(["package-lock.json", "yarn.lock"])
        .with_package_json(r#"{"packageManager": "yarn@1.22.19"}"#);
    assert_eq!(
        infer(&listing).unwrap().steps[0].run,
        vec!["yarn install --frozen-lockfile"]
    );
}

#[test]
fn infers_cargo_and_make() {
    let pipeline = infer(&RepoListing::new(["Cargo.toml", "Cargo.lock", "Makefile"])).unwrap();
    assert_eq!(
        pipeline.steps.len(),
        1,
        "the Makefile is not run next to cargo"
    );
    let step = &pipeline.steps[0];
    assert_eq!(step.name.as_str(), "cargo");
    assert_eq!(
        step.run,
        vec!["cargo build --locked", "cargo test --locked"]
    );
    let cache = step.cache.as_ref().unwrap();
    assert_eq!(cache.key_files, vec!["Cargo.lock"]);
    assert_eq!(cache.paths, vec!["target"]);

    let pipeline = infer(&RepoListing::new(["Makefile", "main.c"])).unwrap();
    assert_eq!(pipeline.steps[0].name.as_str(), "make");
    assert_eq!(pipeline.steps[0].run, vec!["make"]);

    let both = infer(
        &RepoListing::new(["Cargo.toml", "yarn.lock"]).with_package_json(r#"{"scripts":{}}"#),
    )
    .unwrap();
    assert_eq!(
        names(both.dag().ready(&BTreeSet::new())),
        vec!["yarn", "cargo"]
    );
}

#[test]
fn inference_errors_say_what_to_do() {
    let error = infer(&RepoListing::new(["README.md"])).unwrap_err();
    assert_eq!(error.line, None);
    assert!(error.message.contains("add a .kiln.yml"), "{error}");

    let error = infer(&RepoListing::new(["yarn.lock"]).with_package_json("{\n  \"name\": ,\n}"))
        .unwrap_err();
    assert_eq!(error.field, "package.json");
    assert_eq!(error.line, Some(2));
    assert!(error.message.contains("is not valid JSON"), "{error}");
}

const WITH_SECRETS: &str = r#"steps:
  - name: deploy
    run: ./deploy.sh
    secrets:
      - NPM_TOKEN
      - name: PROD_KEY
        branches: [main, "release/*"]
  - name: test
    run: make test
    secrets: SENTRY_DSN
"#;

#[test]
fn steps_name_the_secrets_they_receive_and_on_which_branches() {
    let pipeline = Pipeline::parse(WITH_SECRETS).unwrap();
    let deploy = pipeline.step("deploy").unwrap();
    let names: Vec<&str> = deploy.secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["NPM_TOKEN", "PROD_KEY"]);
    assert!(deploy.secrets[0].given_on("feature"));
    assert!(deploy.secrets[1].given_on("main"));
    assert!(deploy.secrets[1].given_on("release/2"));
    assert!(!deploy.secrets[1].given_on("feature"));
    assert_eq!(
        pipeline.step("test").unwrap().secrets[0].name.as_str(),
        "SENTRY_DSN"
    );
    assert_eq!(Pipeline::parse(&pipeline.to_yaml()).unwrap(), pipeline);

    // The job's spec carries the names given on the build's branch.
    let secrets_on = |branch: &str| -> Vec<String> {
        kiln_core::jobs::plan(&pipeline, branch)
            .into_iter()
            .find(|job| job.step == "deploy")
            .map(|job| kiln_core::jobs::JobSpec::from_json(&job.spec).secrets)
            .unwrap()
    };
    assert_eq!(secrets_on("main"), ["NPM_TOKEN", "PROD_KEY"]);
    assert_eq!(secrets_on("feature"), ["NPM_TOKEN"]);

    for (text, field, says) in [
        (
            "steps:\n  - name: a\n    run: x\n    secrets: [lower]\n",
            "steps[0].secrets[0]",
            "not a secret name",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    secrets: [KILN_TOKEN]\n",
            "steps[0].secrets[0]",
            "not a secret name",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    secrets: [A, A]\n",
            "steps[0].secrets[1]",
            "twice",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    secrets:\n      - branches: [main]\n",
            "steps[0].secrets[0].name",
            "is missing",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    secrets:\n      - name: A\n        only: [main]\n",
            "steps[0].secrets[0].only",
            "unknown key",
        ),
    ] {
        let error = refusal(text);
        assert_eq!(error.field, field, "{text}");
        assert!(error.message.contains(says), "{text}: {}", error.message);
    }
}

#[test]
fn deploy_steps_publish_a_directory_or_name_a_url() {
    use kiln_core::deployments::DeployTarget;
    let text = format!(
        "{FULL}  - name: site\n    run: npm run build:site\n    depends_on: install\n    deploy: {{environment: production, publish: ./dist/}}\n"
    );
    let pipeline = Pipeline::parse(&text).unwrap();
    assert_eq!(Pipeline::parse(&pipeline.to_yaml()).unwrap(), pipeline);
    let site = pipeline
        .steps
        .iter()
        .find(|s| s.name.as_str() == "site")
        .unwrap();
    let deploy = site.deploy.as_ref().unwrap();
    assert_eq!(deploy.environment.as_str(), "production");
    assert_eq!(deploy.target, DeployTarget::Publish("dist".into()));
    let script = pipeline
        .steps
        .iter()
        .find(|s| s.name.as_str() == "deploy")
        .unwrap();
    assert_eq!(
        script.deploy.as_ref().unwrap().target,
        DeployTarget::Url("https://staging.example.com/app".into())
    );
    let plans = kiln_core::jobs::plan(&pipeline, "main");
    let spec =
        kiln_core::jobs::JobSpec::from_json(&plans.iter().find(|p| p.step == "site").unwrap().spec);
    assert_eq!(spec.deploy.as_ref(), Some(deploy));

    for (text, field, words) in [
        (
            "steps:\n  - name: a\n    run: x\n    deploy: {publish: dist}\n",
            "steps[0].deploy.environment",
            "is missing",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    deploy: {environment: Prod, publish: dist}\n",
            "steps[0].deploy.environment",
            "lowercase",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    deploy: {environment: prod}\n",
            "steps[0].deploy.publish",
            "either",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    deploy: {environment: prod, publish: dist, url: 'https://x.test'}\n",
            "steps[0].deploy.url",
            "not both",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    deploy: {environment: prod, publish: ../dist}\n",
            "steps[0].deploy.publish",
            "'..'",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    deploy: {environment: prod, publish: 'dist/*'}\n",
            "steps[0].deploy.publish",
            "glob",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    deploy: {environment: prod, url: 'ftp://x'}\n",
            "steps[0].deploy.url",
            "http",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    deploy: {environment: prod, branch: main, publish: d}\n",
            "steps[0].deploy.branch",
            "unknown key",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    deploy: {environment: prod, publish: d}\n  - name: b\n    run: y\n    deploy: {environment: prod, publish: e}\n",
            "steps[1].deploy.environment",
            "already deploys",
        ),
    ] {
        let error = Pipeline::parse(text).unwrap_err();
        assert_eq!(error.field, field, "{text}: {error}");
        assert!(error.message.contains(words), "{text}: {error}");
    }
}

/// The file's limits (docs/operations.md's limits table): 200 steps in a file of exactly
/// 256 KiB parse; a 201st step, or one byte more, is refused.
#[test]
fn the_file_and_its_steps_are_capped_at_their_limits() {
    use kiln_core::limits::{MAX_PIPELINE_FILE_BYTES, MAX_PIPELINE_STEPS};
    let file = |steps: usize, size: usize| {
        let mut text = String::from("steps:\n");
        for n in 0..steps {
            text.push_str(&format!("  - name: s{n}\n    run: echo {n}\n"));
        }
        // A comment pads the file to `size` bytes.
        let pad = size - text.len() - "#\n".len();
        text.push('#');
        text.push_str(&"p".repeat(pad));
        text.push('\n');
        assert_eq!(text.len(), size);
        text
    };
    let at = Pipeline::parse(&file(MAX_PIPELINE_STEPS, MAX_PIPELINE_FILE_BYTES))
        .expect("200 steps in 256 KiB parse");
    assert_eq!(at.steps.len(), MAX_PIPELINE_STEPS);
    let too_many = Pipeline::parse(&file(MAX_PIPELINE_STEPS + 1, 64 * 1024)).unwrap_err();
    assert!(too_many.to_string().contains("200"), "{too_many}");
    let too_large = Pipeline::parse(&file(1, MAX_PIPELINE_FILE_BYTES + 1)).unwrap_err();
    assert!(too_large.to_string().contains("256"), "{too_large}");
}
