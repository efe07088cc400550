//! The CPU target: every op maps to a built-in kernel of the runtime. The kernel name is stable (it is stored in
//! plans and shown by `unicornc inspect`); the weight format is part of the name because each format has its own
//! kernel.

use unicorn_ir::{Module, Op};

/// The built-in kernel that executes `op` on the CPU.
pub fn kernel_name(module: &Module, op: &Op) -> String {
    match op {
        Op::MatMul { weight, bias } => {
            let f = module.weight(*weight).format;
            match bias {
                Some(_) => format!("matmul_bias_{f}"),
                None => format!("matmul_{f}"),
            }
        }
        Op::Embed { table, .. } => format!("embed_{}", module.weight(*table).format),
        Op::Glu { activation } => format!("glu_{activation:?}").to_lowercase(),
        Op::Attention { window, .. } => {
            if window.is_some() {
                "attention_windowed".into()
            } else {
                "attention".into()
            }
        }
        other => other.name().to_string(),
    }
}
