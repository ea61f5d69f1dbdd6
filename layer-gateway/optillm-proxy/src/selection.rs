//! Which approaches a request asks for, read exactly as OptiLLM reads it: the body field
//! `optillm_approach` (the SDK's `extra_body`), else the server's `--approach`; a tag
//! `<optillm_approach>…</optillm_approach>` in the system message (else a user message)
//! overrides both and is taken out of the text; anything but `auto` is put before the model
//! name; then the leading parts of the model name that are slugs are the approaches — `&`
//! chains them, `|` runs them side by side — and the first part that is not starts the real
//! model name.

use serde_json::Value;

/// Approaches this proxy runs.
pub const RUNS: &[&str] = &[
    "none",
    "bon",
    "moa",
    "self_consistency",
    "cot_reflection",
    "re2",
    "majority_voting",
    "rto",
    "plansearch",
    "genselect",
    "mcts",
    "leap",
    "pvg",
    "rstar",
    "readurls",
    "memory",
    "json",
];

/// OptiLLM's other slugs, refused with the reason (a slug must still be recognised as one,
/// or `mcts-local` would ask the backend for a model called `mcts-local`).
pub const REFUSED: &[(&str, &str)] = &[
    ("z3", "it runs code the model writes (a Python Z3 solver)"),
    ("executecode", "it runs code the model writes"),
    ("coc", "it runs code the model writes"),
    (
        "privacy",
        "it needs a local Python NLP stack (Presidio and spaCy)",
    ),
    ("router", "it needs a local classifier model (ModernBERT)"),
    (
        "cot_decoding",
        "it needs the model's logits, which an HTTP backend does not give",
    ),
    (
        "entropy_decoding",
        "it needs the model's logits, which an HTTP backend does not give",
    ),
    ("thinkdeeper", "it needs control of the model's decoding"),
    ("autothink", "it needs the model's hidden states"),
    ("deepconf", "it needs the model's logits"),
    ("cepo", "not offered: its configuration is Cerebras' own"),
    ("mars", "not offered: tens of minutes of calls per answer"),
    ("spl", "not offered: it keeps a learned strategy database"),
    ("deepthink", "not offered"),
    ("longcepo", "not offered"),
    ("mcp", "use tiny-agents for tools"),
    ("web_search", "use the gateway's web search"),
    ("deep_research", "not offered"),
    ("proxy", "the gateway routes and falls back"),
    ("compact", "not offered"),
];

fn is_slug(s: &str) -> bool {
    RUNS.contains(&s) || REFUSED.iter().any(|(r, _)| *r == s)
}

/// How the approaches combine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// One approach.
    One(String),
    /// Each stage's answer is the next stage's query.
    Chain(Vec<String>),
    /// Side by side on the same input, one choice each.
    Parallel(Vec<String>),
}

impl Plan {
    pub fn approaches(&self) -> Vec<&str> {
        match self {
            Plan::One(a) => vec![a.as_str()],
            Plan::Chain(v) | Plan::Parallel(v) => v.iter().map(String::as_str).collect(),
        }
    }

