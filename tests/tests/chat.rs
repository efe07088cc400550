//! Chat templates: real templates rendered as transformers renders them (tests/fixtures/chat_templates), the
//! plan's chat section, and `unicorn-rt --chat` through a pipe.

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use unicorn_ir::container::{PlanFile, SectionKind};
use unicorn_ir::WeightFormat;
use unicorn_runtime::chat::{encode, ChatTemplate, Message};
use unicorn_runtime::generate::generate;
use unicorn_runtime::sampler::{Sampler, SamplerOptions};
use unicorn_runtime::{Model, Session};
use unicorn_tests::*;

fn templates_dir() -> PathBuf {
    fixtures_dir().join("chat_templates")
}

fn expected() -> Value {
    let path = templates_dir().join("rendered.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

fn strings(v: &Value) -> BTreeMap<String, String> {
    v.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect()
}

/// Every template of tests/fixtures/chat_templates over every conversation, against transformers' output.
#[test]
fn chat_templates_render_like_transformers() {
    let exp = expected();
    let now = exp["now_unix"].as_i64().unwrap();
    let (mut equal, mut raised, mut failures) = (0, 0, Vec::new());
    for t in exp["templates"].as_array().unwrap() {
        let file = t["file"].as_str().unwrap();
        let source = std::fs::read_to_string(templates_dir().join(file)).unwrap();
        let mut template = match ChatTemplate::new(&source, strings(&t["special_tokens"]), vec![]) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{file}: {e}"));
                continue;
            }
        };
        template.set_fixed_time(now);
        for case in t["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let got = template.render(&messages(&case["messages"]), case["add_generation_prompt"].as_bool().unwrap());
            match (&got, case.get("text").and_then(Value::as_str), case.get("error").and_then(Value::as_str)) {
                (Ok(text), Some(want), _) if text == want => equal += 1,
                // transformers raised (the template's raise_exception): so must we, with its message.
                (Err(e), None, Some(want)) if e.to_string().contains(want) => raised += 1,
                _ => failures.push(format!("{file} / {name}: got {got:?}, transformers: {case}")),
            }
        }
    }
    eprintln!("chat templates: {equal} renders equal to transformers', {raised} raised as there");
    assert!(failures.is_empty(), "{} differ:\n{}", failures.len(), failures.join("\n"));
    assert!(equal >= 150, "{equal}");
}

/// The rendered text tokenizes to the ids of transformers' `apply_chat_template(tokenize=True)`: one BOS, the
/// template's (the tokenizer's post-processor adds one to `--prompt` text).
#[test]
fn chat_tokenized_like_apply_chat_template() {
    let exp = expected();
    let fixture = &exp["fixture_tokenized"];
    let tok_path = fixtures_dir().join(fixture["tokenizer"].as_str().unwrap()).join("tokenizer.json");
    let tok = tokenizers::Tokenizer::from_file(&tok_path).unwrap();
    let source = std::fs::read_to_string(templates_dir().join(fixture["template"].as_str().unwrap())).unwrap();
    let special = exp["templates"].as_array().unwrap().iter().find(|t| t["file"] == fixture["template"]).unwrap();
    let template = ChatTemplate::new(&source, strings(&special["special_tokens"]), vec![]).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    for case in cases {
        let text =
            template.render(&messages(&case["messages"]), case["add_generation_prompt"].as_bool().unwrap()).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap());
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(encode(&tok, &text).unwrap(), want, "{}", case["name"]);
        assert_eq!(want.iter().filter(|&&t| t == 1).count(), 1);
    }
    assert_eq!(cases.len(), 10);
}

fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo")
}

