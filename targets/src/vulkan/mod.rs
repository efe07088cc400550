//! The Vulkan target: every op becomes a compute shader generated for the model at hand ([`glsl`]), compiled
//! to SPIR-V by shaderc ([`spirv`]) and stored in the plan's kernels section. One launch per op, except where
//! ops fuse within the binding limit: the matmuls of one operand (q/k/v, gate/up) share one, an RMSNorm joins
//! the matmuls that read it, a residual add the matmul that feeds it, a layer's q and k RoPEs each other, and in
//! decode the GLU its gate and up projections. Prefill matmuls are tiled, decode matmuls walk their rows one by
//! one ([`glsl::MatPath`]). The weights are
//! laid out as the CPU target lays them out (q4_0 / q8_0 interleaved by 8 rows), so a Vulkan plan also runs on
//! the CPU executor, through the reference kernels of its ops.

pub mod glsl;
pub mod spirv;

use glsl::{AttentionShape, Elementwise, MatMember, MatPath, NormPrologue, MATMUL_THREADS, MAX_BUFFERS, WIDE};
use std::collections::HashMap;
use unicorn_ir::device::{DeviceProfile, Feature};
use unicorn_ir::plan::{ArtifactRange, Backend, Binding, BindingKind, Expr, KernelEntry, KernelId, PlanPhase};
use unicorn_ir::spec::Activation;
use unicorn_ir::{DType, Graph, Module, Op, Phase};

/// The kernel table under construction and the kernels section it points into: one entry per distinct shader.
#[derive(Default)]
pub struct KernelTable {
    pub entries: Vec<KernelEntry>,
    /// SPIR-V modules, each at a 4-byte boundary.
    pub section: Vec<u8>,
    by_source: HashMap<String, KernelId>,
}

impl KernelTable {
    fn add(&mut self, k: Kernel) -> Result<KernelId, String> {
        let Kernel { name, source, buffers, writes, workgroup, .. } = k;
        if let Some(&id) = self.by_source.get(&source) {
            return Ok(id);
        }
        let words = spirv::compile(&name, &source)?;
        let offset = self.section.len() as u64;
        self.section.extend(words.iter().flat_map(|w| w.to_le_bytes()));
        let bindings = (0..buffers)
            .map(|b| Binding {
                binding: b as u32,
                kind: if writes.contains(&b) { BindingKind::StorageReadWrite } else { BindingKind::StorageRead },
            })
            .collect();
        let id = KernelId(self.entries.len() as u32);
        self.entries.push(KernelEntry {
            name,
            backend: Backend::Vulkan,
            artifact: Some(ArtifactRange { offset, len: words.len() as u64 * 4 }),
            entry: "main".into(),
            bindings,
            spec_constants: Vec::new(),
            workgroup,
            requires: requirements(&source),
        });
        self.by_source.insert(source, id);
        Ok(id)
    }
}

/// A kernel's name, source, buffer arguments (and which it writes), workgroup, and work size given its output
/// columns and rows.
struct Kernel {
    name: String,
    source: String,
    buffers: usize,
    writes: Vec<usize>,
    workgroup: [u32; 3],
    work: [Expr; 3],
}

fn ceil(n: u64, d: u32) -> Expr {
    Expr::Const(n.div_ceil(d as u64))
}

fn matmul_members(module: &Module, ops: &[Op]) -> Vec<MatMember> {
    ops.iter()
        .map(|op| {
            let Op::MatMul { weight, bias } = op else { unreachable!("a launch groups matmuls only") };
            let w = module.weight(*weight);
            MatMember { format: w.format, bias: bias.is_some(), n: w.rows() as u64 }
        })
        .collect()
}

/// A matmul launch's shader: tiled for prefill, row by row for decode (whose launches hold a row per sequence).
fn matmul_source(module: &Module, path: MatPath, ops: &[Op], norm: Option<NormPrologue>, residual: bool) -> String {
    let Op::MatMul { weight, .. } = &ops[0] else { unreachable!("a matmul launch") };
    let k = module.weight(*weight).cols() as u64;
    glsl::matmul_group(&matmul_members(module, ops), k, norm, residual, path)
}

/// Columns of a matmul launch's operand.
fn cols_of(module: &Module, ops: &[Op]) -> u64 {
    let Op::MatMul { weight, .. } = &ops[0] else { unreachable!("a matmul launch") };
    module.weight(*weight).cols() as u64
}

