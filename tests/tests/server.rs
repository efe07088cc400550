//! `unicorn-rt PLAN --serve` over real HTTP on 127.0.0.1: the endpoints, streaming and not, the answers against
//! `unicorn-rt` alone, errors, a full queue, clients that leave, the prompt cache, and bounded concurrent load.
//!
//! Each test starts its own server on a free port (`--port 0`; the address is read from its stderr) and kills
//! it when done. Every socket gives up after [`IO_TIMEOUT`] and every wait is bounded, so a test fails rather
//! than hangs. The plans with f32 weights keep an f32 KV cache, so a prompt that reuses a slot's cached prefix
//! computes the bits a fresh prefill computes, and temperature-0 answers are compared exactly.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use unicorn_ir::WeightFormat;
use unicorn_tests::*;

/// Every socket read and write gives up after this.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A server process, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(plan: &Path, args: &[&str]) -> Server {
        let mut child = Command::new(bin("unicorn-rt"))
            .arg(plan)
            .args(["--serve", "--port", "0", "--threads", "1"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("RUST_BACKTRACE")
            .spawn()
            .expect("unicorn-rt starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("http://") {
                    let _ = tx.send(line[at + 7..].split_whitespace().next().unwrap_or_default().to_string());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not start: {}", log.lock().unwrap());
            }
        };
        Server { child, addr, log }
    }

    /// The server is still running, and has printed nothing since its address (no panic, no error).
    fn assert_alive(&mut self) {
        let status = self.child.try_wait().expect("try_wait");
        let log = self.log.lock().unwrap().clone();
        assert!(status.is_none(), "the server exited ({status:?}): {log}");
        assert_eq!(log.lines().count(), 1, "the server printed more than its address: {log}");
    }

    fn health(&self) -> Value {
        let r = http(&self.addr, "GET", "/health", None);
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str(&r.body).unwrap()
    }

    /// Wait (at most `limit`) until no request is in flight and every slot is idle; returns how long it took.
    fn wait_idle(&self, limit: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let h = self.health();
            if h["in_flight"] == 0 && h["slots_busy"] == 0 && h["queued"] == 0 {
                return t0.elapsed();
            }
            assert!(t0.elapsed() < limit, "the server is still busy after {limit:?}: {h}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

fn send(s: &mut TcpStream, method: &str, path: &str, body: Option<&str>) {
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).and_then(|()| s.write_all(body.as_bytes())).expect("request sent");
}

/// The status line and headers of a response.
fn read_head(r: &mut impl BufRead) -> (u16, String) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).expect("response head");
        assert!(n > 0, "the connection closed in the response head: {head}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    (status, head.to_ascii_lowercase())
}

/// One chunk of a chunked body, `None` at its end.
fn read_chunk(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut line = String::new();
    r.read_line(&mut line).expect("chunk size");
    let size = usize::from_str_radix(line.trim(), 16).unwrap_or_else(|_| panic!("chunk size line {line:?}"));
    let mut data = vec![0; size + 2];
    r.read_exact(&mut data).expect("chunk");
    data.truncate(size);
    (size > 0).then_some(data)
}

/// One request on its own connection.
fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> Reply {
    let mut s = connect(addr);
    send(&mut s, method, path, body);
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let mut body = Vec::new();
    if headers.contains("transfer-encoding: chunked") {
        while let Some(c) = read_chunk(&mut r) {
            body.extend(c);
        }
    } else {
        r.read_to_end(&mut body).expect("body");
    }
    Reply { status, headers, body: String::from_utf8(body).expect("UTF-8 body") }
}

fn post(addr: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = http(addr, "POST", path, Some(&body.to_string()));
    let v = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path} answered {} {}: {e}", r.status, r.body));
    assert!(r.headers.contains("content-type: application/json"), "{}", r.headers);
    (r.status, v)
}

/// A non-streamed completion that must succeed: (text, finish reason, the whole reply).
fn complete(addr: &str, body: &Value) -> (String, String, Value) {
    let (status, v) = post(addr, "/v1/completions", body);
    assert_eq!(status, 200, "{body}: {v}");
    let c = &v["choices"][0];
    (c["text"].as_str().unwrap().to_string(), c["finish_reason"].as_str().unwrap().to_string(), v)
}

/// A streamed response, read event by event.
struct Events {
    r: BufReader<TcpStream>,
    buf: String,
    status: u16,
    headers: String,
}

