//! The plan's `chat` section: the checkpoint's chat template with what rendering it needs, as JSON.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What `unicornc compile` stores from the checkpoint's chat template (`tokenizer_config.json`'s
/// `chat_template`, `chat_template.jinja` or `chat_template.json`). The runtime renders it like transformers'
/// `apply_chat_template` does (`unicorn_runtime::chat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatSection {
    /// The Jinja source, as the checkpoint has it.
    pub template: String,
    /// The file it came from (a file name, for messages).
    pub source: String,
    /// The named special tokens a template sees as variables (`bos_token`, `eos_token`, `unk_token`,
    /// `sep_token`, `pad_token`, `cls_token`, `mask_token`: those of tokenizer_config.json that are set), as text.
    #[serde(default)]
    pub special_tokens: BTreeMap<String, String>,
    /// The ids that end a generation: the plan's `spec.eos_token_ids` (generation_config.json's `eos_token_id`,
    /// then config.json's).
    #[serde(default)]
    pub eos_token_ids: Vec<u32>,
}

/// The special tokens transformers passes to a chat template (`SPECIAL_TOKENS_ATTRIBUTES`).
pub const SPECIAL_TOKEN_NAMES: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

/// The template with transformers' `{% generation %}` ... `{% endgeneration %}` tags (its extension that marks
/// the assistant's tokens for training masks; a pass-through when rendering) written as `{% with %}` ...
/// `{% endwith %}`, which Jinja engines without that extension parse: the body renders the same, in a scope of
/// its own as a call block's body has, and the tags' whitespace control (`-`, `+`) is kept.
pub fn without_generation_tags(source: &str) -> std::borrow::Cow<'_, str> {
    if !source.contains("generation") {
        return source.into();
    }
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        let replaced = (|| {
            let body = &tag[2..];
            let (open, body) = match body.as_bytes().first() {
                Some(b'-' | b'+') => (&body[..1], &body[1..]),
                _ => ("", body),
            };
            let body = body.trim_start();
            let (word, body) = if let Some(b) = body.strip_prefix("endgeneration") {
                ("endwith", b)
            } else {
                ("with", body.strip_prefix("generation")?)
            };
            let trimmed = body.trim_start();
            if trimmed.len() == body.len() && !trimmed.starts_with(['-', '+', '%']) {
                return None; // `generationx`: another word
            }
            let (close, after) = match trimmed.as_bytes().first() {
                Some(b'-' | b'+') => (&trimmed[..1], &trimmed[1..]),
                _ => ("", trimmed),
            };
            let after = after.strip_prefix("%}")?;
            Some((format!("{{%{open} {word} {close}%}}"), tag.len() - after.len()))
        })();
        match replaced {
            Some((text, len)) => {
                out.push_str(&text);
                rest = &tag[len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::without_generation_tags as w;

    #[test]
    fn generation_tags_become_with_blocks_keeping_whitespace_control() {
        assert_eq!(w("a{% generation %}b{% endgeneration %}c"), "a{% with %}b{% endwith %}c");
        assert_eq!(w("{%- generation -%}x{%-endgeneration+%}"), "{%- with -%}x{%- endwith +%}");
        assert_eq!(
            w("{% if generation %}{{ generation }}{% endif %}"),
            "{% if generation %}{{ generation }}{% endif %}"
        );
        assert_eq!(w("{% generations %}{% set generation = 1 %}"), "{% generations %}{% set generation = 1 %}");
        assert_eq!(w("no tags {%"), "no tags {%");
    }
}
