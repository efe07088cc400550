//! The OpenAI request bodies: parsed and checked field by field, so every refusal names the field at fault, and
//! the error bodies as OpenAI writes them.

use crate::chat::Message;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// Most stop strings a request may give (as OpenAI allows).
pub const MOST_STOPS: usize = 4;

/// A refusal: the status and an OpenAI-style body (`{"error": {"message", "type", "param", "code"}}`).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
}

impl ApiError {
    /// A 400 naming `param`.
    pub fn bad(param: &str, message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into(), param: Some(param.to_string()) }
    }

    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), param: None }
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": Value::Null}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r =
            (self.status, [(header::CONTENT_TYPE, "application/json")], self.body().to_string()).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }
}

/// Which endpoint a body was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// What the model is given.
#[derive(Debug)]
pub enum Input {
    Prompt(String),
    /// A prompt given as token ids.
    Tokens(Vec<u32>),
    Messages(Vec<Message>),
}

/// A checked request.
#[derive(Debug)]
pub struct Request {
    pub input: Input,
    /// `None`: the endpoint's default (16 for completions, as OpenAI's; the context's end for chat).
    pub max_tokens: Option<u64>,
    pub temperature: f32,
    pub top_p: f32,
    /// 0: no limit.
    pub top_k: u64,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    pub cache_prompt: bool,
}

/// The defaults of `unicorn-rt`'s command line, so a request that sets nothing samples as the CLI does.
pub const DEFAULT_TEMPERATURE: f32 = 0.8;
pub const DEFAULT_TOP_K: u64 = 40;
pub const DEFAULT_TOP_P: f32 = 0.95;

/// The fields of an object, where absent and `null` are alike (as OpenAI takes them).
struct Fields<'a>(&'a Map<String, Value>, &'a str);

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn path(&self, name: &str) -> String {
        if self.1.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.1)
        }
    }

    fn bool(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => {
                v.as_bool().ok_or_else(|| ApiError::bad(&self.path(name), format!("'{name}' must be a boolean")))
            }
        }
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| ApiError::bad(&self.path(name), format!("'{name}' must be a string"))),
        }
    }

    /// A number in `lo..=hi` (or above `lo` when `open_lo`).
    fn number(&self, name: &str, lo: f64, open_lo: bool, hi: f64) -> Result<Option<f64>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        let range =
            if open_lo { format!("greater than {lo} and at most {hi}") } else { format!("between {lo} and {hi}") };
        let bad = || ApiError::bad(&self.path(name), format!("'{name}' must be a number {range}"));
        let x = v.as_f64().ok_or_else(bad)?;
        if x.is_nan() || x > hi || x < lo || (open_lo && x == lo) {
            return Err(bad());
        }
        Ok(Some(x))
    }

    /// An integer in `lo..=hi` (JSON's 3.0 counts as 3, as JSON Schema has it, where the float is exact: a
    /// number beyond 2^53 written with a fraction or exponent, or beyond the 64-bit integers, reads as a float
    /// that may stand for several integers, and is refused).
    fn integer(&self, name: &str, lo: i128, hi: i128) -> Result<Option<i128>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        let bad = || ApiError::bad(&self.path(name), format!("'{name}' must be an integer from {lo} to {hi}"));
        let x = if let Some(x) = v.as_u64() {
            i128::from(x)
        } else if let Some(x) = v.as_i64() {
            i128::from(x)
        } else {
            const EXACT: f64 = (1u64 << 53) as f64;
            match v.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() <= EXACT => f as i128,
                _ => return Err(bad()),
            }
        };
        if x < lo || x > hi {
            return Err(bad());
        }
        Ok(Some(x))
    }
}

