//! Choosing the next token: the sampler settings a request ends up with, and the sampler.
//!
//! Clients of an OpenAI API rarely send more than `messages`; a small model sampled from its
//! whole distribution at temperature 1 rambles until the length limit. So every setting the
//! request leaves unset is filled in, per setting, from the model file's recommended values
//! (`general.sampling.*`, when the file has them) or else from llama.cpp's server defaults
//! ([`SamplerSettings::LLAMA_CPP`]). What the request sets always wins.
//!
//! The chain is llama.cpp's order: penalties → DRY → top-k → top-p → min-p → temperature →
//! draw. Penalties count the tokens generated so far (the last `repeat_last_n` of them), never
//! the prompt — a title that repeats the chat's words is right — and never the tokens that
//! end a turn, so a penalty cannot keep the model from stopping. DRY ("don't repeat
//! yourself", llama.cpp's `dry_*` settings, off unless `dry_multiplier` is set) penalises the
//! token that would extend a sequence already generated, the more the longer the repeat:
//! it breaks the loops a small model falls into, even when decoding greedily.

use std::collections::HashMap;

use serde::Serialize;

use crate::gguf::{GgufInfo, Value};

/// Every sampler setting, decided.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SamplerSettings {
    /// 0 (or below) is greedy.
    pub temperature: f64,
    /// Keep the `top_k` likeliest tokens (0: all).
    pub top_k: u32,
    /// Keep the smallest set whose probability reaches `top_p` (1: all).
    pub top_p: f64,
    /// Drop tokens less likely than `min_p` times the likeliest (0: none).
    pub min_p: f64,
    /// Divide a repeated token's positive logit by this (multiply a negative one); 1: off.
    pub repeat_penalty: f64,
    /// How many of the last generated tokens the penalties look at (-1: all of them).
    pub repeat_last_n: i64,
    /// Subtracted once from the logit of every token already generated (OpenAI's).
    pub presence_penalty: f64,
    /// Subtracted per occurrence (OpenAI's).
    pub frequency_penalty: f64,
    /// DRY: the penalty for extending a repeat of `dry_allowed_length` tokens (0: off).
    pub dry_multiplier: f64,
    /// DRY: how fast the penalty grows with each further repeated token.
    pub dry_base: f64,
    /// DRY: repeats this long go unpunished.
    pub dry_allowed_length: u32,
    /// DRY: how many of the last generated tokens it looks at (-1: all).
    pub dry_penalty_last_n: i64,
}

impl SamplerSettings {
    /// llama.cpp's server defaults (`common_params_sampling`), with the repetition penalty
    /// on at 1.1 over the last 64 tokens: llama.cpp ships it off (1.0), but a 135M model
    /// sampled without it falls into loops that end only at the length limit.
    pub const LLAMA_CPP: SamplerSettings = SamplerSettings {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        repeat_penalty: 1.1,
        repeat_last_n: 64,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        dry_multiplier: 0.0,
        dry_base: 1.75,
        dry_allowed_length: 2,
        dry_penalty_last_n: -1,
    };
}

/// What a request said about sampling; `None` leaves the setting to the defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplerRequest {
    pub temperature: Option<f64>,
    pub top_k: Option<u32>,
    pub top_p: Option<f64>,
    pub min_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
    pub repeat_last_n: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub dry_multiplier: Option<f64>,
    pub dry_base: Option<f64>,
    pub dry_allowed_length: Option<u32>,
    pub dry_penalty_last_n: Option<i64>,
}

impl SamplerRequest {
    /// Temperature 0: always the likeliest token.
    pub fn greedy() -> Self {
        SamplerRequest {
            temperature: Some(0.0),
            ..Default::default()
        }
    }
}

/// The defaults a model is served with, and where each came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SamplerDefaults {
    pub settings: SamplerSettings,
    /// The settings taken from the model file (`general.sampling.*`); the rest are
    /// llama.cpp's.
    pub from_model_file: Vec<&'static str>,
}