/// A copy of the checkpoint `src` in `dir` whose tokenizer_config.json carries `template` (the committed
/// checkpoints stay as they are); `edit` may change the copy's files further.
fn with_template(src: &Path, dir: &Path, template: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let dst = dir.join(src.file_name().unwrap());
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    let path = dst.join("tokenizer_config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["chat_template"] = Value::from(template);
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    edit(&dst);
    dst
}

fn fixture_template() -> String {
    std::fs::read_to_string(templates_dir().join("fixture-chat.jinja")).unwrap()
}

/// A plan of `src` with the fixture template, in f32 (so decode steps and prefills agree to the last bits).
fn chat_plan(src: &Path, dir: &Path, max_context: Option<usize>) -> PathBuf {
    let ck = with_template(src, dir, &fixture_template(), |_| {});
    compile_to(&ck, dir, WeightFormat::F32, max_context)
}

#[test]
fn chat_template_is_stored_in_the_plan_with_its_stop_ids() {
    let dir = tempfile::tempdir().unwrap();
    let plan = chat_plan(&fixtures_dir().join("llama_gqa"), dir.path(), None);
    let file = PlanFile::open(&plan).unwrap();
    let section: unicorn_ir::chat::ChatSection =
        serde_json::from_slice(file.section(SectionKind::Chat).unwrap()).unwrap();
    assert_eq!(section.template, fixture_template());
    assert_eq!(section.source, "tokenizer_config.json");
    let tokens: Vec<(&str, &str)> = section.special_tokens.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(tokens, [("bos_token", "<bos>"), ("eos_token", "<eos>"), ("pad_token", "<pad>")]);
    // generation_config.json's [2, 3] (config.json's 2 is among them); the end of turn, <eos>, is 2.
    assert_eq!(section.eos_token_ids, [2, 3]);
    let model = Model::load(&plan).unwrap();
    let template = ChatTemplate::from_model(&model).unwrap().expect("a template");
    assert_eq!(template.stop_ids(), [2, 3]);

    // A template whose turns end in another special token: that token stops a turn too.
    let chatml = "{% for m in messages %}<bos>{{ m.role }}\n{{ m.content }}<pad>\n{% endfor %}\
                  {% if add_generation_prompt %}<bos>assistant\n{% endif %}";
    let dir2 = tempfile::tempdir().unwrap();
    let ck = with_template(&fixtures_dir().join("llama_gqa"), dir2.path(), chatml, |_| {});
    let plan = compile_to(&ck, dir2.path(), WeightFormat::Q8_0, None);
    let model = Model::load(&plan).unwrap();
    assert_eq!(ChatTemplate::from_model(&model).unwrap().unwrap().stop_ids(), [2, 3, 0]);

    // A checkpoint without a template: no section, no template; --chat says so in one line.
    let plain = compile_to(&fixtures_dir().join("llama_gqa"), dir2.path(), WeightFormat::Q8_0, None);
    let file = PlanFile::open(&plain).unwrap();
    assert!(file.section(SectionKind::Chat).is_err());
    assert!(ChatTemplate::from_model(&Model::load(&plain).unwrap()).unwrap().is_none());
    let out = run("unicorn-rt", &[plain.to_str().unwrap(), "--chat"]);
    let err = assert_one_line_error(&out, plain.to_str().unwrap());
    assert!(err.contains("no chat template") && err.contains("--chat"), "{err}");
}

#[test]
fn chat_template_that_does_not_parse_is_a_one_line_compile_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = "{% for m in messages %}{{ m.content }}";
    let ck = with_template(&fixtures_dir().join("llama_gqa"), dir.path(), bad, |_| {});
    let plan = dir.path().join("p.ucp");
    let out = run("unicornc", &["compile", ck.to_str().unwrap(), "-o", plan.to_str().unwrap()]);
    let err = assert_one_line_error(&out, "tokenizer_config.json");
    assert!(err.contains("chat_template") && err.contains("does not parse"), "{err}");
    assert!(!plan.exists());
    // The same in chat_template.jinja, which takes precedence.
    let ck = with_template(&fixtures_dir().join("llama_gqa"), &dir.path().join("b"), "ok", |d| {
        std::fs::write(d.join("chat_template.jinja"), "{{ messages[0 }}").unwrap()
    });
    let out = run("unicornc", &["compile", ck.to_str().unwrap(), "-o", plan.to_str().unwrap()]);
    assert_one_line_error(&out, "chat_template.jinja");
}

/// One turn of what the chat should do, worked out with the library: the conversation rendered whole and
/// generated in a fresh session (greedy), as a single generation over it gives.
struct Turn {
    /// The rendered conversation's ids.
    ids: Vec<u32>,
    /// Every token generated, a stop id included.
    emitted: Vec<u32>,
    /// The answer's text (without its stop id).
    text: String,
}