/// A matmul launch's kernel name: its family and variant ([`glsl::matmul_family`]), the number of matrices
/// where more than one, `_bias`, the weights' format: `gemv3_q4_0_dot` (q, k and v in decode on integer dot
/// products), `gemm2_f16_coop` (gate and up in prefill on cooperative matrices), `gemm_bias_q8_0`.
fn matmul_name(module: &Module, path: MatPath, ops: &[Op], glu: bool) -> String {
    let members = matmul_members(module, ops);
    let (family, variant) = glsl::matmul_family(&members, cols_of(module, ops), path, glu);
    let group = if members.len() > 1 { members.len().to_string() } else { String::new() };
    let bias = if members.iter().any(|m| m.bias) { "_bias" } else { "" };
    format!("{family}{group}{bias}_{}{variant}", members[0].format)
}

/// The shader of gate and up with the GLU behind them.
fn glu_source(module: &Module, path: MatPath, ops: &[Op], norm: Option<NormPrologue>, act: Activation) -> String {
    let m = matmul_members(module, ops);
    glsl::matmul_glu([m[0], m[1]], cols_of(module, ops), norm, act, path)
}

/// How a phase's matmuls walk their rows on a device of `profile`.
pub fn matmul_path(phase: Phase, profile: &DeviceProfile) -> MatPath {
    match phase {
        Phase::Prefill if profile.missing(&MatPath::TiledCoop.requires()).is_none() => MatPath::TiledCoop,
        Phase::Prefill => MatPath::Tiled,
        Phase::Decode if profile.missing(&MatPath::RowByRowDot.requires()).is_none() => MatPath::RowByRowDot,
        Phase::Decode if profile.missing(&MatPath::RowByRowSg.requires()).is_none() => MatPath::RowByRowSg,
        Phase::Decode => MatPath::RowByRow,
    }
}

/// What a kernel needs of the device, from the extensions its source enables (and the shared memory an
/// integer-dot kernel declares).
fn requirements(source: &str) -> Vec<Feature> {
    let mut v = Vec::new();
    if source.contains("#extension GL_KHR_shader_subgroup_shuffle") {
        v.extend(MatPath::RowByRowSg.requires());
    }
    if source.contains("#extension GL_KHR_cooperative_matrix") {
        v.extend(MatPath::TiledCoop.requires());
    }
    if source.contains("#extension GL_EXT_integer_dot_product") {
        v.push(Feature::IntegerDot);
        // The kernel's own shared memory (its `SHARED_BYTES`), where it is more than every device has.
        let bytes = source
            .lines()
            .find_map(|l| l.strip_prefix("#define SHARED_BYTES ")?.trim_end_matches('u').parse::<u32>().ok());
        if let Some(b) = bytes.filter(|&b| b > unicorn_ir::device::MIN_SHARED_BYTES) {
            v.push(Feature::SharedMemory(b));
        }
    }
    v
}

/// The kernel of a launch's ops, given each unit's output columns (`cols`: the last unit's).
/// What a phase's kernels are generated for, beside their ops: the matmuls' path, the KV cache's dtype, and
/// the device's subgroup size where it has subgroup shuffles (0 where not).
#[derive(Clone, Copy)]
struct Choices {
    path: MatPath,
    kv: DType,
    subgroup: u32,
}

