//! What follows a failed attempt: a pure function of the failure and where the request is,
//! so the retry and fallback rules read as a table (and are tested as one).

use std::time::Duration;

/// What a failed attempt was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Failure {
    /// Worth trying the same target again (a connection error before anything was sent).
    pub retry_same: bool,
    /// The backend is loading its model.
    pub loading: bool,
}

/// Where the request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Standing {
    /// The loading wait (`--loading-wait`, within the request's deadline) has time left.
    pub loading_may_wait: bool,
    /// Retries already spent on this target.
    pub retries_done: u32,
    /// Retries allowed per target (`--retries`).
    pub retries: u32,
    /// The target's breaker let this attempt through as its one probe.
    pub probe: bool,
}

/// The next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Starting, not failing: wait and ask again (no breaker report, no attempt counted).
    WaitForLoading,
    /// Try the same target again after this back-off.
    RetrySame(Duration),
    /// Leave this target for the next one of the handle, if any.
    Fallback,
}

/// The back-off before retry `n` (0-based) on the same target: 50 ms, doubling, at most
/// 800 ms.
pub(super) fn backoff(n: u32) -> Duration {
    Duration::from_millis(50 << n.min(4))
}

pub(super) fn after_failure(f: Failure, s: Standing) -> Next {
    if f.loading && s.loading_may_wait {
        return Next::WaitForLoading;
    }
    // A probe decides the breaker: one answer, no retries.
    if f.retry_same && s.retries_done < s.retries && !s.probe {
        return Next::RetrySame(backoff(s.retries_done));
    }
    Next::Fallback
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        let f = |retry_same, loading| Failure {
            retry_same,
            loading,
        };
        let s = |loading_may_wait, retries_done, retries, probe| Standing {
            loading_may_wait,
            retries_done,
            retries,
            probe,
        };
        use Next::*;
        let rows = [
            // failure          standing                      next
            (f(false, true), s(true, 0, 1, false), WaitForLoading),
            (f(true, true), s(true, 1, 1, true), WaitForLoading),
            // Loading, but the wait is over: an ordinary failure.
            (f(false, true), s(false, 0, 1, false), Fallback),
            (f(true, true), s(false, 0, 1, false), RetrySame(backoff(0))),
            (
                f(true, false),
                s(false, 0, 1, false),
                RetrySame(Duration::from_millis(50)),
            ),
            (
                f(true, false),
                s(false, 1, 3, false),
                RetrySame(Duration::from_millis(100)),
            ),
            (f(true, false), s(false, 1, 1, false), Fallback),
            (f(true, false), s(false, 0, 0, false), Fallback),
            (f(true, false), s(false, 0, 1, true), Fallback),
            (f(false, false), s(true, 0, 5, false), Fallback),
        ];
        for (failure, standing, next) in rows {
            assert_eq!(
                after_failure(failure, standing),
                next,
                "{failure:?} {standing:?}"
            );
        }
        assert_eq!(backoff(10), Duration::from_millis(800));
    }
}
