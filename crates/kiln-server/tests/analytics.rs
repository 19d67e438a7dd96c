//! Analytics and prediction against the real server, over a seeded history whose
//! statistics are worked out by hand below (the test clock places every build).

mod common;

use kiln_store::engine_test;

use common::{TestApp, assert_error};
use kiln_client::Client;
use kiln_client::protocol::{EventPayload, PipelinePrediction, ProjectAnalytics};
use kiln_core::Millis;
use kiln_server::clock::Clock;
use kiln_store::Engine;
use reqwest::Method;
use serde_json::Value;

engine_test!(analytics_of_a_seeded_history);
engine_test!(the_keeper_keeps_closed_days_before_any_request);

const SECOND: i64 = 1000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

struct Seeder<'a> {
    app: &'a TestApp,
    client: &'a Client,
}

impl Seeder<'_> {
    /// Moves the test clock forward to `at` (it only moves forward).
    fn at(&self, at: i64) {
        let now = self.app.clock.now().0;
        assert!(at >= now, "the seeded history must go forward");
        self.app.clock.advance_ms(at - now);
    }

    async fn send(&self, run_id: &str, event: &str, stage: Option<&str>, branch: Option<&str>) {
        self.client
            .send_events(&[EventPayload {
                run_id: run_id.into(),
                event: event.into(),
                stage: stage.map(Into::into),
                branch: branch.map(Into::into),
                ..EventPayload::default()
            }])
            .await
            .unwrap();
    }

    /// A build of `branch` starting at `start` whose stages run one after the other for
    /// the given seconds (a stage that fails fails the build), ending `tail` seconds
    /// after the last stage with `end` (`build_completed`, `build_failed`,
    /// `build_cancelled`).
    #[allow(clippy::too_many_arguments)]
    async fn build(
        &self,
        run_id: &str,
        branch: &str,
        start: i64,
        stages: &[(&str, i64, bool)],
        tail: i64,
        end: &str,
    ) {
        self.at(start);
        self.send(run_id, "build_started", None, Some(branch)).await;
        let mut at = start;
        for (name, seconds, ok) in stages {
            self.send(run_id, "stage_started", Some(name), None).await;
            at += seconds * SECOND;
            self.at(at);
            let kind = if *ok {
                "stage_completed"
            } else {
                "stage_failed"
            };
            self.send(run_id, kind, Some(name), None).await;
        }
        self.at(at + tail * SECOND);
        self.send(run_id, end, None, None).await;
    }
}

async fn get(app: &TestApp, token: &str, path: String) -> (u16, Value) {
    app.raw(Method::GET, &path, Some(token), None).await
}

