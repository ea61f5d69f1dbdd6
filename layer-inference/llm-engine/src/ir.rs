//! The layout of an OpenVINO IR model folder, as OpenVINO GenAI writes it
//! (`openvino_model.xml/.bin`, and here the GGUF it was derived from beside it): which files
//! make the model, which GGUF gives its tokenizer, and its weights' type. Plain file reading,
//! built without the `openvino` feature so that registration and tools can read a folder.

use std::path::{Path, PathBuf};

use crate::error::EngineError;

/// The IR files of a model path: a folder with `openvino_model.xml`/`.bin`, or the `.xml`.
pub fn files(model: &Path) -> Result<(PathBuf, PathBuf), EngineError> {
    let xml = if model.is_dir() {
        model.join("openvino_model.xml")
    } else {
        model.to_owned()
    };
    let bin = xml.with_extension("bin");
    if !xml.is_file() || !bin.is_file() {
        return Err(EngineError::Load(format!(
            "{} is not an OpenVINO IR model: want openvino_model.xml and openvino_model.bin",
            model.display()
        )));
    }
    Ok((xml, bin))
}

/// The GGUF beside the IR that gives the tokenizer and the chat template.
pub fn tokenizer_gguf(model: &Path) -> Result<PathBuf, EngineError> {
    let dir = if model.is_dir() {
        model.to_owned()
    } else {
        model
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_owned)
    };
    let mut ggufs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| EngineError::Load(format!("{}: {e}", dir.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    ggufs.sort();
    match ggufs.len() {
        1 => Ok(ggufs.remove(0)),
        0 => Err(EngineError::Load(format!(
            "{} has no .gguf: the IR folder keeps the GGUF it was derived from, for the tokenizer and chat template",
            dir.display()
        ))),
        n => Err(EngineError::Load(format!(
            "{} has {n} .gguf files; keep only the one the IR was derived from",
            dir.display()
        ))),
    }
}

/// The weights' element type of an IR (`openvino_model.xml`): the type of most constant
/// bytes among the weight types (index constants — `i32`, `i64` — do not count): `int4`,
/// `int8`, `f16`, `bf16` or `f32`.
pub fn weight_type(xml: &str) -> Option<String> {
    let mut bytes: std::collections::BTreeMap<&'static str, u64> = Default::default();
    for tag in xml.split("<data ").skip(1) {
        let tag = format!(" {}", tag.split('>').next().unwrap_or(""));
        let (Some(ty), Some(size)) = (attr(&tag, "element_type"), attr(&tag, "size")) else {
            continue;
        };
        let name = match ty {
            "u4" | "i4" | "nf4" => "int4",
            "u8" | "i8" => "int8",
            "f16" => "f16",
            "bf16" => "bf16",
            "f32" => "f32",
            _ => continue,
        };
        *bytes.entry(name).or_default() += size.parse::<u64>().unwrap_or(0);
    }
    bytes
        .into_iter()
        .max_by_key(|(_, b)| *b)
        .filter(|(_, b)| *b > 0)
        .map(|(n, _)| n.to_owned())
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let rest = &tag[start..];
    Some(&rest[..rest.find('"')?])
}

#[cfg(test)]
mod tests {
    use super::weight_type;

    #[test]
    fn the_weight_type_is_the_one_with_the_most_bytes() {
        let xml = r#"<layer type="Const"><data element_type="i64" shape="1" offset="0" size="80000" /></layer>
            <layer type="Const"><data element_type="u4" shape="576,576" offset="8" size="165888" /></layer>
            <layer type="Const"><data element_type="f16" shape="576,18" offset="9" size="20736" /></layer>
            <layer type="Parameter"><data shape="?,?" element_type="i64" /></layer>"#;
        assert_eq!(weight_type(xml).as_deref(), Some("int4"));
        let f16 = xml.replace("\"u4\"", "\"f32\"").replace("165888", "100");
        assert_eq!(weight_type(&f16).as_deref(), Some("f16"));
        assert_eq!(weight_type("<net></net>"), None);
    }
}
