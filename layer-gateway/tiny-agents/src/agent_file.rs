//! An agent as tiny-agents' users keep it: a folder with `agent.json` and an optional
//! `PROMPT.md` (or `AGENTS.md`) as the system prompt, or a single JSON file.
//!
//! The file is checked as a whole before anything starts; a mistake is refused with the file,
//! the field (`servers[1].command`) and the reason. `${input:ID}` in a stdio server's `env`,
//! an HTTP server's `headers` and `apiKey` is resolved as the original resolves it: asked on
//! the terminal, else the environment variable named after the id (`hf-token` → `HF_TOKEN`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::Error;

/// The system prompt's file names, in the order they are looked for (the Python CLI's).
pub const PROMPT_FILES: [&str; 2] = ["PROMPT.md", "AGENTS.md"];

/// The config file of an agent folder.
pub const AGENT_FILE: &str = "agent.json";

/// How an MCP server is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// A process this client starts, speaking newline-delimited JSON-RPC on stdin/stdout.
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<PathBuf>,
    },
    /// Streamable HTTP (one endpoint, POST per message).
    Http {
        url: String,
        headers: BTreeMap<String, String>,
    },
    /// The older HTTP+SSE transport (a GET event stream, POSTs to the endpoint it names).
    Sse {
        url: String,
        headers: BTreeMap<String, String>,
    },
}

/// One entry of `servers`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerDef {
    pub transport: Transport,
    /// Only these of its tools (`allowed_tools`), when given.
    pub allowed_tools: Option<Vec<String>>,
    /// How long connecting and each call may take (`timeout`, seconds), when given.
    pub timeout: Option<Duration>,
}

impl ServerDef {
    /// How the server is named in messages: its command line or URL.
    pub fn label(&self) -> String {
        match &self.transport {
            Transport::Stdio { command, args, .. } => std::iter::once(command.as_str())
                .chain(args.iter().map(String::as_str))
                .map(quote)
                .collect::<Vec<_>>()
                .join(" "),
            Transport::Http { url, .. } => url.clone(),
            Transport::Sse { url, .. } => format!("{url} (sse)"),
        }
    }
}

/// A word of a command line, quoted when a shell would need it.
fn quote(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        w.to_owned()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

/// One entry of `inputs`.
#[derive(Debug, Clone, PartialEq)]
pub struct InputDef {
    pub id: String,
    pub description: String,
    pub password: bool,
}

impl InputDef {
    /// The environment variable read when the input is not typed in: the id upper-cased,
    /// `-` → `_`.
    pub fn env_key(&self) -> String {
        self.id.replace('-', "_").to_uppercase()
    }

    fn placeholder(&self) -> String {
        format!("${{input:{}}}", self.id)
    }
}

/// An agent, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentDef {
    /// The folder's name (or the file's stem): the agent's model id is `agent:NAME`.
    pub name: String,
    /// The JSON file it was read from.
    pub file: PathBuf,
    pub model: String,
    /// The OpenAI-compatible base URL (`None`: the configured default, the gateway).
    pub endpoint_url: Option<String>,
    /// Read and kept, not used: every call goes to `endpoint_url` or the gateway.
    pub provider: Option<String>,
    pub api_key: Option<String>,
    pub inputs: Vec<InputDef>,
    pub servers: Vec<ServerDef>,
    /// The system prompt (`PROMPT.md` or `AGENTS.md`), if the folder has one.
    pub prompt: Option<String>,
    /// A one-line description (`description` in agent.json, else the prompt's first line).
    pub description: Option<String>,
}

/// Reads the agent at `path`: a folder holding `agent.json`, or a JSON file.
pub fn load(path: &Path) -> Result<AgentDef, Error> {
    let (file, prompt) = if path.is_dir() {
        let file = path.join(AGENT_FILE);
        if !file.is_file() {
            return Err(refused(
                &file,
                "",
                "not found: an agent folder holds agent.json",
            ));
        }
        let mut prompt = None;
        for name in PROMPT_FILES {
            let p = path.join(name);
            if p.is_file() {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| refused(&p, "", &format!("cannot be read: {e}")))?;
                prompt = Some(text);
                break;
            }
        }
        (file, prompt)
    } else if path.is_file() {
        (path.to_owned(), None)
    } else {
        return Err(refused(
            path,
            "",
            "no such folder or file (an agent is a folder with agent.json, or a JSON file)",
        ));
    };
    let name = if path.is_dir() {
        path.canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    } else {
        path.file_stem().map(|n| n.to_string_lossy().into_owned())
    }
    .unwrap_or_else(|| "agent".into());
    let text = std::fs::read_to_string(&file)
        .map_err(|e| refused(&file, "", &format!("cannot be read: {e}")))?;
    parse(&name, &file, &text, prompt)
}

