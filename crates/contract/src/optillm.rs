//! What the OptiLLM proxy sets on the calls it makes, so that a request it made that comes
//! back to it (through the gateway) is refused instead of looping.

/// Set on every backend call of the proxy; the gateway passes it on to its targets.
pub const HOP_HEADER: &str = "x-optillm-hop";
