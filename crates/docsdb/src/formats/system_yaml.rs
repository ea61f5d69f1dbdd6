//! `system.yaml`: the whole registry in one declarative file.

use crate::error::InputError;
use crate::spec::SystemSpec;

/// Parses the file. Unknown keys are errors naming the line and the field.
pub fn parse(text: &str, file: &str) -> Result<SystemSpec, InputError> {
    serde_yaml_ng::from_str(text).map_err(|e| super::yaml_error(e, file))
}

/// Writes the spec as YAML.
pub fn write(spec: &SystemSpec) -> String {
    let body = serde_yaml_ng::to_string(spec).unwrap_or_default();
    format!("# homelab-llm system registry (homelab registry export --format yaml)\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_line_and_path() {
        let text = "hosts:\n  - name: mini\n    memroy_bytes: 1\n";
        let err = parse(text, "system.yaml").unwrap_err();
        let s = err.to_string();
        assert!(s.starts_with("system.yaml:3: "), "{s}");
        assert!(s.contains("hosts[0]") && s.contains("memroy_bytes"), "{s}");
    }
}
