//! Chat templates: the plan's `chat` section (the checkpoint's Jinja template, its special tokens, the stop
//! ids), rendered over a conversation the way transformers' `apply_chat_template` renders it.
//!
//! transformers renders with Jinja2 (`trim_blocks`, `lstrip_blocks`, loop controls) and gives a template
//! `messages`, `add_generation_prompt`, `tools` and `documents` (none here), the tokenizer's named special
//! tokens (`bos_token`, `eos_token`, ...), and the helpers `raise_exception(message)`, `strftime_now(format)` and
//! its own `tojson` filter (`json.dumps`: `", "` and `": "` separators, nothing HTML-escaped; minijinja's is
//! compact and escapes `<`, `>`, `&` and `'`, so this module brings one that writes what Python writes).
//! Python's string and dict methods (`.strip()`, `.startswith()`, `.split()`, `.items()`, ...) come from
//! minijinja-contrib's pycompat. The templates of tests/fixtures/chat_templates render here exactly as in
//! transformers (tests/tests/chat.rs).
//!
//! The rendered text is tokenized without the tokenizer's own special tokens ([`encode`]), as
//! `apply_chat_template(tokenize=True)` does: a template writes its BOS itself.

use crate::model::Model;
use crate::Error;
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{context, Environment, ErrorKind};
use std::collections::BTreeMap;
use unicorn_ir::chat::ChatSection;
use unicorn_ir::container::SectionKind;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A chat template ready to render: the compiled template, its special tokens and the ids that end a turn.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    special_tokens: BTreeMap<String, String>,
    stop_ids: Vec<u32>,
}

/// The name the template is compiled under (shown in error locations).
const NAME: &str = "chat_template";

impl ChatTemplate {
    /// The plan's template, or None if the checkpoint had none.
    pub fn from_model(model: &Model) -> Result<Option<Self>, Error> {
        if model.section(SectionKind::Chat).is_err() {
            return Ok(None);
        }
        Self::from_model_with(model, model.tokenizer()?.as_ref())
    }

    /// [`Self::from_model`] with the plan's tokenizer already loaded (it finds the end-of-turn token).
    pub fn from_model_with(model: &Model, tokenizer: Option<&tokenizers::Tokenizer>) -> Result<Option<Self>, Error> {
        let Ok(bytes) = model.section(SectionKind::Chat) else { return Ok(None) };
        let bad = |e: String| Error::Plan(format!("{}: chat section: {e}", model.path().display()));
        let section: ChatSection = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let mut t = Self::new(&section.template, section.special_tokens, section.eos_token_ids)
            .map_err(|e| bad(e.to_string()))?;
        if let Some(tok) = tokenizer {
            if let Some(id) = t.end_of_turn(tok) {
                if !t.stop_ids.contains(&id) {
                    t.stop_ids.push(id);
                }
            }
        }
        Ok(Some(t))
    }

    /// A template from its source, the special tokens it sees as variables (`bos_token` -> `<s>`, ...) and the
    /// ids that end a turn. Fails if the source does not parse.
    pub fn new(source: &str, special_tokens: BTreeMap<String, String>, stop_ids: Vec<u32>) -> Result<Self, Error> {
        let env = environment(source, None)?;
        Ok(Self { env, source: source.to_string(), special_tokens, stop_ids })
    }

