//! An AIE2 design as data: the tiles it places work on, the objectfifos between them (with their re-layouts),
//! the memtile links, each core's use of its fifos, and the runtime sequence of host transfers. The design
//! generators build this; the MLIR emitter prints it in the pinned mlir-aie release's syntax; the verifier
//! ([`crate::verify`]) and the emulator read it.

use serde::{Deserialize, Serialize};

/// A tile's place in the array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Coord {
    pub col: u32,
    pub row: u32,
}

/// The tile at `(col, row)`.
pub fn tile(col: u32, row: u32) -> Coord {
    Coord { col, row }
}

/// Access levels from `(size, stride)` pairs, outermost first.
pub fn dims(v: &[(u64, u64)]) -> Vec<Dim> {
    v.iter().map(|&(size, stride)| Dim { size, stride }).collect()
}

impl std::fmt::Display for Coord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tile({}, {})", self.col, self.row)
    }
}

/// Element types of the buffers a design moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Elem {
    Bf16,
    F32,
    I8,
    I32,
}

impl Elem {
    pub fn bytes(self) -> u64 {
        match self {
            Elem::I8 => 1,
            Elem::Bf16 => 2,
            Elem::F32 | Elem::I32 => 4,
        }
    }
}

/// One `(size, stride)` level of a DMA access pattern, in elements, outermost first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dim {
    pub size: u64,
    pub stride: u64,
}

/// An `aie.objectfifo`: `depth` buffers of `shape` elements produced on one tile and consumed on others,
/// each buffer streamed in the order of `to_stream` where it is set (`dimensionsToStream`, the re-layout an
/// operand takes on its way out of the producer's memory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectFifo {
    pub name: String,
    pub producer: Coord,
    pub consumers: Vec<Coord>,
    pub depth: u32,
    pub shape: Vec<u64>,
    pub elem: Elem,
    pub to_stream: Vec<Dim>,
}

impl ObjectFifo {
    /// A double-buffered fifo, streamed as laid out.
    pub fn double(name: String, producer: Coord, consumers: Vec<Coord>, shape: Vec<u64>, elem: Elem) -> Self {
        ObjectFifo { name, producer, consumers, depth: 2, shape, elem, to_stream: Vec::new() }
    }

    /// Bytes of one of its buffers.
    pub fn buffer_bytes(&self) -> u64 {
        self.shape.iter().product::<u64>() * self.elem.bytes()
    }
}

/// `aie.objectfifo.link [from] -> [to]`: a memtile that consumes the `from` fifos and produces the `to`
/// ones (a join, a split or a pass-through with a re-layout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub from: Vec<String>,
    pub to: Vec<String>,
}

/// Which end of a fifo a core uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Port {
    Produce,
    Consume,
}

/// A core's use of one fifo: it acquires `acquire` buffers at a time (and releases them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FifoUse {
    pub fifo: String,
    pub port: Port,
    pub acquire: u32,
}

/// An `aie.core`: the program of one compute tile, with the data memory it needs beside its fifos' buffers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Core {
    pub tile: Coord,
    /// Local buffers (accumulators, scratch), in bytes.
    pub locals_bytes: u64,
    /// Its stack; `None` takes the array's default.
    pub stack_bytes: Option<u64>,
    pub uses: Vec<FifoUse>,
    pub body: CoreBody,
}

