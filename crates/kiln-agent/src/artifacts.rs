//! A step's artifacts on the agent: the files its `artifacts:` globs match (a directory
//! takes what is under it; symlinks are neither followed nor uploaded; `.git` is left
//! out), uploaded after the step succeeds; and the artifacts of the steps it depends on,
//! written into its workspace before it runs — each checked against its SHA-256 and kept
//! inside the workspace even when the checkout holds symlinks.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kiln_core::artifacts::{ArtifactPath, MAX_FILES_PER_BUILD};
use kiln_core::glob::matches_or_under;

/// The walk stops after this many directory entries.
const MAX_ENTRIES: usize = 200_000;
const MAX_DEPTH: usize = 64;

/// A file to upload: where it is and the artifact path it gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub local: PathBuf,
    pub path: String,
    pub mode: u32,
}

/// What the globs matched, sorted by path, with notes on what was left out.
pub fn find(workspace: &Path, patterns: &[String]) -> (Vec<Found>, Vec<String>) {
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
                    "stopped looking for artifacts after {MAX_ENTRIES} files"
                ));
                stack.clear();
                break;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if relative.is_empty() {
                name
            } else {
                format!("{relative}/{name}")
            };
            let Ok(metadata) = entry.path().symlink_metadata() else {
                continue;
            };
            let wanted = patterns.iter().any(|p| matches_or_under(p, &path));
            if metadata.is_dir() {
                if depth < MAX_DEPTH && path != ".git" {
                    stack.push((entry.path(), path, depth + 1));
                }
            } else if metadata.file_type().is_symlink() {
                if wanted {
                    notes.push(format!("{path} is a symbolic link; not uploaded"));
                }
            } else if metadata.is_file() && wanted {
                match ArtifactPath::parse(&path) {
                    Ok(_) => found.push(Found {
                        local: entry.path(),
                        path,
                        mode: metadata.permissions().mode() & 0o7777,
                    }),
                    Err(error) => notes.push(format!("{path:?} not uploaded: {}", error.message)),
                }
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    if found.len() > MAX_FILES_PER_BUILD {
        notes.push(format!(
            "{} files matched; a build holds at most {MAX_FILES_PER_BUILD}",
            found.len()
        ));
        found.truncate(MAX_FILES_PER_BUILD);
    }
    (found, notes)
}

/// Where an inherited artifact goes in the workspace: its directories created, none of
/// them a symlink leading out of the workspace. `Err` says why it cannot go there.
pub fn destination(workspace: &Path, path: &str) -> Result<PathBuf, String> {
    let checked = ArtifactPath::parse(path).map_err(|error| error.message)?;
    let target = workspace.join(checked.as_str());
    let parent = target
        .parent()
        .ok_or_else(|| "has no directory".to_owned())?;
    std::fs::create_dir_all(parent).map_err(|e| format!("cannot create its directory: {e}"))?;
    let root = workspace
        .canonicalize()
        .map_err(|e| format!("cannot resolve the workspace: {e}"))?;
    let real_parent = parent
        .canonicalize()
        .map_err(|e| format!("cannot resolve its directory: {e}"))?;
    if !real_parent.starts_with(&root) {
        return Err("its directory leads out of the workspace (a symbolic link)".into());
    }
    let target = real_parent.join(checked.file_name());
    if target
        .symlink_metadata()
        .is_ok_and(|metadata| metadata.file_type().is_symlink() || metadata.is_dir())
    {
        return Err("a symbolic link or directory of the checkout is in the way".into());
    }
    Ok(target)
}

/// Gives a written file its recorded permission bits.
pub fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o777))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_take_files_and_directories_but_no_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("dist/assets")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join("dist/index.html"), "<h1>hi</h1>").unwrap();
        std::fs::write(root.join("dist/assets/app.js"), "1").unwrap();
        std::fs::write(root.join("report.txt"), "r").unwrap();
        std::fs::write(root.join("other.txt"), "o").unwrap();
        std::fs::write(root.join(".git/config"), "x").unwrap();
        std::fs::set_permissions(
            root.join("report.txt"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("dist/leak")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("dist/outside")).unwrap();
        let (found, notes) = find(root, &["dist".into(), "*.txt".into(), ".git".into()]);
        let paths: Vec<&str> = found.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "dist/assets/app.js",
                "dist/index.html",
                "other.txt",
                "report.txt"
            ]
        );
        assert_eq!(found[3].mode, 0o755);
        assert!(notes.iter().any(|n| n.contains("dist/leak")), "{notes:?}");
        assert!(
            notes.iter().any(|n| n.contains("dist/outside")),
            "{notes:?}"
        );
        assert!(find(root, &["nothing/*".into()]).0.is_empty());
    }

    #[test]
    fn destinations_stay_inside_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
        let inside = destination(root, "node_modules/a/index.js").unwrap();
        assert!(inside.starts_with(root.canonicalize().unwrap()));
        assert!(root.join("node_modules/a").is_dir());
        assert!(
            destination(root, "link/x")
                .unwrap_err()
                .contains("out of the workspace")
        );
        assert!(destination(root, "../x").is_err());
        assert!(destination(root, "/etc/passwd").is_err());
        std::os::unix::fs::symlink(outside.path().join("f"), root.join("f")).unwrap();
        assert!(destination(root, "f").unwrap_err().contains("in the way"));
    }
}