impl Events {
    fn open(addr: &str, path: &str, body: &Value) -> Events {
        let mut s = connect(addr);
        send(&mut s, "POST", path, Some(&body.to_string()));
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r);
        Events { r, buf: String::new(), status, headers }
    }

    /// The next event's `data`, `None` at the end of the body.
    fn next(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..at + 2).collect();
                let data = event.trim_end().strip_prefix("data: ").unwrap_or_else(|| panic!("not an event: {event:?}"));
                return Some(data.to_string());
            }
            let chunk = read_chunk(&mut self.r)?;
            self.buf.push_str(std::str::from_utf8(&chunk).expect("UTF-8 events"));
        }
    }
}

/// What a whole stream said.
struct Streamed {
    text: String,
    finish: String,
    usage: Option<Value>,
    chunks: Vec<Value>,
}

/// Read a stream to its end, checking its form: chunks of the endpoint's object, the text in deltas, one finish
/// reason in the last choice, an optional usage chunk, then `data: [DONE]` and nothing after.
fn stream(addr: &str, path: &str, body: &Value) -> Streamed {
    let mut ev = Events::open(addr, path, body);
    assert_eq!(ev.status, 200, "{body}");
    assert!(ev.headers.contains("content-type: text/event-stream"), "{}", ev.headers);
    let chat = path.contains("chat");
    let mut out = Streamed { text: String::new(), finish: String::new(), usage: None, chunks: Vec::new() };
    let mut done = false;
    while let Some(data) = ev.next() {
        assert!(!done, "an event after [DONE]: {data}");
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{data}: {e}"));
        assert_eq!(v["object"], if chat { "chat.completion.chunk" } else { "text_completion" }, "{v}");
        assert!(out.finish.is_empty() || v["choices"] == json!([]), "a chunk after the finish: {v}");
        if let Some(c) = v["choices"].get(0) {
            let piece = if chat { &c["delta"]["content"] } else { &c["text"] };
            out.text.push_str(piece.as_str().unwrap_or(""));
            if let Some(f) = c["finish_reason"].as_str() {
                out.finish = f.to_string();
            }
        } else {
            out.usage = Some(v["usage"].clone());
        }
        out.chunks.push(v);
    }
    assert!(done, "the stream ended without data: [DONE]");
    assert!(!out.finish.is_empty(), "no finish reason");
    out
}

fn plan(dir: &Path, fixture: &str, format: WeightFormat, ctx: usize) -> PathBuf {
    compile_to(&fixtures_dir().join(fixture), dir, format, Some(ctx))
}

/// What `unicorn-rt` prints for a prompt given as text (the prompt, the continuation, a newline) or token ids
/// (the continuation): stdout and the generated token count from the stats line.
fn cli(plan: &Path, input: &[&str], args: &[&str]) -> (String, usize) {
    let mut a: Vec<&str> = vec![plan.to_str().unwrap()];
    a.extend_from_slice(input);
    a.extend_from_slice(args);
    let out = run("unicorn-rt", &a);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "unicorn-rt {a:?}: {err}");
    let n = err.split(" tokens, stopped").next().and_then(|s| s.rsplit('(').next()).and_then(|s| s.parse().ok());
    (String::from_utf8(out.stdout).unwrap(), n.unwrap_or_else(|| panic!("no token count in {err}")))
}

const PROMPT: &str = "The keeper climbed the stairs to light the lamp.";

#[test]
fn the_server_answers_health_models_and_its_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), "llama_gqa", WeightFormat::Q8_0, 96);
    let mut srv = Server::start(&plan, &["--parallel", "3"]);
    let h = srv.health();
    assert_eq!((h["status"].as_str(), h["slots"].as_u64(), h["slots_busy"].as_u64()), (Some("ok"), Some(3), Some(0)));

    let r = http(&srv.addr, "GET", "/v1/models", None);
    assert_eq!(r.status, 200);
    let m: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], plan.file_stem().unwrap().to_str().unwrap());
    assert_eq!(m["data"][0]["context_length"], 96);

    // The document describes every route, with this plan's bounds on a prompt of token ids.
    let r = http(&srv.addr, "GET", "/openapi.json", None);
    assert_eq!(r.status, 200);
    let doc: Value = serde_json::from_str(&r.body).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/v1/completions", "/v1/models", "/health", "/openapi.json"] {
        assert!(doc["paths"][path].is_object(), "{path} is not in the document");
    }
    // This plan has no chat template: its chat endpoint answers every request 400, and is not offered.
    assert!(doc["paths"]["/v1/chat/completions"].is_null());
    let ids = &doc["components"]["schemas"]["CompletionRequest"]["properties"]["prompt"]["oneOf"][1];
    assert_eq!((ids["maxItems"].as_u64(), ids["items"]["maximum"].as_u64()), (Some(96), Some(383)));

    // Unknown paths and methods: OpenAI-style error bodies too.
    let r = http(&srv.addr, "GET", "/v1/nothing", None);
    assert_eq!(r.status, 404);
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap()["error"]["type"], "not_found_error");
    let r = http(&srv.addr, "GET", "/v1/completions", None);
    assert_eq!(r.status, 405);
    assert!(serde_json::from_str::<Value>(&r.body).unwrap()["error"]["message"].is_string());
    srv.assert_alive();
}

