//! Placement: assign every node a device. The CPU target puts everything on the CPU and the Vulkan target
//! everything on the GPU (its kernels cover every op). The Phoenix target (Ryzen 7040/8040: the npu1 NPU, the
//! Radeon 780M and Zen 4 cores) places by [`phoenix_device`], a plain rule over a capability table
//! ([`PHOENIX_CAPABILITIES`]: what each device can run in a plan, and what it takes); the cost-model partitioner
//! over device profiles will replace that one function and read the same table. The hybrid target places
//! prefill by the same rule and decode on the iGPU.

use crate::PassError;
use unicorn_ir::{Device, Dim, Graph, Module, NodeId, Op, Phase, WeightFormat};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Cpu,
    /// Any Vulkan 1.2 GPU: every op as a generated compute shader.
    Vulkan,
    /// A Ryzen 7040/8040 laptop: prefill's matrix work on the NPU (AIE2 designs), the rest on the CPU.
    Phoenix,
    /// A Ryzen 7040/8040 laptop's NPU and iGPU together: prefill placed as [`Target::Phoenix`] places it, decode
    /// on the iGPU as [`Target::Vulkan`] lowers it. The phases meet only in the KV cache, which the runtime
    /// hands from one to the other.
    Hybrid,
}

impl Target {
    pub const ALL: [Target; 4] = [Target::Cpu, Target::Vulkan, Target::Phoenix, Target::Hybrid];

    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Vulkan => "vulkan",
            Target::Phoenix => "phoenix",
            Target::Hybrid => "hybrid",
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

/// One row of a target's capability table: a device with a kernel or design that plans can hold for an op (the
/// compiler lowers it and the runtime runs it), the phases it serves, and what it takes — in words
/// (`conditions`) and as the check of a node (`takes`).
#[derive(Debug, Clone, Copy)]
pub struct Capability {
    pub device: Device,
    /// The op, as [`Op::name`] gives it; `*` for every op.
    pub op: &'static str,
    pub phases: &'static [Phase],
    /// What runs it.
    pub kernel: &'static str,
    pub conditions: &'static str,
    pub takes: fn(&Module, &Graph, NodeId) -> bool,
}

/// What a Phoenix plan can place where: the NPU designs that plans carry, and the CPU's kernels for every op.
///
/// The NPU has more designs than plans carry: the GEMVs for decode (bf16, and int8 with bf16 scales), RMSNorm,
/// RoPE, the SiLU GLU and the softmax pass the AIE2 rules and run on the emulator (docs/npu.md), but no plan
/// lowers to them yet, so they are not rows here. The 780M runs every op through the Vulkan target's kernels,
/// but the runtime hands values between the NPU and a Vulkan device only between phases (the KV cache of a
/// [`Target::Hybrid`] plan, whose decode is the iGPU's), never within one, so prefill has no iGPU rows.
pub const PHOENIX_CAPABILITIES: &[Capability] = &[
    Capability {
        device: Device::Npu,
        op: "matmul",
        phases: &[Phase::Prefill],
        kernel: "the whole-array bf16 GEMM, the weights of one operand in one dispatch (`gemm_bt_multi`)",
        conditions: "bf16 weights, no bias, a row for each token of the execution",
        takes: npu_gemm_takes,
    },
    Capability {
        device: Device::Npu,
        op: "attention",
        phases: &[Phase::Prefill],
        kernel: "the prefill attention design over the plan's context (`npu::attention`)",
        conditions: "whole groups of heads, an even head_dim up to 1,022, the plan's keys within the shim's \
                     transfers (`npu_attention_covers`)",
        takes: npu_attention_takes,
    },
    Capability {
        device: Device::Cpu,
        op: "*",
        phases: &[Phase::Prefill, Phase::Decode],
        kernel: "the CPU kernels",
        conditions: "every op",
        takes: |_, _, _| true,
    },
];

/// The prefill GEMM design's conditions: a matmul over the execution's rows with bf16 weights and no bias.
fn npu_gemm_takes(module: &Module, g: &Graph, n: NodeId) -> bool {
    let node = &g.g[n];
    matches!(&node.op, Op::MatMul { weight, bias: None }
        if node.ty.row_dim() == Dim::Seq && module.weight(*weight).format == WeightFormat::Bf16)
}

/// The prefill attention design's conditions ([`npu_attention_covers`]) over the keys a plan's design reaches,
/// for attention over the execution's rows.
fn npu_attention_takes(module: &Module, g: &Graph, n: NodeId) -> bool {
    let Op::Attention { num_heads, num_kv_heads, head_dim, .. } = g.g[n].op else { return false };
    g.g[n].ty.row_dim() == Dim::Seq && npu_attention_covers(num_heads, num_kv_heads, head_dim, plan_keys(module))
}

/// The keys a plan's prefill attention design reaches: its context and a chunk.
fn plan_keys(module: &Module) -> u64 {
    unicorn_ir::npu::attention_max_keys(module.spec.max_context as u64, module.spec.prefill_chunk())
}

/// The row of `table` that lets node `n` of `g` run on `device`, if any.
pub fn capable<'t>(
    table: &'t [Capability],
    device: Device,
    module: &Module,
    g: &Graph,
    n: NodeId,
) -> Option<&'t Capability> {
    table.iter().find(|c| {
        c.device == device
            && (c.op == "*" || c.op == g.g[n].op.name())
            && c.phases.contains(&g.phase)
            && (c.takes)(module, g, n)
    })
}

