//! `infer: true`: facts worth remembering, pulled out of a conversation by a model behind
//! the gateway (mem0's extraction step), each then stored like a text given as is.

use serde_json::{Value, json};

use crate::error::Error;
use crate::upstream::Upstreams;

const SYSTEM: &str = "You read a conversation and write down the facts about the user that are \
worth remembering in later conversations: who they are, what they like or dislike, their plans, \
their people, pets, places, devices and habits. Each fact is one short sentence that stands on \
its own (\"Lives in Lyon.\", \"Prefers tea to coffee.\"). Leave out greetings, questions, what the \
assistant said, and anything not about the user. Answer with JSON only, in this form: \
{\"facts\": [\"...\", \"...\"]}. With nothing worth remembering, answer {\"facts\": []}.";

/// The facts in `conversation` (`role: content` lines), as the model wrote them.
pub async fn facts(up: &Upstreams, conversation: &str) -> Result<Vec<String>, Error> {
    let reply = up
        .chat(json!([
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": format!("Conversation:\n{conversation}")},
        ]))
        .await?;
    parse(&reply).ok_or_else(|| {
        let head: String = reply.chars().take(200).collect();
        Error::gateway(format!(
            "the extraction model answered no list of facts (nothing was stored): {head}"
        ))
    })
}

/// Reads `{"facts": [...]}` (or mem0's `{"memory": [{"text": ...}]}`), in a code fence or
/// amid other text; else a bulleted list. `None` when the reply holds neither.
pub fn parse(reply: &str) -> Option<Vec<String>> {
    let from_json = |v: &Value| -> Option<Vec<String>> {
        let list = v.get("facts").or_else(|| v.get("memory"))?.as_array()?;
        Some(
            list.iter()
                .filter_map(|f| f.as_str().or_else(|| f.get("text").and_then(Value::as_str)))
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    };
    if let (Some(a), Some(b)) = (reply.find('{'), reply.rfind('}'))
        && a < b
        && let Ok(v) = serde_json::from_str::<Value>(&reply[a..=b])
        && let Some(f) = from_json(&v)
    {
        return Some(f);
    }
    let bullets: Vec<String> = reply
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("- ").or_else(|| l.strip_prefix("* ")))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    (!bullets.is_empty()).then_some(bullets)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn replies_in_the_forms_models_write() {
        assert_eq!(
            parse("{\"facts\": [\"Lives in Lyon.\", \" \"]}"),
            Some(vec!["Lives in Lyon.".to_owned()])
        );
        assert_eq!(
            parse("Sure!\n```json\n{\"memory\": [{\"text\": \"Has a cat.\"}]}\n```"),
            Some(vec!["Has a cat.".to_owned()])
        );
        assert_eq!(
            parse("Facts:\n- Likes tea.\n- Runs on Sundays."),
            Some(vec!["Likes tea.".to_owned(), "Runs on Sundays.".to_owned()])
        );
        assert_eq!(parse("{\"facts\": []}"), Some(vec![]));
        assert_eq!(parse("I cannot help with that."), None);
    }
}
