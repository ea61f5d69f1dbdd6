//! `handles.jsonl`: one routing handle per line.
//!
//! ```text
//! {"handle":"chat","strategy":"priority","targets":[{"base_url":"http://127.0.0.1:4010/v1","model":"qwen2.5-0.5b"},{"endpoint":"studio-mlx","model":"mlx-community/Qwen2.5-7B-Instruct-4bit","priority":1}]}
//! ```
//! Blank lines and lines starting with `#` or `//` are skipped.

use crate::error::InputError;
use crate::spec::{HandleSpec, SystemSpec};

/// Parses the file; returns the spec and the line of each handle.
pub fn parse(text: &str, file: &str) -> Result<(SystemSpec, Vec<usize>), InputError> {
    let mut spec = SystemSpec::default();
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with("//") {
            continue;
        }
        let de = &mut serde_json::Deserializer::from_str(t);
        let handle: HandleSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let mut msg = inner.to_string();
            if let Some(cut) = msg.rfind(" at line ") {
                msg.truncate(cut);
            }
            let mut err = InputError::new(msg).in_file(file).line(n);
            if path != "." && !path.is_empty() {
                err = err.field(path);
            }
            err
        })?;
        spec.handles.push(handle);
        lines.push(n);
    }
    Ok((spec, lines))
}

/// Writes handles, one per line.
pub fn write(handles: &[HandleSpec]) -> String {
    let mut out = String::new();
    for h in handles {
        // A derived Serialize of strings, numbers and maps cannot fail.
        if let Ok(line) = serde_json::to_string(h) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = "{\"handle\":\"a\",\"targets\":[]}\n\n{\"handle\":\"b\",\"targets\":[{\"endpoint\":\"e\",\"model\":\"m\",\"wieght\":2}]}\n";
        let err = parse(text, "handles.jsonl").unwrap_err();
        let s = err.to_string();
        assert!(s.starts_with("handles.jsonl:3: targets[0]"), "{s}");
        assert!(s.contains("unknown field `wieght`"), "{s}");
    }

    #[test]
    fn malformed_json_names_the_line() {
        let err = parse(
            "{\"handle\":\"a\",\"targets\":[]}\n{\"handle\": }\n",
            "h.jsonl",
        )
        .unwrap_err();
        assert_eq!(err.line, Some(2));
    }
}
