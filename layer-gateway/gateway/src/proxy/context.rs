//! Context windows: how much prompt a request carries (estimated from its bytes, before
//! sending), and whether a backend's refusal says the prompt did not fit.
//!
//! The estimate counts the bytes of the members that become the prompt (`messages`,
//! `prompt`, `input`, `system`, `tools`, `instructions`), leaving out inline base64 data (an
//! image is a few hundred tokens, not a megabyte of them) and counting a `\uXXXX` escape as
//! the three bytes its character takes in UTF-8. The gateway divides it by
//! `--context-bytes-per-token` (deliberately generous: a target is passed over only when the
//! prompt is clearly too large; near the edge the backend's own error decides) to skip
//! targets, and by four to count tokens a backend did not report.

use std::ops::Range;
use std::sync::LazyLock;

use bytes::Bytes;
use memchr::memmem::Finder;

use crate::rewrite::Scanned;

/// The members whose bytes become prompt tokens, but the tools.
const TEXT_MEMBERS: [&str; 5] = ["messages", "prompt", "input", "system", "instructions"];

/// A request's prompt members, measured only when asked (most requests never are: their
/// backend reports usage and no target of theirs declares a window), and then once.
pub(super) struct Prompt {
    body: Bytes,
    text: [Option<Range<usize>>; TEXT_MEMBERS.len()],
    tools: Option<Range<usize>>,
    /// Prompt bytes without the tools, and of the tools.
    measured: Option<(u64, u64)>,
}

impl Prompt {
    /// Where the prompt members of a JSON body are.
    pub(super) fn of(body: &Bytes, scanned: &Scanned) -> Self {
        Prompt {
            body: body.clone(),
            text: TEXT_MEMBERS.map(|m| scanned.range(body, m)),
            tools: scanned.range(body, "tools"),
            measured: None,
        }
    }

    /// Bytes of prompt, with the tools or without them (a target sent the request without
    /// its tools does not hold them).
    pub(super) fn bytes(&mut self, with_tools: bool) -> u64 {
        let (text, tools) = *self.measured.get_or_insert_with(|| {
            let of =
                |r: &Option<Range<usize>>| r.clone().map_or(0, |r| prompt_bytes(&self.body[r]));
            (self.text.iter().map(of).sum(), of(&self.tools))
        });
        if with_tools { text + tools } else { text }
    }
}

/// About four bytes of text per token: the gateway's own count, where a backend reports none.
pub(super) const COUNTING_BYTES_PER_TOKEN: u64 = 4;

static BASE64: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b";base64,"));
static ESCAPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\\u"));

/// Prompt bytes in one member's raw JSON: inline base64 left out, `\uXXXX` as three bytes.
pub(super) fn prompt_bytes(raw: &[u8]) -> u64 {
    let mut total = 0u64;
    let mut rest = raw;
    // Cut out each `;base64,...` run up to the end of its JSON string.
    while let Some(at) = BASE64.find(rest) {
        total += text_bytes(&rest[..at]);
        let data = &rest[at..];
        let end = memchr::memchr(b'"', data).unwrap_or(data.len());
        rest = &data[end..];
    }
    total + text_bytes(rest)
}

/// Bytes with each `\uXXXX` escape counted as three.
fn text_bytes(b: &[u8]) -> u64 {
    let escapes = ESCAPE.find_iter(b).count() as u64;
    (b.len() as u64).saturating_sub(escapes * 3)
}

/// Tokens in `bytes` of prompt at `per_token` bytes each, rounded up.
pub(super) fn tokens(bytes: u64, per_token: u64) -> u64 {
    bytes.div_ceil(per_token.max(1))
}

/// What backends say when a prompt does not fit: OpenAI and our engines
/// (`context_length_exceeded`), llama-server (`exceed_context_size_error`), vLLM and others
/// ("maximum context length"), Anthropic ("prompt is too long"), Ollama and LM Studio.
const CONTEXT_MARKERS: [&str; 7] = [
    "context_length_exceeded",
    "exceed_context_size",
    "maximum context length",
    "prompt is too long",
    "exceeds the available context size",
    "context window",
    "input length exceeds the context length",
];

/// Whether an error answer (status 400 or 413) says the prompt did not fit the context.
pub(super) fn is_context_error(status: u16, body: &[u8]) -> bool {
    if !matches!(status, 400 | 413) || body.len() > 64 * 1024 {
        return false;
    }
    let lower = body.to_ascii_lowercase();
    CONTEXT_MARKERS
        .iter()
        .any(|m| memchr::memmem::find(&lower, m.as_bytes()).is_some())
}

/// The backend's own words, for the client and the log: the error's `message`, else the body
/// (both cut to 300 bytes).
pub(super) fn message_of(body: &[u8]) -> String {
    let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let msg = v
        .as_ref()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .or_else(|| v.get("error"))
        })
        .and_then(|m| m.as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let mut end = msg.len().min(300);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    msg[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_data_and_escapes_are_not_counted_as_text() {
        let text = br#"[{"role":"user","content":"hello"}]"#;
        assert_eq!(prompt_bytes(text), text.len() as u64);
        let image = format!(
            r#"[{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{}"}}}},{{"type":"text","text":"hi"}}]"#,
            "A".repeat(100_000)
        );
        let counted = prompt_bytes(image.as_bytes());
        assert!(counted < 120, "{counted}");
        // "中" escaped is six bytes of JSON, three of UTF-8.
        assert_eq!(prompt_bytes(br#""\u4e2d""#), 5);
        assert_eq!(tokens(9, 4), 3);
        assert_eq!(tokens(0, 0), 0);
    }

    #[test]
    fn a_prompt_is_measured_with_or_without_its_tools() {
        let body = Bytes::from_static(
            br#"{"model":"m","messages":[{"role":"user","content":"hello"}],"tools":[{"type":"function"}],"temperature":0}"#,
        );
        let scanned = crate::rewrite::scan(&body).unwrap();
        let mut p = Prompt::of(&body, &scanned);
        let messages = br#"[{"role":"user","content":"hello"}]"#.len() as u64;
        let tools = br#"[{"type":"function"}]"#.len() as u64;
        assert_eq!(p.bytes(false), messages);
        assert_eq!(p.bytes(true), messages + tools);
    }

    #[test]
    fn context_errors_in_each_dialect() {
        let yes: [(u16, &str); 5] = [
            (
                400,
                r#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
            ),
            (
                400,
                r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error","n_prompt_tokens":5000,"n_ctx":4096}}"#,
            ),
            (
                400,
                r#"{"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.","type":"BadRequestError","param":null,"code":400}"#,
            ),
            (
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208310 tokens > 200000 maximum"}}"#,
            ),
            (
                413,
                r#"{"error":"Input length exceeds the context length"}"#,
            ),
        ];
        for (status, body) in yes {
            assert!(is_context_error(status, body.as_bytes()), "{body}");
        }
        let no: [(u16, &str); 3] = [
            (
                400,
                r#"{"error":{"message":"messages: must be an array","type":"invalid_request_error"}}"#,
            ),
            (
                500,
                r#"{"error":{"message":"maximum context length","type":"server_error"}}"#,
            ),
            (401, r#"{"error":{"code":"context_length_exceeded"}}"#),
        ];
        for (status, body) in no {
            assert!(!is_context_error(status, body.as_bytes()), "{body}");
        }
        assert_eq!(
            message_of(yes[3].1.as_bytes()),
            "prompt is too long: 208310 tokens > 200000 maximum"
        );
        assert!(message_of(b"not json").starts_with("not json"));
    }
}