fn kernel_for(module: &Module, g: &Graph, how: Choices, ops: &[Op], units: &[u64], rows: Expr) -> Kernel {
    let Choices { path, kv, subgroup } = how;
    let cols = units[units.len() - 1];
    let wide = [WIDE, 1, 1];
    let one = Expr::Const(1);
    let elementwise = |op: Elementwise, c: f32, buffers: usize| Kernel {
        name: op.name().into(),
        source: glsl::elementwise(op, cols, c),
        buffers,
        writes: vec![buffers - 1],
        workgroup: wide,
        work: [ceil(cols, WIDE), rows.clone(), one.clone()],
    };
    match &ops[0] {
        Op::Embed { table, scale } => {
            let f = module.weight(*table).format;
            Kernel {
                name: format!("embed_{f}"),
                source: glsl::embed(f, cols, *scale),
                buffers: 3,
                writes: vec![2],
                workgroup: wide,
                work: [ceil(cols, WIDE), rows, one],
            }
        }
        Op::RmsNorm { weight, eps, unit_offset } if matches!(ops, [_, Op::Add]) => {
            // The residual add behind a whole-row norm: the norm's [x, w, y], then the add's [y, residual, sum],
            // of which the kernel reads x, w and the residual and writes the sum.
            let group = module.weight(*weight).shape.iter().product::<usize>() as u64;
            Kernel {
                name: "rms_norm+add".into(),
                source: glsl::rms_norm_add(group, *eps, *unit_offset),
                buffers: 6,
                writes: vec![5],
                workgroup: wide,
                work: [Expr::Const(cols / group), rows, one],
            }
        }
        Op::RmsNorm { weight: wa, eps: ea, unit_offset: ua } if matches!(ops, [_, Op::RmsNorm { .. }]) => {
            // Two norms side by side (q's and k's): their units [x, w, y] each.
            let Op::RmsNorm { weight: wb, eps: eb, unit_offset: ub } = &ops[1] else { unreachable!("matched") };
            let group = |w: &unicorn_ir::WeightId| module.weight(*w).shape.iter().product::<usize>() as u64;
            let (a, b) = ((group(wa), units[0], *ea, *ua), (group(wb), units[1], *eb, *ub));
            Kernel {
                name: "rms_norm+rms_norm".into(),
                source: glsl::rms_norm_pair(a, b),
                buffers: 6,
                writes: vec![2, 5],
                workgroup: wide,
                work: [Expr::Const(a.1 / a.0 + b.1 / b.0), rows, one],
            }
        }
        Op::RmsNorm { eps, unit_offset, .. } if ops.len() > 1 => {
            // A norm fused in front of the matmuls that read it: its operand, weight and result come first.
            let mut k = kernel_for(module, g, how, &ops[1..], &units[1..], rows);
            k.name = format!("rms_norm+{}", k.name);
            let norm = Some(NormPrologue { eps: *eps, unit_offset: *unit_offset });
            k.source = match ops.last() {
                Some(Op::Glu { activation }) => glu_source(module, path, &ops[1..ops.len() - 1], norm, *activation),
                _ => matmul_source(module, path, &ops[1..], norm, false),
            };
            k.buffers += 3;
            k.writes.iter_mut().for_each(|w| *w += 3);
            k
        }
        Op::MatMul { .. } if matches!(ops.last(), Some(Op::Glu { .. })) => {
            // The GLU fused behind gate and up: their units, then the GLU's [gate, up, out], of which
            // the kernel writes only the result.
            let Some(Op::Glu { activation }) = ops.last() else { unreachable!("matched") };
            let mm = &ops[..ops.len() - 1];
            let mut k = kernel_for(module, g, how, mm, &units[..units.len() - 1], rows);
            let glu = match activation {
                Activation::Silu => Elementwise::GluSilu,
                Activation::GeluTanh => Elementwise::GluGeluTanh,
            };
            k.name = format!("{}+{}", matmul_name(module, path, mm, true), glu.name());
            k.source = glu_source(module, path, mm, None, *activation);
            let m = matmul_members(module, mm);
            k.work[0] = Expr::Const(glsl::glu_work(&[m[0], m[1]], cols_of(module, mm), path).0);
            k.writes = vec![k.buffers + 2];
            k.buffers += 3;
            k
        }
        Op::MatMul { .. } if matches!(ops.last(), Some(Op::Add)) => {
            // A residual add fused behind one matmul: the matmul's units, then the add's [a, b, sum], of which
            // the kernel reads the input that is not the matmul's result and writes the sum.
            let mut k = kernel_for(module, g, how, &ops[..1], &units[..1], rows);
            k.name = format!("{}+add", k.name);
            k.source = matmul_source(module, path, &ops[..1], None, true);
            k.writes = vec![k.buffers + 2];
            k.buffers += 3;
            k
        }
        Op::MatMul { .. } => {
            let members = matmul_members(module, ops);
            let Op::MatMul { weight, .. } = &ops[0] else { unreachable!("matched above") };
            let w = module.weight(*weight);
            let (tiles, tile_rows) = glsl::matmul_work(&members, w.cols() as u64, path);
            // The operand, then per matrix its weight, bias and result; each result is written.
            let mut writes = Vec::new();
            let mut at = 1;
            for m in &members {
                at += 2 + m.bias as usize;
                writes.push(at - 1);
            }
            Kernel {
                name: matmul_name(module, path, ops, false),
                source: matmul_source(module, path, ops, None, false),
                buffers: at,
                writes,
                workgroup: [MATMUL_THREADS, 1, 1],
                work: [Expr::Const(tiles), Expr::CeilDiv(Box::new(rows), tile_rows), one],
            }
        }
        Op::RmsNorm { weight, eps, unit_offset } => {
            let group = module.weight(*weight).shape.iter().product::<usize>() as u64;
            Kernel {
                name: "rms_norm".into(),
                source: glsl::rms_norm(group, *eps, *unit_offset),
                buffers: 3,
                writes: vec![2],
                workgroup: wide,
                work: [Expr::Const(cols / group), rows, one],
            }
        }
        Op::Rope { rope, .. } if matches!(ops.last(), Some(Op::Attention { .. })) => {
            // Both ropes fused into decode attention ([x_q, y_q, x_k, y_k], then attention's [q, k, v, kv,
            // out]): the attention kernel's split pass, rotating as it reads.
            let inv = module.spec.ropes[*rope].inv_freq(module.spec.head_dim);
            let mut k = kernel_for(module, g, how, &ops[2..], &units[2..], rows);
            let Some(Op::Attention { num_heads, num_kv_heads, head_dim, window, scale, .. }) = ops.last() else {
                unreachable!("matched")
            };
            let shape = AttentionShape {
                heads: *num_heads as u64,
                kv_heads: *num_kv_heads as u64,
                head_dim: *head_dim as u64,
                window: window.map(|w| w as u64),
                scale: *scale,
            };
            k.name = format!("rope+rope+{}", k.name);
            k.source = glsl::rope_attention(kv == DType::F16, shape, &inv, subgroup);
            k.buffers += 4;
            k.writes.iter_mut().for_each(|w| *w += 4);
            k
        }
        Op::Rope { rope, head_dim } if ops.len() == 2 => {
            // Two ropes of one table in one launch (a layer's q and k): [x_a, y_a, x_b, y_b].
            let inv = module.spec.ropes[*rope].inv_freq(module.spec.head_dim);
            let (wa, wb) = (units[0], units[1]);
            Kernel {
                name: "rope+rope".into(),
                source: glsl::rope_pair(&inv, wa, wb, *head_dim as u64),
                buffers: 4,
                writes: vec![1, 3],
                workgroup: wide,
                work: [ceil((wa + wb) / 2, WIDE), rows, one],
            }
        }
        Op::Rope { rope, head_dim } => {
            let inv = module.spec.ropes[*rope].inv_freq(module.spec.head_dim);
            Kernel {
                name: "rope".into(),
                source: glsl::rope(&inv, cols, *head_dim as u64),
                buffers: 2,
                writes: vec![1],
                workgroup: wide,
                work: [ceil(cols / 2, WIDE), rows, one],
            }
        }
        Op::Attention { num_heads, num_kv_heads, head_dim, window, scale, .. } => {
            let shape = AttentionShape {
                heads: *num_heads as u64,
                kv_heads: *num_kv_heads as u64,
                head_dim: *head_dim as u64,
                window: window.map(|w| w as u64),
                scale: *scale,
            };
            let windowed = if window.is_some() { "_windowed" } else { "" };
            Kernel {
                name: format!("attention{windowed}_{}", kv.name()),
                source: glsl::attention(kv == DType::F16, shape, subgroup),
                buffers: 5,
                // The KV cache and the result.
                writes: vec![3, 4],
                workgroup: [glsl::ATTN_THREADS, 1, 1],
                work: [
                    Expr::Const(shape.heads),
                    Expr::CeilDiv(Box::new(rows), glsl::attention_tile_rows(shape, subgroup) as u64),
                    one,
                ],
            }
        }
        Op::Glu { activation: Activation::Silu } => elementwise(Elementwise::GluSilu, 0.0, 3),
        Op::Glu { activation: Activation::GeluTanh } => elementwise(Elementwise::GluGeluTanh, 0.0, 3),
        Op::Add => elementwise(Elementwise::Add, 0.0, 3),
        Op::Scale { factor } => elementwise(Elementwise::Scale, *factor, 2),
        Op::Softcap { cap } => elementwise(Elementwise::Softcap, *cap, 2),
        Op::SelectRows => Kernel {
            name: "select_rows".into(),
            source: glsl::select_rows(cols),
            buffers: 2,
            writes: vec![1],
            workgroup: wide,
            work: [ceil(cols, WIDE), rows, one],
        },
        Op::Tokens | Op::Output => unreachable!("{} has no launch (graph {})", ops[0].name(), g.phase),
    }
}

