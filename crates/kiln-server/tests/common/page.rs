//! A signed-in browser for the dashboard's page tests: the login form, the session
//! cookie and its CSRF token, forms posted as a browser posts them, redirects kept as
//! answers; and the admin token's JSON calls.

use reqwest::Method;
use serde_json::Value;

use super::{ADMIN_TOKEN, TestApp};

/// A signed-in browser: the session cookie and its CSRF token; redirects are answers.
pub struct Browser {
    pub base: String,
    pub http: reqwest::Client,
    pub cookie: String,
    pub csrf: String,
}

pub struct Answer {
    pub status: u16,
    pub location: String,
    pub text: String,
}

pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

pub fn form_body(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Answer {
        status,
        location,
        text: response.text().await.unwrap(),
    }
}

impl Browser {
    /// Logs in with the login form.
    pub async fn log_in(app: &TestApp, email: &str, password: &str) -> Browser {
        let http = no_redirects();
        let response = http
            .post(format!("{}/login", app.base_url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&[
                ("email", email),
                ("password", password),
                ("next", "/"),
            ]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 303, "log in as {email}");
        let cookie = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let me: Value = http
            .get(format!("{}/api/v1/me", app.base_url))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Browser {
            base: app.base_url.clone(),
            http,
            cookie,
            csrf: me["csrfToken"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        answer(
            self.http
                .get(format!("{}{path}", self.base))
                .header("cookie", &self.cookie)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Posts a form with this session's CSRF token.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let mut all = vec![("_csrf", self.csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(path, &form_body(&all)).await
    }

    pub async fn post_raw(&self, path: &str, body: &str) -> Answer {
        answer(
            self.http
                .post(format!("{}{path}", self.base))
                .header("cookie", &self.cookie)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.to_owned())
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// The JSON API as this user (with the CSRF header).
    pub async fn api(&self, method: Method, path: &str) -> Value {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .header("x-csrf-token", &self.csrf)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null)
    }
}

pub async fn admin_call(app: &TestApp, method: Method, path: &str, body: Value) -> Value {
    let response = app
        .http
        .request(method.clone(), format!("{}{path}", app.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert!(status < 300, "{method} {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}
