//! One fetch: check the URL, honour robots.txt, GET with guarded redirects, read at most
//! `max_bytes`, turn the body into text (HTML → main content → Markdown), and page it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use texting_robots::Robot;
use url::Url;

use crate::content::{self, Kind};
use crate::error::Error;
use crate::guard::{Guard, GuardedResolver, Refusal};

/// The product token robots.txt groups are matched against.
pub const ROBOTS_AGENT: &str = "homelab-llm";
/// robots.txt bodies beyond this are cut (RFC 9309 asks parsers to take at least 500 KiB).
const ROBOTS_MAX_BYTES: usize = 512 * 1024;
/// How long a site's robots.txt answer is reused.
const ROBOTS_TTL: Duration = Duration::from_secs(600);
/// How long "could not read robots.txt" is reused: short, since it may be a passing fault.
const ROBOTS_FAILURE_TTL: Duration = Duration::from_secs(30);
/// Sites whose robots.txt answer is kept at once.
const ROBOTS_CACHE_ENTRIES: usize = 512;

/// The limits of every fetch.
#[derive(Debug, Clone)]
pub struct Limits {
    pub connect_timeout: Duration,
    /// The whole fetch: connect, redirects, headers and body.
    pub timeout: Duration,
    pub max_redirects: usize,
    /// Bytes of (decoded) body read at most; the rest is not read.
    pub max_bytes: usize,
    pub respect_robots: bool,
    pub user_agent: String,
}

/// A fetch request, as the tool takes it.
#[derive(Debug, Clone)]
pub struct FetchArgs {
    pub url: String,
    pub max_length: usize,
    pub start_index: usize,
    pub raw: bool,
}

/// Largest `max_length` (as in the reference server: under 1,000,000).
pub const MAX_LENGTH: usize = 999_999;

/// What a site's robots.txt says.
#[derive(Clone)]
enum RobotsRules {
    AllowAll,
    Rules(Arc<Robot>),
    /// robots.txt could not be read in a way that means "do not crawl".
    DenyAll(String),
}

pub struct Fetcher {
    client: reqwest::Client,
    guard: Arc<Guard>,
    limits: Limits,
    /// Origin → (reuse until, rules).
    robots: Mutex<HashMap<String, (Instant, RobotsRules)>>,
}

#[derive(Debug, thiserror::Error)]
#[error("more than {0} redirects")]
struct RedirectLimit(usize);

#[derive(Debug, thiserror::Error)]
#[error("a redirect to a {0} URL; only http and https are fetched")]
struct RedirectScheme(String);

