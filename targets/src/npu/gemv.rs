//! The whole-array GEMV designs for decode, `y[N] (f32) = W[N x K] x[K]` (bf16 activations, f32 accumulation),
//! with W in bf16 ([`gemv`]) or in int8 with a bf16 scale per block of 32 ([`gemv_q8`]), for any shape: each of
//! the 16 cores takes `r` rows of W at a time, `k` columns per buffer, and folds them with the matching `k` values
//! of x. Column `c`'s shim streams the rows of its four cores as one buffer of `4r x k`, which its memtile splits
//! among them; x enters through column 0's memtile and is broadcast to every core; each core's `r` results are
//! joined in its column's memtile and go back through its shim. A block of `16r` rows is one pass over x; N and K
//! are padded to whole blocks and buffers. One dispatch runs the whole GEMV. Decode on this NPU is bound by the
//! weights' DMA, not the MACs: the estimate says so.
//!
//! The int8 design ([`GemvWeights::Q8`]) is the same dataflow with W in bytes: W is stored as [`q8`] rows (GGML's
//! q8_0 block with a bf16 scale: 32 elements as their scale, then their 32 quants, 34 bytes), so `k` columns of a
//! row are `k / 32` whole blocks, each scale beside its quants in the same buffer, and one transfer a column
//! still streams its four cores' rows. A second fifo for the scales does not fit: column 0's shim sends x and W
//! on its two outgoing channels, and its memtile's six outgoing channels carry the four cores' W, x and y. Its
//! `k` is a multiple of 64, so that `k` columns of a row (`34 k / 32` bytes) are whole 32-bit words, as the DMA
//! moves them. The cores widen the quants (exactly) and multiply them by bf16 x ([`CoreBody::MatVecQ8`]); the
//! weights, which bound decode, move in 34 bytes per 32 elements where bf16 takes 64.

use super::design::{dims, q8, tile, Coord, Core, CoreBody, Design, Elem, FifoUse, Link, ObjectFifo, Port, SeqOp};
use super::model::ArrayModel;

/// How a GEMV's weights are stored (runtime argument 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvWeights {
    /// bf16, row-major.
    Bf16,
    /// int8 quants with a bf16 scale per block of 32 ([`q8`]), row after row.
    Q8,
}

impl GemvWeights {
    /// The element type W moves as.
    pub fn elem(self) -> Elem {
        match self {
            GemvWeights::Bf16 => Elem::Bf16,
            GemvWeights::Q8 => Elem::I8,
        }
    }

    /// Elements (of [`GemvWeights::elem`]) of `k` columns of a row.
    pub fn row_elems(self, k: u64) -> u64 {
        match self {
            GemvWeights::Bf16 => k,
            GemvWeights::Q8 => q8::row_bytes(k),
        }
    }

    /// Bytes of `k` columns of a row.
    pub fn row_bytes(self, k: u64) -> u64 {
        self.row_elems(k) * self.elem().bytes()
    }

    /// What a buffer's `k` is a multiple of: 32 bf16, or two q8 blocks (68 bytes: whole words).
    fn k_unit(self) -> u64 {
        match self {
            GemvWeights::Bf16 => 32,
            GemvWeights::Q8 => 2 * q8::BLOCK,
        }
    }

    /// The body of a core taking `rows x k` of W a buffer, `k_tiles` buffers an output.
    fn body(self, rows: u64, k: u64, k_tiles: u64) -> CoreBody {
        match self {
            GemvWeights::Bf16 => CoreBody::MatVec { rows, k, k_tiles },
            GemvWeights::Q8 => CoreBody::MatVecQ8 { rows, k, k_tiles },
        }
    }
}

/// A core's share: `rows x k` of W per buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemvTiles {
    pub rows: u64,
    pub k: u64,
}

impl GemvTiles {
    /// A core's data memory for its double-buffered W (stored as `weights`), x and y buffers.
    pub fn core_bytes(&self, weights: GemvWeights) -> u64 {
        2 * (self.rows * weights.row_bytes(self.k) + self.k * 2 + self.rows * 4)
    }
}

