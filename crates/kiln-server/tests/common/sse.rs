//! A minimal SSE client for tests: reads a real streaming HTTP response chunk by chunk.

use std::time::Duration;

use serde_json::Value;

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<i64>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

pub struct SseStream {
    response: reqwest::Response,
    buffer: String,
}

impl SseStream {
    /// Opens `url` with the token and an optional Last-Event-ID; returns the status and
    /// the stream (or the JSON error body).
    pub async fn open(
        url: &str,
        token: &str,
        last_event_id: Option<i64>,
    ) -> Result<SseStream, (u16, Value)> {
        let client = reqwest::Client::new();
        let mut request = client.get(url).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let body = response.json().await.unwrap_or(Value::Null);
            return Err((status, body));
        }
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Ok(SseStream {
            response,
            buffer: String::new(),
        })
    }

    /// The next event (comments and retry hints skipped), or `None` when the server
    /// closed the stream. Panics after `timeout` without an event.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: "message".into(),
                    data: String::new(),
                };
                let mut has_data = false;
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id: ") {
                        event.id = value.parse().ok();
                    } else if let Some(value) = line.strip_prefix("event: ") {
                        event.event = value.to_owned();
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                        has_data = true;
                    }
                }
                if has_data {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout(timeout, self.response.chunk())
                .await
                .expect("no SSE event within the timeout")
                .expect("stream read");
            match chunk {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => return None,
            }
        }
    }
}
