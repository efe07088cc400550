//! `unicornc compile`: checkpoint -> module -> passes -> plan file, streaming the weights.

use crate::build::build_module;
use crate::frontend::Checkpoint;
use crate::lower::{lower, LowerOptions};
use crate::profile::ProfileChoice;
use crate::progress::Progress;
use anyhow::{Context, Result};
use rayon::prelude::*;
use std::path::Path;
use std::time::Instant;
use unicorn_ir::container::{PlanWriter, SectionKind};
use unicorn_ir::device::DeviceProfile;
use unicorn_ir::plan::{PlanHeader, PlanWeight};
use unicorn_ir::quant::{encode_row, source_to_f32, SourceDType};
use unicorn_passes::{pipeline, Options, PassReport, Target};

pub struct CompileOptions {
    pub passes: Options,
    /// Element type of the KV cache; `None` takes [`unicorn_passes::default_kv_cache`] for the weights.
    pub kv_cache: Option<unicorn_ir::DType>,
    pub max_context: Option<usize>,
    /// The GPU a Vulkan plan's kernels are generated for.
    pub device_profile: ProfileChoice,
    /// Print progress to stderr.
    pub progress: bool,
    /// Write each NPU design's MLIR into this folder (`--emit-mlir`).
    pub emit_mlir: Option<std::path::PathBuf>,
}

pub struct CompileSummary {
    pub header: PlanHeader,
    pub reports: Vec<PassReport>,
    pub plan_bytes: u64,
    pub seconds: f64,
}

fn source_size(d: SourceDType) -> usize {
    match d {
        SourceDType::F32 => 4,
        SourceDType::F16 | SourceDType::Bf16 => 2,
    }
}

/// Convert one weight from the checkpoint into its plan format, in parallel row blocks, writing in order.
fn write_weight(ck: &Checkpoint, w: &PlanWeight, out: &mut PlanWriter, progress: &Progress) -> Result<()> {
    let t = ck.get(&w.name).expect("the builder required every weight");
    let src = ck.bytes(t);
    let cols = *w.shape.last().expect("weights have a shape");
    let rows = w.shape.iter().product::<usize>() / cols;
    let row_src = cols * source_size(t.dtype);
    use unicorn_ir::quant::{interleave_rows, WeightLayout, INTERLEAVE};
    // Blocks of about 4 MiB of source, converted 8 at a time by the pool.
    let interleaved = w.layout == WeightLayout::Interleaved8;
    // An interleaved matrix is repacked per group of INTERLEAVE rows, so blocks hold whole groups.
    let group = if interleaved { INTERLEAVE } else { 1 };
    let block_rows = ((4 << 20) / row_src.max(1)).next_multiple_of(group).clamp(group, rows.max(group));
    let starts: Vec<usize> = (0..rows).step_by(block_rows).collect();
    for batch in starts.chunks(8) {
        let encoded: Vec<Vec<u8>> = batch
            .par_iter()
            .map(|&r0| {
                let r1 = (r0 + block_rows).min(rows);
                let mut f = vec![0f32; cols];
                let mut bytes = Vec::with_capacity((r1 - r0) * w.format.row_bytes(cols).unwrap_or(0));
                for r in r0..r1 {
                    source_to_f32(t.dtype, &src[r * row_src..(r + 1) * row_src], &mut f);
                    encode_row(w.format, &f, &mut bytes);
                }
                if interleaved {
                    let rb = w.format.row_bytes(cols).expect("whole blocks");
                    // The last group is padded with zero rows (scale 0: every value 0), see WeightLayout.
                    bytes.resize(bytes.len().next_multiple_of(INTERLEAVE * rb), 0);
                    let mut repacked = Vec::with_capacity(bytes.len());
                    for g in bytes.chunks(INTERLEAVE * rb) {
                        interleave_rows(w.format, cols, g, &mut repacked);
                    }
                    bytes = repacked;
                }
                bytes
            })
            .collect();
        for (chunk, &r0) in encoded.iter().zip(batch) {
            out.write(chunk)?;
            let r1 = (r0 + block_rows).min(rows);
            progress.advance(((r1 - r0) * row_src) as u64);
        }
        let done = (batch[batch.len() - 1] + block_rows).min(rows);
        ck.release_range(t, batch[0] * row_src, done * row_src);
    }
    ck.release(t);
    Ok(())
}

/// Write each NPU design's MLIR to `dir/<design>.mlir`.
fn emit_mlir(header: &PlanHeader, kernels: &[u8], dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("--emit-mlir: creating {}", dir.display()))?;
    for (_, k) in crate::npu_build::npu_kernels(header, kernels)? {
        let path = dir.join(format!("{}.mlir", k.design.name));
        std::fs::write(&path, &k.mlir).with_context(|| format!("--emit-mlir: writing {}", path.display()))?;
    }
    Ok(())
}