#[test]
fn a_completion_is_what_unicorn_rt_prints_for_the_same_prompt_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    // The default q8_0 plan (f16 KV cache) and an f32 one; the prompt cache is off so that the q8_0 plan's
    // prompts run exactly as the CLI runs them (a prefix from an f16 cache is rounded; see the next tests).
    for format in [WeightFormat::Q8_0, WeightFormat::F32] {
        let plan = plan(dir.path(), "llama_gqa", format, 256);
        let mut srv = Server::start(&plan, &["--parallel", "2"]);
        // Greedy; then sampled with a seed: from the k largest (the executor's top-k), from more than the
        // executor picks (the whole row), and with no top-k at all.
        for (temp, top_k, top_p) in [(0.0, 40, 0.95), (0.9, 20, 0.9), (1.1, 100, 0.8), (0.7, 0, 1.0)] {
            let n = 24;
            let args = [
                "-n",
                &n.to_string(),
                "--temperature",
                &temp.to_string(),
                "--top-k",
                &top_k.to_string(),
                "--top-p",
                &top_p.to_string(),
                "--seed",
                "7",
            ];
            let (printed, generated) = cli(&plan, &["--prompt", PROMPT], &args);
            let want = printed.strip_prefix(PROMPT).and_then(|s| s.strip_suffix('\n')).expect("prompt, text, newline");
            let body = json!({"model": "x", "prompt": PROMPT, "max_tokens": n, "temperature": temp, "top_k": top_k,
                "top_p": top_p, "seed": 7, "cache_prompt": false});
            let what = format!("{format} t={temp} k={top_k} p={top_p}");
            let (text, finish, v) = complete(&srv.addr, &body);
            assert_eq!(text, want, "{what}");
            assert_eq!(finish, if generated < n { "stop" } else { "length" }, "{what}");
            let u = &v["usage"];
            assert_eq!(u["completion_tokens"], generated, "{what}");
            assert_eq!(u["total_tokens"], u["prompt_tokens"].as_u64().unwrap() + generated as u64);
            assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);
            assert_eq!(v["object"], "text_completion");

            // Streamed: the same text in pieces, the same finish, the usage chunk when asked for.
            let mut body = body.clone();
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
            let s = stream(&srv.addr, "/v1/completions", &body);
            assert_eq!((s.text.as_str(), s.finish.as_str()), (want, finish.as_str()), "{what} streamed");
            assert_eq!(s.usage.as_ref().unwrap()["completion_tokens"], generated);
            assert!(s.chunks.len() >= 3, "{what}: the text came in one piece");
            let ids: Vec<&Value> = s.chunks.iter().map(|c| &c["id"]).collect();
            assert!(ids.iter().all(|i| *i == ids[0]), "one id per stream");
        }
        // The prompt as token ids, as `unicorn-rt --tokens` takes it.
        let ids = expected("llama_gqa").prompt_ids;
        let list: Vec<String> = ids.iter().map(u32::to_string).collect();
        let (want, _) = cli(&plan, &["--tokens", &list.join(",")], &["-n", "12", "--temperature", "0"]);
        let body = json!({"prompt": ids, "max_tokens": 12, "temperature": 0, "cache_prompt": false});
        assert_eq!(complete(&srv.addr, &body).0, want.strip_suffix('\n').unwrap(), "{format} token ids");
        srv.assert_alive();
    }
}

