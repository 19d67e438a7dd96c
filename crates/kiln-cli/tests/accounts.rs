//! Accounts from the command line, against a real `kiln serve`: create a user, log in
//! for a personal token, give a role, and see the audit log.

mod common;

use common::{ADMIN, Server, Workspace};

fn run(command: &mut std::process::Command, stdin: Option<&str>) -> (bool, String, String) {
    let output = common::output_with_stdin(command, stdin.unwrap_or_default());
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn users_log_in_get_roles_and_are_audited() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let admin = |args: &[&str], stdin: Option<&str>| {
        run(workspace.kiln(&server.url, ADMIN).args(args), stdin)
    };

    let (ok, _, err) = admin(&["project", "create", "web"], None);
    assert!(ok, "{err}");
    let (ok, password, err) = admin(
        &[
            "user",
            "create",
            "--email",
            "ada@example.com",
            "--name",
            "Ada",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        password.starts_with("kiln_"),
        "a one-time password: {password}"
    );
    let (ok, _, err) = admin(
        &[
            "user",
            "create",
            "--email",
            "bob@example.com",
            "--name",
            "Bob",
            "--password-stdin",
        ],
        Some("correct horse battery\n"),
    );
    assert!(ok, "{err}");
    let (ok, _, err) = admin(
        &[
            "user",
            "create",
            "--email",
            "ada@example.com",
            "--name",
            "Again",
        ],
        None,
    );
    assert!(!ok && err.contains("exists already"), "{err}");

    // Logging in prints a personal token; a wrong password does not.
    let (ok, _, err) = run(
        workspace
            .kiln(&server.url, "")
            .args(["login", "--email", "bob@example.com"]),
        Some("wrong password\n"),
    );
    assert!(!ok && err.contains("wrong email or password"), "{err}");
    let (ok, bob_token, err) = run(
        workspace
            .kiln(&server.url, "")
            .args(["login", "--email", "bob@example.com"]),
        Some("correct horse battery\n"),
    );
    assert!(ok, "{err}");
    assert!(bob_token.starts_with("kiln_"));

    // Without a role Bob sees nothing of web; as viewer he reads it but may not run builds.
    let bob = |args: &[&str]| run(workspace.kiln(&server.url, &bob_token).args(args), None);
    let (ok, _, err) = bob(&["builds", "--project", "web"]);
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, _, err) = admin(
        &[
            "member",
            "set",
            "--project",
            "web",
            "bob@example.com",
            "viewer",
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = bob(&["builds", "--project", "web"]);
    assert!(ok, "{err}");
    let (ok, _, err) = bob(&["build", "--project", "web"]);
    assert!(!ok && err.contains("developer role"), "{err}");
    let (ok, members, _) = admin(&["member", "list", "--project", "web"], None);
    assert!(
        ok && members.contains("bob@example.com\tviewer"),
        "{members}"
    );

    let (ok, log, err) = admin(&["audit"], None);
    assert!(ok, "{err}");
    assert!(log.contains("member.set"), "{log}");
    assert!(log.contains("user.create"), "{log}");
    // Actors are named, with their id: the admin token by its name.
    assert!(
        log.lines()
            .any(|line| line.contains("user.create") && line.contains("KILN_ADMIN_TOKEN (token:")),
        "{log}"
    );
    let (ok, _, err) = admin(
        &["member", "remove", "--project", "web", "bob@example.com"],
        None,
    );
    assert!(ok, "{err}");
}

#[test]
fn an_admin_deactivates_reactivates_and_resets_a_user() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let admin = |args: &[&str], stdin: Option<&str>| {
        run(workspace.kiln(&server.url, ADMIN).args(args), stdin)
    };
    let login = |password: &str| {
        run(
            workspace
                .kiln(&server.url, "")
                .args(["login", "--email", "cy@example.com"]),
            Some(&format!("{password}\n")),
        )
    };
    let (ok, _, err) = admin(
        &[
            "user",
            "create",
            "--email",
            "cy@example.com",
            "--name",
            "Cy",
            "--password-stdin",
        ],
        Some("first password 1\n"),
    );
    assert!(ok, "{err}");
    let (ok, _, err) = admin(&["project", "create", "web"], None);
    assert!(ok, "{err}");
    let (ok, _, err) = admin(
        &[
            "member",
            "set",
            "--project",
            "web",
            "cy@example.com",
            "viewer",
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, token, err) = login("first password 1");
    assert!(ok, "{err}");
    let whoami = |token: &str| run(workspace.kiln(&server.url, token).args(["builds"]), None);
    let (ok, shown, err) = whoami(&token);
    assert!(ok, "the personal token works: {shown} {err}");

    let (ok, _, err) = admin(&["user", "disable", "cy@example.com"], None);
    assert!(
        ok && err.contains("deactivated user cy@example.com"),
        "{err}"
    );
    assert!(
        !login("first password 1").0,
        "a deactivated user cannot log in"
    );
    assert!(!whoami(&token).0, "nor use a personal token");
    let (ok, _, err) = admin(&["user", "enable", "cy@example.com"], None);
    assert!(ok && err.contains("reactivated"), "{err}");
    assert!(login("first password 1").0);

    // A reset prints a one-time password, which works; the old one does not.
    let (ok, password, err) = admin(&["user", "reset-password", "cy@example.com"], None);
    assert!(ok, "{err}");
    assert!(password.starts_with("kiln_"), "{password}");
    assert!(!login("first password 1").0);
    assert!(login(&password).0);
    let (ok, _, err) = admin(&["user", "disable", "nobody@example.com"], None);
    assert!(!ok && err.contains("not found"), "{err}");
}
