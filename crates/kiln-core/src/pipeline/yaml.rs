//! A small YAML tree with a line and column on every node, built from saphyr-parser's events.
//!
//! The pipeline parser needs positions for every error, including semantic ones found long
//! after parsing (an unknown dependency, a cycle), so it works on this tree rather than on
//! serde types. Building the tree ourselves also lets us bound what untrusted input may
//! cost: nesting depth (the parser recurses per level), alias expansion ("billion laughs")
//! and the number of documents.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use super::PipelineError;

/// Deepest nesting of sequences and mappings accepted; a pipeline needs five levels.
pub(crate) const MAX_DEPTH: usize = 32;
/// Most nodes that alias expansion (`*name`) may produce in one file.
pub(crate) const MAX_ALIAS_NODES: usize = 10_000;

/// One YAML node and where it starts (1-based line and column).
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub line: usize,
    pub column: usize,
    pub kind: NodeKind,
}

#[derive(Clone, Debug)]
pub(crate) enum NodeKind {
    /// A scalar as written; its meaning (string, number, null) is decided by the field.
    Scalar {
        text: String,
        plain: bool,
    },
    Sequence(Vec<Node>),
    Mapping(Vec<Entry>),
}

/// One `key: value` pair of a mapping; keys are always scalars.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub key: String,
    pub key_line: usize,
    pub key_column: usize,
    pub value: Node,
}

impl Node {
    /// `~`, `null` or nothing at all, written without quotes.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// What kind of value this is, for messages such as "expected a list, found a mapping".
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            _ if self.is_null() => "nothing (null)",
            NodeKind::Scalar { .. } => "a single value",
            NodeKind::Sequence(_) => "a list",
            NodeKind::Mapping(_) => "a mapping",
        }
    }

    fn count(&self) -> usize {
        match &self.kind {
            NodeKind::Scalar { .. } => 1,
            NodeKind::Sequence(items) => 1 + items.iter().map(Node::count).sum::<usize>(),
            NodeKind::Mapping(entries) => {
                1 + entries
                    .iter()
                    .map(|entry| entry.value.count())
                    .sum::<usize>()
            }
        }
    }
}

enum Frame {
    Sequence {
        start: Span,
        anchor: usize,
        items: Vec<Node>,
    },
    Mapping {
        start: Span,
        anchor: usize,
        entries: Vec<Entry>,
        pending_key: Option<(String, usize, usize)>,
    },
}

fn error_at(line: usize, column: usize, message: impl Into<String>) -> PipelineError {
    PipelineError {
        line: Some(line),
        column: Some(column),
        field: String::new(),
        message: message.into(),
    }
}

fn position(span: &Span) -> (usize, usize) {
    (span.start.line(), span.start.col() + 1)
}

/// Parses exactly one YAML document. An empty file yields `None`.
pub(crate) fn parse_document(text: &str) -> Result<Option<Node>, PipelineError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: Vec<(usize, Node)> = Vec::new();
    let mut alias_budget = MAX_ALIAS_NODES;
    let mut root: Option<Node> = None;
    let mut documents = 0usize;

    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|scan_error| {
            let marker = scan_error.marker();
            error_at(
                marker.line(),
                marker.col() + 1,
                format!(
                    "this is not valid YAML: {} (check the indentation and quoting around here)",
                    scan_error.info()
                ),
            )
        })?;
        let (line, column) = position(&span);
        let finished: Node = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing | Event::DocumentEnd => continue,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(error_at(
                        line,
                        column,
                        "the file holds more than one YAML document: keep one and remove the extra '---'",
                    ));
                }
                continue;
            }
            Event::SequenceStart(ref anchor, ref tag)
            | Event::MappingStart(ref anchor, ref tag) => {
                let anchor = *anchor;
                reject_custom_tag(tag.as_deref(), line, column)?;
                if stack.len() >= MAX_DEPTH {
                    return Err(error_at(
                        line,
                        column,
                        format!(
                            "nesting is deeper than {MAX_DEPTH} levels: a pipeline needs far fewer"
                        ),
                    ));
                }
                let is_sequence = matches!(event, Event::SequenceStart(..));
                stack.push(if is_sequence {
                    Frame::Sequence {
                        start: span,
                        anchor,
                        items: Vec::new(),
                    }
                } else {
                    Frame::Mapping {
                        start: span,
                        anchor,
                        entries: Vec::new(),
                        pending_key: None,
                    }
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let frame = stack.pop().expect("the parser balances starts and ends");
                let (start, anchor, kind) = match frame {
                    Frame::Sequence {
                        start,
                        anchor,
                        items,
                    } => (start, anchor, NodeKind::Sequence(items)),
                    Frame::Mapping {
                        start,
                        anchor,
                        entries,
                        ..
                    } => (start, anchor, NodeKind::Mapping(entries)),
                };
                let (line, column) = position(&start);
                let node = Node { line, column, kind };
                if anchor > 0 {
                    anchors.push((anchor, node.clone()));
                }
                node
            }
            Event::Scalar(text, style, anchor, tag) => {
                reject_custom_tag(tag.as_deref(), line, column)?;
                let node = Node {
                    line,
                    column,
                    kind: NodeKind::Scalar {
                        text: text.into_owned(),
                        plain: style == ScalarStyle::Plain && tag.is_none(),
                    },
                };
                if anchor > 0 {
                    anchors.push((anchor, node.clone()));
                }
                node
            }
            Event::Alias(anchor) => {
                let Some((_, target)) = anchors.iter().rev().find(|(id, _)| *id == anchor) else {
                    return Err(error_at(line, column, "this alias names an unknown anchor"));
                };
                let cost = target.count();
                if cost > alias_budget {
                    return Err(error_at(
                        line,
                        column,
                        format!(
                            "aliases expand to more than {MAX_ALIAS_NODES} values: write the values out or use fewer aliases"
                        ),
                    ));
                }
                alias_budget -= cost;
                let mut copy = target.clone();
                copy.line = line;
                copy.column = column;
                copy
            }
        };
        match stack.last_mut() {
            None => root = Some(finished),
            Some(Frame::Sequence { items, .. }) => items.push(finished),
            Some(Frame::Mapping {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => {
                    let NodeKind::Scalar { text, .. } = finished.kind else {
                        return Err(error_at(
                            finished.line,
                            finished.column,
                            "a key must be a plain name, not a list or a mapping",
                        ));
                    };
                    if entries.iter().any(|entry| entry.key == text) {
                        return Err(error_at(
                            finished.line,
                            finished.column,
                            format!("the key '{text}' appears twice in this mapping: keep one"),
                        ));
                    }
                    *pending_key = Some((text, finished.line, finished.column));
                }
                Some((key, key_line, key_column)) => entries.push(Entry {
                    key,
                    key_line,
                    key_column,
                    value: finished,
                }),
            },
        }
    }
    Ok(root)
}

fn reject_custom_tag(
    tag: Option<&saphyr_parser::Tag>,
    line: usize,
    column: usize,
) -> Result<(), PipelineError> {
    match tag {
        Some(tag) if !tag.is_yaml_core_schema() => Err(error_at(
            line,
            column,
            format!(
                "the tag '{handle}{suffix}' is not supported: remove it, or quote the value if it is text such as a branch pattern ('{handle}{suffix}')",
                handle = tag.handle,
                suffix = tag.suffix
            ),
        )),
        _ => Ok(()),
    }
}
