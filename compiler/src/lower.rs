//! Lowering of a planned module to the executable plan header.

use unicorn_ir::plan::{PlanHeader, PlanPhase, PlanWeight, Step};
use unicorn_ir::{Module, Op};
use unicorn_passes::Target;

/// Bytes of a weight in its plan format.
pub fn weight_bytes(w: &unicorn_ir::WeightInfo) -> u64 {
    let row = w.format.row_bytes(w.cols()).expect("precision pass chose a format that fits the rows");
    (w.rows() * row) as u64
}

pub fn lower(module: &Module, target: Target) -> PlanHeader {
    let mut weights: Vec<PlanWeight> = module
        .weights
        .iter()
        .map(|w| PlanWeight {
            name: w.name.clone(),
            shape: w.shape.clone(),
            role: w.role,
            format: w.format,
            layout: unicorn_ir::quant::WeightLayout::for_matrix(w.format, &w.shape),
            offset: 0,
            bytes: weight_bytes(w),
        })
        .collect();
    PlanHeader::assign_weight_offsets(&mut weights);
    let phases: Vec<PlanPhase> = module
        .graphs
        .iter()
        .map(|g| {
            let mem = g.memory.as_ref().expect("memory planned");
            let mut steps = Vec::new();
            let mut result = None;
            for &n in &mem.order {
                let node = &g.g[n];
                match node.op {
                    Op::Tokens => continue,
                    Op::Output => {
                        result = mem.slot(n);
                        continue;
                    }
                    _ => {}
                }
                steps.push(Step {
                    op: node.op.clone(),
                    device: node.device,
                    kernel: unicorn_targets::cpu::kernel_name(module, &node.op),
                    inputs: g.inputs(n).iter().map(|&i| mem.slot(i)).collect(),
                    output: mem.slot(n).expect("every value has a slot"),
                    rows: node.ty.row_dim(),
                    label: node.label.clone(),
                });
            }
            PlanPhase {
                phase: g.phase,
                steps,
                arena_width: mem.arena_width,
                kept_width: mem.kept_width,
                result: result.expect("an output"),
            }
        })
        .collect();
    let spec = module.spec.clone();
    let peak = phases
        .iter()
        .map(|p| {
            let rows = if p.phase == unicorn_ir::Phase::Prefill { spec.max_context } else { 1 };
            // A logit dump keeps every row.
            p.activation_bytes(rows, rows)
        })
        .max()
        .unwrap_or(0);
    PlanHeader {
        producer: format!("unicornc {}", env!("CARGO_PKG_VERSION")),
        target: target.name().into(),
        rope_inv_freq: spec.ropes.iter().map(|r| r.inv_freq(spec.head_dim)).collect(),
        spec,
        weights,
        phases,
        peak_activation_bytes: peak,
    }
}
