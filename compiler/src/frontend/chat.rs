//! The checkpoint's chat template: found where transformers looks for it, checked to parse, and kept with the
//! special tokens a template reads (see [`unicorn_ir::chat::ChatSection`]).
//!
//! Where the template comes from, first found wins:
//! 1. `chat_template.jinja` (transformers prefers this file to the config's entry);
//! 2. `tokenizer_config.json`'s `chat_template`: a string, or a list of `{"name", "template"}` of which the one
//!    named `default` is taken;
//! 3. `chat_template.json` (`{"chat_template": ...}`, the older file of multimodal processors).
//!
//! The special tokens (`bos_token`, `eos_token`, ...) are read from `tokenizer_config.json`, then
//! `special_tokens_map.json` for those it lacks; each is a string or an AddedToken object (`{"content": ...}`).

use super::{read_optional, utf8, FrontendError};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use unicorn_ir::chat::{ChatSection, SPECIAL_TOKEN_NAMES};

const FIELD: &str = "chat_template";

fn json(path: &Path, bytes: Vec<u8>) -> Result<Value, FrontendError> {
    let text = utf8(path, bytes)?;
    serde_json::from_str(&text).map_err(|e| FrontendError::config(path, "(top level)", format!("not valid JSON ({e})")))
}

/// A `chat_template` value: a string, or a list of named templates (the `default` one is taken).
fn template_of(path: &Path, v: &Value) -> Result<Option<String>, FrontendError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Array(list) => {
            let mut names = Vec::new();
            for (i, t) in list.iter().enumerate() {
                let name = t.get("name").and_then(Value::as_str);
                let template = t.get("template").and_then(Value::as_str);
                let (Some(name), Some(template)) = (name, template) else {
                    return Err(FrontendError::config(
                        path,
                        format!("{FIELD}[{i}]"),
                        "expected an object with a string 'name' and a string 'template'",
                    ));
                };
                if name == "default" {
                    return Ok(Some(template.to_string()));
                }
                names.push(name.to_string());
            }
            Err(FrontendError::config(
                path,
                FIELD,
                format!("a list of templates ({}) with none named 'default'", names.join(", ")),
            ))
        }
        other => {
            Err(FrontendError::config(path, FIELD, format!("expected a string or a list of templates, got {other}")))
        }
    }
}

/// A special token's text: a string, or an AddedToken object's `content`.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Parse the template the way the runtime renders it (trim_blocks, lstrip_blocks, loop controls), so a template
/// that cannot render is refused now, naming its file.
pub(super) fn check_syntax(path: &Path, template: &str) -> Result<(), FrontendError> {
    let mut env = minijinja::Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters"),
    );
    let name = path.file_name().map_or_else(|| FIELD.to_string(), |n| n.to_string_lossy().into_owned());
    env.template_from_named_str(&name, &unicorn_ir::chat::without_generation_tags(template)).map(|_| ()).map_err(|e| {
        let msg = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        FrontendError::config(path, FIELD, format!("the chat template does not parse: {msg}"))
    })
}

