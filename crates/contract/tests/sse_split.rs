//! The SSE decoder yields the same events however the byte stream is split.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use contract::sse::{SseDecoder, SseEvent, encode_comment, encode_into};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct GenEvent {
    name: Option<String>,
    lines: Vec<String>,
    id: Option<String>,
    comment_before: Option<String>,
}

fn gen_event() -> impl Strategy<Value = GenEvent> {
    (
        proptest::option::of("[a-z_]{1,8}"),
        proptest::collection::vec("[^\r\n]{0,24}", 1..4),
        proptest::option::of("[0-9a-f]{1,6}"),
        proptest::option::of("[^\r\n]{0,12}"),
    )
        .prop_map(|(name, lines, id, comment_before)| GenEvent {
            name,
            lines,
            id,
            comment_before,
        })
}

/// Encodes with `\n`, then rewrites every line break into the chosen style.
fn encode_stream(events: &[GenEvent], style: &str, bom: bool) -> Vec<u8> {
    let mut buf = Vec::new();
    if bom {
        buf.extend_from_slice(b"\xEF\xBB\xBF");
    }
    for e in events {
        if let Some(c) = &e.comment_before {
            buf.extend_from_slice(&encode_comment(c));
        }
        let ev = SseEvent {
            event: e.name.clone(),
            data: e.lines.join("\n"),
            id: e.id.clone(),
        };
        encode_into(&ev, &mut buf);
    }
    let mut out = Vec::with_capacity(buf.len() * 2);
    for b in buf {
        if b == b'\n' {
            out.extend_from_slice(style.as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

fn decode_in_chunks(bytes: &[u8], cuts: &[usize]) -> Vec<SseEvent> {
    let mut d = SseDecoder::new();
    let mut out = Vec::new();
    let mut start = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    for p in points {
        d.push_into(&bytes[start..p.max(start)], &mut out).unwrap();
        start = p.max(start);
    }
    d.push_into(&bytes[start..], &mut out).unwrap();
    out.extend(d.finish());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn same_events_however_split(
        events in proptest::collection::vec(gen_event(), 0..8),
        style in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
        bom in any::<bool>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..24),
    ) {
        let bytes = encode_stream(&events, style, bom);
        let expected: Vec<SseEvent> = events
            .iter()
            .map(|e| SseEvent { event: e.name.clone(), data: e.lines.join("\n"), id: e.id.clone() })
            .collect();
        let whole = decode_in_chunks(&bytes, &[]);
        prop_assert_eq!(&whole, &expected);
        let split = decode_in_chunks(&bytes, &cuts);
        prop_assert_eq!(&split, &expected);
        // Byte by byte, the worst case for a decoder that keeps state between chunks.
        let every: Vec<usize> = (0..bytes.len()).collect();
        let bytewise = decode_in_chunks(&bytes, &every);
        prop_assert_eq!(&bytewise, &expected);
    }
}