/// What a core computes on the buffers it acquires, in the layouts they arrive in.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum CoreBody {
    /// `C += A B` over `k_tiles` pairs of A and B (its first and second fifo uses), then C (its third) released:
    /// A is `m x k` in the bf16 mmul's 4 x 8 blocks (row after row of blocks, each row-major), B `k x n` in its
    /// 8 x 4 blocks, C `m x n` row-major f32; bf16 operands, f32 accumulation in the order of `k`. With `bt`,
    /// the second operand is B transposed — `n x k`, a weight matrix's rows as a checkpoint stores them — in
    /// A's 4 x 8 blocks, so that a plan keeps one copy of each weight for every device.
    MatMul { m: u64, k: u64, n: u64, k_tiles: u64, bt: bool },
    /// `y += W x` over `k_tiles` pairs of W (its first fifo use, `rows x k` row-major bf16) and x (its second, `k`
    /// bf16), then y (its third, `rows` f32) released; f32 accumulation in the order of `k`.
    MatVec { rows: u64, k: u64, k_tiles: u64 },
    /// `y += W x` as [`CoreBody::MatVec`], W stored in int8 blocks ([`q8`]): its first fifo use is `rows` rows of
    /// `k / 32` blocks (`rows x q8::row_bytes(k)` bytes, i8), each block its bf16 scale `d` then its 32 int8
    /// quants `q`. Per row, per block in order: `p = sum over j of f32(q_j) * x_j` (x bf16 widened; each product
    /// exact in f32; summed in order from 0), then `acc = acc + d * p` (a rounded product, then a rounded sum),
    /// the row's `acc` starting from what y held. The quants are widened, not x quantized: int8 -> bf16 is exact,
    /// so AIE2's bf16 MACs with f32 accumulators compute these very products.
    MatVecQ8 { rows: u64, k: u64, k_tiles: u64 },
    /// A row-wise op on `rows x width` of its first fifo use (row-major) with its second, into its third
    /// (f32), one buffer of each at a time.
    Rows { op: RowOp, rows: u64, width: u64 },
    /// Causal (or sliding-window) attention of a block of query rows, round after round of
    /// [`AttentionRounds`]: a round acquires its first fifo's Q block (`q_rows x head_dim` row-major bf16),
    /// then the round's tiles of its second (`keys` keys of K then the same keys of V, each `keys x
    /// head_dim` row-major bf16), keeping the rows' online softmax — scores QK^T in f32 (bf16 operands), the
    /// running maximum and sum, the probabilities rounded to bf16 for PV with f32 sums — and releases the
    /// rows' output (`q_rows x head_dim` f32) into its third. The positions are the dispatch's runtime
    /// parameters, read from its tile's [`RtpBuffer`] ([`ATTENTION_PARAMS`]: word 0 the position `q0` of the
    /// chunk's first row, word 1 `kv_len`, the keys that hold data): its rows are at `q0 + row0 + slot
    /// q_rows ..`, a row at `kv_len` or later is padding (it sees no key, its output is 0), and a tile no row of
    /// the block sees is acquired and released without being computed on.
    Attention { q_rows: u64, keys: u64, head_dim: u64, rounds: AttentionRounds, slot: u64 },
    /// RMSNorm or the masked softmax ([`RowOp`]) of rows too wide for a core, one row at a time in two passes
    /// over its [`RowPieces::pieces`] pieces of `piece` elements (the row padded to whole pieces; `width` is
    /// its true width, and the pad is ignored whatever it holds). Pass 1 acquires each piece of its first fifo
    /// use (bf16; for the softmax with the same piece of its second, the mask) and folds it into the row's
    /// statistics ([`RowPieces`]: RMSNorm's sum of squares, the softmax's running maximum and sum of
    /// exponentials, online); pass 2 acquires the same pieces again with its second's (the norm's weights or
    /// the mask) and releases each piece's output (`piece` f32, zeros in the pad) into its third.
    RowPieces(RowPieces),
}

/// The int8 weight format of [`CoreBody::MatVecQ8`]: GGML's q8_0 block with a bf16 scale in place of its f16
/// one. A row's 32 consecutive elements are one block of [`BLOCK_BYTES`](q8::BLOCK_BYTES): their scale `d`
/// (bf16, two bytes, little-endian), then their 32 quants `q` (int8, -127..=127), each element `d q`. A row
/// of `k` (a multiple of 32) is `k / 32` blocks, row after row. The scale is bf16 because AIE2 computes in
/// bf16 (it has no f16, and f32 is emulated), and two bytes keep a block at 34 bytes (1.0625 bytes an element;
/// an f32 scale would make it 36). Bytes are carried as the emulator carries every element: one f32 each,
/// holding the signed value of the byte.
pub mod q8 {
    use crate::emu::bf16;

