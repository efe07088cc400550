//! `--device npu`: a Phoenix plan's NPU launches on the NPU itself, through XRT ([`xrt_sys`]). Each design's
//! xclbin is loaded into a hardware context once, at its first launch; a launch writes its operand (bf16,
//! padded to the design's shape) into the context's buffer, each of its weights once (a buffer per weight, the
//! runtime-sequence argument of its place in the launch), runs the design's instruction stream over x, the
//! weights and y (at most 5 host buffers, `unicorn_ir::npu::MAX_HOST_ARGS`) and splits y's rows, the outputs
//! side by side, into the launch's results.
//!
//! A prefill attention launch writes the chunk's Q and the keys and values, position by position, into its
//! context's buffers and runs the design's instruction stream with the dispatch's runtime parameters (`q0`,
//! `kv_len`) patched into it ([`patch_rtp`]): mlir-aie v1.4.1 translates each `aiex.npu.rtp_write` into a
//! `write32` of a constant (placeholder 0) at the parameter buffer's address, so the host finds those words
//! once, when the design is loaded, and sets them per dispatch in the copy of the stream it keeps with the
//! design.
//!
//! No machine this project is tested on has an NPU or XRT: this path has not run on hardware. What is tested is
//! that it refuses in one line where XRT, an NPU or a built design is missing, and the patching on a synthetic
//! instruction stream of the release's transaction format.

use super::{AttentionChunk, NpuCounts, NpuDevice, PlanAttention, PlanGemm};
use crate::cpu::matmul::WeightRef;
use crate::model::Model;
use crate::Error;
use std::collections::HashMap;
use std::time::Duration;
use unicorn_ir::npu::GemmBtShape;
use unicorn_ir::plan::Backend;

/// One design loaded on the NPU, with its buffers (operand, result) and a buffer per weight it multiplies, by
/// (runtime-sequence argument, where the weight's bytes are).
struct Loaded {
    context: xrt_sys::Context,
    x: xrt_sys::Buffer,
    y: xrt_sys::Buffer,
    weights: HashMap<(usize, usize), xrt_sys::Buffer>,
}

/// An attention design loaded on the NPU, with its buffers (Q, the keys and values, the output) and its
/// instruction stream, kept with where its runtime parameters go so that a dispatch only sets those words.
struct LoadedAttention {
    context: xrt_sys::Context,
    q: xrt_sys::Buffer,
    kv: xrt_sys::Buffer,
    out: xrt_sys::Buffer,
    insts: Vec<u32>,
    rtp: RtpWords,
}

pub struct Npu {
    device: xrt_sys::Device,
    loaded: HashMap<usize, Loaded>,
    attention: HashMap<usize, LoadedAttention>,
    /// A dispatch's operand bytes and its result, kept from one dispatch to the next: once the largest design
    /// has run, a dispatch allocates nothing.
    bytes: Vec<u8>,
    floats: Vec<f32>,
}

fn xrt(e: xrt_sys::XrtError) -> Error {
    Error::Input(format!("npu: {e}"))
}

impl Npu {
    /// Open NPU 0 for `model`'s designs (`kernels`, as [`super::plan_kernels`] checked them), which must have
    /// been built (`unicornc build-npu`).
    pub fn open(model: &Model, kernels: &[Option<super::PlanNpu>]) -> Result<Self, Error> {
        let device = xrt_sys::Device::open(0).map_err(xrt)?;
        let unbuilt = kernels.iter().flatten().filter(|g| g.kernel().built.is_none()).count();
        if unbuilt > 0 {
            let of = model.header().kernels.iter().filter(|k| k.backend == Backend::Npu).count();
            return Err(Error::Input(format!(
                "npu: {unbuilt} of the plan's {of} NPU designs are not built: run `unicornc build-npu {}` where mlir-aie is installed",
                model.path().display()
            )));
        }
        Ok(Self { device, loaded: HashMap::new(), attention: HashMap::new(), bytes: Vec::new(), floats: Vec::new() })
    }
}

