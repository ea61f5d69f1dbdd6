//! `difflib.SequenceMatcher(None, a, b).ratio()` over characters, as OptiLLM's
//! self-consistency clusters answers with it: Ratcliff/Obershelp matching blocks, with
//! difflib's "autojunk" (in a `b` of 200 characters or more, a character found more often
//! than 1% of its length plus one is not matched on).

use std::collections::HashMap;

/// 2·M / (|a| + |b|), M the characters in matching blocks; 1.0 for two empty strings.
pub fn ratio(a: &str, b: &str) -> f64 {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let total = a.len() + b.len();
    if total == 0 {
        return 1.0;
    }
    let mut b2j: HashMap<char, Vec<usize>> = HashMap::new();
    for (j, c) in b.iter().enumerate() {
        b2j.entry(*c).or_default().push(j);
    }
    if b.len() >= 200 {
        let popular = b.len() / 100 + 1;
        b2j.retain(|_, idx| idx.len() <= popular);
    }
    let mut matched = 0usize;
    let mut queue = vec![(0, a.len(), 0, b.len())];
    while let Some((alo, ahi, blo, bhi)) = queue.pop() {
        let (i, j, k) = longest_match(&a, &b, &b2j, alo, ahi, blo, bhi);
        if k > 0 {
            matched += k;
            if alo < i && blo < j {
                queue.push((alo, i, blo, j));
            }
            if i + k < ahi && j + k < bhi {
                queue.push((i + k, ahi, j + k, bhi));
            }
        }
    }
    2.0 * matched as f64 / total as f64
}

/// difflib's `find_longest_match` without junk extension (no isjunk function is given):
/// the longest block, earliest in `a`, then in `b`.
fn longest_match(
    a: &[char],
    b: &[char],
    b2j: &HashMap<char, Vec<usize>>,
    alo: usize,
    ahi: usize,
    blo: usize,
    bhi: usize,
) -> (usize, usize, usize) {
    let (mut besti, mut bestj, mut bestsize) = (alo, blo, 0usize);
    let mut j2len: HashMap<usize, usize> = HashMap::new();
    for (i, c) in a.iter().enumerate().take(ahi).skip(alo) {
        let mut next: HashMap<usize, usize> = HashMap::new();
        if let Some(js) = b2j.get(c) {
            for &j in js {
                if j < blo {
                    continue;
                }
                if j >= bhi {
                    break;
                }
                let k = j
                    .checked_sub(1)
                    .and_then(|p| j2len.get(&p))
                    .copied()
                    .unwrap_or(0)
                    + 1;
                next.insert(j, k);
                if k > bestsize {
                    besti = i + 1 - k;
                    bestj = j + 1 - k;
                    bestsize = k;
                }
            }
        }
        j2len = next;
    }
    // Extended over equal characters on both sides (the popular ones autojunk left out of the
    // index are matched this way, as in difflib, where nothing is junk without `isjunk`).
    while besti > alo && bestj > blo && a[besti - 1] == b[bestj - 1] {
        besti -= 1;
        bestj -= 1;
        bestsize += 1;
    }
    while besti + bestsize < ahi
        && bestj + bestsize < bhi
        && a[besti + bestsize] == b[bestj + bestsize]
    {
        bestsize += 1;
    }
    (besti, bestj, bestsize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values Python's difflib gives (`SequenceMatcher(None, a, b).ratio()`).
    #[test]
    fn ratios_are_difflibs() {
        assert_eq!(ratio("", ""), 1.0);
        assert_eq!(ratio("abcd", "abcd"), 1.0);
        assert_eq!(ratio("abcd", ""), 0.0);
        // SequenceMatcher(None, "abcd", "bcde").ratio() == 0.75
        assert!((ratio("abcd", "bcde") - 0.75).abs() < 1e-12);
        // SequenceMatcher(None, "The answer is 42.", "The answer is 43.").ratio() == 0.9411764705882353
        assert!(
            (ratio("The answer is 42.", "The answer is 43.") - 0.941_176_470_588_235_3).abs()
                < 1e-12
        );
        // SequenceMatcher(None, "qabxcd", "abycdf").ratio() == 0.6666666666666666
        assert!((ratio("qabxcd", "abycdf") - 2.0 / 3.0).abs() < 1e-12);
        // Past 200 characters autojunk takes popular characters out of the index:
        // a = "the quick brown fox jumps over the lazy dog. " * 6, b the same with "cat" and
        // "!"; difflib says 0.05925925925925926.
        let a = "the quick brown fox jumps over the lazy dog. ".repeat(6);
        let b = "the quick brown cat jumps over the lazy dog! ".repeat(6);
        assert!(
            (ratio(&a, &b) - 0.059_259_259_259_259_26).abs() < 1e-12,
            "{}",
            ratio(&a, &b)
        );
    }
}
