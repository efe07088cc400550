//! The NPU kernels of a plan. An NPU kernel's artifact in the `kernels` section holds the AIE2 design as data
//! (what the runtime's emulator executes and what the rules check), the design's MLIR (what aiecc builds), and,
//! once built, the xclbin and the instruction stream XRT runs. The runtime decodes and checks every NPU kernel
//! with [`NpuKernel::decode`] before it runs anything: an artifact is untrusted bytes like the rest of a plan.
//!
//! Layout: the magic `UNPU`, a little-endian u32 format version, a u64 length `n`, `n` bytes of JSON (the
//! [`NpuKernel`] without its binaries, with their byte ranges), then the binaries.
//!
//! The JSON's op gained [`NpuOp::GemmBtMulti`] (several weights in one dispatch) without a version change, as
//! the plan's `chat` section was added: the single-weight [`NpuOp::GemmBt`] of older plans still decodes, with
//! its meaning (the same design and arguments as a `GemmBtMulti` of one weight), and a runtime older than the
//! new op refuses a plan that has it in one line (its header does not parse).

use serde::{Deserialize, Serialize};
use unicorn_aie::design::{CoreBody, Design, Elem, SeqOp};
use unicorn_aie::model::ArrayModel;

const MAGIC: &[u8; 4] = b"UNPU";
pub const NPU_ARTIFACT_VERSION: u32 = 1;

/// The most runtime-sequence arguments (host buffers) an NPU kernel takes: what the `MLIR_AIE` kernel of
/// mlir-aie's xclbins takes on every release. At the pinned v1.4.1, aiecc declares `max(5, the sequence's
/// arguments)` host buffers (`tools/aiecc/SidecarFiles.h`, `kMinHostBOs`; older releases declared exactly `bo0`
/// .. `bo4`), and the NPU firmware translates the addresses of the first 5 only
/// (`lib/Targets/AIETargetNPU.cpp`, `kNumFirmwareTranslatedArgs`): a 6th and later one relies on the
/// instruction stream's address patches folding that translation in, which the release calls unverified on
/// hardware (`kMaxHostBOs`). So a GEMM of several weights writes its outputs side by side into one buffer.
pub const MAX_HOST_ARGS: usize = 5;

/// The most weights one [`NpuOp::GemmBtMulti`] multiplies: its arguments are x, each weight and the one y.
pub const MAX_GEMM_WEIGHTS: usize = MAX_HOST_ARGS - 2;

/// What a design computes, in the terms of the step that launches it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NpuOp {
    /// `y[m x n] = x[m x k] W^T` with W the step's `n x k` bf16 weight (runtime arguments: 0 = x padded to
    /// `padded.0 x padded.1` bf16, 1 = W padded to `padded.2 x padded.1` bf16, 2 = y, `padded.0 x padded.2`
    /// f32). An execution of fewer than `m` rows pads x with zero rows. What plans compiled before
    /// [`NpuOp::GemmBtMulti`] carry (still read: it is that op with one weight, the same arguments and design).
    GemmBt { m: u64, k: u64, n: u64, padded: (u64, u64, u64) },
    /// `y_i[m x n[i]] = x[m x k] W_i^T` for each of the step's weights `W_i` (`n[i] x k`, bf16) in order, 1 to
    /// [`MAX_GEMM_WEIGHTS`] of them, in one dispatch (a layer's q, k and v; its gate and up). Runtime arguments:
    /// 0 = x padded to `padded.0 x padded.1` bf16; `1 + i` = `W_i` padded to `padded_n[i] x padded.1` bf16 (each
    /// weight where the plan stores it: nothing is concatenated); last = y, `padded.0` rows of `sum(padded_n)`
    /// f32 with `y_i` in columns `sum(padded_n[..i])..` of each row, which the host splits into the step's
    /// results. An execution of fewer than `m` rows pads x with zero rows.
    GemmBtMulti { m: u64, k: u64, n: Vec<u64>, padded: (u64, u64), padded_n: Vec<u64> },
    /// Prefill attention of chunks of at most `rows` query rows over at most `max_keys` keys (the plan's
    /// context and a chunk), causal, within the last `window` positions where there is one
    /// ([`AttentionShape`]): the design of `unicorn_targets::npu::attention`. Each dispatch takes its runtime
    /// parameters `q0` (the chunk's first position) and `kv_len` (the keys holding data: cached and the
    /// chunk's). Runtime arguments: 0 = Q (`padded_rows` rows of `heads x head_dim` bf16, after RoPE), 1 =
    /// `key_rows` positions, each its keys then its values (`kv_heads x head_dim` bf16 each; positions from
    /// `kv_len` on zeros), 2 = the output (`padded_rows` rows of `heads x head_dim` f32).
    Attention(AttentionShape),
}

