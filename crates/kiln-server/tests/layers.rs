//! The dependency rule between the server's layers, read from the sources: the JSON API
//! (`api/`) and the dashboard (`web/`) are adapters on top; nothing below them — the
//! scheduler, ingest, live streams, notifications, webhooks, the reaper, auth, the wire
//! types, the services — imports either, and neither reaches into the other. `routes.rs`
//! (the route table and its guard) and `lib.rs` join them. And no two top-level modules
//! import each other, directly or around a longer cycle.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `path` (or `path` itself).
fn sources(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_owned()];
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).unwrap() {
        files.extend(sources(&entry.unwrap().path()));
    }
    files
}

/// The lines of `file` naming `crate::{module}` (as a path, not as a prefix of another
/// name such as `crate::webhooks`), comments left out.
fn uses(file: &Path, module: &str) -> Vec<String> {
    let needle = format!("crate::{module}");
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .filter(|(_, line)| {
            line.match_indices(&needle).any(|(at, _)| {
                !line[at + needle.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
            })
        })
        .map(|(number, line)| format!("{}:{}: {}", file.display(), number + 1, line.trim()))
        .collect()
}

#[test]
fn lower_layers_never_import_the_api_or_the_dashboard() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut lower = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !["api", "web", "routes.rs", "lib.rs"].contains(&name.as_str()) {
            lower.extend(sources(&path));
        }
    }
    assert!(
        lower.len() > 20,
        "the scan found the modules: {}",
        lower.len()
    );
    let mut violations = Vec::new();
    for file in &lower {
        violations.extend(uses(file, "api"));
        violations.extend(uses(file, "web"));
    }
    for file in sources(&src.join("api")) {
        violations.extend(uses(&file, "web"));
    }
    // The dashboard and the API are siblings over the services.
    for file in sources(&src.join("web")) {
        violations.extend(uses(&file, "api"));
    }
    assert!(
        violations.is_empty(),
        "imports against the layering (move what both need below them):\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scan_sees_an_import_of_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sample.rs");
    std::fs::write(
        &file,
        "use crate::webhooks::payload;\n// crate::api in a comment\nuse crate::api::job_dto;\n",
    )
    .unwrap();
    assert_eq!(uses(&file, "web"), Vec::<String>::new());
    assert_eq!(uses(&file, "api").len(), 1);
}

/// The top-level module a source file belongs to (`api`, `scheduler`, `wire`…).
fn unit_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_str().unwrap().trim_end_matches(".rs").to_owned()
}

/// Which top-level modules import which, from `crate::NAME` paths outside comments.
fn module_graph(src: &Path) -> std::collections::BTreeMap<String, Vec<String>> {
    let files = sources(src);
    let units: std::collections::BTreeSet<String> =
        files.iter().map(|file| unit_of(src, file)).collect();
    let mut graph: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for file in &files {
        let from = unit_of(src, file);
        if from == "lib" {
            continue;
        }
        for to in &units {
            if *to != from && to != "lib" && !uses(file, to).is_empty() {
                let targets = graph.entry(from.clone()).or_default();
                if !targets.contains(to) {
                    targets.push(to.clone());
                }
            }
        }
    }
    graph
}

/// A cycle through `start`, if the graph has one.
fn cycle_through(
    graph: &std::collections::BTreeMap<String, Vec<String>>,
    start: &str,
) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_owned(), vec![start.to_owned()])];
    let mut seen = std::collections::BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in graph.get(&at).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start.to_owned());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

#[test]
fn the_top_level_modules_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(graph.len() > 10, "the scan found the modules: {graph:?}");
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|unit| cycle_through(&graph, unit))
        .map(|cycle| cycle.join(" → "))
        .collect();
    assert!(
        cycles.is_empty(),
        "modules that import each other (move what both need into one of them, or below both):\n{}",
        cycles.join("\n")
    );
}
