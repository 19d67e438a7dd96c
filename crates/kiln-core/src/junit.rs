//! JUnit XML test reports (jest-junit, pytest `--junitxml`, cargo-nextest, Maven
//! Surefire, …) read as a stream into test cases, with bounded memory and time: no DTD
//! or entity expansion, a nesting limit, a case limit, long texts cut. And flaky-test
//! detection over a test's history.

use std::collections::BTreeMap;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use crate::Millis;

/// The most test cases one report may hold.
pub const MAX_CASES: usize = 100_000;
/// The deepest element nesting taken (suites inside suites, …).
pub const MAX_DEPTH: usize = 32;
/// Names, suites, class names and files are cut to this many bytes.
pub const MAX_NAME_BYTES: usize = 1000;
/// Failure messages are cut to this many bytes.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TestStatus {
    Passed,
    Failed,
    /// The test could not run properly (an `<error>`: a crash, a broken fixture).
    Error,
    Skipped,
}

impl TestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Error => "error",
            Self::Skipped => "skipped",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "passed" => Self::Passed,
            "failed" => Self::Failed,
            "error" => Self::Error,
            "skipped" => Self::Skipped,
            _ => return None,
        })
    }

    /// Failed or errored.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::Error)
    }
}

/// One test case of a report.
#[derive(Clone, Debug, PartialEq)]
pub struct TestCase {
    /// The enclosing `<testsuite name>` (nested suites joined with ` › `).
    pub suite: String,
    pub classname: Option<String>,
    pub name: String,
    pub file: Option<String>,
    pub duration_ms: Option<i64>,
    pub status: TestStatus,
    /// The failure's, error's or skip's message (its `message` attribute, else its text).
    pub message: Option<String>,
}

impl TestCase {
    /// The test's identity across builds: suite, class and name.
    pub fn key(&self) -> String {
        match &self.classname {
            Some(class) if !class.is_empty() && class != &self.suite => {
                format!("{} › {} › {}", self.suite, class, self.name)
            }
            _ => format!("{} › {}", self.suite, self.name),
        }
    }
}

/// Why a report was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JunitError(pub String);

