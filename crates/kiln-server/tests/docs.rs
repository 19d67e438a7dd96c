//! `docs/api.md` agrees with the route table: every JSON route is listed there with the
//! access it really requires, and every route listed there exists.

use std::collections::BTreeSet;

/// The access kind of a rule as the docs' table names it.
fn kind(text: &str) -> &'static str {
    let text = text.trim().trim_matches('*');
    for (prefix, kind) in [
        ("public", "public"),
        ("instance admin", "instance admin"),
        ("project ingest", "ingest"),
        ("ingest", "ingest"),
        ("viewer", "read"),
        ("read", "read"),
        ("developer", "write"),
        ("write", "write"),
        ("project admin", "project admin"),
        ("user", "user"),
        ("agent", "agent"),
        ("dashboard page", "page"),
        ("metrics scrape", "scrape"),
    ] {
        if text.starts_with(prefix) {
            return kind;
        }
    }
    "unknown"
}

/// `/api/v1/builds/{runId}` and `/api/v1/builds/{run_id}` alike; a badge's documented
/// `{branch}.svg` is the route's catch-all `{*branch}`.
fn shape(path: &str) -> String {
    let path = path
        .strip_suffix("}.svg")
        .map_or(path.to_owned(), |p| format!("{p}}}"));
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

#[test]
fn the_api_docs_list_every_route_with_its_access() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md")).unwrap();
    let mut documented: BTreeSet<(String, String, &'static str)> = BTreeSet::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[2].starts_with("`/") {
            continue;
        }
        for path in cells[2]
            .split(',')
            .map(|path| path.trim().trim_matches('`'))
        {
            for method in cells[1].split([',', '/']) {
                let method = method.trim();
                if !method.is_empty() && method.chars().all(|c| c.is_ascii_uppercase()) {
                    documented.insert((method.to_owned(), shape(path), kind(cells[3])));
                }
            }
        }
    }
    let routes: BTreeSet<(String, String, &'static str)> = kiln_server::route_table()
        .into_iter()
        .map(|route| {
            (
                route.method.to_owned(),
                shape(route.path),
                kind(route.access),
            )
        })
        // The dashboard's pages and assets are in docs/dashboard.md; the public status
        // page and badges and /metrics are here.
        .filter(|(_, path, kind)| {
            *kind != "page"
                && (path.starts_with("/api/")
                    || path.ends_with("z")
                    || path == "/metrics"
                    || path.starts_with("/status/")
                    || path.starts_with("/badge/"))
        })
        .collect();
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    let unknown: Vec<_> = documented
        .difference(&routes)
        .filter(|(_, path, _)| path != "/socket.io/")
        .collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "routes missing from docs/api.md's table (or with another access there): {undocumented:#?}\n\
         rows of docs/api.md's table that are no route (or another access): {unknown:#?}"
    );
}