#[test]
fn stop_strings_end_the_text_before_them() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), "llama_gqa", WeightFormat::F32, 256);
    let mut srv = Server::start(&plan, &["--parallel", "2"]);
    let base = json!({"prompt": PROMPT, "max_tokens": 30, "temperature": 0, "ignore_eos": true});
    let (full, _, _) = complete(&srv.addr, &base);
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 12, "too short to cut: {full:?}");
    // A stop string from the middle of the text, and one that never occurs.
    let cut: String = chars[8..11].iter().collect();
    let want = &full[..full.find(&cut).unwrap()];
    for stream_it in [false, true] {
        let mut body = base.clone();
        body["stop"] = json!(["no such text at all", cut]);
        body["stream"] = json!(stream_it);
        let (text, finish) = if stream_it {
            let s = stream(&srv.addr, "/v1/completions", &body);
            (s.text, s.finish)
        } else {
            let (t, f, _) = complete(&srv.addr, &body);
            (t, f)
        };
        assert_eq!((text.as_str(), finish.as_str()), (want, "stop"), "stream: {stream_it}");
    }
    srv.wait_idle(Duration::from_secs(10));
    srv.assert_alive();
}

#[test]
fn bad_requests_get_openai_errors_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), "llama_gqa", WeightFormat::Q8_0, 64);
    let mut srv = Server::start(&plan, &["--parallel", "1"]);
    let long: Vec<u32> = vec![5; 65];
    let cases: Vec<(&str, String, &str)> = vec![
        ("/v1/completions", "{\"prompt\": ".into(), "body"),
        ("/v1/completions", "[]".into(), "body"),
        ("/v1/completions", json!({"max_tokens": 3}).to_string(), "prompt"),
        ("/v1/completions", json!({"prompt": {"text": "a"}}).to_string(), "prompt"),
        ("/v1/completions", json!({"prompt": "a", "temperature": "warm"}).to_string(), "temperature"),
        ("/v1/completions", json!({"prompt": "a", "top_p": 1.5}).to_string(), "top_p"),
        ("/v1/completions", json!({"prompt": "a", "top_k": 2.5}).to_string(), "top_k"),
        ("/v1/completions", json!({"prompt": "a", "max_tokens": -1}).to_string(), "max_tokens"),
        ("/v1/completions", json!({"prompt": "a", "seed": [1]}).to_string(), "seed"),
        ("/v1/completions", json!({"prompt": "a", "stop": 7}).to_string(), "stop"),
        ("/v1/completions", json!({"prompt": "a", "stream": "yes"}).to_string(), "stream"),
        ("/v1/completions", json!({"prompt": "a", "n": 3}).to_string(), "n"),
        ("/v1/completions", json!({"prompt": "a", "logprobs": 2}).to_string(), "logprobs"),
        // Beyond the context of 64: as text and as token ids; an id beyond the vocabulary.
        ("/v1/completions", json!({"prompt": PROMPT.repeat(4)}).to_string(), "prompt"),
        ("/v1/completions", json!({"prompt": long}).to_string(), "prompt"),
        ("/v1/completions", json!({"prompt": [1, 384]}).to_string(), "prompt"),
        ("/v1/chat/completions", json!({"messages": "hi"}).to_string(), "messages"),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": 5}]}).to_string(),
            "messages[0].content",
        ),
        // This plan has no chat template.
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "hi"}]}).to_string(), "messages"),
    ];
    for (path, body, param) in cases {
        let r = http(&srv.addr, "POST", path, Some(&body));
        assert_eq!(r.status, 400, "{path} {body}: {}", r.body);
        let e: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(e["error"]["param"], param, "{path} {body}: {e}");
        assert_eq!(e["error"]["type"], "invalid_request_error");
        let field = param.rsplit('.').next().unwrap().split('[').next().unwrap();
        let message = e["error"]["message"].as_str().unwrap();
        assert!(param == "body" || message.contains(field), "{body}: {message}");
    }
    // Not HTTP at all, and a connection closed mid-request: the server goes on.
    let mut s = connect(&srv.addr);
    s.write_all(b"\x16\x03\x01 hello?\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    let mut s = connect(&srv.addr);
    s.write_all(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"pro").unwrap();
    drop(s);
    let (text, _, _) = complete(&srv.addr, &json!({"prompt": "a", "max_tokens": 3, "temperature": 0}));
    assert!(!text.is_empty());
    srv.assert_alive();
}

