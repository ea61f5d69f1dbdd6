//! The Shortcuts service's one error type. Every answer is a status and one sentence a
//! shortcut can speak (`text/plain`), or `{"error": sentence}` with `?format=json`.

use axum::http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Request errors.
    #[error("{0}")]
    BadRequest(String),
    #[error("That is too long: send at most {} kilobytes.", .0 / 1024)]
    TooLarge(u64),
    #[error("Send the key in the Authorization header, not in the address.")]
    KeyInAddress,
    #[error("This needs a key: add the header Authorization with Bearer and this device's key.")]
    MissingKey,
    #[error("The homelab did not accept this key.")]
    BadKey,
    #[error("The homelab has no model called {0}.")]
    UnknownModel(String),
    #[error("This device has asked too much for now; try again in a minute.")]
    RateLimited,
    #[error("The homelab is busy; try again shortly.")]
    Busy,
    #[error("The homelab did not answer in time; try again, or ask for a shorter answer.")]
    NoAnswerInTime,
    #[error("The homelab could not answer: {0}")]
    Upstream(String),
    #[error("There is nothing to summarise: send a text or a web address.")]
    NothingToSummarise,
    #[error("The page could not be read: {0}")]
    Fetch(String),
    #[error("This homelab cannot fetch web pages; send the text instead.")]
    NoFetcher,
    #[error("There is no job with that id; it may have expired.")]
    UnknownJob,
    #[error("Too many jobs are running; wait for one to finish.")]
    TooManyJobs,
    #[error("There is no such endpoint here; try ask, summarise, status or jobs.")]
    NotFound,
    #[error("That method does not work here.")]
    MethodNotAllowed,

    // Start-up errors.
    #[error("{0}")]
    Service(#[from] service_kit::Error),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_)
            | Error::KeyInAddress
            | Error::NoFetcher
            | Error::NothingToSummarise => StatusCode::BAD_REQUEST,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::MissingKey | Error::BadKey => StatusCode::UNAUTHORIZED,
            Error::UnknownModel(_) | Error::UnknownJob | Error::NotFound => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::RateLimited | Error::TooManyJobs => StatusCode::TOO_MANY_REQUESTS,
            Error::Busy | Error::NoAnswerInTime => StatusCode::SERVICE_UNAVAILABLE,
            Error::Upstream(_) | Error::Fetch(_) => StatusCode::BAD_GATEWAY,
            Error::Service(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}
