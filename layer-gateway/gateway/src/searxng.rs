//! The SearXNG client behind `/v1/search`: SearXNG's JSON format, page by page (about 20
//! results a page whatever is asked), domain filters as `site:` terms and enforced on the
//! results too (not every engine honours them).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use contract::search::{SearchRequest, SearchResult};
use serde::Deserialize;

use crate::table::SearchTool;

/// SearXNG pages fetched per query at most.
const MAX_PAGES: u32 = 6;

#[derive(Deserialize)]
struct SxPage {
    #[serde(default)]
    results: Vec<SxResult>,
}

#[derive(Deserialize)]
struct SxResult {
    #[serde(default)]
    url: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default, rename = "publishedDate")]
    published: Option<String>,
}

/// `site:` terms from a domain filter: includes joined with OR, excludes negated.
pub fn query_with_domains(q: &str, domains: &[String]) -> String {
    let (exclude, include): (Vec<&String>, Vec<&String>) =
        domains.iter().partition(|d| d.starts_with('-'));
    let mut out = q.trim().to_owned();
    match include.len() {
        0 => {}
        1 => out.push_str(&format!(" site:{}", include[0])),
        _ => {
            let terms: Vec<String> = include.iter().map(|d| format!("site:{d}")).collect();
            out.push_str(&format!(" ({})", terms.join(" OR ")));
        }
    }
    for d in exclude {
        out.push_str(&format!(" -site:{}", d.trim_start_matches('-')));
    }
    out
}

fn domain_ok(url: &str, domains: &[String]) -> bool {
    let Some(host) = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
    else {
        return false;
    };
    let matches = |d: &str| {
        let d = d.to_ascii_lowercase();
        host == d || host.ends_with(&format!(".{d}"))
    };
    let includes: Vec<&String> = domains.iter().filter(|d| !d.starts_with('-')).collect();
    (includes.is_empty() || includes.iter().any(|d| matches(d)))
        && !domains
            .iter()
            .filter_map(|d| d.strip_prefix('-'))
            .any(matches)
}

/// Up to `max` results for `q` from the SearXNG instance `tool`, fetching further pages
/// while more are wanted, all within `timeout`; the error says what SearXNG did.
pub async fn search(
    client: &reqwest::Client,
    tool: &SearchTool,
    q: &str,
    sr: &SearchRequest,
    max: usize,
    timeout: Duration,
) -> Result<Vec<SearchResult>, String> {
    let domains = sr.search_domain_filter.clone().unwrap_or_default();
    let query = query_with_domains(q, &domains);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + timeout;
    for page in 1..=MAX_PAGES {
        let mut params: Vec<(&str, String)> = vec![
            ("q", query.clone()),
            ("format", "json".into()),
            ("pageno", page.to_string()),
        ];
        if let Some(l) = &sr.language {
            params.push(("language", l.clone()));
        }
        if let Some(t) = &sr.time_range {
            params.push(("time_range", t.clone()));
        }
        let mut req = client
            .get(format!("{}/search", tool.base_url))
            .query(&params);
        if let Some(a) = &tool.auth {
            req = req.header(axum::http::header::AUTHORIZATION, a.clone());
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let res = tokio::time::timeout(left, req.send())
            .await
            .map_err(|_| "SearXNG did not answer in time".to_owned())?
            .map_err(|e| format!("SearXNG request failed: {e}"))?;
        if !res.status().is_success() {
            return Err(format!(
                "SearXNG answered {} (is the JSON format enabled in its settings.yml?)",
                res.status()
            ));
        }
        let page_data: SxPage = tokio::time::timeout(left, res.json())
            .await
            .map_err(|_| "SearXNG did not answer in time".to_owned())?
            .map_err(|e| format!("SearXNG sent something that is not its JSON format: {e}"))?;
        let got = page_data.results.len();
        for r in page_data.results {
            if r.url.is_empty() || !domain_ok(&r.url, &domains) || !seen.insert(r.url.clone()) {
                continue;
            }
            out.push(SearchResult {
                title: r.title,
                url: r.url,
                snippet: r.content.unwrap_or_default(),
                date: r.published.filter(|d| !d.is_empty()),
                last_updated: None,
                extra: Default::default(),
            });
            if out.len() >= max {
                return Ok(out);
            }
        }
        if got == 0 {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_terms() {
        assert_eq!(query_with_domains("rust", &[]), "rust");
        assert_eq!(
            query_with_domains("rust", &["docs.rs".into()]),
            "rust site:docs.rs"
        );
        assert_eq!(
            query_with_domains("rust", &["a.org".into(), "b.org".into(), "-c.org".into()]),
            "rust (site:a.org OR site:b.org) -site:c.org"
        );
    }

    #[test]
    fn domain_filtering() {
        let d = vec!["example.org".to_owned(), "-bad.example.org".to_owned()];
        assert!(domain_ok("https://example.org/x", &d));
        assert!(domain_ok("https://www.example.org/x", &d));
        assert!(!domain_ok("https://bad.example.org/x", &d));
        assert!(!domain_ok("https://notexample.org/x", &d));
        assert!(domain_ok("https://anything.net/", &[]));
    }
}