async fn analytics(app: &TestApp, token: &str, query: &str) -> ProjectAnalytics {
    let (status, body) = get(
        app,
        token,
        format!("/api/v1/projects/web/analytics?{query}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

async fn analytics_of_a_seeded_history(engine: Engine) {
    // The seeded stages run longer than the default heartbeat timeout (90 s) without a
    // heartbeat; the reaper, running every 20 ms against the same test clock, would
    // otherwise mark a build stale between two of its events.
    let app = TestApp::spawn_with(engine, |config| {
        config.heartbeat_timeout_secs = 7 * DAY / SECOND;
    })
    .await;
    let (web, token) = app.project_client("web", &["ingest", "read"]).await;
    let day0 = app.clock.now().start_of_day().0 + DAY;
    let seed = Seeder {
        app: &app,
        client: &web,
    };
    // main, day 0 09:00: build 60 s + test 120 s + 20 s → success in 200 s.
    seed.build(
        "b1",
        "main",
        day0 + 9 * HOUR,
        &[("build", 60, true), ("test", 120, true)],
        20,
        "build_completed",
    )
    .await;
    // main, day 0 10:00: the test fails after 30 s; the build fails 10 s later (100 s).
    seed.build(
        "b2",
        "main",
        day0 + 10 * HOUR,
        &[("build", 60, true), ("test", 30, false)],
        10,
        "build_failed",
    )
    .await;
    // main, day 1 09:00: cancelled after 10 s.
    seed.build(
        "b3",
        "main",
        day0 + DAY + 9 * HOUR,
        &[],
        10,
        "build_cancelled",
    )
    .await;
    // main, day 1 11:00: build 80 s + test 150 s + 20 s → success in 250 s: recovers b2.
    seed.build(
        "b4",
        "main",
        day0 + DAY + 11 * HOUR,
        &[("build", 80, true), ("test", 150, true)],
        20,
        "build_completed",
    )
    .await;
    // Metrics: b1 and b4 report a bundle size; b4 also a test count, measured after it
    // ended (a custom event), and its bundle twice (the last value counts).
    let metric_event = |run_id: &str, event: &str, metrics: serde_json::Value| EventPayload {
        run_id: run_id.into(),
        event: event.into(),
        metrics: serde_json::from_value(metrics).unwrap(),
        ..EventPayload::default()
    };
    web.send_events(&[metric_event(
        "b1",
        "bundle_measured",
        serde_json::json!({"bundle_kb": 400}),
    )])
    .await
    .unwrap();
    web.send_events(&[
        metric_event(
            "b4",
            "bundle_measured",
            serde_json::json!({"bundle_kb": 999}),
        ),
        metric_event(
            "b4",
            "bundle_measured",
            serde_json::json!({"bundle_kb": 420, "tests": 1200}),
        ),
    ])
    .await
    .unwrap();
    // dev, day 2 13:00: success in 400 s, no stages.
    seed.build(
        "b5",
        "dev",
        day0 + 2 * DAY + 13 * HOUR,
        &[],
        400,
        "build_completed",
    )
    .await;

    let from = Millis(day0).date();
    let to = Millis(day0 + 3 * DAY).date();
    let all = analytics(&app, &token, &format!("from={from}&to={to}")).await;
    assert_eq!(
        (
            all.builds,
            all.succeeded,
            all.failed,
            all.cancelled,
            all.unfinished
        ),
        (5, 3, 1, 1, 0)
    );
    assert_eq!(all.success_rate, Some(0.75));
    // Successful durations 200, 250, 400 s: nearest-rank p50 is the 2nd, p90 the 3rd.
    assert_eq!(all.duration.count, 3);
    assert_eq!(all.duration.p50_ms, Some(250 * SECOND));
    assert_eq!(all.duration.p90_ms, Some(400 * SECOND));
    // Halves split at day 1 12:00: p50 of {200, 250} is 200, of {400} is 400.
    assert_eq!(all.duration_trend, Some(1.0));
    let days: Vec<(&str, u64, Option<f64>)> = all
        .days
        .iter()
        .map(|d| (d.date.as_str(), d.builds, d.success_rate))
        .collect();
    assert_eq!(days.len(), 3);
    assert_eq!(days[0], (from.as_str(), 2, Some(0.5)));
    assert_eq!((days[1].1, days[1].2), (2, Some(1.0)));
    assert_eq!((days[2].1, days[2].2), (1, Some(1.0)));
    let stage = |name: &str| all.stages.iter().find(|s| s.name == name).unwrap();
    assert_eq!((stage("build").runs, stage("build").failed), (3, 0));
    assert_eq!(stage("build").duration.p50_ms, Some(60 * SECOND));
    assert_eq!((stage("test").runs, stage("test").failed), (3, 1));
    assert_eq!(stage("test").duration.p95_ms, Some(150 * SECOND));
    assert_eq!(all.top_failing_stages.len(), 1);
    assert_eq!(all.top_failing_stages[0].name, "test");
    // b2 ended day 0 10:01:40, b4 day 1 11:04:10.
    assert_eq!(all.mttr.incidents, 1);
    assert_eq!(
        all.mttr.mean_ms,
        Some(DAY + HOUR + 2 * 60 * SECOND + 30 * SECOND)
    );
    let hours: Vec<u64> = all.busiest_hours.iter().map(|h| h.builds).collect();
    assert_eq!(hours.len(), 24);
    assert_eq!((hours[9], hours[10], hours[11], hours[13]), (2, 1, 1, 1));
    assert_eq!(hours.iter().sum::<u64>(), 5);
    assert_eq!(all.queue_wait.count, 0);

    let bundle = all.metrics.iter().find(|m| m.name == "bundle_kb").unwrap();
    assert_eq!(
        (bundle.builds, bundle.p50, bundle.latest),
        (2, 400.0, 420.0)
    );
    assert_eq!(bundle.days, vec![Some(400.0), Some(420.0), None]);
    assert_eq!(all.metrics.len(), 2);
    let (status, metrics) = get(&app, &token, "/api/v1/builds/b4/metrics".into()).await;
    assert_eq!(status, 200);
    assert_eq!(
        metrics,
        serde_json::json!({"runId": "b4", "metrics": {"bundle_kb": 420.0, "tests": 1200.0}})
    );
    // Bad metrics: refused whole, with the field named.
    for (metrics, field) in [
        (serde_json::json!({"bad name!": 1}), "metrics"),
        (serde_json::json!({"kb": "big"}), "metrics.kb"),
        (serde_json::json!({"kb": 1e300}), "metrics.kb"),
        (serde_json::json!([1, 2]), "metrics"),
    ] {
        let body =
            serde_json::json!({"runId": "b4", "event": "bundle_measured", "metrics": metrics});
        let (status, answer) = app
            .raw(
                Method::POST,
                "/api/v1/events",
                Some(&token),
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await;
        assert_eq!(status, 400, "{answer}");
        assert_error(&answer, "invalid_field", Some(field));
    }
    // The same answers once the closed days are kept (days 0 and 1 by the first read),
    // and once every day of the range is (three days later).
    let range = format!("from={from}&to={to}");
    assert_eq!(analytics(&app, &token, &range).await, all);
    seed.at(day0 + 6 * DAY);
    assert_eq!(analytics(&app, &token, &range).await, all);
    assert_eq!(analytics(&app, &token, &range).await, all);
    let dev = analytics(&app, &token, &format!("from={from}&to={to}&branch=dev")).await;
    assert_eq!((dev.builds, dev.succeeded), (1, 1));
    assert_eq!(dev.branch.as_deref(), Some("dev"));
    let none = analytics(
        &app,
        &token,
        &format!("from={from}&to={to}&pipeline=npm%20test"),
    )
    .await;
    assert_eq!((none.builds, none.success_rate), (0, None));
    // The default range is the 30 days before now: all five.
    assert_eq!(analytics(&app, &token, "").await.builds, 5);

    // Bad ranges: a clear 400 naming the field.
    for (query, field) in [
        (format!("from={to}&to={from}"), "from"),
        ("from=2026-01-01&to=2027-06-01".to_owned(), "to"),
        ("from=yesterday".to_owned(), "from"),
        ("to=2026-02-30".to_owned(), "to"),
        (format!("branch={}", "b".repeat(300)), "branch"),
    ] {
        let (status, body) = get(
            &app,
            &token,
            format!("/api/v1/projects/web/analytics?{query}"),
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_error(&body, "invalid_field", Some(field));
    }

    // Prediction: main's successful builds are b1 (200 s at 09:00) and b4 (250 s at
    // 11:00, newer); each hour of the day picks its own.
    let predict = async |query: String| -> PipelinePrediction {
        let (status, body) = get(
            &app,
            &token,
            format!("/api/v1/projects/web/prediction?{query}"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).unwrap()
    };
    let day9 = Millis(day0 + 5 * DAY + 9 * HOUR).to_rfc3339();
    let day11 = Millis(day0 + 5 * DAY + 11 * HOUR).to_rfc3339();
    let morning = predict(format!("branch=main&at={day9}")).await;
    let late = predict(format!("branch=main&at={day11}")).await;
    assert_eq!(morning.build.unwrap().expected_ms, 200 * SECOND);
    assert_eq!(morning.build.unwrap().samples, 2);
    assert_eq!(late.build.unwrap().expected_ms, 250 * SECOND);
    let test = late.stages.iter().find(|s| s.name == "test").unwrap();
    assert_eq!(test.prediction.expected_ms, 150 * SECOND);
    assert_eq!(late.accuracy, None, "too little history to replay");
    // The project's default branch is main.
    assert_eq!(
        predict(format!("at={day11}")).await.branch.as_deref(),
        Some("main")
    );
    let nothing = predict("branch=nowhere".into()).await;
    assert_eq!((nothing.build, nothing.stages.len()), (None, 0));
    app.stop().await;
}

async fn the_keeper_keeps_closed_days_before_any_request(engine: Engine) {
    let app = TestApp::spawn_with(engine, |config| {
        config.heartbeat_timeout_secs = 7 * DAY / SECOND;
        config.analytics_keep_interval = std::time::Duration::from_millis(20);
    })
    .await;
    let (web, token) = app.project_client("web", &["ingest", "read"]).await;
    let day0 = app.clock.now().start_of_day().0 + DAY;
    let seed = Seeder {
        app: &app,
        client: &web,
    };
    for (n, day) in [0, 1].into_iter().enumerate() {
        let start = day0 + day * DAY + 9 * HOUR;
        seed.build(
            &format!("k{n}"),
            "main",
            start,
            &[("build", 30, true)],
            5,
            "build_completed",
        )
        .await;
    }
    let kept = || async {
        app.database
            .integers("SELECT day FROM analytics_days WHERE data IS NOT NULL ORDER BY day")
            .await
    };
    // Day 1 has not closed yet (it is 09:00:35 on day 1).
    app.passes_of(kiln_server::Periodic::AnalyticsKeeper, 2)
        .await;
    assert!(!kept().await.contains(&(day0 + DAY)));
    seed.at(day0 + 2 * DAY + 2 * HOUR);
    app.passes_of(kiln_server::Periodic::AnalyticsKeeper, 2)
        .await;
    let days = kept().await;
    assert!(
        days.contains(&day0) && days.contains(&(day0 + DAY)),
        "{days:?}"
    );
    // The answer read from the kept days is the builds' answer.
    let range = format!(
        "from={}&to={}",
        Millis(day0).date(),
        Millis(day0 + 2 * DAY).date()
    );
    let answer = analytics(&app, &token, &range).await;
    assert_eq!((answer.builds, answer.succeeded), (2, 2));
    assert_eq!(answer.duration.p50_ms, Some(35 * SECOND));
}
