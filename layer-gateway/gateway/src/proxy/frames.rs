//! An SSE stream cut into whole events without copying or re-encoding them: the relay passes
//! each chunk's complete events on as a slice of the bytes that came, keeps an event cut by a
//! chunk boundary until the rest of it arrives, and decodes only the few events it must read
//! (usage, timings, errors).

use std::ops::Range;
use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use contract::sse::SseError;
use memchr::memchr2;
use memchr::memmem::Finder;

/// The whole events of a stream, chunk by chunk.
#[derive(Debug)]
pub(super) struct Framer {
    /// An event not yet ended by a blank line.
    pending: BytesMut,
    /// The events of the last [`Framer::push`], as ranges of what it returned.
    pub(super) events: Vec<Range<usize>>,
    /// The longest event held while it is incomplete.
    max: usize,
}

impl Framer {
    pub(super) fn new(max: usize) -> Self {
        Framer {
            pending: BytesMut::new(),
            events: Vec::new(),
            max,
        }
    }

    /// The events `chunk` completes (with what was held before it), as one slice, their
    /// ranges in [`Framer::events`]; what follows the last blank line is held for the next
    /// chunk.
    pub(super) fn push(&mut self, chunk: Bytes) -> Result<Bytes, SseError> {
        let buf = if self.pending.is_empty() {
            chunk
        } else {
            self.pending.extend_from_slice(&chunk);
            self.pending.split().freeze()
        };
        self.events.clear();
        let mut start = 0;
        while let Some(end) = event_end(&buf, start) {
            self.events.push(start..end);
            start = end;
        }
        if buf.len() - start > self.max {
            return Err(SseError::LineTooLong { limit: self.max });
        }
        self.pending.extend_from_slice(&buf[start..]);
        Ok(buf.slice(..start))
    }

    /// What is held at the end of the stream: a last event without its blank line.
    pub(super) fn finish(&mut self) -> Bytes {
        self.pending.split().freeze()
    }
}

/// Where the event starting at `from` ends (past the blank line that ends it), if `buf` holds
/// all of it. Lines end in `\n`, `\r\n` or a lone `\r`; a `\r` last in `buf` waits, since a
/// `\n` may follow.
fn event_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut line_start = from;
    loop {
        let at = line_start + memchr2(b'\n', b'\r', &buf[line_start..])?;
        let next = match (buf[at], buf.get(at + 1)) {
            (b'\r', Some(b'\n')) => at + 2,
            (b'\r', None) => return None,
            _ => at + 1,
        };
        if at == line_start {
            return Some(next);
        }
        line_start = next;
    }
}

/// What an event is, from its bytes: whether it carries data (the end-of-stream `[DONE]`
/// does not count), and whether it may hold usage, timings or an error (then it is decoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Kind {
    pub(super) data: bool,
    pub(super) done: bool,
    pub(super) worth_reading: bool,
}

pub(super) fn kind(event: &[u8]) -> Kind {
    // Searchers built once: building one per event cost more than the search.
    static DATA: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"data:"));
    static WORTH: LazyLock<[Finder<'static>; 3]> = LazyLock::new(|| {
        [
            Finder::new(b"\"usage\""),
            Finder::new(b"\"error\""),
            Finder::new(b"\"timings\""),
        ]
    });
    let data_at = DATA.find(event);
    let done = data_at.is_some_and(|at| {
        let v = &event[at + 5..];
        let v = v.strip_prefix(b" ").unwrap_or(v);
        v.starts_with(b"[DONE]")
    });
    let worth_reading = WORTH.iter().any(|f| f.find(event).is_some());
    Kind {
        data: data_at.is_some() && !done,
        done,
        worth_reading,
    }
}

/// The data of one event (its `data:` lines joined), decoded as the standard says.
pub(super) fn data_of(event: &[u8]) -> Option<String> {
    let mut d = contract::sse::SseDecoder::new();
    let mut events = d.push(event).ok()?;
    events.extend(d.finish());
    events.pop().map(|e| e.data)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn whole(f: &mut Framer, chunk: &'static [u8]) -> (String, Vec<String>) {
        let b = f.push(Bytes::from_static(chunk)).unwrap();
        let events = f
            .events
            .iter()
            .map(|r| String::from_utf8(b[r.clone()].to_vec()).unwrap())
            .collect();
        (String::from_utf8(b.to_vec()).unwrap(), events)
    }

    #[test]
    fn events_cut_anywhere_come_out_whole_and_in_order() {
        let mut f = Framer::new(1 << 20);
        let (b, ev) = whole(&mut f, b"data: {\"a\":1}\n\ndata: {\"b\"");
        assert_eq!(b, "data: {\"a\":1}\n\n");
        assert_eq!(ev, ["data: {\"a\":1}\n\n"]);
        let (b, ev) = whole(&mut f, b":2}\r\n\r");
        assert_eq!(
            (b.as_str(), ev.len()),
            ("", 0),
            "a lone \\r at the end waits"
        );
        let (b, ev) = whole(&mut f, b"\nevent: x\rdata: y\r\rdata: [DONE]\n\n");
        assert_eq!(
            ev,
            [
                "data: {\"b\":2}\r\n\r\n",
                "event: x\rdata: y\r\r",
                "data: [DONE]\n\n"
            ]
        );
        assert_eq!(b, ev.concat());
        assert!(f.finish().is_empty());
        let _ = whole(&mut f, b"data: last");
        assert_eq!(&f.finish()[..], b"data: last");
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut f = Framer::new(8);
        assert!(f.push(Bytes::from_static(b"data: 0123456789")).is_err());
    }

    #[test]
    fn kinds() {
        assert_eq!(
            kind(b"data: {\"choices\":[]}\n\n"),
            Kind {
                data: true,
                done: false,
                worth_reading: false
            }
        );
        assert!(kind(b"data: [DONE]\n\n").done && !kind(b"data: [DONE]\n\n").data);
        assert!(kind(b"data:[DONE]\n\n").done);
        assert!(kind(b"data: {\"usage\":{}}\n\n").worth_reading);
        assert!(!kind(b": keep-alive\n\n").data);
        assert_eq!(
            data_of(b"data: {\"usage\":\ndata: 1}\n\n").as_deref(),
            Some("{\"usage\":\n1}")
        );
    }
}