/// The greedy-token kernel of the plan ([`unicorn_ir::plan::PlanHeader::argmax`]).
pub fn argmax_kernel(module: &Module, kernels: &mut KernelTable) -> Result<KernelId, String> {
    kernels.add(Kernel {
        name: "argmax".into(),
        source: glsl::argmax(module.spec.vocab_size as u64),
        buffers: 2,
        writes: vec![1],
        workgroup: [glsl::ARGMAX_THREADS, 1, 1],
        work: [Expr::Const(glsl::ARGMAX_GROUPS as u64), Expr::R, Expr::Const(1)],
    })
}

/// The sampling kernel of the plan ([`unicorn_ir::plan::PlanHeader::top_k`]).
pub fn top_k_kernel(module: &Module, kernels: &mut KernelTable) -> Result<KernelId, String> {
    let vocab = module.spec.vocab_size as u64;
    kernels.add(Kernel {
        name: "top_k".into(),
        source: glsl::top_k(vocab),
        buffers: 3,
        writes: vec![1, 2],
        workgroup: [glsl::ARGMAX_THREADS, 1, 1],
        work: [Expr::Const(glsl::top_k_groups(vocab)), Expr::R, Expr::Const(1)],
    })
}

/// The operand columns a matmul path's fused GLU takes a multiple of: the row-by-row path (decode) steps over
/// eight, the tiled paths take any. The cooperative-matrix GEMM's fused form ([`glsl::matmul_glu`]) passed the
/// GPU kernel tests on an NVIDIA H100 and gave the unfused plan's logits bit for bit at the Llama-3.1-8B shape
/// (docs/benchmarks.md).
fn glu_columns(path: MatPath) -> Option<u64> {
    Some(match path {
        MatPath::RowByRow | MatPath::RowByRowSg | MatPath::RowByRowDot => 8,
        MatPath::Tiled | MatPath::TiledCoop => 1,
    })
}

