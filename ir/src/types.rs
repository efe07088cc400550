//! Element types, weight storage formats and tensor types.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Number of elements in one quantization block of q8_0 / q4_0 (GGML's QK8_0 / QK4_0).
pub const QK: usize = 32;

/// How a weight tensor is stored in a plan. Activations are always f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    F32,
    F16,
    Bf16,
    /// 32-element blocks: f16 scale `d`, then 32 x i8; value = q * d. Bit-compatible with GGML Q8_0.
    Q8_0,
    /// 32-element blocks: f16 scale `d`, then 16 bytes; element j < 16 is the low nibble of byte j,
    /// element j + 16 the high nibble; value = (q - 8) * d. Bit-compatible with GGML Q4_0.
    Q4_0,
}

impl WeightFormat {
    pub const ALL: [WeightFormat; 5] = [Self::F32, Self::F16, Self::Bf16, Self::Q8_0, Self::Q4_0];

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
        }
    }

    /// The format named `s` (as `--weights` takes it).
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|f| f.name()).collect();
            format!("unknown weight format '{s}' (expected one of: {})", names.join(", "))
        })
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, Self::Q8_0 | Self::Q4_0)
    }

    /// Elements per storage block (1 for plain floats).
    pub fn block_elems(self) -> usize {
        if self.is_quantized() {
            QK
        } else {
            1
        }
    }

    /// Bytes per storage block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
            Self::Q8_0 => 2 + QK,
            Self::Q4_0 => 2 + QK / 2,
        }
    }

    /// Bytes of one row of `cols` elements, or `None` if `cols` is not a whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        cols.is_multiple_of(self.block_elems()).then(|| cols / self.block_elems() * self.block_bytes())
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Element type of a graph value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    F32,
    F16,
    Bf16,
    I32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::I32 => "i32",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One dimension of a tensor shape: the phase's symbolic sequence length, or a constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dim {
    /// The number of tokens processed by one execution of the phase (`S`; 1 for decode).
    Seq,
    /// The number of rows the caller asked to keep (last token only, or every token).
    Out,
    Const(usize),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Seq => f.write_str("S"),
            Dim::Out => f.write_str("R"),
            Dim::Const(n) => write!(f, "{n}"),
        }
    }
}

/// Type of a graph value. Every activation is a matrix of rows (one per token) by `width` columns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl TensorType {
    pub fn rows(dtype: DType, rows: Dim, width: usize) -> Self {
        Self { dtype, shape: vec![rows, Dim::Const(width)] }
    }

    pub fn vector(dtype: DType, len: Dim) -> Self {
        Self { dtype, shape: vec![len] }
    }

    /// The row dimension (first) of the value.
    pub fn row_dim(&self) -> Dim {
        self.shape[0]
    }

    /// Constant product of every dimension but the first: elements per row.
    pub fn row_width(&self) -> usize {
        self.shape[1..]
            .iter()
            .map(|d| match d {
                Dim::Const(n) => *n,
                _ => 1,
            })
            .product()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "] {}", self.dtype)
    }
}

/// Where a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// Not placed yet (before the placement pass).
    #[default]
    Unplaced,
    Cpu,
    Igpu,
    Npu,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Unplaced => "unplaced",
            Device::Cpu => "cpu",
            Device::Igpu => "igpu",
            Device::Npu => "npu",
        })
    }
}
