//! Job logs as HTML lines: the agents' line prefix (time and stream tag) split off, SGR
//! colours and styles turned into spans, every other escape sequence dropped, and all
//! text escaped. `assets/build.js` renders streamed lines the same way.

use std::fmt::Write as _;

/// One rendered log line.
#[derive(Clone, Debug)]
pub(crate) struct LogLine {
    /// 1-based line number within the whole log.
    pub number: i64,
    /// The time the agent read the line (`…T12:00:01.123Z`), if it has the prefix.
    pub time: String,
    /// `out`, `err`, `kiln`, or empty for lines without the agents' prefix.
    pub stream: &'static str,
    /// Looks like an error: written to stderr, or says "error"/"failed".
    pub error: bool,
    /// The escaped text with colour spans.
    pub html: String,
}

/// SGR state carried from one line to the next, as a terminal does.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Style {
    foreground: Option<Colour>,
    background: Option<Colour>,
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Colour {
    /// 0–15: the terminal palette (classes `a-f0`…`a-f15`, `a-b0`…).
    Palette(u8),
    Rgb(u8, u8, u8),
}

impl Style {
    fn is_plain(&self) -> bool {
        *self == Style::default()
    }

    fn open_tag(&self, out: &mut String) {
        let mut classes = Vec::new();
        let mut style = String::new();
        match self.foreground {
            Some(Colour::Palette(n)) => classes.push(format!("a-f{n}")),
            Some(Colour::Rgb(r, g, b)) => {
                let _ = write!(style, "color:#{r:02x}{g:02x}{b:02x};");
            }
            None => {}
        }
        match self.background {
            Some(Colour::Palette(n)) => classes.push(format!("a-b{n}")),
            Some(Colour::Rgb(r, g, b)) => {
                let _ = write!(style, "background:#{r:02x}{g:02x}{b:02x};");
            }
            None => {}
        }
        for (on, class) in [
            (self.bold, "a-bold"),
            (self.dim, "a-dim"),
            (self.italic, "a-it"),
            (self.underline, "a-ul"),
        ] {
            if on {
                classes.push(class.to_owned());
            }
        }
        out.push_str("<span");
        if !classes.is_empty() {
            let _ = write!(out, " class=\"{}\"", classes.join(" "));
        }
        if !style.is_empty() {
            let _ = write!(out, " style=\"{style}\"");
        }
        out.push('>');
    }

    /// Applies one SGR sequence's parameters.
    fn apply(&mut self, params: &[u16]) {
        if params.is_empty() {
            *self = Style::default();
            return;
        }
        let mut index = 0;
        while index < params.len() {
            let code = params[index];
            match code {
                0 => *self = Style::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                3 => self.italic = true,
                4 => self.underline = true,
                22 => {
                    self.bold = false;
                    self.dim = false;
                }
                23 => self.italic = false,
                24 => self.underline = false,
                30..=37 => self.foreground = Some(Colour::Palette((code - 30) as u8)),
                90..=97 => self.foreground = Some(Colour::Palette((code - 90 + 8) as u8)),
                39 => self.foreground = None,
                40..=47 => self.background = Some(Colour::Palette((code - 40) as u8)),
                100..=107 => self.background = Some(Colour::Palette((code - 100 + 8) as u8)),
                49 => self.background = None,
                38 | 48 => {
                    let (colour, used) = extended_colour(&params[index + 1..]);
                    index += used;
                    if let Some(colour) = colour {
                        if code == 38 {
                            self.foreground = Some(colour);
                        } else {
                            self.background = Some(colour);
                        }
                    }
                }
                _ => {}
            }
            index += 1;
        }
    }
}