#[derive(Debug, Clone)]
pub struct Gemv {
    pub design: Design,
    pub weights: GemvWeights,
    pub tiles: GemvTiles,
    /// `(N, K)` as asked and padded.
    pub shape: (u64, u64),
    pub padded: (u64, u64),
}

impl Gemv {
    pub fn macs(&self) -> u64 {
        self.padded.0 * self.padded.1
    }

    /// Bytes the dispatch moves between host and array: the weights and x once per block, y.
    pub fn host_bytes(&self) -> u64 {
        let (pn, pk) = self.padded;
        let blocks = pn / (16 * self.tiles.rows);
        pn * self.weights.row_bytes(pk) + blocks * pk * 2 + pn * 4
    }

    /// [`ArrayModel::estimate_seconds`] of the dispatch: an ESTIMATE and a lower bound.
    pub fn estimate_seconds(&self, array: &ArrayModel) -> f64 {
        array.estimate_seconds(self.host_bytes(), self.macs())
    }

    /// Runtime argument 0 from W (`N x K` row-major): its rows padded with zeros to the padded shape (zero rows
    /// after them), as values for the bf16 design or quantized into [`q8`] rows for the int8 one.
    pub fn host_weights(&self, w: &[f32]) -> Vec<f32> {
        let ((n, k), (pn, pk)) = (self.shape, self.padded);
        assert_eq!(w.len() as u64, n * k, "W of {n} x {k}");
        let mut row = vec![0.0f32; pk as usize];
        let mut out = Vec::with_capacity((pn * self.weights.row_elems(pk)) as usize);
        for i in 0..pn as usize {
            row.fill(0.0);
            if i < n as usize {
                row[..k as usize].copy_from_slice(&w[i * k as usize..][..k as usize]);
            }
            match self.weights {
                GemvWeights::Bf16 => out.extend_from_slice(&row),
                GemvWeights::Q8 => out.extend(q8::quantize_row(&row)),
            }
        }
        out
    }
}

/// What a buffer handed from a memtile to a core costs beside the bytes it carries: an ASSUMPTION of the model
/// (a lock handshake and a BD reload are worth about a kilobyte of transfer), which only steers the choice of
/// buffers.
const HANDOFF_BYTES: u64 = 1024;

/// A core's buffers that fit it: the fewest bytes of padded weights (N to whole blocks of 16 cores' rows times K
/// to whole buffers) plus [`HANDOFF_BYTES`] per buffer a core takes, then the most rows, then the longest `k` —
/// rows a power of two from 4 to 128, `k` one from the weights' unit (32 bf16, 64 int8) up to 512 or K itself
/// rounded up to that unit where that is shorter (512 keeps the transfers' innermost wrap far below its 10-bit
/// limit).
pub fn choose_tiles(array: &ArrayModel, weights: GemvWeights, n_total: u64, k_total: u64) -> GemvTiles {
    let budget = array.compute.memory_bytes - array.default_stack_bytes;
    let cores = array.compute_tiles() as u64;
    let unit = weights.k_unit();
    let k_need = k_total.next_multiple_of(unit);
    let ks: Vec<u64> = (0..)
        .map(|i| unit << i)
        .take_while(|&k| k <= 512 && k <= k_need)
        .chain((k_need <= 512).then_some(k_need))
        .collect();
    let mut best: Option<(u64, GemvTiles)> = None;
    for rows in (2..=7).map(|i| 1u64 << i) {
        for &k in &ks {
            let t = GemvTiles { rows, k };
            let (pn, pk) = (n_total.next_multiple_of(cores * rows), k_total.next_multiple_of(k));
            let cost = pn * weights.row_bytes(pk) + cores * (pn / (cores * rows)) * (pk / k) * HANDOFF_BYTES;
            let key = (cost, u64::MAX - rows, u64::MAX - k);
            if t.core_bytes(weights) <= budget && best.is_none_or(|(c, b)| key < (c, u64::MAX - b.rows, u64::MAX - b.k))
            {
                best = Some((cost, t));
            }
        }
    }
    best.expect("the shortest buffers of 4 rows fit any core").1
}

