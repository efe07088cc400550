//! unicorn-rt: run a Unicorn plan.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use unicorn_ir::cli::print;
use unicorn_ir::container::Residency;
use unicorn_runtime::bench::BenchOptions;
use unicorn_runtime::detokenize::Detokenizer;
use unicorn_runtime::executor::{list_devices, DeviceKind};
use unicorn_runtime::generate::{generate, StopReason};
use unicorn_runtime::sampler::{Sampler, SamplerOptions};
use unicorn_runtime::{Model, Session};

mod chat_cli;

/// The most worker threads `--threads` takes.
const MAX_THREADS: u64 = 1024;

#[derive(Parser)]
#[command(name = "unicorn-rt", version, about = "Run a Unicorn plan (.ucp): generate text, or dump logits")]
struct Cli {
    /// The plan written by `unicornc compile`.
    #[arg(required_unless_present = "list_devices")]
    plan: Option<PathBuf>,
    /// The device to run on (see --list-devices).
    #[arg(long, value_name = "DEVICE", default_value = "auto", value_parser = DeviceKind::parse)]
    device: DeviceKind,
    /// List the devices this machine offers and exit.
    #[arg(long, conflicts_with = "plan")]
    list_devices: bool,
    /// Run prefills in chunks of at most C tokens (default: the plan's chunk, which is also the most).
    #[arg(long, value_name = "C")]
    prefill_chunk: Option<usize>,
    /// Text to continue (tokenized with the plan's tokenizer).
    #[arg(long, conflicts_with = "tokens")]
    prompt: Option<String>,
    /// Token ids to continue, comma-separated (instead of --prompt).
    #[arg(long, value_name = "IDS")]
    tokens: Option<String>,
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "max-tokens", value_name = "N", default_value_t = 128)]
    n: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Sample among the K most likely tokens only; 0 disables.
    #[arg(long, value_name = "K", default_value_t = 40)]
    top_k: usize,
    /// Sample from the smallest set of tokens whose probability reaches P.
    #[arg(long, value_name = "P", default_value_t = 0.95)]
    top_p: f32,
    /// Random seed (default: from the clock).
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Write the logits of every prompt position of one prefill pass to FILE as float32 [len, vocab] .npy.
    #[arg(long, value_name = "FILE")]
    logits_out: Option<PathBuf>,
    /// Print the generated token ids, comma-separated, on one line (instead of text).
    #[arg(long)]
    print_ids: bool,
    /// Worker threads, 1 to 1024 (default: all cores).
    #[arg(long, value_name = "T", value_parser = clap::value_parser!(u64).range(1..=MAX_THREADS))]
    threads: Option<u64>,
    /// Map the plan file instead of reading it into memory: starts sooner on a large plan whose file is in the
    /// page cache, and shares those pages with other processes, but decodes a few percent slower (no huge pages).
    #[arg(long)]
    mmap: bool,
    /// Measure prefill and decode speed, time to first token and peak memory instead of generating text.
    #[arg(long, conflicts_with_all = ["prompt", "tokens", "logits_out", "print_ids"])]
    bench: bool,
    /// --bench: prompt tokens.
    #[arg(long, value_name = "P", default_value_t = 128, requires = "bench")]
    prompt_len: usize,
    /// --bench: tokens to generate.
    #[arg(long, value_name = "N", default_value_t = 64, requires = "bench")]
    gen: usize,
    /// --bench: measured repeats (after one warm-up run).
    #[arg(long, value_name = "R", default_value_t = 3, requires = "bench")]
    repeat: usize,
    /// --bench: print one JSON object instead of a table.
    #[arg(long, requires = "bench")]
    json: bool,
    /// --bench: also show where the time goes, per kernel.
    #[arg(long, requires = "bench")]
    profile: bool,
    /// Chat in the terminal: each line of stdin is a user's turn, rendered with the plan's chat template; the
    /// answer streams until the template's end of turn or -n tokens. Ctrl-C stops an answer (twice: ends the
    /// chat); Ctrl-C at the prompt, or the end of stdin, ends the chat.
    #[arg(long, conflicts_with_all = ["prompt", "tokens", "logits_out", "print_ids", "bench", "serve"])]
    chat: bool,
    /// --chat: a system message opening the conversation.
    #[arg(long, value_name = "TEXT", requires = "chat")]
    system: Option<String>,
    /// --chat: after each answer, a stats line on stderr (prompt tokens new and reused from the KV cache,
    /// prefill and decode speed).
    #[arg(long, requires = "chat")]
    verbose: bool,
    /// Serve an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models, /health,
    /// /openapi.json) instead of generating once.
    #[arg(long, conflicts_with_all = ["prompt", "tokens", "logits_out", "print_ids", "bench"])]
    serve: bool,
    /// --serve: the address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1", requires = "serve")]
    host: String,
    /// --serve: the port to listen on (0: any free one; the address is printed on stderr).
    #[arg(long, value_name = "PORT", default_value_t = 8080, requires = "serve")]
    port: u16,
    /// --serve: requests generated at once, each in its own slot (KV cache of the plan's context), 1 to 64.
    #[arg(long, value_name = "N", default_value_t = 4, requires = "serve",
          value_parser = clap::value_parser!(u64).range(1..=unicorn_runtime::server::MOST_SLOTS as u64))]
    parallel: u64,
}

fn parse_tokens(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(|t| t.trim().parse::<u32>().map_err(|_| anyhow!("--tokens: '{}' is not a token id", t.trim())))
        .collect()
}

