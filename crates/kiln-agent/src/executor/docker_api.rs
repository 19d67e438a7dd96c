//! A minimal Docker Engine API v1.41 client over a unix socket (Docker, or Podman's
//! compatible service): one HTTP/1 connection per request, JSON in and out, and the
//! demultiplexer of non-TTY log streams (8-byte frame headers).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

use super::ExecError;
use crate::output::{OutputChunk, Stream};

const API_PREFIX: &str = "/v1.41";

/// A whole answer of the engine.
pub(crate) struct ApiResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

impl ApiResponse {
    /// The engine's error text: `message` of a JSON error body, else the body itself.
    pub fn message(&self) -> String {
        let text = serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|value| value.get("message")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).trim().to_owned());
        if text.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            text
        }
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// An `ExecError::Engine` for this answer.
    pub fn error(&self, action: &str) -> ExecError {
        ExecError::Engine {
            action: action.to_owned(),
            status: Some(self.status.as_u16()),
            message: self.message(),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct DockerClient {
    socket: PathBuf,
}

impl DockerClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// Sends one request and reads the whole answer, all within `within`.
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
        action: &str,
        within: Duration,
    ) -> Result<ApiResponse, ExecError> {
        let exchange = async {
            let response = self.send(method, path_and_query, body, action).await?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|error| self.transport_error(action, &error))?
                .to_bytes();
            Ok(ApiResponse { status, body })
        };
        tokio::time::timeout(within, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(ExecError::Engine {
                    action: action.to_owned(),
                    status: None,
                    message: format!(
                        "no answer within {} s from {}",
                        within.as_secs(),
                        self.socket.display()
                    ),
                })
            })
    }

    /// Sends one request and returns as soon as the head arrived: the body streams.
    /// Dropping the future or the response closes the connection.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
        action: &str,
    ) -> Result<Response<Incoming>, ExecError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|source| {
            ExecError::EngineUnreachable {
                socket: self.socket.clone(),
                source,
            }
        })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| self.transport_error(action, &error))?;
        tokio::spawn(async move {
            // Ends when the response body is read to its end or dropped.
            let _ = connection.await;
        });
        let body_bytes = match body {
            Some(value) => Bytes::from(value.to_string()),
            None => Bytes::new(),
        };
        let request = Request::builder()
            .method(method)
            .uri(format!("{API_PREFIX}{path_and_query}"))
            .header(header::HOST, "docker")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body_bytes))
            .map_err(|error| ExecError::Engine {
                action: action.to_owned(),
                status: None,
                message: format!("invalid request: {error}"),
            })?;
        sender
            .send_request(request)
            .await
            .map_err(|error| self.transport_error(action, &error))
    }

    fn transport_error(&self, action: &str, error: &dyn std::fmt::Display) -> ExecError {
        ExecError::Engine {
            action: action.to_owned(),
            status: None,
            message: format!(
                "{error} (talking to {}; is the engine still running?)",
                self.socket.display()
            ),
        }
    }
}

/// Splits a non-TTY attach/logs stream into stdout and stderr chunks. Each frame is a
/// header `[stream, 0, 0, 0, size (u32, big-endian)]` followed by `size` bytes; payload
/// bytes are passed on as they arrive, without waiting for the whole frame.
#[derive(Debug, Default)]
pub(crate) struct Demultiplexer {
    header: [u8; 8],
    header_length: usize,
    payload_left: usize,
    stream: Option<Stream>,
}

impl Demultiplexer {
    /// Consumes `data`, appending the payload it carries to `chunks`.
    pub fn push(&mut self, mut data: &[u8], chunks: &mut Vec<OutputChunk>) {
        while !data.is_empty() {
            if self.payload_left == 0 {
                let wanted = self.header.len() - self.header_length;
                let taken = wanted.min(data.len());
                self.header[self.header_length..self.header_length + taken]
                    .copy_from_slice(&data[..taken]);
                self.header_length += taken;
                data = &data[taken..];
                if self.header_length == self.header.len() {
                    self.header_length = 0;
                    // Stream 0 is stdin (echoed with attach); 2 is stderr, 1 stdout.
                    self.stream = Some(if self.header[0] == 2 {
                        Stream::Stderr
                    } else {
                        Stream::Stdout
                    });
                    let size = u32::from_be_bytes([
                        self.header[4],
                        self.header[5],
                        self.header[6],
                        self.header[7],
                    ]);
                    self.payload_left = usize::try_from(size).unwrap_or(usize::MAX);
                }
                continue;
            }
            let taken = self.payload_left.min(data.len());
            let stream = self.stream.unwrap_or(Stream::Stdout);
            match chunks.last_mut() {
                Some(last) if last.stream == stream => last.bytes.extend_from_slice(&data[..taken]),
                _ => chunks.push(OutputChunk::new(stream, &data[..taken])),
            }
            self.payload_left -= taken;
            data = &data[taken..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![stream, 0, 0, 0];
        bytes.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_separated() {
        let mut wire = frame(1, b"out\n");
        wire.extend(frame(2, b"err\n"));
        wire.extend(frame(1, &[0xff, 0x00, 0xfe]));
        wire.extend(frame(1, b""));
        for split in 0..wire.len() {
            let mut demultiplexer = Demultiplexer::default();
            let mut chunks = Vec::new();
            demultiplexer.push(&wire[..split], &mut chunks);
            demultiplexer.push(&wire[split..], &mut chunks);
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            for chunk in chunks {
                match chunk.stream {
                    Stream::Stdout => stdout.extend(chunk.bytes),
                    Stream::Stderr => stderr.extend(chunk.bytes),
                    Stream::Agent => panic!("no agent chunks from the engine"),
                }
            }
            assert_eq!(stdout, b"out\n\xff\x00\xfe", "split at {split}");
            assert_eq!(stderr, b"err\n", "split at {split}");
        }
    }
}