/// Checks the text of an agent file.
pub fn parse(
    name: &str,
    file: &Path,
    text: &str,
    prompt: Option<String>,
) -> Result<AgentDef, Error> {
    let no = |field: &str, reason: &str| refused(file, field, reason);
    let v: Value = serde_json::from_str(text).map_err(|e| no("", &format!("not JSON: {e}")))?;
    let Value::Object(top) = v else {
        return Err(no("", "must be a JSON object"));
    };
    for key in top.keys() {
        if !TOP_KEYS.contains(&key.as_str()) {
            tracing::warn!(file = %file.display(), field = %key, "not a field of agent.json; ignored");
        }
    }
    let model = match top.get("model") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) | None => {
            return Err(no(
                "model",
                "required: the model or gateway handle the agent talks to (\"local\")",
            ));
        }
        Some(_) => return Err(no("model", "must be a string")),
    };
    let endpoint_url = opt_string(&top, "endpointUrl", file)?;
    if let Some(u) = &endpoint_url {
        check_url(u).map_err(|r| no("endpointUrl", &r))?;
    }
    let provider = opt_string(&top, "provider", file)?;
    let api_key = opt_string(&top, "apiKey", file)?;
    let description = opt_string(&top, "description", file)?.or_else(|| {
        prompt
            .as_deref()
            .and_then(|p| p.lines().map(str::trim).find(|l| !l.is_empty()))
            .map(|l| l.trim_start_matches('#').trim().to_owned())
    });

    let mut inputs: Vec<InputDef> = Vec::new();
    match top.get("inputs") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = |f: &str| format!("inputs[{i}]{f}");
                let Value::Object(o) = item else {
                    return Err(no(&at(""), "must be an object with `id`"));
                };
                let id = match o.get("id") {
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    _ => return Err(no(&at(".id"), "required: a non-empty string")),
                };
                if inputs.iter().any(|x| x.id == id) {
                    return Err(no(&at(".id"), &format!("`{id}` is defined twice")));
                }
                match o.get("type") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(t)) if t == "promptString" => {}
                    Some(_) => {
                        return Err(no(
                            &at(".type"),
                            "only \"promptString\" inputs exist (asked on the terminal, else read from the environment)",
                        ));
                    }
                }
                let description = match o.get("description") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(_) => return Err(no(&at(".description"), "must be a string")),
                };
                let password = match o.get("password") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(no(&at(".password"), "must be true or false")),
                };
                inputs.push(InputDef {
                    id,
                    description,
                    password,
                });
            }
        }
        Some(_) => return Err(no("inputs", "must be a list")),
    }

    let mut servers = Vec::new();
    match top.get("servers") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                servers.push(server(item, i, file)?);
            }
        }
        Some(_) => return Err(no("servers", "must be a list")),
    }

    // Every `${input:ID}` names a defined input, and stands where the original resolves it.
    let defined = |s: &str, field: &str| -> Result<(), Error> {
        for id in placeholders(s) {
            if !inputs.iter().any(|x| x.id == id) {
                return Err(no(
                    field,
                    &format!("uses ${{input:{id}}}, which `inputs` does not define"),
                ));
            }
        }
        Ok(())
    };
    let nowhere = |s: &str, field: &str| -> Result<(), Error> {
        if !placeholders(s).is_empty() {
            return Err(no(
                field,
                "${input:…} is resolved only in `env`, `headers` and `apiKey` (as tiny-agents resolves it)",
            ));
        }
        Ok(())
    };
    if let Some(k) = &api_key {
        defined(k, "apiKey")?;
    }
    nowhere(&model, "model")?;
    for (i, s) in servers.iter().enumerate() {
        match &s.transport {
            Transport::Stdio {
                command, args, env, ..
            } => {
                nowhere(command, &format!("servers[{i}].command"))?;
                for (j, a) in args.iter().enumerate() {
                    nowhere(a, &format!("servers[{i}].args[{j}]"))?;
                }
                for (k, v) in env {
                    defined(v, &format!("servers[{i}].env.{k}"))?;
                }
            }
            Transport::Http { url, headers } | Transport::Sse { url, headers } => {
                nowhere(url, &format!("servers[{i}].url"))?;
                for (k, v) in headers {
                    defined(v, &format!("servers[{i}].headers.{k}"))?;
                }
            }
        }
    }
    Ok(AgentDef {
        name: name.to_owned(),
        file: file.to_owned(),
        model,
        endpoint_url,
        provider,
        api_key,
        inputs,
        servers,
        prompt,
        description,
    })
}

