//! Editing a JSON request body without re-serialising it.
//!
//! The gateway forwards the client's bytes; only the top-level `model` value is replaced,
//! defaults the client did not set are appended, and (for streams) `stream_options` gets
//! `include_usage`. [`scan`] finds each top-level member's byte span with serde_json (so
//! strings, escapes and nesting are handled by a real parser); [`rewrite`] splices.

use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// One top-level member: where its key and its value are.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The key as written, quotes included.
    pub raw_key: Range<usize>,
    /// The key decoded, only when it is written with escapes (else it is the text between
    /// the quotes, and nothing is built for it).
    escaped: Option<String>,
    pub value: Range<usize>,
}

impl Member {
    /// Whether this member's key is `key`.
    pub fn is(&self, body: &[u8], key: &str) -> bool {
        match &self.escaped {
            Some(k) => k == key,
            None => body.get(self.raw_key.start + 1..self.raw_key.end - 1) == Some(key.as_bytes()),
        }
    }
}

/// The top-level members of a JSON object, and the offset of its closing brace.
#[derive(Debug, Clone, PartialEq)]
pub struct Scanned {
    pub members: Vec<Member>,
    pub close: usize,
}

impl Scanned {
    /// The raw bytes of the value of `key`.
    pub fn get<'a>(&self, body: &'a [u8], key: &str) -> Option<&'a [u8]> {
        self.range(body, key).map(|r| &body[r])
    }

    /// Where the value of `key` is in the body.
    pub fn range(&self, body: &[u8], key: &str) -> Option<Range<usize>> {
        self.member(body, key).map(|m| m.value.clone())
    }

    fn member(&self, body: &[u8], key: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.is(body, key))
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Reads one JSON value of type `T` at `i`; returns it and the offset after it.
fn read_at<'a, T: Deserialize<'a>>(b: &'a [u8], i: usize) -> Result<(T, usize), String> {
    let mut it = serde_json::Deserializer::from_slice(&b[i..]).into_iter::<T>();
    match it.next() {
        Some(Ok(v)) => Ok((v, i + it.byte_offset())),
        Some(Err(e)) => Err(e.to_string()),
        None => Err(format!("unexpected end of the body at byte {i}")),
    }
}

/// Reads the key whose opening quote is at `i`: where it is, and its decoded text when it
/// has escapes. A key without escapes (nearly every key) is only checked, not built.
fn read_key(b: &[u8], i: usize) -> Result<(Range<usize>, Option<String>), String> {
    let inside = &b[i + 1..];
    let stop = inside
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20);
    if let Some(n) = stop
        && inside[n] == b'"'
    {
        std::str::from_utf8(&inside[..n])
            .map_err(|_| format!("invalid UTF-8 in the key at byte {i}"))?;
        return Ok((i..i + n + 2, None));
    }
    let (key, end): (String, usize) = read_at(b, i)?;
    Ok((i..end, Some(key)))
}

/// Finds the top-level members of the object in `body`. Errors describe malformed JSON.
pub fn scan(body: &[u8]) -> Result<Scanned, String> {
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return Err("the body must be a JSON object".into());
    }
    i += 1;
    let mut members = Vec::new();
    loop {
        i = skip_ws(body, i);
        match body.get(i) {
            Some(b'}') if members.is_empty() => break,
            Some(b'"') => {}
            _ => return Err(format!("expected a key at byte {i}")),
        }
        let (raw_key, escaped) = read_key(body, i)?;
        i = skip_ws(body, raw_key.end);
        if body.get(i) != Some(&b':') {
            return Err(format!("expected `:` at byte {i}"));
        }
        let start = skip_ws(body, i + 1);
        let (_, end): (&RawValue, usize) = read_at(body, start)?;
        members.push(Member {
            raw_key,
            escaped,
            value: start..end,
        });
        i = skip_ws(body, end);
        match body.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => break,
            _ => return Err(format!("expected `,` or `}}` at byte {i}")),
        }
    }
    let close = i;
    if skip_ws(body, close + 1) != body.len() {
        return Err("trailing characters after the JSON object".into());
    }
    Ok(Scanned { members, close })
}