impl Fetcher {
    pub fn new(guard: Guard, limits: Limits) -> Result<Self, Error> {
        let guard = Arc::new(guard);
        let max = limits.max_redirects;
        let redirect_guard = guard.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max {
                return attempt.error(RedirectLimit(max));
            }
            let url = attempt.url();
            if !matches!(url.scheme(), "http" | "https") {
                let scheme = url.scheme().to_owned();
                return attempt.error(RedirectScheme(scheme));
            }
            match redirect_guard.check_url(url) {
                Ok(()) => attempt.follow(),
                Err(refusal) => attempt.error(refusal),
            }
        });
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver {
                guard: guard.clone(),
            }))
            // A proxy would connect on our behalf to addresses the guard never saw.
            .no_proxy()
            .redirect(policy)
            .connect_timeout(limits.connect_timeout)
            .timeout(limits.timeout)
            .user_agent(limits.user_agent.clone())
            .build()
            .map_err(|e| Error::Client(e.to_string()))?;
        Ok(Fetcher {
            client,
            guard,
            limits,
            robots: Mutex::new(HashMap::new()),
        })
    }

    /// Fetches and pages one URL; the text is what the tool answers.
    pub async fn fetch(&self, args: &FetchArgs) -> Result<String, Error> {
        if args.max_length == 0 || args.max_length > MAX_LENGTH {
            return Err(Error::BadArgument(format!(
                "max_length must be between 1 and {MAX_LENGTH} (got {})",
                args.max_length
            )));
        }
        let url = parse_url(&args.url)?;
        self.guard.check_url(&url).map_err(Error::Refused)?;
        if self.limits.respect_robots {
            self.check_robots(&url).await?;
        }
        let page = self.get(&url).await?;
        let (kind, text) = content::to_text(
            &page.content_type,
            &page.body,
            page.final_url.as_str(),
            args.raw,
        )
        .map_err(|content_type| Error::Binary {
            url: page.final_url.to_string(),
            content_type,
        })?;
        let mut header = String::new();
        if args.raw && kind == Kind::Html {
            header.push_str("Here is the raw HTML, not simplified:\n");
        }
        if page.final_url != url {
            header.push_str(&format!(
                "Contents of {} (redirected from {url}):\n",
                page.final_url
            ));
        } else {
            header.push_str(&format!("Contents of {url}:\n"));
        }
        let mut out = page_text(&text, args.start_index, args.max_length)?;
        if page.cut {
            out.push_str(&format!(
                "\n\n<error>The page is longer than {} bytes, the most this server reads; the rest was not read.</error>",
                self.limits.max_bytes
            ));
        }
        Ok(header + &out)
    }

    async fn get(&self, url: &Url) -> Result<Page, Error> {
        let resp = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| self.request_error(url, e))?;
        let final_url = resp.url().clone();
        let status = resp.status();
        if status.is_redirection() {
            // The client stops at a redirect it will not follow (a non-HTTP scheme).
            let to = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(no Location)");
            return Err(Error::InvalidUrl(format!(
                "`{to}` (a redirect from {final_url}): only http and https URLs are followed"
            )));
        }
        if !status.is_success() {
            return Err(Error::Status {
                url: final_url.to_string(),
                status: status.as_u16(),
            });
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (body, cut) = self
            .read_capped(resp, self.limits.max_bytes)
            .await
            .map_err(|e| self.request_error(&final_url, e))?;
        Ok(Page {
            final_url,
            content_type,
            body,
            cut,
        })
    }

    /// Reads at most `cap` bytes of the body; `true` if more was there.
    async fn read_capped(
        &self,
        resp: reqwest::Response,
        cap: usize,
    ) -> Result<(Vec<u8>, bool), reqwest::Error> {
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            let room = cap - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                return Ok((body, true));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, false))
    }

    fn request_error(&self, url: &Url, e: reqwest::Error) -> Error {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if let Some(r) = s.downcast_ref::<Refusal>() {
                return Error::Refused(r.clone());
            }
            if let Some(RedirectLimit(n)) = s.downcast_ref::<RedirectLimit>() {
                return Error::TooManyRedirects(*n);
            }
            if let Some(r) = s.downcast_ref::<RedirectScheme>() {
                return Error::InvalidUrl(r.to_string());
            }
            source = s.source();
        }
        if e.is_timeout() {
            return Error::Timeout {
                url: url.to_string(),
                after: self.limits.timeout,
            };
        }
        Error::Request {
            url: url.to_string(),
            message: chain(&e),
        }
    }

    async fn check_robots(&self, url: &Url) -> Result<(), Error> {
        let origin = url.origin().ascii_serialization();
        let now = Instant::now();
        let cached = self.robots.lock().ok().and_then(|m| {
            m.get(&origin)
                .filter(|(until, _)| now < *until)
                .map(|(_, r)| r.clone())
        });
        let rules = match cached {
            Some(r) => r,
            None => {
                let r = self.load_robots(&origin).await?;
                let ttl = match r {
                    RobotsRules::DenyAll(_) => ROBOTS_FAILURE_TTL,
                    _ => ROBOTS_TTL,
                };
                if let Ok(mut m) = self.robots.lock() {
                    if m.len() >= ROBOTS_CACHE_ENTRIES {
                        m.retain(|_, (until, _)| now < *until);
                        if m.len() >= ROBOTS_CACHE_ENTRIES {
                            m.clear();
                        }
                    }
                    m.insert(origin.clone(), (now + ttl, r.clone()));
                }
                r
            }
        };
        let robots_url = format!("{origin}/robots.txt");
        match rules {
            RobotsRules::AllowAll => Ok(()),
            RobotsRules::Rules(robot) if robot.allowed(url.as_str()) => Ok(()),
            RobotsRules::Rules(_) => Err(Error::RobotsDisallowed {
                url: url.to_string(),
                robots_url,
            }),
            RobotsRules::DenyAll(why) => Err(Error::RobotsUnavailable { robots_url, why }),
        }
    }

    /// Reads a site's robots.txt. Refusals by the guard are errors (the site itself is
    /// refused); other failures follow RFC 9309: 4xx means no rules, 5xx or an unreachable
    /// site means "do not crawl". 401/403 also mean "do not crawl", as in the reference server.
    async fn load_robots(&self, origin: &str) -> Result<RobotsRules, Error> {
        let robots_url = format!("{origin}/robots.txt");
        let Ok(url) = Url::parse(&robots_url) else {
            return Ok(RobotsRules::AllowAll);
        };
        let resp = match self.client.get(url.clone()).send().await {
            Ok(r) => r,
            Err(e) => {
                return match self.request_error(&url, e) {
                    refused @ Error::Refused(_) => Err(refused),
                    other => Ok(RobotsRules::DenyAll(other.to_string())),
                };
            }
        };
        let status = resp.status().as_u16();
        match status {
            401 | 403 => Ok(RobotsRules::DenyAll(format!("it answered {status}"))),
            400..=499 => Ok(RobotsRules::AllowAll),
            200..=299 => match self.read_capped(resp, ROBOTS_MAX_BYTES).await {
                Ok((body, _)) => match Robot::new(ROBOTS_AGENT, &body) {
                    Ok(robot) => Ok(RobotsRules::Rules(Arc::new(robot))),
                    // An unparsable file states no rules.
                    Err(_) => Ok(RobotsRules::AllowAll),
                },
                Err(e) => Ok(RobotsRules::DenyAll(
                    self.request_error(&url, e).to_string(),
                )),
            },
            _ => Ok(RobotsRules::DenyAll(format!("it answered {status}"))),
        }
    }
}