/// The fields of agent.json this reads (others are warned about and ignored).
const TOP_KEYS: &[&str] = &[
    "model",
    "endpointUrl",
    "provider",
    "apiKey",
    "inputs",
    "servers",
    "description",
    "$schema",
];

fn server(item: &Value, i: usize, file: &Path) -> Result<ServerDef, Error> {
    let at = |f: &str| format!("servers[{i}]{f}");
    let no = |field: &str, reason: &str| refused(file, &at(field), reason);
    let Value::Object(o) = item else {
        return Err(no("", "must be an object with `type`"));
    };
    if o.contains_key("config") {
        return Err(no(
            ".config",
            "the nested `config` form is not read: put `command`, `args`, `url`, … beside `type`",
        ));
    }
    let kind = match o.get("type") {
        Some(Value::String(t)) => t.as_str(),
        None => return Err(no(".type", "required: \"stdio\", \"http\" or \"sse\"")),
        Some(_) => return Err(no(".type", "must be \"stdio\", \"http\" or \"sse\"")),
    };
    let allowed: &[&str] = match kind {
        "stdio" => &["type", "command", "args", "env", "cwd"],
        "http" => &["type", "url", "headers", "terminate_on_close"],
        "sse" => &["type", "url", "headers"],
        other => {
            return Err(no(
                ".type",
                &format!("`{other}` is not a transport: \"stdio\", \"http\" or \"sse\""),
            ));
        }
    };
    for key in o.keys() {
        let common = ["allowed_tools", "timeout", "sse_read_timeout"];
        if !allowed.contains(&key.as_str()) && !common.contains(&key.as_str()) {
            return Err(no(
                &format!(".{key}"),
                &format!(
                    "not a field of a {kind} server (it takes {})",
                    allowed[1..]
                        .iter()
                        .chain(common.iter())
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    let string_map = |key: &str| -> Result<BTreeMap<String, String>, Error> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(no(&format!(".{key}.{k}"), "must be a string")),
                })
                .collect(),
            Some(_) => Err(no(&format!(".{key}"), "must be an object of strings")),
        }
    };
    let transport = match kind {
        "stdio" => {
            let command = match o.get("command") {
                Some(Value::String(c)) if !c.trim().is_empty() => c.clone(),
                _ => {
                    return Err(no(
                        ".command",
                        "required: the program to start (\"npx\", \"uvx\", a path)",
                    ));
                }
            };
            let args = match o.get("args") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .enumerate()
                    .map(|(j, v)| match v {
                        Value::String(s) => Ok(s.clone()),
                        _ => Err(no(&format!(".args[{j}]"), "must be a string")),
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(no(".args", "must be a list of strings")),
            };
            let cwd = match o.get("cwd") {
                None | Some(Value::Null) => None,
                Some(Value::String(c)) => Some(PathBuf::from(c)),
                Some(_) => return Err(no(".cwd", "must be a string")),
            };
            Transport::Stdio {
                command,
                args,
                env: string_map("env")?,
                cwd,
            }
        }
        _ => {
            let url = match o.get("url") {
                Some(Value::String(u)) => u.clone(),
                _ => return Err(no(".url", "required: the server's URL")),
            };
            check_url(&url).map_err(|r| no(".url", &r))?;
            let headers = string_map("headers")?;
            for k in headers.keys() {
                if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                    return Err(no(&format!(".headers.{k}"), "not a valid header name"));
                }
            }
            if kind == "http" {
                Transport::Http { url, headers }
            } else {
                Transport::Sse { url, headers }
            }
        }
    };
    let allowed_tools = match o.get("allowed_tools") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .enumerate()
                .map(|(j, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(no(&format!(".allowed_tools[{j}]"), "must be a string")),
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(_) => return Err(no(".allowed_tools", "must be a list of tool names")),
    };
    let timeout = match o.get("timeout") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(s) if s > 0.0 && s < 86_400.0 => Some(Duration::from_secs_f64(s)),
            _ => return Err(no(".timeout", "must be a number of seconds above 0")),
        },
        Some(_) => return Err(no(".timeout", "must be a number of seconds")),
    };
    Ok(ServerDef {
        transport,
        allowed_tools,
        timeout,
    })
}

