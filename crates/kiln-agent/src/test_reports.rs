//! The JUnit reports a step wrote (`test_reports:` globs, relative to the workspace):
//! found without following symlinks or leaving the workspace, bounded in count, depth and
//! size; the agent uploads them as the build's test results after the step ran.

use std::path::{Path, PathBuf};

use kiln_core::glob::matches;

/// At most this many reports per step.
pub const MAX_FILES: usize = 50;
/// A report larger than this is left out (the server's limit).
pub const MAX_FILE_BYTES: u64 = 25 * 1024 * 1024;
/// The walk stops after this many directory entries.
const MAX_ENTRIES: usize = 20_000;
const MAX_DEPTH: usize = 16;

/// The regular files under `workspace` matching any pattern, sorted, at most
/// `MAX_FILES`; with the reasons files were left out.
pub fn find(workspace: &Path, patterns: &[String]) -> (Vec<PathBuf>, Vec<String>) {
    let mut found = Vec::new();
    let mut notes = Vec::new();
    if patterns.is_empty() {
        return (found, notes);
    }
    let mut stack = vec![(workspace.to_path_buf(), String::new(), 0usize)];
    let mut entries = 0usize;
    while let Some((dir, relative, depth)) = stack.pop() {
        let Ok(listing) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in listing.flatten() {
            entries += 1;
            if entries > MAX_ENTRIES {
                notes.push(format!(
                    "stopped looking for test reports after {MAX_ENTRIES} files"
                ));
                found.sort();
                found.truncate(MAX_FILES);
                return (found, notes);
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if relative.is_empty() {
                name
            } else {
                format!("{relative}/{name}")
            };
            // symlink_metadata: a link is neither followed nor taken.
            let Ok(metadata) = entry.path().symlink_metadata() else {
                continue;
            };
            if metadata.is_dir() {
                if depth < MAX_DEPTH && path != ".git" {
                    stack.push((entry.path(), path, depth + 1));
                }
            } else if metadata.is_file() && patterns.iter().any(|p| matches(p, &path)) {
                if metadata.len() > MAX_FILE_BYTES {
                    notes.push(format!(
                        "{path} is {} bytes, over the {MAX_FILE_BYTES}-byte limit; not uploaded",
                        metadata.len()
                    ));
                } else {
                    found.push(entry.path());
                }
            }
        }
    }
    found.sort();
    if found.len() > MAX_FILES {
        notes.push(format!(
            "{} reports matched; the first {MAX_FILES} are uploaded",
            found.len()
        ));
        found.truncate(MAX_FILES);
    }
    (found, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_found_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("reports/unit")).unwrap();
        std::fs::write(root.join("reports/unit/junit.xml"), "<testsuite/>").unwrap();
        std::fs::write(root.join("junit.xml"), "<testsuite/>").unwrap();
        std::fs::write(root.join("other.txt"), "x").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.xml"), "<x/>").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.xml"), root.join("leak.xml"))
            .unwrap();
        let (found, notes) = find(root, &["**/*.xml".to_owned()]);
        let names: Vec<String> = found
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert_eq!(names, vec!["junit.xml", "reports/unit/junit.xml"]);
        assert!(notes.is_empty());
        assert!(find(root, &[]).0.is_empty());
    }
}
