//! `kiln up` on a fresh data directory prints a dashboard login that works: the printed
//! password logs in at `/login`, opens the account page, and can be changed there; a
//! second start creates no second user and prints no password.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};

use common::{Workspace, free_port};

/// `kiln up --no-agent` with what it printed, as one text.
fn start_up(workspace: &Workspace, port: u16) -> (Child, String) {
    let (child, printed) = common::start_up(workspace, port);
    (child, printed.join("\n"))
}

/// One HTTP/1.1 exchange over a fresh connection: (status, headers, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some(cookie) = cookie {
        request.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    let body = form.unwrap_or_default();
    if form.is_some() {
        request.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Logs in with the form; the session cookie on success.
fn log_in(port: u16, email: &str, password: &str) -> Option<String> {
    let (status, head, _) = http(
        port,
        "POST",
        "/login",
        None,
        Some(&format!(
            "email={}&password={}&next=%2Faccount",
            encode(email),
            encode(password)
        )),
    );
    if status != 303 {
        return None;
    }
    assert!(
        head.contains("location: /account") || head.contains("Location: /account"),
        "{head}"
    );
    head.lines()
        .find(|line| line.to_ascii_lowercase().starts_with("set-cookie:"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, value)| value.trim().split(';').next().unwrap().to_owned())
}

#[test]
fn up_prints_a_dashboard_login_that_works_and_can_be_changed() {
    let workspace = Workspace::new();
    let port = free_port();
    let (mut first, printed) = start_up(&workspace, port);
    let login_line = printed
        .lines()
        .find(|line| line.contains("dashboard login:"))
        .unwrap_or_else(|| panic!("no login printed:\n{printed}"));
    assert!(login_line.contains("shown once"), "{login_line}");
    let (email, password) = login_line
        .split("dashboard login:")
        .nth(1)
        .unwrap()
        .split_once(" (")
        .unwrap()
        .0
        .trim()
        .split_once(" / ")
        .unwrap();
    assert_eq!(email, "admin@kiln.localhost");
    assert!(password.len() >= 16, "{password}");

    // A wrong password is refused; the printed one opens a session.
    assert_eq!(log_in(port, email, "not-the-password"), None);
    let cookie = log_in(port, email, password).expect("the printed login works");
    let (status, _, page) = http(port, "GET", "/account", Some(&cookie), None);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("admin@kiln.localhost"), "{page}");
    assert!(page.contains("Instance admin</dt><dd>yes"), "{page}");

    // Change it on the account page (the form's CSRF field comes from the page).
    let csrf = page
        .split("name=\"_csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let new_password = "a much better passphrase";
    let form = format!(
        "_csrf={}&current={}&new={}&confirm={}",
        encode(&csrf),
        encode(password),
        encode(new_password),
        encode(new_password)
    );
    let (status, head, body) = http(
        port,
        "POST",
        "/account/password",
        Some(&cookie),
        Some(&form),
    );
    assert_eq!(status, 303, "{head}\n{body}");
    assert_eq!(
        log_in(port, email, password),
        None,
        "the old password is gone"
    );
    assert!(
        log_in(port, email, new_password).is_some(),
        "the new one works"
    );

    Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(first.wait().unwrap().success());

    // Users exist now: no second admin, no password printed.
    let (mut second, printed) = start_up(&workspace, port);
    assert!(!printed.contains("dashboard login:"), "{printed}");
    assert!(log_in(port, email, new_password).is_some());
    second.kill().unwrap();
    second.wait().unwrap();
}
