//! The prefix cache: the sequences that ended, each with the tokens its KV holds, so that a
//! new request starts from the longest common token prefix instead of from its first token.
//!
//! What an entry holds is the backend's (shared KV blocks for candle, a KV sequence for
//! llama.cpp, an infer request's state for OpenVINO); this keeps the bookkeeping: which entry
//! shares the longest prefix with a prompt, which was used least recently, and which entries
//! another one makes useless (its tokens are a prefix of the newcomer's: a chat's turn 3
//! holds all of turn 2).

/// One cached sequence.
#[derive(Debug)]
pub(crate) struct Entry<S> {
    pub tokens: Vec<u32>,
    pub seq: S,
    last_used: u64,
}

/// The cached sequences, least recently used first out.
#[derive(Debug)]
pub(crate) struct PrefixCache<S> {
    entries: Vec<Entry<S>>,
    clock: u64,
}

/// How many leading tokens `a` and `b` share.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<S> Default for PrefixCache<S> {
    fn default() -> Self {
        PrefixCache {
            entries: Vec::new(),
            clock: 0,
        }
    }
}

impl<S> PrefixCache<S> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entry sharing the longest prefix with `prompt`: its index and that length (the
    /// most recently used among equals); `None` if none shares a token.
    pub fn best(&self, prompt: &[u32]) -> Option<(usize, usize)> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt), e.last_used))
            .filter(|(_, n, _)| *n > 0)
            .max_by_key(|(_, n, used)| (*n, *used))
            .map(|(i, n, _)| (i, n))
    }

    pub fn get(&self, i: usize) -> &Entry<S> {
        &self.entries[i]
    }

    /// Marks entry `i` used now.
    pub fn touch(&mut self, i: usize) {
        self.clock += 1;
        self.entries[i].last_used = self.clock;
    }

    /// Takes entry `i` out.
    pub fn take(&mut self, i: usize) -> Entry<S> {
        self.entries.swap_remove(i)
    }

    /// Adds a sequence; returns the entries it makes useless (their tokens are a prefix of
    /// its tokens), for the backend to free.
    pub fn insert(&mut self, tokens: Vec<u32>, seq: S) -> Vec<S> {
        let mut dropped = Vec::new();
        let mut i = 0;
        while i < self.entries.len() {
            let e = &self.entries[i];
            if e.tokens.len() <= tokens.len() && tokens.starts_with(&e.tokens) {
                dropped.push(self.entries.swap_remove(i).seq);
            } else {
                i += 1;
            }
        }
        self.clock += 1;
        self.entries.push(Entry {
            tokens,
            seq,
            last_used: self.clock,
        });
        dropped
    }

    /// Takes the least recently used entry out.
    pub fn pop_lru(&mut self) -> Option<S> {
        let i = (0..self.entries.len()).min_by_key(|i| self.entries[*i].last_used)?;
        Some(self.entries.swap_remove(i).seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_prefix_wins_and_a_longer_turn_replaces_the_shorter() {
        let mut c: PrefixCache<&str> = PrefixCache::default();
        assert!(c.insert(vec![1, 2, 3], "turn 1").is_empty());
        assert!(c.insert(vec![9, 9], "other").is_empty());
        assert_eq!(c.best(&[1, 2, 7]), Some((0, 2)));
        assert_eq!(c.best(&[5]), None);
        // Turn 2 holds all of turn 1: turn 1 goes.
        assert_eq!(c.insert(vec![1, 2, 3, 4, 5], "turn 2"), vec!["turn 1"]);
        assert_eq!(c.len(), 2);
        let (i, n) = c.best(&[1, 2, 3, 4, 6]).unwrap();
        assert_eq!((c.get(i).seq, n), ("turn 2", 4));
        // Least recently used first out: "other" was used last before turn 2 came.
        c.touch(i);
        assert_eq!(c.pop_lru(), Some("other"));
        assert_eq!(c.pop_lru(), Some("turn 2"));
        assert_eq!(c.pop_lru(), None);
    }
}