/// `5;n` (256 colours) or `2;r;g;b`; returns the colour and how many parameters it used.
fn extended_colour(rest: &[u16]) -> (Option<Colour>, usize) {
    match rest {
        [5, n, ..] => {
            let n = (*n).min(255) as u8;
            let colour = if n < 16 {
                Colour::Palette(n)
            } else if n < 232 {
                let level = |v: u8| if v == 0 { 0 } else { 55 + v * 40 };
                let v = n - 16;
                Colour::Rgb(level(v / 36), level((v / 6) % 6), level(v % 6))
            } else {
                let grey = 8 + (n - 232) * 10;
                Colour::Rgb(grey, grey, grey)
            };
            (Some(colour), 2)
        }
        [2, r, g, b, ..] => (
            Some(Colour::Rgb(
                (*r).min(255) as u8,
                (*g).min(255) as u8,
                (*b).min(255) as u8,
            )),
            4,
        ),
        [2, ..] => (None, rest.len()),
        _ => (None, rest.len().min(1)),
    }
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Other control characters show as nothing (a bell, a backspace).
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
}

/// Renders one line's text (no newline) from `style`, leaving `style` as the line ends.
fn render_text(text: &str, style: &mut Style) -> String {
    // A carriage return redraws the line (progress bars): keep what was drawn last.
    let text = match text.trim_end_matches('\r').rsplit_once('\r') {
        Some((_, last)) => last,
        None => text.trim_end_matches('\r'),
    };
    let mut out = String::with_capacity(text.len() + 16);
    let mut open = !style.is_plain();
    if open {
        style.open_tag(&mut out);
    }
    let mut rest = text;
    while let Some(escape) = rest.find('\u{1b}') {
        escape_into(&mut out, &rest[..escape]);
        let after = &rest[escape + 1..];
        let consumed = match after.as_bytes().first() {
            Some(b'[') => {
                // CSI: parameters and intermediates, then a final byte 0x40–0x7e.
                let body = &after[1..];
                match body.bytes().position(|b| (0x40..=0x7e).contains(&b)) {
                    Some(end) => {
                        if body.as_bytes()[end] == b'm' {
                            let params: Vec<u16> = body[..end]
                                .split([';', ':'])
                                .map(|p| p.parse::<u16>().unwrap_or(0))
                                .collect();
                            let params = if body[..end].is_empty() {
                                Vec::new()
                            } else {
                                params
                            };
                            if open {
                                out.push_str("</span>");
                            }
                            style.apply(&params);
                            open = !style.is_plain();
                            if open {
                                style.open_tag(&mut out);
                            }
                        }
                        1 + end + 1
                    }
                    None => after.len(),
                }
            }
            Some(b']') => {
                // OSC (titles, hyperlinks): up to BEL or ST.
                let bell = after.find('\u{7}').map(|i| i + 1);
                let st = after.find("\u{1b}\\").map(|i| i + 2);
                match (bell, st) {
                    (Some(a), Some(b)) => a.min(b),
                    (Some(a), None) | (None, Some(a)) => a,
                    (None, None) => after.len(),
                }
            }
            Some(_) => after.chars().next().map_or(0, char::len_utf8),
            None => 0,
        };
        rest = &after[consumed.min(after.len())..];
    }
    escape_into(&mut out, rest);
    if open {
        out.push_str("</span>");
    }
    out
}

