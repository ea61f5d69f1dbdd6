//! The command line: `tiny-agents run PATH` and `tiny-agents serve PATH…`, with the limits
//! both take. Every limit is explicit.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use service_kit::config::{CommonArgs, duration};

use crate::agent::Limits;

/// The gateway on this machine, where agents send their model calls unless their
/// `endpointUrl` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4000/v1";

/// homelab-llm tiny-agents: agents kept as tiny-agents keeps them (a folder with agent.json
/// and PROMPT.md) run against the gateway and MCP tool servers.
#[derive(Debug, Clone, Parser)]
#[command(name = "tiny-agents", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Chat with an agent in this terminal (history kept across prompts; Ctrl-C stops the
    /// current run, twice exits; Ctrl-D exits).
    Run(RunArgs),
    /// Serve agents as OpenAI-compatible models `agent:NAME`.
    Serve(Config),
}

/// The bounds of a run and where models are, shared by `run` and `serve`.
#[derive(Debug, Clone, Args)]
pub struct RunLimits {
    /// The OpenAI-compatible endpoint of agents whose agent.json has no `endpointUrl`.
    #[arg(long, env = "TINY_AGENTS_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,

    /// The key sent to that endpoint when the agent's agent.json has no `apiKey`.
    #[arg(
        long = "endpoint-key",
        env = "TINY_AGENTS_ENDPOINT_KEY",
        hide_env_values = true
    )]
    pub endpoint_key: Option<String>,

    /// Model turns a run may take, tool turns included.
    #[arg(long, env = "TINY_AGENTS_MAX_TURNS", default_value_t = 10)]
    pub max_turns: usize,

    /// Tool calls a run may make.
    #[arg(long, env = "TINY_AGENTS_MAX_TOOL_CALLS", default_value_t = 30)]
    pub max_tool_calls: usize,

    /// How long a run may take in all.
    #[arg(long, env = "TINY_AGENTS_DEADLINE", default_value = "5m", value_parser = duration)]
    pub deadline: Duration,

    /// The system-docs DB (e.g. `sqlite:///var/lib/homelab/system-docs.db`) where each tool
    /// call becomes a row the monitor shows; without it tool calls are only logged.
    #[arg(long, env = "HOMELAB_DB")]
    pub db: Option<String>,
}

impl Default for RunLimits {
    fn default() -> Self {
        let l = Limits::default();
        RunLimits {
            endpoint: DEFAULT_ENDPOINT.into(),
            endpoint_key: None,
            max_turns: l.max_turns,
            max_tool_calls: l.max_tool_calls,
            deadline: l.deadline,
            db: None,
        }
    }
}

impl RunLimits {
    pub fn limits(&self) -> Limits {
        Limits {
            max_turns: self.max_turns,
            max_tool_calls: self.max_tool_calls,
            deadline: self.deadline,
        }
    }
}

/// `tiny-agents run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The agent: a folder with agent.json (and PROMPT.md or AGENTS.md), or a JSON file.
    pub path: PathBuf,

    #[command(flatten)]
    pub run: RunLimits,
}

/// `tiny-agents serve`: agents as models of an OpenAI-compatible server.
#[derive(Debug, Clone, Parser)]
#[command(name = "tiny-agents serve")]
pub struct Config {
    /// The agents: folders with agent.json, or JSON files; each is the model `agent:NAME`
    /// (NAME: the folder's name or the file's stem).
    #[arg(required = true)]
    pub agents: Vec<PathBuf>,

    /// Address to listen on.
    #[arg(long, env = "TINY_AGENTS_BIND", default_value = "127.0.0.1:4005")]
    pub bind: String,

    /// The key clients must send (`Authorization: Bearer …`); without one the server is
    /// refused beyond loopback unless --allow-unauthenticated.
    #[arg(long = "api-key", env = "TINY_AGENTS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Serve beyond loopback without a key.
    #[arg(long)]
    pub allow_unauthenticated: bool,

    /// Runs served at once; more wait their turn.
    #[arg(long, env = "TINY_AGENTS_MAX_RUNS", default_value_t = 4)]
    pub max_runs: usize,

    #[command(flatten)]
    pub run: RunLimits,

    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// Serving `agents` on `bind` with every other setting at its default.
    pub fn new(agents: Vec<PathBuf>, bind: &str) -> Self {
        Config {
            agents,
            bind: bind.to_owned(),
            api_key: None,
            allow_unauthenticated: false,
            max_runs: 4,
            run: RunLimits::default(),
            common: CommonArgs::default(),
        }
    }
}
