//! The one error type of this crate. Everything but [`Error::Mcp`] and [`Error::Client`] is a
//! tool failure: the tool answers it as an `isError` result whose text is this message, so
//! the model can read what went wrong and correct itself.

use std::time::Duration;

use crate::guard::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid URL {0}")]
    InvalidUrl(String),
    #[error("{0}")]
    BadArgument(String),
    #[error("{0}")]
    Refused(Refusal),
    #[error(
        "the site's robots.txt ({robots_url}) does not allow autonomous fetching of {url}; do not retry this URL"
    )]
    RobotsDisallowed { url: String, robots_url: String },
    #[error(
        "could not read the site's robots.txt ({robots_url}): {why}; so autonomous fetching is assumed not allowed"
    )]
    RobotsUnavailable { robots_url: String, why: String },
    #[error("gave up after {0} redirects")]
    TooManyRedirects(usize),
    #[error("fetching {url} timed out after {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("fetching {url} failed: {message}")]
    Request { url: String, message: String },
    #[error("failed to fetch {url}: the server answered status {status}")]
    Status { url: String, status: u16 },
    #[error(
        "{url} is binary content ({content_type}), which this tool does not return; fetch an HTML, text or JSON URL instead"
    )]
    Binary { url: String, content_type: String },
    #[error(
        "<error>No more content available.</error> start_index {start_index} is at or past the end of the content ({total} characters)"
    )]
    NoMoreContent { start_index: usize, total: usize },

    /// The HTTP client could not be built (start-up).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error(transparent)]
    Mcp(#[from] mcp_kit::Error),
}