/// The keys an [`NpuOp::Attention`] design must reach to serve every prefill chunk of `chunk` rows within a
/// context of `context` positions: the design takes `q0` up to `max_keys - chunk` (its static runtime sequence
/// streams what its last padded row sees there), and the last chunk of a full context starts at
/// `context - 1`.
pub fn attention_max_keys(context: u64, chunk: u64) -> u64 {
    context + chunk.max(1) - 1
}

/// The geometry of a prefill attention design: at most `rows` query rows a dispatch over at most `max_keys`
/// keys, `heads` query heads over `kv_heads` (query head `h` reads kv head `h / (heads / kv_heads)`), heads of
/// `head_dim`, causal, within the last `window` positions where there is one, scores scaled by `scale`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrefillShape {
    pub rows: u64,
    pub max_keys: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub window: Option<u64>,
    pub scale: f32,
}

/// The shape an [`NpuOp::Attention`] states: its design's geometry (its fields, through `Deref`), and its host
/// arguments' rows: Q's and the output's padded to whole rounds, and the key positions of each of K and V.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AttentionShape {
    #[serde(flatten)]
    pub geometry: PrefillShape,
    pub padded_rows: u64,
    pub key_rows: u64,
}

impl std::ops::Deref for AttentionShape {
    type Target = PrefillShape;

    fn deref(&self) -> &PrefillShape {
        &self.geometry
    }
}

impl AttentionShape {
    /// Elements of a row of Q and of the output, and of a key position of K (or V).
    pub fn q_row(&self) -> u64 {
        self.heads * self.head_dim
    }

    pub fn kv_row(&self) -> u64 {
        self.kv_heads * self.head_dim
    }

    /// Multiply-accumulates of QK^T and PV over every key the design streams (its static key traffic): an
    /// upper bound of what a dispatch computes.
    pub fn macs_bound(&self) -> u64 {
        2 * self.padded_rows * self.heads * self.max_keys * self.head_dim
    }
}

/// A weight-transposed GEMM of one or more weights, whichever op states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GemmBtShape {
    /// Rows and columns of x, and padded.
    pub m: u64,
    pub k: u64,
    pub padded_m: u64,
    pub padded_k: u64,
    /// Each output's width and padded width, in the order of the step's weights and of y's columns.
    pub outputs: Vec<(u64, u64)>,
}

impl GemmBtShape {
    /// y's row: the outputs' padded widths together.
    pub fn padded_n(&self) -> u64 {
        self.outputs.iter().map(|o| o.1).sum()
    }

    /// Multiply-accumulates a dispatch performs, padding included.
    pub fn macs(&self) -> u64 {
        self.padded_m * self.padded_k * self.padded_n()
    }
}

impl NpuOp {
    /// The GEMM the op states (`None`: attention).
    pub fn gemm_bt(&self) -> Option<GemmBtShape> {
        match self {
            &NpuOp::GemmBt { m, k, n, padded: (pm, pk, pn) } => {
                Some(GemmBtShape { m, k, padded_m: pm, padded_k: pk, outputs: vec![(n, pn)] })
            }
            NpuOp::GemmBtMulti { m, k, n, padded: (pm, pk), padded_n } => Some(GemmBtShape {
                m: *m,
                k: *k,
                padded_m: *pm,
                padded_k: *pk,
                outputs: n.iter().copied().zip(padded_n.iter().copied()).collect(),
            }),
            NpuOp::Attention(_) => None,
        }
    }