fn reference_chat(plan: &Path, system: Option<&str>, lines: &[&str], n: usize) -> Vec<Turn> {
    let model = Model::load(plan).unwrap();
    let tok = model.tokenizer().unwrap().unwrap();
    let template = ChatTemplate::from_model(&model).unwrap().unwrap();
    let mut messages: Vec<Message> = system.iter().map(|s| Message::new("system", *s)).collect();
    let mut turns = Vec::new();
    for line in lines {
        messages.push(Message::new("user", *line));
        let ids = encode(&tok, &template.render(&messages, true).unwrap()).unwrap();
        let mut session = Session::new(&model, model.header().spec.max_context).unwrap();
        let mut sampler = Sampler::new(SamplerOptions { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 });
        let mut emitted = Vec::new();
        generate(&mut session, &ids, n, &mut sampler, template.stop_ids(), |t| {
            emitted.push(t);
            Ok(())
        })
        .unwrap();
        let answer: Vec<u32> = emitted.iter().copied().filter(|t| !template.stop_ids().contains(t)).collect();
        let text = tok.decode(&answer, true).unwrap();
        messages.push(Message::new("assistant", text.clone()));
        turns.push(Turn { ids, emitted, text });
    }
    turns
}

/// Run `unicorn-rt PLAN --chat ARGS` with `lines` on stdin (a pipe): its stdout, stderr and success.
fn chat(plan: &Path, args: &[&str], lines: &[&str]) -> (String, String, bool) {
    let mut child = Command::new(bin("unicorn-rt"))
        .arg(plan)
        .arg("--chat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// The chat through a pipe equals the reference turn by turn, and each turn fed the model only what the
/// session did not hold: returns the (new, reused) counts of the stats lines.
fn check_chat(plan: &Path, system: Option<&str>, lines: &[&str], n: usize) -> Vec<(usize, usize)> {
    let turns = reference_chat(plan, system, lines, n);
    let n_arg = n.to_string();
    let mut args = vec!["--temperature", "0", "-n", &n_arg, "--verbose"];
    if let Some(s) = system {
        args.extend(["--system", s]);
    }
    let (stdout, stderr, ok) = chat(plan, &args, lines);
    assert!(ok, "{stderr}");
    let want: String = turns.iter().map(|t| format!("{}\n", t.text)).collect();
    assert_eq!(stdout, want, "the chat's answers differ from single generations over the conversation");

    // What the session holds after each turn: the conversation, and every generated token but the last (the
    // one not fed back). Where a turn does not extend it, the session keeps the tokens both share (but one, if
    // the turn adds none), or none where a sliding window's ring has wrapped.
    let model = Model::load(plan).unwrap();
    let h = model.header();
    let ring = |pos: usize| h.kv_caches.iter().any(|c| (c.positions(h.spec.max_context as u64) as usize) < pos);
    let mut held: Vec<u32> = Vec::new();
    let mut want_stats = Vec::new();
    for t in &turns {
        let extends = t.ids.len() > held.len() && t.ids.starts_with(&held);
        let shared = held.iter().zip(&t.ids).take_while(|(a, b)| a == b).count().min(t.ids.len() - 1);
        let kept = if extends {
            held.len()
        } else if ring(held.len()) {
            0
        } else {
            shared
        };
        want_stats.push((t.ids.len() - kept, kept, !extends && !held.is_empty()));
        held = t.ids.iter().chain(&t.emitted[..t.emitted.len() - 1]).copied().collect();
    }
    let stats: Vec<&str> = stderr.lines().filter(|l| l.starts_with("prompt tokens: ")).collect();
    assert_eq!(stats.len(), turns.len(), "{stderr}");
    for (i, (line, (new, reused, _))) in stats.iter().zip(&want_stats).enumerate() {
        assert!(line.starts_with(&format!("prompt tokens: {new} new, {reused} reused, ")), "turn {}: {line}", i + 1);
        assert!(line.contains(&format!("({} tokens, stopped: ", turns[i].emitted.len())), "{line}");
    }
    // The note of a new prefill, where the conversation did not extend what the session held.
    let notes = stderr.lines().filter(|l| l.contains("renders differently")).count();
    assert_eq!(notes, want_stats.iter().filter(|s| s.2).count(), "{stderr}");
    want_stats.iter().map(|&(new, reused, _)| (new, reused)).collect()
}

#[test]
fn chat_feeds_only_new_tokens_and_answers_as_one_generation_over_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    // The demo model writes English-like text, whose tokens its tokenizer gives back from the answer's text:
    // every turn extends what the session holds.
    let plan = chat_plan(&demo_dir(), dir.path(), None);
    let lines = ["The keeper climbed the stairs.", "What did he light?", "And then?"];
    let stats = check_chat(&plan, None, &lines, 12);
    // Turns 2 and 3 feed only their own tokens (the end of the answer before, the user's line and the
    // generation prompt), reusing the rest from the KV cache.
    assert_eq!(stats[0].1, 0);
    assert!(stats[1].1 > stats[0].0 && stats[2].1 > stats[1].1 + stats[1].0, "{stats:?}");
}

#[test]
fn chat_goes_back_to_the_shared_tokens_where_the_history_renders_differently() {
    let dir = tempfile::tempdir().unwrap();
    // A random-weight fixture writes byte soup whose text tokenizes otherwise: turn 2 starts a new session.
    let plan = chat_plan(&fixtures_dir().join("llama_gqa"), dir.path(), None);
    let lines = ["The keeper climbed the stairs.", "What did he light?"];
    let stats = check_chat(&plan, Some("Answer briefly."), &lines, 12);
    // Turn 2 goes back to what both renderings share (the system prompt and turn 1's line at least) and
    // prefills from there, on the same session.
    assert!(stats[1].1 > 0 && stats[1].1 < stats[0].0 + stats[0].1 + 12, "{stats:?}");
}

#[test]
fn chat_ends_with_a_note_when_the_context_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let plan = chat_plan(&demo_dir(), dir.path(), Some(128));
    let lines = ["The keeper climbed the stairs.", "What did he light?", "And then?", "Tell me more.", "More!"];
    let (stdout, stderr, ok) = chat(&plan, &["--temperature", "0", "-n", "500"], &lines);
    assert!(ok, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("note: ") && stderr.contains("context") && stderr.contains("the chat ends"), "{stderr}");
    let answers = stdout.lines().count();
    assert!((1..lines.len()).contains(&answers), "{answers} answers: {stdout}");
}

