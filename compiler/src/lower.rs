//! Lowering of a planned module to the executable plan header: the target lays out the weights and lowers each
//! phase to launches; this file adds the KV caches, the prefill chunk and the memory estimate.

use unicorn_ir::device::DeviceProfile;
use unicorn_ir::plan::{
    ArtifactRange, KernelEntry, KernelId, KvCacheDecl, KvCapacity, KvLayout, PlanHeader, PlanWeight,
};
use unicorn_ir::quant::WeightLayout;
use unicorn_ir::{DType, Device, Module, Phase};
use unicorn_passes::Target;
use unicorn_targets::{cpu, npu, vulkan};

pub use unicorn_ir::spec::DEFAULT_PREFILL_CHUNK;

/// Bytes of a weight in its plan format and layout (an interleaved matrix stores whole groups of rows).
pub fn weight_bytes(w: &unicorn_ir::WeightInfo, layout: WeightLayout) -> u64 {
    let row = w.format.row_bytes(w.cols()).expect("precision pass chose a format that fits the rows");
    (layout.stored_rows(w.rows()) * row) as u64
}

/// Rows of one prefill execution of a model: [`DEFAULT_PREFILL_CHUNK`], or the context where that is shorter.
fn prefill_chunk(spec: &unicorn_ir::ModelSpec) -> u64 {
    spec.prefill_chunk()
}

/// What the plan asks of the executor beyond the graph.
#[derive(Debug, Clone)]
pub struct LowerOptions {
    pub target: Target,
    pub kv_cache: DType,
    /// The GPU the Vulkan target generates kernels for.
    pub profile: DeviceProfile,
}

