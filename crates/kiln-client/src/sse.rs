//! A Server-Sent Events parser (the WHATWG `text/event-stream` rules): bytes in, events
//! out, across arbitrary chunk boundaries.
//!
//! Lines end with `\n`, `\r\n` or a lone `\r`; a line starting with `:` is a comment; a
//! field without a colon has an empty value; one space after the colon is dropped;
//! several `data:` lines join with `\n`; a blank line dispatches the event (an event with
//! no data is not dispatched); `id` persists until changed and carries over to later
//! events; an incomplete event at the end of the stream is discarded.

use std::time::Duration;

/// The longest line (and the largest event data) accepted; Kiln's events are at most
/// 1 MiB, so this only stops a misbehaving server from exhausting memory.
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The last event id seen on the stream so far (`None` if none, or reset by `id:`).
    pub id: Option<String>,
    /// The `event:` field, or `message` when absent.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("the event stream sent a line or event larger than {MAX_EVENT_BYTES} bytes")]
    TooLarge,
}

/// Incremental parser state; feed it chunks as they arrive.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    /// Whether the start of the stream (and a possible byte order mark) is behind us.
    started: bool,
    data: String,
    has_data: bool,
    event: String,
    last_event_id: String,
    retry: Option<Duration>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// The reconnection delay the server asked for with `retry:`, if any.
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    /// The last event id seen so far (what a reconnecting client sends as `Last-Event-ID`).
    pub fn last_event_id(&self) -> Option<&str> {
        Some(self.last_event_id.as_str()).filter(|id| !id.is_empty())
    }

    /// Parses a chunk, appending the events it completes to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if !self.started {
            // A UTF-8 byte order mark may open the stream; it can arrive split.
            let bom = [0xEF, 0xBB, 0xBF];
            let seen = self.line.len();
            let take = chunk.len().min(bom.len() - seen);
            if chunk[..take] == bom[seen..seen + take] {
                self.line.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                if self.line.len() < bom.len() {
                    return Ok(());
                }
                self.line.clear();
            }
            // Otherwise what was held back is ordinary text and stays in `line`.
            self.started = true;
        }
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        while let Some(end) = chunk.iter().position(|b| *b == b'\n' || *b == b'\r') {
            self.push_line_bytes(&chunk[..end])?;
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out)?;
            let mut next = end + 1;
            if chunk[end] == b'\r' {
                match chunk.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            chunk = &chunk[next..];
        }
        self.push_line_bytes(chunk)
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > MAX_EVENT_BYTES {
            return Err(SseError::TooLarge);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT_BYTES {
                    return Err(SseError::TooLarge);
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => value.clone_into(&mut self.last_event_id),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse::<u64>() {
                    self.retry = Some(Duration::from_millis(ms));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = std::mem::take(&mut self.event);
        let data = std::mem::take(&mut self.data);
        if !std::mem::take(&mut self.has_data) {
            return;
        }
        out.push(SseEvent {
            id: self.last_event_id().map(str::to_owned),
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out).unwrap();
        }
        out
    }

    fn event(id: Option<&str>, event: &str, data: &str) -> SseEvent {
        SseEvent {
            id: id.map(str::to_owned),
            event: event.to_owned(),
            data: data.to_owned(),
        }
    }

    #[test]
    fn parses_kilns_stream() {
        let stream = b"retry: 2000\n: kiln live stream\n\nid: 7\nevent: stage_started\ndata: {\"stage\":\"Test\"}\n\n: keep-alive\n\nevent: end\ndata: {}\n\n";
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        parser.feed(stream, &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                event(Some("7"), "stage_started", "{\"stage\":\"Test\"}"),
                // The id carries over to events that do not set one.
                event(Some("7"), "end", "{}"),
            ]
        );
        assert_eq!(parser.retry(), Some(Duration::from_millis(2000)));
        assert_eq!(parser.last_event_id(), Some("7"));
    }

    #[test]
    fn every_line_ending_works_alone_and_mixed() {
        let expected = vec![event(Some("1"), "a", "x"), event(Some("2"), "b", "y")];
        for text in [
            "id: 1\nevent: a\ndata: x\n\nid: 2\nevent: b\ndata: y\n\n",
            "id: 1\r\nevent: a\r\ndata: x\r\n\r\nid: 2\r\nevent: b\r\ndata: y\r\n\r\n",
            "id: 1\revent: a\rdata: x\r\rid: 2\revent: b\rdata: y\r\r",
            "id: 1\r\nevent: a\rdata: x\n\r\nid: 2\nevent: b\r\ndata: y\r\n\n",
        ] {
            assert_eq!(parse(&[text.as_bytes()]), expected, "{text:?}");
        }
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let text = "id: 41\r\nevent: build_progress\r\ndata: {\"progress\":40,\"note\":\"héllo\"}\r\n\r\n:c\r\rdata: z\r\n\r\n";
        let whole = parse(&[text.as_bytes()]);
        assert_eq!(whole.len(), 2);
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            assert_eq!(
                parse(&[&bytes[..split], &bytes[split..]]),
                whole,
                "split at {split}"
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(parse(&singles), whole);
    }

    #[test]
    fn multi_line_data_joins_with_newlines() {
        assert_eq!(
            parse(&[b"data: one\ndata:two\ndata\ndata:  three\n\n"]),
            vec![event(None, "message", "one\ntwo\n\n three")]
        );
    }

    #[test]
    fn comments_unknown_fields_and_empty_events_are_skipped() {
        assert_eq!(
            parse(&[b": hello\nfoo: bar\nevent: lonely\n\nid: 3\n\n:only comment\n\ndata\n\n"]),
            // `data` with no colon is a data line with an empty value: dispatched.
            vec![event(Some("3"), "message", "")]
        );
    }

    #[test]
    fn fields_without_values_and_id_resets() {
        assert_eq!(
            parse(&[b"id: 5\ndata: a\n\nid\ndata: b\n\nevent\ndata: c\n\nid: x\0y\ndata: d\n\n"]),
            vec![
                event(Some("5"), "message", "a"),
                event(None, "message", "b"),
                event(None, "message", "c"),
                // An id containing NUL is ignored.
                event(None, "message", "d"),
            ]
        );
    }

    #[test]
    fn retry_needs_digits_and_a_trailing_event_is_discarded() {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        parser
            .feed(
                b"retry: soon\nretry: 1500\nretry: 9x\ndata: unfinished",
                &mut out,
            )
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(parser.retry(), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn a_byte_order_mark_is_dropped_even_when_split() {
        let expected = vec![event(None, "message", "x")];
        assert_eq!(parse(&[b"\xEF\xBB\xBFdata: x\n\n"]), expected);
        assert_eq!(parse(&[b"\xEF", b"\xBB", b"\xBFdata: x\n\n"]), expected);
        assert_eq!(parse(&[b"data: x\n\n"]), expected);
    }

    #[test]
    fn oversized_lines_are_refused() {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        let big = vec![b'a'; MAX_EVENT_BYTES / 2 + 1];
        parser.feed(b"data: ", &mut out).unwrap();
        parser.feed(&big, &mut out).unwrap();
        assert_eq!(parser.feed(&big, &mut out), Err(SseError::TooLarge));
    }
}