    /// The name in `x-optillm-approach`: as the client would write it.
    pub fn label(&self) -> String {
        match self {
            Plan::One(a) => a.clone(),
            Plan::Chain(v) => v.join("&"),
            Plan::Parallel(v) => v.join("|"),
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    pub plan: Plan,
    /// The backend's model name.
    pub model: String,
}

/// Why a selection cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Approaches this proxy does not run, with the reason.
    NotRun(Vec<(String, &'static str)>),
    /// `none` combined with others, or `&` and `|` mixed.
    BadCombination(String),
}

/// Takes an `<optillm_approach>` tag out of the system message, else out of the first user
/// message that has one; the tag's text.
pub fn take_tag(messages: &mut [Value]) -> Option<String> {
    let re = regex::Regex::new(r"<optillm_approach>(.*?)</optillm_approach>").ok()?;
    let order: Vec<usize> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m["role"] == "system")
        .chain(
            messages
                .iter()
                .enumerate()
                .filter(|(_, m)| m["role"] == "user"),
        )
        .map(|(i, _)| i)
        .collect();
    for i in order {
        let Some(text) = messages[i]["content"].as_str() else {
            continue;
        };
        if let Some(c) = re.captures(text) {
            let slug = c[1].trim().to_owned();
            let stripped = re.replace(text, "").trim().to_owned();
            messages[i]["content"] = Value::String(stripped);
            return Some(slug);
        }
    }
    None
}

/// Reads the selection from the model name, the body field, the tag (already taken out of
/// the messages) and the server's default approach.
pub fn select(
    model: &str,
    body_approach: Option<&str>,
    tag: Option<&str>,
    server_approach: &str,
) -> Result<Selected, Refusal> {
    let approach = tag
        .or(body_approach)
        .unwrap_or(server_approach)
        .trim()
        .to_owned();
    let model = if approach.is_empty() || approach == "auto" {
        model.to_owned()
    } else {
        format!("{approach}-{model}")
    };
    let parts: Vec<&str> = model.split('-').collect();
    let mut approaches: Vec<&str> = Vec::new();
    let mut operator: Option<char> = None;
    let mut taken = 0;
    for part in &parts {
        if part.contains('&') && part.contains('|') {
            return Err(Refusal::BadCombination(
                "`&` and `|` cannot be mixed in one model name".into(),
            ));
        }
        let (op, pieces): (Option<char>, Vec<&str>) = if part.contains('&') {
            (Some('&'), part.split('&').collect())
        } else if part.contains('|') {
            (Some('|'), part.split('|').collect())
        } else {
            (None, vec![*part])
        };
        if !pieces.iter().all(|p| is_slug(p)) {
            break;
        }
        if let Some(o) = op {
            if operator.is_some_and(|prev| prev != o) {
                return Err(Refusal::BadCombination(
                    "`&` and `|` cannot be mixed in one model name".into(),
                ));
            }
            operator = Some(o);
        }
        approaches.extend(pieces);
        taken += 1;
    }
    let real: String = parts[taken..].join("-");
    let real = if real.is_empty() { model.clone() } else { real };
    if approaches.is_empty() || real == "auto" {
        return Ok(Selected {
            plan: Plan::One("none".into()),
            model: real,
        });
    }
    if approaches.len() > 1 && approaches.contains(&"none") {
        return Err(Refusal::BadCombination(
            "`none` passes the request through and cannot be combined with other approaches".into(),
        ));
    }
    let refused: Vec<(String, &'static str)> = approaches
        .iter()
        .filter_map(|a| {
            REFUSED
                .iter()
                .find(|(r, _)| r == a)
                .map(|(r, why)| ((*r).to_owned(), *why))
        })
        .collect();
    if !refused.is_empty() {
        return Err(Refusal::NotRun(refused));
    }
    let owned: Vec<String> = approaches.iter().map(|a| (*a).to_owned()).collect();
    let plan = match (owned.len(), operator) {
        (1, _) => Plan::One(owned[0].clone()),
        (_, Some('|')) => Plan::Parallel(owned),
        // Several slugs joined by `-` (e.g. a server --approach before a client prefix) run
        // one after another, as `&` does.
        _ => Plan::Chain(owned),
    };
    Ok(Selected { plan, model: real })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(model: &str) -> Result<Selected, Refusal> {
        select(model, None, None, "auto")
    }

    #[test]
    fn the_model_name_carries_the_approach() {
        assert_eq!(
            sel("moa-local").unwrap(),
            Selected {
                plan: Plan::One("moa".into()),
                model: "local".into()
            }
        );
        assert_eq!(sel("local").unwrap().plan, Plan::One("none".into()));
        // An unknown prefix is part of the model name.
        assert_eq!(sel("gpt-4o-mini").unwrap().model, "gpt-4o-mini");
        assert_eq!(sel("bon-gpt-4o-mini").unwrap().model, "gpt-4o-mini");
        assert_eq!(
            sel("re2&bon-qwen2.5-7b").unwrap(),
            Selected {
                plan: Plan::Chain(vec!["re2".into(), "bon".into()]),
                model: "qwen2.5-7b".into()
            }
        );
        assert_eq!(
            sel("bon|moa|self_consistency-local").unwrap().plan,
            Plan::Parallel(vec!["bon".into(), "moa".into(), "self_consistency".into()])
        );
        assert!(matches!(
            sel("bon&moa|re2-local"),
            Err(Refusal::BadCombination(_))
        ));
        assert!(matches!(
            sel("none&bon-local"),
            Err(Refusal::BadCombination(_))
        ));
        match sel("z3-local") {
            Err(Refusal::NotRun(v)) => assert_eq!(v[0].0, "z3"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_tag_beats_the_body_field_which_beats_the_server() {
        assert_eq!(
            select("local", Some("bon"), Some("moa"), "auto")
                .unwrap()
                .plan,
            Plan::One("moa".into())
        );
        assert_eq!(
            select("local", Some("bon"), None, "re2").unwrap().plan,
            Plan::One("bon".into())
        );
        assert_eq!(
            select("local", None, None, "re2").unwrap().plan,
            Plan::One("re2".into())
        );
        // A server default before a client prefix: both run, in that order.
        assert_eq!(
            select("moa-local", None, None, "re2").unwrap().plan,
            Plan::Chain(vec!["re2".into(), "moa".into()])
        );
    }

    #[test]
    fn the_tag_is_taken_out_of_the_text() {
        let mut m = vec![
            json!({"role": "system", "content": "Be brief. <optillm_approach>bon</optillm_approach>"}),
            json!({"role": "user", "content": "Hi <optillm_approach>moa</optillm_approach>"}),
        ];
        assert_eq!(take_tag(&mut m).as_deref(), Some("bon"));
        assert_eq!(m[0]["content"], "Be brief.");
        let mut u = vec![
            json!({"role": "user", "content": "<optillm_approach>re2</optillm_approach> 2+2?"}),
        ];
        assert_eq!(take_tag(&mut u).as_deref(), Some("re2"));
        assert_eq!(u[0]["content"], "2+2?");
    }
}