    /// The attention the op states (`None`: a GEMM).
    pub fn attention(&self) -> Option<AttentionShape> {
        match *self {
            NpuOp::Attention(a) => Some(a),
            _ => None,
        }
    }

    /// Multiply-accumulates of a dispatch: a GEMM's, padding included; an attention's bound
    /// ([`AttentionShape::macs_bound`]).
    pub fn macs(&self) -> u64 {
        match (self.gemm_bt(), self.attention()) {
            (Some(g), _) => g.macs(),
            (_, Some(a)) => a.macs_bound(),
            _ => 0,
        }
    }

    /// Elements of each runtime argument.
    pub fn arg_elems(&self) -> Vec<(u64, Elem)> {
        if let Some(a) = self.attention() {
            let q = a.padded_rows * a.q_row();
            return vec![(q, Elem::Bf16), (2 * a.key_rows * a.kv_row(), Elem::Bf16), (q, Elem::F32)];
        }
        let g = self.gemm_bt().expect("a GEMM");
        let (pm, pk) = (g.padded_m, g.padded_k);
        let mut args = vec![(pm * pk, Elem::Bf16)];
        args.extend(g.outputs.iter().map(|&(_, pn)| (pn * pk, Elem::Bf16)));
        args.push((pm * g.padded_n(), Elem::F32));
        args
    }
}

/// A byte range of the artifact's binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    pub offset: u64,
    pub len: u64,
}

/// aiecc's outputs for a design.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Built {
    pub xclbin: Vec<u8>,
    /// The runtime sequence as NPU instruction words (`insts.bin`).
    pub insts: Vec<u32>,
}

/// One NPU kernel of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct NpuKernel {
    pub op: NpuOp,
    pub design: Design,
    /// The design's whole module (aie / aiex structure and core bodies) for the pinned mlir-aie release.
    pub mlir: String,
    /// `None` until aiecc has built the design (`unicornc build-npu`).
    pub built: Option<Built>,
}

#[derive(Serialize, Deserialize)]
struct Head {
    op: NpuOp,
    design: Design,
    mlir: String,
    #[serde(default)]
    xclbin: Option<Blob>,
    #[serde(default)]
    insts: Option<Blob>,
}

