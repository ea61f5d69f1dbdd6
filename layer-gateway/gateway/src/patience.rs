//! Waiting for a backend that is alive but has not answered yet, instead of treating it as
//! dead: a model that is still loading (llama-server's 503 "Loading model", which our engines
//! answer too), and a request that waits in an engine's queue or is being generated.
//!
//! When a target's first-byte timeout expires, the gateway asks the backend where the
//! request is (`GET {base_url}/queue/{request_id}`, which our engines answer): while it
//! waits in the queue, or generates and makes progress, the first-byte timeout starts over
//! (up to the total timeout). A backend that does not answer the question, or stopped making
//! progress, is given up on, as before; one that has a queue but does not know the request
//! gets one more period (the request may still be on its way in, its prompt being read)
//! and is given up on if it still does not know it then. The decisions are pure
//! functions ([`verdict`], [`loading_retry`]); [`Watch`] does the asking.

use std::future::Future;
use std::time::{Duration, Instant};

use contract::engine::{QueueState, RequestState};

use crate::state::AppState;
use crate::table::Target;

/// How often a loading backend is asked again.
pub const LOADING_POLL: Duration = Duration::from_millis(250);

/// The longest the gateway waits for the backend to answer a question about its queue.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// What to do when the first-byte timeout expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The backend is working on it: wait another first-byte period.
    Extend,
    /// Give up on this attempt.
    GiveUp,
}

/// What the backend said when asked about a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Heard {
    /// Where the request is.
    State(RequestState),
    /// It has a queue (it answered `GET /queue`) but does not know the request.
    Unknown,
    /// Nothing usable: not one of ours, or not answering.
    Nothing,
}

/// Decides from what the backend said, how many tokens it had generated at the last look,
/// and whether an unknown request was already given its one more period.
pub fn verdict(heard: &Heard, last_tokens: Option<u64>, graced: bool) -> Verdict {
    match heard {
        Heard::State(RequestState::Waiting { .. }) => Verdict::Extend,
        Heard::State(RequestState::Generating { tokens, .. })
            if last_tokens.is_none_or(|t| *tokens > t) =>
        {
            Verdict::Extend
        }
        Heard::Unknown if !graced => Verdict::Extend,
        _ => Verdict::GiveUp,
    }
}

/// A loading backend: how long to wait before asking again, or `None` once `limit` (counted
/// from the request's start) or the request's `deadline` would pass.
pub fn loading_retry(
    started: Instant,
    now: Instant,
    limit: Duration,
    deadline: Instant,
) -> Option<Duration> {
    let next = now + LOADING_POLL;
    (next <= started + limit && next <= deadline).then_some(LOADING_POLL)
}

/// Why a watched wait ended without the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct GaveUp {
    pub reason: String,
    /// The backend said the request was still waiting in its queue.
    pub was_queued: bool,
}

/// Watches one attempt's wait for its first byte.
pub struct Watch<'a> {
    state: &'a AppState,
    target: &'a Target,
    request_id: &'a str,
    first_deadline: Instant,
    deadline: Instant,
    last_tokens: Option<u64>,
    last: Option<RequestState>,
    graced: bool,
}

impl<'a> Watch<'a> {
    /// Starts the first-byte clock now.
    pub fn new(
        state: &'a AppState,
        target: &'a Target,
        request_id: &'a str,
        started: Instant,
    ) -> Self {
        Watch {
            state,
            target,
            request_id,
            first_deadline: Instant::now() + target.timeouts.first_byte,
            deadline: started + target.timeouts.total,
            last_tokens: None,
            last: None,
            graced: false,
        }
    }

