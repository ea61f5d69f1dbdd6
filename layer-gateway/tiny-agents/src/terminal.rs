//! `tiny-agents run PATH`: a chat with one agent in this terminal, as the original's CLI
//! holds it — inputs asked first, the tools it loaded listed, each tool call shown as it
//! happens, the history kept across prompts; Ctrl-C stops the current run, a second Ctrl-C
//! (or Ctrl-D) exits. Before anything starts it prints what the agent will run and reach.

use std::io::Write;
use std::process::ExitCode;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent::{Event, Stop};
use crate::{Error, RunArgs};

/// The prompt shown before each question.
pub const PROMPT: &str = "» ";

/// Writes to the terminal; a closed stdout is not worth a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        let _ = write!(out, $($arg)*);
        let _ = out.flush();
    }};
}

/// The `run` subcommand's `main`.
pub fn main(args: RunArgs) -> ExitCode {
    if let Err(e) = service_kit::telemetry::init(service_kit::config::LogFormat::Text) {
        say!("{e}\n");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            say!("cannot start: {e}\n");
            return ExitCode::FAILURE;
        }
    };
    let ended = runtime.block_on(session(args));
    // The stdin reader blocks in a read no signal ends: leave it to the process's exit rather
    // than wait for a line that may never come (Ctrl-C twice at the prompt).
    runtime.shutdown_background();
    match ended {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say!("{e}\n");
            ExitCode::FAILURE
        }
    }
}

/// Reads lines from stdin on its own task, so that waiting for one can be raced with Ctrl-C.
fn lines() -> mpsc::Receiver<Option<String>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut input = BufReader::new(tokio::io::stdin()).lines();
        loop {
            let line = input.next_line().await.ok().flatten();
            let end = line.is_none();
            if tx.send(line).await.is_err() || end {
                return;
            }
        }
    });
    rx
}

async fn session(args: RunArgs) -> Result<(), Error> {
    let mut def = crate::agent_file::load(&args.path)?;
    let endpoint = def
        .endpoint_url
        .clone()
        .unwrap_or_else(|| args.run.endpoint.clone());
    say!(
        "Agent {} ({}): model `{}` at {}\n",
        def.name,
        def.file.display(),
        def.model,
        endpoint
    );
    if !def.servers.is_empty() {
        say!("It starts or reaches these MCP servers:\n");
        for line in def.server_lines() {
            say!("  {line}\n");
        }
    }
    let mut input = lines();
    let used: Vec<_> = def.used_inputs().into_iter().cloned().collect();
    if !used.is_empty() {
        say!(
            "Some initial inputs are required by the agent. Please provide a value or leave empty to load from env.\n"
        );
        let mut typed = std::collections::HashMap::new();
        for i in &used {
            say!(
                " • {}: {}. (default: load from {}). ",
                i.id,
                i.description,
                i.env_key()
            );
            match input.recv().await.flatten() {
                Some(v) => {
                    typed.insert(i.id.clone(), v.trim().to_owned());
                }
                None => return Ok(()),
            }
        }
        for missing in def.resolve_inputs(|i| typed.get(&i.id).cloned()) {
            say!(
                "No value for '{}' (nor in {}): left empty.\n",
                missing.id,
                missing.env_key()
            );
        }
    }
    let log = crate::tool_log(&args.run).await?;
    let agent = crate::build_agent(def, &args.run, crate::http_client()?, log.clone());
    let (tools, failed) = agent.toolbox.tools().await;
    for e in &failed {
        say!("Left out: {e}\n");
    }
    say!("Agent loaded with {} tools:\n", tools.len());
    for t in &tools {
        say!(" • {}\n", t.name);
    }
    let mut interrupts = signal(SignalKind::interrupt())?;
    let mut history = agent.new_history();
    let mut armed = false; // a first Ctrl-C was pressed
    'session: loop {
        say!("{PROMPT}");
        let line = tokio::select! {
            l = input.recv() => l.flatten(),
            _ = interrupts.recv() => {
                if armed {
                    say!("\nExiting...\n");
                    break;
                }
                armed = true;
                say!("\nInterrupted. Press Ctrl+C again to quit.\n");
                continue;
            }
        };
        let Some(line) = line else {
            say!("\nEOF received, exiting.\n");
            break;
        };
        armed = false;
        if line.trim().is_empty() {
            continue;
        }
        history.push(serde_json::json!({"role": "user", "content": line}));
        let cancel = CancellationToken::new();
        let (tx, mut events) = mpsc::channel(64);
        let rid = service_kit::request_id::generate();
        let run = agent.run(&mut history, &rid, &tx, &cancel);
        tokio::pin!(run);
        let result = loop {
            tokio::select! {
                r = &mut run => break r,
                Some(ev) = events.recv() => show(&ev),
                _ = interrupts.recv() => {
                    if armed {
                        say!("\nExiting...\n");
                        cancel.cancel();
                        break 'session;
                    }
                    armed = true;
                    cancel.cancel();
                    say!("\nInterrupted. Press Ctrl+C again to quit.\n");
                }
            }
        };
        while let Ok(ev) = events.try_recv() {
            show(&ev);
        }
        match result {
            Ok(o) => match o.stop {
                Stop::Answered | Stop::Aborted => say!("\n"),
                Stop::Exit(tool) => say!("\n[{tool}]\n"),
                other => say!("\n[The agent {}.]\n", other.describe()),
            },
            Err(e) => say!("\nError during agent run: {e}\n"),
        }
    }
    agent.toolbox.close().await;
    crate::close_tool_log(log).await;
    Ok(())
}

/// What the terminal shows of an event.
fn show(ev: &Event) {
    match ev {
        Event::Text(t) => say!("{t}"),
        Event::Reasoning(_) => {}
        Event::ToolCall {
            id,
            name,
            arguments,
        } => say!("\n<Tool {id}> {name} {arguments}\n"),
        Event::ToolResult {
            id,
            name,
            content,
            ok,
            elapsed,
        } => {
            let shown: String = content.chars().take(2000).collect();
            let cut = if shown.len() < content.len() {
                "\n…"
            } else {
                ""
            };
            let state = if *ok { "" } else { " (failed)" };
            say!(
                "\nTool[{name}] {id}{state} in {} ms\n{shown}{cut}\n\n",
                elapsed.as_millis()
            );
        }
    }
}