#[test]
fn a_full_queue_answers_503_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), "llama_gqa", WeightFormat::F32, 4096);
    let mut srv = Server::start(&plan, &["--parallel", "1"]);
    // One slot and a queue of 4: five long generations fill both (each stays until its client leaves).
    let long = json!({"prompt": PROMPT, "max_tokens": 4000, "temperature": 0, "ignore_eos": true, "stream": true});
    let held: Vec<Events> = (0..5).map(|_| Events::open(&srv.addr, "/v1/completions", &long)).collect();
    for e in &held {
        assert_eq!(e.status, 200);
    }
    let t = Instant::now();
    loop {
        let h = srv.health();
        if (h["in_flight"].as_u64(), h["slots_busy"].as_u64(), h["queued"].as_u64()) == (Some(5), Some(1), Some(4)) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "not one running and four waiting: {h}");
        std::thread::sleep(Duration::from_millis(10));
    }
    for stream_it in [false, true] {
        let body = json!({"prompt": "a", "stream": stream_it});
        let r = http(&srv.addr, "POST", "/v1/completions", Some(&body.to_string()));
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.headers.contains("retry-after: 1"), "{}", r.headers);
        let e: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(e["error"]["type"], "unavailable_error");
        assert!(e["error"]["message"].as_str().unwrap().contains("full"), "{e}");
    }
    // All five leave: their slot and queue places are freed, and the next request is served.
    drop(held);
    srv.wait_idle(Duration::from_secs(10));
    let (text, _, _) = complete(&srv.addr, &json!({"prompt": PROMPT, "max_tokens": 4, "temperature": 0}));
    assert!(!text.is_empty());
    srv.assert_alive();
}

#[test]
fn a_client_that_disconnects_frees_its_slot_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), "llama_gqa", WeightFormat::F32, 4096);
    let mut srv = Server::start(&plan, &["--parallel", "1"]);
    // How long 4000 tokens take: far longer than a slot may stay busy after its client has gone.
    let t0 = Instant::now();
    complete(&srv.addr, &json!({"prompt": PROMPT, "max_tokens": 100, "temperature": 0, "ignore_eos": true}));
    let whole = t0.elapsed() * 40;
    let long = json!({"prompt": PROMPT, "max_tokens": 4000, "temperature": 0, "ignore_eos": true});
    for stream_it in [true, false] {
        let mut body = long.clone();
        body["stream"] = json!(stream_it);
        let client: Box<dyn std::any::Any> = if stream_it {
            let mut ev = Events::open(&srv.addr, "/v1/completions", &body);
            assert_eq!(ev.status, 200);
            for _ in 0..3 {
                ev.next().expect("an event");
            }
            Box::new(ev)
        } else {
            // No answer comes before the end: wait until the slot is busy generating.
            let mut s = connect(&srv.addr);
            send(&mut s, "POST", "/v1/completions", Some(&body.to_string()));
            let t = Instant::now();
            while srv.health()["slots_busy"] != 1 {
                assert!(t.elapsed() < Duration::from_secs(10), "the request never started");
                std::thread::sleep(Duration::from_millis(10));
            }
            Box::new(s)
        };
        let left = Instant::now();
        drop(client);
        let freed = srv.wait_idle(Duration::from_secs(10));
        assert!(freed * 10 < whole, "stream {stream_it}: freed after {freed:?}, the generation takes {whole:?}");
        eprintln!("server: slot freed {:?} after its client left (stream: {stream_it})", left.elapsed());
    }
    // The slot serves the next request.
    let (text, _, _) = complete(&srv.addr, &json!({"prompt": PROMPT, "max_tokens": 4, "temperature": 0}));
    assert!(!text.is_empty());
    srv.assert_alive();
}

