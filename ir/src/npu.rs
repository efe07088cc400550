//! The NPU kernels of a plan. An NPU kernel's artifact in the `kernels` section holds the AIE2 design as data
//! (what the runtime's emulator executes and what the rules check), the design's MLIR (what aiecc builds), and,
//! once built, the xclbin and the instruction stream XRT runs. The runtime decodes and checks every NPU kernel
//! with [`NpuKernel::decode`] before it runs anything: an artifact is untrusted bytes like the rest of a plan.
//!
//! Layout: the magic `UNPU`, a little-endian u32 format version, a u64 length `n`, `n` bytes of JSON (the
//! [`NpuKernel`] without its binaries, with their byte ranges), then the binaries.

use serde::{Deserialize, Serialize};
use unicorn_aie::design::{Design, Elem, SeqOp};
use unicorn_aie::model::ArrayModel;

const MAGIC: &[u8; 4] = b"UNPU";
pub const NPU_ARTIFACT_VERSION: u32 = 1;

/// What a design computes, in the terms of the step that launches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NpuOp {
    /// `y[m x n] = x[m x k] W^T` with W the step's `n x k` bf16 weight (runtime arguments: 0 = x padded to
    /// `padded.0 x padded.1` bf16, 1 = W padded to `padded.2 x padded.1` bf16, 2 = y, `padded.0 x padded.2`
    /// f32). An execution of fewer than `m` rows pads x with zero rows.
    GemmBt { m: u64, k: u64, n: u64, padded: (u64, u64, u64) },
}

impl NpuOp {
    /// Elements of each runtime argument.
    pub fn arg_elems(&self) -> Vec<(u64, Elem)> {
        match *self {
            NpuOp::GemmBt { padded: (pm, pk, pn), .. } => {
                vec![(pm * pk, Elem::Bf16), (pn * pk, Elem::Bf16), (pm * pn, Elem::F32)]
            }
        }
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
        let head = Head { op: self.op, design: self.design.clone(), mlir: self.mlir.clone(), xclbin, insts };
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
        let NpuOp::GemmBt { m, k, n, padded: (pm, pk, pn) } = self.op;
        let limit = 1u64 << 24;
        if [m, k, n].iter().any(|&d| d == 0 || d > limit) || pm < m || pk < k || pn < n {
            return Err(format!("its GEMM of {m} x {k} x {n} padded to {pm} x {pk} x {pn} is not a valid shape"));
        }
        if [pm, pk, pn].iter().any(|&d| d > 2 * limit) {
            return Err(format!("its GEMM is padded to {pm} x {pk} x {pn}, beyond {}", 2 * limit));
        }
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
