//! `unicorn-rt PLAN --serve`: an OpenAI-compatible HTTP server with continuous batching and a prompt cache.
//!
//! Endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (both streaming as server-sent events ending
//! with `data: [DONE]`, or not), `GET /v1/models`, `GET /health`, and `GET /openapi.json`, the OpenAPI 3.1
//! document of exactly what the server accepts (with the plan's own bounds; the chat endpoint only where the
//! plan has a chat template).
//!
//! Every refusal is an OpenAI error body (`{"error": {"message", "type", "param", "code"}}`): 400 naming the
//! field at fault (a prompt beyond the context names `prompt` or `messages`), 503 with `Retry-After` when
//! every slot is busy and [`QUEUE_PER_SLOT`] requests per slot wait, 404 and 405 for unknown routes.
//! Extensions beside OpenAI's fields: `top_k`, `ignore_eos`, `cache_prompt` (default true), a prompt of token
//! ids, and a `timings` object (queue, prompt and decode times; prompt tokens run and found in the cache).
//!
//! The HTTP side runs on a single-threaded tokio runtime: a handler checks and tokenizes its request, hands it
//! to the engine and turns the token ids that come back into text (stop strings are cut there). The engine
//! ([`engine`]) is one thread owning the executor and every slot; it advances all active requests together.

mod api;
mod engine;
mod text;

use api::{ApiError, Endpoint, Input, Request};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use engine::{Engine, Event, Finish, Job};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use text::{Detokenizer, StopText};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::sampler::SamplerOptions;
use crate::{chat, Error, Model};

/// Requests that may wait for a slot, per slot; past that (every slot busy and this many waiting) a request
/// is answered 503.
pub const QUEUE_PER_SLOT: usize = 4;

/// Most slots: one decode execution advances at most [`crate::executor::MAX_BATCH`] sequences.
pub const MOST_SLOTS: usize = crate::executor::MAX_BATCH;

pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    /// Slots: requests generated at once (1 ..= [`MOST_SLOTS`]).
    pub parallel: usize,
    /// Prefill chunk (the plan's when `None`).
    pub prefill_chunk: Option<usize>,
}

/// What the engine publishes for `/health`.
#[derive(Default)]
pub struct Status {
    pub busy: AtomicUsize,
    pub queued: AtomicUsize,
}

struct Shared {
    model_id: String,
    created: u64,
    openapi: String,
    tokenizer: tokenizers::Tokenizer,
    template: Option<chat::ChatTemplate>,
    eos: Vec<u32>,
    ctx: usize,
    vocab: usize,
    slots: usize,
    jobs: std::sync::mpsc::Sender<Job>,
    status: Arc<Status>,
    /// Requests accepted and not yet answered in full.
    in_flight: AtomicUsize,
    next_id: AtomicU64,
}

type AppState = Arc<Shared>;

/// Serve `model` until the process is stopped; returns only when the server cannot start (a one-line error:
/// the address, the slots' memory, a plan without a tokenizer).
pub fn serve(model: &Model, o: ServeOptions) -> Result<(), Error> {
    if !(1..=MOST_SLOTS).contains(&o.parallel) {
        return Err(Error::Input(format!("--parallel {} is outside 1..={MOST_SLOTS}", o.parallel)));
    }
    let tokenizer = model
        .tokenizer()?
        .ok_or_else(|| Error::Input(format!("{}: --serve needs a plan with a tokenizer", model.path().display())))?;
    let template = chat::ChatTemplate::from_model_with(model, Some(&tokenizer))?;
    let spec = &model.header().spec;
    let addr = format!("{}:{}", o.host, o.port);
    let listener = std::net::TcpListener::bind(&addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| Error::Input(format!("--host/--port {addr}: {e}")))?;
    let local = listener.local_addr().map_err(|e| Error::Input(format!("--host/--port {addr}: {e}")))?;
    let status = Arc::new(Status::default());
    let (jobs, job_rx) = std::sync::mpsc::channel();
    let model_id = model.path().file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let shared = Arc::new(Shared {
        model_id,
        openapi: openapi_for(spec.vocab_size, spec.max_context, template.is_some()),
        created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        tokenizer,
        template,
        eos: spec.eos_token_ids.clone(),
        ctx: spec.max_context,
        vocab: spec.vocab_size,
        slots: o.parallel,
        jobs,
        status: status.clone(),
        in_flight: AtomicUsize::new(0),
        next_id: AtomicU64::new(1),
    });
    std::thread::scope(|scope| {
        let (ready, started) = std::sync::mpsc::channel();
        scope.spawn(move || match Engine::new(model, o.parallel, o.prefill_chunk, status) {
            Ok(engine) => {
                let _ = ready.send(Ok(()));
                engine.run(job_rx)
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        });
        started.recv().map_err(|_| Error::Plan("the engine thread stopped".into()))??;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Input(format!("the server's runtime: {e}")))?;
        eprintln!(
            "unicorn-rt: serving {} on http://{local} ({} slots of {} positions)",
            shared.model_id, o.parallel, shared.ctx
        );
        let app = router(shared);
        let served = rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            axum::serve(listener, app).await
        });
        // The runtime's tasks hold the engine's senders: once they are gone, the engine returns.
        drop(rt);
        served.map_err(|e| Error::Input(format!("serving on {local}: {e}")))
    })
}

