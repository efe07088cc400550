//! `unicorn-rt PLAN --chat [--system TEXT]`: a multi-turn chat in the terminal.
//!
//! Each user line (from stdin; the prompt `> ` is shown only when stdin is a terminal) joins the conversation,
//! which the plan's chat template renders; the model is fed only the tokens that are new since the last turn,
//! one [`Session`] keeping the KV cache for the whole chat. Where the template renders the earlier turns
//! differently from what the session holds (a reasoning model's template dropping its thinking, an answer whose
//! text tokenizes otherwise than it was generated), the session goes back to the tokens both share
//! ([`Session::rewind`]: on the same device and cache, so a GPU's weights are not loaded again; from the start
//! where a sliding window's ring has wrapped) and prefills the rest, so every answer is what one generation
//! over the whole rendered conversation gives. The answer streams until a
//! stop id of the template, `-n` tokens, the context's end (a note, and the chat ends) or Ctrl-C (the answer
//! stops, the prompt returns; pressed twice before the answer stops, as during a long prefill, it ends the
//! chat). Ctrl-C at the prompt or the end of stdin ends the chat.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use unicorn_runtime::chat::{encode, ChatTemplate, Message};
use unicorn_runtime::detokenize::Detokenizer;
use unicorn_runtime::sampler::{Sampler, SamplerOptions};
use unicorn_runtime::{Model, Session};

pub struct ChatOptions {
    /// A system message opening the conversation.
    pub system: Option<String>,
    /// Tokens an answer may have at most (`-n`).
    pub max_tokens: usize,
    pub sampler: SamplerOptions,
    pub prefill_chunk: Option<usize>,
    /// A stats line on stderr after each answer, and a note where the conversation is prefilled again.
    pub verbose: bool,
}

/// SIGINTs since the last look: counted by the handler, taken (reset) by whoever acts on them.
static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTS.fetch_add(1, Ordering::SeqCst);
}

