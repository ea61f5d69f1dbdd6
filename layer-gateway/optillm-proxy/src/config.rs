//! The proxy's flags. OptiLLM's flag and environment names are accepted (`--best-of-n` and
//! `--best_of_n`, `OPTILLM_*`), so its users keep their habits; every limit is explicit.

use std::time::Duration;

use clap::Parser;
use service_kit::config::{CommonArgs, duration};

/// homelab-llm optillm-proxy: OptiLLM's inference-time approaches (best-of-n, mixture of
/// agents, self-consistency, …) in front of an OpenAI-compatible backend — by default the
/// gateway — chosen per request as OptiLLM chooses them: a slug before the model name
/// (`moa-local`), the body field `optillm_approach`, or an `<optillm_approach>` tag.
#[derive(Debug, Clone, Parser)]
#[command(name = "optillm-proxy", version)]
pub struct Config {
    /// Address to listen on (`--host` and `--port` set its parts, as OptiLLM's users type
    /// them).
    #[arg(long, env = "HOMELAB_OPTILLM_BIND", default_value = "127.0.0.1:4002")]
    pub bind: String,

    /// The host part of the address (OptiLLM's flag).
    #[arg(long, env = "OPTILLM_HOST")]
    pub host: Option<String>,

    /// The port (OptiLLM's flag).
    #[arg(long, env = "OPTILLM_PORT")]
    pub port: Option<u16>,