/// Parse and check a request body sent to `endpoint`.
pub fn parse(body: &[u8], endpoint: Endpoint) -> Result<Request, ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad("body", format!("the body is not JSON: {e}")))?;
    let Some(o) = v.as_object() else {
        return Err(ApiError::bad("body", "the body must be a JSON object"));
    };
    let f = Fields(o, "");
    f.string("model")?;
    f.string("user")?;
    let input = match endpoint {
        Endpoint::Completions => match f.get("prompt") {
            Some(Value::String(s)) => Input::Prompt(s.clone()),
            Some(Value::Array(ids)) if !ids.is_empty() => Input::Tokens(
                ids.iter()
                    .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
                    .collect::<Option<_>>()
                    .ok_or_else(|| ApiError::bad("prompt", PROMPT_TYPE))?,
            ),
            Some(_) => return Err(ApiError::bad("prompt", PROMPT_TYPE)),
            None => return Err(ApiError::bad("prompt", "'prompt' is required")),
        },
        Endpoint::Chat => Input::Messages(messages(f.get("messages"))?),
    };
    let max_tokens = f.integer("max_tokens", 1, i128::from(u32::MAX))?;
    let max_tokens = match endpoint {
        Endpoint::Chat => max_tokens.or(f.integer("max_completion_tokens", 1, i128::from(u32::MAX))?),
        Endpoint::Completions => max_tokens,
    };
    let temperature = f.number("temperature", 0.0, false, 2.0)?.map_or(DEFAULT_TEMPERATURE, |t| t as f32);
    let top_p = f.number("top_p", 0.0, true, 1.0)?.map_or(DEFAULT_TOP_P, |p| p as f32);
    // top_p was checked above 0, but a tiny one may round to 0 in f32.
    let top_p = top_p.max(f32::MIN_POSITIVE);
    let top_k = f.integer("top_k", 0, i128::from(u32::MAX))?.map_or(DEFAULT_TOP_K, |k| k as u64);
    let seed = f.integer("seed", i128::from(i64::MIN), i128::from(u64::MAX))?.map(|s| s as u64);
    let stop = stops(f.get("stop"))?;
    let stream = f.bool("stream", false)?;
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(so)) => Fields(so, "stream_options").bool("include_usage", false)?,
        Some(_) => return Err(ApiError::bad("stream_options", "'stream_options' must be an object")),
    };
    // One choice per request.
    f.integer("n", 1, 1)?;
    unsupported(&f, endpoint)?;
    Ok(Request {
        input,
        max_tokens: max_tokens.map(|m| m as u64),
        temperature,
        top_p,
        top_k,
        seed,
        stop,
        stream,
        include_usage,
        ignore_eos: f.bool("ignore_eos", false)?,
        cache_prompt: f.bool("cache_prompt", true)?,
    })
}

const PROMPT_TYPE: &str = "'prompt' must be a string or a non-empty array of token ids";

/// Fields OpenAI has that this server does not do: accepted at their neutral values, refused otherwise (rather
/// than ignored, which would answer something other than what was asked).
fn unsupported(f: &Fields, endpoint: Endpoint) -> Result<(), ApiError> {
    for name in ["presence_penalty", "frequency_penalty"] {
        if f.number(name, -2.0, false, 2.0)?.is_some_and(|x| x != 0.0) {
            return Err(ApiError::bad(name, format!("'{name}' is not supported (only 0)")));
        }
    }
    if let Some(b) = f.get("logit_bias") {
        if !b.as_object().is_some_and(Map::is_empty) {
            return Err(ApiError::bad("logit_bias", "'logit_bias' is not supported (only {})"));
        }
    }
    match endpoint {
        Endpoint::Chat => {
            if f.bool("logprobs", false)? {
                return Err(ApiError::bad("logprobs", "'logprobs' is not supported"));
            }
            if f.get("top_logprobs").is_some() {
                return Err(ApiError::bad("top_logprobs", "'top_logprobs' is not supported"));
            }
            if f.get("tools").is_some_and(|t| !t.as_array().is_some_and(Vec::is_empty)) {
                return Err(ApiError::bad("tools", "'tools' is not supported"));
            }
            match f.get("response_format") {
                None => {}
                Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("text") => {}
                Some(_) => {
                    return Err(ApiError::bad("response_format", "'response_format' may only be {\"type\": \"text\"}"))
                }
            }
        }
        Endpoint::Completions => {
            if f.get("logprobs").is_some() {
                return Err(ApiError::bad("logprobs", "'logprobs' is not supported"));
            }
            if f.bool("echo", false)? {
                return Err(ApiError::bad("echo", "'echo' is not supported"));
            }
            if f.string("suffix")?.is_some_and(|s| !s.is_empty()) {
                return Err(ApiError::bad("suffix", "'suffix' is not supported"));
            }
            f.integer("best_of", 1, 1)?;
        }
    }
    Ok(())
}

