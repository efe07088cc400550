//! A loaded plan: the mapped file, views of its weights, and its tokenizer.

use crate::cpu::matmul::WeightRef;
use crate::Error;
use std::path::Path;
use unicorn_ir::container::{PlanFile, Residency, SectionKind};
use unicorn_ir::plan::PlanHeader;
use unicorn_ir::{WeightFormat, WeightId};

pub struct Model {
    plan: PlanFile,
    /// f32 copies of the vector weights (norms, biases), indexed like the plan's weights.
    vectors: Vec<Option<Vec<f32>>>,
}

impl Model {
    /// Load a plan, reading it into memory ([`Residency::Resident`]).
    pub fn load(path: &Path) -> Result<Self, Error> {
        Self::load_with(path, Residency::Resident)
    }

    pub fn load_with(path: &Path, residency: Residency) -> Result<Self, Error> {
        let plan = PlanFile::open_with(path, residency)?;
        let corrupt = |what: String| Error::Plan(format!("{}: {what}", path.display()));
        let section = plan.section(SectionKind::Weights)?;
        let mut vectors = Vec::with_capacity(plan.header.weights.len());
        for w in &plan.header.weights {
            let cols = *w.shape.last().unwrap_or(&0);
            let rows = w.shape.iter().product::<usize>() / cols.max(1);
            let expect = w.format.row_bytes(cols).map(|b| (b * rows) as u64);
            let end = w.offset.checked_add(w.bytes);
            if expect != Some(w.bytes) || end.is_none_or(|e| e > section.len() as u64) {
                return Err(corrupt(format!("weight {} does not fit its section", w.name)));
            }
            if w.layout != unicorn_ir::quant::WeightLayout::Rows
                && w.layout != unicorn_ir::quant::WeightLayout::for_matrix(w.format, &w.shape)
            {
                return Err(corrupt(format!("weight {} has a layout its format and shape cannot take", w.name)));
            }
            vectors.push(if w.shape.len() == 1 {
                if w.format != WeightFormat::F32 {
                    return Err(corrupt(format!("vector weight {} is not f32", w.name)));
                }
                let bytes = &section[w.offset as usize..(w.offset + w.bytes) as usize];
                Some(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
            } else {
                None
            });
        }
        Ok(Self { plan, vectors })
    }

    /// The plan's tokenizer, parsed on demand (a large vocabulary costs tens of MiB, which runs on token ids
    /// do not need). `None` if the checkpoint had no tokenizer.json.
    pub fn tokenizer(&self) -> Result<Option<tokenizers::Tokenizer>, Error> {
        match self.plan.section(SectionKind::Tokenizer) {
            Ok(bytes) => tokenizers::Tokenizer::from_bytes(bytes).map(Some).map_err(|e| {
                Error::Plan(format!("{}: embedded tokenizer does not load: {e}", self.plan.path.display()))
            }),
            Err(_) => Ok(None),
        }
    }

    /// How the plan's bytes are held (see [`Residency`]).
    pub fn residency(&self) -> Residency {
        self.plan.residency
    }

    pub fn header(&self) -> &PlanHeader {
        &self.plan.header
    }

    pub fn path(&self) -> &Path {
        &self.plan.path
    }

    /// A matrix weight as the kernels read it.
    pub fn matrix(&self, id: WeightId) -> WeightRef<'_> {
        let w = &self.plan.header.weights[id.0 as usize];
        let section = self.plan.section(SectionKind::Weights).expect("checked at load");
        WeightRef {
            format: w.format,
            layout: w.layout,
            n: w.shape[0],
            k: w.shape[1],
            data: &section[w.offset as usize..(w.offset + w.bytes) as usize],
        }
    }

    /// A vector weight (norm scale or bias) in f32.
    pub fn vector(&self, id: WeightId) -> &[f32] {
        self.vectors[id.0 as usize].as_deref().expect("a vector weight")
    }
}