fn router(shared: AppState) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint (see /openapi.json)") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint (see /openapi.json)")
        })
        .with_state(shared)
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

async fn health(State(st): State<AppState>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "slots": st.slots,
            "slots_busy": st.status.busy.load(Ordering::Relaxed),
            "queued": st.status.queued.load(Ordering::Relaxed),
            "in_flight": st.in_flight.load(Ordering::Relaxed),
        }),
    )
}

async fn models(State(st): State<AppState>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [{
            "id": st.model_id, "object": "model", "created": st.created, "owned_by": "unicorn",
            "context_length": st.ctx,
        }]}),
    )
}

async fn openapi(State(st): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], st.openapi.clone()).into_response()
}

/// The OpenAPI 3.1 document of the endpoints, for any plan ([`openapi_for`] puts a plan's bounds in).
pub const OPENAPI: &str = include_str!("openapi.json");

/// [`OPENAPI`] for a plan of `vocab` tokens and `ctx` positions: a prompt of token ids holds at most `ctx` ids
/// below `vocab`; without a chat template there is no chat endpoint to speak of (it answers every request 400).
pub fn openapi_for(vocab: usize, ctx: usize, chat: bool) -> String {
    let mut doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    let ids = &mut doc["components"]["schemas"]["CompletionRequest"]["properties"]["prompt"]["oneOf"][1];
    ids["maxItems"] = json!(ctx);
    ids["items"]["maximum"] = json!(vocab.saturating_sub(1));
    if !chat {
        if let Some(paths) = doc["paths"].as_object_mut() {
            paths.remove("/v1/chat/completions");
        }
    }
    doc.to_string()
}

async fn completions(State(st): State<AppState>, body: Bytes) -> Response {
    respond(st, &body, Endpoint::Completions).await.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(State(st): State<AppState>, body: Bytes) -> Response {
    respond(st, &body, Endpoint::Chat).await.unwrap_or_else(IntoResponse::into_response)
}

/// Counts a request in flight until dropped.
struct InFlight(AppState);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request turned into the engine's terms.
struct Prepared {
    prompt: Vec<u32>,
    /// Ids that end the generation; none of them is shown as text.
    stop_ids: Vec<u32>,
    max_tokens: usize,
}

impl Shared {
    fn prepare(&self, r: &Request) -> Result<Prepared, ApiError> {
        let (field, prompt, mut stop_ids) = match &r.input {
            // With the tokenizer's special tokens (its BOS), as `unicorn-rt --prompt` tokenizes.
            Input::Prompt(p) => {
                let enc = self
                    .tokenizer
                    .encode(p.as_str(), true)
                    .map_err(|e| ApiError::bad("prompt", format!("'prompt' does not tokenize: {e}")))?;
                ("prompt", enc.get_ids().to_vec(), Vec::new())
            }
            Input::Tokens(t) => ("prompt", t.clone(), Vec::new()),
            Input::Messages(m) => {
                let Some(t) = &self.template else {
                    return Err(ApiError::bad(
                        "messages",
                        "'messages' needs a chat template, which this plan has none of: use /v1/completions",
                    ));
                };
                let text = t.render(m, true).map_err(|e| ApiError::bad("messages", format!("'messages': {e}")))?;
                let ids = chat::encode(&self.tokenizer, &text).map_err(|e| ApiError::bad("messages", e.to_string()))?;
                ("messages", ids, t.stop_ids().to_vec())
            }
        };
        if prompt.is_empty() {
            return Err(ApiError::bad(field, format!("'{field}' is empty")));
        }
        if prompt.len() > self.ctx {
            return Err(ApiError::bad(
                field,
                format!("'{field}' has {} tokens but the model's context is {} tokens", prompt.len(), self.ctx),
            ));
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(ApiError::bad(field, format!("'{field}' has token id {bad}, beyond the model's vocabulary")));
        }
        // The model's end-of-sequence ids, and a chat template's end of turn: none of them with ignore_eos.
        stop_ids.extend_from_slice(&self.eos);
        if r.ignore_eos {
            stop_ids.clear();
        }
        let default = match r.input {
            Input::Prompt(_) | Input::Tokens(_) => 16,
            Input::Messages(_) => self.ctx,
        };
        let max_tokens = r.max_tokens.map_or(default, |m| m.min(self.ctx as u64) as usize);
        Ok(Prepared { prompt, stop_ids, max_tokens })
    }
}

async fn respond(st: AppState, body: &[u8], endpoint: Endpoint) -> Result<Response, ApiError> {
    let r = api::parse(body, endpoint)?;
    let p = st.prepare(&r)?;
    let limit = st.slots * (1 + QUEUE_PER_SLOT);
    if st.in_flight.fetch_add(1, Ordering::Relaxed) >= limit {
        st.in_flight.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server is full ({} slots busy, {} requests waiting): try again later",
                st.slots,
                limit - st.slots
            ),
        ));
    }
    let guard = InFlight(st.clone());
    let id = st.next_id.fetch_add(1, Ordering::Relaxed);
    let seed = r.seed.unwrap_or_else(|| {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        t ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    });
    // A top-k of the whole vocabulary or more is no limit.
    let top_k = if r.top_k >= st.vocab as u64 { 0 } else { r.top_k as usize };
    let (events, rx) = unbounded_channel();
    let job = Job {
        prompt: p.prompt.clone(),
        max_tokens: p.max_tokens,
        sampling: SamplerOptions { temperature: r.temperature, top_k, top_p: r.top_p, seed },
        stop_ids: p.stop_ids.clone(),
        cache_prompt: r.cache_prompt,
        events,
    };
    if st.jobs.send(job).is_err() {
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the engine has stopped"));
    }
    let prefix = match endpoint {
        Endpoint::Completions => "cmpl",
        Endpoint::Chat => "chatcmpl",
    };
    let reply = Reply {
        id: format!("{prefix}-{id:x}"),
        created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        endpoint,
        include_usage: r.include_usage,
        out: Output::new(&p, r.stop),
        rx: Some(rx),
        pending: VecDeque::new(),
        over: false,
        submitted: Instant::now(),
        _guard: guard,
        st,
    };
    Ok(if r.stream { reply.stream() } else { reply.whole().await })
}