#[test]
fn a_prompt_that_begins_with_a_slots_tokens_runs_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), "llama_gqa", WeightFormat::F32, 256);
    let mut srv = Server::start(&plan, &["--parallel", "2"]);
    let first = json!({"prompt": PROMPT, "max_tokens": 10, "temperature": 0, "ignore_eos": true});
    let (t1, _, v1) = complete(&srv.addr, &first);
    let p1 = v1["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(v1["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    // The conversation goes on: the earlier prompt, its answer, more text.
    let second =
        json!({"prompt": format!("{PROMPT}{t1} Then the light went out."), "max_tokens": 12, "temperature": 0});
    let (t2, _, v2) = complete(&srv.addr, &second);
    let u = &v2["usage"];
    let cached = u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(cached >= p1 - 1, "only {cached} of the first prompt's {p1} tokens were reused: {v2}");
    assert_eq!(v2["timings"]["prompt_n"].as_u64().unwrap(), u["prompt_tokens"].as_u64().unwrap() - cached);
    // The same answer as a fresh prefill of the whole prompt (f32 cache: the same bits).
    let mut fresh = second.clone();
    fresh["cache_prompt"] = json!(false);
    let (t2_fresh, _, v) = complete(&srv.addr, &fresh);
    assert_eq!(t2, t2_fresh);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    // The same prompt again: all but its last token come from the cache.
    let (t1_again, _, v) = complete(&srv.addr, &first);
    assert_eq!(t1_again, t1);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(), Some(p1 - 1));
    eprintln!(
        "server: the second turn ran {} of its {} prompt tokens",
        u["prompt_tokens"].as_u64().unwrap() - cached,
        u["prompt_tokens"]
    );
    srv.assert_alive();
}

#[test]
fn a_sliding_window_slot_is_rewound_only_where_its_ring_still_holds_the_window() {
    // Mistral with a window of 8: its caches are rings of 8 positions. One slot, so each request meets the
    // cache the one before left.
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), "mistral_sliding", WeightFormat::F32, 256);
    let mut srv = Server::start(&plan, &["--parallel", "1"]);
    let a = expected("mistral_sliding").prompt_ids;
    assert!(a.len() > 20);
    let list = |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let (ids, _) = cli(&plan, &["--tokens", &list(&a)], &["-n", "5", "--temperature", "0", "--print-ids"]);
    let gen: Vec<u32> = ids.trim().split(',').map(|t| t.parse().unwrap()).collect();
    assert_eq!(gen.len(), 5, "{ids}");

    let ask_n = |prompt: &[u32], cache: bool, n: usize| {
        let body =
            json!({"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": true, "cache_prompt": cache});
        let (text, _, v) = complete(&srv.addr, &body);
        (text, v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap())
    };
    let ask = |prompt: &[u32], cache: bool| ask_n(prompt, cache, 6);
    // A, then A's prompt and answer and more: the slot holds A and its first 4 tokens (the 5th was never fed),
    // so it goes on from there without rewinding.
    let (_, cached) = ask(&a, true);
    assert_eq!(cached, 0);
    let mut c = a.clone();
    c.extend_from_slice(&gen[..4]);
    let held = c.len() as u64;
    c.extend_from_slice(&[7, 9, 11]);
    let (text_c, cached) = ask(&c, true);
    assert_eq!(cached, held);
    assert_eq!(text_c, ask(&c, false).0);
    // Now a prompt that leaves the slot's tokens after position 20: the rings have wrapped since, and no longer
    // hold the window before it, so the whole prompt runs.
    let mut b = c[..20].to_vec();
    b.extend_from_slice(&[3, 3, 5]);
    let (text_b, cached) = ask(&b, true);
    assert_eq!(cached, 0);
    assert_eq!(text_b, ask(&b, false).0);
    // A slot of at most 8 tokens has not wrapped its rings: any prefix is kept. (One token generated and not
    // fed: the slot holds the 6 of the prompt.)
    let short = &a[..6];
    ask_n(short, true, 1);
    let mut d = short[..4].to_vec();
    d.extend_from_slice(&[a[4] + 1, 12]);
    let (text_d, cached) = ask(&d, true);
    assert_eq!(cached, 4);
    assert_eq!(text_d, ask(&d, false).0);
    srv.assert_alive();
}

/// A copy of a fixture with a chat template beside it (compiled into the plan's chat section).
fn chat_plan(dir: &Path) -> PathBuf {
    let model = copy_fixture("llama_gqa", dir);
    let template = "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}\
                    {% if add_generation_prompt %}assistant:{% endif %}";
    std::fs::write(model.join("chat_template.jinja"), template).unwrap();
    compile_to(&model, dir, WeightFormat::F32, Some(256))
}