/// The bf16 GEMV design for `N x K` by `K` on the whole array.
pub fn gemv(array: &ArrayModel, n_total: u64, k_total: u64) -> Gemv {
    gemv_of(array, GemvWeights::Bf16, n_total, k_total)
}

/// The int8 GEMV design ([`GemvWeights::Q8`]) for `N x K` by `K` on the whole array.
pub fn gemv_q8(array: &ArrayModel, n_total: u64, k_total: u64) -> Gemv {
    gemv_of(array, GemvWeights::Q8, n_total, k_total)
}

/// The GEMV design for `N x K` by `K` on the whole array, W stored as `weights`.
pub fn gemv_of(array: &ArrayModel, weights: GemvWeights, n_total: u64, k_total: u64) -> Gemv {
    assert!(n_total > 0 && k_total > 0, "a GEMV of a zero dimension");
    let t = choose_tiles(array, weights, n_total, k_total);
    let (cols, rows) = (array.columns as u64, (array.rows - 2) as u64);
    let cores = cols * rows;
    let padded = (n_total.next_multiple_of(cores * t.rows), k_total.next_multiple_of(t.k));
    let (pn, pk) = padded;
    // W's elements of a buffer's `k` columns of a row, and of a whole row.
    let (wk, wrow, welem) = (weights.row_elems(t.k), weights.row_elems(pk), weights.elem());
    let prefix = if weights == GemvWeights::Q8 { "gemv_q8" } else { "gemv" };
    let mut d = Design { name: format!("{prefix}_{n_total}x{k_total}"), ..Default::default() };
    let everyone: Vec<Coord> = (0..array.columns).flat_map(|c| (2..array.rows).map(move |r| tile(c, r))).collect();
    d.fifos.push(ObjectFifo::double("x_in".into(), tile(0, 0), vec![tile(0, 1)], vec![t.k], Elem::Bf16));
    d.fifos.push(ObjectFifo::double("x".into(), tile(0, 1), everyone, vec![t.k], Elem::Bf16));
    d.links.push(Link { from: vec!["x_in".into()], to: vec!["x".into()] });
    for c in 0..array.columns {
        let (shim, mem) = (tile(c, 0), tile(c, 1));
        d.fifos.push(ObjectFifo::double(format!("w{c}_in"), shim, vec![mem], vec![rows * t.rows, wk], welem));
        for q in 0..rows as u32 {
            d.fifos.push(ObjectFifo::double(format!("w{c}_{q}"), mem, vec![tile(c, 2 + q)], vec![t.rows, wk], welem));
            d.fifos.push(ObjectFifo::double(format!("y{c}_{q}"), tile(c, 2 + q), vec![mem], vec![t.rows], Elem::F32));
            let uses = vec![
                FifoUse { fifo: format!("w{c}_{q}"), port: Port::Consume, acquire: 1 },
                FifoUse { fifo: "x".into(), port: Port::Consume, acquire: 1 },
                FifoUse { fifo: format!("y{c}_{q}"), port: Port::Produce, acquire: 1 },
            ];
            let body = weights.body(t.rows, t.k, pk / t.k);
            d.cores.push(Core { tile: tile(c, 2 + q), locals_bytes: 0, stack_bytes: None, uses, body });
        }
        d.fifos.push(ObjectFifo::double(format!("y{c}"), mem, vec![shim], vec![rows * t.rows], Elem::F32));
        d.links.push(Link { from: vec![format!("w{c}_in")], to: (0..rows).map(|q| format!("w{c}_{q}")).collect() });
        d.links.push(Link { from: (0..rows).map(|q| format!("y{c}_{q}")).collect(), to: vec![format!("y{c}")] });
    }
    // Runtime arguments: 0 = W (pn rows of pk columns, row-major: bf16, or q8 rows of bytes), 1 = x (pk bf16),
    // 2 = y (pn f32). Per block of 16r rows: x once, each column's 4r rows k columns at a time, then the 4r
    // results.
    for blk in 0..pn / (cores * t.rows) {
        let mut bd = 0;
        let mut push = |d: &mut Design, arg, elem, offset, dims, fifo: String| {
            d.sequence.push(SeqOp::Memcpy { arg, elem, offset, dims, fifo, bd });
            bd += 1;
        };
        push(&mut d, 1, Elem::Bf16, 0, dims(&[(1, 0), (1, 0), (1, 0), (pk, 1)]), "x_in".into());
        for c in 0..cols {
            let row0 = (blk * cores + c * rows) * t.rows;
            let w = dims(&[(1, 0), (pk / t.k, wk), (rows * t.rows, wrow), (wk, 1)]);
            push(&mut d, 0, welem, row0 * wrow, w, format!("w{c}_in"));
            push(&mut d, 2, Elem::F32, row0, dims(&[(1, 0), (1, 0), (1, 0), (rows * t.rows, 1)]), format!("y{c}"));
        }
        for f in
            std::iter::once("x_in".to_string()).chain((0..cols).flat_map(|c| [format!("y{c}"), format!("w{c}_in")]))
        {
            d.sequence.push(SeqOp::Wait { fifo: f });
        }
    }
    Gemv { design: d, weights, tiles: t, shape: (n_total, k_total), padded }
}

