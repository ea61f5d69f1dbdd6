//! `POST /v1/embeddings`.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{Extra, Usage};

/// An embeddings request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: EmbeddingInput,
    /// `float` (the default) or `base64` (little-endian f32, what the OpenAI SDK asks for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<EncodingFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `input`: a string, several strings, a token array or several token arrays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenBatches(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    /// How many embeddings the request asks for.
    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::Text(_) | EmbeddingInput::Tokens(_) => 1,
            EmbeddingInput::Texts(v) => v.len(),
            EmbeddingInput::TokenBatches(v) => v.len(),
        }
    }

    /// Whether the request asks for no embedding at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How the vectors are encoded in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    Float,
    Base64,
}

/// An embeddings response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingResponse {
    #[serde(default = "list_object")]
    pub object: String,
    pub data: Vec<Embedding>,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(flatten)]
    pub extra: Extra,
}

fn list_object() -> String {
    "list".to_owned()
}

/// One vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    #[serde(default = "embedding_object")]
    pub object: String,
    pub index: u32,
    pub embedding: EmbeddingVector,
    #[serde(flatten)]
    pub extra: Extra,
}

fn embedding_object() -> String {
    "embedding".to_owned()
}

/// A vector as floats, or as base64 of little-endian `f32`s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

impl EmbeddingVector {
    /// Encodes `values` in the requested format.
    pub fn encode(values: &[f32], format: EncodingFormat) -> Self {
        match format {
            EncodingFormat::Float => EmbeddingVector::Float(values.to_vec()),
            EncodingFormat::Base64 => {
                let bytes: Vec<u8> = values.iter().flat_map(|f| f.to_le_bytes()).collect();
                EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        }
    }

    /// The floats, decoding base64 if needed. `None` if the base64 is malformed or its length
    /// is not a multiple of four bytes.
    pub fn to_floats(&self) -> Option<Vec<f32>> {
        match self {
            EmbeddingVector::Float(v) => Some(v.clone()),
            EmbeddingVector::Base64(s) => {
                let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
                if bytes.len() % 4 != 0 {
                    return None;
                }
                Some(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_forms() {
        for (src, n) in [
            (r#""a""#, 1),
            (r#"["a","b"]"#, 2),
            ("[1,2]", 1),
            ("[[1],[2],[3]]", 3),
        ] {
            let i: EmbeddingInput = serde_json::from_str(src).unwrap();
            assert_eq!(i.len(), n, "{src}");
            assert_eq!(serde_json::to_string(&i).unwrap(), src);
        }
    }

    #[test]
    fn base64_round_trip_matches_openai_layout() {
        let v = [1.0f32, -2.5, 0.125];
        let enc = EmbeddingVector::encode(&v, EncodingFormat::Base64);
        // 1.0f32 little-endian is 00 00 80 3f.
        let EmbeddingVector::Base64(s) = &enc else {
            panic!("not base64")
        };
        assert!(s.starts_with("AACAPw"), "{s}");
        assert_eq!(enc.to_floats().unwrap(), v);
        assert_eq!(EmbeddingVector::Base64("AAA=".into()).to_floats(), None);
    }
}
