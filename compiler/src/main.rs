//! unicornc: compiles a Hugging Face checkpoint into a Unicorn plan.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use unicorn_compiler::compile::{compile, CompileOptions};
use unicorn_compiler::profile::ProfileChoice;
use unicorn_ir::validate::limits::MAX_CONTEXT;
use unicorn_ir::{DType, WeightFormat};
use unicorn_passes::{Options, Target};

#[derive(Parser)]
#[command(name = "unicornc", version, about = "Compile a Hugging Face checkpoint into a Unicorn plan (.ucp)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
        /// The device the plan runs on: cpu, vulkan (any Vulkan GPU), phoenix (a Ryzen 7040/8040: prefill's
        /// projections and attention on the NPU, the rest on the CPU) or hybrid (its NPU and iGPU together:
        /// prefill as phoenix places it, decode on the iGPU through Vulkan).
        #[arg(long, default_value = "cpu", value_parser = Target::parse)]
        target: Target,
        /// Storage format of the projection and embedding weights (norms and biases stay f32): f32, f16, bf16,
        /// q8_0 or q4_0; default q8_0, bf16 with --target phoenix or hybrid (the NPU designs' format).
        #[arg(long, value_name = "FORMAT", value_parser = WeightFormat::parse)]
        weights: Option<WeightFormat>,
        /// Element type of the KV cache: f32, or f16 (half the memory); default f16, f32 with --weights f32.
        #[arg(long, value_name = "TYPE", value_parser = parse_kv_cache)]
        kv_cache: Option<DType>,
        /// Longest sequence (prompt + generated tokens) the plan accepts; defaults to the model's.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_CONTEXT))]
        max_context: Option<u64>,
        /// The GPU a --target vulkan (or hybrid) plan's kernels are generated for: auto (the GPU found here, or generic
        /// when there is none), generic (any Vulkan 1.2 device), vulkan:N, or a .json device profile.
        #[arg(long, value_name = "PROFILE", value_parser = ProfileChoice::parse)]
        device_profile: Option<ProfileChoice>,
        /// Also write each NPU design's MLIR (aie / aiex dialects) into DIR (with --target phoenix or hybrid).
        #[arg(long, value_name = "DIR")]
        emit_mlir: Option<PathBuf>,
        /// Print what each pass did.
        #[arg(short, long)]
        verbose: bool,
        /// No progress output.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Build a --target phoenix (or hybrid) plan's NPU designs to xclbins with mlir-aie's aiecc (on PATH or in
    /// $MLIR_AIE_INSTALL_DIR/bin; Peano from $PEANO_INSTALL_DIR), storing them in the plan.
    BuildNpu {
        plan: PathBuf,
        /// Write the finished plan here instead of replacing PLAN.
        #[arg(short = 'o', long = "output", value_name = "PLAN")]
        output: Option<PathBuf>,
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
        Command::Compile {
            model,
            output,
            target,
            weights,
            kv_cache,
            max_context,
            device_profile,
            emit_mlir,
            verbose,
            quiet,
        } => {
            if device_profile.is_some() && !matches!(target, Target::Vulkan | Target::Hybrid) {
                anyhow::bail!("--device-profile: applies to --target vulkan and hybrid only");
            }
            if emit_mlir.is_some() && !matches!(target, Target::Phoenix | Target::Hybrid) {
                anyhow::bail!("--emit-mlir: applies to --target phoenix and hybrid only (the NPU designs' MLIR)");
            }
            let weights = weights.unwrap_or(match target {
                Target::Phoenix | Target::Hybrid => WeightFormat::Bf16,
                Target::Cpu | Target::Vulkan => WeightFormat::Q8_0,
            });
            let options = CompileOptions {
                passes: Options { target, weights },
                kv_cache,
                max_context: max_context.map(|m| m as usize),
                device_profile: device_profile.unwrap_or_default(),
                progress: !quiet,
                emit_mlir,
            };
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
        Command::BuildNpu { plan, output, quiet } => {
            let out = output.unwrap_or_else(|| plan.clone());
            let built = unicorn_compiler::npu_build::build_npu(&plan, &out, !quiet)?;
            if !quiet {
                eprintln!("built {built} NPU designs into {}", out.display());
            }
        }
        Command::Inspect { plan, steps } => {
            let plan = unicorn_ir::container::PlanFile::open(&plan)?;
            unicorn_ir::cli::print(unicorn_compiler::inspect::describe(&plan, steps))?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    unicorn_ir::cli::main::<Cli>("unicornc", run)
}