    /// Make `strftime_now` tell this moment (seconds since the Unix epoch, in UTC) instead of the local time
    /// now, so that renders can be compared.
    pub fn set_fixed_time(&mut self, unix_secs: i64) {
        self.env = environment(&self.source, Some(unix_secs)).expect("the template compiled before");
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The named special tokens the template sees.
    pub fn special_tokens(&self) -> &BTreeMap<String, String> {
        &self.special_tokens
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, Error> {
        let messages: Vec<Value> =
            messages.iter().map(|m| context! { role => m.role.as_str(), content => m.content.as_str() }).collect();
        let mut ctx: BTreeMap<String, Value> =
            self.special_tokens.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
        ctx.insert("messages".into(), Value::from(messages));
        ctx.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        let template = self.env.get_template(NAME).expect("added in environment()");
        template.render(Value::from(ctx)).map_err(|e| Error::Input(format!("chat template: {}", one_line(&e))))
    }

    /// Token ids that end an assistant turn (the plan's eos ids plus the template's end-of-turn token where it is a single token, e.g. <|eot_id|>, <|im_end|>, <end_of_turn>).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The special token a template writes right after an assistant's message, if there is one: rendered over
    /// a probe conversation, the text after the assistant's content starts with it.
    fn end_of_turn(&self, tok: &tokenizers::Tokenizer) -> Option<u32> {
        const PROBE: &str = "UnicornProbeAnswer";
        let msgs = [Message::new("user", "Hello"), Message::new("assistant", PROBE)];
        let text = self.render(&msgs, false).ok()?;
        let after = text[text.rfind(PROBE)? + PROBE.len()..].trim_start();
        let id = *encode(tok, after).ok()?.first()?;
        tok.get_added_tokens_decoder().get(&id).filter(|t| t.special).map(|_| id)
    }
}

/// Tokenize a rendered conversation as `apply_chat_template(tokenize=True)` does: without the tokenizer's own
/// special tokens (its post-processor's BOS), since the template writes those it wants. Special tokens in the
/// text (`<|im_start|>`, ...) become their ids.
pub fn encode(tok: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>, Error> {
    Ok(tok
        .encode(text, false)
        .map_err(|e| Error::Input(format!("tokenizing the conversation: {e}")))?
        .get_ids()
        .to_vec())
}

fn one_line(e: &minijinja::Error) -> String {
    e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The Jinja environment transformers renders chat templates in, with the template compiled as [`NAME`].
fn environment(source: &str, fixed_time: Option<i64>) -> Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters"),
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> Result<Value, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
    });
    env.add_function("strftime_now", move |format: String| strftime(&format, fixed_time));
    env.add_filter("tojson", tojson);
    // Jinja2's tests where minijinja's differ: None is not iterable (minijinja iterates it as empty), and a
    // sequence is anything with a length and items (strings and dicts too, and Undefined).
    env.add_test("iterable", |v: &Value| !v.is_none() && v.kind() != ValueKind::Plain && v.try_iter().is_ok());
    env.add_test("sequence", |v: &Value| {
        matches!(
            v.kind(),
            ValueKind::Seq | ValueKind::Iterable | ValueKind::String | ValueKind::Map | ValueKind::Undefined
        )
    });
    env.add_template_owned(NAME, unicorn_ir::chat::without_generation_tags(source).into_owned())
        .map_err(|e| Error::Input(format!("the chat template does not parse: {}", one_line(&e))))?;
    Ok(env)
}

/// C's strftime (what Python's `datetime.strftime` calls) of the local time now, or of `fixed` (Unix seconds)
/// in UTC.
fn strftime(format: &str, fixed: Option<i64>) -> Result<String, minijinja::Error> {
    if format.is_empty() {
        return Ok(String::new());
    }
    let c = std::ffi::CString::new(format)
        .map_err(|_| minijinja::Error::new(ErrorKind::InvalidOperation, "strftime_now: NUL in the format"))?;
    let t: libc::time_t = match fixed {
        Some(s) => s as libc::time_t,
        // SAFETY: time(NULL) only returns the time.
        None => unsafe { libc::time(std::ptr::null_mut()) },
    };
    // SAFETY: tm is plain data, filled by gmtime_r / localtime_r before it is read.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; the _r forms keep no shared state.
    let ok = unsafe {
        if fixed.is_some() {
            !libc::gmtime_r(&t, &mut tm).is_null()
        } else {
            !libc::localtime_r(&t, &mut tm).is_null()
        }
    };
    if !ok {
        return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "strftime_now: the time is out of range"));
    }
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: buf is writable for buf.len() bytes; format is NUL-terminated; tm is initialized.
        let n = unsafe { libc::strftime(buf.as_mut_ptr().cast(), buf.len(), c.as_ptr(), &tm) };
        // 0 means the result did not fit (or is empty): retry larger, up to a bound.
        if n > 0 || buf.len() >= 1 << 16 {
            buf.truncate(n);
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        buf.resize(buf.len() * 4, 0);
    }
}

