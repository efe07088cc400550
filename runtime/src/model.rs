//! A loaded plan: the file's bytes, its header validated for the chosen device, views of its weights, and its
//! tokenizer.

use crate::cpu::matmul::WeightRef;
use crate::executor::DeviceKind;
use crate::Error;
use std::path::Path;
use unicorn_ir::container::{PlanFile, Residency, SectionKind};
use unicorn_ir::plan::PlanHeader;
use unicorn_ir::validate::{SectionSizes, ValidPlan};
use unicorn_ir::WeightId;

/// Open a plan, with a progress bar on a terminal for plans large enough to wait for (reading and checking a
/// few GB takes seconds); nothing when stderr is not a terminal.
fn open_showing_progress(path: &Path, residency: Residency) -> Result<PlanFile, Error> {
    use std::io::IsTerminal;
    let large = std::fs::metadata(path).is_ok_and(|m| m.len() >= 256 << 20);
    if !large || !std::io::stderr().is_terminal() {
        return Ok(PlanFile::open_with(path, residency)?);
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("loading {msg} [{bar:30}] {percent}% ({eta} left)")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(path.display().to_string());
    let file = PlanFile::open_observed(path, residency, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    Ok(file?)
}

pub struct Model {
    file: PlanFile,
    plan: ValidPlan,
    device: DeviceKind,
    /// f32 copies of the vector weights (norms, biases), indexed like the plan's weights.
    vectors: Vec<Option<Vec<f32>>>,
}

impl Model {
    /// Load a plan for the CPU, reading it into memory ([`Residency::Resident`]).
    pub fn load(path: &Path) -> Result<Self, Error> {
        Self::load_with(path, Residency::Resident, DeviceKind::Cpu)
    }

    /// Load a plan and validate it for `device`: nothing of an invalid plan reaches an executor.
    pub fn load_with(path: &Path, residency: Residency, device: DeviceKind) -> Result<Self, Error> {
        let file = open_showing_progress(path, residency)?;
        let len = |kind| file.section(kind).map_or(0, |s| s.len() as u64);
        let sizes = SectionSizes { weights: len(SectionKind::Weights), kernels: len(SectionKind::Kernels) };
        let target = file.header.target.clone();
        let plan = file.header.clone().validate(sizes, device.capabilities_for(&file.header)).map_err(|e| {
            // A plan of another target is not broken: say which device runs it.
            let hint = match device {
                DeviceKind::Vulkan(_) if target != "vulkan" => {
                    format!(" (a plan compiled for {target}; --device vulkan runs plans of unicornc --target vulkan)")
                }
                _ => String::new(),
            };
            Error::Plan(format!("{}: invalid plan: {e}{hint}", path.display()))
        })?;
        let section = file.section(SectionKind::Weights)?;
        let vectors = plan
            .header()
            .weights
            .iter()
            .map(|w| {
                (w.shape.len() == 1).then(|| {
                    let bytes = &section[w.offset as usize..(w.offset + w.bytes) as usize];
                    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
                })
            })
            .collect();
        Ok(Self { file, plan, device, vectors })
    }

    /// The plan's tokenizer, parsed on demand (a large vocabulary costs tens of MiB, which runs on token ids
    /// do not need). `None` if the checkpoint had no tokenizer.json.
    pub fn tokenizer(&self) -> Result<Option<tokenizers::Tokenizer>, Error> {
        match self.file.section(SectionKind::Tokenizer) {
            Ok(bytes) => tokenizers::Tokenizer::from_bytes(bytes).map(Some).map_err(|e| {
                Error::Plan(format!("{}: embedded tokenizer does not load: {e}", self.file.path.display()))
            }),
            Err(_) => Ok(None),
        }
    }

    /// How the plan's bytes are held (see [`Residency`]).
    pub fn residency(&self) -> Residency {
        self.file.residency
    }

    /// The validated plan.
    pub fn plan(&self) -> &ValidPlan {
        &self.plan
    }

    pub fn header(&self) -> &PlanHeader {
        self.plan.header()
    }

    /// The device the plan was validated for.
    pub fn device(&self) -> DeviceKind {
        self.device
    }

    /// A section's bytes (the GPU executors upload the weights and read the kernels from here).
    pub fn section(&self, kind: SectionKind) -> Result<&[u8], Error> {
        Ok(self.file.section(kind)?)
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// A matrix weight as the kernels read it.
    pub fn matrix(&self, id: WeightId) -> WeightRef<'_> {
        let w = &self.header().weights[id.0 as usize];
        let section = self.file.section(SectionKind::Weights).expect("checked at load");
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