fn stops(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::bad("stop", format!("'stop' must be a non-empty string or an array of at most {MOST_STOPS} of them"))
    };
    let one = |s: &Value| s.as_str().filter(|s| !s.is_empty()).map(str::to_string).ok_or_else(bad);
    match v {
        None => Ok(Vec::new()),
        Some(s @ Value::String(_)) => Ok(vec![one(s)?]),
        Some(Value::Array(a)) if a.len() <= MOST_STOPS => a.iter().map(one).collect(),
        Some(_) => Err(bad()),
    }
}

/// The roles a message may have.
const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

fn messages(v: Option<&Value>) -> Result<Vec<Message>, ApiError> {
    let Some(v) = v else { return Err(ApiError::bad("messages", "'messages' is required")) };
    let Some(list) = v.as_array().filter(|a| !a.is_empty()) else {
        return Err(ApiError::bad("messages", "'messages' must be a non-empty array"));
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("messages[{i}]");
            let Some(o) = m.as_object() else { return Err(ApiError::bad(&at, format!("'{at}' must be an object"))) };
            let f = Fields(o, &at);
            let role = match f.string("role")? {
                Some(r) if ROLES.contains(&r) => r.to_string(),
                _ => {
                    return Err(ApiError::bad(
                        &f.path("role"),
                        format!("'{at}.role' must be one of {}", ROLES.join(", ")),
                    ))
                }
            };
            f.string("name")?;
            let content = match f.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        let pa = format!("{at}.content[{j}]");
                        let text = p
                            .as_object()
                            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                            .and_then(|p| p.get("text"))
                            .and_then(Value::as_str);
                        text.map(str::to_string).ok_or_else(|| {
                            ApiError::bad(&pa, format!("'{pa}' must be {{\"type\": \"text\", \"text\": STRING}}"))
                        })
                    })
                    .collect::<Result<String, _>>()?,
                None if role == "assistant" => String::new(),
                _ => {
                    return Err(ApiError::bad(
                        &f.path("content"),
                        format!("'{at}.content' must be a string or an array of text parts"),
                    ))
                }
            };
            Ok(Message { role, content })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(body: &str, endpoint: Endpoint) -> (String, String) {
        let e = parse(body.as_bytes(), endpoint).expect_err(body);
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
        (e.param.unwrap_or_default(), e.message)
    }

    #[test]
    fn each_bad_field_is_named() {
        use Endpoint::*;
        for (body, endpoint, param) in [
            ("{", Completions, "body"),
            ("[1]", Completions, "body"),
            ("{}", Completions, "prompt"),
            (r#"{"prompt": 5}"#, Completions, "prompt"),
            (r#"{"prompt": []}"#, Completions, "prompt"),
            (r#"{"prompt": [1, -2]}"#, Completions, "prompt"),
            (r#"{"prompt": ["a", "b"]}"#, Completions, "prompt"),
            (r#"{"prompt": "a", "temperature": "hot"}"#, Completions, "temperature"),
            (r#"{"prompt": "a", "temperature": 2.5}"#, Completions, "temperature"),
            (r#"{"prompt": "a", "top_p": 0}"#, Completions, "top_p"),
            (r#"{"prompt": "a", "top_k": -1}"#, Completions, "top_k"),
            (r#"{"prompt": "a", "max_tokens": 0}"#, Completions, "max_tokens"),
            (r#"{"prompt": "a", "max_tokens": 1.5}"#, Completions, "max_tokens"),
            (r#"{"prompt": "a", "seed": "x"}"#, Completions, "seed"),
            (r#"{"prompt": "a", "seed": -9223372036854775809}"#, Completions, "seed"),
            (r#"{"prompt": "a", "seed": 18446744073709551616}"#, Completions, "seed"),
            (r#"{"prompt": "a", "top_k": 1e300}"#, Completions, "top_k"),
            (r#"{"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}"#, Completions, "stop"),
            (r#"{"prompt": "a", "stop": ""}"#, Completions, "stop"),
            (r#"{"prompt": "a", "stream": 1}"#, Completions, "stream"),
            (r#"{"prompt": "a", "n": 2}"#, Completions, "n"),
            (r#"{"prompt": "a", "echo": true}"#, Completions, "echo"),
            (r#"{"prompt": "a", "model": 3}"#, Completions, "model"),
            (
                r#"{"prompt": "a", "stream_options": {"include_usage": "yes"}}"#,
                Completions,
                "stream_options.include_usage",
            ),
            (r#"{"prompt": "a", "presence_penalty": 1}"#, Completions, "presence_penalty"),
            (r#"{}"#, Chat, "messages"),
            (r#"{"messages": []}"#, Chat, "messages"),
            (r#"{"messages": [1]}"#, Chat, "messages[0]"),
            (r#"{"messages": [{"role": "king", "content": "a"}]}"#, Chat, "messages[0].role"),
            (r#"{"messages": [{"role": "user"}]}"#, Chat, "messages[0].content"),
            (r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#, Chat, "messages[0].content[0]"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "logprobs": true}"#, Chat, "logprobs"),
            (
                r#"{"messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 0}"#,
                Chat,
                "max_completion_tokens",
            ),
        ] {
            let (got, message) = refusal(body, endpoint);
            assert_eq!(got, param, "{body}: {message}");
            let last = param.rsplit('.').next().unwrap();
            let last = last.split('[').next().unwrap();
            assert!(param == "body" || message.contains(last), "{body}: '{message}' does not name {param}");
        }
    }

    #[test]
    fn a_full_request_is_read_and_an_empty_one_takes_the_cli_defaults() {
        let r = parse(
            br#"{"model": "m", "prompt": "hi", "max_tokens": 7, "temperature": 0, "top_p": 0.5, "top_k": 3,
                "seed": -1, "stop": ["x", "yy"], "stream": true, "stream_options": {"include_usage": true},
                "n": 1, "ignore_eos": true, "cache_prompt": false, "user": "u", "frequency_penalty": 0}"#,
            Endpoint::Completions,
        )
        .unwrap();
        assert!(matches!(r.input, Input::Prompt(ref p) if p == "hi"));
        let ids = parse(br#"{"prompt": [1, 5, 4294967295]}"#, Endpoint::Completions).unwrap();
        assert!(matches!(ids.input, Input::Tokens(ref t) if t == &[1, 5, u32::MAX]));
        assert_eq!((r.max_tokens, r.temperature, r.top_p, r.top_k, r.seed), (Some(7), 0.0, 0.5, 3, Some(u64::MAX)));
        assert_eq!(r.stop, ["x", "yy"]);
        assert!(r.stream && r.include_usage && r.ignore_eos && !r.cache_prompt);
        let r = parse(br#"{"prompt": "hi", "max_tokens": null, "seed": 3.0}"#, Endpoint::Completions).unwrap();
        assert_eq!((r.max_tokens, r.temperature, r.top_p, r.top_k), (None, 0.8, 0.95, 40));
        assert_eq!(r.seed, Some(3));
        assert!(!r.stream && r.cache_prompt);
        let r = parse(
            br#"{"messages": [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                "max_completion_tokens": 4}"#,
            Endpoint::Chat,
        )
        .unwrap();
        let Input::Messages(m) = r.input else { panic!("messages") };
        assert_eq!(m[1], Message { role: "user".into(), content: "ab".into() });
        assert_eq!(r.max_tokens, Some(4));
    }
}
