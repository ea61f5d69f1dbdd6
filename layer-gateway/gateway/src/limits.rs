//! Requests-per-minute and tokens-per-minute limits, and token budgets.
//!
//! Each limited subject (a key, or a target with its own backend limits) has a sliding
//! window of sixty one-second buckets. A request is refused when the last minute already
//! holds the limit; tokens are added when the answer's usage is known, so TPM limits what
//! the *next* request may do. `Retry-After` is the time until the oldest counted second
//! leaves the window.

use std::collections::HashMap;
use std::sync::Mutex;

const SLOTS: usize = 60;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    second: i64,
    requests: u64,
    tokens: u64,
}

/// One subject's last minute.
#[derive(Debug, Clone, Default)]
pub struct Window {
    slots: Vec<Slot>,
}

impl Window {
    fn slot(&mut self, now_s: i64) -> &mut Slot {
        if self.slots.is_empty() {
            self.slots = vec![Slot::default(); SLOTS];
        }
        let s = &mut self.slots[now_s.rem_euclid(SLOTS as i64) as usize];
        if s.second != now_s {
            *s = Slot {
                second: now_s,
                requests: 0,
                tokens: 0,
            };
        }
        s
    }

    /// Requests and tokens in the 60 seconds up to `now_s`.
    pub fn totals(&self, now_s: i64) -> (u64, u64) {
        self.live(now_s)
            .fold((0, 0), |(r, t), s| (r + s.requests, t + s.tokens))
    }

    fn live(&self, now_s: i64) -> impl Iterator<Item = &Slot> {
        self.slots
            .iter()
            .filter(move |s| s.second > now_s - SLOTS as i64 && s.second <= now_s)
    }

    /// Seconds until the oldest second with traffic leaves the window (at least 1).
    pub fn retry_after(&self, now_s: i64) -> u64 {
        let oldest = self
            .live(now_s)
            .filter(|s| s.requests > 0 || s.tokens > 0)
            .map(|s| s.second)
            .min()
            .unwrap_or(now_s);
        (oldest + SLOTS as i64 - now_s).max(1) as u64
    }

    pub fn add(&mut self, now_s: i64, requests: u64, tokens: u64) {
        let s = self.slot(now_s);
        s.requests += requests;
        s.tokens += tokens;
    }
}

/// Why a request may not go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Rpm { limit: i64, retry_after_s: u64 },
    Tpm { limit: i64, retry_after_s: u64 },
}

/// Windows for many subjects.
#[derive(Debug, Default)]
pub struct Limiter {
    windows: Mutex<HashMap<String, Window>>,
}

impl Limiter {
    /// Checks `subject` against its limits and, if allowed, counts one request.
    pub fn admit(
        &self,
        subject: &str,
        rpm: Option<i64>,
        tpm: Option<i64>,
        now_s: i64,
    ) -> Result<(), Refusal> {
        if rpm.is_none() && tpm.is_none() {
            return Ok(());
        }
        let Ok(mut map) = self.windows.lock() else {
            return Ok(());
        };
        let w = map.entry(subject.to_owned()).or_default();
        let (requests, tokens) = w.totals(now_s);
        if let Some(limit) = rpm
            && requests >= limit.max(0) as u64
        {
            return Err(Refusal::Rpm {
                limit,
                retry_after_s: w.retry_after(now_s),
            });
        }
        if let Some(limit) = tpm
            && tokens >= limit.max(0) as u64
        {
            return Err(Refusal::Tpm {
                limit,
                retry_after_s: w.retry_after(now_s),
            });
        }
        w.add(now_s, 1, 0);
        Ok(())
    }

    /// Adds tokens used by `subject`.
    pub fn add_tokens(&self, subject: &str, tokens: u64, now_s: i64) {
        if tokens == 0 {
            return;
        }
        if let Ok(mut map) = self.windows.lock()
            && let Some(w) = map.get_mut(subject)
        {
            w.add(now_s, 0, tokens);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpm_refuses_the_request_over_the_limit_and_recovers() {
        let l = Limiter::default();
        for _ in 0..3 {
            l.admit("k", Some(3), None, 100).unwrap();
        }
        let r = l.admit("k", Some(3), None, 110).unwrap_err();
        assert_eq!(
            r,
            Refusal::Rpm {
                limit: 3,
                retry_after_s: 50
            }
        );
        // A minute after the first requests, they no longer count.
        l.admit("k", Some(3), None, 160).unwrap();
    }

    #[test]
    fn tpm_counts_tokens_reported_after_the_answer() {
        let l = Limiter::default();
        l.admit("k", None, Some(100), 10).unwrap();
        l.add_tokens("k", 150, 10);
        assert!(matches!(
            l.admit("k", None, Some(100), 20),
            Err(Refusal::Tpm { .. })
        ));
        l.admit("other", None, Some(100), 20).unwrap();
        l.admit("k", None, Some(100), 71).unwrap();
    }

    #[test]
    fn unlimited_subjects_cost_nothing() {
        let l = Limiter::default();
        for _ in 0..1000 {
            l.admit("k", None, None, 1).unwrap();
        }
        assert!(l.windows.lock().unwrap().is_empty());
    }
}
