//! Choosing targets: the order to try them in ([`strategy`]), a conversation's turns back to
//! the target that holds its prefix ([`affinity`]), whether a target may be tried now
//! ([`breaker`]), and the live numbers they use ([`TargetState`]).

pub mod affinity;
pub mod breaker;
pub mod strategy;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use breaker::{Breaker, BreakerConfig, Permit};

/// What the gateway knows about one target right now. Lives across table reloads, keyed
/// by endpoint and upstream model.
#[derive(Debug)]
pub struct TargetState {
    in_flight: AtomicU64,
    /// Exponentially weighted time to first token, in microseconds; 0 = not measured yet.
    ewma_ttft_us: AtomicU64,
    breaker: Mutex<Breaker>,
}

/// Weight of the newest sample in the TTFT average.
const EWMA_ALPHA: f64 = 0.3;

impl TargetState {
    /// A target with no history.
    pub fn new(cfg: BreakerConfig) -> Self {
        TargetState {
            in_flight: AtomicU64::new(0),
            ewma_ttft_us: AtomicU64::new(0),
            breaker: Mutex::new(Breaker::new(cfg)),
        }
    }

    /// Requests in flight to this target.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The recent time to first token, if measured.
    pub fn ttft_us(&self) -> Option<u64> {
        match self.ewma_ttft_us.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v),
        }
    }

    /// Adds a time-to-first-token sample: peak-weighted, the average jumps to a slower
    /// sample at once and moves back towards faster ones by `EWMA_ALPHA` per sample, so a
    /// target that turns slow stops being preferred on its next request.
    pub fn observe_ttft(&self, us: u64) {
        let us = us.max(1);
        let _ = self
            .ewma_ttft_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 || us >= old {
                    us
                } else {
                    (EWMA_ALPHA * us as f64 + (1.0 - EWMA_ALPHA) * old as f64).max(1.0) as u64
                })
            });
    }

    /// Asks the breaker whether a request may go to this target now.
    pub fn permit(&self, now: Instant) -> Permit {
        self.breaker
            .lock()
            .map(|mut b| b.permit(now))
            .unwrap_or(Permit::Allowed)
    }

    /// Reports the outcome of a request that the breaker let through.
    pub fn report(&self, ok: bool, now: Instant) {
        if let Ok(mut b) = self.breaker.lock() {
            if ok {
                b.on_success()
            } else {
                b.on_failure(now)
            }
        }
    }

    /// The breaker state for `/metrics`: 0 closed, 1 open, 2 half-open.
    pub fn breaker_gauge(&self, now: Instant) -> i64 {
        self.breaker.lock().map(|b| b.gauge(now)).unwrap_or(0)
    }
}

/// Decrements the in-flight count on drop.
#[derive(Debug)]
pub struct InFlight(Arc<TargetState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::breaker::BreakerConfig;

    #[test]
    fn time_to_first_token_jumps_to_a_peak_and_decays() {
        let t = TargetState::new(BreakerConfig {
            failures: 3,
            cooldown: std::time::Duration::from_secs(1),
        });
        assert_eq!(t.ttft_us(), None);
        t.observe_ttft(100);
        assert_eq!(t.ttft_us(), Some(100));
        t.observe_ttft(1_000);
        assert_eq!(t.ttft_us(), Some(1_000), "a slower sample counts at once");
        t.observe_ttft(100);
        assert_eq!(t.ttft_us(), Some(730));
        for _ in 0..20 {
            t.observe_ttft(100);
        }
        assert!(t.ttft_us().is_some_and(|v| v < 110), "{:?}", t.ttft_us());
    }
}
