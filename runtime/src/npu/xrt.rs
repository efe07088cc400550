//! `--device npu`: a Phoenix plan's NPU launches on the NPU itself, through XRT ([`xrt_sys`]). Each design's
//! xclbin is loaded into a hardware context once, at its first launch; a launch writes its operand (bf16,
//! padded to the design's shape) into the context's buffer, each of its weights once (a buffer per weight, the
//! runtime-sequence argument of its place in the launch), runs the design's instruction stream over x, the
//! weights and y (at most 5 host buffers, `unicorn_ir::npu::MAX_HOST_ARGS`) and splits y's rows, the outputs
//! side by side, into the launch's results.
//!
//! No machine this project is tested on has an NPU or XRT: this path has not run on hardware. What is tested is
//! that it refuses in one line where XRT, an NPU or a built design is missing.

use super::{NpuCounts, NpuDevice, PlanGemm};
use crate::cpu::matmul::WeightRef;
use crate::model::Model;
use crate::Error;
use std::collections::HashMap;
use std::time::Duration;
use unicorn_ir::plan::Backend;

/// One design loaded on the NPU, with its buffers (operand, result) and a buffer per weight it multiplies, by
/// (runtime-sequence argument, where the weight's bytes are).
struct Loaded {
    context: xrt_sys::Context,
    x: xrt_sys::Buffer,
    y: xrt_sys::Buffer,
    weights: HashMap<(usize, usize), xrt_sys::Buffer>,
}

pub struct Npu {
    device: xrt_sys::Device,
    loaded: HashMap<usize, Loaded>,
}

fn xrt(e: xrt_sys::XrtError) -> Error {
    Error::Input(format!("npu: {e}"))
}

impl Npu {
    /// Open NPU 0 for `model`'s designs (`kernels`, as [`super::plan_kernels`] checked them), which must have
    /// been built (`unicornc build-npu`).
    pub fn open(model: &Model, kernels: &[Option<PlanGemm>]) -> Result<Self, Error> {
        let device = xrt_sys::Device::open(0).map_err(xrt)?;
        let unbuilt = kernels.iter().flatten().filter(|g| g.kernel.built.is_none()).count();
        if unbuilt > 0 {
            let of = model.header().kernels.iter().filter(|k| k.backend == Backend::Npu).count();
            return Err(Error::Input(format!(
                "npu: {unbuilt} of the plan's {of} NPU designs are not built: run `unicornc build-npu {}` where mlir-aie is installed",
                model.path().display()
            )));
        }
        Ok(Self { device, loaded: HashMap::new() })
    }
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes()).collect()
}

impl NpuDevice for Npu {
    fn name(&self) -> &'static str {
        "npu"
    }

    fn gemm(
        &mut self,
        g: &PlanGemm,
        x: &[f32],
        ws: &[WeightRef],
        ys: &mut [&mut [f32]],
        counts: &mut NpuCounts,
    ) -> Result<(), Error> {
        let built = g.kernel.built.as_ref().ok_or_else(|| Error::Input(format!("npu: {} is not built", g.name)))?;
        let s = &g.gemm;
        let (pm, pk, pn) = (s.padded_m as usize, s.padded_k as usize, s.padded_n() as usize);
        // Runtime-sequence arguments: 0 = x, 1 + i = weight i, then y.
        let y_arg = 1 + s.outputs.len();
        let loaded = match self.loaded.entry(g.index) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let context = self.device.load(&built.xclbin).map_err(xrt)?;
                let x = context.buffer(pm * pk * 2, 0).map_err(xrt)?;
                let y = context.buffer(pm * pn * 4, y_arg).map_err(xrt)?;
                e.insert(Loaded { context, x, y, weights: HashMap::new() })
            }
        };
        // Each weight's buffer is written once.
        let keys: Vec<(usize, usize)> = ws.iter().enumerate().map(|(i, w)| (1 + i, w.data.as_ptr() as usize)).collect();
        for ((&w, &(_, pw)), &key) in ws.iter().zip(&s.outputs).zip(&keys) {
            if !loaded.weights.contains_key(&key) {
                let mut b = loaded.context.buffer(pw as usize * pk * 2, key.0).map_err(xrt)?;
                b.write(&bf16_bytes(&super::padded_weight(w, pw, s))).map_err(xrt)?;
                b.sync_to_device().map_err(xrt)?;
                loaded.weights.insert(key, b);
            }
        }
        loaded.x.write(&bf16_bytes(&super::padded_operand(x, s))).map_err(xrt)?;
        loaded.x.sync_to_device().map_err(xrt)?;
        let mut args = vec![&loaded.x];
        args.extend(keys.iter().map(|k| &loaded.weights[k]));
        args.push(&loaded.y);
        loaded.context.run(&built.insts, &args, Duration::from_secs(10)).map_err(xrt)?;
        loaded.y.sync_from_device().map_err(xrt)?;
        let mut c = vec![0u8; pm * pn * 4];
        loaded.y.read(&mut c).map_err(xrt)?;
        let c: Vec<f32> = c.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        super::split_outputs(&c, s, x.len() / s.k as usize, ys);
        counts.dispatches += 1;
        counts.host_bytes += g.host_bytes;
        counts.macs += s.macs();
        Ok(())
    }
}

/// The `--list-devices` line for the NPU.
pub fn describe() -> String {
    match xrt_sys::Device::open(0) {
        Ok(_) => "npu        NPU 0 through XRT (Phoenix plans' NPU steps; the rest on the cpu)".into(),
        Err(e) => format!("npu        none: {e}"),
    }
}
