//! The order in which a handle's targets are tried.
//!
//! - `priority`: lowest priority number first; ties keep the registry order.
//! - `weighted`: a random order where each target's chance to come first is its share of the
//!   total weight (zero-weight targets come last, as fallbacks).
//! - `least-busy`: fewest requests in flight first; ties by priority.
//! - `latency`: lowest recent time to first token first; unmeasured targets first, so they
//!   get measured; ties by priority.
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

/// Indices into `c`, in the order to try. `rand01` yields uniform numbers in [0, 1).
pub fn order(strategy: Strategy, c: &[Candidate], mut rand01: impl FnMut() -> f64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..c.len()).collect();
    match strategy {
        Strategy::Priority => idx.sort_by_key(|&i| (c[i].priority, i)),
        Strategy::LeastBusy => idx.sort_by_key(|&i| (c[i].in_flight, c[i].priority, i)),
        Strategy::Latency => idx.sort_by_key(|&i| (c[i].ttft_us.unwrap_or(0), c[i].priority, i)),
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
            "unmeasured first"
        );
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
