//! Comparing two builds' artifact manifests file by file (identical, content differs,
//! only in A, only in B) and the verdict: reproducible when both hold the same files with
//! the same content.

use std::collections::BTreeMap;

/// One file of a manifest, as the comparison sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// How one path compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileStatus {
    /// Same SHA-256 (and so the same size).
    Identical,
    /// Both builds have the path with other content.
    Differs,
    OnlyA,
    OnlyB,
}

impl FileStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identical => "identical",
            Self::Differs => "differs",
            Self::OnlyA => "only_a",
            Self::OnlyB => "only_b",
        }
    }
}

/// The comparison's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every file identical, none only on one side, and at least one file.
    Reproducible,
    /// Some file differs or is only on one side.
    NotReproducible,
    /// Neither build has artifacts: nothing shows either way.
    NoArtifacts,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reproducible => "reproducible",
            Self::NotReproducible => "not_reproducible",
            Self::NoArtifacts => "no_artifacts",
        }
    }
}

/// One path of the comparison with what each side has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComparedFile {
    pub path: String,
    pub status: FileStatus,
    pub a: Option<ManifestFile>,
    pub b: Option<ManifestFile>,
}

/// Two manifests compared: every path of either, by path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    pub files: Vec<ComparedFile>,
    pub verdict: Verdict,
}

impl Comparison {
    /// How many paths have `status`.
    pub fn count(&self, status: FileStatus) -> usize {
        self.files.iter().filter(|f| f.status == status).count()
    }
}

/// Compares manifest `a` with manifest `b` (paths are unique within each).
pub fn compare_manifests(a: &[ManifestFile], b: &[ManifestFile]) -> Comparison {
    let mut paths: BTreeMap<&str, (Option<&ManifestFile>, Option<&ManifestFile>)> = BTreeMap::new();
    for file in a {
        paths.entry(file.path.as_str()).or_default().0 = Some(file);
    }
    for file in b {
        paths.entry(file.path.as_str()).or_default().1 = Some(file);
    }
    let files: Vec<ComparedFile> = paths
        .into_iter()
        .map(|(path, (a, b))| {
            let status = match (a, b) {
                (Some(a), Some(b)) if a.sha256 == b.sha256 && a.size == b.size => {
                    FileStatus::Identical
                }
                (Some(_), Some(_)) => FileStatus::Differs,
                (Some(_), None) => FileStatus::OnlyA,
                _ => FileStatus::OnlyB,
            };
            ComparedFile {
                path: path.to_owned(),
                status,
                a: a.cloned(),
                b: b.cloned(),
            }
        })
        .collect();
    let verdict = if files.is_empty() {
        Verdict::NoArtifacts
    } else if files.iter().all(|f| f.status == FileStatus::Identical) {
        Verdict::Reproducible
    } else {
        Verdict::NotReproducible
    };
    Comparison { files, verdict }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str) -> ManifestFile {
        ManifestFile {
            path: path.to_owned(),
            size: content.len() as u64,
            sha256: format!("sha-of-{content}"),
        }
    }

    #[test]
    fn the_same_files_are_reproducible() {
        let a = [file("bin/app", "x"), file("README", "r")];
        let b = [file("README", "r"), file("bin/app", "x")];
        let comparison = compare_manifests(&a, &b);
        assert_eq!(comparison.verdict, Verdict::Reproducible);
        assert_eq!(
            comparison
                .files
                .iter()
                .map(|f| (f.path.as_str(), f.status))
                .collect::<Vec<_>>(),
            vec![
                ("README", FileStatus::Identical),
                ("bin/app", FileStatus::Identical)
            ]
        );
    }

    #[test]
    fn each_kind_of_difference_is_named() {
        let a = [file("same", "s"), file("changed", "1"), file("gone", "g")];
        let b = [file("same", "s"), file("changed", "2"), file("new", "n")];
        let comparison = compare_manifests(&a, &b);
        assert_eq!(comparison.verdict, Verdict::NotReproducible);
        let status = |path: &str| {
            comparison
                .files
                .iter()
                .find(|f| f.path == path)
                .unwrap()
                .status
        };
        assert_eq!(status("same"), FileStatus::Identical);
        assert_eq!(status("changed"), FileStatus::Differs);
        assert_eq!(status("gone"), FileStatus::OnlyA);
        assert_eq!(status("new"), FileStatus::OnlyB);
        assert_eq!(comparison.count(FileStatus::Differs), 1);
        let changed = comparison
            .files
            .iter()
            .find(|f| f.path == "changed")
            .unwrap();
        assert_eq!(changed.a.as_ref().unwrap().sha256, "sha-of-1");
        assert_eq!(changed.b.as_ref().unwrap().sha256, "sha-of-2");
    }

    #[test]
    fn an_extra_file_alone_makes_it_not_reproducible() {
        let comparison = compare_manifests(&[file("a", "1")], &[file("a", "1"), file("b", "2")]);
        assert_eq!(comparison.verdict, Verdict::NotReproducible);
    }

    #[test]
    fn no_files_on_either_side_is_no_verdict() {
        assert_eq!(compare_manifests(&[], &[]).verdict, Verdict::NoArtifacts);
        assert_eq!(
            compare_manifests(&[file("a", "1")], &[]).verdict,
            Verdict::NotReproducible
        );
    }
}
