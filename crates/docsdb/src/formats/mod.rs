//! Registry file formats. Each turns into a [`SystemSpec`]; the DB stays the truth.
//!
//! - `handles.jsonl`: one routing handle per line ([`jsonl`]).
//! - `system.yaml`: hosts, services, endpoints, models and handles ([`system_yaml`]).
//! - A LiteLLM proxy `config.yaml` (`model_list`), so a LiteLLM user can switch ([`litellm`]).
//!
//! [`parse`] detects the format from the content, not the file name.

pub mod jsonl;
pub mod litellm;
pub mod system_yaml;

use crate::error::InputError;
use crate::spec::SystemSpec;
use crate::yaml_lines::LineIndex;

/// The formats we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    HandlesJsonl,
    SystemYaml,
    LitellmConfig,
}

impl Format {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::HandlesJsonl => "handles.jsonl",
            Format::SystemYaml => "system.yaml",
            Format::LitellmConfig => "LiteLLM config.yaml",
        }
    }
}

/// A parsed file: the spec, notes for the operator, and how to find lines again.
#[derive(Debug)]
pub struct Parsed {
    pub format: Format,
    pub spec: SystemSpec,
    /// Things read but not used (LiteLLM settings we do not map, ...).
    pub warnings: Vec<String>,
    locator: Locator,
}

#[derive(Debug)]
enum Locator {
    /// Line of each handle, by index.
    Jsonl(Vec<usize>),
    Yaml(LineIndex),
    None,
}

impl Parsed {
    /// Adds the file name and, where it can be found, the line to an error about `spec`
    /// (whose `field` is a path into the spec such as `handles[1].targets[0].endpoint`).
    pub fn locate(&self, err: InputError, file: &str) -> InputError {
        let mut err = err.in_file(file);
        if err.line.is_some() {
            return err;
        }
        let Some(field) = err.field.clone() else {
            return err;
        };
        match &self.locator {
            Locator::Jsonl(lines) => {
                if let Some((idx, rest)) = split_handle_index(&field)
                    && let Some(line) = lines.get(idx)
                {
                    err.line = Some(*line);
                    err.field = (!rest.is_empty()).then(|| rest.to_owned());
                }
            }
            Locator::Yaml(index) => err.line = index.line_of(&field),
            Locator::None => {}
        }
        err
    }
}

/// `handles[3].targets[0].model` → `(3, "targets[0].model")`.
fn split_handle_index(path: &str) -> Option<(usize, &str)> {
    let rest = path.strip_prefix("handles[")?;
    let close = rest.find(']')?;
    let idx = rest[..close].parse().ok()?;
    let tail = rest[close + 1..].trim_start_matches('.');
    Some((idx, tail))
}

/// Detects the format of `text` and parses it. `file` names the file in errors.
pub fn parse(text: &str, file: &str) -> Result<Parsed, InputError> {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    if first.starts_with('{') && serde_json::from_str::<serde_json::Value>(first).is_ok() {
        let (spec, lines) = jsonl::parse(text, file)?;
        return Ok(Parsed {
            format: Format::HandlesJsonl,
            spec,
            warnings: Vec::new(),
            locator: Locator::Jsonl(lines),
        });
    }
    let value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| yaml_error(e, file))?;
    let is_litellm = value.get("model_list").is_some();
    if is_litellm {
        let (spec, warnings) = litellm::convert(text, file)?;
        return Ok(Parsed {
            format: Format::LitellmConfig,
            spec,
            warnings,
            locator: Locator::None,
        });
    }
    if value.is_null() {
        return Err(InputError::new("the file is empty").in_file(file));
    }
    let spec = system_yaml::parse(text, file)?;
    Ok(Parsed {
        format: Format::SystemYaml,
        spec,
        warnings: Vec::new(),
        locator: Locator::Yaml(LineIndex::new(text)),
    })
}

/// A serde_yaml_ng error as `file:line: path: message`.
pub(crate) fn yaml_error(e: serde_yaml_ng::Error, file: &str) -> InputError {
    let line = e.location().map(|l| l.line());
    let mut msg = e.to_string();
    // The message ends in " at line L column C"; the line goes in front instead.
    if let Some(cut) = msg.rfind(" at line ") {
        msg.truncate(cut);
    }
    let mut err = InputError::new(msg).in_file(file);
    err.line = line;
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_content() {
        let j = parse(
            r#"{"handle":"chat","targets":[{"base_url":"http://127.0.0.1:1/v1","model":"m"}]}"#,
            "x",
        )
        .unwrap();
        assert_eq!(j.format, Format::HandlesJsonl);
        let y = parse("hosts:\n  - name: mini\n", "x").unwrap();
        assert_eq!(y.format, Format::SystemYaml);
        let l = parse("model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/x\n      api_base: http://127.0.0.1:1/v1\n", "x").unwrap();
        assert_eq!(l.format, Format::LitellmConfig);
        assert!(
            parse("", "empty.yaml")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }

    #[test]
    fn handle_paths_split() {
        assert_eq!(
            split_handle_index("handles[3].targets[0].model"),
            Some((3, "targets[0].model"))
        );
        assert_eq!(split_handle_index("handles[0]"), Some((0, "")));
        assert_eq!(split_handle_index("hosts[0]"), None);
    }
}