/// What to change.
#[derive(Debug, Default)]
pub struct Edits<'a> {
    /// The new `model` value.
    pub model: Option<&'a str>,
    /// Members to add where the client did not send them.
    pub defaults: Option<&'a Map<String, Value>>,
    /// Make `stream_options.include_usage` true.
    pub include_usage: bool,
    /// Top-level members to leave out.
    pub remove: &'a [&'a str],
}

/// Applies `edits` to `body`, whose members are `scanned`.
pub fn rewrite(body: &[u8], scanned: &Scanned, edits: &Edits<'_>) -> Vec<u8> {
    let find = |k: &str| scanned.member(body, k);
    // Values replaced in place, and members appended before the closing brace.
    let mut replace: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
    let mut append: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(model) = edits.model {
        let v = serde_json::to_vec(model).unwrap_or_default();
        match find("model") {
            Some(m) => replace.push((m.value.clone(), v)),
            None => append.push(("model".into(), v)),
        }
    }
    if edits.include_usage {
        match find("stream_options") {
            Some(m) => {
                let mut opts: Map<String, Value> =
                    serde_json::from_slice(&body[m.value.clone()]).unwrap_or_default();
                opts.insert("include_usage".into(), Value::Bool(true));
                replace.push((
                    m.value.clone(),
                    serde_json::to_vec(&opts).unwrap_or_default(),
                ));
            }
            None => append.push((
                "stream_options".into(),
                br#"{"include_usage":true}"#.to_vec(),
            )),
        }
    }
    if let Some(defaults) = edits.defaults {
        for (k, v) in defaults {
            if find(k).is_none() && !append.iter().any(|(a, _)| a == k) {
                append.push((k.clone(), serde_json::to_vec(v).unwrap_or_default()));
            }
        }
    }
    replace.sort_by_key(|(r, _)| r.start);
    if scanned
        .members
        .iter()
        .any(|m| edits.remove.iter().any(|k| m.is(body, k)))
    {
        return rewrite_kept(body, scanned, replace, append, edits.remove);
    }
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut pos = 0;
    for (range, bytes) in replace {
        out.extend_from_slice(&body[pos..range.start]);
        out.extend_from_slice(&bytes);
        pos = range.end;
    }
    out.extend_from_slice(&body[pos..scanned.close]);
    let mut need_comma = !scanned.members.is_empty();
    for (k, v) in append {
        if need_comma {
            out.push(b',');
        }
        out.extend_from_slice(&serde_json::to_vec(&k).unwrap_or_default());
        out.push(b':');
        out.extend_from_slice(&v);
        need_comma = true;
    }
    out.extend_from_slice(&body[scanned.close..]);
    out
}