#[cfg(test)]
mod tests {
    use super::super::design::Dim;
    use super::super::emu::{bf16, run, EmuStats};
    use super::super::model::NPU1;
    use super::super::verify::verify;
    use super::*;

    #[test]
    fn buffers_follow_the_rows_and_fit_a_core() {
        // Each shape's (rows, k) for bf16 and for int8 weights. int8 rows take about half the memory: twice bf16's
        // columns at the same rows, or twice its rows.
        for (n, k, bf16_tiles, int8_tiles) in [
            // Llama-3.2-1B: o_proj / down (2048 rows), k/v (512 rows), gate/up (8192 rows).
            (2048, 8192, (128, 64), (128, 128)),
            (512, 2048, (32, 256), (32, 512)),
            (8192, 2048, (128, 64), (128, 128)),
            // q, k and v together (3072 rows): blocks of 1024 rows, none padded.
            (3072, 2048, (64, 128), (64, 256)),
            // Few rows take the fewest; a short K is taken whole (rounded up to 32 for bf16, 64 for int8).
            (37, 5000, (4, 512), (4, 512)),
            (1000, 300, (32, 320), (64, 320)),
            (3, 70, (4, 96), (4, 128)),
        ] {
            for (weights, (rows, kb)) in [(GemvWeights::Bf16, bf16_tiles), (GemvWeights::Q8, int8_tiles)] {
                assert_eq!(choose_tiles(&NPU1, weights, n, k), GemvTiles { rows, k: kb }, "{weights:?} {n}x{k}");
            }
        }
        for weights in [GemvWeights::Bf16, GemvWeights::Q8] {
            for (n, k) in [(2048, 8192), (37, 5000), (1 << 20, 1 << 20)] {
                let t = choose_tiles(&NPU1, weights, n, k);
                assert!(t.core_bytes(weights) + NPU1.default_stack_bytes <= NPU1.compute.memory_bytes);
                assert!(weights.row_bytes(t.k).is_multiple_of(4), "{weights:?} {n}x{k}: {t:?}");
            }
        }
    }

