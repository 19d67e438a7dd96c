//! Workspace globs as `.kiln.yml` writes them (`artifacts:`, `test_reports:`): `*` and
//! `?` within one path segment, `**` for any number of segments.

/// Whether `path` (workspace-relative, `/`-separated) matches `pattern`.
pub fn matches(pattern: &str, path: &str) -> bool {
    let pattern = pattern_segments(pattern);
    let path: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    segments(&pattern, &path)
}

/// Whether `path` matches `pattern` or lies under a directory that does, so a pattern
/// naming a directory (`dist`, `dist/`, `build/*`) takes everything below it, as GitLab's
/// `artifacts: paths:` does.
pub fn matches_or_under(pattern: &str, path: &str) -> bool {
    let pattern = pattern_segments(pattern);
    let path: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    (1..=path.len()).any(|end| segments(&pattern, &path[..end]))
}

fn pattern_segments(pattern: &str) -> Vec<&str> {
    pattern
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect()
}

fn segments(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| segments(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((segment, path_rest)) => {
                segment_matches(first.as_bytes(), segment.as_bytes()) && segments(rest, path_rest)
            }
            None => false,
        },
    }
}

fn segment_matches(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| segment_matches(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && segment_matches(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && segment_matches(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_segments_and_any_depth() {
        assert!(matches("junit.xml", "junit.xml"));
        assert!(!matches("junit.xml", "sub/junit.xml"));
        assert!(matches("reports/*.xml", "reports/a.xml"));
        assert!(!matches("reports/*.xml", "reports/x/a.xml"));
        assert!(matches("**/junit-*.xml", "a/b/junit-1.xml"));
        assert!(matches("**/junit-*.xml", "junit-2.xml"));
        assert!(matches("./test-results/??.xml", "test-results/ab.xml"));
        assert!(!matches("*.xml", "a.json"));
    }

    #[test]
    fn a_directory_pattern_takes_what_is_under_it() {
        assert!(matches_or_under("dist", "dist/index.html"));
        assert!(matches_or_under("dist/", "dist/assets/app.js"));
        assert!(matches_or_under("dist", "dist"));
        assert!(!matches_or_under("dist", "distribution/x"));
        assert!(!matches_or_under("dist", "src/dist.js"));
        assert!(matches_or_under("build/*", "build/a/b.txt"));
        assert!(matches_or_under("**/*.tgz", "pkg/out/x.tgz"));
        assert!(!matches_or_under("*.tgz", "pkg/x.tgz"));
    }
}
