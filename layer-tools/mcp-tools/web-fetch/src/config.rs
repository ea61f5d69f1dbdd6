//! `web-fetch`'s flags, with their defaults in one place.

use std::time::Duration;

use clap::Parser;
use mcp_kit::McpArgs;

use crate::guard::AllowRule;

/// Default address: loopback, port 4020.
pub const DEFAULT_BIND: &str = "127.0.0.1:4020";
/// The User-Agent sent unless `--user-agent` says otherwise.
pub const USER_AGENT: &str = concat!(
    "homelab-llm-web-fetch/",
    env!("CARGO_PKG_VERSION"),
    " (autonomous model tool; honours robots.txt; robots token homelab-llm)"
);

/// MCP tool server: fetch a web page as Markdown, behind an SSRF guard.
#[derive(Debug, Clone, Parser)]
#[command(name = "web-fetch", version)]
pub struct Config {
    /// Address of the Streamable HTTP transport.
    #[arg(long, env = "HOMELAB_WEB_FETCH_BIND", default_value = DEFAULT_BIND)]
    pub bind: String,

    /// A host name, address or CIDR range a fetch may reach even though it is private
    /// (`nas.lan`, `192.168.1.20`, `10.0.0.0/8`); repeatable. Nothing private is reachable
    /// otherwise.
    #[arg(long = "allow-host", value_name = "HOST_OR_CIDR")]
    pub allow_hosts: Vec<AllowRule>,

    /// Fetch even where robots.txt disallows it.
    #[arg(long)]
    pub ignore_robots_txt: bool,

    /// The User-Agent header sent.
    #[arg(long, default_value = USER_AGENT)]
    pub user_agent: String,

    /// Time limit to connect to a site.
    #[arg(long, default_value = "10s", value_parser = service_kit::config::duration)]
    pub connect_timeout: Duration,

    /// Time limit of a whole fetch (redirects and body included).
    #[arg(long, default_value = "30s", value_parser = service_kit::config::duration)]
    pub timeout: Duration,

    /// Redirects followed at most.
    #[arg(long, default_value_t = 5)]
    pub max_redirects: usize,

    /// Body bytes read at most (after gzip/br decoding); the rest is not read.
    #[arg(long, default_value = "5MiB", value_parser = service_kit::config::size)]
    pub max_bytes: u64,

    #[command(flatten)]
    pub mcp: McpArgs,
}

impl Default for Config {
    /// The flags' defaults (and their environment variables).
    fn default() -> Self {
        Config::parse_from(["web-fetch"])
    }
}