/// The bf16 bytes of `src`, zero-padded to `len` values, in `dst` (whose allocation is kept).
fn bf16_into(dst: &mut Vec<u8>, src: &[f32], len: usize) {
    dst.clear();
    dst.extend(src.iter().flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes()));
    dst.resize(2 * len.max(src.len()), 0);
}

/// The GEMM design's operand in `dst`: `x` (rows of `k`) as `padded_m x padded_k` bf16 values, zero where
/// padded, the bytes of [`super::padded_operand`] without its f32 copy.
fn operand_into(dst: &mut Vec<u8>, x: &[f32], s: &GemmBtShape) {
    let (k, pm, pk) = (s.k as usize, s.padded_m as usize, s.padded_k as usize);
    dst.clear();
    dst.resize(2 * pm * pk, 0);
    for (row, src) in dst.chunks_exact_mut(2 * pk).zip(x.chunks(k)) {
        for (d, &v) in row.chunks_exact_mut(2).zip(src) {
            d.copy_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
        }
    }
}

/// The first `out.len()` f32 of `b` into `out`, read through `bytes` (whose allocation is kept).
fn read_f32(b: &xrt_sys::Buffer, bytes: &mut Vec<u8>, out: &mut [f32]) -> Result<(), Error> {
    bytes.resize(4 * out.len(), 0);
    b.read(bytes).map_err(xrt)?;
    for (o, w) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes(w.try_into().expect("4 bytes"));
    }
    Ok(())
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
                let padded = super::padded_weight(w, pw, s);
                bf16_into(&mut self.bytes, &padded, padded.len());
                b.write(&self.bytes).map_err(xrt)?;
                b.sync_to_device().map_err(xrt)?;
                loaded.weights.insert(key, b);
            }
        }
        operand_into(&mut self.bytes, x, s);
        loaded.x.write(&self.bytes).map_err(xrt)?;
        loaded.x.sync_to_device().map_err(xrt)?;
        let mut args = vec![&loaded.x];
        args.extend(keys.iter().map(|k| &loaded.weights[k]));
        args.push(&loaded.y);
        loaded.context.run(&built.insts, &args, Duration::from_secs(10)).map_err(xrt)?;
        loaded.y.sync_from_device().map_err(xrt)?;
        self.floats.resize(pm * pn, 0.0);
        read_f32(&loaded.y, &mut self.bytes, &mut self.floats)?;
        super::split_outputs(&self.floats, s, x.len() / s.k as usize, ys);
        counts.add(1, g.host_bytes, s.macs());
        Ok(())
    }

    fn attention(&mut self, a: &PlanAttention, c: AttentionChunk, counts: &mut NpuCounts) -> Result<(), Error> {
        let AttentionChunk { q, kv, q0, kv_len, out } = c;
        let built = a.kernel.built.as_ref().ok_or_else(|| Error::Input(format!("npu: {} is not built", a.name)))?;
        let s = &a.shape;
        let (qn, kvn) = ((s.padded_rows * s.q_row()) as usize, (2 * s.key_rows * s.kv_row()) as usize);
        let values = [q0, kv_len].map(|v| u32::try_from(v).unwrap_or(u32::MAX));
        let stream = |e: String| Error::Plan(format!("npu: {}: its instruction stream: {e}", a.name));
        rtp_values_fit(&a.kernel.design, &values).map_err(stream)?;
        let loaded = match self.attention.entry(a.index) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                // The stream is checked and its parameter words found once, before the design is loaded.
                let rtp = RtpWords::locate(&built.insts, &a.kernel.design).map_err(stream)?;
                let context = self.device.load(&built.xclbin).map_err(xrt)?;
                let q = context.buffer(qn * 2, 0).map_err(xrt)?;
                let kv = context.buffer(kvn * 2, 1).map_err(xrt)?;
                let out = context.buffer(qn * 4, 2).map_err(xrt)?;
                e.insert(LoadedAttention { context, q, kv, out, insts: built.insts.clone(), rtp })
            }
        };
        loaded.rtp.apply(&mut loaded.insts, &values);
        bf16_into(&mut self.bytes, q, qn);
        loaded.q.write(&self.bytes).map_err(xrt)?;
        loaded.q.sync_to_device().map_err(xrt)?;
        bf16_into(&mut self.bytes, kv, kv.len());
        loaded.kv.write(&self.bytes).map_err(xrt)?;
        loaded.kv.sync_to_device().map_err(xrt)?;
        loaded
            .context
            .run(&loaded.insts, &[&loaded.q, &loaded.kv, &loaded.out], Duration::from_secs(10))
            .map_err(xrt)?;
        loaded.out.sync_from_device().map_err(xrt)?;
        read_f32(&loaded.out, &mut self.bytes, out)?;
        counts.add(1, a.host_bytes, s.macs_bound());
        Ok(())
    }
}

