//! A tokenizer built from the vocabulary in a GGUF file (GPT-2 style byte-level BPE, which
//! SmolLM2, Qwen and Llama 3 use), with the file's control tokens as special tokens.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::EngineError;

/// Token names that end a turn in the chat formats we know (ChatML, Llama 3, Phi, Gemma,
/// DeepSeek, gpt-oss, ...), as llama.cpp's end-of-generation list has them.
const END_OF_TURN_NAMES: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|return|>",
    "<|call|>",
    "<EOT>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
];

/// How text is split into words before BPE, as llama.cpp does for the file's
/// `tokenizer.ggml.pre`: Qwen2's and Llama 3's regexes (digits one at a time or up to three),
/// SmolLM's (digits one at a time, then GPT-2's), else GPT-2's.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, EngineError> {
    let byte_level = |regex| ByteLevel::new(false, true, regex);
    let split = |re: &str| {
        Split::new(
            SplitPattern::Regex(re.to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| EngineError::Load(format!("tokenizer: {e}")))
    };
    Ok(match pre {
        "qwen2" | "deepseek-r1-qwen" => {
            Sequence::new(vec![split(QWEN2_SPLIT)?.into(), byte_level(false).into()]).into()
        }
        "llama-bpe" | "llama3" => {
            Sequence::new(vec![split(LLAMA3_SPLIT)?.into(), byte_level(false).into()]).into()
        }
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into(),
        _ => byte_level(true).into(),
    })
}

/// The tokenizer and the ids that end a turn.
pub struct GgufTokenizer {
    pub inner: Tokenizer,
    /// Ids that end generation (EOS, EOT, and the chat end-of-turn tokens).
    pub stop_ids: Vec<u32>,
    /// Control tokens (chat markup such as `<|im_start|>`), sorted.
    pub control_ids: Vec<u32>,
    pub bos: Option<String>,
    pub eos: Option<String>,
}

fn strings(ct: &Content, key: &str) -> Result<Vec<String>, EngineError> {
    let v = ct
        .metadata
        .get(key)
        .ok_or_else(|| EngineError::Load(format!("no {key} in the file")))?;
    v.to_vec()
        .map_err(|e| EngineError::Load(format!("{key}: {e}")))?
        .iter()
        .map(|x| {
            x.to_string()
                .cloned()
                .map_err(|e| EngineError::Load(format!("{key}: {e}")))
        })
        .collect()
}

fn u32_of(ct: &Content, key: &str) -> Option<u32> {
    ct.metadata.get(key).and_then(|v| v.to_u32().ok())
}

impl GgufTokenizer {
    pub fn from_gguf(ct: &Content) -> Result<Self, EngineError> {
        let model = ct
            .metadata
            .get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_default();
        if model != "gpt2" {
            return Err(EngineError::UnsupportedTokenizer(model));
        }
        let tokens = strings(ct, "tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings(ct, "tokenizer.ggml.merges")?
            .into_iter()
            .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
            .collect();
        let types: Vec<i64> = match ct.metadata.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.to_i32().map(i64::from).unwrap_or(1))
                .collect(),
            _ => Vec::new(),
        };
        let mut vocab = Vocab::default();
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert(t.clone(), i as u32);
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| EngineError::Load(format!("tokenizer: {e}")))?;
        let mut tk = Tokenizer::new(bpe);
        let pre = ct
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_default();
        tk.with_pre_tokenizer(Some(pre_tokenizer(&pre)?));
        tk.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        // Control tokens (type 3) are matched whole in text, as chat templates write them.
        let specials: Vec<AddedToken> = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| types.get(*i) == Some(&3))
            .map(|(_, t)| AddedToken::from(t.clone(), true))
            .collect();
        tk.add_special_tokens(specials)
            .map_err(|e| EngineError::Load(format!("tokenizer: {e}")))?;
        // User-defined tokens (type 4: Qwen2.5's `<tool_call>` and `</tool_call>`) are matched
        // whole too, as llama.cpp does, but are text: an answer's `<tool_call>` comes back.
        let user_defined: Vec<AddedToken> = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| types.get(*i) == Some(&4))
            .map(|(_, t)| AddedToken::from(t.clone(), false))
            .collect();
        tk.add_tokens(user_defined)
            .map_err(|e| EngineError::Load(format!("tokenizer: {e}")))?;
        let name = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).cloned());
        let eos_id = u32_of(ct, "tokenizer.ggml.eos_token_id");
        let mut stop_ids: Vec<u32> = [
            eos_id,
            u32_of(ct, "tokenizer.ggml.eot_token_id"),
            u32_of(ct, "tokenizer.ggml.eom_token_id"),
        ]
        .into_iter()
        .flatten()
        .collect();
        for end in END_OF_TURN_NAMES {
            if let Some(i) = tokens.iter().position(|t| t == end) {
                stop_ids.push(i as u32);
            }
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let control_ids: Vec<u32> = (0..tokens.len())
            .filter(|i| types.get(*i) == Some(&3))
            .map(|i| i as u32)
            .collect();
        Ok(GgufTokenizer {
            inner: tk,
            stop_ids,
            control_ids,
            bos: name(u32_of(ct, "tokenizer.ggml.bos_token_id")),
            eos: name(eos_id),
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| EngineError::Tokenize(e.to_string()))
    }

    /// The ids of the tokens whose text holds any of `chars` (sorted).
    pub fn ids_containing(&self, chars: &[char]) -> Vec<u32> {
        let n = self.inner.get_vocab_size(true) as u32;
        (0..n)
            .filter(|id| !self.is_control(*id))
            .filter(|id| {
                self.inner
                    .decode(&[*id], false)
                    .is_ok_and(|t| t.contains(chars))
            })
            .collect()
    }

    /// Whether `id` is a control token (chat markup, never text).
    pub fn is_control(&self, id: u32) -> bool {
        self.control_ids.binary_search(&id).is_ok()
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| EngineError::Tokenize(e.to_string()))
    }
}