/// The chat template beside the weights in `dir`, or `None` when the checkpoint has none. `eos_token_ids`: the
/// spec's. Every file read is added to `inputs`.
pub(super) fn read(
    dir: &Path,
    eos_token_ids: &[u32],
    inputs: &mut Vec<PathBuf>,
) -> Result<Option<ChatSection>, FrontendError> {
    let config_path = dir.join("tokenizer_config.json");
    let config = read_optional(&config_path)?.map(|b| json(&config_path, b)).transpose()?;
    if config.is_some() {
        inputs.push(config_path.clone());
    }

    let jinja_path = dir.join("chat_template.jinja");
    let legacy_path = dir.join("chat_template.json");
    let mut found: Option<(PathBuf, String)> = None;
    if let Some(b) = read_optional(&jinja_path)? {
        inputs.push(jinja_path.clone());
        found = Some((jinja_path.clone(), utf8(&jinja_path, b)?));
    }
    if found.is_none() {
        if let Some(t) = config.as_ref().and_then(|c| c.get(FIELD)) {
            found = template_of(&config_path, t)?.map(|t| (config_path.clone(), t));
        }
    }
    if found.is_none() {
        if let Some(b) = read_optional(&legacy_path)? {
            inputs.push(legacy_path.clone());
            let v = json(&legacy_path, b)?;
            found = template_of(&legacy_path, v.get(FIELD).unwrap_or(&Value::Null))?.map(|t| (legacy_path.clone(), t));
        }
    }
    let Some((path, template)) = found else { return Ok(None) };
    check_syntax(&path, &template)?;

    let mut special_tokens = BTreeMap::new();
    let map_path = dir.join("special_tokens_map.json");
    let map = match read_optional(&map_path)? {
        Some(b) => {
            inputs.push(map_path.clone());
            // Only a fallback for tokens tokenizer_config.json lacks: a broken one is passed over.
            json(&map_path, b).ok()
        }
        None => None,
    };
    for name in SPECIAL_TOKEN_NAMES {
        let text = config
            .as_ref()
            .and_then(|c| c.get(name))
            .and_then(token_text)
            .or_else(|| map.as_ref().and_then(|m| m.get(name)).and_then(token_text));
        if let Some(text) = text {
            special_tokens.insert(name.to_string(), text);
        }
    }
    let source = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    Ok(Some(ChatSection { template, source, special_tokens, eos_token_ids: eos_token_ids.to_vec() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read_dir(files: &[(&str, &str)]) -> Result<Option<ChatSection>, FrontendError> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        read(dir.path(), &[2, 7], &mut Vec::new())
    }

    #[test]
    fn template_from_tokenizer_config_with_added_token_objects() {
        let config = json!({
            "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
            "eos_token": "</s>", "pad_token": null, "unk_token": {"content": "<unk>"},
            "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"
        });
        let c = read_dir(&[("tokenizer_config.json", &config.to_string())]).unwrap().unwrap();
        assert_eq!(c.source, "tokenizer_config.json");
        assert!(c.template.starts_with("{{ bos_token }}"));
        let tokens: Vec<(&str, &str)> = c.special_tokens.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(tokens, [("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>")]);
        assert_eq!(c.eos_token_ids, [2, 7]);
    }

    #[test]
    fn named_templates_take_default_and_files_take_precedence() {
        let config = json!({"chat_template": [
            {"name": "tool_use", "template": "tools"}, {"name": "default", "template": "plain"}]});
        let c = read_dir(&[("tokenizer_config.json", &config.to_string())]).unwrap().unwrap();
        assert_eq!(c.template, "plain");
        // chat_template.jinja wins over the config's entry; chat_template.json is the last resort.
        let c = read_dir(&[("tokenizer_config.json", &config.to_string()), ("chat_template.jinja", "file")]);
        assert_eq!(c.unwrap().unwrap().template, "file");
        let legacy = json!({"chat_template": "legacy"}).to_string();
        let c = read_dir(&[("tokenizer_config.json", r#"{"eos_token": "</s>"}"#), ("chat_template.json", &legacy)]);
        let c = c.unwrap().unwrap();
        assert_eq!((c.template.as_str(), c.source.as_str()), ("legacy", "chat_template.json"));
        assert_eq!(c.special_tokens["eos_token"], "</s>");
        // special_tokens_map.json fills what tokenizer_config.json lacks.
        let c = read_dir(&[
            ("tokenizer_config.json", r#"{"chat_template": "x", "eos_token": "</s>"}"#),
            ("special_tokens_map.json", r#"{"bos_token": "<s>", "eos_token": "<other>"}"#),
        ]);
        let c = c.unwrap().unwrap();
        assert_eq!((c.special_tokens["bos_token"].as_str(), c.special_tokens["eos_token"].as_str()), ("<s>", "</s>"));
    }

    #[test]
    fn no_template_is_none() {
        assert!(read_dir(&[]).unwrap().is_none());
        assert!(read_dir(&[("tokenizer_config.json", r#"{"eos_token": "</s>"}"#)]).unwrap().is_none());
        assert!(read_dir(&[("tokenizer_config.json", r#"{"chat_template": null}"#)]).unwrap().is_none());
    }

    #[test]
    fn malformed_templates_are_one_line_errors_naming_the_file() {
        let config = json!({"chat_template": "{% for m in messages %}\n{{ m.content }}\n"});
        let e = read_dir(&[("tokenizer_config.json", &config.to_string())]).unwrap_err().to_string();
        assert!(e.contains("tokenizer_config.json: chat_template: the chat template does not parse"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        let e = read_dir(&[("chat_template.jinja", "{{ messages[0 }}")]).unwrap_err().to_string();
        assert!(e.contains("chat_template.jinja") && e.contains("does not parse"), "{e}");
        let config = json!({"chat_template": [{"name": "tool_use", "template": "t"}]});
        let e = read_dir(&[("tokenizer_config.json", &config.to_string())]).unwrap_err().to_string();
        assert!(e.contains("none named 'default'"), "{e}");
        let e = read_dir(&[("tokenizer_config.json", r#"{"chat_template": 3}"#)]).unwrap_err().to_string();
        assert!(e.contains("expected a string or a list"), "{e}");
        let e = read_dir(&[("tokenizer_config.json", "{not json")]).unwrap_err().to_string();
        assert!(e.contains("tokenizer_config.json") && e.contains("not valid JSON"), "{e}");
    }
}