/// The text of one generation as the token ids come in.
struct Output {
    detok: Detokenizer,
    stop: StopText,
    stop_ids: Vec<u32>,
    prompt_tokens: usize,
    completion_tokens: usize,
    cached: usize,
    finish: Option<&'static str>,
    started: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

impl Output {
    fn new(p: &Prepared, stops: Vec<String>) -> Self {
        Self {
            detok: Detokenizer::new(&p.prompt),
            stop: StopText::new(stops),
            stop_ids: p.stop_ids.clone(),
            prompt_tokens: p.prompt.len(),
            completion_tokens: 0,
            cached: 0,
            finish: None,
            started: None,
            first_token: None,
            last_token: None,
        }
    }

    fn usage(&self, submitted: Instant) -> (Value, Value) {
        let ms = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64() * 1e3,
            _ => 0.0,
        };
        let predicted_ms = ms(self.first_token, self.last_token);
        let usage = json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        });
        let timings = json!({
            "queued_ms": ms(Some(submitted), self.started),
            "cache_n": self.cached,
            "prompt_n": self.prompt_tokens - self.cached,
            "prompt_ms": ms(self.started, self.first_token),
            "predicted_n": self.completion_tokens,
            "predicted_ms": predicted_ms,
            "predicted_per_second": if predicted_ms > 0.0 {
                (self.completion_tokens.saturating_sub(1)) as f64 / predicted_ms * 1e3
            } else {
                0.0
            },
        });
        (usage, timings)
    }
}

/// What an engine event means for the reply.
enum Step {
    Text(String),
    /// The generation is over; the text held back, if any, comes with it.
    End(String),
    Failed(String),
}

/// One request's answer, built from its engine events.
struct Reply {
    st: AppState,
    id: String,
    created: u64,
    endpoint: Endpoint,
    include_usage: bool,
    out: Output,
    /// `None` once the engine need send no more (dropping it frees the slot).
    rx: Option<UnboundedReceiver<Event>>,
    /// Server-sent events ready to go.
    pending: VecDeque<String>,
    over: bool,
    submitted: Instant,
    _guard: InFlight,
}

