//! Server-sent events: an incremental decoder and an encoder.
//!
//! The decoder follows the WHATWG "event stream" parsing rules: lines end in `\n`, `\r\n` or a
//! lone `\r`; a line starting with `:` is a comment; `data:` lines accumulate, joined by `\n`;
//! a blank line dispatches the event; one space after the colon is dropped; a leading BOM is
//! ignored. It takes bytes in chunks split anywhere (inside a line, inside a `\r\n`, inside a
//! UTF-8 sequence) and yields the same events however the stream was cut.
//!
//! OpenAI-style streams end with `data: [DONE]`; [`SseEvent::is_done`] recognises it.

use memchr::memchr2;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, if the event had one.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
    /// The `id:` field, if the event had one.
    pub id: Option<String>,
}

impl SseEvent {
    /// An unnamed event carrying `data`.
    pub fn data(data: impl Into<String>) -> Self {
        SseEvent {
            event: None,
            data: data.into(),
            id: None,
        }
    }

    /// Whether this is the OpenAI end-of-stream sentinel `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.data.trim() == DONE
    }
}

/// The end-of-stream sentinel of OpenAI-style streams.
pub const DONE: &str = "[DONE]";

/// The bytes of `data: [DONE]` followed by the blank line.
pub const DONE_FRAME: &[u8] = b"data: [DONE]\n\n";

/// The longest line the decoder buffers before it gives up (16 MiB), so a peer that never
/// sends a newline cannot grow our memory without bound.
pub const DEFAULT_MAX_LINE: usize = 16 * 1024 * 1024;

/// Why decoding stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// A line grew beyond the limit without a line break.
    LineTooLong { limit: usize },
}

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SseError::LineTooLong { limit } => {
                write!(f, "server-sent event line longer than {limit} bytes")
            }
        }
    }
}

impl std::error::Error for SseError {}

/// An incremental decoder. Feed it chunks with [`SseDecoder::push`].
#[derive(Debug)]
pub struct SseDecoder {
    /// Bytes of a line not yet terminated.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` at the start of the next one belongs to it.
    skip_lf: bool,
    /// No line has been processed yet (a BOM may start the stream).
    at_start: bool,
    data: String,
    has_data: bool,
    event: Option<String>,
    id: Option<String>,
    retry_ms: Option<u64>,
    max_line: usize,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl SseDecoder {
    /// A decoder with the default line limit.
    pub fn new() -> Self {
        Self::with_max_line(DEFAULT_MAX_LINE)
    }

    /// A decoder that refuses lines longer than `max_line` bytes.
    pub fn with_max_line(max_line: usize) -> Self {
        SseDecoder {
            line: Vec::new(),
            skip_lf: false,
            at_start: true,
            data: String::new(),
            has_data: false,
            event: None,
            id: None,
            retry_ms: None,
            max_line,
        }
    }

    /// The last `retry:` value the stream set, in milliseconds.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Decodes a chunk, appending every event it completes to `out`.
    pub fn push_into(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let mut rest = chunk;
        if self.skip_lf && !rest.is_empty() {
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
            self.skip_lf = false;
        }
        while let Some(i) = memchr2(b'\n', b'\r', rest) {
            if self.line.is_empty() {
                self.process_line(&rest[..i], out);
            } else {
                self.line.extend_from_slice(&rest[..i]);
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, out);
                self.line = line;
                self.line.clear();
            }
            if rest[i] == b'\r' {
                match rest.get(i + 1) {
                    Some(b'\n') => rest = &rest[i + 2..],
                    Some(_) => rest = &rest[i + 1..],
                    None => {
                        self.skip_lf = true;
                        rest = &[];
                    }
                }
            } else {
                rest = &rest[i + 1..];
            }
        }
        if self.line.len() + rest.len() > self.max_line {
            return Err(SseError::LineTooLong {
                limit: self.max_line,
            });
        }
        self.line.extend_from_slice(rest);
        Ok(())
    }

    /// Decodes a chunk and returns the events it completes.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut out = Vec::new();
        self.push_into(chunk, &mut out)?;
        Ok(out)
    }

    /// Ends the stream. The standard drops an event that was not followed by a blank line;
    /// servers that close right after their last `data:` line are common, so this returns
    /// such an event instead of losing it.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let mut out = Vec::new();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, &mut out);
        }
        self.skip_lf = false;
        self.dispatch(&mut out);
        out.pop()
    }

    fn process_line(&mut self, mut line: &[u8], out: &mut Vec<SseEvent>) {
        if self.at_start {
            self.at_start = false;
            if let Some(stripped) = line.strip_prefix(b"\xEF\xBB\xBF") {
                line = stripped;
            }
        }
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return; // comment (keep-alive)
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"id" if !value.contains(&0) => {
                self.id = Some(String::from_utf8_lossy(value).into_owned());
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry_ms = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            _ => {} // unknown fields are ignored, as the standard says
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        if !self.has_data {
            // An event without data is not dispatched; its fields are reset.
            self.id = None;
            return;
        }
        self.has_data = false;
        let mut data = std::mem::take(&mut self.data);
        data.pop(); // the trailing '\n' every data line added
        out.push(SseEvent {
            event,
            data,
            id: self.id.take(),
        });
    }
}

