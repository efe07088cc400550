//! unicornc: compiles a Hugging Face checkpoint into a Unicorn plan.

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use unicorn_compiler::compile::{compile, CompileOptions};
use unicorn_ir::{DType, WeightFormat};
use unicorn_passes::{Options, Target};

#[derive(Parser)]
#[command(name = "unicornc", version, about = "Compile a Hugging Face checkpoint into a Unicorn plan (.ucp)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum TargetArg {
    /// The CPU (AVX2/FMA where available).
    Cpu,
}

#[derive(Clone, Copy, ValueEnum)]
enum WeightsArg {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
}

#[derive(Subcommand)]
enum Command {
    /// Compile MODEL (a .safetensors file with config.json beside it, or a checkpoint folder) into PLAN.
    Compile {
        /// A .safetensors file, a checkpoint folder, or a model.safetensors.index.json.
        model: PathBuf,
        /// Where to write the plan.
        #[arg(short = 'o', long = "output", value_name = "PLAN")]
        output: PathBuf,
        /// The device the plan runs on.
        #[arg(long, value_enum, default_value = "cpu")]
        target: TargetArg,
        /// Storage format of the projection and embedding weights (norms and biases stay f32).
        #[arg(long, value_enum, default_value = "q8_0")]
        weights: WeightsArg,
        /// Element type of the KV cache: f32, or f16 (half the memory); default f16, f32 with --weights f32.
        #[arg(long, value_name = "TYPE", value_parser = parse_kv_cache)]
        kv_cache: Option<DType>,
        /// Longest sequence (prompt + generated tokens) the plan accepts; defaults to the model's.
        #[arg(long, value_name = "N")]
        max_context: Option<usize>,
        /// Print what each pass did.
        #[arg(short, long)]
        verbose: bool,
        /// No progress output.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Describe a plan: architecture, phases, ops per device, weight bytes per format, peak memory.
    Inspect {
        plan: PathBuf,
        /// List every step of every phase.
        #[arg(long)]
        steps: bool,
    },
}

fn parse_kv_cache(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        _ => Err("expected f32 or f16".into()),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Compile { model, output, target, weights, kv_cache, max_context, verbose, quiet } => {
            if max_context == Some(0) {
                bail!("--max-context must be at least 1");
            }
            let weights = match weights {
                WeightsArg::F32 => WeightFormat::F32,
                WeightsArg::F16 => WeightFormat::F16,
                WeightsArg::Bf16 => WeightFormat::Bf16,
                WeightsArg::Q8_0 => WeightFormat::Q8_0,
                WeightsArg::Q4_0 => WeightFormat::Q4_0,
            };
            let target = match target {
                TargetArg::Cpu => Target::Cpu,
            };
            let options =
                CompileOptions { passes: Options { target, weights }, kv_cache, max_context, progress: !quiet };
            let s = compile(&model, &output, &options)?;
            if verbose {
                for r in &s.reports {
                    eprintln!("pass {:13} {}", r.pass, r.summary);
                }
            }
            if !quiet {
                eprintln!(
                    "wrote {} ({}, {} layers, {} weights, {:.1} MiB) in {:.1} s",
                    output.display(),
                    s.header.spec.architecture,
                    s.header.spec.num_layers,
                    weights,
                    s.plan_bytes as f64 / (1u64 << 20) as f64,
                    s.seconds
                );
            }
        }
        Command::Inspect { plan, steps } => {
            let plan = unicorn_ir::container::PlanFile::open(&plan)?;
            print!("{}", unicorn_compiler::inspect::describe(&plan, steps));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .map(String::from)
            .or_else(|| info.payload().downcast_ref::<String>().cloned());
        eprintln!("unicornc: internal error: {}", msg.unwrap_or_else(|| "panic".into()));
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.render().to_string();
            let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
            eprintln!("unicornc: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unicornc: error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