/// Opcodes of the NPU instruction stream's operations (mlir-aie v1.4.1, `lib/Targets/AIETargetNPU.cpp`,
/// transaction format 0.1): a register write (6 words: opcode, 0, address, 0, value, 24 bytes), a block write
/// (opcode, 0, address, its size in bytes, then its data), a masked write (7 words); opcodes from 0x80 on
/// (sync, address patch, ...) state their size in bytes in their third word.
const TXN_WRITE: u32 = 0;
const TXN_BLOCKWRITE: u32 = 1;
const TXN_MASKWRITE: u32 = 3;
const TXN_HEADER_WORDS: usize = 4;

/// `insts` (aiecc's `insts.bin` of `design`) with each runtime parameter's placeholder set to the dispatch's
/// value (`RtpWords::locate` finds them, `RtpWords::apply` sets them). Anything else is refused in one line,
/// as a stream built from another design.
pub fn patch_rtp(insts: &[u32], design: &unicorn_aie::design::Design, values: &[u32]) -> Result<Vec<u32>, String> {
    rtp_values_fit(design, values)?;
    let rtp = RtpWords::locate(insts, design)?;
    let mut out = insts.to_vec();
    rtp.apply(&mut out, values);
    Ok(out)
}

/// Whether `values` are one for each of `design`'s runtime parameters; otherwise how many there are of each.
fn rtp_values_fit(design: &unicorn_aie::design::Design, values: &[u32]) -> Result<(), String> {
    if values.len() != design.params.len() {
        return Err(format!("{} runtime parameter values for the design's {}", values.len(), design.params.len()));
    }
    Ok(())
}

/// Where a design's runtime parameters go in its instruction stream: for each word of its parameter buffers,
/// the stream word that holds its value and the parameter it is.
struct RtpWords {
    words: Vec<(usize, usize)>,
}

