//! From a body and its `Content-Type` to the text a model reads: HTML reduced to its main
//! content (Mozilla Readability's rules) and written as Markdown; JSON, XML and plain text as
//! they are; anything else refused as binary.

use dom_smoothie::Readability;
use htmd::HtmlToMarkdown;

/// What a body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Html,
    Text,
    Binary,
}

/// Tags that never carry a page's text.
const NEVER_TEXT: [&str; 6] = ["script", "style", "noscript", "template", "svg", "iframe"];
/// Page furniture, dropped when the main content cannot be found and the whole page is
/// converted instead.
const FURNITURE: [&str; 6] = ["nav", "header", "footer", "aside", "form", "button"];

/// Classifies a body by its media type, sniffing only when the server sent none.
pub fn kind(content_type: Option<&str>, body: &[u8]) -> Kind {
    let Some(ct) = content_type else {
        return sniff(body);
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "" => sniff(body),
        "text/html" | "application/xhtml+xml" => Kind::Html,
        t if t.starts_with("text/") => Kind::Text,
        "application/json"
        | "application/xml"
        | "application/javascript"
        | "application/x-javascript"
        | "application/ecmascript"
        | "application/yaml"
        | "application/x-yaml"
        | "application/toml"
        | "application/x-ndjson"
        | "application/x-www-form-urlencoded"
        | "application/sql"
        | "application/graphql" => Kind::Text,
        t if t.ends_with("+json") || t.ends_with("+xml") => Kind::Text,
        _ => Kind::Binary,
    }
}

fn sniff(body: &[u8]) -> Kind {
    let head = &body[..body.len().min(512)];
    if head.contains(&0) || std::str::from_utf8(head).is_err() && std::str::from_utf8(body).is_err()
    {
        return Kind::Binary;
    }
    let start = String::from_utf8_lossy(head)
        .trim_start()
        .to_ascii_lowercase();
    if start.starts_with("<!doctype html") || start.starts_with("<html") {
        Kind::Html
    } else {
        Kind::Text
    }
}

/// Decodes by the `charset` parameter (UTF-8 when absent or unknown).
fn decode(content_type: Option<&str>, body: &[u8]) -> String {
    let encoding = content_type
        .and_then(|ct| {
            ct.split(';').skip(1).find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("charset")
                    .then(|| v.trim().trim_matches('"').to_owned())
            })
        })
        .and_then(|label| encoding_rs::Encoding::for_label(label.as_bytes()))
        .unwrap_or(encoding_rs::UTF_8);
    encoding.decode(body).0.into_owned()
}

/// The text of a body: `Err(content type)` for binary bodies.
pub fn to_text(
    content_type: &Option<String>,
    body: &[u8],
    url: &str,
    raw: bool,
) -> Result<(Kind, String), String> {
    let ct = content_type.as_deref();
    match kind(ct, body) {
        Kind::Binary => Err(ct.unwrap_or("unknown (not text)").to_owned()),
        Kind::Html if !raw => Ok((Kind::Html, html_to_markdown(&decode(ct, body), url))),
        k => Ok((k, decode(ct, body))),
    }
}

/// The main content of a page as Markdown, titled; the whole page without its furniture when
/// no main content is found.
pub fn html_to_markdown(html: &str, url: &str) -> String {
    let article = Readability::new(html, Some(url), None).and_then(|mut r| r.parse());
    if let Ok(article) = article {
        let body = converter(&NEVER_TEXT)
            .convert(&article.content)
            .unwrap_or_default();
        let body = body.trim();
        if !body.is_empty() {
            let title = article.title.trim();
            return if title.is_empty() || body.starts_with(&format!("# {title}")) {
                body.to_owned()
            } else {
                format!("# {title}\n\n{body}")
            };
        }
    }
    let tags: Vec<&str> = NEVER_TEXT.iter().chain(FURNITURE.iter()).copied().collect();
    converter(&tags)
        .convert(html)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn converter(skip: &[&str]) -> HtmlToMarkdown {
    HtmlToMarkdown::builder().skip_tags(skip.to_vec()).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind(Some("text/html; charset=utf-8"), b""), Kind::Html);
        assert_eq!(kind(Some("application/json"), b"{}"), Kind::Text);
        assert_eq!(kind(Some("application/ld+json"), b"{}"), Kind::Text);
        assert_eq!(kind(Some("text/plain"), b"x"), Kind::Text);
        assert_eq!(kind(Some("image/png"), b"\x89PNG"), Kind::Binary);
        assert_eq!(kind(Some("application/pdf"), b"%PDF"), Kind::Binary);
        assert_eq!(kind(None, b"<!DOCTYPE html><p>x"), Kind::Html);
        assert_eq!(kind(None, b"plain words"), Kind::Text);
        assert_eq!(kind(None, b"\x00\x01\x02"), Kind::Binary);
    }

    #[test]
    fn charset_is_honoured() {
        // "café" in ISO-8859-1.
        assert_eq!(
            decode(Some("text/plain; charset=iso-8859-1"), b"caf\xe9"),
            "café"
        );
        assert_eq!(decode(Some("text/plain"), "café".as_bytes()), "café");
    }
}