/// The plan header and its kernels section (SPIR-V for the Vulkan target; empty for the CPU's built-in kernels).
pub fn lower(module: &Module, options: LowerOptions) -> Result<(PlanHeader, Vec<u8>), String> {
    // Every target lays the weights out as the CPU kernels read them; the GPU kernels read the same layout, and
    // the NPU designs read a bf16 matrix's rows as they are (the host pads them to the design's shape).
    let mut weights: Vec<PlanWeight> = module
        .weights
        .iter()
        .map(|w| {
            let layout = cpu::weight_layout(w.format, &w.shape);
            PlanWeight {
                name: w.name.clone(),
                shape: w.shape.clone(),
                role: w.role,
                format: w.format,
                layout,
                align: cpu::WEIGHT_ALIGN,
                offset: 0,
                bytes: weight_bytes(w, layout),
            }
        })
        .collect();
    PlanHeader::assign_weight_offsets(&mut weights);
    // The Vulkan plans' argmax and top-k kernels, which pick tokens where the logits are.
    let (entries, section, phases, pickers) = match options.target {
        Target::Cpu => {
            let mut kernels = cpu::KernelTable::default();
            let phases: Vec<_> = module.graphs.iter().map(|g| cpu::lower_phase(module, g, &mut kernels)).collect();
            (kernels.entries, Vec::new(), phases, None)
        }
        Target::Vulkan => {
            let mut kernels = vulkan::KernelTable::default();
            let phases = module
                .graphs
                .iter()
                .map(|g| vulkan::lower_phase(module, g, options.kv_cache, &options.profile, &mut kernels))
                .collect::<Result<Vec<_>, _>>()?;
            let argmax = vulkan::argmax_kernel(module, &mut kernels)?;
            let top_k = vulkan::top_k_kernel(module, &mut kernels)?;
            (kernels.entries, kernels.section, phases, Some((argmax, top_k)))
        }
        Target::Phoenix => {
            let mut kernels = npu::lower::KernelTable::default();
            let chunk = prefill_chunk(&module.spec);
            let phases = module
                .graphs
                .iter()
                .map(|g| npu::lower::lower_phase(module, g, chunk, &mut kernels))
                .collect::<Result<Vec<_>, _>>()?;
            verify_npu_bodies(&kernels.cpu.entries, &kernels.section)?;
            (kernels.cpu.entries, kernels.section, phases, None)
        }
        Target::Hybrid => {
            // Prefill as the Phoenix target lowers it (NPU designs and the CPU's kernels), decode as the Vulkan
            // target does; one kernel table, the SPIR-V after the NPU artifacts.
            let mut npu_kernels = npu::lower::KernelTable::default();
            let mut gpu_kernels = vulkan::KernelTable::default();
            let chunk = prefill_chunk(&module.spec);
            let mut phases = Vec::with_capacity(module.graphs.len());
            for g in &module.graphs {
                phases.push(match g.phase {
                    Phase::Prefill => npu::lower::lower_phase(module, g, chunk, &mut npu_kernels)?,
                    Phase::Decode => {
                        vulkan::lower_phase(module, g, options.kv_cache, &options.profile, &mut gpu_kernels)?
                    }
                });
            }
            let argmax = vulkan::argmax_kernel(module, &mut gpu_kernels)?;
            let top_k = vulkan::top_k_kernel(module, &mut gpu_kernels)?;
            verify_npu_bodies(&npu_kernels.cpu.entries, &npu_kernels.section)?;
            let first = npu_kernels.cpu.entries.len() as u32;
            let shift = |id: KernelId| KernelId(id.0 + first);
            for p in phases.iter_mut().filter(|p| p.phase == Phase::Decode) {
                p.steps.iter_mut().for_each(|s| s.kernel = shift(s.kernel));
            }
            let mut section = npu_kernels.section;
            section.resize(section.len().next_multiple_of(8), 0);
            let base = section.len() as u64;
            section.extend_from_slice(&gpu_kernels.section);
            let mut entries = npu_kernels.cpu.entries;
            entries.extend(gpu_kernels.entries.into_iter().map(|mut e| {
                e.artifact = e.artifact.map(|a| ArtifactRange { offset: a.offset + base, len: a.len });
                e
            }));
            (entries, section, phases, Some((shift(argmax), shift(top_k))))
        }
    };
    // Where the caches live: a hybrid plan's on the iGPU, which decodes, and the runtime hands prefill's
    // positions to it.
    let device = match options.target {
        Target::Cpu | Target::Phoenix => Device::Cpu,
        Target::Vulkan | Target::Hybrid => Device::Igpu,
    };
    let spec = module.spec.clone();
    let kv_caches = spec
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| KvCacheDecl {
            layer: i as u32,
            dtype: options.kv_cache,
            layout: KvLayout::HeadMajor,
            kv_heads: spec.num_kv_heads as u64,
            head_dim: spec.head_dim as u64,
            capacity: l.window.map_or(KvCapacity::Context, |w| KvCapacity::Window(w as u64)),
            device,
        })
        .collect();
    let prefill_chunk = prefill_chunk(&spec);
    let peak = phases
        .iter()
        .map(|p| {
            let rows = if p.phase == Phase::Prefill { prefill_chunk } else { 1 };
            // A logit dump keeps every row.
            p.activation_bytes(rows, rows).unwrap_or(u64::MAX)
        })
        .max()
        .unwrap_or(0);
    let header = PlanHeader {
        producer: format!("unicornc {}", env!("CARGO_PKG_VERSION")),
        target: options.target.name().into(),
        rope_inv_freq: spec.ropes.iter().map(|r| r.inv_freq(spec.head_dim)).collect(),
        spec,
        kernels: entries,
        weights,
        kv_caches,
        prefill_chunk,
        phases,
        peak_activation_bytes: peak,
        argmax: pickers.map(|p| p.0),
        top_k: pickers.map(|p| p.1),
    };
    Ok((header, section))
}

/// Each NPU kernel's core bodies verified by LLVM 19's MLIR, in-process (feature `npu-mlir`), from the artifact
/// as the plan will hold it; without the feature, nothing to do.
#[cfg_attr(not(feature = "npu-mlir"), allow(unused_variables))]
fn verify_npu_bodies(entries: &[KernelEntry], section: &[u8]) -> Result<(), String> {
    #[cfg(feature = "npu-mlir")]
    for e in entries.iter().filter(|e| e.backend == unicorn_ir::plan::Backend::Npu) {
        let Some(r) = e.artifact else { continue };
        let end = r.offset.checked_add(r.len);
        let bytes = end
            .and_then(|end| section.get(r.offset as usize..end as usize))
            .ok_or_else(|| format!("NPU kernel {}: its artifact runs past the kernels section", e.name))?;
        let kernel = unicorn_ir::npu::NpuKernel::decode(bytes, &unicorn_aie::model::NPU1)
            .map_err(|err| format!("NPU kernel {}: {err}", e.name))?;
        npu::melior::verify_design_bodies(&kernel.design)?;
    }
    Ok(())
}
