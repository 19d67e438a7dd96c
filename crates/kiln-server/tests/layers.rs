//! The dependency rule between the server's layers, read from the sources: the JSON API
//! (`api/`) and the dashboard (`web/`) are adapters on top; nothing below them — the
//! scheduler, ingest, live streams, notifications, webhooks, the reaper, auth, the wire
//! types — imports either, and the API does not reach into the dashboard. `routes.rs`
//! (the route table and its guard) and `lib.rs` join them.

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
