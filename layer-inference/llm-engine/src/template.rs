//! Chat templates: the Jinja template embedded in the GGUF file, rendered with minijinja.

use minijinja::{Environment, Error, ErrorKind, context};

use crate::error::EngineError;
use crate::tokenizer::GgufTokenizer;

/// A message as the template sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TemplateMessage {
    pub role: String,
    pub content: String,
}

/// ChatML, for models without a template of their own.
pub const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<Self, EngineError> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| EngineError::Template(e.to_string()))?;
        Ok(ChatTemplate { env })
    }

    /// The prompt for `messages`, ending with the assistant's turn opened.
    pub fn render(
        &self,
        messages: &[TemplateMessage],
        bos: Option<&str>,
        eos: Option<&str>,
    ) -> Result<String, EngineError> {
        self.render_with(messages, bos, eos, true)
    }

    fn render_with(
        &self,
        messages: &[TemplateMessage],
        bos: Option<&str>,
        eos: Option<&str>,
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        let t = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Template(e.to_string()))?;
        t.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos.unwrap_or(""),
            eos_token => eos.unwrap_or(""),
        })
        .map_err(|e| EngineError::Template(e.to_string()))
    }

    /// The control tokens this template writes right after an assistant message: the
    /// tokens that end the model's turn (`<|im_end|>` in ChatML, `<|eot_id|>` in Llama 3,
    /// `<end_of_turn>` in Gemma). Empty when the template cannot render a sample turn.
    pub fn end_of_turn_ids(&self, tokenizer: &GgufTokenizer) -> Vec<u32> {
        const MARK: &str = "\u{2063}homelab-end-of-turn\u{2063}";
        let turn = |role: &str, content: &str| TemplateMessage {
            role: role.into(),
            content: content.into(),
        };
        let messages = [
            turn("system", "s"),
            turn("user", "u"),
            turn("assistant", MARK),
            turn("user", "v"),
        ];
        let bos = tokenizer.bos.as_deref();
        let eos = tokenizer.eos.as_deref();
        let Ok(text) = self.render_with(&messages, bos, eos, false) else {
            return Vec::new();
        };
        let Some(at) = text.find(MARK) else {
            return Vec::new();
        };
        let Ok(ids) = tokenizer.encode(&text[at + MARK.len()..]) else {
            return Vec::new();
        };
        ids.into_iter()
            .take_while(|id| tokenizer.is_control(*id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders() {
        let t = ChatTemplate::new(CHATML).unwrap();
        let p = t
            .render(
                &[TemplateMessage {
                    role: "user".into(),
                    content: "Hi".into(),
                }],
                None,
                None,
            )
            .unwrap();
        assert_eq!(p, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn templates_can_refuse() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}").unwrap();
        let e = t.render(&[], None, None).unwrap_err();
        assert!(e.to_string().contains("no system role"));
    }
}