/// The Phoenix target's placement rule, in one place: a node goes to the NPU where [`PHOENIX_CAPABILITIES`]
/// admits it there, with two conditions of the rule's own — a projection only when every matmul of its operand
/// is admitted too (a layer's q, k and v; its gate and up), so that they are one NPU dispatch of a multi-weight
/// GEMM or none of them is, and attention only where its design reaches at most [`NPU_ATTENTION_MAX_KEYS`] keys
/// ([`npu_attention_placed`]); everything else runs on the CPU.
///
/// Why this split: prefill's projections are compute-bound GEMMs, the work the array's 16 bf16 cores are for,
/// and its attention is the other matrix work of a chunk (QK^T and PV), one dispatch a layer whatever the
/// chunk's position (the position and the keys' count are runtime parameters of the design). Decode's
/// projections are GEMVs, bound by host transfers on the NPU: the design estimates put a Llama-3.2-1B step
/// at >= 84 ms there with bf16 weights and >= 53 ms with the int8 GEMV (docs/npu.md), several times what the
/// 780M's memory bandwidth allows, so decode stays off the NPU (the table has no decode rows for it). The
/// prefill designs take bf16 weights and add no bias, and the LM head over the kept rows (usually one) is a
/// GEMV too. The norms, RoPE and GLU have NPU designs, but each would be a dispatch of its own between the
/// CPU's steps; they move to the NPU once a design covers a whole layer per dispatch.
pub fn phoenix_device(module: &Module, g: &Graph, n: NodeId) -> Device {
    let npu = |m: NodeId| capable(PHOENIX_CAPABILITIES, Device::Npu, module, g, m).is_some();
    let rule = match g.g[n].op {
        Op::MatMul { .. } => {
            g.users(g.inputs(n)[0]).into_iter().filter(|&m| matches!(g.g[m].op, Op::MatMul { .. })).all(npu)
        }
        Op::Attention { .. } => within_key_budget(plan_keys(module)),
        _ => true,
    };
    if npu(n) && rule {
        Device::Npu
    } else {
        Device::Cpu
    }
}

/// The most keys a plan's prefill attention design may reach for attention to run on the NPU. A dispatch streams
/// every key of the design's reach whatever the chunk's position (its transfers are static; the cores skip the
/// tiles their rows do not see), so its host traffic grows with the plan's context, where the CPU reads only the
/// keys each chunk sees. At 4,096 keys a dispatch over a chunk of 512 moves 134 MB at the Llama-3.2-1B shape and
/// 520 MB at Llama-3.1-8B's, a quarter of the same layer's projections' traffic (the designs' counts,
/// docs/npu.md); at the models' whole context (131,072) it would be 4.3 and 17 GB. With chunks of 512 that
/// places attention on the NPU in plans of contexts up to 3,585.
pub const NPU_ATTENTION_MAX_KEYS: u64 = 4096;
const _: () = assert!(unicorn_ir::spec::DEFAULT_PREFILL_CHUNK as u64 <= NPU_ATTENTION_MAX_KEYS);

/// Why a Phoenix plan's prefill attention stays on the CPU though the NPU's design takes it, in one line: the
/// plan's design would reach more keys than [`NPU_ATTENTION_MAX_KEYS`], and the longest context that would
/// place it. `None` where attention is on the NPU, or the design does not take it at any context.
pub fn attention_budget_note(module: &Module) -> Option<String> {
    let g = module.graph(Phase::Prefill)?;
    let n = g.g.node_indices().find(|&n| matches!(g.g[n].op, Op::Attention { .. }))?;
    let keys = plan_keys(module);
    if g.g[n].device != Device::Cpu
        || within_key_budget(keys)
        || capable(PHOENIX_CAPABILITIES, Device::Npu, module, g, n).is_none()
    {
        return None;
    }
    let chunk = module.spec.prefill_chunk();
    // A context of c takes chunks of min(c, the default) and its design c + chunk - 1 keys.
    let default_chunk = unicorn_ir::spec::DEFAULT_PREFILL_CHUNK as u64;
    let fits = NPU_ATTENTION_MAX_KEYS + 1 - default_chunk;
    let hint = format!("; a --max-context of at most {fits} places it there");
    Some(format!(
        "prefill attention stays on the CPU: its NPU design would stream {} keys a dispatch (the context of {} and a \
         chunk of {chunk}), over the placement budget of {NPU_ATTENTION_MAX_KEYS}{hint}",
        keys, module.spec.max_context
    ))
}

/// The placement rule for prefill attention: on the NPU where the design covers it ([`npu_attention_covers`])
/// over at most [`NPU_ATTENTION_MAX_KEYS`] keys.
pub fn npu_attention_placed(heads: usize, kv_heads: usize, head_dim: usize, keys: u64) -> bool {
    within_key_budget(keys) && npu_attention_covers(heads, kv_heads, head_dim, keys)
}

