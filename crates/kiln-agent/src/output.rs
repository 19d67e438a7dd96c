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

/// The end of a step's own output (not the agent's lines), kept to explain a failure.
#[derive(Debug, Default)]
pub struct OutputTail {
    bytes: Vec<u8>,
}

impl OutputTail {
    /// How much of the output's end is kept.
    const KEEP: usize = 4096;

    fn push(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
        if self.bytes.len() > Self::KEEP {
            let excess = self.bytes.len() - Self::KEEP;
            self.bytes.drain(..excess);
        }
    }

    /// The command a shell could not find, from its last complaint (`sh: 1: NAME: not
    /// found` from dash and busybox, `bash: line 1: NAME: command not found` from bash).
    pub fn missing_command(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.bytes);
        text.lines().rev().find_map(|line| {
            let line = line.trim_end();
            let rest = line
                .strip_suffix(": command not found")
                .or_else(|| line.strip_suffix(": not found"))?;
            let name = rest.rsplit(": ").next()?.trim();
            (!name.is_empty() && rest.contains(": ")).then(|| name.to_owned())
        })
    }
}

/// Passes every chunk from `input` to `output` unchanged, keeping the end of the step's
/// own output in `tail`.
pub async fn tap(
    mut input: OutputReceiver,
    output: OutputSender,
    tail: std::sync::Arc<std::sync::Mutex<OutputTail>>,
) {
    while let Some(chunk) = input.recv().await {
        if chunk.stream != Stream::Agent {
            tail.lock().expect("output tail lock").push(&chunk.bytes);
        }
        if output.send(chunk).await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(text: &str) -> OutputTail {
        let mut tail = OutputTail::default();
        tail.push(text.as_bytes());
        tail
    }

    #[test]
    fn names_the_command_a_shell_did_not_find() {
        assert_eq!(
            tail_of("$ npm ci\nsh: 1: npm: not found\n").missing_command(),
            Some("npm".into())
        );
        assert_eq!(
            tail_of("bash: line 3: yarnn: command not found\n").missing_command(),
            Some("yarnn".into())
        );
        assert_eq!(
            tail_of("sh: make: not found\n").missing_command(),
            Some("make".into())
        );
        assert_eq!(
            tail_of("error: file not found\nok\n").missing_command(),
            None
        );
        assert_eq!(tail_of("not found\n").missing_command(), None);
        let mut long = OutputTail::default();
        long.push(&vec![b'x'; 10_000]);
        long.push(b"\nsh: 2: cargo: not found\n");
        assert_eq!(long.missing_command(), Some("cargo".into()));
        assert!(long.bytes.len() <= OutputTail::KEEP);
    }
}
