//! Building a plan's NPU designs to xclbins with mlir-aie's `aiecc`, where it is installed: each design's MLIR
//! goes through `aiecc` (with Peano, mlir-aie's open AIE2 compiler, for the core bodies), and the xclbin and the
//! instruction stream it makes are stored in the design's artifact. Without `aiecc` a plan keeps each design's
//! MLIR, and `unicornc build-npu PLAN` finishes it later on a machine that has mlir-aie.
//!
//! No machine this project is tested on has mlir-aie: what is tested here is the plumbing (the command line
//! aiecc gets, its outputs stored and read back, its failures reported), with a stand-in `aiecc` in the tests.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use unicorn_ir::container::{PlanFile, PlanWriter, SectionKind};
use unicorn_ir::npu::{Built, NpuKernel};
use unicorn_ir::plan::{ArtifactRange, Backend, PlanHeader};
use unicorn_targets::npu::model::NPU1;

/// The `aiecc` to run: `$MLIR_AIE_INSTALL_DIR/bin/aiecc` (or `aiecc.py`, as older releases name it), else the
/// first of them on `PATH`.
pub fn find_aiecc() -> Option<PathBuf> {
    let names = ["aiecc", "aiecc.py"];
    let install = std::env::var_os("MLIR_AIE_INSTALL_DIR").map(|d| PathBuf::from(d).join("bin"));
    let path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    install.into_iter().chain(path).flat_map(|d| names.map(|n| d.join(n))).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A scratch folder that is removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("unicornc-{}-{n}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Build one design's MLIR with `aiecc`: the xclbin and the instruction words it writes.
pub fn build_design(aiecc: &Path, name: &str, mlir: &str) -> Result<Built> {
    let dir = Scratch::new(name)?;
    std::fs::write(dir.0.join("design.mlir"), mlir).context("writing the design's MLIR")?;
    let mut cmd = Command::new(aiecc);
    cmd.current_dir(&dir.0).args([
        "--no-xchesscc",
        "--no-xbridge",
        "--aie-generate-xclbin",
        "--xclbin-name=design.xclbin",
        "--aie-generate-npu-insts",
        "--npu-insts-name=insts.bin",
    ]);
    if let Some(peano) = std::env::var_os("PEANO_INSTALL_DIR") {
        cmd.arg("--peano").arg(peano);
    }
    cmd.arg("design.mlir");
    let out = cmd.output().with_context(|| format!("running {}", aiecc.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        bail!("{} failed on design {name} ({}): {}", aiecc.display(), out.status, last.trim());
    }
    let read = |f: &str| {
        std::fs::read(dir.0.join(f)).with_context(|| format!("{} wrote no {f} for design {name}", aiecc.display()))
    };
    let (xclbin, insts) = (read("design.xclbin")?, read("insts.bin")?);
    if insts.is_empty() || insts.len() % 4 != 0 {
        bail!("{}: insts.bin of design {name} is {} bytes, not whole 32-bit words", aiecc.display(), insts.len());
    }
    let insts = insts.chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes"))).collect();
    Ok(Built { xclbin, insts })
}

/// The NPU kernels of a plan's kernel table with their artifacts, decoded and checked.
pub fn npu_kernels(header: &PlanHeader, section: &[u8]) -> Result<Vec<(usize, NpuKernel)>> {
    let mut v = Vec::new();
    for (i, k) in header.kernels.iter().enumerate() {
        if k.backend != Backend::Npu {
            continue;
        }
        let Some(a) = k.artifact else { bail!("kernels[{i}] ({}): an NPU kernel without its design", k.name) };
        let bytes = a
            .offset
            .checked_add(a.len)
            .and_then(|end| section.get(a.offset as usize..end as usize))
            .with_context(|| format!("kernels[{i}] ({}): artifact outside the kernels section", k.name))?;
        let kernel = NpuKernel::decode(bytes, &NPU1).map_err(|e| anyhow::anyhow!("kernels[{i}] ({}): {e}", k.name))?;
        v.push((i, kernel));
    }
    Ok(v)
}

/// Build every NPU design of a plan that is not built yet, and lay out a new kernels section with the built
/// artifacts (other kernels' bytes kept as they are). Returns the section and how many designs were built.
pub fn build_all(
    aiecc: &Path,
    header: &mut PlanHeader,
    section: &[u8],
    progress: &crate::progress::Progress,
) -> Result<(Vec<u8>, usize)> {
    let kernels = npu_kernels(header, section)?;
    let total = kernels.iter().filter(|(_, k)| k.built.is_none()).count();
    let mut out = Vec::with_capacity(section.len());
    let mut built = 0;
    // Every artifact is copied in table order, so the section stays a function of the table.
    let mut npu = kernels.into_iter().peekable();
    for i in 0..header.kernels.len() {
        let Some(a) = header.kernels[i].artifact else { continue };
        let bytes = if npu.peek().is_some_and(|(j, _)| *j == i) {
            let (_, mut k) = npu.next().expect("peeked");
            if k.built.is_none() {
                progress.item(&format!("{} ({}/{total})", k.design.name, built + 1));
                k.built = Some(build_design(aiecc, &k.design.name, &k.mlir)?);
                built += 1;
            }
            k.encode()
        } else {
            let end = a.offset.checked_add(a.len);
            let bytes = end.and_then(|end| section.get(a.offset as usize..end as usize));
            bytes.with_context(|| format!("kernels[{i}]: artifact outside the kernels section"))?.to_vec()
        };
        out.resize(out.len().next_multiple_of(8), 0);
        header.kernels[i].artifact = Some(ArtifactRange { offset: out.len() as u64, len: bytes.len() as u64 });
        out.extend_from_slice(&bytes);
    }
    Ok((out, built))
}

/// `unicornc build-npu PLAN [-o OUT]`: build the plan's NPU designs and write the finished plan to `out` (the
/// plan itself when `out` is the plan: a new file renamed into place once whole).
pub fn build_npu(plan: &Path, out: &Path, progress: bool) -> Result<usize> {
    let file = PlanFile::open(plan)?;
    let mut header = file.header.clone();
    if !header.kernels.iter().any(|k| k.backend == Backend::Npu) {
        bail!("{}: the plan has no NPU designs (compile with --target phoenix)", plan.display());
    }
    let Some(aiecc) = find_aiecc() else {
        bail!("aiecc not found (on PATH or in $MLIR_AIE_INSTALL_DIR/bin): install mlir-aie to build NPU designs");
    };
    let kernels = file.section(SectionKind::Kernels)?;
    let mut bar = crate::progress::Progress::new(progress);
    bar.stage("building the NPU designs with aiecc");
    let (section, built) = build_all(&aiecc, &mut header, kernels, &bar).context(plan.display().to_string())?;
    bar.finish();
    let inputs: Vec<&Path> = if out == plan { Vec::new() } else { vec![plan] };
    let mut w = PlanWriter::create(out, &inputs)?;
    for s in file.sections() {
        let bytes = file.section(s.kind)?;
        w.section(s.kind, if s.kind == SectionKind::Kernels { &section } else { bytes })?;
    }
    w.finish(header)?;
    Ok(built)
}