/// Lower one planned graph to launches of generated kernels with a KV cache of `kv`: one op each, or one fused
/// region each (see the module doc).
pub fn lower_phase(
    module: &Module,
    g: &Graph,
    kv: DType,
    profile: &DeviceProfile,
    kernels: &mut KernelTable,
) -> Result<PlanPhase, String> {
    let subgroup = if profile.subgroup_shuffle { profile.subgroup_size } else { 0 };
    let choices = Choices { path: matmul_path(g.phase, profile), kv, subgroup };
    for op in g.g.node_weights().map(|n| &n.op) {
        if let Op::Attention { layer, head_dim, .. } = op {
            if !glsl::attention_head_fits(*head_dim as u64) {
                return Err(format!(
                    "layer {layer}: attention heads of {head_dim} dimensions; the Vulkan target takes even head \
                     dimensions up to {}",
                    glsl::MAX_HEAD_DIM
                ));
            }
        }
    }
    let mut failed = None;
    let how = crate::Lowering {
        group: Some(MAX_BUFFERS),
        fuse_norm: true,
        fuse_residual: true,
        fuse_norm_add: true,
        pair_ropes: true,
        pair_norms: true,
        // Decode's attention (the split pass) rotates q and k itself; prefill's takes them rotated.
        rope_attention: g.phase == Phase::Decode,
        glu_columns: glu_columns(choices.path),
    };
    let phase = crate::lower_steps(module, g, how, |ops, units, rows, _| {
        let k = kernel_for(module, g, choices, ops, units, rows);
        let work = k.work.clone();
        let id = kernels.add(k).unwrap_or_else(|e| {
            failed.get_or_insert(e);
            KernelId(0)
        });
        (id, work)
    });
    failed.map_or(Ok(phase), Err)
}