    /// Elements of a block.
    pub const BLOCK: u64 = 32;
    /// Bytes of a block: the scale's two, then the quants.
    pub const BLOCK_BYTES: u64 = 34;

    /// Bytes of a row of `k` elements (a multiple of [`BLOCK`]).
    pub fn row_bytes(k: u64) -> u64 {
        k / BLOCK * BLOCK_BYTES
    }

    /// A byte (its signed value) as the bits it holds.
    fn bits(b: f32) -> u16 {
        b as i8 as u8 as u16
    }

    /// A block's scale from its first two bytes (signed values): the bf16 of those bits, little-endian.
    pub fn scale(lo: f32, hi: f32) -> f32 {
        f32::from_bits((((bits(hi) << 8) | bits(lo)) as u32) << 16)
    }

    /// The bytes of a block's scale `d` (a bf16 value), as signed values.
    pub fn scale_bytes(d: f32) -> [f32; 2] {
        let h = (d.to_bits() >> 16) as u16;
        [h as u8 as i8 as f32, (h >> 8) as u8 as i8 as f32]
    }

    /// A row quantized (its length a multiple of [`BLOCK`]): each block's scale `d = bf16(amax / 127)`, its
    /// quants `round(w / d)` (half away from zero) held to -127..=127, or all 0 where `d` is 0. Its bytes.
    pub fn quantize_row(w: &[f32]) -> Vec<f32> {
        assert!(w.len().is_multiple_of(BLOCK as usize), "a q8 row of {} elements", w.len());
        let mut out = Vec::with_capacity(w.len() / BLOCK as usize * BLOCK_BYTES as usize);
        for b in w.chunks(BLOCK as usize) {
            let d = bf16(b.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0);
            out.extend(scale_bytes(d));
            out.extend(b.iter().map(|&v| if d == 0.0 { 0.0 } else { (v / d).round().clamp(-127.0, 127.0) }));
        }
        out
    }

    /// A row's elements from its bytes: `d q` each (exact in f32).
    pub fn dequantize_row(bytes: &[f32]) -> Vec<f32> {
        bytes
            .chunks(BLOCK_BYTES as usize)
            .flat_map(|b| {
                let d = scale(b[0], b[1]);
                b[2..].iter().map(move |q| d * q)
            })
            .collect()
    }
}

/// The shape of a [`CoreBody::RowPieces`] core: the op, a row's true width, and the piece it is streamed in.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RowPieces {
    /// [`RowOp::RmsNorm`] or [`RowOp::Softmax`].
    pub op: RowOp,
    pub width: u64,
    pub piece: u64,
}

impl RowPieces {
    /// Pieces a row is taken in.
    pub fn pieces(&self) -> u64 {
        self.width.div_ceil(self.piece)
    }

    /// Elements of piece `j` within the row (the rest of it is pad).
    pub fn valid(&self, j: u64) -> usize {
        (self.width - j * self.piece).min(self.piece) as usize
    }

    /// Whether pass 1 reads the second operand too (the softmax's statistics are of the masked scores).
    pub fn stats_read_second(&self) -> bool {
        matches!(self.op, RowOp::Softmax { .. })
    }

