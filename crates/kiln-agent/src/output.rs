//! What a running step (or the agent itself) writes: chunks of bytes tagged with their
//! stream. Executors produce them; the log shipper timestamps, caps and ships them.

/// Where a chunk of output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// The agent's own messages about the job (checkout, cache hit, exit status).
    Agent,
}

/// A chunk of output, as read from a pipe: not necessarily whole lines, not
/// necessarily UTF-8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputChunk {
    pub stream: Stream,
    pub bytes: Vec<u8>,
}

impl OutputChunk {
    pub fn new(stream: Stream, bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            stream,
            bytes: bytes.into(),
        }
    }

    /// A message from the agent; a newline is added when missing.
    pub fn agent(message: impl Into<String>) -> Self {
        let mut text = message.into();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Self::new(Stream::Agent, text.into_bytes())
    }
}

/// Where output goes: a bounded channel, so a step that writes faster than logs ship
/// is slowed down at its pipe rather than buffered without limit.
pub type OutputSender = tokio::sync::mpsc::Sender<OutputChunk>;
pub type OutputReceiver = tokio::sync::mpsc::Receiver<OutputChunk>;
