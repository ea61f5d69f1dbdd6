//! What a shortcut sends, in any of the three forms "Get Contents of URL" can send: a JSON
//! body, a form, or the raw text (`text/plain`, or no content type at all).

use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use serde::Deserialize;

use crate::error::Error;

/// A request to `/ask`, `/summarise` or `/jobs`, whatever form it came in.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[serde(default)]
    pub text: Option<String>,
    /// A page to summarise (`/summarise`).
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub system: Option<String>,
    /// The conversation to continue (also `X-Conversation-Id`).
    #[serde(default)]
    pub conversation: Option<String>,
    #[serde(default, deserialize_with = "number_or_text")]
    pub max_words: Option<usize>,
    /// `/jobs`: `ask` (default) or `summarise`.
    #[serde(default)]
    pub task: Option<String>,
}

/// Shortcuts sends numbers from a text field as strings: take both.
fn number_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Num(usize),
        Text(String),
    }
    match Option::<N>::deserialize(d)? {
        None => Ok(None),
        Some(N::Num(n)) => Ok(Some(n)),
        Some(N::Text(t)) if t.trim().is_empty() => Ok(None),
        Some(N::Text(t)) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("max_words is not a number: {t}"))),
    }
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Reads the body in the form its content type says.
pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Input, Error> {
    let text = std::str::from_utf8(body)
        .map_err(|_| Error::BadRequest("The text is not valid UTF-8.".into()))?;
    match media_type(headers).as_str() {
        "application/json" => serde_json::from_str(text).map_err(|e| {
            Error::BadRequest(format!(
                "The JSON could not be read: {}.",
                e.to_string().trim_end_matches('.')
            ))
        }),
        // `curl -d 'What is…'` sends a bare text with this type: it is the text.
        "application/x-www-form-urlencoded" if !text.contains('=') => Ok(Input {
            text: Some(text.to_owned()),
            ..Input::default()
        }),
        "application/x-www-form-urlencoded" => {
            let mut input = Input::default();
            for (k, v) in url::form_urlencoded::parse(body) {
                let v = v.into_owned();
                match k.as_ref() {
                    "text" => input.text = Some(v),
                    "url" => input.url = Some(v),
                    "model" => input.model = Some(v),
                    "system" => input.system = Some(v),
                    "conversation" => input.conversation = Some(v),
                    "task" => input.task = Some(v),
                    "max_words" if !v.trim().is_empty() => {
                        input.max_words = Some(v.trim().parse().map_err(|_| {
                            Error::BadRequest(format!("max_words is not a number: {v}."))
                        })?);
                    }
                    _ => {}
                }
            }
            Ok(input)
        }
        "multipart/form-data" => Err(Error::BadRequest(
            "Send the text as JSON, as a form, or as the raw body, not as a file upload.".into(),
        )),
        // text/plain, or no type: the body is the text.
        _ => Ok(Input {
            text: Some(text.to_owned()),
            ..Input::default()
        }),
    }
}

/// The text, trimmed, or a sentence saying it is missing.
pub fn required_text(input: &Input) -> Result<String, Error> {
    match input.text.as_deref().map(str::trim) {
        Some(t) if !t.is_empty() => Ok(t.to_owned()),
        _ => Err(Error::BadRequest(
            "There is no text to ask about: send it as text, in a form field named text, or in JSON.".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_type(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, t.parse().unwrap());
        h
    }

    #[test]
    fn each_form_gives_the_text() {
        let j = parse(
            &with_type("application/json; charset=utf-8"),
            br#"{"text":"Hi","max_words":"40","conversation":"c1"}"#,
        )
        .unwrap();
        assert_eq!(j.text.as_deref(), Some("Hi"));
        assert_eq!(j.max_words, Some(40));
        assert_eq!(j.conversation.as_deref(), Some("c1"));
        let f = parse(
            &with_type("application/x-www-form-urlencoded"),
            b"text=Wie+sp%C3%A4t+ist+es%3F&max_words=",
        )
        .unwrap();
        assert_eq!(f.text.as_deref(), Some("Wie spät ist es?"));
        assert_eq!(f.max_words, None);
        let bare = parse(
            &with_type("application/x-www-form-urlencoded"),
            b"What is the capital of France?",
        )
        .unwrap();
        assert_eq!(bare.text.as_deref(), Some("What is the capital of France?"));
        let p = parse(&HeaderMap::new(), "Quelle heure est-il ?".as_bytes()).unwrap();
        assert_eq!(p.text.as_deref(), Some("Quelle heure est-il ?"));
        assert!(parse(&with_type("application/json"), b"{\"txt\":1}").is_err());
        assert!(parse(&with_type("application/json"), b"{\"max_words\":\"ten\"}").is_err());
        assert!(parse(&with_type("text/plain"), &[0xff, 0xfe]).is_err());
    }
}