fn run(cli: Cli) -> Result<()> {
    unicorn_runtime::cpu::isa::Isa::from_env().map_err(anyhow::Error::msg)?;
    unicorn_runtime::cpu::isa::DecodeStreams::from_env().map_err(anyhow::Error::msg)?;
    if cli.temperature.is_nan() || cli.temperature < 0.0 {
        bail!("--temperature must be >= 0");
    }
    if cli.top_p.is_nan() || cli.top_p <= 0.0 || cli.top_p > 1.0 {
        bail!("--top-p must be in (0, 1]");
    }
    if let Some(t) = cli.threads {
        unicorn_runtime::cpu::pool::set_threads(t as usize);
    }
    if cli.list_devices {
        let lines: String = list_devices().iter().map(|d| format!("{d}\n")).collect();
        return print(lines);
    }
    let plan_path = cli.plan.clone().expect("clap requires a plan");
    let residency = if cli.mmap { Residency::Mapped } else { Residency::Resident };
    let model = Model::load_with(&plan_path, residency, cli.device)?;
    if residency == Residency::Resident && model.residency() == Residency::Mapped {
        eprintln!(
            "note: {} is larger than the memory available; mapped instead of read (decoding will be slower)",
            plan_path.display()
        );
    }
    let new_session = |ctx: usize| -> Result<Session> {
        let mut s = Session::new(&model, ctx)?;
        if let Some(c) = cli.prefill_chunk {
            s.set_prefill_chunk(c)?;
        }
        Ok(s)
    };
    let spec = &model.header().spec;
    if cli.chat {
        let seed = cli.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        });
        let sampler = SamplerOptions { temperature: cli.temperature, top_k: cli.top_k, top_p: cli.top_p, seed };
        let o = chat_cli::ChatOptions {
            system: cli.system.clone(),
            max_tokens: cli.n,
            sampler,
            prefill_chunk: cli.prefill_chunk,
            verbose: cli.verbose,
        };
        return chat_cli::run(&model, o);
    }
    if cli.serve {
        let o = unicorn_runtime::server::ServeOptions {
            host: cli.host.clone(),
            port: cli.port,
            parallel: cli.parallel as usize,
            prefill_chunk: cli.prefill_chunk,
        };
        return Ok(unicorn_runtime::server::serve(&model, o)?);
    }
    if cli.bench {
        let o = BenchOptions {
            prompt_len: cli.prompt_len,
            gen: cli.gen,
            repeat: cli.repeat,
            profile: cli.profile,
            prefill_chunk: cli.prefill_chunk,
        };
        let r = unicorn_runtime::bench::run(&model, o)?;
        return if cli.json { print(format!("{}\n", r.json())) } else { print(r.table()) };
    }
    let prompt: Vec<u32> = match (&cli.prompt, &cli.tokens) {
        (_, Some(t)) => parse_tokens(t)?,
        (Some(text), None) => {
            let tok = model
                .tokenizer()?
                .ok_or_else(|| anyhow!("{}: plan has no tokenizer; use --tokens", plan_path.display()))?;
            tok.encode(text.as_str(), true).map_err(|e| anyhow!("--prompt: {e}"))?.get_ids().to_vec()
        }
        (None, None) => bail!("give --prompt TEXT or --tokens IDS"),
    };
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    if prompt.len() > spec.max_context {
        bail!(
            "the prompt has {} tokens but the plan's context is {} (compile with a larger --max-context)",
            prompt.len(),
            spec.max_context
        );
    }

    if let Some(path) = &cli.logits_out {
        let mut session = new_session(prompt.len())?;
        let logits = session.forward(&prompt, true)?;
        unicorn_runtime::npy::write_f32(path, &[prompt.len(), spec.vocab_size], logits, &[&plan_path])
            .context("--logits-out")?;
        if !cli.print_ids && cli.prompt.is_none() {
            return Ok(());
        }
    }

    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
    });
    let mut sampler =
        Sampler::new(SamplerOptions { temperature: cli.temperature, top_k: cli.top_k, top_p: cli.top_p, seed });
    let mut session = new_session(prompt.len() + cli.n)?;
    let eos = spec.eos_token_ids.clone();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let stats = if cli.print_ids {
        let mut ids = Vec::new();
        let stats = generate(&mut session, &prompt, cli.n, &mut sampler, &eos, |t| {
            ids.push(t.to_string());
            Ok(())
        })?;
        writeln!(out, "{}", ids.join(",")).and_then(|_| out.flush()).context("stdout")?;
        stats
    } else {
        let tok = model
            .tokenizer()?
            .ok_or_else(|| anyhow!("{}: plan has no tokenizer; use --print-ids", plan_path.display()))?;
        if let Some(text) = &cli.prompt {
            write!(out, "{text}").and_then(|_| out.flush()).context("stdout")?;
        }
        let mut detok = Detokenizer::new(&prompt);
        let stats = generate(&mut session, &prompt, cli.n, &mut sampler, &eos, |t| {
            if eos.contains(&t) {
                return Ok(());
            }
            if let Some(piece) = detok.push(&tok, t) {
                out.write_all(piece.as_bytes()).and_then(|_| out.flush()).map_err(unicorn_runtime::Error::Output)?;
            }
            Ok(())
        })?;
        writeln!(out, "{}", detok.finish(&tok)).and_then(|_| out.flush()).context("stdout")?;
        stats
    };
    let why = match stats.stop {
        StopReason::EndToken => "end token",
        StopReason::Length => "length limit",
        StopReason::ContextFull => "context full",
    };
    eprintln!(
        "prompt tokens: {}, prefill: {:.1} tok/s, decode: {:.1} tok/s ({} tokens, stopped: {why})",
        stats.prompt_tokens,
        stats.prefill_tok_s(),
        stats.decode_tok_s(),
        stats.generated
    );
    Ok(())
}

fn main() -> ExitCode {
    unicorn_ir::cli::main::<Cli>("unicorn-rt", run)
}