/// Appends the wire form of `event` to `buf`: `event:`/`id:` lines if set, one `data:` line per
/// line of data (any of `\n`, `\r\n`, `\r` splits a line), then the blank line.
pub fn encode_into(event: &SseEvent, buf: &mut Vec<u8>) {
    if let Some(name) = &event.event {
        buf.extend_from_slice(b"event: ");
        buf.extend_from_slice(one_line(name).as_bytes());
        buf.push(b'\n');
    }
    if let Some(id) = &event.id {
        buf.extend_from_slice(b"id: ");
        buf.extend_from_slice(one_line(id).as_bytes());
        buf.push(b'\n');
    }
    for line in split_lines(&event.data) {
        buf.extend_from_slice(b"data: ");
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
    }
    buf.push(b'\n');
}

/// The wire form of `event`.
pub fn encode(event: &SseEvent) -> Vec<u8> {
    let mut buf = Vec::with_capacity(event.data.len() + 16);
    encode_into(event, &mut buf);
    buf
}

/// The wire form of an unnamed event whose data is `json` (a JSON document has no raw line
/// breaks, so it is one `data:` line).
pub fn encode_json_data(json: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(json.len() + 8);
    buf.extend_from_slice(b"data: ");
    buf.extend_from_slice(json);
    buf.extend_from_slice(b"\n\n");
    buf
}

/// A comment line, used as a keep-alive: `: text\n\n`.
pub fn encode_comment(text: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(text.len() + 4);
    for line in split_lines(text) {
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
    }
    buf.push(b'\n');
    buf
}

fn split_lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
            None => {
                rest = None;
                Some(s)
            }
        }
    })
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Vec<SseEvent> {
        let mut d = SseDecoder::new();
        let mut out = d.push(bytes).unwrap();
        out.extend(d.finish());
        out
    }

    #[test]
    fn openai_stream() {
        let s = b"data: {\"a\":1}\n\ndata: {\"a\":2}\n\ndata: [DONE]\n\n";
        let ev = decode_all(s);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].data, "{\"a\":1}");
        assert!(ev[2].is_done());
    }

    #[test]
    fn multi_line_data_comments_and_fields() {
        let s = b": keep-alive\nevent: error\nid: 7\ndata: line1\ndata:line2\ndata\n\n";
        let ev = decode_all(s);
        assert_eq!(
            ev,
            vec![SseEvent {
                event: Some("error".into()),
                data: "line1\nline2\n".into(),
                id: Some("7".into())
            }]
        );
    }

    #[test]
    fn crlf_and_lone_cr() {
        assert_eq!(
            decode_all(b"data: a\r\n\r\ndata: b\r\rdata: c\n\n").len(),
            3
        );
    }

    #[test]
    fn crlf_split_between_chunks_is_one_break() {
        let mut d = SseDecoder::new();
        assert!(d.push(b"data: a\r").unwrap().is_empty());
        // The '\n' finishes the "\r\n" of the previous line; it is not a blank line.
        assert!(d.push(b"\n").unwrap().is_empty());
        let ev = d.push(b"\r\n").unwrap();
        assert_eq!(ev, vec![SseEvent::data("a")]);
    }

    #[test]
    fn event_without_data_is_not_dispatched() {
        assert!(decode_all(b"event: ping\n\n").is_empty());
    }

    #[test]
    fn bom_is_ignored_and_retry_read() {
        let mut d = SseDecoder::new();
        let ev = d.push(b"\xEF\xBB\xBFretry: 1500\ndata: x\n\n").unwrap();
        assert_eq!(ev, vec![SseEvent::data("x")]);
        assert_eq!(d.retry_ms(), Some(1500));
    }

    #[test]
    fn finish_returns_an_unterminated_last_event() {
        assert_eq!(decode_all(b"data: [DONE]"), vec![SseEvent::data("[DONE]")]);
        assert_eq!(decode_all(b"data: x\n"), vec![SseEvent::data("x")]);
    }

    #[test]
    fn over_long_line_is_an_error_not_unbounded_memory() {
        let mut d = SseDecoder::with_max_line(8);
        assert!(d.push(b"data: 1234").is_err());
    }

    #[test]
    fn encoder_splits_lines() {
        let e = SseEvent {
            event: Some("x".into()),
            data: "a\nb\r\nc".into(),
            id: None,
        };
        assert_eq!(encode(&e), b"event: x\ndata: a\ndata: b\ndata: c\n\n");
        let back = decode_all(&encode(&e));
        assert_eq!(back[0].data, "a\nb\nc");
        assert_eq!(encode_json_data(b"{}"), b"data: {}\n\n");
        assert_eq!(encode_comment("ping"), b": ping\n\n");
    }
}