/// Reads a child's stdout (bytes) and stderr (lines) on threads, so a test can wait for what it prints.
struct Watched {
    child: std::process::Child,
    out: mpsc::Receiver<Vec<u8>>,
    err: mpsc::Receiver<String>,
    stderr: String,
}

impl Watched {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (tx, out) = mpsc::channel();
        let mut stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                let _ = tx.send(buf[..n].to_vec());
            }
        });
        let (tx, err) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, out, err, stderr: String::new() }
    }

    /// Drop what stdout delivered so far (after a turn's stats line: the rest of its answer).
    fn drain_output(&mut self) {
        std::thread::sleep(Duration::from_millis(200));
        while self.out.try_recv().is_ok() {}
    }

    fn send(&mut self, line: &str) {
        writeln!(self.child.stdin.as_mut().unwrap(), "{line}").unwrap();
    }

    fn first_output(&mut self) {
        self.out.recv_timeout(Duration::from_secs(60)).expect("the answer starts");
    }

    fn stderr_line(&mut self) -> String {
        let line =
            self.err.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("no line; {}", self.stderr));
        self.stderr += &line;
        self.stderr += "\n";
        line
    }

    fn interrupt(&self) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) }, 0);
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("the chat did not end; {}", self.stderr);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn chat_ctrl_c_stops_the_answer_and_ctrl_c_at_the_prompt_ends_the_chat() {
    let dir = tempfile::tempdir().unwrap();
    // Turns end only at -n or the context's end: eos <pad>, which the demo never writes, and a template that
    // ends turns with no special token. So an answer runs long unless Ctrl-C stops it.
    let template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n\n{% endfor %}\
                    {% if add_generation_prompt %}assistant:{% endif %}";
    let ck = with_template(&demo_dir(), dir.path(), template, |d| {
        for f in ["config.json", "generation_config.json"] {
            let path = d.join(f);
            let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            v["eos_token_id"] = Value::from(0);
            std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        }
    });
    let plan = compile_to(&ck, dir.path(), WeightFormat::F32, Some(4096));
    let mut chat =
        Watched::spawn(Command::new(bin("unicorn-rt")).arg(&plan).args(["--chat", "--verbose", "-n", "4000"]));
    for (turn, line) in ["The keeper climbed the stairs.", "What did he light?"].iter().enumerate() {
        chat.send(line);
        chat.first_output();
        chat.interrupt();
        let stats = loop {
            // (Turn 2 may begin with the note of a new prefill: the interrupted answer renders differently.)
            let line = chat.stderr_line();
            if !line.starts_with("note: ") {
                break line;
            }
        };
        assert!(
            stats.starts_with("prompt tokens: ") && stats.ends_with("stopped: interrupted)"),
            "turn {turn}: {stats}"
        );
        let generated: usize = stats.split('(').nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!(generated < 1000, "{stats}");
        chat.drain_output();
    }
    // At the prompt, Ctrl-C ends the chat (stdin is still open).
    std::thread::sleep(Duration::from_millis(300));
    chat.interrupt();
    let status = chat.wait();
    assert!(status.success(), "{status:?}; {}", chat.stderr);
}
