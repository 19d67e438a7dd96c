// Included by the build scripts of the crates whose tests need something outside Rust:
// each prerequisite becomes a cfg, so a test that cannot run here is compiled with
// `#[ignore = "… skipped: how to set it up"]` and shows as ignored in the test run,
// with the reason, instead of passing without running. `KILN_REQUIRE_EXECUTORS=1`,
// `KILN_REQUIRE_SMTP=1`, `KILN_REQUIRE_PROMTOOL=1` and `KILN_REQUIRE_OTLP=1` (set by
// `.ci/run`) turn the executor, SMTP, promtool and OTLP-receiver tests on whatever is
// found, so a missing tool fails them loudly there.

/// Emits `kiln_postgres_tests`, `kiln_docker_tests`, `kiln_bwrap_tests`,
/// `kiln_smtp_tests`, `kiln_promtool_tests` (Prometheus' `promtool`) and
/// `kiln_otlp_tests` (Python with the `opentelemetry-proto` package) for the
/// prerequisites present.
fn test_prerequisites() {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let required = |name: &str| std::env::var(name).as_deref() == Ok("1");
    let runs = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|output| output.status.success())
    };
    for name in [
        "KILN_TEST_DATABASE_URL",
        "KILN_TEST_DOCKER_SOCKET",
        "KILN_TEST_DOCKER_IMAGE",
        "KILN_REQUIRE_EXECUTORS",
        "KILN_REQUIRE_SMTP",
        "KILN_REQUIRE_PROMTOOL",
        "KILN_REQUIRE_OTLP",
        "PATH",
    ] {
        println!("cargo::rerun-if-env-changed={name}");
    }
    let cfgs = [
        ("kiln_postgres_tests", set("KILN_TEST_DATABASE_URL")),
        (
            "kiln_docker_tests",
            required("KILN_REQUIRE_EXECUTORS")
                || (set("KILN_TEST_DOCKER_SOCKET") && set("KILN_TEST_DOCKER_IMAGE")),
        ),
        (
            "kiln_bwrap_tests",
            required("KILN_REQUIRE_EXECUTORS") || runs("bwrap", &["--version"]),
        ),
        (
            "kiln_smtp_tests",
            required("KILN_REQUIRE_SMTP") || runs("python3", &["-c", "import aiosmtpd"]),
        ),
        (
            "kiln_promtool_tests",
            required("KILN_REQUIRE_PROMTOOL") || runs("promtool", &["--version"]),
        ),
        (
            "kiln_otlp_tests",
            required("KILN_REQUIRE_OTLP")
                || runs(
                    "python3",
                    &["-c", "import opentelemetry.proto.collector.trace.v1.trace_service_pb2"],
                ),
        ),
    ];
    for (cfg, present) in cfgs {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if present {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
