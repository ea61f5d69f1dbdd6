//! `POST /v1/search` and `POST /v1/search/{tool}`: web search, in the shape LiteLLM's search
//! API uses (which follows Perplexity's).

use serde::{Deserialize, Serialize};

use crate::{Extra, OneOrMany};

/// A search request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchRequest {
    /// One query, or several (each searched; results concatenated in order).
    pub query: OneOrMany<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_results: Option<u32>,
    /// Only results from these domains (`["arxiv.org"]`); a leading `-` excludes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_domain_filter: Option<Vec<String>>,
    /// ISO 3166-1 alpha-2 country code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_per_page: Option<u32>,
    /// `day`, `week`, `month` or `year`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_range: Option<String>,
    /// A language code (`en`, `de-CH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl SearchRequest {
    /// A request for one query with default options.
    pub fn new(query: impl Into<String>) -> Self {
        SearchRequest {
            query: OneOrMany::One(query.into()),
            max_results: None,
            search_domain_filter: None,
            country: None,
            max_tokens_per_page: None,
            time_range: None,
            language: None,
            extra: Extra::new(),
        }
    }
}

/// `{"object":"search","results":[...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResponse {
    #[serde(default = "search_object")]
    pub object: String,
    pub results: Vec<SearchResult>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl SearchResponse {
    /// A response with these results.
    pub fn new(results: Vec<SearchResult>) -> Self {
        SearchResponse {
            object: search_object(),
            results,
            extra: Extra::new(),
        }
    }
}

fn search_object() -> String {
    "search".to_owned()
}

/// One result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    pub title: String,
    pub url: String,
    #[serde(default)]
    pub snippet: String,
    /// Publication date as given by the source (`2025-01-31` or a full timestamp), if known.
    #[serde(default)]
    pub date: Option<String>,
    #[serde(default)]
    pub last_updated: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// What Open WebUI's "external" web search engine posts (`WEB_SEARCH_ENGINE=external`):
/// one query and how many results it wants (`WEB_SEARCH_RESULT_COUNT`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenWebUiSearch {
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

/// One result as Open WebUI's external engine reads it; the answer is a bare JSON array of
/// these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenWebUiResult {
    pub link: String,
    pub title: String,
    pub snippet: String,
}

impl From<SearchResult> for OpenWebUiResult {
    fn from(r: SearchResult) -> Self {
        OpenWebUiResult {
            link: r.url,
            title: r.title,
            snippet: r.snippet,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn litellm_shape() {
        let r: SearchRequest = serde_json::from_str(
            r#"{"query":"rust sse","max_results":3,"search_domain_filter":["docs.rs"],"country":"US","max_tokens_per_page":1024}"#,
        )
        .unwrap();
        assert_eq!(r.query.as_slice(), ["rust sse"]);
        assert_eq!(r.max_results, Some(3));
        let out = SearchResponse::new(vec![SearchResult {
            title: "t".into(),
            url: "https://x".into(),
            snippet: "s".into(),
            date: None,
            last_updated: None,
            extra: Extra::new(),
        }]);
        let v = serde_json::to_value(&out).unwrap();
        assert_eq!(v["object"], "search");
        assert_eq!(v["results"][0]["date"], serde_json::Value::Null);
    }
}