pub fn compile(model: &Path, plan_path: &Path, options: &CompileOptions) -> Result<CompileSummary> {
    let start = Instant::now();
    let mut progress = Progress::new(options.progress);
    progress.stage("reading the checkpoint");
    let ck = Checkpoint::open(model, options.max_context)?;
    let mut module = build_module(&ck)?;
    progress.stage("running the passes");
    let reports = pipeline(&mut module, &options.passes)?;
    let kv_cache = options.kv_cache.unwrap_or_else(|| unicorn_passes::default_kv_cache(options.passes.weights));
    let (profile, from) = match options.passes.target {
        Target::Vulkan | Target::Hybrid => {
            let (profile, from) = options.device_profile.resolve().map_err(|e| anyhow::anyhow!(e))?;
            (profile, Some(from))
        }
        Target::Cpu | Target::Phoenix => (DeviceProfile::generic(), None),
    };
    progress.stage("generating kernels");
    let (mut header, mut kernels) = lower(&module, LowerOptions { target: options.passes.target, kv_cache, profile })
        .map_err(|e| anyhow::anyhow!("generating kernels: {e}"))?;
    progress.finish();
    if let (Some(from), true) = (from, options.progress) {
        eprintln!("kernels for {from}");
    }
    let designs = header.kernels.iter().filter(|k| k.backend == unicorn_ir::plan::Backend::Npu).count();
    if matches!(options.passes.target, Target::Phoenix | Target::Hybrid) {
        if let (Some(note), true) = (unicorn_passes::attention_budget_note(&module), options.progress) {
            eprintln!("note: {note}");
        }
        if designs == 0 && options.progress {
            eprintln!(
                "note: no NPU designs: the NPU takes prefill's bf16 projections, and these weights are {}",
                options.passes.weights
            );
        } else if let Some(aiecc) = crate::npu_build::find_aiecc() {
            progress.stage("building the NPU designs with aiecc");
            let (section, built) = crate::npu_build::build_all(&aiecc, &mut header, &kernels, &progress)?;
            kernels = section;
            progress.finish();
            if options.progress {
                eprintln!("built {built} NPU designs with {}", aiecc.display());
            }
        } else if options.progress {
            eprintln!(
                "note: aiecc not found: the plan carries its {designs} NPU designs as MLIR; `unicornc build-npu PLAN` builds them where mlir-aie is installed"
            );
        }
    }

    let mut out = PlanWriter::create(plan_path, &ck.input_files())?;
    let total: u64 = header.weights.iter().map(|w| ck.get(&w.name).map_or(0, |t| ck.bytes(t).len() as u64)).sum();
    progress.bytes("writing weights", total);
    out.begin_section(SectionKind::Weights)?;
    for w in &header.weights {
        out.pad_section_to(w.offset)?;
        progress.item(&w.name);
        write_weight(&ck, w, &mut out, &progress).with_context(|| format!("writing weight {}", w.name))?;
    }
    out.end_section()?;
    // CPU plans use the runtime's built-in kernels; GPU and NPU targets store their binaries here.
    out.section(SectionKind::Kernels, &kernels)?;
    if let Some(tok) = &ck.tokenizer_json {
        out.section(SectionKind::Tokenizer, tok)?;
    }
    if let Some(chat) = &ck.chat {
        out.section(SectionKind::Chat, &serde_json::to_vec(chat)?)?;
    }
    let config: serde_json::Value = serde_json::from_str(&ck.config_json).unwrap_or(serde_json::Value::Null);
    let generation: serde_json::Value =
        ck.generation_config_json.as_deref().and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default();
    let metadata = serde_json::json!({
        "source": ck.source.display().to_string(),
        "weights": options.passes.weights.name(),
        "target": options.passes.target.name(),
        "kv_cache": kv_cache.name(),
        "passes": reports.iter().map(|r| format!("{}: {}", r.pass, r.summary)).collect::<Vec<_>>(),
        "config": config,
        "generation_config": generation,
    });
    out.section(SectionKind::Metadata, &serde_json::to_vec_pretty(&metadata)?)?;
    let plan_bytes = out.finish(header.clone())?;
    progress.finish();
    if let Some(dir) = &options.emit_mlir {
        emit_mlir(&header, &kernels, dir)?;
    }
    Ok(CompileSummary { header, reports, plan_bytes, seconds: start.elapsed().as_secs_f64() })
}