    /// W (`n x k`) and x (`k`) of random values in (-1, 1), seeded by the shape. With `spread`, W's values are
    /// scaled by a power of two from 1/4 to 4 that changes from one block of 32 to the next and from row to row,
    /// and row 1's first block is zero, so that the blocks' int8 scales differ (and one is 0).
    fn operands(n: u64, k: u64, spread: bool) -> (Vec<f32>, Vec<f32>) {
        let mut seed = n * 7 + k;
        let mut vals = super::super::random(n * k + k, &mut seed, 1.0);
        let x = vals.split_off((n * k) as usize);
        let mut w = vals;
        if spread {
            for (e, v) in w.iter_mut().enumerate() {
                let (i, blk) = (e as u64 / k, e as u64 % k / 32);
                *v *= [0.25, 1.0, 4.0, 0.5, 2.0][((i + 3 * blk) % 5) as usize];
                if i == 1 && blk == 0 && n > 1 {
                    *v = 0.0;
                }
            }
        }
        (w, x)
    }

    /// The runtime arguments of `g` for W and x: W as its design stores it, x padded with zeros, y NaN.
    fn host_args(g: &Gemv, w: &[f32], x: &[f32]) -> Vec<Vec<f32>> {
        let (pn, pk) = g.padded;
        let mut xp = x.to_vec();
        xp.resize(pk as usize, 0.0);
        vec![g.host_weights(w), xp, vec![f32::NAN; pn as usize]]
    }

    /// W as the cores see it (`pn x pk`: bf16-rounded, or the q8 blocks dequantized), from `g`'s argument 0.
    fn stored(g: &Gemv, arg0: &[f32]) -> Vec<f32> {
        match g.weights {
            GemvWeights::Bf16 => arg0.iter().map(|&v| bf16(v)).collect(),
            GemvWeights::Q8 => q8::dequantize_row(arg0),
        }
    }

    /// The f64 product of the true `n` rows of stored W with bf16-rounded x.
    fn reference(g: &Gemv, w: &[f32], x: &[f32]) -> Vec<f64> {
        let pk = g.padded.1 as usize;
        w.chunks(pk)
            .take(g.shape.0 as usize)
            .map(|row| row.iter().zip(x).map(|(&a, &b)| a as f64 * bf16(b) as f64).sum())
            .collect()
    }

    /// The largest difference of `got`'s first rows from `want` (a NaN counts as infinite).
    fn max_error(got: &[f32], want: &[f64]) -> f64 {
        want.iter().zip(got).map(|(w, &g)| (g as f64 - w).abs()).fold(0.0, |m, e| {
            if e.is_nan() {
                f64::INFINITY
            } else {
                m.max(e)
            }
        })
    }

    /// `design` emulated on W and x as `g` stores them (argument 0 given `slack` zero elements past its end, for
    /// transfers that read beyond it): y, and what the dispatch did.
    fn emulate(g: &Gemv, design: &Design, w: &[f32], x: &[f32], slack: usize) -> (Vec<f32>, EmuStats) {
        let mut args = host_args(g, w, x);
        args[0].extend(std::iter::repeat_n(0.0, slack));
        let stats = run(design, &mut args).unwrap_or_else(|e| panic!("{}: {e}", design.name));
        (args.swap_remove(2), stats)
    }

    /// The Llama-3.2-1B decode projections pass the rules; ragged ones too, and the emulated product matches an
    /// f64 one of the bf16-rounded operands.
    #[test]
    fn gemv_designs_pass_the_rules_and_compute_the_product() {
        for (n, k) in [(2048, 2048), (512, 2048), (8192, 2048), (2048, 8192)] {
            let g = gemv(&NPU1, n, k);
            verify(&g.design, &NPU1).unwrap_or_else(|e| panic!("{n}x{k}: {e:?}"));
            assert_eq!(g.padded, g.shape, "{n}x{k} divides into whole blocks");
        }
        for (n, k) in [(1000, 300), (37, 5000)] {
            let g = gemv(&NPU1, n, k);
            let u = verify(&g.design, &NPU1).unwrap_or_else(|e| panic!("{n}x{k}: {e:?}"));
            let (w, x) = operands(n, k, false);
            let (y, stats) = emulate(&g, &g.design, &w, &x, 0);
            assert_eq!(stats.macs, g.macs());
            assert_eq!(stats.host_bytes, u.host_bytes);
            let want = reference(&g, &stored(&g, &g.host_weights(&w)), &host_args(&g, &w, &x)[1]);
            // f32 sums of at most 5000 products of bf16 numbers below 1.
            assert!(max_error(&y, &want) < 2e-4, "{n}x{k}: {}", max_error(&y, &want));
        }
        // Decode is bound by the weights' transfer, not the MACs (an estimate on stated assumptions), and the
        // bytes counted are those the sequence moves.
        let g = gemv(&NPU1, 8192, 2048);
        assert_eq!(g.host_bytes(), verify(&g.design, &NPU1).unwrap().host_bytes);
        let dma = g.host_bytes() as f64 / NPU1.host_bytes_s;
        assert!((g.estimate_seconds(&NPU1) - NPU1.dispatch_overhead_s - dma).abs() < 1e-12);
    }

