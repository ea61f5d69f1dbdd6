//! What the step loop ([`crate::step`]) needs from a backend: sequences whose KV can be
//! started from another's prefix, one forward pass over a batch of them, and a prefix cache
//! whose memory it can count.

use crate::error::EngineError;

/// One sequence's part of a forward pass: `tokens` fed at its next positions.
pub(crate) struct Feed<'a, S> {
    pub seq: &'a mut S,
    pub tokens: &'a [u32],
    /// Whether the logits after its last token are wanted.
    pub logits: bool,
}

/// A backend as the step loop drives it.
pub(crate) trait Runner {
    /// One sequence's state: its KV.
    type Seq;

    /// An empty sequence.
    fn new_seq(&mut self) -> Result<Self::Seq, EngineError>;

    /// A new sequence holding the first `n` positions of `src` (which stays as it is), if
    /// this backend shares them; `None` if it cannot, or would rather take a cached `src`
    /// over ([`Runner::adopt`]: llama.cpp, when the prefix is most of `src`).
    fn share(&mut self, src: &Self::Seq, n: usize) -> Result<Option<Self::Seq>, EngineError>;

    /// Continues `src`, taken out of the prefix cache, from its first `n` positions, if this
    /// backend can; else gives it back.
    fn adopt(&mut self, src: Self::Seq, n: usize) -> Result<Self::Seq, Self::Seq>;

    /// Whether `new_tokens` more positions fit beside what every sequence and the cache
    /// hold (a backend with a fixed KV size says no; the loop then drops cached entries).
    fn fits(&self, _new_tokens: usize) -> bool {
        true
    }

    /// One forward pass over `feeds`: the logits after the last token of each feed that
    /// asks, in order. After [`EngineError::KvFull`] every feed is as it was; after another
    /// error the loop drops the batch's sequences.
    fn forward(&mut self, feeds: &mut [Feed<'_, Self::Seq>]) -> Result<Vec<Vec<f32>>, EngineError>;

    /// `seq` parks behind a better request and gives up what it holds that a running
    /// sequence needs (it resumes in a later [`Runner::forward`]).
    fn park(&mut self, _seq: &mut Self::Seq) {}

    /// `seq` ended and moves into the prefix cache.
    fn to_cache(&mut self, seq: &mut Self::Seq);

    /// A cached sequence is dropped.
    fn evict(&mut self, seq: Self::Seq);

    /// A sequence that did not end well is dropped without being cached.
    fn discard(&mut self, seq: Self::Seq);

    /// Bytes the prefix cache holds.
    fn cached_bytes(&self) -> usize;

    /// The most prompt tokens fed in one step.
    fn chunk(&self) -> usize;

    /// The most sequences the prefix cache may hold.
    fn max_entries(&self) -> usize {
        usize::MAX
    }
}