impl SamplerDefaults {
    /// llama.cpp's defaults, overridden per setting by the file's recommended values.
    pub fn from_gguf(info: &GgufInfo) -> Self {
        let mut s = SamplerSettings::LLAMA_CPP;
        let mut from = Vec::new();
        let num = |key: &str| match info.get(key) {
            Some(Value::F64(v)) => Some(*v),
            Some(Value::U64(v)) => Some(*v as f64),
            Some(Value::I64(v)) => Some(*v as f64),
            _ => None,
        };
        let finite = |v: Option<f64>| v.filter(|x| x.is_finite());
        if let Some(v) = finite(num("general.sampling.temp")).filter(|v| *v >= 0.0) {
            s.temperature = v;
            from.push("temperature");
        }
        if let Some(v) = finite(num("general.sampling.top_k")).filter(|v| *v >= 0.0) {
            s.top_k = v.min(f64::from(u32::MAX)) as u32;
            from.push("top_k");
        }
        if let Some(v) = finite(num("general.sampling.top_p")).filter(|v| (0.0..=1.0).contains(v)) {
            s.top_p = v;
            from.push("top_p");
        }
        if let Some(v) = finite(num("general.sampling.min_p")).filter(|v| (0.0..=1.0).contains(v)) {
            s.min_p = v;
            from.push("min_p");
        }
        if let Some(v) = finite(num("general.sampling.penalty_repeat")).filter(|v| *v > 0.0) {
            s.repeat_penalty = v;
            from.push("repeat_penalty");
        }
        if let Some(v) = finite(num("general.sampling.penalty_last_n")).filter(|v| *v >= -1.0) {
            s.repeat_last_n = v as i64;
            from.push("repeat_last_n");
        }
        if let Some(v) = finite(num("general.sampling.penalty_present")) {
            s.presence_penalty = v;
            from.push("presence_penalty");
        }
        if let Some(v) = finite(num("general.sampling.penalty_freq")) {
            s.frequency_penalty = v;
            from.push("frequency_penalty");
        }
        SamplerDefaults {
            settings: s,
            from_model_file: from,
        }
    }

    /// The settings for one request: what it set, else the default.
    pub fn resolve(&self, r: &SamplerRequest) -> SamplerSettings {
        let d = &self.settings;
        SamplerSettings {
            temperature: r.temperature.unwrap_or(d.temperature),
            top_k: r.top_k.unwrap_or(d.top_k),
            top_p: r.top_p.unwrap_or(d.top_p),
            min_p: r.min_p.unwrap_or(d.min_p),
            repeat_penalty: r.repeat_penalty.unwrap_or(d.repeat_penalty),
            repeat_last_n: r.repeat_last_n.unwrap_or(d.repeat_last_n),
            presence_penalty: r.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: r.frequency_penalty.unwrap_or(d.frequency_penalty),
            dry_multiplier: r.dry_multiplier.unwrap_or(d.dry_multiplier),
            dry_base: r.dry_base.unwrap_or(d.dry_base),
            dry_allowed_length: r.dry_allowed_length.unwrap_or(d.dry_allowed_length),
            dry_penalty_last_n: r.dry_penalty_last_n.unwrap_or(d.dry_penalty_last_n),
        }
    }
}

/// Characters that end a sequence for DRY (llama.cpp's default breakers): a repeat is not
/// followed across them, so list items and JSON keys may share their openings.
pub const DRY_BREAKERS: &[char] = &['\n', ':', '"', '*'];

/// Longest repeat DRY follows back (bounds its work per token; the penalty is huge by then).
const DRY_MAX_MATCH: usize = 64;

/// Draws tokens from logits with one request's settings and seed.
#[derive(Debug)]
pub struct Sampler {
    s: SamplerSettings,
    rng: fastrand::Rng,
    /// Tokens never penalised (those that end a turn).
    exempt: Vec<u32>,
    /// Token ids whose text holds a [`DRY_BREAKERS`] character, sorted.
    breakers: std::sync::Arc<[u32]>,
    /// Reused buffer of (token, logit) candidates.
    cands: Vec<(u32, f32)>,
    /// Reused per token: DRY's longest repeat per next token, the penalties' counts.
    repeats: Vec<(u32, usize)>,
    counts: HashMap<u32, u32>,
}