/// Catch SIGINT without SA_RESTART, so that a wait for input returns to look at [`INTERRUPTS`].
fn catch_sigint() -> Result<()> {
    // SAFETY: the handler only stores to an atomic (async-signal-safe); sigaction gets a zeroed, then filled,
    // struct.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut()) != 0 {
            bail!("--chat: catching Ctrl-C: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

enum Line {
    Text(String),
    Eof,
    Interrupted,
}

/// Lines of stdin, read with poll(2) and read(2) so that Ctrl-C ends a wait (std's reader retries on EINTR).
#[derive(Default)]
struct Input {
    buf: Vec<u8>,
    eof: bool,
}

impl Input {
    fn line(&mut self) -> Result<Line> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let text = String::from_utf8_lossy(&line[..nl]);
                return Ok(Line::Text(text.trim_end_matches('\r').to_string()));
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(Line::Eof);
                }
                let text = String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned();
                return Ok(Line::Text(text));
            }
            if INTERRUPTS.swap(0, Ordering::SeqCst) > 0 {
                return Ok(Line::Interrupted);
            }
            let mut pfd = libc::pollfd { fd: 0, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd. The timeout bounds the wait, should SIGINT land just before it.
            let r = unsafe { libc::poll(&mut pfd, 1, 200) };
            if r <= 0 {
                let e = std::io::Error::last_os_error();
                if r == 0 || e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(anyhow!("stdin: {e}"));
            }
            let mut chunk = [0u8; 4096];
            // SAFETY: chunk is writable for its length.
            let n = unsafe { libc::read(0, chunk.as_mut_ptr().cast(), chunk.len()) };
            match n {
                0 => self.eof = true,
                n if n > 0 => self.buf.extend_from_slice(&chunk[..n as usize]),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(anyhow!("stdin: {e}"));
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    EndToken,
    Length,
    Interrupted,
    ContextFull,
}

/// Run the chat until stdin ends or Ctrl-C at the prompt.
pub fn run(model: &Model, o: ChatOptions) -> Result<()> {
    let plan = model.path().display().to_string();
    if o.max_tokens == 0 {
        bail!("-n must be at least 1 with --chat");
    }
    let tok = model.tokenizer()?.ok_or_else(|| anyhow!("{plan}: plan has no tokenizer, which --chat needs"))?;
    let template = ChatTemplate::from_model_with(model, Some(&tok))?.ok_or_else(|| {
        anyhow!("{plan}: plan has no chat template, which --chat needs (the checkpoint had none: use --prompt)")
    })?;
    let ctx = model.header().spec.max_context;
    let mut session = Session::new(model, ctx)?;
    if let Some(c) = o.prefill_chunk {
        session.set_prefill_chunk(c)?;
    }
    // The tokens the session has run, position by position.
    let mut held: Vec<u32> = Vec::new();
    let mut sampler = Sampler::new(o.sampler);
    let mut messages: Vec<Message> = o.system.iter().map(|s| Message::new("system", s.as_str())).collect();
    let stop_ids = template.stop_ids().to_vec();
    let tty = std::io::stdin().is_terminal();
    catch_sigint()?;
    let mut input = Input::default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let write = |out: &mut std::io::StdoutLock, s: &str| -> Result<()> {
        out.write_all(s.as_bytes()).and_then(|()| out.flush()).context("stdout")
    };

    loop {
        if tty {
            write(&mut out, "> ")?;
        }
        let line = match input.line()? {
            Line::Text(l) => l,
            Line::Eof | Line::Interrupted => {
                if tty {
                    write(&mut out, "\n")?;
                }
                return Ok(());
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        messages.push(Message::new("user", line));
        let text = template.render(&messages, true)?;
        let ids = encode(&tok, &text)?;
        if ids.len() > ctx {
            eprintln!("note: the conversation has {} tokens, more than the context of {ctx}: the chat ends", ids.len());
            return Ok(());
        }
        // Feed only what is new, where the rendered conversation extends what the session holds; where it does
        // not, go back to what both share (at least one token is fed, for its logits), on the same session.
        let same = held.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        if same < held.len() || same == ids.len() {
            let kept = session.rewind(same.min(ids.len().saturating_sub(1)));
            if o.verbose {
                eprintln!(
                    "note: the conversation renders differently from token {same} of the {} held: prefilling it from token {kept}",
                    held.len()
                );
            }
            held.truncate(kept);
        }
        let new = &ids[held.len()..];
        let reused = held.len();

        let mut detok = Detokenizer::new(&ids);
        let mut answer: Vec<u32> = Vec::new();
        let t0 = Instant::now();
        let mut next = step(&mut session, &mut sampler, new)?;
        held.extend_from_slice(new);
        let prefill_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut generated = 0;
        let stop = loop {
            generated += 1;
            if stop_ids.contains(&next) {
                break Stop::EndToken;
            }
            answer.push(next);
            if let Some(piece) = detok.push(&tok, next) {
                write(&mut out, &piece)?;
            }
            if generated == o.max_tokens {
                break Stop::Length;
            }
            if INTERRUPTS.load(Ordering::SeqCst) > 0 {
                break Stop::Interrupted;
            }
            if session.position() >= session.context() {
                break Stop::ContextFull;
            }
            next = step(&mut session, &mut sampler, &[next])?;
            held.push(*answer.last().expect("just pushed"));
        };
        let decode_secs = t1.elapsed().as_secs_f64();
        write(&mut out, &format!("{}\n", detok.finish(&tok)))?;
        // One Ctrl-C meant for this answer does not end the chat, though the answer may have ended first; a
        // second one does (a prefill runs to its end before the first is seen).
        let interrupts = INTERRUPTS.swap(0, Ordering::SeqCst);
        let content = tok.decode(&answer, true).map_err(|e| anyhow!("decoding the answer: {e}"))?;
        messages.push(Message::new("assistant", content));
        if o.verbose {
            let why = match stop {
                Stop::EndToken => "end token",
                Stop::Length => "length limit",
                Stop::Interrupted => "interrupted",
                Stop::ContextFull => "context full",
            };
            let decode = if generated > 1 { (generated - 1) as f64 / decode_secs.max(1e-9) } else { 0.0 };
            eprintln!(
                "prompt tokens: {} new, {reused} reused, prefill: {:.1} tok/s, decode: {decode:.1} tok/s ({generated} tokens, stopped: {why})",
                new.len(),
                new.len() as f64 / prefill_secs.max(1e-9),
            );
        }
        if stop == Stop::ContextFull {
            eprintln!("note: the context of {ctx} tokens is full: the chat ends");
            return Ok(());
        }
        if interrupts >= 2 {
            return Ok(());
        }
    }
}

/// Run `tokens` and pick the next token: as the generation loop does, greedy and top-k picks are left to the
/// executor.
fn step(session: &mut Session, sampler: &mut Sampler, tokens: &[u32]) -> Result<u32> {
    Ok(if sampler.is_greedy() {
        session.forward_greedy(tokens)?
    } else if let Some(k) = sampler.candidates() {
        sampler.sample_top(session.forward_top_k(tokens, k)?)
    } else {
        sampler.sample(session.forward(tokens, false)?)
    })
}