#[test]
fn chat_completions_render_the_template_and_a_second_turn_reuses_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let plan = chat_plan(dir.path());
    let mut srv = Server::start(&plan, &["--parallel", "2"]);
    let r = http(&srv.addr, "GET", "/openapi.json", None);
    let doc: Value = serde_json::from_str(&r.body).unwrap();
    assert!(doc["paths"]["/v1/chat/completions"]["post"].is_object(), "a plan with a template offers chat");
    let user = "Who climbed the stairs?";
    let ask = json!({"messages": [{"role": "user", "content": user}], "max_tokens": 10, "temperature": 0,
        "ignore_eos": true});
    let (status, v) = post(&srv.addr, "/v1/chat/completions", &ask);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    let answer = msg["content"].as_str().unwrap().to_string();
    // The rendered conversation is the prompt: the same as completing its text (the tokenizer's BOS standing
    // for the template's).
    let rendered = format!("user: {user}\nassistant:");
    let (text, _, c) =
        complete(&srv.addr, &json!({"prompt": rendered, "max_tokens": 10, "temperature": 0, "ignore_eos": true}));
    assert_eq!(answer, text);
    assert_eq!(v["usage"]["prompt_tokens"], c["usage"]["prompt_tokens"]);

    // Streamed: the role first, then the content in deltas.
    let mut body = ask.clone();
    body["stream"] = json!(true);
    let s = stream(&srv.addr, "/v1/chat/completions", &body);
    assert_eq!(s.chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    assert_eq!((s.text.as_str(), s.finish.as_str()), (answer.as_str(), "length"));

    // The second turn: the first turn's tokens come from the cache.
    let p1 = v["usage"]["prompt_tokens"].as_u64().unwrap();
    let turn2 = json!({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer},
        {"role": "user", "content": "And then?"}], "max_tokens": 8, "temperature": 0});
    let (status, v2) = post(&srv.addr, "/v1/chat/completions", &turn2);
    assert_eq!(status, 200, "{v2}");
    let cached = v2["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(cached >= p1 - 1, "the second turn reused {cached} tokens, the first turn's prompt has {p1}: {v2}");
    let mut fresh = turn2.clone();
    fresh["cache_prompt"] = json!(false);
    let (_, v3) = post(&srv.addr, "/v1/chat/completions", &fresh);
    assert_eq!(v2["choices"][0]["message"], v3["choices"][0]["message"]);
    srv.assert_alive();
}

#[test]
fn concurrent_clients_each_get_the_answer_their_request_gets_alone() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), "llama_gqa", WeightFormat::F32, 256);
    let mut srv = Server::start(&plan, &["--parallel", "4"]);
    // 8 requests: prompts that share prefixes (so the prompt cache works under load), different lengths,
    // greedy and seeded sampling, streamed and not.
    let prompts = [
        PROMPT.to_string(),
        format!("{PROMPT} It was late."),
        "A ship".to_string(),
        "A ship sailed past the rocks at dawn, and the keeper watched it go.".to_string(),
        "Lamp".to_string(),
        format!("{PROMPT} {PROMPT}"),
        "The stairs were steep".to_string(),
        "Night fell over the sea".to_string(),
    ];
    let requests: Vec<Value> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut r = json!({"prompt": p, "max_tokens": 6 + 5 * i, "ignore_eos": i % 3 == 0});
            if i % 2 == 0 {
                r["temperature"] = json!(0);
            } else {
                r.as_object_mut().unwrap().extend([("temperature".into(), json!(0.8)), ("seed".into(), json!(i))]);
            }
            r
        })
        .collect();
    let alone: Vec<String> = requests.iter().map(|r| complete(&srv.addr, r).0).collect();

    // 6 clients x 4 requests each, every client starting at another request.
    let (clients, each) = (6, 4);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (addr, requests) = (&srv.addr, &requests);
                s.spawn(move || {
                    (0..each)
                        .map(|j| {
                            let i = (c * 3 + j) % requests.len();
                            let got = if (c + j) % 2 == 0 {
                                complete(addr, &requests[i]).0
                            } else {
                                let mut body = requests[i].clone();
                                body["stream"] = json!(true);
                                stream(addr, "/v1/completions", &body).text
                            };
                            (i, got)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut answered = 0;
        for h in handles {
            for (i, got) in h.join().expect("a client thread") {
                assert_eq!(got, alone[i], "request {i} under load: {}", requests[i]);
                answered += 1;
            }
        }
        assert_eq!(answered, clients * each);
    });
    eprintln!("server: {} concurrent requests answered in {:?}", clients * each, t0.elapsed());
    srv.wait_idle(Duration::from_secs(10));
    srv.assert_alive();
}
