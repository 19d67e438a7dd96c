//! The JUnit reader over reports written by real runners (jest-junit, pytest, cargo-nextest;
//! `tests/fixtures/junit/README.md` says how they were made and what each holds).

use kiln_core::junit::{TestStatus, parse};

fn counts(file: &str) -> (usize, usize, usize, usize, usize) {
    let path = format!("{}/tests/fixtures/junit/{file}", env!("CARGO_MANIFEST_DIR"));
    let cases = parse(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let of = |status| cases.iter().filter(|c| c.status == status).count();
    (
        cases.len(),
        of(TestStatus::Passed),
        of(TestStatus::Failed),
        of(TestStatus::Error),
        of(TestStatus::Skipped),
    )
}

#[test]
fn real_reports_read_with_their_counts() {
    // (tests, passed, failed, errors, skipped), counted from the elements.
    assert_eq!(counts("jest-junit.xml"), (7, 4, 2, 0, 1));
    assert_eq!(counts("pytest.xml"), (7, 3, 2, 1, 1));
    assert_eq!(counts("nextest.xml"), (5, 3, 2, 0, 0));
    assert_eq!(counts("nextest-report-skipped.xml"), (6, 3, 2, 0, 1));
}

#[test]
fn messages_durations_and_names_come_through() {
    let read = |file: &str| {
        let path = format!("{}/tests/fixtures/junit/{file}", env!("CARGO_MANIFEST_DIR"));
        parse(&std::fs::read(path).unwrap()).unwrap()
    };
    // jest-junit: no message attribute, the failure's text is the message.
    let jest = read("jest-junit.xml");
    let failed = jest
        .iter()
        .find(|c| c.status == TestStatus::Failed)
        .unwrap();
    assert!(!failed.message.as_deref().unwrap_or_default().is_empty());
    assert!(jest.iter().all(|c| c.duration_ms.is_some()));
    // pytest: the message attribute; the fixture error is an error.
    let pytest = read("pytest.xml");
    let error = pytest
        .iter()
        .find(|c| c.status == TestStatus::Error)
        .unwrap();
    assert!(
        error
            .message
            .as_deref()
            .unwrap()
            .contains("fixture setup failed")
    );
    let skipped = pytest
        .iter()
        .find(|c| c.status == TestStatus::Skipped)
        .unwrap();
    assert_eq!(skipped.message.as_deref(), Some("not implemented yet"));
    assert!(
        pytest
            .iter()
            .all(|c| c.classname.as_deref() == Some("test_sample"))
    );
    // nextest: the panic's first line as the message; names with their module path.
    let nextest = read("nextest.xml");
    assert!(nextest.iter().any(|c| c.name == "tests::adds_zero"));
    let panicked = nextest
        .iter()
        .filter(|c| c.status == TestStatus::Failed)
        .map(|c| c.message.as_deref().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(panicked.len(), 2);
    assert!(panicked.iter().all(|m| m.contains("panicked at")));
}