    /// Pass 1 on piece `j` (`x`, and the mask for the softmax): folded into the row's statistics `s` — for
    /// RMSNorm `s[0]` the sum of squares, in order from 0; for the softmax `s[0]` the running maximum of
    /// `z = x scale + mask` (from -inf) and `s[1]` the sum of `exp(z - s[0])` (from 0), rescaled by `exp(old
    /// max - new max)` where a piece raises the maximum; a piece all of whose `z` are -inf leaves them as they
    /// were. Piece 0 starts them afresh.
    pub fn stats(&self, j: u64, x: &[f32], second: &[f32], s: &mut [f32; 2]) {
        let n = self.valid(j);
        let (x, second) = (&x[..n], &second[..n.min(second.len())]);
        match self.op {
            RowOp::RmsNorm { .. } => {
                let from = if j == 0 { 0.0 } else { s[0] };
                s[0] = x.iter().fold(from, |acc, v| acc + v * v);
            }
            RowOp::Softmax { scale } => {
                let (m, l) = if j == 0 { (f32::NEG_INFINITY, 0.0) } else { (s[0], s[1]) };
                let z: Vec<f32> = x.iter().zip(second).map(|(v, mk)| v * scale + mk).collect();
                let mx = z.iter().copied().fold(m, f32::max);
                *s = if mx == f32::NEG_INFINITY {
                    [m, l]
                } else {
                    let corr = (m - mx).exp();
                    let sum = z.iter().fold(0.0f32, |acc, v| acc + (v - mx).exp());
                    [mx, l * corr + sum]
                };
            }
            RowOp::SiluGlu | RowOp::Rope { .. } => unreachable!("element-wise ops take whole rows"),
        }
    }

    /// Pass 2 on piece `j` (`x` and the second operand's piece) with the row's statistics `s`: its output
    /// `y` (`piece` elements, zeros in the pad) — RMSNorm `x / sqrt(s[0] / width + eps) * w`, the softmax
    /// `exp(z - s[0]) / s[1]`, zeros for a row masked entirely.
    pub fn out(&self, j: u64, x: &[f32], second: &[f32], s: &[f32; 2], y: &mut [f32]) {
        let n = self.valid(j);
        y[n..].fill(0.0);
        let (x, second, y) = (&x[..n], &second[..n], &mut y[..n]);
        match self.op {
            RowOp::RmsNorm { eps } => {
                let inv = 1.0 / (s[0] / self.width as f32 + eps).sqrt();
                for ((o, v), g) in y.iter_mut().zip(x).zip(second) {
                    *o = v * inv * g;
                }
            }
            RowOp::Softmax { scale } => {
                let (m, l) = (s[0], s[1]);
                for ((o, v), mk) in y.iter_mut().zip(x).zip(second) {
                    *o = if m == f32::NEG_INFINITY { 0.0 } else { (v * scale + mk - m).exp() / l };
                }
            }
            RowOp::SiluGlu | RowOp::Rope { .. } => unreachable!("element-wise ops take whole rows"),
        }
    }
}

/// The runtime parameters of an attention core, in the order of its [`RtpBuffer`]'s words: the position of the
/// chunk's first query row, and the keys that hold data (the cached positions and the chunk's real rows:
/// `q0 + rows` for a chunk of `rows` real rows).
pub const ATTENTION_PARAMS: [&str; 2] = ["q0", "kv_len"];

/// The rounds an attention design's cores take, the same on every core of a column (a column's cores take
/// one head's consecutive query blocks together, slot `s` the `s`-th, and see the same key tiles). They are
/// fixed when the design is built, for every chunk it may run: a round streams the key tiles any `q0` the
/// design admits ([`AttentionRounds::admits`]) may need, and the cores skip what the dispatch's `q0` and
/// `kv_len` leave unseen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AttentionRounds {
    /// Query rows a dispatch takes (a chunk of fewer is padded), and the keys the design reaches: a run's
    /// `q0 + rows` is at most `max_keys`.
    pub rows: u64,
    pub max_keys: u64,
    pub heads: u64,
    pub kv_heads: u64,
    /// Columns, and cores a column (the query blocks a round takes).
    pub columns: u64,
    pub per_col: u64,
    /// 0: none.
    pub window: u64,
    pub scale: f32,
    /// This core's column.
    pub column: u64,
}

