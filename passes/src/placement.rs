//! Placement: assign every node a device. The CPU target puts everything on the CPU and the Vulkan target
//! everything on the GPU (its kernels cover every op). The Phoenix target (Ryzen 7040/8040: the npu1 NPU, the
//! Radeon 780M and Zen 4 cores) places by [`phoenix_device`], a plain rule over what the NPU designs cover
//! (prefill's projections and attention); the
//! cost-model partitioner over device profiles will replace that one function.

use crate::PassError;
use unicorn_ir::{Device, Dim, Graph, Module, NodeId, Op, Phase, WeightFormat};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Cpu,
    /// Any Vulkan 1.2 GPU: every op as a generated compute shader.
    Vulkan,
    /// A Ryzen 7040/8040 laptop: prefill's matrix work on the NPU (AIE2 designs), the rest on the CPU.
    Phoenix,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Cpu, Target::Vulkan, Target::Phoenix];

    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Vulkan => "vulkan",
            Target::Phoenix => "phoenix",
        }
    }

    /// The target named `s` (as `--target` takes it).
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|t| t.name()).collect();
            format!("unknown target '{s}' (this build has: {})", names.join(", "))
        })
    }
}

/// The Phoenix target's placement rule, in one place: a prefill projection (a matmul over the execution's rows,
/// bf16 weights, no bias) runs on the NPU's whole-array GEMM design, when every matmul of its operand does too
/// (a layer's q, k and v; its gate and up), so that they are one NPU dispatch of a multi-weight GEMM or none of
/// them is; prefill attention runs on the NPU's attention design where [`npu_attention_covers`] says the design
/// takes it; everything else runs on the CPU.
///
/// Why this split: prefill's projections are compute-bound GEMMs, the work the array's 16 bf16 cores are for,
/// and its attention is the other matrix work of a chunk (QK^T and PV), one dispatch a layer whatever the
/// chunk's position (the position and the keys' count are runtime parameters of the design). Decode's
/// projections are GEMVs, bound by host transfers on the NPU: the design estimates put a Llama-3.2-1B step
/// at >= 84 ms there (docs/npu.md), several times what the 780M's memory bandwidth allows, so decode stays off
/// the NPU. The NPU designs take bf16 weights (int8 GEMV / GEMM designs are still to come) and add no bias, and the
/// LM head over the kept rows (usually one) is a GEMV too. The norms, RoPE and GLU have NPU designs, but each
/// would be a dispatch of its own between the CPU's steps; they move to the NPU once a design covers a whole
/// layer per dispatch.
pub fn phoenix_device(module: &Module, g: &Graph, n: NodeId) -> Device {
    if let Op::Attention { num_heads, num_kv_heads, head_dim, .. } = g.g[n].op {
        let prefill = g.phase == Phase::Prefill && g.g[n].ty.row_dim() == Dim::Seq;
        let keys = unicorn_ir::npu::attention_max_keys(module.spec.max_context as u64, module.spec.prefill_chunk());
        let covered = npu_attention_covers(num_heads, num_kv_heads, head_dim, keys);
        return if prefill && covered { Device::Npu } else { Device::Cpu };
    }
    let on_npu = |m: NodeId| {
        let node = &g.g[m];
        matches!(&node.op, Op::MatMul { weight, bias: None }
            if g.phase == Phase::Prefill
                && node.ty.row_dim() == Dim::Seq
                && module.weight(*weight).format == WeightFormat::Bf16)
    };
    let siblings = || g.users(g.inputs(n)[0]).into_iter().filter(|&m| matches!(g.g[m].op, Op::MatMul { .. }));
    if on_npu(n) && siblings().all(on_npu) {
        Device::Npu
    } else {
        Device::Cpu
    }
}

/// Whether the NPU's prefill attention design (`unicorn_targets::npu::attention`) takes heads of `head_dim`,
/// `heads` over `kv_heads`, over `keys` key positions (causal, with or without a sliding window; a plan's
/// design reaches [`unicorn_ir::npu::attention_max_keys`] of its context and prefill chunk): whole groups of
/// heads, heads of an even dimension within a DMA wrap (1,022), and the keys then the values of `keys`
/// positions and a tile more (32 keys at most: a bound, as wider heads take shorter tiles) within the shim's
/// largest stride (2^20 words) that reaches V after K in one host argument.
pub fn npu_attention_covers(heads: usize, kv_heads: usize, head_dim: usize, keys: u64) -> bool {
    let (heads, kv_heads, head_dim) = (heads as u64, kv_heads as u64, head_dim as u64);
    kv_heads > 0
        && heads.is_multiple_of(kv_heads)
        && head_dim.is_multiple_of(2)
        && (2..=1022).contains(&head_dim)
        && keys > 0
        && keys <= i32::MAX as u64 / 2
        && (keys + 32) * kv_heads * head_dim / 2 <= 1 << 20
}

pub fn place(module: &mut Module, target: Target) -> Result<String, PassError> {
    let mut counts = [0usize; 3];
    for gi in 0..module.graphs.len() {
        let nodes: Vec<NodeId> = module.graphs[gi].g.node_indices().collect();
        for n in nodes {
            let device = match target {
                Target::Cpu => Device::Cpu,
                Target::Vulkan => Device::Igpu,
                Target::Phoenix => phoenix_device(module, &module.graphs[gi], n),
            };
            module.graphs[gi].g[n].device = device;
            counts[match device {
                Device::Npu => 1,
                Device::Igpu => 2,
                _ => 0,
            }] += 1;
        }
    }
    let [cpu, npu, igpu] = counts;
    Ok(match target {
        Target::Cpu => format!("{cpu} nodes on cpu"),
        Target::Vulkan => format!("{igpu} nodes on igpu"),
        Target::Phoenix => format!("{npu} nodes on npu, {cpu} on cpu"),
    })
}
