//! Graph-to-graph passes and the pipeline that orders them.
//!
//! Each pass is a function `fn(&mut Module, ...) -> Result<PassStats, PassError>` in its own file; [`pipeline`]
//! runs them in order and verifies the module after every one.

mod canonicalize;
mod memory;
mod placement;
mod precision;

pub use canonicalize::canonicalize;
pub use memory::plan_memory;
pub use placement::{
    attention_budget_note, capable, npu_attention_covers, npu_attention_placed, place, Capability, Target,
    NPU_ATTENTION_MAX_KEYS, PHOENIX_CAPABILITIES,
};
pub use precision::{default_kv_cache, precision, PrecisionRule, PRECISION_RULES};

use thiserror::Error;
use unicorn_ir::{verify, Module, WeightFormat};

#[derive(Debug, Error)]
pub enum PassError {
    #[error("after pass '{pass}': {source}")]
    Verify { pass: &'static str, source: unicorn_ir::verify::VerifyError },
    #[error("{0}")]
    Unsupported(String),
}

/// What the pipeline was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    pub weights: WeightFormat,
}

/// One line per pass, for `unicornc compile --verbose` and the tests.
#[derive(Debug, Clone, PartialEq)]
pub struct PassReport {
    pub pass: &'static str,
    pub summary: String,
}

/// The pass pipeline. The verifier runs on the input and after every pass.
pub fn pipeline(module: &mut Module, options: &Options) -> Result<Vec<PassReport>, PassError> {
    let check = |m: &Module, pass: &'static str, placed: bool| {
        verify(m, placed).map_err(|source| PassError::Verify { pass, source })
    };
    check(module, "build", false)?;
    let mut reports = Vec::new();
    let mut record = |pass: &'static str, summary: String| reports.push(PassReport { pass, summary });

    record("canonicalize", canonicalize(module));
    check(module, "canonicalize", false)?;
    record("precision", precision(module, options.weights));
    check(module, "precision", false)?;
    record("placement", place(module, options.target)?);
    check(module, "placement", true)?;
    record("memory", plan_memory(module));
    check(module, "memory", true)?;
    Ok(reports)
}