    /// Awaits `fut` while the backend is working on the request.
    pub async fn wait<F: Future>(&mut self, fut: F) -> Result<F::Output, GaveUp> {
        tokio::pin!(fut);
        loop {
            let until = self.first_deadline.min(self.deadline);
            tokio::select! {
                out = &mut fut => return Ok(out),
                () = tokio::time::sleep_until(until.into()) => {}
            }
            if Instant::now() >= self.deadline {
                return Err(self.gave_up("the total timeout was reached"));
            }
            let heard = match ask_request(self.state, self.target, self.request_id).await {
                Some(s) => Heard::State(s),
                None if ask_queue(self.state, self.target).await.is_some() => Heard::Unknown,
                None => Heard::Nothing,
            };
            if verdict(&heard, self.last_tokens, self.graced) == Verdict::GiveUp {
                if let Heard::State(s) = heard {
                    self.last = Some(s);
                }
                return Err(self.gave_up("no answer before the first-byte timeout"));
            }
            tracing::debug!(request_id = %self.request_id, target = %self.target.key, ?heard, "still at work on the request; waiting longer");
            match heard {
                Heard::State(s) => {
                    if let RequestState::Generating { tokens, .. } = &s {
                        self.last_tokens = Some(*tokens);
                    }
                    self.last = Some(s);
                }
                _ => self.graced = true,
            }
            self.first_deadline = Instant::now() + self.target.timeouts.first_byte;
        }
    }

    fn gave_up(&self, why: &str) -> GaveUp {
        let was_queued = matches!(self.last, Some(RequestState::Waiting { .. }));
        let reason = match &self.last {
            Some(s) => format!("{why} (last seen: {s:?})"),
            None => why.to_owned(),
        };
        GaveUp { reason, was_queued }
    }
}

fn url(target: &Target, path: &str) -> String {
    format!("{}/{path}", target.base_url)
}

async fn get_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    target: &Target,
    url: String,
) -> Option<T> {
    let mut req = state
        .client(target.timeouts.connect)
        .get(url)
        .timeout(ASK_TIMEOUT);
    if let Some(auth) = &target.auth {
        req = req.header(axum::http::header::AUTHORIZATION, auth.clone());
    }
    let res = req.send().await.ok()?;
    if !res.status().is_success() {
        return None;
    }
    res.json().await.ok()
}

/// Where the backend says the request is, if it says.
pub async fn ask_request(
    state: &AppState,
    target: &Target,
    request_id: &str,
) -> Option<RequestState> {
    let id: String = url::form_urlencoded::byte_serialize(request_id.as_bytes()).collect();
    get_json(state, target, url(target, &format!("queue/{id}"))).await
}

/// The backend's queue, if it reports one.
pub async fn ask_queue(state: &AppState, target: &Target) -> Option<QueueState> {
    get_json(state, target, url(target, "queue")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting() -> RequestState {
        RequestState::Waiting {
            priority: 10,
            ahead: 2,
            parked: false,
            waited_ms: 100,
        }
    }

    fn generating(tokens: u64) -> RequestState {
        RequestState::Generating {
            priority: 0,
            tokens,
            since_ms: 10,
        }
    }

    #[test]
    fn queued_or_progressing_requests_get_more_time() {
        let s = |r| Heard::State(r);
        assert_eq!(verdict(&s(waiting()), None, false), Verdict::Extend);
        assert_eq!(verdict(&s(waiting()), Some(7), true), Verdict::Extend);
        assert_eq!(verdict(&s(generating(3)), None, false), Verdict::Extend);
        assert_eq!(verdict(&s(generating(9)), Some(3), false), Verdict::Extend);
    }

    #[test]
    fn silence_or_no_progress_gives_up() {
        assert_eq!(verdict(&Heard::Nothing, None, false), Verdict::GiveUp);
        assert_eq!(
            verdict(&Heard::State(generating(3)), Some(3), false),
            Verdict::GiveUp
        );
    }

    #[test]
    fn an_unknown_request_gets_one_more_period() {
        assert_eq!(verdict(&Heard::Unknown, None, false), Verdict::Extend);
        assert_eq!(verdict(&Heard::Unknown, None, true), Verdict::GiveUp);
    }

    #[test]
    fn loading_is_waited_for_within_both_limits() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(10);
        let far = t0 + Duration::from_secs(600);
        assert_eq!(loading_retry(t0, t0, limit, far), Some(LOADING_POLL));
        assert_eq!(
            loading_retry(t0, t0 + Duration::from_secs(10), limit, far),
            None,
            "the loading wait is over"
        );
        assert_eq!(
            loading_retry(t0, t0, limit, t0 + Duration::from_millis(100)),
            None,
            "the request's own deadline comes first"
        );
    }
}