/// One round of a column: its head, the first query row of its blocks, and the key tiles it walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttentionRound {
    pub head: u64,
    pub row0: u64,
    /// The first key of its first tile, and its tiles.
    pub key0: u64,
    pub tiles: u64,
}

impl AttentionRounds {
    /// The rounds of this column for query blocks of `q_rows` and key tiles of `keys`, in order: the
    /// column's heads (`column`, `column + columns`, ...), each over its groups of `per_col` blocks. A group's
    /// tiles run from the first key its first row sees at `q0 = 0` (the window's start there; 0 without a
    /// window) to the last its last row sees at the largest `q0` (`max_keys - rows`), so that they hold every
    /// key any admitted chunk's rows see.
    pub fn of(&self, q_rows: u64, keys: u64) -> Vec<AttentionRound> {
        let group = self.per_col * q_rows;
        let mut v = Vec::new();
        for head in (self.column..self.heads).step_by(self.columns as usize) {
            for row0 in (0..self.rows).step_by(group as usize) {
                let key0 = if self.window > 0 { (row0 + 1).saturating_sub(self.window) } else { 0 };
                let end = self.max_keys - self.rows + (row0 + group).min(self.rows);
                v.push(AttentionRound { head, row0, key0, tiles: (end - key0).div_ceil(keys) });
            }
        }
        v
    }

    /// Whether a dispatch may run with `q0` and `kv_len`: its rows `q0 .. q0 + rows` within the design's keys
    /// (`q0 + rows <= max_keys`), and `kv_len` too. One line saying why not.
    pub fn admits(&self, q0: u64, kv_len: u64) -> Result<(), String> {
        let (rows, max) = (self.rows, self.max_keys);
        if q0.checked_add(rows).is_none_or(|end| end > max) {
            return Err(format!(
                "q0 = {q0}: a design of {rows} rows over {max} keys takes q0 up to {}",
                max.saturating_sub(rows)
            ));
        }
        if kv_len > max {
            return Err(format!("kv_len = {kv_len}: a design over {max} keys takes kv_len up to {max}"));
        }
        Ok(())
    }
}

/// The row-wise ops of [`CoreBody::Rows`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum RowOp {
    /// `x / sqrt(mean(x^2) + eps) * w` per row, the second operand the `width` weights.
    RmsNorm { eps: f32 },
    /// `silu(g) * u` element by element, the second operand `u` of the first's shape.
    SiluGlu,
    /// Rotate-half RoPE of every `head_dim` head of a row, the second operand one f32 row per row of the
    /// rotation's cosines then sines (`head_dim / 2` of each: the row's position, the table's frequencies;
    /// a long row taken as several rows has its table row repeated for each).
    Rope { head_dim: u64 },
    /// `softmax(x * scale + mask)` per row, the second operand the additive mask of the first's shape (0 where
    /// a key is visible, -inf where not: causal, sliding-window and padding masks alike). A row masked
    /// entirely gives zeros.
    Softmax { scale: f32 },
}

impl RowOp {
    /// Elements and type of the second operand for `rows` rows of `width`.
    pub fn second(self, rows: u64, width: u64) -> (u64, Elem) {
        match self {
            RowOp::RmsNorm { .. } => (width, Elem::Bf16),
            RowOp::SiluGlu | RowOp::Softmax { .. } => (rows * width, Elem::Bf16),
            RowOp::Rope { head_dim } => (rows * head_dim, Elem::F32),
        }
    }
}

/// One host <-> array operation of the runtime sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SeqOp {
    /// `aiex.npu.dma_memcpy_nd`: a transfer between runtime argument `arg` (elements of `elem`) and the shim
    /// end of `fifo`, through buffer descriptor `bd`, with up to four `(size, stride)` levels outermost first
    /// and an element offset.
    Memcpy { arg: usize, elem: Elem, offset: u64, dims: Vec<Dim>, fifo: String, bd: u32 },
    /// `aiex.npu.dma_wait` on a fifo's transfers.
    Wait { fifo: String },
}