/// Text without escape sequences or control characters (but tabs and newlines), for
/// messages shown as plain text: event and stage messages may carry colours too.
pub(crate) fn plain(text: &str) -> String {
    if !text
        .chars()
        .any(|c| c.is_control() && c != '\t' && c != '\n')
    {
        return text.to_owned();
    }
    let mut style = Style::default();
    text.split('\n')
        .map(|line| {
            let html = render_text(line, &mut style);
            style = Style::default();
            unescape_tags(&html)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The text of rendered HTML: tags dropped, the five escapes undone.
fn unescape_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Whether a line's words look like an error ("error", "failed", any case).
fn sounds_like_error(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("error") || lower.contains("failed")
}

/// Renders a piece of a log that starts at a line start; `first_number` is the number
/// of its first line. A last line without a newline is rendered too (it may grow).
pub(crate) fn render_log(text: &str, first_number: i64) -> Vec<LogLine> {
    let mut style = Style::default();
    let mut lines = Vec::new();
    let body = text.strip_suffix('\n').unwrap_or(text);
    if body.is_empty() && text.is_empty() {
        return lines;
    }
    for (index, raw) in body.split('\n').enumerate() {
        let (time, stream, rest) = split_prefix(raw);
        let html = render_text(rest, &mut style);
        lines.push(LogLine {
            number: first_number + index as i64,
            time: time.to_owned(),
            stream,
            error: stream == "err" || sounds_like_error(rest),
            html,
        });
    }
    lines
}

/// The agents' 30-byte prefix: `2026-11-24T22:40:01.123Z out  `.
fn split_prefix(line: &str) -> (&str, &'static str, &str) {
    let bytes = line.as_bytes();
    if bytes.len() >= 29
        && bytes[4] == b'-'
        && bytes[10] == b'T'
        && bytes[23] == b'Z'
        && bytes[24] == b' '
        && line.is_char_boundary(29)
    {
        let stream = match &line[25..29] {
            "out " => Some("out"),
            "err " => Some("err"),
            "kiln" => Some("kiln"),
            _ => None,
        };
        if let Some(stream) = stream {
            let rest = line.get(30..).unwrap_or_default();
            return (&line[11..23], stream, rest);
        }
    }
    ("", "", line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_become_spans_and_text_is_escaped() {
        let lines = render_log("\u{1b}[1;31mred <b>&\u{1b}[0m plain\n", 1);
        assert_eq!(lines.len(), 1);
        assert_eq!(
            lines[0].html,
            "<span class=\"a-f1 a-bold\">red &lt;b&gt;&amp;</span> plain"
        );
    }

    #[test]
    fn style_carries_over_lines_and_unknown_escapes_vanish() {
        let lines = render_log(
            "\u{1b}[32mgo\nstill\u{1b}[39m\n\u{1b}]0;title\u{7}\u{1b}[2Kx\u{1b}[38;5;196my\u{1b}[48;2;1;2;3mz",
            7,
        );
        assert_eq!(lines[0].html, "<span class=\"a-f2\">go</span>");
        assert_eq!(lines[1].html, "<span class=\"a-f2\">still</span>");
        assert_eq!(
            lines[2].html,
            "x<span style=\"color:#ff0000;\">y</span><span style=\"color:#ff0000;background:#010203;\">z</span>"
        );
        assert_eq!(lines[2].number, 9);
    }

    #[test]
    fn prefixes_are_split_and_errors_found() {
        let log = "2026-11-24T22:40:01.123Z kiln $ make\n2026-11-24T22:40:02.000Z out  ok <script>\n2026-11-24T22:40:02.001Z err  warn\nBuild FAILED\n";
        let lines = render_log(log, 1);
        assert_eq!(lines[0].stream, "kiln");
        assert_eq!(lines[0].time, "22:40:01.123");
        assert_eq!(lines[0].html, "$ make");
        assert_eq!(lines[1].html, "ok &lt;script&gt;");
        assert!(!lines[1].error);
        assert!(lines[2].error, "stderr");
        assert_eq!(lines[3].stream, "");
        assert!(lines[3].error, "says failed");
    }

    #[test]
    fn plain_text_loses_escapes_but_keeps_markup_characters() {
        assert_eq!(
            plain("\u{1b}[31m<script>\u{1b}[0m & 'x'\u{7}"),
            "<script> & 'x'"
        );
        assert_eq!(plain("two\nlines"), "two\nlines");
    }

    #[test]
    fn carriage_returns_keep_the_last_drawing() {
        let lines = render_log("10%\r50%\r100%\r\n", 1);
        assert_eq!(lines[0].html, "100%");
    }
}