fn cut(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

fn attribute(element: &BytesStart, name: &[u8]) -> Result<Option<String>, JunitError> {
    for attribute in element.attributes() {
        let attribute =
            attribute.map_err(|e| JunitError(format!("an attribute is malformed: {e}")))?;
        if attribute.key.as_ref() == name {
            let value = attribute
                .unescape_value()
                .map_err(|e| JunitError(format!("an attribute value is malformed: {e}")))?;
            return Ok(Some(value.into_owned()));
        }
    }
    Ok(None)
}

/// Seconds as JUnit writes them (`0.012`, `1,234.5` from some locales) to milliseconds.
fn seconds_to_ms(raw: &str) -> Option<i64> {
    let seconds: f64 = raw.trim().replace(',', "").parse().ok()?;
    (seconds.is_finite() && (0.0..1e9).contains(&seconds))
        .then(|| (seconds * 1000.0).round() as i64)
}

/// What is open while reading a `<testcase>`.
struct OpenCase {
    case: TestCase,
    /// Inside its `<failure>`/`<error>`/`<skipped>`: collect text as the message.
    outcome_depth: Option<usize>,
    text: String,
}

/// Reads a JUnit XML report.
pub fn parse(xml: &[u8]) -> Result<Vec<TestCase>, JunitError> {
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().check_end_names = true;
    let mut buffer = Vec::new();
    let mut suites: Vec<String> = Vec::new();
    // Suite names by depth: a `<testsuite>` pushes, its end pops.
    let mut suite_depths: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut open: Option<(usize, OpenCase)> = None;
    let mut cases = Vec::new();
    let mut saw_root = false;
    loop {
        let position = reader.buffer_position();
        let event = reader
            .read_event_into(&mut buffer)
            .map_err(|e| JunitError(format!("not well-formed XML near byte {position}: {e}")))?;
        match event {
            Event::DocType(_) => {
                return Err(JunitError(
                    "DTDs are not accepted in test reports (no <!DOCTYPE …>)".into(),
                ));
            }
            Event::Start(element) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(JunitError(format!(
                        "elements nest deeper than {MAX_DEPTH} levels"
                    )));
                }
                saw_root |= depth == 1;
                start(
                    &element,
                    depth,
                    false,
                    &mut suites,
                    &mut suite_depths,
                    &mut open,
                    &mut cases,
                )?;
            }
            Event::Empty(element) => {
                saw_root |= depth == 0;
                start(
                    &element,
                    depth + 1,
                    true,
                    &mut suites,
                    &mut suite_depths,
                    &mut open,
                    &mut cases,
                )?;
            }
            Event::End(_) => {
                if let Some((case_depth, case)) = &mut open {
                    if case.outcome_depth == Some(depth) {
                        let text = std::mem::take(&mut case.text);
                        let text = text.trim();
                        if case.case.message.is_none() && !text.is_empty() {
                            case.case.message = Some(cut(text.to_owned(), MAX_MESSAGE_BYTES));
                        }
                        case.outcome_depth = None;
                    }
                    if *case_depth == depth {
                        let (_, case) = open.take().expect("an open case");
                        cases.push(case.case);
                        if cases.len() > MAX_CASES {
                            return Err(JunitError(format!(
                                "the report holds more than {MAX_CASES} test cases; split it"
                            )));
                        }
                    }
                }
                if suite_depths.last() == Some(&depth) {
                    suite_depths.pop();
                    suites.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Event::Text(text) => {
                if let Some((_, case)) = &mut open
                    && case.outcome_depth.is_some()
                    && case.text.len() < MAX_MESSAGE_BYTES
                {
                    let decoded = text
                        .decode()
                        .map_err(|e| JunitError(format!("text is not valid UTF-8: {e}")))?;
                    let unescaped = quick_xml::escape::unescape(&decoded)
                        .map_err(|e| JunitError(format!("text holds an unknown entity: {e}")))?;
                    case.text.push_str(&unescaped);
                }
            }
            Event::GeneralRef(reference) => {
                if let Some((_, case)) = &mut open
                    && case.outcome_depth.is_some()
                    && case.text.len() < MAX_MESSAGE_BYTES
                {
                    let name = reference
                        .decode()
                        .map_err(|e| JunitError(format!("text is not valid UTF-8: {e}")))?;
                    let reference = format!("&{name};");
                    let resolved = quick_xml::escape::unescape(&reference)
                        .map_err(|e| JunitError(format!("text holds an unknown entity: {e}")))?;
                    case.text.push_str(&resolved);
                }
            }
            Event::CData(data) => {
                if let Some((_, case)) = &mut open
                    && case.outcome_depth.is_some()
                    && case.text.len() < MAX_MESSAGE_BYTES
                {
                    case.text.push_str(&String::from_utf8_lossy(&data));
                }
            }
            Event::Eof if depth > 0 => {
                return Err(JunitError(
                    "the report ends before its elements close (truncated?)".into(),
                ));
            }
            Event::Eof => break,
            _ => {}
        }
        buffer.clear();
    }
    if !saw_root {
        return Err(JunitError(
            "the body is not a JUnit report: no <testsuites> or <testsuite> element".into(),
        ));
    }
    // No NUL reaches storage (PostgreSQL's text refuses it; XML forbids it anyway).
    let clean = |text: &mut String| {
        if text.contains('\0') {
            *text = text.replace('\0', "\u{FFFD}");
        }
    };
    for case in &mut cases {
        clean(&mut case.suite);
        clean(&mut case.name);
        for text in [&mut case.classname, &mut case.file, &mut case.message]
            .into_iter()
            .flatten()
        {
            clean(text);
        }
    }
    Ok(cases)
}

/// An element opens (or is empty, `<skipped/>`).
#[allow(clippy::too_many_arguments)]
fn start(
    element: &BytesStart,
    depth: usize,
    empty: bool,
    suites: &mut Vec<String>,
    suite_depths: &mut Vec<usize>,
    open: &mut Option<(usize, OpenCase)>,
    cases: &mut Vec<TestCase>,
) -> Result<(), JunitError> {
    let name = element.local_name();
    match name.as_ref() {
        b"testsuite" if open.is_none() && !empty => {
            let suite = attribute(element, b"name")?.unwrap_or_default();
            suites.push(cut(suite, MAX_NAME_BYTES));
            suite_depths.push(depth);
        }
        b"testcase" if open.is_none() => {
            let case = TestCase {
                suite: suites
                    .iter()
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" › "),
                classname: attribute(element, b"classname")?.map(|c| cut(c, MAX_NAME_BYTES)),
                name: cut(
                    attribute(element, b"name")?.unwrap_or_default(),
                    MAX_NAME_BYTES,
                ),
                file: attribute(element, b"file")?.map(|f| cut(f, MAX_NAME_BYTES)),
                duration_ms: attribute(element, b"time")?
                    .as_deref()
                    .and_then(seconds_to_ms),
                status: TestStatus::Passed,
                message: None,
            };
            if empty {
                cases.push(case);
                if cases.len() > MAX_CASES {
                    return Err(JunitError(format!(
                        "the report holds more than {MAX_CASES} test cases; split it"
                    )));
                }
            } else {
                *open = Some((
                    depth,
                    OpenCase {
                        case,
                        outcome_depth: None,
                        text: String::new(),
                    },
                ));
            }
        }
        outcome @ (b"failure" | b"error" | b"skipped") => {
            if let Some((case_depth, case)) = open
                && depth == *case_depth + 1
            {
                let status = match outcome {
                    b"failure" => TestStatus::Failed,
                    b"error" => TestStatus::Error,
                    _ => TestStatus::Skipped,
                };
                // A failure outranks an error, an error a skip (one case may list several).
                if case.case.status == TestStatus::Passed
                    || status_rank(status) > status_rank(case.case.status)
                {
                    case.case.status = status;
                    case.case.message = attribute(element, b"message")?
                        .filter(|m| !m.trim().is_empty())
                        .map(|m| cut(m, MAX_MESSAGE_BYTES));
                    if !empty {
                        case.outcome_depth = Some(depth);
                        case.text.clear();
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn status_rank(status: TestStatus) -> u8 {
    match status {
        TestStatus::Passed => 0,
        TestStatus::Skipped => 1,
        TestStatus::Error => 2,
        TestStatus::Failed => 3,
    }
}

/// One past result of a test, for flaky detection.
#[derive(Clone, Debug, PartialEq)]
pub struct PastResult {
    pub key: String,
    pub at: Millis,
    pub commit: Option<String>,
    pub status: TestStatus,
}

/// A test that both passed and failed on the same commit, or flipped between passing
/// and failing at least twice, within the results given.
#[derive(Clone, Debug, PartialEq)]
pub struct FlakyTest {
    pub key: String,
    pub first_seen: Millis,
    pub last_seen: Millis,
    /// Passing ↔ failing changes in time order.
    pub flips: u64,
    /// Commits on which it both passed and failed.
    pub same_commit_conflicts: u64,
    pub runs: u64,
    pub failures: u64,
}

/// Flaky tests among `results` (skips ignored), most flips first.
pub fn flaky(results: &[PastResult]) -> Vec<FlakyTest> {
    let mut by_key: BTreeMap<&str, Vec<&PastResult>> = BTreeMap::new();
    for result in results {
        if result.status != TestStatus::Skipped {
            by_key.entry(&result.key).or_default().push(result);
        }
    }
    let mut flaky = Vec::new();
    for (key, mut runs) in by_key {
        runs.sort_by_key(|r| r.at);
        let flips = runs
            .windows(2)
            .filter(|pair| pair[0].status.is_failure() != pair[1].status.is_failure())
            .count() as u64;
        let mut per_commit: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
        for run in &runs {
            if let Some(commit) = &run.commit {
                let seen = per_commit.entry(commit).or_default();
                if run.status.is_failure() {
                    seen.1 = true;
                } else {
                    seen.0 = true;
                }
            }
        }
        let same_commit_conflicts = per_commit.values().filter(|(p, f)| *p && *f).count() as u64;
        if same_commit_conflicts == 0 && flips < 2 {
            continue;
        }
        // First seen: the first failure after a pass (or the first failure).
        let first_seen = runs
            .windows(2)
            .find(|pair| !pair[0].status.is_failure() && pair[1].status.is_failure())
            .map(|pair| pair[1].at)
            .or_else(|| runs.iter().find(|r| r.status.is_failure()).map(|r| r.at))
            .unwrap_or(runs[0].at);
        flaky.push(FlakyTest {
            key: key.to_owned(),
            first_seen,
            last_seen: runs[runs.len() - 1].at,
            flips,
            same_commit_conflicts,
            runs: runs.len() as u64,
            failures: runs.iter().filter(|r| r.status.is_failure()).count() as u64,
        });
    }
    flaky.sort_by(|a, b| {
        (b.same_commit_conflicts + b.flips)
            .cmp(&(a.same_commit_conflicts + a.flips))
            .then_with(|| a.key.cmp(&b.key))
    });
    flaky
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_statuses_messages_and_nesting() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="all" tests="5">
  <testsuite name="math" time="0.5">
    <testsuite name="add">
      <testcase classname="math.add" name="one plus one" time="0.012"/>
      <testcase classname="math.add" name="fails" time="1.5" file="math.js">
        <failure message="expected 2, got 3" type="AssertionError">stack &amp; trace</failure>
        <system-out>lots of output</system-out>
      </testcase>
    </testsuite>
    <testcase name="errs"><error><![CDATA[boom <here>]]></error></testcase>
    <testcase name="skipped &lt;x&gt;"><skipped message="not today"/></testcase>
    <testcase name="no time"></testcase>
  </testsuite>
</testsuites>"#;
        let cases = parse(xml).unwrap();
        assert_eq!(cases.len(), 5);
        assert_eq!(cases[0].suite, "math › add");
        assert_eq!(cases[0].duration_ms, Some(12));
        assert_eq!(cases[0].status, TestStatus::Passed);
        assert_eq!(cases[1].status, TestStatus::Failed);
        assert_eq!(cases[1].message.as_deref(), Some("expected 2, got 3"));
        assert_eq!(cases[1].file.as_deref(), Some("math.js"));
        assert_eq!(cases[1].key(), "math › add › math.add › fails");
        assert_eq!(cases[2].key(), "math › errs");
        assert_eq!(cases[2].suite, "math");
        assert_eq!(cases[2].status, TestStatus::Error);
        assert_eq!(cases[2].message.as_deref(), Some("boom <here>"));
        assert_eq!(cases[3].name, "skipped <x>");
        assert_eq!(cases[3].status, TestStatus::Skipped);
        assert_eq!(cases[3].message.as_deref(), Some("not today"));
        assert_eq!(cases[4].duration_ms, None);
        // A bare <testsuite> root works too.
        let single =
            parse(br#"<testsuite name="s"><testcase name="t" time="2"/></testsuite>"#).unwrap();
        assert_eq!(
            (single[0].suite.as_str(), single[0].duration_ms),
            ("s", Some(2000))
        );
    }

    #[test]
    fn hostile_reports_are_refused_or_bounded() {
        let bomb = br#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>
<testsuites><testcase name="&lol2;"/></testsuites>"#;
        assert!(parse(bomb).unwrap_err().0.contains("DTD"));
        let deep = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
        assert!(parse(deep.as_bytes()).unwrap_err().0.contains("deeper"));
        assert!(
            parse(b"<testsuites><testcase name='x'>")
                .unwrap_err()
                .0
                .contains("truncated")
        );
        assert!(
            parse(b"<testsuites></testsuite>")
                .unwrap_err()
                .0
                .contains("not well-formed")
        );
        assert!(
            parse(b"just text")
                .unwrap_err()
                .0
                .contains("not a JUnit report")
        );
        assert!(parse(b"").is_err());
        let nul = parse(b"<testsuite name='s'><testcase name='a\0b'><failure>x\0y</failure></testcase></testsuite>");
        if let Ok(cases) = nul {
            assert!(
                !cases[0].name.contains('\0') && !cases[0].message.as_ref().unwrap().contains('\0')
            );
        }
        let long = format!(
            r#"<testsuite name="s"><testcase name="{}"><failure>{}</failure></testcase></testsuite>"#,
            "n".repeat(5000),
            "m".repeat(100_000)
        );
        let cases = parse(long.as_bytes()).unwrap();
        assert!(cases[0].name.len() <= MAX_NAME_BYTES + 3);
        assert!(cases[0].message.as_ref().unwrap().len() <= 2 * MAX_MESSAGE_BYTES);
        let mut many = String::from("<testsuite name='s'>");
        for i in 0..=MAX_CASES {
            many.push_str(&format!("<testcase name='t{i}'/>"));
        }
        many.push_str("</testsuite>");
        assert!(parse(many.as_bytes()).unwrap_err().0.contains("more than"));
    }

    #[test]
    fn flaky_tests_flip_or_disagree_on_one_commit() {
        let result = |key: &str, at: i64, commit: &str, status| PastResult {
            key: key.into(),
            at: Millis(at),
            commit: Some(commit.into()),
            status,
        };
        use TestStatus::*;
        let results = vec![
            // Same commit, passed then failed: flaky.
            result("a", 1, "c1", Passed),
            result("a", 2, "c1", Failed),
            // Broken once and fixed: one flip back, not flaky.
            result("b", 1, "c1", Passed),
            result("b", 2, "c2", Failed),
            result("b", 3, "c3", Failed),
            // Flips twice across commits: flaky.
            result("c", 1, "c1", Passed),
            result("c", 2, "c2", Failed),
            result("c", 3, "c3", Passed),
            result("c", 4, "c4", Skipped),
        ];
        let found = flaky(&results);
        let keys: Vec<&str> = found.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, vec!["a", "c"]);
        assert_eq!(
            (found[0].same_commit_conflicts, found[0].first_seen),
            (1, Millis(2))
        );
        assert_eq!(
            (found[1].flips, found[1].runs, found[1].failures),
            (2, 3, 1)
        );
    }
}