fn check_url(u: &str) -> Result<(), String> {
    match url::Url::parse(u) {
        Ok(p) if matches!(p.scheme(), "http" | "https") => Ok(()),
        Ok(p) => Err(format!(
            "`{}` URLs are not served; http or https",
            p.scheme()
        )),
        Err(e) => Err(format!("not a URL: {e}")),
    }
}

fn opt_string(top: &Map<String, Value>, key: &str, file: &Path) -> Result<Option<String>, Error> {
    match top.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(refused(file, key, "must be a string")),
    }
}

/// The ids of the `${input:ID}` in `s`.
fn placeholders(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(at) = rest.find("${input:") {
        let tail = &rest[at + 8..];
        match tail.find('}') {
            Some(end) => {
                out.push(tail[..end].to_owned());
                rest = &tail[end + 1..];
            }
            None => break,
        }
    }
    out
}

fn refused(file: &Path, field: &str, reason: &str) -> Error {
    Error::Agent {
        file: file.display().to_string(),
        field: field.to_owned(),
        reason: reason.to_owned(),
    }
}

impl AgentDef {
    /// The inputs some value uses (the others are skipped, as the original skips them).
    pub fn used_inputs(&self) -> Vec<&InputDef> {
        self.inputs
            .iter()
            .filter(|i| {
                let p = i.placeholder();
                self.api_key.as_deref().is_some_and(|k| k.contains(&p))
                    || self.servers.iter().any(|s| match &s.transport {
                        Transport::Stdio { env, .. } => env.values().any(|v| v.contains(&p)),
                        Transport::Http { headers, .. } | Transport::Sse { headers, .. } => {
                            headers.values().any(|v| v.contains(&p))
                        }
                    })
            })
            .collect()
    }

    /// Puts the inputs' values in place: `typed` is what the user typed for an input (`None`
    /// when not asked, or left empty); then the input's environment variable; else empty.
    /// Returns the inputs that ended up empty.
    pub fn resolve_inputs(
        &mut self,
        mut typed: impl FnMut(&InputDef) -> Option<String>,
    ) -> Vec<InputDef> {
        let mut empty = Vec::new();
        let mut values = Vec::new();
        for input in self.used_inputs() {
            let value = typed(input)
                .filter(|v| !v.is_empty())
                .or_else(|| std::env::var(input.env_key()).ok())
                .unwrap_or_default();
            if value.is_empty() {
                empty.push(input.clone());
            }
            values.push((input.placeholder(), value));
        }
        let put = |s: &mut String| {
            for (p, v) in &values {
                if s.contains(p.as_str()) {
                    *s = s.replace(p.as_str(), v);
                }
            }
        };
        if let Some(k) = &mut self.api_key {
            put(k);
        }
        for s in &mut self.servers {
            match &mut s.transport {
                Transport::Stdio { env, .. } => env.values_mut().for_each(put),
                Transport::Http { headers, .. } | Transport::Sse { headers, .. } => {
                    headers.values_mut().for_each(put)
                }
            }
        }
        empty
    }

