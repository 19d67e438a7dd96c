//! Masking secrets in a step's output before it is stored or streamed: every occurrence
//! of a secret's value, its base64 and its URL-encoded form becomes `***`.
//!
//! Output arrives in chunks that may split a secret anywhere. The masker passes on
//! everything except a line's unfinished tail that could still become a secret: that
//! tail waits for the next chunk (or the end of the output, or a chunk of the other
//! stream, which ends the line) — so a prompt or a progress dot is held back only when
//! it looks like the start of a secret. A secret with line breaks is masked line by line.

use base64::Engine;

use crate::output::{OutputChunk, OutputReceiver, OutputSender, Stream};

/// What replaces a secret.
pub const MASK: &[u8] = b"***";

/// Secrets shorter than this are not masked (masking `a` would garble every log).
const MIN_MASKED_LEN: usize = 3;

/// The forms of a job's secrets to mask, longest first, and what output is held back.
#[derive(Debug, Default)]
pub struct Masker {
    forms: Vec<Vec<u8>>,
    held: Option<OutputChunk>,
}

fn url_encoded(value: &str) -> String {
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

impl Masker {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut forms: Vec<Vec<u8>> = Vec::new();
        for value in secrets {
            if value.trim().len() < MIN_MASKED_LEN {
                continue;
            }
            let mut candidates = vec![
                value.to_owned(),
                base64::engine::general_purpose::STANDARD.encode(value),
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(value),
                url_encoded(value),
            ];
            // A value with line breaks shows up line by line.
            candidates.extend(value.lines().map(str::to_owned));
            for candidate in candidates {
                let candidate = candidate.trim_end_matches(['\r', '\n']).as_bytes().to_vec();
                if candidate.len() >= MIN_MASKED_LEN && !forms.contains(&candidate) {
                    forms.push(candidate);
                }
            }
        }
        forms.sort_by_key(|form| std::cmp::Reverse(form.len()));
        Self { forms, held: None }
    }

    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// `bytes` with every secret form replaced.
    fn replace(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        let mut index = 0;
        'outer: while index < bytes.len() {
            for form in &self.forms {
                if bytes[index..].starts_with(form) {
                    out.extend_from_slice(MASK);
                    index += form.len();
                    continue 'outer;
                }
            }
            out.push(bytes[index]);
            index += 1;
        }
        out
    }

    /// How many bytes at the end of `bytes` (after its last line break) could be the
    /// start of a secret form.
    fn risky_tail(&self, bytes: &[u8]) -> usize {
        let line_start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let tail = &bytes[line_start..];
        (1..=tail.len())
            .rev()
            .find(|&len| {
                let suffix = &tail[tail.len() - len..];
                self.forms
                    .iter()
                    .any(|form| form.len() > len && form.starts_with(suffix))
            })
            .unwrap_or(0)
    }

    /// Takes a chunk; returns what may be passed on now, masked.
    pub fn push(&mut self, chunk: OutputChunk) -> Vec<OutputChunk> {
        if self.forms.is_empty() {
            return vec![chunk];
        }
        let mut ready = Vec::new();
        let mut bytes = match self.held.take() {
            Some(held) if held.stream == chunk.stream => held.bytes,
            Some(held) => {
                ready.push(OutputChunk::new(held.stream, self.replace(&held.bytes)));
                Vec::new()
            }
            None => Vec::new(),
        };
        bytes.extend_from_slice(&chunk.bytes);
        let keep = self.risky_tail(&bytes);
        let held = bytes.split_off(bytes.len() - keep);
        if !bytes.is_empty() {
            ready.push(OutputChunk::new(chunk.stream, self.replace(&bytes)));
        }
        if !held.is_empty() {
            self.held = Some(OutputChunk::new(chunk.stream, held));
        }
        ready
    }

    /// The output ended: whatever was held back, masked.
    pub fn finish(&mut self) -> Option<OutputChunk> {
        self.held
            .take()
            .map(|held| OutputChunk::new(held.stream, self.replace(&held.bytes)))
    }
}

/// Passes `input` on to `output` through `masker` until `input` ends.
pub async fn relay(mut input: OutputReceiver, output: OutputSender, mut masker: Masker) {
    while let Some(chunk) = input.recv().await {
        // The agent's own lines carry no step output; pass them as they are, but end a
        // held line first so the order is kept.
        if chunk.stream == Stream::Agent {
            if let Some(held) = masker.finish()
                && output.send(held).await.is_err()
            {
                return;
            }
            if output
                .send(OutputChunk::new(
                    Stream::Agent,
                    masker.replace(&chunk.bytes),
                ))
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        for ready in masker.push(chunk) {
            if output.send(ready).await.is_err() {
                return;
            }
        }
    }
    if let Some(held) = masker.finish() {
        let _ = output.send(held).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(masker: &mut Masker, chunks: &[&str]) -> String {
        let mut out = Vec::new();
        for chunk in chunks {
            for ready in masker.push(OutputChunk::new(Stream::Stdout, chunk.as_bytes())) {
                out.extend(ready.bytes);
            }
        }
        if let Some(held) = masker.finish() {
            out.extend(held.bytes);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_form_of_a_secret_is_masked_even_across_chunks() {
        let secret = "s3cr3t/value+1";
        let mut masker = Masker::new([secret, "multi\nline-key"]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        let text = format!(
            "token={secret}\nb64={b64}\nurl={}\nkey: multi\nline-key\n",
            url_encoded(secret)
        );
        let pieces: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        // Whole, and split anywhere (a byte at a time).
        for out in [masked(&mut masker, &[&text]), masked(&mut masker, &pieces)] {
            assert!(
                out.starts_with("token=***\nb64=***\nurl=***\nkey: ***\n"),
                "{out}"
            );
            assert!(!out.contains("multi") && !out.contains("line-key"), "{out}");
        }
    }

    #[test]
    fn ordinary_output_passes_at_once() {
        let mut masker = Masker::new(["hunter2"]);
        let ready = masker.push(OutputChunk::new(Stream::Stdout, &b"progress: 40%"[..]));
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].bytes, b"progress: 40%");
        // A tail that could start the secret waits; the rest goes.
        let ready = masker.push(OutputChunk::new(Stream::Stdout, &b"\npassword: hun"[..]));
        assert_eq!(ready[0].bytes, b"\npassword: ");
        let ready = masker.push(OutputChunk::new(Stream::Stdout, &b"gry\n"[..]));
        assert_eq!(ready[0].bytes, b"hungry\n");
        assert!(Masker::new(["ab"]).is_empty(), "too short to mask");
    }
}
