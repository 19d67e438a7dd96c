//! Snapshot files for rendered pages: `assert_snapshot("agents-admin", &html)` compares
//! against `tests/snapshots/agents-admin.html` after `normalize`; run with
//! `KILN_UPDATE_SNAPSHOTS=1` to (re)write the files, then review them with `git diff`.
//! A mismatch fails with the first differing lines and their surroundings.

use std::path::PathBuf;

/// What `normalize` replaces with placeholders, beyond its own rules: values a test
/// knows to be volatile (a run id, a generated name), each with its placeholder.
#[derive(Clone, Debug, Default)]
pub struct Volatile {
    pairs: Vec<(String, String)>,
}

impl Volatile {
    pub fn new() -> Volatile {
        Volatile::default()
    }

    /// Replaces every occurrence of `value` with `{placeholder}`.
    pub fn with(mut self, value: impl Into<String>, placeholder: &str) -> Volatile {
        let value = value.into();
        if !value.is_empty() {
            self.pairs.push((value, format!("{{{placeholder}}}")));
        }
        self
    }
}

/// Attribute and path prefixes followed by a database id, which differs between engines
/// (PostgreSQL sequences skip numbers SQLite does not).
const ID_PREFIXES: &[&str] = &[
    "data-agent-id=\"",
    "data-job=\"",
    "data-notification-id=\"",
    "data-token-id=\"",
    "data-webhook-id=\"",
    "data-delivery-id=\"",
    "/notifications/",
    "/tokens/",
    "/members/",
    "/webhooks/",
    "/deliveries/",
    "id=\"role-",
    "for=\"role-",
    "before=",
];

/// Replaces what changes from run to run: CSRF tokens, the asset version, secrets
/// (`kiln_…` tokens and prefixes, `whsec_…`), database ids, and the given values.
pub fn normalize(html: &str, volatile: &Volatile) -> String {
    let mut text = html.to_owned();
    for (value, placeholder) in &volatile.pairs {
        text = text.replace(value.as_str(), placeholder);
    }
    text = replace_after(
        &text,
        "name=\"csrf-token\" content=\"",
        |c| c != '"',
        "{csrf}",
    );
    text = replace_after(&text, "name=\"_csrf\" value=\"", |c| c != '"', "{csrf}");
    text = replace_after(&text, "?v=", |c| c.is_ascii_alphanumeric(), "{version}");
    text = replace_after(
        &text,
        "kiln_",
        |c| c.is_ascii_alphanumeric() || c == '_',
        "{secret}",
    );
    text = replace_after(
        &text,
        "whsec_",
        |c| c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '=',
        "{secret}",
    );
    for prefix in ID_PREFIXES {
        text = replace_after(&text, prefix, |c| c.is_ascii_digit(), "{id}");
    }
    text
}

/// Replaces the run of characters matching `keep` right after each `prefix` (when there
/// is at least one) with `placeholder`.
fn replace_after(
    text: &str,
    prefix: &str,
    keep: impl Fn(char) -> bool,
    placeholder: &str,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let after = at + prefix.len();
        out.push_str(&rest[..after]);
        let tail = &rest[after..];
        let run = tail
            .char_indices()
            .find(|(_, c)| !keep(*c))
            .map_or(tail.len(), |(index, _)| index);
        if run > 0 && !tail.starts_with('{') {
            out.push_str(placeholder);
            rest = &tail[run..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

fn snapshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("snapshots")
        .join(format!("{name}.html"))
}

/// Compares a page with its snapshot (or writes it under `KILN_UPDATE_SNAPSHOTS=1`).
pub fn assert_snapshot(name: &str, html: &str, volatile: &Volatile) {
    let actual = normalize(html, volatile);
    let path = snapshot_path(name);
    if std::env::var_os("KILN_UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "no snapshot {}: run the test with KILN_UPDATE_SNAPSHOTS=1 to write it, then review it",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "page differs from snapshot {}\n{}\nIf the change is intended, rerun with KILN_UPDATE_SNAPSHOTS=1 and review the diff.",
            path.display(),
            diff(&expected, &actual)
        );
    }
}

/// The first differing lines with three lines of context (`-` expected, `+` actual).
fn diff(expected: &str, actual: &str) -> String {
    let old: Vec<&str> = expected.lines().collect();
    let new: Vec<&str> = actual.lines().collect();
    let first = old
        .iter()
        .zip(&new)
        .position(|(a, b)| a != b)
        .unwrap_or(old.len().min(new.len()));
    // Where the two agree again, looking from the end.
    let common_tail = old
        .iter()
        .rev()
        .zip(new.iter().rev())
        .take_while(|(a, b)| a == b)
        .count()
        .min(old.len() - first)
        .min(new.len() - first);
    let start = first.saturating_sub(3);
    let mut out = String::new();
    for line in &old[start..first] {
        out.push_str(&format!("  {line}\n"));
    }
    let old_end = old.len() - common_tail;
    let new_end = new.len() - common_tail;
    for line in old[first..old_end].iter().take(40) {
        out.push_str(&format!("- {line}\n"));
    }
    for line in new[first..new_end].iter().take(40) {
        out.push_str(&format!("+ {line}\n"));
    }
    for line in old[old_end..].iter().take(3) {
        out.push_str(&format!("  {line}\n"));
    }
    format!("@@ line {} @@\n{out}", first + 1)
}