/// A core's runtime parameters: an `aie.buffer` of i32 words in its tile's memory that the runtime sequence
/// writes at the start of every dispatch (`aiex.npu.rtp_write`, one a word, before any transfer), and a lock
/// of its tile (the barrier) that the sequence then sets to 1 (`aiex.set_lock`) and the core acquires at the
/// start of its pass (`aie.use_lock`, AcquireGreaterEqual 1) before it reads them: so a pass reads its own
/// dispatch's values, never the previous one's. No DMA channel or buffer descriptor is involved: the writes
/// are register writes of the instruction stream. The words take `4 words.len()` bytes of the tile's memory
/// and the barrier one of its locks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RtpBuffer {
    pub tile: Coord,
    /// The runtime parameter each word holds, in order (an index into [`Design::params`]).
    pub words: Vec<usize>,
}

/// A design: everything one dispatch of it runs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Design {
    pub name: String,
    pub fifos: Vec<ObjectFifo>,
    pub links: Vec<Link>,
    pub cores: Vec<Core>,
    pub sequence: Vec<SeqOp>,
    /// The runtime parameters a dispatch takes, by name, in the order a run gives their values (none for a
    /// design whose every value is fixed when it is built).
    #[serde(default)]
    pub params: Vec<String>,
    /// The cores' runtime parameter buffers, written with the dispatch's values before its transfers.
    #[serde(default)]
    pub rtp: Vec<RtpBuffer>,
}

impl Design {
    pub fn fifo(&self, name: &str) -> Option<&ObjectFifo> {
        self.fifos.iter().find(|f| f.name == name)
    }

    /// The runtime parameter buffer of the core at `tile`.
    pub fn rtp_of(&self, tile: Coord) -> Option<&RtpBuffer> {
        self.rtp.iter().find(|b| b.tile == tile)
    }
}

impl CoreBody {
    /// Words of runtime parameters the body reads from its tile's [`RtpBuffer`]: an attention core with rounds
    /// to run reads [`ATTENTION_PARAMS`]; every other body reads none.
    pub fn params_read(&self) -> usize {
        match self {
            CoreBody::Attention { q_rows, keys, rounds, .. } if !rounds.of(*q_rows, *keys).is_empty() => {
                ATTENTION_PARAMS.len()
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::q8;

    /// A q8 block is its bf16 scale (little-endian) then its 32 quants, each `round(w / d)`; the values come
    /// back within half a scale step, the largest exactly; a zero block is all zero bytes.
    #[test]
    fn q8_blocks_hold_a_bf16_scale_then_the_quants() {
        let mut w: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        w[5] = -3.5;
        w[32..].fill(0.0);
        let b = q8::quantize_row(&w);
        assert_eq!(b.len() as u64, q8::row_bytes(64));
        // d = bf16(3.5 / 127) = 0x3CE2 (0.0275878...): its low byte first, as signed bytes.
        assert_eq!((b[0], b[1]), (0xE2u8 as i8 as f32, 0x3C as f32));
        let d = q8::scale(b[0], b[1]);
        assert_eq!(d.to_bits(), 0x3CE2_0000);
        assert_eq!(b[2 + 5], -127.0);
        assert_eq!(b[2 + 1], (w[1] / d).round());
        let back = q8::dequantize_row(&b);
        for (v, x) in back.iter().zip(&w) {
            assert!((v - x).abs() <= d / 2.0, "{v} vs {x}");
        }
        assert!(b[34..].iter().all(|&x| x == 0.0), "a zero block");
        assert_eq!(q8::scale_bytes(-d), [b[0], (0x3C | 0x80) as u8 as i8 as f32]);
    }
}