    /// The OpenAI-compatible backend every call goes to (the gateway by default).
    #[arg(
        long = "base-url",
        alias = "base_url",
        env = "OPTILLM_BASE_URL",
        default_value = "http://127.0.0.1:4000/v1"
    )]
    pub base_url: String,

    /// The backend's key when the client sends none of its own (a client's Bearer goes to the
    /// backend as it is).
    #[arg(long = "backend-key", env = "OPENAI_API_KEY", hide_env_values = true)]
    pub backend_key: Option<String>,

    /// The key clients must send to use this proxy (none: open, which is refused beyond
    /// loopback unless --allow-unauthenticated). Only this: it never switches on any local
    /// inference, as the same variable does in OptiLLM.
    #[arg(
        long = "optillm-api-key",
        alias = "optillm_api_key",
        env = "OPTILLM_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,

    /// Serve beyond loopback without a key.
    #[arg(long)]
    pub allow_unauthenticated: bool,

    /// The approach when the request names none: `auto` reads it from the request (else
    /// `none`), any slug forces it.
    #[arg(long, env = "OPTILLM_APPROACH", default_value = "auto")]
    pub approach: String,

    /// The model when the request names none.
    #[arg(long, env = "OPTILLM_MODEL", default_value = "default")]
    pub model: String,

    /// Choices `re2` asks for and runs `plansearch` makes (OptiLLM's server `--n`).
    #[arg(long, env = "OPTILLM_N", default_value_t = 1)]
    pub n: usize,

    /// Candidates for `bon`.
    #[arg(
        long = "best-of-n",
        alias = "best_of_n",
        env = "OPTILLM_BEST_OF_N",
        default_value_t = 3
    )]
    pub best_of_n: usize,

    /// MCTS simulations.
    #[arg(
        long = "mcts-simulations",
        alias = "mcts_simulations",
        env = "OPTILLM_SIMULATIONS",
        default_value_t = 2
    )]
    pub mcts_simulations: usize,

    /// MCTS exploration weight.
    #[arg(
        long = "mcts-exploration",
        alias = "mcts_exploration",
        env = "OPTILLM_EXPLORATION",
        default_value_t = 0.2
    )]
    pub mcts_exploration: f64,

    /// MCTS depth.
    #[arg(
        long = "mcts-depth",
        alias = "mcts_depth",
        env = "OPTILLM_DEPTH",
        default_value_t = 1
    )]
    pub mcts_depth: usize,

    /// rStar's depth of each rollout.
    #[arg(
        long = "rstar-max-depth",
        alias = "rstar_max_depth",
        env = "OPTILLM_RSTAR_MAX_DEPTH",
        default_value_t = 3
    )]
    pub rstar_max_depth: usize,

    /// rStar's rollouts.
    #[arg(
        long = "rstar-num-rollouts",
        alias = "rstar_num_rollouts",
        env = "OPTILLM_RSTAR_NUM_ROLLOUTS",
        default_value_t = 5
    )]
    pub rstar_num_rollouts: usize,

    /// rStar's exploration constant.
    #[arg(
        long = "rstar-c",
        alias = "rstar_c",
        env = "OPTILLM_RSTAR_C",
        default_value_t = 1.4
    )]
    pub rstar_c: f64,

    /// Keep `cot_reflection`'s `<thinking>` and `<reflection>` in the answer.
    #[arg(
        long = "return-full-response",
        alias = "return_full_response",
        env = "OPTILLM_RETURN_FULL_RESPONSE"
    )]
    pub return_full_response: bool,

    /// The most backend calls one request may make (a request may ask for fewer with
    /// `optillm_max_backend_calls`). When they are spent, the best answer so far is the
    /// answer (`x-optillm-budget: calls`).
    #[arg(long, env = "HOMELAB_OPTILLM_MAX_BACKEND_CALLS", default_value_t = 64)]
    pub max_backend_calls: u64,

    /// How long one request may run (a request may ask for less with `optillm_deadline`, in
    /// seconds). Then the best answer so far is the answer (`x-optillm-budget: deadline`).
    #[arg(long, env = "HOMELAB_OPTILLM_DEADLINE", default_value = "300s", value_parser = duration)]
    pub deadline: Duration,

    /// The most calls to one backend model at a time, over all requests: an approach's
    /// fan-out queues here instead of overloading a local server's slots.
    #[arg(long, env = "HOMELAB_OPTILLM_MAX_CONCURRENT", default_value_t = 4)]
    pub max_concurrent_calls: usize,

    /// The web-fetch tool's MCP endpoint, through which `readurls` reads pages (so its SSRF
    /// guard, robots.txt and size limits apply). Empty: `readurls` is refused.
    #[arg(
        long,
        env = "HOMELAB_WEB_FETCH_URL",
        default_value = "http://127.0.0.1:4020/mcp"
    )]
    pub web_fetch: String,

    /// The web-fetch tool's bearer key, when it wants one.
    #[arg(long, env = "HOMELAB_WEB_FETCH_KEY", hide_env_values = true)]
    pub web_fetch_key: Option<String>,

    /// The most characters `readurls` takes from one page (OptiLLM's 100,000).
    #[arg(long, default_value_t = 100_000)]
    pub readurls_max_chars: usize,

    /// The most pages `readurls` reads for one query.
    #[arg(long, default_value_t = 5)]
    pub readurls_max_pages: usize,

    /// The most `n` a request may ask for.
    #[arg(long, default_value_t = 8)]
    pub max_n: usize,

    /// How long one backend call may take.
    #[arg(long, default_value = "600s", value_parser = duration)]
    pub backend_timeout: Duration,

    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// A configuration for `bind` and `base_url`, everything else at its default (for
    /// `homelab up` and tests).
    pub fn new(bind: &str, base_url: &str) -> Config {
        let mut c = Config::parse_from(["optillm-proxy"]);
        c.bind = bind.to_owned();
        c.base_url = base_url.to_owned();
        c.backend_key = None;
        c.api_key = None;
        c.host = None;
        c.port = None;
        c.approach = "auto".into();
        c.web_fetch_key = None;
        c
    }

    /// The address to listen on, `--host`/`--port` applied.
    pub fn listen_on(&self) -> String {
        let (host, port) = self.bind.rsplit_once(':').unwrap_or((&self.bind, "4002"));
        let host = self.host.as_deref().unwrap_or(host);
        match self.port {
            Some(p) => format!("{host}:{p}"),
            None => format!("{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optillm_spellings_are_accepted() {
        let c = Config::try_parse_from([
            "optillm-proxy",
            "--best_of_n",
            "5",
            "--base_url",
            "http://x/v1",
            "--mcts-depth",
            "3",
            "--port",
            "8000",
            "--return_full_response",
        ])
        .unwrap();
        assert_eq!(c.best_of_n, 5);
        assert_eq!(c.base_url, "http://x/v1");
        assert_eq!(c.mcts_depth, 3);
        assert!(c.return_full_response);
        assert_eq!(c.listen_on(), "127.0.0.1:8000");
    }
}