impl RtpWords {
    /// The value words of `insts` (aiecc's `insts.bin` of `design`): the stream's first register writes are
    /// the design's `rtp_write`s in its order (each [`unicorn_aie::design::RtpBuffer`] in turn, word by word),
    /// each a `write32` of the placeholder 0 to the buffer's tile (address bits 25.. the column, 20..25 the
    /// row) at its consecutive words. Anything else is refused in one line, as a stream built from another
    /// design.
    fn locate(insts: &[u32], design: &unicorn_aie::design::Design) -> Result<Self, String> {
        // Each rtp word: its tile and the parameter it holds.
        let want: Vec<(u64, u64, usize)> = design
            .rtp
            .iter()
            .flat_map(|b| b.words.iter().map(move |&p| (b.tile.col as u64, b.tile.row as u64, p)))
            .collect();
        let mut at = TXN_HEADER_WORDS;
        let mut found: Vec<(usize, u32)> = Vec::with_capacity(want.len());
        if insts.len() < TXN_HEADER_WORDS {
            return Err(format!("{} words, shorter than its header", insts.len()));
        }
        while at < insts.len() && found.len() < want.len() {
            let word =
                |i: usize| insts.get(at + i).copied().ok_or_else(|| format!("an operation at word {at} is cut short"));
            let len = match word(0)? & 0xff {
                TXN_WRITE => {
                    found.push((at, word(2)?));
                    6
                }
                TXN_BLOCKWRITE => (word(3)? as usize).div_ceil(4),
                TXN_MASKWRITE => 7,
                op if op >= 0x80 => (word(2)? as usize).div_ceil(4),
                op => return Err(format!("an unknown operation {op:#x} at word {at}")),
            };
            if len == 0 {
                return Err(format!("an operation of no words at word {at}"));
            }
            if at + len > insts.len() {
                return Err(format!("an operation at word {at} is cut short"));
            }
            at += len;
        }
        if found.len() < want.len() {
            return Err(format!(
                "{} register writes, for the design's {} runtime parameter words",
                found.len(),
                want.len()
            ));
        }
        let mut words = Vec::with_capacity(want.len());
        let mut last: Option<(u64, u64, u32)> = None;
        for (i, (&(w, address), &(col, row, p))) in found.iter().zip(&want).enumerate() {
            let (c, r, offset) = ((address >> 25) as u64, ((address >> 20) & 0x1f) as u64, address & 0xf_ffff);
            if (c, r) != (col, row) {
                return Err(format!(
                    "its register write {i} is to tile ({c}, {r}), where runtime parameter word {i} is on ({col}, {row})"
                ));
            }
            if let Some((lc, lr, lo)) = last.filter(|l| (l.0, l.1) == (col, row)) {
                if offset != lo + 4 {
                    return Err(format!(
                        "its register write {i} is at {offset:#x} of tile ({lc}, {lr}), not after {lo:#x}"
                    ));
                }
            }
            if insts[w + 4] != 0 {
                return Err(format!("its register write {i} writes {:#x}, not the placeholder 0", insts[w + 4]));
            }
            words.push((w + 4, p));
            last = Some((col, row, offset));
        }
        Ok(Self { words })
    }

    /// Set each parameter word of `insts` (the stream located, or a copy of it) to its value of `values` (one
    /// for each of the design's parameters, as [`rtp_values_fit`] checks); every other word is left as it is.
    fn apply(&self, insts: &mut [u32], values: &[u32]) {
        for &(w, p) in &self.words {
            insts[w] = values[p];
        }
    }
}

