//! Which requests a person is waiting for: the priority the gateway passes to the backend in
//! the `x-homelab-priority` header, so that a local engine serves chats before background
//! work.
//!
//! A client may say so itself (the header, checked here). Otherwise Open WebUI's background
//! tasks are recognised by their prompts: each is one user message that starts with
//! `### Task:` (title, tags, follow-up suggestions, image prompts) or asks for an emoji.
//! Query generation (web search, RAG) and autocompletion are tasks too, but the chat answer
//! or the typing person waits for them: they go as interactive. A handle can also carry a
//! priority for every request (a `priority` in its targets' `params`, vLLM's body field).

use axum::http::{HeaderMap, HeaderValue};
use contract::engine::PRIORITY_HEADER;
use serde::Deserialize;

/// The priority to send, as the header's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Priority {
    Interactive,
    Background,
    /// An integer a client sent (lower runs first).
    Level(i32),
}

impl Priority {
    pub fn header_value(&self) -> HeaderValue {
        match self {
            Priority::Interactive => HeaderValue::from_static("interactive"),
            Priority::Background => HeaderValue::from_static("background"),
            Priority::Level(n) => HeaderValue::from(*n),
        }
    }
}

/// The client's own priority header, if it sent one; an error names what is wrong with it.
pub fn from_header(headers: &HeaderMap) -> Result<Option<Priority>, String> {
    let Some(v) = headers.get(PRIORITY_HEADER) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or_default().trim();
    match text {
        "interactive" => Ok(Some(Priority::Interactive)),
        "background" => Ok(Some(Priority::Background)),
        n => n.parse().map(|n| Some(Priority::Level(n))).map_err(|_| {
            format!("the {PRIORITY_HEADER} header must be `interactive`, `background` or an integer, not `{text}`")
        }),
    }
}

/// Prompt openings of Open WebUI's tasks.
const TASK: &[u8] = b"### Task:";
const EMOJI_TASK: &[u8] = b"Your task is to reflect the speaker's likely facial expression";

/// What an Open WebUI task prompt is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenWebUiTask {
    /// Title, tags, follow-ups, emoji, image prompt: nobody waits.
    Background,
    /// Search queries or autocompletion: the chat answer or the typist waits.
    OnTheCriticalPath,
}

/// Recognises an Open WebUI task from the raw `messages` array of a chat request. Cheap for
/// other requests: one substring search, and a parse only when it hits.
pub fn open_webui_task(messages: &[u8]) -> Option<OpenWebUiTask> {
    let finder = |needle: &[u8]| memchr::memmem::find(messages, needle).is_some();
    if !finder(TASK) && !finder(EMOJI_TASK) {
        return None;
    }
    #[derive(Deserialize)]
    struct Message {
        role: String,
        #[serde(default)]
        content: Option<serde_json::Value>,
    }
    let messages: Vec<Message> = serde_json::from_slice(messages).ok()?;
    let last = messages.last().filter(|m| m.role == "user")?;
    let text = last.content.as_ref()?.as_str()?.trim_start();
    if text.starts_with("### Task:") {
        let head: String = text.chars().take(400).collect::<String>().to_lowercase();
        if head.contains("search queries") || head.contains("autocompletion") {
            return Some(OpenWebUiTask::OnTheCriticalPath);
        }
        return Some(OpenWebUiTask::Background);
    }
    text.starts_with(std::str::from_utf8(EMOJI_TASK).unwrap_or_default())
        .then_some(OpenWebUiTask::Background)
}

/// The priority to pass on: the client's header; else background for a recognised
/// background task, and interactive for a task someone waits for (even on a handle whose
/// `params` say background: Open WebUI sends every task to its task model); else none (the
/// backend's default, or the handle's `priority` parameter).
pub fn choose(client: Option<Priority>, messages: Option<&[u8]>) -> Option<Priority> {
    client.or_else(|| match messages.and_then(open_webui_task)? {
        OpenWebUiTask::Background => Some(Priority::Background),
        OpenWebUiTask::OnTheCriticalPath => Some(Priority::Interactive),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_tasks() -> Vec<(String, Option<OpenWebUiTask>)> {
        testkit::openwebui::records()
            .into_iter()
            .filter_map(|v| {
                let messages = v["body"].get("messages")?.as_array()?.clone();
                let first = messages.last()?["content"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(40)
                    .collect();
                let raw = serde_json::to_vec(&messages).unwrap();
                Some((first, open_webui_task(&raw)))
            })
            .collect()
    }

    #[test]
    fn open_webui_background_tasks_are_recognised_and_chats_are_not() {
        let all = fixture_tasks();
        let mut background = 0;
        for (start, class) in &all {
            if start.starts_with("### Task:") {
                assert_eq!(*class, Some(OpenWebUiTask::Background), "{start}");
                background += 1;
            } else {
                assert_eq!(*class, None, "{start}");
            }
        }
        assert!(background >= 9, "titles, tags and follow-ups: {background}");
        assert!(all.len() - background >= 6, "chats");
    }

    #[test]
    fn query_generation_and_autocomplete_stay_interactive() {
        let msg = |text: &str| {
            serde_json::to_vec(&serde_json::json!([{"role": "user", "content": text}])).unwrap()
        };
        assert_eq!(
            open_webui_task(&msg(
                "### Task:\nAnalyze the chat history to determine the necessity of generating search queries, in the given language."
            )),
            Some(OpenWebUiTask::OnTheCriticalPath)
        );
        assert_eq!(
            open_webui_task(&msg(
                "### Task:\nYou are an autocompletion system. Continue the text"
            )),
            Some(OpenWebUiTask::OnTheCriticalPath)
        );
        assert_eq!(
            open_webui_task(&msg(
                "Your task is to reflect the speaker's likely facial expression through a fitting emoji"
            )),
            Some(OpenWebUiTask::Background)
        );
        // A person quoting a task in the middle of a chat is still a person.
        let quoted = serde_json::to_vec(&serde_json::json!([
            {"role": "user", "content": "### Task:\nGenerate a concise title"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "why did you say that?"}
        ]))
        .unwrap();
        assert_eq!(open_webui_task(&quoted), None);
    }

    #[test]
    fn the_client_header_wins_and_is_checked() {
        let mut h = HeaderMap::new();
        assert_eq!(from_header(&h), Ok(None));
        h.insert(PRIORITY_HEADER, HeaderValue::from_static("interactive"));
        let client = from_header(&h).unwrap();
        let task = serde_json::to_vec(
            &serde_json::json!([{"role": "user", "content": "### Task:\nGenerate 1-3 broad tags"}]),
        )
        .unwrap();
        assert_eq!(choose(client, Some(&task)), Some(Priority::Interactive));
        assert_eq!(choose(None, Some(&task)), Some(Priority::Background));
        h.insert(PRIORITY_HEADER, HeaderValue::from_static("-3"));
        assert_eq!(from_header(&h), Ok(Some(Priority::Level(-3))));
        h.insert(PRIORITY_HEADER, HeaderValue::from_static("soon"));
        assert!(from_header(&h).unwrap_err().contains("`soon`"));
    }
}
