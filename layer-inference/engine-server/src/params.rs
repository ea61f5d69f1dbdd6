//! A request's sampling settings, limits and priority, read from the body and headers and
//! checked. What is unset stays unset here: the engine fills it from the model's defaults.
//!
//! Beyond OpenAI's fields, the names llama-server, vLLM and mlx_lm.server accept are read
//! from the body: `top_k`, `min_p`, `repeat_penalty` (or `repetition_penalty`),
//! `repeat_last_n`, llama-server's DRY settings (`dry_multiplier`, `dry_base`,
//! `dry_allowed_length`, `dry_penalty_last_n`), and vLLM's integer `priority`. The `x-homelab-priority` header
//! (`interactive`, `background` or an integer) wins over the body's `priority`.

use axum::http::HeaderMap;
use contract::engine::PRIORITY_HEADER;
use contract::{ApiError, Extra, OneOrMany};
use llm_engine::{Params, Priority, SamplerRequest};
use serde_json::Value;

/// The OpenAI fields the two endpoints share.
pub struct Common<'a> {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<&'a OneOrMany<String>>,
    pub extra: &'a Extra,
}

fn invalid(param: &str, why: &str) -> ApiError {
    ApiError::invalid_value("invalid_value", format!("`{param}` {why}")).with_param(param)
}

/// A number in `range`, or an error naming the parameter.
fn ranged(
    param: &str,
    v: Option<f64>,
    ok: impl Fn(f64) -> bool,
    why: &str,
) -> Result<Option<f64>, ApiError> {
    match v {
        Some(x) if !x.is_finite() || !ok(x) => Err(invalid(param, why)),
        other => Ok(other),
    }
}

/// An optional number from the body's extra fields.
fn extra_f64(extra: &Extra, key: &str) -> Result<Option<f64>, ApiError> {
    match extra.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| invalid(key, "must be a number")),
    }
}

/// An optional integer from the body's extra fields.
fn extra_i64(extra: &Extra, key: &str) -> Result<Option<i64>, ApiError> {
    match extra.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| invalid(key, "must be an integer")),
    }
}

/// The request's priority: the header, else the body's `priority`, else interactive.
pub fn priority(headers: &HeaderMap, extra: &Extra) -> Result<Priority, ApiError> {
    if let Some(h) = headers.get(PRIORITY_HEADER) {
        let text = h.to_str().map_err(|_| {
            ApiError::bad_request(format!("the {PRIORITY_HEADER} header is not text"))
        })?;
        return text.parse().map_err(|e: String| {
            ApiError::bad_request(format!("the {PRIORITY_HEADER} header: {e}"))
        });
    }
    match extra_i64(extra, "priority")? {
        Some(p) => i32::try_from(p)
            .map(Priority)
            .map_err(|_| invalid("priority", "is out of range")),
        None => Ok(Priority::INTERACTIVE),
    }
}

