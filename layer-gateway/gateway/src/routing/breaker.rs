//! A per-target circuit breaker.
//!
//! Closed: requests flow; `failures` consecutive failures open it. Open: the target is
//! skipped until the cooldown ends. Half-open: exactly one probe request goes through; its
//! success closes the breaker, its failure opens it for another cooldown. A probe that never
//! reports (its client went away) is given up after one cooldown, so the breaker cannot stick.

use std::time::{Duration, Instant};

/// Thresholds.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    pub failures: u32,
    pub cooldown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_since: Instant },
}

/// The breaker of one target.
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: State,
}

/// The breaker's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Allowed,
    /// The one probe after a cooldown.
    Probe,
    Rejected,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        Breaker {
            cfg,
            state: State::Closed { failures: 0 },
        }
    }

    pub fn permit(&mut self, now: Instant) -> Permit {
        match self.state {
            State::Closed { .. } => Permit::Allowed,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen { probe_since: now };
                Permit::Probe
            }
            State::HalfOpen { probe_since } if now >= probe_since + self.cfg.cooldown => {
                self.state = State::HalfOpen { probe_since: now };
                Permit::Probe
            }
            State::Open { .. } | State::HalfOpen { .. } => Permit::Rejected,
        }
    }

    pub fn on_success(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    pub fn on_failure(&mut self, now: Instant) {
        self.state = match self.state {
            State::Closed { failures } if failures + 1 < self.cfg.failures.max(1) => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            _ => State::Open {
                until: now + self.cfg.cooldown,
            },
        };
    }

    /// 0 closed, 1 open, 2 half-open (an open breaker past its cooldown counts as half-open).
    pub fn gauge(&self, now: Instant) -> i64 {
        match self.state {
            State::Closed { .. } => 0,
            State::Open { until } if now < until => 1,
            State::Open { .. } | State::HalfOpen { .. } => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_and_one_probe_decides() {
        let cfg = BreakerConfig {
            failures: 3,
            cooldown: Duration::from_secs(10),
        };
        let mut b = Breaker::new(cfg);
        let t0 = Instant::now();
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.permit(t0), Permit::Allowed, "two failures keep it closed");
        b.on_failure(t0);
        assert_eq!(b.permit(t0), Permit::Rejected, "the third opens it");
        assert_eq!(b.gauge(t0), 1);
        let later = t0 + Duration::from_secs(11);
        assert_eq!(
            b.permit(later),
            Permit::Probe,
            "after the cooldown one probe goes"
        );
        assert_eq!(b.permit(later), Permit::Rejected, "and only one");
        b.on_failure(later);
        assert_eq!(
            b.permit(later),
            Permit::Rejected,
            "a failed probe reopens it"
        );
        let much_later = later + Duration::from_secs(11);
        assert_eq!(b.permit(much_later), Permit::Probe);
        b.on_success();
        assert_eq!(
            b.permit(much_later),
            Permit::Allowed,
            "a good probe closes it"
        );
    }

    #[test]
    fn a_probe_that_never_reports_is_given_up() {
        let mut b = Breaker::new(BreakerConfig {
            failures: 1,
            cooldown: Duration::from_secs(5),
        });
        let t = Instant::now();
        b.on_failure(t);
        assert_eq!(b.permit(t + Duration::from_secs(5)), Permit::Probe);
        assert_eq!(b.permit(t + Duration::from_secs(6)), Permit::Rejected);
        assert_eq!(b.permit(t + Duration::from_secs(10)), Permit::Probe);
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut b = Breaker::new(BreakerConfig {
            failures: 2,
            cooldown: Duration::from_secs(1),
        });
        let t = Instant::now();
        b.on_failure(t);
        b.on_success();
        b.on_failure(t);
        assert_eq!(b.permit(t), Permit::Allowed);
    }
}