impl NpuKernel {
    pub fn encode(&self) -> Vec<u8> {
        let mut blobs = Vec::new();
        let (xclbin, insts) = match &self.built {
            Some(b) => {
                let x = Blob { offset: 0, len: b.xclbin.len() as u64 };
                blobs.extend_from_slice(&b.xclbin);
                let i = Blob { offset: blobs.len() as u64, len: 4 * b.insts.len() as u64 };
                blobs.extend(b.insts.iter().flat_map(|w| w.to_le_bytes()));
                (Some(x), Some(i))
            }
            None => (None, None),
        };
        let head = Head { op: self.op.clone(), design: self.design.clone(), mlir: self.mlir.clone(), xclbin, insts };
        let json = serde_json::to_vec(&head).expect("an NPU kernel serializes");
        let mut out = Vec::with_capacity(16 + json.len() + blobs.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&NPU_ARTIFACT_VERSION.to_le_bytes());
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&blobs);
        out
    }

    /// Decode an artifact and check its design: the AIE2 rules of `array`, and every transfer of the runtime
    /// sequence within the runtime argument it reads or writes (so that the emulator and a device touch only
    /// the buffers they were given). One line on error.
    pub fn decode(bytes: &[u8], array: &ArrayModel) -> Result<Self, String> {
        if bytes.len() < 16 || &bytes[..4] != MAGIC {
            return Err("not an NPU kernel artifact (no UNPU magic)".into());
        }
        let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if version != NPU_ARTIFACT_VERSION {
            return Err(format!("NPU artifact version {version}, this build reads {NPU_ARTIFACT_VERSION}"));
        }
        let n = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let rest = &bytes[16..];
        let Some(json) = usize::try_from(n).ok().and_then(|n| rest.get(..n)) else {
            return Err(format!("its header of {n} bytes runs past the artifact's {}", rest.len()));
        };
        let blobs = &rest[json.len()..];
        let head: Head = serde_json::from_slice(json).map_err(|e| format!("its header: {e}"))?;
        let blob = |b: Option<Blob>, what: &str| -> Result<Option<&[u8]>, String> {
            let Some(b) = b else { return Ok(None) };
            let end = b.offset.checked_add(b.len).filter(|&e| e <= blobs.len() as u64);
            match end {
                Some(end) => Ok(Some(&blobs[b.offset as usize..end as usize])),
                None => Err(format!("its {what} {}+{} is outside the artifact", b.offset, b.len)),
            }
        };
        let built = match (blob(head.xclbin, "xclbin")?, blob(head.insts, "instructions")?) {
            (Some(x), Some(i)) => {
                if i.len() % 4 != 0 {
                    return Err(format!("its instructions are {} bytes, not whole 32-bit words", i.len()));
                }
                let insts = i.chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes"))).collect();
                Some(Built { xclbin: x.to_vec(), insts })
            }
            (None, None) => None,
            _ => return Err("it has an xclbin without instructions, or instructions without an xclbin".into()),
        };
        let k = NpuKernel { op: head.op, design: head.design, mlir: head.mlir, built };
        k.check(array)?;
        Ok(k)
    }

    /// The AIE2 rules, the op's sizes, and the transfers' reach.
    fn check(&self, array: &ArrayModel) -> Result<(), String> {
        let (weights, widths) = match &self.op {
            NpuOp::GemmBt { .. } => (1, 1),
            NpuOp::GemmBtMulti { n, padded_n, .. } => (n.len(), padded_n.len()),
            NpuOp::Attention(_) => return self.check_attention(array),
        };
        if weights != widths || !(1..=MAX_GEMM_WEIGHTS).contains(&weights) {
            return Err(format!(
                "its GEMM has {weights} widths and {widths} padded widths: 1 to {MAX_GEMM_WEIGHTS} weights (x, the \
                 weights and y in at most {MAX_HOST_ARGS} host buffers)"
            ));
        }
        let g = self.op.gemm_bt().expect("a GEMM");
        let (m, k, pm, pk) = (g.m, g.k, g.padded_m, g.padded_k);
        let ns: Vec<String> = g.outputs.iter().map(|o| o.0.to_string()).collect();
        let pns: Vec<String> = g.outputs.iter().map(|o| o.1.to_string()).collect();
        let (n, pn) = (ns.join("+"), pns.join("+"));
        let limit = 1u64 << 24;
        let dims = [m, k].into_iter().chain(g.outputs.iter().map(|o| o.0));
        let short = pm < m || pk < k || g.outputs.iter().any(|&(n, pn)| pn < n);
        if dims.into_iter().any(|d| d == 0 || d > limit) || short {
            return Err(format!("its GEMM of {m} x {k} x {n} padded to {pm} x {pk} x {pn} is not a valid shape"));
        }
        if [pm, pk].into_iter().chain(g.outputs.iter().map(|o| o.1)).any(|d| d > 2 * limit) {
            return Err(format!("its GEMM is padded to {pm} x {pk} x {pn}, beyond {}", 2 * limit));
        }
        self.check_design(array)
    }

    /// An attention's sizes, then its design.
    fn check_attention(&self, array: &ArrayModel) -> Result<(), String> {
        let a = self.op.attention().expect("an attention");
        let limit = 1u64 << 24;
        let bad = |field: &str, v: u64| Err(format!("its attention's {field} = {v} is not a valid shape"));
        for (field, v) in [("rows", a.rows), ("heads", a.heads), ("kv_heads", a.kv_heads), ("head_dim", a.head_dim)] {
            if v == 0 || v > limit {
                return bad(field, v);
            }
        }
        if !a.heads.is_multiple_of(a.kv_heads) {
            return bad("kv_heads", a.kv_heads);
        }
        if !a.head_dim.is_multiple_of(2) {
            return bad("head_dim", a.head_dim);
        }
        if a.max_keys < a.rows || a.max_keys > i32::MAX as u64 / 2 {
            return bad("max_keys", a.max_keys);
        }
        if a.padded_rows < a.rows || a.padded_rows > 2 * limit {
            return bad("padded_rows", a.padded_rows);
        }
        if a.key_rows <= a.max_keys || a.key_rows > 2 * a.max_keys + 64 {
            return bad("key_rows", a.key_rows);
        }
        if a.window == Some(0) {
            return Err("its attention's window = 0 is not a valid shape".into());
        }
        if !a.scale.is_finite() {
            return Err(format!("its attention's scale = {} is not finite", a.scale));
        }
        // The design's cores attend over the shape the op states, field by field.
        for c in &self.design.cores {
            let CoreBody::Attention { head_dim, rounds: r, .. } = c.body else {
                return Err(format!("its design's core at {:?} does not attend", c.tile));
            };
            let fields = [
                ("rows", r.rows, a.rows),
                ("max_keys", r.max_keys, a.max_keys),
                ("heads", r.heads, a.heads),
                ("kv_heads", r.kv_heads, a.kv_heads),
                ("head_dim", head_dim, a.head_dim),
                ("window", r.window, a.window.unwrap_or(0)),
            ];
            if let Some((field, design, op)) = fields.into_iter().find(|f| f.1 != f.2) {
                return Err(format!("its attention's {field} = {op}, where its design's cores take {design}"));
            }
            if r.scale.to_bits() != a.scale.to_bits() {
                return Err(format!("its attention's scale = {}, where its design's cores take {}", a.scale, r.scale));
            }
        }
        let want: Vec<&str> = unicorn_aie::design::ATTENTION_PARAMS.to_vec();
        if self.design.params != want {
            return Err(format!("its design takes the runtime parameters {:?}, not {want:?}", self.design.params));
        }
        self.check_design(array)
    }

    /// The AIE2 rules, and every transfer within the runtime argument it reads or writes.
    fn check_design(&self, array: &ArrayModel) -> Result<(), String> {
        if let Err(v) = unicorn_aie::verify::verify(&self.design, array) {
            let first = v.first().map_or(String::new(), |v| v.to_string());
            return Err(format!(
                "design {} breaks the AIE2 rules ({} violations; first: {first})",
                self.design.name,
                v.len()
            ));
        }
        let args = self.op.arg_elems();
        for op in &self.design.sequence {
            let SeqOp::Memcpy { arg, elem, offset, dims, fifo, .. } = op else { continue };
            let Some(&(len, want)) = args.get(*arg) else {
                return Err(format!("a transfer of fifo {fifo} names runtime argument {arg}, of {}", args.len()));
            };
            if *elem != want {
                return Err(format!("a transfer of fifo {fifo} reads argument {arg} as {elem:?}, not {want:?}"));
            }
            // The last element the transfer reaches: offset + sum of (size - 1) * stride, checked.
            let last = dims.iter().try_fold(*offset, |at, d| {
                d.size.checked_sub(1).and_then(|s| s.checked_mul(d.stride)).and_then(|x| at.checked_add(x))
            });
            if dims.iter().any(|d| d.size == 0) || last.is_none_or(|l| l >= len) {
                return Err(format!("a transfer of fifo {fifo} reaches past argument {arg}'s {len} elements"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicorn_aie::model::NPU1;

    fn kernel(op: NpuOp) -> NpuKernel {
        NpuKernel { op, design: Design::default(), mlir: String::new(), built: None }
    }

    /// A kernel of a plan compiled before multi-weight GEMMs (the `gemm_bt` op, as its header says it) still
    /// decodes, as the one-weight GEMM it always was: the same shape and runtime arguments.
    #[test]
    fn old_single_gemm_kernels_decode_as_one_weight() {
        let bytes = kernel(NpuOp::GemmBt { m: 512, k: 64, n: 40, padded: (512, 64, 256) }).encode();
        let head = r#""op":{"gemm_bt":{"m":512,"k":64,"n":40,"padded":[512,64,256]}}"#;
        assert!(String::from_utf8_lossy(&bytes).contains(head), "the header such a plan holds");
        let k = NpuKernel::decode(&bytes, &NPU1).unwrap();
        let multi = NpuOp::GemmBtMulti { m: 512, k: 64, n: vec![40], padded: (512, 64), padded_n: vec![256] };
        assert_eq!(k.op.gemm_bt(), multi.gemm_bt());
        assert!(k.op.attention().is_none());
        assert_eq!(k.op.arg_elems(), [(512 * 64, Elem::Bf16), (256 * 64, Elem::Bf16), (512 * 256, Elem::F32)]);
        assert_eq!(k.op.arg_elems(), multi.arg_elems());
    }

    /// A multi-weight kernel states each output's width: x, each weight and the one y are its arguments, and
    /// widths that disagree, too many weights (more host buffers than the kernel takes), or a width padded
    /// short are refused in one line.
    #[test]
    fn multi_weight_kernels_state_their_widths_and_are_checked() {
        let op = |n: Vec<u64>, padded_n: Vec<u64>| NpuOp::GemmBtMulti { m: 8, k: 8, n, padded: (256, 8), padded_n };
        let k = NpuKernel::decode(&kernel(op(vec![40, 24, 24], vec![256, 256, 256])).encode(), &NPU1).unwrap();
        let w = (256 * 8, Elem::Bf16);
        assert_eq!(k.op.arg_elems(), [(256 * 8, Elem::Bf16), w, w, w, (256 * 768, Elem::F32)]);
        assert_eq!(k.op.macs(), 256 * 8 * 768);
        for (n, pn, want) in [
            (vec![40, 24], vec![256], "2 widths and 1 padded widths"),
            (vec![8; 4], vec![256; 4], "4 widths and 4 padded widths: 1 to 3 weights"),
            (vec![], vec![], "0 widths"),
            (vec![300], vec![256], "8 x 8 x 300 padded to 256 x 8 x 256 is not a valid shape"),
            (vec![8, 0], vec![256, 256], "is not a valid shape"),
            (vec![8, 8], vec![256, u64::MAX], "beyond"),
        ] {
            let e = NpuKernel::decode(&kernel(op(n, pn)).encode(), &NPU1).unwrap_err();
            assert!(e.contains(want) && !e.contains('\n'), "{e}");
        }
    }

    /// An attention kernel states its shape: its arguments are Q, the keys then values, and the output, and a
    /// shape no design has is refused in one line naming the field.
    #[test]
    fn attention_kernels_state_their_shape_and_are_checked() {
        let op = |heads, kv_heads, head_dim, key_rows, window| {
            let geometry = PrefillShape { rows: 64, max_keys: 127, heads, kv_heads, head_dim, window, scale: 0.25 };
            NpuOp::Attention(AttentionShape { geometry, padded_rows: 128, key_rows })
        };
        let good = op(4, 2, 16, 159, None);
        assert_eq!(good.arg_elems(), [(128 * 64, Elem::Bf16), (2 * 159 * 32, Elem::Bf16), (128 * 64, Elem::F32)]);
        assert!(good.gemm_bt().is_none() && good.attention().unwrap().macs_bound() == 2 * 128 * 4 * 127 * 16);
        assert_eq!(attention_max_keys(64, 64), 127);
        for (op, want) in [
            (op(0, 2, 16, 159, None), "heads = 0"),
            (op(4, 3, 16, 159, None), "kv_heads = 3"),
            (op(4, 2, 15, 159, None), "head_dim = 15"),
            (op(4, 2, 16, 127, None), "key_rows = 127"),
            (op(4, 2, 16, 159, Some(0)), "window = 0"),
        ] {
            let e = NpuKernel::decode(&kernel(op).encode(), &NPU1).unwrap_err();
            assert!(e.contains(want) && !e.contains('\n'), "{want}: {e}");
        }
    }
}