impl Sampler {
    /// A sampler; `exempt` are never penalised, `breakers` end DRY's repeats (see
    /// [`DRY_BREAKERS`]; sorted).
    pub fn new(
        settings: SamplerSettings,
        seed: u64,
        exempt: &[u32],
        breakers: std::sync::Arc<[u32]>,
    ) -> Self {
        Sampler {
            s: settings,
            rng: fastrand::Rng::with_seed(seed),
            exempt: exempt.to_vec(),
            breakers,
            cands: Vec::new(),
            repeats: Vec::new(),
            counts: HashMap::new(),
        }
    }

    pub fn settings(&self) -> &SamplerSettings {
        &self.s
    }

    /// The next token after `generated`, from `logits` (one per vocabulary entry).
    pub fn sample(&mut self, logits: &[f32], generated: &[u32]) -> u32 {
        let s = self.s;
        self.cands.clear();
        self.cands
            .extend(logits.iter().enumerate().map(|(i, l)| (i as u32, *l)));
        self.penalise(generated);
        self.dry(generated);
        let cands = &mut self.cands;
        // NaN logits (a broken model) must not win or poison the sums.
        cands.retain(|(_, l)| !l.is_nan());
        if cands.is_empty() {
            return 0;
        }
        if s.temperature <= 0.0 {
            return cands
                .iter()
                .fold((0u32, f32::NEG_INFINITY), |best, c| {
                    if c.1 > best.1 { *c } else { best }
                })
                .0;
        }
        let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        let k = s.top_k as usize;
        if k > 0 && k < cands.len() {
            cands.select_nth_unstable_by(k - 1, desc);
            cands.truncate(k);
        }
        cands.sort_unstable_by(desc);
        // top-p and min-p on the distribution before temperature, as llama.cpp does.
        let probs = softmax(cands.iter().map(|c| c.1), 1.0);
        let mut keep = cands.len();
        if s.top_p < 1.0 {
            let mut sum = 0.0;
            for (i, p) in probs.iter().enumerate() {
                sum += p;
                if sum >= s.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if s.min_p > 0.0 {
            let floor = probs[0] * s.min_p;
            keep = keep.min(probs.iter().take_while(|p| **p >= floor).count().max(1));
        }
        cands.truncate(keep.max(1));
        let probs = softmax(cands.iter().map(|c| c.1), s.temperature);
        let mut r = self.rng.f64();
        for (c, p) in cands.iter().zip(&probs) {
            if r < *p {
                return c.0;
            }
            r -= p;
        }
        cands[cands.len() - 1].0
    }

    /// DRY: for each earlier place where the text so far ends the same way, the token that
    /// came next there would extend the repeat; it loses `multiplier × base^(length −
    /// allowed)` for the longest such repeat of at least `allowed` tokens.
    fn dry(&mut self, generated: &[u32]) {
        let s = &self.s;
        if s.dry_multiplier <= 0.0 {
            return;
        }
        let w = last_n(generated, s.dry_penalty_last_n);
        let n = w.len();
        let breaks = |t: &u32| self.breakers.binary_search(t).is_ok();
        if n < 2 || breaks(&w[n - 1]) {
            return;
        }
        let longest = &mut self.repeats;
        longest.clear();
        for i in (0..n - 1).rev() {
            // How far the text ending at `i` matches the text ending now.
            let mut len = 0;
            while len <= i
                && len < DRY_MAX_MATCH
                && w[i - len] == w[n - 1 - len]
                && !breaks(&w[i - len])
            {
                len += 1;
            }
            let next = w[i + 1];
            if len == 0 || self.exempt.contains(&next) {
                continue;
            }
            match longest.iter_mut().find(|(t, _)| *t == next) {
                Some(e) => e.1 = e.1.max(len),
                None => longest.push((next, len)),
            }
        }
        let allowed = s.dry_allowed_length as usize;
        for &(t, len) in longest.iter() {
            if len < allowed {
                continue;
            }
            let penalty = s.dry_multiplier * s.dry_base.powf((len - allowed) as f64);
            if let Some(c) = self.cands.get_mut(t as usize) {
                c.1 -= penalty.min(1e6) as f32;
            }
        }
    }

    fn penalise(&mut self, generated: &[u32]) {
        let s = &self.s;
        if s.repeat_penalty == 1.0 && s.presence_penalty == 0.0 && s.frequency_penalty == 0.0 {
            return;
        }
        let window = last_n(generated, s.repeat_last_n);
        let counts = &mut self.counts;
        counts.clear();
        for t in window {
            if !self.exempt.contains(t) {
                *counts.entry(*t).or_default() += 1;
            }
        }
        for (&t, &n) in counts.iter() {
            let Some(c) = self.cands.get_mut(t as usize) else {
                continue;
            };
            let rp = s.repeat_penalty as f32;
            c.1 = if c.1 > 0.0 { c.1 / rp } else { c.1 * rp };
            c.1 -= s.frequency_penalty as f32 * n as f32 + s.presence_penalty as f32;
        }
    }
}

/// The last `n` tokens of `generated` (all of them for a negative `n`).
fn last_n(generated: &[u32], n: i64) -> &[u32] {
    match usize::try_from(n) {
        Ok(n) => &generated[generated.len().saturating_sub(n)..],
        Err(_) => generated,
    }
}

/// Probabilities of `logits / temperature`.
fn softmax(logits: impl Iterator<Item = f32> + Clone, temperature: f64) -> Vec<f64> {
    let t = temperature.max(1e-6);
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits
        .map(|l| ((f64::from(l) - f64::from(max)) / t).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    if sum > 0.0 && sum.is_finite() {
        exps.iter().map(|e| e / sum).collect()
    } else {
        let n = exps.len().max(1) as f64;
        exps.iter().map(|_| 1.0 / n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> SamplerDefaults {
        SamplerDefaults {
            settings: SamplerSettings::LLAMA_CPP,
            from_model_file: Vec::new(),
        }
    }

    #[test]
    fn unset_settings_take_the_defaults_and_set_ones_win() {
        let d = defaults();
        assert_eq!(
            d.resolve(&SamplerRequest::default()),
            SamplerSettings::LLAMA_CPP
        );
        let s = d.resolve(&SamplerRequest {
            temperature: Some(0.0),
            top_k: Some(0),
            repeat_penalty: Some(1.0),
            ..Default::default()
        });
        assert_eq!(s.temperature, 0.0, "an explicit 0 is greedy, not unset");
        assert_eq!(s.top_k, 0);
        assert_eq!(s.repeat_penalty, 1.0);
        assert_eq!(s.top_p, 0.95, "the rest stay the defaults");
        assert_eq!(s.min_p, 0.05);
        assert_eq!(s.repeat_last_n, 64);
    }

    #[test]
    fn the_model_file_overrides_per_setting_and_bad_values_are_ignored() {
        use crate::gguf::{GgufInfo, Value};
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert("general.sampling.temp".to_owned(), Value::F64(0.6));
        metadata.insert("general.sampling.top_k".to_owned(), Value::U64(20));
        metadata.insert("general.sampling.top_p".to_owned(), Value::F64(1.5));
        metadata.insert("general.sampling.penalty_last_n".to_owned(), Value::I64(-1));
        let info = GgufInfo {
            version: 3,
            metadata,
            tensors: Vec::new(),
            file_size: 0,
        };
        let d = SamplerDefaults::from_gguf(&info);
        assert_eq!(d.settings.temperature, 0.6);
        assert_eq!(d.settings.top_k, 20);
        assert_eq!(d.settings.repeat_last_n, -1);
        assert_eq!(d.settings.top_p, 0.95, "out of range: llama.cpp's kept");
        assert_eq!(d.from_model_file, ["temperature", "top_k", "repeat_last_n"]);
        // The request still wins over the file.
        let s = d.resolve(&SamplerRequest {
            top_k: Some(5),
            ..Default::default()
        });
        assert_eq!((s.top_k, s.temperature), (5, 0.6));
    }

    #[test]
    fn greedy_takes_the_largest_logit() {
        let s = SamplerSettings {
            temperature: 0.0,
            ..SamplerSettings::LLAMA_CPP
        };
        let mut sm = Sampler::new(s, 1, &[], Vec::new().into());
        assert_eq!(sm.sample(&[0.1, 3.0, 2.9, f32::NAN], &[]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let s = SamplerSettings {
            temperature: 5.0,
            top_k: 1,
            ..SamplerSettings::LLAMA_CPP
        };
        let mut sm = Sampler::new(s, 9, &[], Vec::new().into());
        for _ in 0..50 {
            assert_eq!(sm.sample(&[1.0, 1.2, 0.9, 1.1], &[]), 1);
        }
    }

    #[test]
    fn min_p_drops_the_unlikely_tail() {
        // Token 0 is 10x likelier than 1 and e^5x likelier than 2: min-p 0.05 keeps 0 and 1.
        let logits = [5.0f32, 5.0 - 10f32.ln(), 0.0];
        let s = SamplerSettings {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.05,
            repeat_penalty: 1.0,
            ..SamplerSettings::LLAMA_CPP
        };
        let mut sm = Sampler::new(s, 3, &[], Vec::new().into());
        let drawn: std::collections::HashSet<u32> =
            (0..2000).map(|_| sm.sample(&logits, &[])).collect();
        assert_eq!(drawn, [0, 1].into_iter().collect());
    }

    #[test]
    fn top_p_keeps_the_smallest_set_that_reaches_it() {
        // Probabilities about 0.665, 0.245, 0.09: top-p 0.8 keeps the first two.
        let logits = [2.0f32, 1.0, 0.0];
        let s = SamplerSettings {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.8,
            min_p: 0.0,
            repeat_penalty: 1.0,
            ..SamplerSettings::LLAMA_CPP
        };
        let mut sm = Sampler::new(s, 5, &[], Vec::new().into());
        let drawn: std::collections::HashSet<u32> =
            (0..2000).map(|_| sm.sample(&logits, &[])).collect();
        assert_eq!(drawn, [0, 1].into_iter().collect());
    }

    #[test]
    fn the_repeat_penalty_spares_end_of_turn_tokens() {
        let s = SamplerSettings {
            temperature: 0.0,
            repeat_penalty: 2.0,
            ..SamplerSettings::LLAMA_CPP
        };
        // Token 1 was generated: 3.0 / 2 = 1.5 loses to token 2's 2.0.
        let mut sm = Sampler::new(s, 1, &[], Vec::new().into());
        assert_eq!(sm.sample(&[0.0, 3.0, 2.0], &[1]), 2);
        // The same token, exempt (it ends a turn): not penalised.
        let mut sm = Sampler::new(s, 1, &[1], Vec::new().into());
        assert_eq!(sm.sample(&[0.0, 3.0, 2.0], &[1]), 1);
        // Outside the window (last 1 token), no penalty either.
        let s1 = SamplerSettings {
            repeat_last_n: 1,
            ..s
        };
        let mut sm = Sampler::new(s1, 1, &[], Vec::new().into());
        assert_eq!(sm.sample(&[0.0, 3.0, 2.0], &[1, 0]), 1);
    }

    #[test]
    fn dry_stops_a_loop_that_greedy_would_follow() {
        let s = SamplerSettings {
            temperature: 0.0,
            repeat_penalty: 1.0,
            dry_multiplier: 0.8,
            ..SamplerSettings::LLAMA_CPP
        };
        // Generated so far: 5 6 7 5 6; greedy wants 7 again (the loop 5 6 7).
        let logits = [0.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 2.5];
        let none: std::sync::Arc<[u32]> = Vec::new().into();
        let mut plain = Sampler::new(
            SamplerSettings {
                dry_multiplier: 0.0,
                ..s
            },
            1,
            &[],
            none.clone(),
        );
        assert_eq!(plain.sample(&logits, &[5, 6, 7, 5, 6]), 7);
        // "5 6" repeats (2 tokens, the allowed length): 7 loses 0.8 and 8 wins.
        let mut dry = Sampler::new(s, 1, &[], none.clone());
        assert_eq!(dry.sample(&logits, &[5, 6, 7, 5, 6]), 8);
        // A repeat of one token is allowed.
        assert_eq!(dry.sample(&logits, &[6, 7, 1, 6]), 7);
        // An end-of-turn token is never held back, and a breaker ends the repeat.
        let mut eot = Sampler::new(s, 1, &[7], none);
        assert_eq!(eot.sample(&logits, &[5, 6, 7, 5, 6]), 7);
        let mut broken = Sampler::new(s, 1, &[], vec![5u32].into());
        assert_eq!(broken.sample(&logits, &[5, 6, 7, 5, 6]), 7);
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut sm = Sampler::new(SamplerSettings::LLAMA_CPP, seed, &[], Vec::new().into());
            (0..20).map(|_| sm.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }
}