/// The `--list-devices` line for the NPU.
pub fn describe() -> String {
    match xrt_sys::Device::open(0) {
        Ok(_) => "npu        NPU 0 through XRT (Phoenix plans' NPU steps; the rest on the cpu)".into(),
        Err(e) => format!("npu        none: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicorn_aie::design::{tile, Design, RtpBuffer};

    /// A design of two cores' parameter buffers (q0, kv_len each), and a synthetic stream of the transaction
    /// format as aiecc lays it out for it: the header, the four rtp writes (placeholders 0) at consecutive
    /// words of each buffer, the two barriers' lock writes, a block write, a masked write, a sync.
    fn design_and_stream() -> (Design, Vec<u32>, [usize; 4]) {
        let d = Design {
            params: vec!["q0".into(), "kv_len".into()],
            rtp: vec![
                RtpBuffer { tile: tile(0, 2), words: vec![0, 1] },
                RtpBuffer { tile: tile(3, 5), words: vec![0, 1] },
            ],
            ..Default::default()
        };
        let addr = |c: u32, r: u32, off: u32| (c << 25) | (r << 20) | off;
        let write = |a: u32, v: u32| [TXN_WRITE, 0, a, 0, v, 24];
        let mut s = vec![0x0603_0100, 0x0000_0104, 9, 0];
        let mut at = Vec::new();
        for (c, r, off) in [(0, 2, 0x400), (0, 2, 0x404), (3, 5, 0x7f0), (3, 5, 0x7f4)] {
            at.push(s.len() + 4);
            s.extend(write(addr(c, r, off), 0));
        }
        s.extend(write(addr(0, 2, 0x1f000), 1));
        s.extend(write(addr(3, 5, 0x1f000), 1));
        s.extend([TXN_BLOCKWRITE, 0, addr(0, 0, 0x1d000), 32, 7, 8, 9, 10]);
        s.extend([TXN_MASKWRITE, 0, addr(0, 0, 0x1d200), 0, 5, 0xff, 28]);
        s.extend([0x80, 0, 16, 0]);
        let n = s.len() as u32;
        s[3] = 4 * n;
        (d, s, at.try_into().unwrap())
    }

    /// Each dispatch's values land in the words of their rtp writes, every other word as it was; patching the
    /// same stream again with other values starts from the placeholders.
    /// The operand and Q bytes a dispatch writes are the bf16 of the padded f32 layout the emulator takes, in a
    /// buffer reused across dispatches of other shapes (larger, then smaller: nothing of the earlier one left).
    #[test]
    fn dispatch_bytes_are_the_padded_bf16_layout_whatever_came_before() {
        let bf16 = |v: &[f32]| v.iter().flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes()).collect();
        let mut dst = Vec::new();
        for (m, k, pm, pk) in [(7, 40, 16, 64), (3, 5, 8, 8), (16, 64, 16, 64)] {
            let s = GemmBtShape { m, k, padded_m: pm, padded_k: pk, outputs: vec![(3, 8)] };
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin() * 3.0 + 0.1).collect();
            operand_into(&mut dst, &x, &s);
            let want: Vec<u8> = bf16(&super::super::padded_operand(&x, &s));
            assert_eq!(dst, want, "{m} x {k} in {pm} x {pk}");
        }
        bf16_into(&mut dst, &[1.5, -2.0, 3.25], 5);
        assert_eq!(dst, bf16(&[1.5, -2.0, 3.25, 0.0, 0.0]));
    }

    #[test]
    fn runtime_parameters_are_patched_into_their_register_writes() {
        let (d, s, at) = design_and_stream();
        for (q0, kv_len) in [(0u32, 37u32), (256, 300)] {
            let p = patch_rtp(&s, &d, &[q0, kv_len]).unwrap();
            assert_eq!([p[at[0]], p[at[1]], p[at[2]], p[at[3]]], [q0, kv_len, q0, kv_len]);
            let changed: Vec<usize> = (0..s.len()).filter(|&i| p[i] != s[i]).collect();
            assert!(changed.iter().all(|i| at.contains(i)), "{changed:?}");
        }
    }

    /// A stream that is not the design's is refused in one line: writes to another tile, out of order, a
    /// placeholder already set, too few writes, an operation cut short, an unknown opcode, the wrong count of
    /// values.
    #[test]
    fn a_stream_of_another_design_is_refused() {
        let (d, s, at) = design_and_stream();
        let edit = |f: &dyn Fn(&mut Vec<u32>)| {
            let mut t = s.clone();
            f(&mut t);
            t
        };
        let cases: Vec<(Vec<u32>, &str)> = vec![
            (edit(&|t| t[at[2] - 2] = (2 << 25) | (5 << 20) | 0x7f0), "is to tile (2, 5)"),
            (edit(&|t| t[at[1] - 2] = (2 << 20) | 0x408), "not after 0x400"),
            (edit(&|t| t[at[3]] = 9), "not the placeholder 0"),
            (s[..4 + 12].to_vec(), "2 register writes, for the design's 4"),
            (s[..at[3]].to_vec(), "cut short"),
            (edit(&|t| t[at[1] - 4] = 0x42), "unknown operation 0x42"),
        ];
        for (t, want) in cases {
            let e = patch_rtp(&t, &d, &[1, 2]).unwrap_err();
            assert!(e.contains(want) && !e.contains('\n'), "{want}: {e}");
        }
        assert!(patch_rtp(&s, &d, &[1]).unwrap_err().contains("1 runtime parameter values"));
    }
}