/// Reads and checks everything; `request_id` lets the queue be asked about the request.
pub fn read(
    c: &Common<'_>,
    headers: &HeaderMap,
    request_id: Option<String>,
) -> Result<Params, ApiError> {
    let e = c.extra;
    let temperature = ranged(
        "temperature",
        c.temperature,
        |t| t >= 0.0,
        "must be 0 or more",
    )?;
    let top_p = ranged(
        "top_p",
        c.top_p,
        |p| p > 0.0 && p <= 1.0,
        "must be above 0 and at most 1",
    )?;
    let min_p = ranged(
        "min_p",
        extra_f64(e, "min_p")?,
        |p| (0.0..=1.0).contains(&p),
        "must be between 0 and 1",
    )?;
    let top_k = match extra_i64(e, "top_k")? {
        // llama.cpp and vLLM take 0 or -1 as "no top-k".
        Some(k) if k <= 0 => Some(0),
        Some(k) => Some(u32::try_from(k).unwrap_or(u32::MAX)),
        None => None,
    };
    let repeat = match (
        extra_f64(e, "repeat_penalty")?,
        extra_f64(e, "repetition_penalty")?,
    ) {
        (Some(a), _) => ("repeat_penalty", Some(a)),
        (None, b) => ("repetition_penalty", b),
    };
    let repeat_penalty = ranged(repeat.0, repeat.1, |r| r > 0.0, "must be above 0")?;
    let repeat_last_n = match extra_i64(e, "repeat_last_n")? {
        Some(n) if n < -1 => return Err(invalid("repeat_last_n", "must be -1 (all) or more")),
        other => other,
    };
    let penalty = |name, v| {
        ranged(
            name,
            v,
            |x| (-2.0..=2.0).contains(&x),
            "must be between -2 and 2",
        )
    };
    let presence_penalty = penalty("presence_penalty", c.presence_penalty)?;
    let frequency_penalty = penalty("frequency_penalty", c.frequency_penalty)?;
    let dry_multiplier = ranged(
        "dry_multiplier",
        extra_f64(e, "dry_multiplier")?,
        |m| m >= 0.0,
        "must be 0 (off) or more",
    )?;
    let dry_base = ranged(
        "dry_base",
        extra_f64(e, "dry_base")?,
        |b| b >= 1.0,
        "must be 1 or more",
    )?;
    let dry_allowed_length = match extra_i64(e, "dry_allowed_length")? {
        Some(n) => {
            Some(u32::try_from(n).map_err(|_| invalid("dry_allowed_length", "must be 0 or more"))?)
        }
        None => None,
    };
    let dry_penalty_last_n = match extra_i64(e, "dry_penalty_last_n")? {
        Some(n) if n < -1 => {
            return Err(invalid("dry_penalty_last_n", "must be -1 (all) or more"));
        }
        other => other,
    };
    Ok(Params {
        max_tokens: c.max_tokens,
        sampling: SamplerRequest {
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            repeat_last_n,
            presence_penalty,
            frequency_penalty,
            dry_multiplier,
            dry_base,
            dry_allowed_length,
            dry_penalty_last_n,
        },
        seed: c.seed.map(|s| s as u64),
        stop: c.stop.map(|s| s.as_slice().to_vec()).unwrap_or_default(),
        priority: priority(headers, e)?,
        request_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(extra: &Extra) -> Common<'_> {
        Common {
            max_tokens: None,
            temperature: None,
            top_p: None,
            presence_penalty: None,
            frequency_penalty: None,
            seed: None,
            stop: None,
            extra,
        }
    }

    fn extra(v: Value) -> Extra {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn unset_stays_unset_and_vendor_names_are_read() {
        let none = Extra::new();
        let p = read(&common(&none), &HeaderMap::new(), None).unwrap();
        assert_eq!(p.sampling, SamplerRequest::default());
        assert_eq!(p.priority, Priority::INTERACTIVE);
        let e = extra(
            serde_json::json!({"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2, "repeat_last_n": -1, "priority": 3, "dry_multiplier": 0.8, "dry_allowed_length": 3}),
        );
        let p = read(&common(&e), &HeaderMap::new(), Some("r1".into())).unwrap();
        assert_eq!(p.sampling.top_k, Some(5));
        assert_eq!(p.sampling.min_p, Some(0.1));
        assert_eq!(p.sampling.repeat_penalty, Some(1.2));
        assert_eq!(p.sampling.repeat_last_n, Some(-1));
        assert_eq!(p.sampling.dry_multiplier, Some(0.8));
        assert_eq!(p.sampling.dry_allowed_length, Some(3));
        assert_eq!(p.sampling.dry_base, None);
        assert_eq!(p.priority, Priority(3));
        assert_eq!(p.request_id.as_deref(), Some("r1"));
    }

    #[test]
    fn the_header_wins_and_bad_values_name_their_parameter() {
        let e = extra(serde_json::json!({"priority": 3}));
        let mut h = HeaderMap::new();
        h.insert(PRIORITY_HEADER, "background".parse().unwrap());
        assert_eq!(
            read(&common(&e), &h, None).unwrap().priority,
            Priority::BACKGROUND
        );
        h.insert(PRIORITY_HEADER, "urgent".parse().unwrap());
        let err = read(&common(&e), &h, None).unwrap_err();
        assert_eq!(err.status, 400);
        assert!(err.error.message.contains("urgent"), "{err}");

        let mut c = common(&e);
        c.temperature = Some(-1.0);
        let err = read(&c, &HeaderMap::new(), None).unwrap_err();
        assert_eq!(err.error.param.as_deref(), Some("temperature"));
        let bad = extra(serde_json::json!({"top_k": "many"}));
        let err = read(&common(&bad), &HeaderMap::new(), None).unwrap_err();
        assert_eq!(err.error.param.as_deref(), Some("top_k"));
        let bad = extra(serde_json::json!({"dry_base": 0.5}));
        let err = read(&common(&bad), &HeaderMap::new(), None).unwrap_err();
        assert_eq!(err.error.param.as_deref(), Some("dry_base"));
    }
}