/// transformers' `tojson` filter: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, its arguments by position (the first two) or by name.
fn tojson(
    value: &Value,
    ensure_ascii: Option<Value>,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, minijinja::Error> {
    let ensure_ascii = kwargs.get::<Option<Value>>("ensure_ascii")?.or(ensure_ascii).is_some_and(|v| v.is_true());
    let indent = match kwargs.get::<Option<Value>>("indent")?.or(indent) {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_str(), v.as_i64()) {
            (Some(s), _) => Some(s.to_string()),
            (None, Some(n)) => Some(" ".repeat(n.max(0) as usize)),
            _ => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: indent is not a number")),
        },
    };
    let (item_sep, key_sep) = match kwargs.get::<Option<Value>>("separators")? {
        Some(v) if !v.is_none() => {
            let part = |i: usize| v.get_item_by_index(i).ok().and_then(|p| p.as_str().map(str::to_string));
            match (part(0), part(1)) {
                (Some(a), Some(b)) => (a, b),
                _ => {
                    return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: separators is not a pair"))
                }
            }
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let sort_keys = kwargs.get::<Option<Value>>("sort_keys")?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let o = JsonOptions { ensure_ascii, indent, item_sep, key_sep, sort_keys };
    let mut out = String::new();
    write_json(value, &o, 0, &mut out)?;
    Ok(Value::from(out))
}

struct JsonOptions {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// Python's `repr(float)`: the shortest digits that read back, exponent form below 1e-4 and from 1e16.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{f:e}"); // shortest round-trip digits: "-1.25e-7"
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

fn json_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn not_serializable(v: &Value) -> minijinja::Error {
    minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("tojson: a value of kind {} is not JSON serializable", v.kind()),
    )
}

fn write_json(v: &Value, o: &JsonOptions, level: usize, out: &mut String) -> Result<(), minijinja::Error> {
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            out.push_str(&ind.repeat(level));
        }
    };
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
        ValueKind::Number => out.push_str(&python_float(f64::try_from(v.clone())?)),
        ValueKind::String => json_string(v.as_str().expect("a string"), o.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            newline(out, level + 1);
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                    newline(out, level + 1);
                }
                write_json(item, o, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in v.try_iter()? {
                let value = v.get_item(&key)?;
                // json.dumps turns keys of other kinds into strings the way it writes them.
                let key = match key.kind() {
                    ValueKind::String => key.as_str().expect("a string").to_string(),
                    ValueKind::None | ValueKind::Bool | ValueKind::Number => {
                        let mut k = String::new();
                        write_json(&key, o, level, &mut k)?;
                        k
                    }
                    _ => return Err(not_serializable(&key)),
                };
                entries.push((key, value));
            }
            if o.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            newline(out, level + 1);
            for (i, (key, value)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                    newline(out, level + 1);
                }
                json_string(key, o.ensure_ascii, out);
                out.push_str(&o.key_sep);
                write_json(value, o, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => return Err(not_serializable(v)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        let special = [("bos_token", "<s>"), ("eos_token", "</s>")];
        ChatTemplate::new(source, special.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), vec![2])
            .unwrap()
    }

    fn render(source: &str, messages: &[Message]) -> Result<String, Error> {
        template(source).render(messages, true)
    }

    #[test]
    fn renders_messages_special_tokens_and_the_generation_prompt() {
        let t = template(
            "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m['content'] }}{{ eos_token }}\n{% endfor %}\
             {% if add_generation_prompt %}<assistant>{% endif %}",
        );
        let msgs = [Message::new("system", "Be brief."), Message::new("user", "Hi")];
        assert_eq!(t.render(&msgs, true).unwrap(), "<s><system>Be brief.</s>\n<user>Hi</s>\n<assistant>");
        assert_eq!(t.render(&msgs, false).unwrap(), "<s><system>Be brief.</s>\n<user>Hi</s>\n");
        assert_eq!(t.stop_ids(), [2]);
        // tools and documents are none, as transformers passes them without tools.
        let tests = "{{ tools is iterable }} {{ 'ab' is sequence }} {{ {} is sequence }} {{ 3 is sequence }} {{ x is iterable }}";
        assert_eq!(render(tests, &[]).unwrap(), "False True True False True");
        assert_eq!(
            render("{{ tools is none }} {{ documents is none }} {{ tools is defined }}", &[]).unwrap(),
            "True True True"
        );
    }

    #[test]
    fn trim_and_lstrip_blocks_as_transformers_sets_them() {
        let src = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n";
        assert_eq!(render(src, &[Message::new("user", "a"), Message::new("user", "b")]).unwrap(), "[a]\n[b]\n");
    }

    #[test]
    fn raise_exception_fails_with_the_templates_message() {
        let src = "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}";
        let e = render(src, &[Message::new("system", "x")]).unwrap_err().to_string();
        assert!(e.contains("System role not supported"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        assert_eq!(render(src, &[Message::new("user", "x")]).unwrap(), "");
    }

    #[test]
    fn python_string_methods_and_loop_controls() {
        let src = "{% for m in messages %}{% if loop.index0 == 2 %}{% break %}{% endif %}\
                   {{ m.content.strip() | upper }}|{{ m.content.split('</think>')[-1].lstrip('\\n') }}|\
                   {{ m.content.startswith(' <think>') }};{% endfor %}";
        let msgs = [
            Message::new("user", " <think>x</think>\n\nanswer "),
            Message::new("user", "b"),
            Message::new("user", "c"),
        ];
        assert_eq!(render(src, &msgs).unwrap(), "<THINK>X</THINK>\n\nANSWER|answer |True;B|b|False;");
    }

    #[test]
    fn strftime_now_formats_the_fixed_time() {
        let mut t = template("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d %H:%M') }}");
        t.set_fixed_time(1_741_529_100); // 2025-03-09 14:05:00 UTC
        assert_eq!(t.render(&[], false).unwrap(), "09 Mar 2025|2025-03-09 14:05");
        // Without a fixed time: today, in this machine's local time.
        let now = template("{{ strftime_now('%Y') }}").render(&[], false).unwrap();
        assert!(now.len() == 4 && now.starts_with('2'), "{now}");
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let r = |src: &str| render(src, &[Message::new("user", "a <b> & \"c\"\n\u{e9}")]).unwrap();
        assert_eq!(r("{{ messages[0] | tojson }}"), r#"{"role": "user", "content": "a <b> & \"c\"\né"}"#);
        assert_eq!(r("{{ messages[0].content | tojson(ensure_ascii=true) }}"), r#""a <b> & \"c\"\n\u00e9""#);
        assert_eq!(
            r("{{ {'b': [1, 2.5, none, true], 'a': {}} | tojson(sort_keys=true) }}"),
            r#"{"a": {}, "b": [1, 2.5, null, true]}"#
        );
        assert_eq!(r("{{ {'b': [1, []]} | tojson(indent=2) }}"), "{\n  \"b\": [\n    1,\n    []\n  ]\n}");
        assert_eq!(r("{{ [1, 'x'] | tojson(separators=(',', ':')) }}"), r#"[1,"x"]"#);
        assert_eq!(python_float(1.0), "1.0");
        assert_eq!(python_float(1e16), "1e+16");
        assert_eq!(python_float(1.5e-5), "1.5e-05");
        assert_eq!(python_float(123.25), "123.25");
        assert_eq!(python_float(0.0001), "0.0001");
        assert!(render("{{ undefined_thing | tojson }}", &[]).is_err());
    }

    #[test]
    fn a_template_that_does_not_parse_is_refused() {
        let e = ChatTemplate::new("{% for m in messages %}", BTreeMap::new(), vec![]).err().unwrap().to_string();
        assert!(e.contains("does not parse"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }
}