/// [`rewrite`] when members are left out: the object is written again member by member (each
/// kept value still byte for byte, or replaced), so no comma is left dangling.
fn rewrite_kept(
    body: &[u8],
    scanned: &Scanned,
    replace: Vec<(Range<usize>, Vec<u8>)>,
    append: Vec<(String, Vec<u8>)>,
    remove: &[&str],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    out.push(b'{');
    let mut first = true;
    let mut member = |out: &mut Vec<u8>, key: &[u8], value: &[u8]| {
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(key);
        out.push(b':');
        out.extend_from_slice(value);
    };
    for m in &scanned.members {
        if remove.iter().any(|k| m.is(body, k)) {
            continue;
        }
        let key = &body[m.raw_key.clone()];
        let value = replace
            .iter()
            .find(|(r, _)| *r == m.value)
            .map_or(&body[m.value.clone()], |(_, v)| v.as_slice());
        member(&mut out, key, value);
    }
    for (k, v) in &append {
        member(&mut out, &serde_json::to_vec(k).unwrap_or_default(), v);
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(body: &str, e: &Edits<'_>) -> String {
        let s = scan(body.as_bytes()).unwrap();
        String::from_utf8(rewrite(body.as_bytes(), &s, e)).unwrap()
    }

    #[test]
    fn only_the_model_changes_byte_for_byte() {
        let body = "{ \"messages\" : [{\"role\":\"user\",\"content\":\"a \\\"model\\\": x\"}],\n  \"model\":\"chat\" , \"x\":{\"model\":\"inner\"} }";
        let out = edit(
            body,
            &Edits {
                model: Some("qwen/2.5"),
                ..Default::default()
            },
        );
        assert_eq!(
            out,
            body.replace("\"model\":\"chat\"", "\"model\":\"qwen/2.5\"")
        );
    }

    #[test]
    fn defaults_fill_only_what_is_missing() {
        let mut d = Map::new();
        d.insert("temperature".into(), Value::from(0.2));
        d.insert("top_k".into(), Value::from(40));
        let out = edit(
            r#"{"model":"m","temperature":0.9}"#,
            &Edits {
                defaults: Some(&d),
                ..Default::default()
            },
        );
        assert_eq!(out, r#"{"model":"m","temperature":0.9,"top_k":40}"#);
    }

    #[test]
    fn include_usage_is_added_or_merged() {
        let out = edit(
            r#"{"model":"m","stream":true}"#,
            &Edits {
                include_usage: true,
                ..Default::default()
            },
        );
        assert_eq!(
            out,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
        );
        let out = edit(
            r#"{"model":"m","stream_options":{"x":1,"include_usage":false},"stream":true}"#,
            &Edits {
                include_usage: true,
                ..Default::default()
            },
        );
        assert_eq!(
            out,
            r#"{"model":"m","stream_options":{"x":1,"include_usage":true},"stream":true}"#
        );
    }

    #[test]
    fn keys_with_escapes_are_decoded_and_kept_as_written() {
        let body = r#"{"mo\u0064el":"h","tools":[],"x\"y":1}"#;
        let s = scan(body.as_bytes()).unwrap();
        assert_eq!(s.get(body.as_bytes(), "model"), Some(&b"\"h\""[..]));
        assert_eq!(s.get(body.as_bytes(), "x\"y"), Some(&b"1"[..]));
        assert_eq!(s.get(body.as_bytes(), "mo\\u0064el"), None);
        let out = edit(
            body,
            &Edits {
                model: Some("up"),
                remove: &["tools"],
                ..Default::default()
            },
        );
        assert_eq!(out, r#"{"mo\u0064el":"up","x\"y":1}"#);
        // A control character or broken UTF-8 in a key is malformed JSON.
        assert!(scan(b"{\"a\tb\":1}").is_err());
        assert!(scan(b"{\"a\xff\":1}").is_err());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for bad in [
            "",
            "[]",
            "{",
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{"a":1} x"#,
            r#"{"a" 1}"#,
        ] {
            assert!(scan(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert_eq!(scan(b" {} ").unwrap().members.len(), 0);
    }

    #[test]
    fn empty_object_gets_valid_members() {
        let out = edit(
            "{}",
            &Edits {
                model: Some("m"),
                include_usage: true,
                ..Default::default()
            },
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["model"], "m");
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn members_are_left_out_without_a_dangling_comma() {
        let body = r#"{"tools": [{"type":"function"}], "model": "h", "tool_choice":"auto", "messages": [{"role":"user","content":"a, b"}]}"#;
        let out = edit(
            body,
            &Edits {
                model: Some("up"),
                remove: &["tools", "tool_choice", "parallel_tool_calls"],
                include_usage: true,
                ..Default::default()
            },
        );
        assert_eq!(
            out,
            r#"{"model":"up","messages":[{"role":"user","content":"a, b"}],"stream_options":{"include_usage":true}}"#
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert!(v.get("tools").is_none());
        // Nothing to leave out: byte for byte as before.
        let plain = r#"{"model": "h", "messages": []}"#;
        let e = Edits {
            remove: &["tools"],
            ..Default::default()
        };
        assert_eq!(edit(plain, &e), plain);
    }
}