    /// How far the int8 GEMV may be from the f64 product of its dequantized weights and bf16 x: f32 sums of at
    /// most 5000 products, 32 to a block (each product exact), the blocks' scaled sums added in order (4.5e-5
    /// measured at 37 x 5000, whose rows reach 122; 3.7e-7 of the largest).
    const Q8_TOLERANCE: f64 = 1e-4;

    /// The int8 GEMV at the Llama-3.2-1B and Llama-3.1-8B decode projections (q, k and v together; o; gate and
    /// up together; down) passes the rules without padding, and moves 34 bytes of weights per 32 elements.
    #[test]
    fn q8_gemv_designs_pass_the_rules_at_the_model_shapes() {
        for (hidden, ffn, q, kv) in [(2048u64, 8192u64, 2048u64, 512u64), (4096, 14336, 4096, 1024)] {
            for (n, k) in [(q + 2 * kv, hidden), (hidden, q), (2 * ffn, hidden), (hidden, ffn)] {
                let g = gemv_q8(&NPU1, n, k);
                let u = verify(&g.design, &NPU1).unwrap_or_else(|e| panic!("{n}x{k}: {e:?}"));
                assert_eq!(g.padded, g.shape, "{n}x{k} divides into whole blocks");
                assert_eq!(u.host_bytes, g.host_bytes(), "{n}x{k}");
                // The weights once at 34 bytes per 32, x per block of rows and y beside them: 53-54% of bf16's.
                let weights = n * k * 34 / 32;
                assert!(g.host_bytes() >= weights && g.host_bytes() < weights + weights / 50, "{n}x{k}");
                let bf = gemv(&NPU1, n, k).host_bytes();
                assert!(g.host_bytes() * 100 > bf * 53 && g.host_bytes() * 100 < bf * 54, "{n}x{k}");
            }
        }
    }