/// The rule's own condition on attention (the capability table's is [`npu_attention_covers`]): a design that
/// reaches `keys` keys is within [`NPU_ATTENTION_MAX_KEYS`].
fn within_key_budget(keys: u64) -> bool {
    keys <= NPU_ATTENTION_MAX_KEYS
}

/// Whether the NPU's prefill attention design (`unicorn_targets::npu::attention`) takes heads of `head_dim`,
/// `heads` over `kv_heads`, over `keys` key positions (causal, with or without a sliding window; a plan's
/// design reaches [`unicorn_ir::npu::attention_max_keys`] of its context and prefill chunk): whole groups of
/// heads, heads of an even dimension within a DMA wrap (1,022), positions within i32 (the cores' runtime
/// parameters), and strides the shim takes (2^20 words) whatever the keys, as the host argument holds each
/// position's keys then its values: a row of Q or of the output (`heads x head_dim`, the output's f32 the most
/// words) and a position. The keys are bounded by a round's transfer, which streams them and a tile more (32
/// keys at most: a bound, as wider heads take shorter tiles), `head_dim` words each (a K and a V row in bf16),
/// in a length mlir-aie writes as an i32 of words: about 33.5 million keys at heads of 64 and 16.8 million at
/// 128. Long before that, the host memory of the keys and values (`4 x kv_heads x head_dim` bytes a position)
/// and every dispatch's host traffic (each round streams the keys any chunk may need) grow with the context;
/// this rule does not weigh them.
pub fn npu_attention_covers(heads: usize, kv_heads: usize, head_dim: usize, keys: u64) -> bool {
    let (heads, kv_heads, head_dim) = (heads as u64, kv_heads as u64, head_dim as u64);
    kv_heads > 0
        && heads.is_multiple_of(kv_heads)
        && head_dim.is_multiple_of(2)
        && (2..=1022).contains(&head_dim)
        && heads * head_dim <= 1 << 20
        && keys > 0
        && keys <= i32::MAX as u64 / 2
        && (keys + 32) * head_dim <= i32::MAX as u64
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
                Target::Hybrid if module.graphs[gi].phase == Phase::Decode => Device::Igpu,
                Target::Hybrid => phoenix_device(module, &module.graphs[gi], n),
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
        Target::Hybrid => format!("{npu} nodes on npu, {cpu} on cpu (prefill), {igpu} on igpu (decode)"),
    })
}

#[cfg(test)]
mod tests {
    use super::{npu_attention_covers, PHOENIX_CAPABILITIES};
    use unicorn_ir::npu::attention_max_keys;

    /// docs/npu.md shows the Phoenix capability table as the code has it, row for row.
    #[test]
    fn the_docs_show_the_capability_table() {
        let docs = include_str!("../../docs/npu.md");
        for c in PHOENIX_CAPABILITIES {
            let phases: Vec<String> = c.phases.iter().map(|p| p.to_string()).collect();
            let row =
                format!("| {} | `{}` | {} | {} | {} |", c.device, c.op, phases.join(", "), c.kernel, c.conditions);
            assert!(docs.contains(&row), "docs/npu.md lacks the row\n{row}");
        }
    }

    /// Llama-3.2-1B's and Llama-3.1-8B's attention (32 heads of 64 and of 128 over 8) is covered over their
    /// whole context of 131,072 in chunks of 512, and on to the last key count whose rounds' transfers keep
    /// their length within i32 words; one key more is not, nor are odd heads or partial groups.
    #[test]
    fn attention_is_covered_up_to_the_transfer_length() {
        let full = attention_max_keys(131_072, 512);
        for (head_dim, last) in [(64, 33_554_399), (128, 16_777_183)] {
            for keys in [1, 512, full, last] {
                assert!(npu_attention_covers(32, 8, head_dim, keys), "{head_dim} {keys}");
            }
            assert!(!npu_attention_covers(32, 8, head_dim, last + 1), "{head_dim}");
        }
        assert!(!npu_attention_covers(32, 8, 63, 512));
        assert!(!npu_attention_covers(32, 6, 64, 512));
        assert!(!npu_attention_covers(32, 8, 64, 0));
    }

    /// The rule places attention on the NPU up to the key budget, at chunks of 512 a context of 3,585, and
    /// not past it, though the design would cover it.
    #[test]
    fn attention_is_placed_within_the_key_budget() {
        use super::{npu_attention_placed, NPU_ATTENTION_MAX_KEYS};
        assert_eq!(attention_max_keys(3_585, 512), NPU_ATTENTION_MAX_KEYS);
        for head_dim in [64, 128] {
            assert!(npu_attention_placed(32, 8, head_dim, attention_max_keys(3_585, 512)));
            assert!(!npu_attention_placed(32, 8, head_dim, attention_max_keys(3_586, 512)));
            assert!(npu_attention_covers(32, 8, head_dim, attention_max_keys(3_586, 512)));
        }
        assert!(!npu_attention_placed(32, 8, 63, 512));
    }
}