impl Reply {
    /// The next step of the generation, or `None` when the engine went away without a word.
    async fn next_step(&mut self) -> Option<Step> {
        loop {
            let ev = self.rx.as_mut()?.recv().await?;
            let now = Instant::now();
            let o = &mut self.out;
            match ev {
                Event::Started { cached } => {
                    o.cached = cached;
                    o.started = Some(now);
                }
                Event::Token(id) => {
                    o.completion_tokens += 1;
                    o.first_token.get_or_insert(now);
                    o.last_token = Some(now);
                    if o.stop_ids.contains(&id) {
                        continue;
                    }
                    let Some(piece) = o.detok.push(&self.st.tokenizer, id) else { continue };
                    let text = o.stop.push(&piece);
                    if o.stop.stopped() {
                        o.finish = Some("stop");
                        // Closing the channel tells the engine to free the slot.
                        self.rx = None;
                        return Some(Step::End(text));
                    }
                    if !text.is_empty() {
                        return Some(Step::Text(text));
                    }
                }
                Event::Done { finish } => {
                    o.finish = Some(match finish {
                        Finish::Stop => "stop",
                        Finish::Length => "length",
                    });
                    let tail = o.detok.finish(&self.st.tokenizer);
                    let mut text = o.stop.push(&tail);
                    if !o.stop.stopped() {
                        text.push_str(&o.stop.finish());
                    }
                    self.rx = None;
                    return Some(Step::End(text));
                }
                Event::Failed(e) => {
                    self.rx = None;
                    return Some(Step::Failed(e));
                }
            }
        }
    }

    fn object(&self, stream: bool) -> &'static str {
        match (self.endpoint, stream) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }

    /// A streamed chunk's choice carrying `text` (and the finish reason, in the last one).
    fn choice(&self, text: Option<&str>, finish: Option<&str>) -> Value {
        match self.endpoint {
            Endpoint::Completions => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
            Endpoint::Chat => {
                let delta = match text {
                    Some(t) => json!({"content": t}),
                    None => json!({}),
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
        }
    }

    fn chunk(&self, choices: Value) -> String {
        let v = json!({
            "id": self.id, "object": self.object(true), "created": self.created, "model": self.st.model_id,
            "choices": choices,
        });
        format!("data: {v}\n\n")
    }

    /// The next server-sent event of a streamed reply, `None` after `data: [DONE]`.
    async fn next_event(&mut self) -> Option<String> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.over {
                return None;
            }
            match self.next_step().await {
                Some(Step::Text(t)) => {
                    let c = self.chunk(json!([self.choice(Some(&t), None)]));
                    self.pending.push_back(c);
                }
                Some(Step::End(t)) => {
                    if !t.is_empty() {
                        let c = self.chunk(json!([self.choice(Some(&t), None)]));
                        self.pending.push_back(c);
                    }
                    let c = self.chunk(json!([self.choice(None, self.out.finish)]));
                    self.pending.push_back(c);
                    if self.include_usage {
                        let (usage, timings) = self.out.usage(self.submitted);
                        let v = json!({
                            "id": self.id, "object": self.object(true), "created": self.created,
                            "model": self.st.model_id, "choices": [], "usage": usage, "timings": timings,
                        });
                        self.pending.push_back(format!("data: {v}\n\n"));
                    }
                    self.pending.push_back("data: [DONE]\n\n".into());
                    self.over = true;
                }
                Some(Step::Failed(e)) => {
                    let e = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e);
                    self.pending.push_back(format!("data: {}\n\n", e.body()));
                    self.pending.push_back("data: [DONE]\n\n".into());
                    self.over = true;
                }
                None => {
                    let e = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the engine has stopped");
                    self.pending.push_back(format!("data: {}\n\n", e.body()));
                    self.pending.push_back("data: [DONE]\n\n".into());
                    self.over = true;
                }
            }
        }
    }

    fn stream(mut self) -> Response {
        if self.endpoint == Endpoint::Chat {
            let first = json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null,
                "finish_reason": null}]);
            let c = self.chunk(first);
            self.pending.push_back(c);
        }
        let events = futures_util::stream::unfold(self, |mut reply| async move {
            let e = reply.next_event().await?;
            Some((Ok::<_, std::convert::Infallible>(Bytes::from(e)), reply))
        });
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
            Body::from_stream(events),
        )
            .into_response()
    }

    async fn whole(mut self) -> Response {
        let mut text = String::new();
        loop {
            match self.next_step().await {
                Some(Step::Text(t)) => text.push_str(&t),
                Some(Step::End(t)) => {
                    text.push_str(&t);
                    break;
                }
                Some(Step::Failed(e)) => return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
                None => {
                    return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the engine has stopped").into_response()
                }
            }
        }
        let choice = match self.endpoint {
            Endpoint::Completions => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": self.out.finish})
            }
            Endpoint::Chat => json!({
                "index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null,
                "finish_reason": self.out.finish,
            }),
        };
        let (usage, timings) = self.out.usage(self.submitted);
        json_response(
            StatusCode::OK,
            &json!({
                "id": self.id, "object": self.object(false), "created": self.created, "model": self.st.model_id,
                "choices": [choice], "usage": usage, "timings": timings,
            }),
        )
    }
}