struct Page {
    final_url: Url,
    content_type: Option<String>,
    body: Vec<u8>,
    cut: bool,
}

fn parse_url(raw: &str) -> Result<Url, Error> {
    let url = Url::parse(raw.trim()).map_err(|e| Error::InvalidUrl(format!("`{raw}`: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::InvalidUrl(format!(
            "`{raw}`: only http and https URLs can be fetched"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::InvalidUrl(format!(
            "`{raw}`: URLs with credentials are not fetched"
        )));
    }
    Ok(url)
}

/// The `start_index..start_index+max_length` characters of `text`, with the reference
/// server's closing line when more remains.
pub fn page_text(text: &str, start_index: usize, max_length: usize) -> Result<String, Error> {
    let total = text.chars().count();
    if start_index > 0 && start_index >= total {
        return Err(Error::NoMoreContent { start_index, total });
    }
    let chunk: String = text.chars().skip(start_index).take(max_length).collect();
    let end = start_index + chunk.chars().count();
    let mut out = chunk;
    if end < total {
        out.push_str(&format!(
            "\n\n<error>Content truncated. Call the fetch tool with a start_index of {end} to get more content.</error>"
        ));
    }
    Ok(out)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_by_characters() {
        let text = "héllo wörld";
        assert_eq!(page_text(text, 0, 100).unwrap(), text);
        let first = page_text(text, 0, 5).unwrap();
        assert!(first.starts_with("héllo\n\n<error>Content truncated."));
        assert!(first.contains("start_index of 5 "));
        assert_eq!(page_text(text, 5, 100).unwrap(), " wörld");
        assert!(matches!(
            page_text(text, 11, 5),
            Err(Error::NoMoreContent { total: 11, .. })
        ));
        assert_eq!(page_text("", 0, 5).unwrap(), "");
    }

    #[test]
    fn urls_are_checked() {
        assert!(parse_url("https://example.com/a").is_ok());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "not a url",
            "http://u:p@example.com/",
        ] {
            assert!(matches!(parse_url(bad), Err(Error::InvalidUrl(_))), "{bad}");
        }
    }
}