    /// Ragged int8 GEMVs (rows and K padded) compute the product on the emulator within [`Q8_TOLERANCE`] of an
    /// f64 product of the dequantized weights and bf16-rounded x, with blocks of differing scales and one of
    /// scale 0; and the tolerance has teeth: a scale one bf16 step off in the host's bytes shows beyond it.
    #[test]
    fn q8_gemv_designs_compute_the_product() {
        for (n, k) in [(1000, 300), (37, 5000), (3, 70)] {
            let g = gemv_q8(&NPU1, n, k);
            let u = verify(&g.design, &NPU1).unwrap_or_else(|e| panic!("{n}x{k}: {e:?}"));
            let (w, x) = operands(n, k, true);
            let (y, stats) = emulate(&g, &g.design, &w, &x, 0);
            assert_eq!((stats.macs, stats.host_bytes), (g.macs(), u.host_bytes), "{n}x{k}");
            let args = host_args(&g, &w, &x);
            let want = reference(&g, &stored(&g, &args[0]), &args[1]);
            let err = max_error(&y, &want);
            let top = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            println!("int8 GEMV {n}x{k}: {err:.2e} from f64 (|y| up to {top:.1})");
            assert!(err < Q8_TOLERANCE, "{n}x{k}: {err}");
            // The padded rows come out zero.
            assert!(y[n as usize..].iter().all(|&v| v == 0.0), "{n}x{k}");
            // Row 0's block of the largest scaled sum, its scale one bf16 step up in the host's bytes.
            let (pk, rb) = (g.padded.1 as usize, q8::row_bytes(g.padded.1) as usize);
            let w0 = stored(&g, &args[0][..rb]);
            let blk = (0..pk / 32)
                .max_by(|&a, &b| {
                    let s = |j: usize| {
                        (j * 32..j * 32 + 32).map(|e| w0[e] as f64 * bf16(args[1][e]) as f64).sum::<f64>().abs()
                    };
                    s(a).total_cmp(&s(b))
                })
                .unwrap();
            let mut bumped = args.clone();
            let at = blk * q8::BLOCK_BYTES as usize;
            let d = q8::scale(args[0][at], args[0][at + 1]);
            bumped[0][at..at + 2].copy_from_slice(&q8::scale_bytes(f32::from_bits(d.to_bits() + 0x1_0000)));
            run(&g.design, &mut bumped).unwrap();
            assert!((bumped[2][0] as f64 - want[0]).abs() > 10.0 * Q8_TOLERANCE, "{n}x{k}: a scale one step off");
        }
    }

    /// Transfers of W that the rules accept but that read its blocks wrong give wrong numbers on the emulator:
    /// every block read 4 bytes late (its scale taken from two of its quants), column 0's rows read two blocks
    /// late (whole blocks, each at the wrong columns), and the transfer's chunk and row levels swapped (a buffer
    /// of one row's chunks in place of four cores' rows of one chunk).
    #[test]
    fn q8_transfers_that_read_the_blocks_wrong_give_wrong_numbers() {
        let (n, k) = (37, 5000);
        let g = gemv_q8(&NPU1, n, k);
        assert!(g.padded.1 / g.tiles.k > 1, "more than one chunk a row");
        let (w, x) = operands(n, k, true);
        let args = host_args(&g, &w, &x);
        let want = reference(&g, &stored(&g, &args[0]), &args[1]);
        type Edit = fn(&str, &mut u64, &mut Vec<Dim>);
        let edits: [(&str, Edit); 3] = [
            ("4 bytes late", |_, offset, _| *offset += 4),
            ("column 0 two blocks late", |fifo, offset, _| {
                if fifo == "w0_in" {
                    *offset += 2 * q8::BLOCK_BYTES
                }
            }),
            ("chunks and rows swapped", |_, _, dims| dims.swap(1, 2)),
        ];
        for (what, edit) in edits {
            let mut d = g.design.clone();
            for op in &mut d.sequence {
                if let SeqOp::Memcpy { fifo, offset, dims, .. } = op {
                    if fifo.starts_with('w') {
                        edit(fifo, offset, dims);
                    }
                }
            }
            assert_ne!(d, g.design, "{what}");
            verify(&d, &NPU1).unwrap_or_else(|e| panic!("{what}: the rules refuse it: {e:?}"));
            let (y, _) = emulate(&g, &d, &w, &x, 2 * q8::BLOCK_BYTES as usize);
            let err = max_error(&y, &want);
            assert!(err > 1000.0 * Q8_TOLERANCE, "{what}: {err}");
        }
    }

    /// The emulator takes an int8 argument's values only as bytes (integers of -128..=127).
    #[test]
    fn q8_weights_must_be_bytes() {
        let g = gemv_q8(&NPU1, 3, 70);
        let (w, x) = operands(3, 70, true);
        for bad in [0.5, 128.0, -129.0, f32::NAN] {
            let mut args = host_args(&g, &w, &x);
            args[0][40] = bad;
            let e = run(&g.design, &mut args).unwrap_err();
            assert!(e.contains("holds bytes"), "{bad}: {e}");
        }
    }
}
