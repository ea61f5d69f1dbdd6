//! The order in which a handle's targets are tried.
//!
//! - `priority`: lowest priority number first; ties keep the registry order.
//! - `weighted`: a random order where each target's chance to come first is its share of the
//!   total weight (zero-weight targets come last, as fallbacks).
//! - `least-busy`: fewest requests in flight first; ties by priority.
//! - `latency`: power of two choices over a peak-weighted cost — the target's recent time to
//!   first token (a moving average that jumps up to a slower sample at once and decays
//!   back) times its requests in flight plus one: two targets drawn at random, the cheaper
//!   first, the rest by cost. A fast target that is busy yields to a slower idle one (not
//!   hammered), and a slow one is still drawn (not starved); unmeasured targets cost nothing,
//!   so they get measured; ties by priority.
//!
//! Every strategy returns every target: the ones after the first are the fallbacks.

use docsdb::spec::Strategy;

/// What the strategies need to know about a target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub priority: i64,
    pub weight: i64,
    pub in_flight: u64,
    pub ttft_us: Option<u64>,
}

/// The latency strategy's cost of a target: its time to first token times its requests in
/// flight plus one (0 while unmeasured).
fn cost(c: &Candidate) -> u128 {
    u128::from(c.ttft_us.unwrap_or(0)) * u128::from(c.in_flight + 1)
}

/// Indices into `c`, in the order to try. `rand01` yields uniform numbers in [0, 1).
pub fn order(strategy: Strategy, c: &[Candidate], mut rand01: impl FnMut() -> f64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..c.len()).collect();
    match strategy {
        Strategy::Priority => idx.sort_by_key(|&i| (c[i].priority, i)),
        Strategy::LeastBusy => idx.sort_by_key(|&i| (c[i].in_flight, c[i].priority, i)),
        Strategy::Latency => {
            let key = |i: usize| (cost(&c[i]), c[i].priority, i);
            idx.sort_by_key(|&i| key(i));
            // An unmeasured target goes first as it is (it gets measured); else two drawn.
            if c.len() > 2 && c[idx[0]].ttft_us.is_some() {
                // Two distinct targets drawn at random; the cheaper of them goes first.
                let a = ((rand01() * c.len() as f64) as usize).min(c.len() - 1);
                let mut b = ((rand01() * (c.len() - 1) as f64) as usize).min(c.len() - 2);
                if b >= a {
                    b += 1;
                }
                let first = if key(a) <= key(b) { a } else { b };
                idx.retain(|&i| i != first);
                idx.insert(0, first);
            }
        }
        Strategy::Weighted => {
            let mut out = Vec::with_capacity(c.len());
            let mut left: Vec<usize> = idx.iter().copied().filter(|&i| c[i].weight > 0).collect();
            while !left.is_empty() {
                let total: i64 = left.iter().map(|&i| c[i].weight).sum();
                let mut pick = rand01() * total as f64;
                let mut chosen = left.len() - 1;
                for (k, &i) in left.iter().enumerate() {
                    pick -= c[i].weight as f64;
                    if pick < 0.0 {
                        chosen = k;
                        break;
                    }
                }
                out.push(left.remove(chosen));
            }
            out.extend(idx.iter().copied().filter(|&i| c[i].weight <= 0));
            idx = out;
        }
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(priority: i64, weight: i64, in_flight: u64, ttft_us: Option<u64>) -> Candidate {
        Candidate {
            priority,
            weight,
            in_flight,
            ttft_us,
        }
    }

    #[test]
    fn table() {
        let c = [
            cand(1, 1, 5, Some(900)),
            cand(0, 1, 9, Some(100)),
            cand(1, 1, 0, None),
        ];
        let never = || 0.0;
        assert_eq!(order(Strategy::Priority, &c, never), [1, 0, 2]);
        assert_eq!(order(Strategy::LeastBusy, &c, never), [2, 0, 1]);
        assert_eq!(
            order(Strategy::Latency, &c, never),
            [2, 1, 0],
            "unmeasured first; then 100 µs × 10 in flight before 900 µs × 6"
        );
    }

    #[test]
    fn latency_weighs_speed_by_load() {
        let never = || 0.0;
        let fast_idle = cand(0, 1, 0, Some(100));
        let slow_idle = cand(0, 1, 0, Some(900));
        assert_eq!(
            order(Strategy::Latency, &[slow_idle, fast_idle], never),
            [1, 0]
        );
        // The fast one busy: 100 µs × 10 > 900 µs × 1, so the slow one is not starved.
        let fast_busy = cand(0, 1, 9, Some(100));
        assert_eq!(
            order(Strategy::Latency, &[fast_busy, slow_idle], never),
            [1, 0]
        );
        // Equal costs: priority decides.
        let a = cand(1, 1, 1, Some(200));
        let b = cand(0, 1, 0, Some(400));
        assert_eq!(order(Strategy::Latency, &[a, b], never), [1, 0]);
    }

    #[test]
    fn latency_draws_two_and_never_leads_with_the_costliest() {
        let c = [
            cand(0, 1, 0, Some(100)),
            cand(0, 1, 0, Some(200)),
            cand(0, 1, 0, Some(300)),
            cand(0, 1, 0, Some(5_000)),
        ];
        let mut firsts = [0usize; 4];
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..6000 {
            let o = order(Strategy::Latency, &c, || rng.f64());
            assert_eq!(o.len(), 4);
            let mut sorted = o.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3], "every target, once");
            firsts[o[0]] += 1;
        }
        // The cheapest leads whenever it is drawn (half the pairs), the costliest never;
        // the others lead sometimes: load spreads instead of piling on one target.
        assert_eq!(firsts[3], 0, "{firsts:?}");
        let share = |n: usize| n as f64 / 6000.0;
        assert!((0.45..0.55).contains(&share(firsts[0])), "{firsts:?}");
        assert!(firsts[1] > 0 && firsts[2] > 0, "{firsts:?}");
    }

    #[test]
    fn weighted_follows_the_weights() {
        let c = [
            cand(0, 3, 0, None),
            cand(0, 1, 0, None),
            cand(0, 0, 0, None),
        ];
        let mut firsts = [0usize; 3];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..4000 {
            let o = order(Strategy::Weighted, &c, || rng.f64());
            assert_eq!(o.len(), 3);
            assert_eq!(o[2], 2, "zero weight is always last");
            firsts[o[0]] += 1;
        }
        let share = firsts[0] as f64 / 4000.0;
        assert!(
            (0.70..0.80).contains(&share),
            "weight 3 of 4 comes first ~75%: {share}"
        );
        assert_eq!(firsts[2], 0);
    }
}
