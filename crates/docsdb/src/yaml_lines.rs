//! Where each value of a YAML document starts, so that errors found after parsing (a missing
//! endpoint, a duplicate name) can name the line as well as the field.
//!
//! Paths look like serde's: `handles[2].targets[0].endpoint`.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Path → 1-based line.
#[derive(Debug, Default)]
pub(crate) struct LineIndex {
    lines: HashMap<String, usize>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl Builder {
    /// The path of the value about to be read, if the parent is a mapping waiting for a value
    /// or a sequence.
    fn value_path(&self) -> Option<String> {
        match self.stack.last()? {
            Frame::Map { path, key: Some(k) } => Some(join(path, k)),
            Frame::Map { key: None, .. } => None,
            Frame::Seq { path, index } => Some(format!("{path}[{index}]")),
        }
    }

    /// After a value: the parent mapping waits for a key again, a sequence moves on.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }

    fn record(&mut self, path: &str, mark: Marker) {
        self.lines.entry(path.to_owned()).or_insert(mark.line());
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, ..) => {
                if let Some(Frame::Map {
                    path,
                    key: key @ None,
                }) = self.stack.last_mut()
                {
                    let p = join(path, &text);
                    *key = Some(text);
                    self.record(&p, mark);
                } else if let Some(p) = self.value_path() {
                    self.record(&p, mark);
                    self.value_done();
                }
            }
            Event::Alias(_) => {
                if let Some(p) = self.value_path() {
                    self.record(&p, mark);
                }
                self.value_done();
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = self.value_path().unwrap_or_default();
                self.record(&path, mark);
                let frame = if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, index: 0 }
                };
                self.stack.push(frame);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}

impl LineIndex {
    /// Indexes `text`. A document that does not parse gives an empty index (the serde error
    /// that follows carries its own line).
    pub(crate) fn new(text: &str) -> Self {
        let mut b = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut b, false).is_err() {
            return LineIndex::default();
        }
        LineIndex { lines: b.lines }
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub(crate) fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_lines() {
        let text = "hosts:\n  - name: mini\n    memory_bytes: 1\nhandles:\n  - handle: chat\n    targets:\n      - endpoint: a\n        model: x\n      - endpoint: b\n        model: y\n";
        let idx = LineIndex::new(text);
        assert_eq!(idx.line_of("hosts[0].name"), Some(2));
        assert_eq!(idx.line_of("handles[0].handle"), Some(5));
        assert_eq!(idx.line_of("handles[0].targets[1].endpoint"), Some(9));
        assert_eq!(idx.line_of("handles[0].targets[1].model"), Some(10));
        // A field that is not in the file falls back to its parent.
        assert_eq!(idx.line_of("handles[0].targets[1].weight"), Some(9));
    }
}