    /// What will run and be reached, one line per server, for the user to read before the
    /// first run: the command line (with the names of the variables it gets) or the URL.
    pub fn server_lines(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| {
                let mut line = s.label();
                if let Transport::Stdio { env, cwd, .. } = &s.transport {
                    if !env.is_empty() {
                        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
                        line.push_str(&format!("  (env: {})", keys.join(", ")));
                    }
                    if let Some(c) = cwd {
                        line.push_str(&format!("  (in {})", c.display()));
                    }
                }
                if let Some(t) = &s.allowed_tools {
                    line.push_str(&format!("  (only: {})", t.join(", ")));
                }
                line
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<AgentDef, String> {
        parse("a", Path::new("agent.json"), text, None).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_agent_is_read() {
        let a = check(
            r#"{"model": "local", "endpointUrl": "http://127.0.0.1:4000/v1", "provider": "auto",
                "apiKey": "${input:key}",
                "inputs": [{"type": "promptString", "id": "key", "description": "the key", "password": true}],
                "servers": [
                  {"type": "stdio", "command": "npx", "args": ["-y", "x"], "env": {"T": "${input:key}"}, "cwd": "/tmp"},
                  {"type": "http", "url": "http://127.0.0.1:1/mcp", "headers": {"Authorization": "Bearer ${input:key}"}, "allowed_tools": ["fetch"]},
                  {"type": "sse", "url": "https://example.org/sse", "timeout": 5}
                ]}"#,
        )
        .unwrap();
        assert_eq!(a.servers.len(), 3);
        assert_eq!(a.used_inputs().len(), 1);
        assert_eq!(a.inputs[0].env_key(), "KEY");
        assert_eq!(
            a.servers[1].allowed_tools.as_deref(),
            Some(&["fetch".to_owned()][..])
        );
        assert_eq!(a.servers[2].timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn mistakes_name_the_field() {
        let cases = [
            (r#"{"servers": []}"#, "agent.json: model: required"),
            (r#"{"model": 3}"#, "model: must be a string"),
            (
                r#"{"model": "m", "servers": [{"type": "stdio"}]}"#,
                "servers[0].command: required",
            ),
            (
                r#"{"model": "m", "servers": [{"type": "stdio", "command": "x", "comand": "y"}]}"#,
                "servers[0].comand: not a field of a stdio server",
            ),
            (
                r#"{"model": "m", "servers": [{"type": "stdio", "config": {"command": "x"}}]}"#,
                "servers[0].config: the nested `config` form",
            ),
            (
                r#"{"model": "m", "servers": [{"type": "websocket", "url": "ws://x"}]}"#,
                "servers[0].type: `websocket` is not a transport",
            ),
            (
                r#"{"model": "m", "servers": [{"type": "http", "url": "ftp://x"}]}"#,
                "servers[0].url: `ftp` URLs",
            ),
            (
                r#"{"model": "m", "servers": [{"type": "http", "url": "http://x", "headers": {"A": 1}}]}"#,
                "servers[0].headers.A: must be a string",
            ),
            (
                r#"{"model": "m", "servers": [{"type": "stdio", "command": "x", "env": {"T": "${input:nope}"}}]}"#,
                "servers[0].env.T: uses ${input:nope}, which `inputs` does not define",
            ),
            (
                r#"{"model": "m", "inputs": [{"id": "k"}], "servers": [{"type": "stdio", "command": "x", "args": ["${input:k}"]}]}"#,
                "servers[0].args[0]: ${input:…} is resolved only in",
            ),
            (
                r#"{"model": "m", "inputs": [{"id": "k"}, {"id": "k"}]}"#,
                "inputs[1].id: `k` is defined twice",
            ),
            (r#"[1]"#, "agent.json: must be a JSON object"),
            (r#"{"model": "m",}"#, "agent.json: not JSON"),
        ];
        for (text, want) in cases {
            let got = check(text).expect_err(text);
            assert!(got.contains(want), "{text}: {got}");
        }
    }

    #[test]
    fn inputs_come_from_typing_then_the_environment() {
        let mut a = check(
            r#"{"model": "m", "apiKey": "k-${input:tiny-agents-test-key}",
                "inputs": [{"id": "tiny-agents-test-key"}, {"id": "unused"}],
                "servers": [{"type": "http", "url": "http://x/mcp", "headers": {"Authorization": "Bearer ${input:tiny-agents-test-key}"}}]}"#,
        )
        .unwrap();
        assert_eq!(a.used_inputs().len(), 1);
        let mut b = a.clone();
        let empty = a.resolve_inputs(|_| Some("typed".into()));
        assert!(empty.is_empty());
        assert_eq!(a.api_key.as_deref(), Some("k-typed"));
        // Nothing typed, no variable: empty, and said so.
        let empty = b.resolve_inputs(|_| None);
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0].env_key(), "TINY_AGENTS_TEST_KEY");
        let Transport::Http { headers, .. } = &b.servers[0].transport else {
            unreachable!()
        };
        assert_eq!(headers["Authorization"], "Bearer ");
    }

    #[test]
    fn server_lines_show_what_runs() {
        let a = check(
            r#"{"model": "m", "servers": [{"type": "stdio", "command": "uvx", "args": ["mcp-server-time", "--local-timezone=Europe/Paris", "a b"], "env": {"TOKEN": "x"}}]}"#,
        )
        .unwrap();
        assert_eq!(
            a.server_lines(),
            vec!["uvx mcp-server-time --local-timezone=Europe/Paris 'a b'  (env: TOKEN)"]
        );
    }
}
