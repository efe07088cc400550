//! The whole-array bf16 GEMM design, `C[M x N] (f32) = A[M x K] B[K x N]` (bf16 operands, f32 accumulation),
//! generated for any shape: the 4 x 4 compute tiles each make an `m x n` tile of `C`, core `(col j, row 2 + r)`
//! rows `r m ..` and columns `j n ..` of a `4m x 4n` block of the output. Column `c`'s shim streams A's rows for
//! core row `c` and B's columns for core column `c` into its memtile, which re-lays them into the mmul shapes'
//! blocks (A in 4 x 8, B in 8 x 4: `dimensionsToStream`) and broadcasts them, A along core row `c`, B down core
//! column `c`; the four tiles of C of a column are joined in its memtile and go back through its shim. Every
//! fifo is double-buffered, so a tile's next operands arrive while it multiplies. The tile sizes are the largest
//! that fit a core's 64 KiB; a shape that does not divide evenly is padded (the host pads A and B with zeros and
//! drops C's padding), never rejected. One dispatch runs the whole GEMM: the runtime sequence walks the output
//! blocks, a wait on a block's transfers freeing its buffer descriptors for the next.
//!
//! The weight-transposed form takes several weights of one operand in one dispatch ([`gemm_bt_multi`]: a
//! layer's q, k and v, or its gate and up): `C = A [W_0; W_1; ...]^T` with each `W_i` its own runtime argument,
//! so the checkpoint's tensors are read where they are, never concatenated. The cores are the single GEMM's
//! (they see more output blocks); only the runtime sequence knows which weight a block of columns comes from.
//! The results share one C, side by side in each row (output `i` from the sum of the padded widths before it),
//! which the host splits: the runtime sequence then has `2 + weights` arguments, and [`MAX_WEIGHTS`] keeps that
//! within the 5 host buffers the `MLIR_AIE` kernel of every mlir-aie release takes.

use super::design::{dims, tile, Coord, Core, CoreBody, Design, Elem, FifoUse, Link, ObjectFifo, Port, SeqOp};
use super::model::ArrayModel;

/// The AIE2 bf16 mmul shape the core bodies multiply in (`aie::mmul<4, 8, 4>`): tiles are multiples of it.
pub const MMUL: (u64, u64, u64) = (4, 8, 4);

/// One core's tile of the product: `m x k` of A by `k x n` of B into `m x n` of C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiles {
    pub m: u64,
    pub k: u64,
    pub n: u64,
}

impl Tiles {
    /// A core's data memory for its double-buffered A, B and C tiles.
    pub fn core_bytes(&self) -> u64 {
        2 * (self.m * self.k * 2 + self.k * self.n * 2 + self.m * self.n * 4)
    }
}

/// The most weights one weight-transposed GEMM takes ([`unicorn_ir::npu::MAX_GEMM_WEIGHTS`]): its runtime
/// sequence's arguments are A, each weight and C, within the 5 host buffers the `MLIR_AIE` kernel of
/// mlir-aie's xclbins takes (see [`unicorn_ir::npu::MAX_HOST_ARGS`]). One C for all the outputs keeps a layer's
/// q, k and v at 5 arguments, where a C apiece would need 7.
pub const MAX_WEIGHTS: usize = unicorn_ir::npu::MAX_GEMM_WEIGHTS;

/// A generated GEMM design with the shape it was made for.
#[derive(Debug, Clone)]
pub struct Gemm {
    pub design: Design,
    pub tiles: Tiles,
    /// `(M, K, N)` as asked, and padded to whole blocks (`4m`, `k`, `4n`); with several outputs, N is the sum
    /// of their widths and padded N the sum of their padded widths (C's row).
    pub shape: (u64, u64, u64),
    pub padded: (u64, u64, u64),
    /// B is given transposed (runtime argument 1 is `N x K`, see [`gemm_bt`]).
    pub bt: bool,
    /// Each output's width and padded width, in C's row in this order: one for [`gemm`] and [`gemm_bt`], one
    /// per weight for [`gemm_bt_multi`] (weight `i` is runtime argument `1 + i`, C the last).
    pub outputs: Vec<(u64, u64)>,
}

impl Gemm {
    /// Multiply-accumulates the array performs (padding included).
    pub fn macs(&self) -> u64 {
        self.padded.0 * self.padded.1 * self.padded.2
    }

    /// Bytes the dispatch moves between host and array: per output block A's rows and B's columns over all of K
    /// in bf16, and C's block in f32.
    pub fn host_bytes(&self) -> u64 {
        let (pm, pk, pn) = self.padded;
        let (bm, bn) = (4 * self.tiles.m, 4 * self.tiles.n);
        (pm / bm) * (pn / bn) * (bm * pk * 2 + pk * bn * 2 + bm * bn * 4)
    }

    /// [`ArrayModel::estimate_seconds`] of the dispatch: an ESTIMATE and a lower bound.
    pub fn estimate_seconds(&self, array: &ArrayModel) -> f64 {
        array.estimate_seconds(self.host_bytes(), self.macs())
    }
}

/// The tiles a core takes: of the power-of-two sizes (`k` also K itself, rounded up to the mmul's, where that is
/// shorter), those whose double buffers and the core's stack fit its data memory, the one that moves the fewest
/// operand bytes per MAC (`1/m + 1/n`: A is streamed once per column of tiles, B once per row), then the one of
/// the longest `k` (fewer fifo handshakes per MAC).
pub fn choose_tiles(array: &ArrayModel, k_total: u64) -> Tiles {
    let budget = array.compute.memory_bytes - array.default_stack_bytes;
    let k_need = k_total.next_multiple_of(MMUL.1);
    let sizes = |min: u64| (0..).map(move |i| min << i).take_while(|&s| s <= 256);
    let ks: Vec<u64> = sizes(MMUL.1).filter(|&k| k <= k_need).chain((k_need <= 256).then_some(k_need)).collect();
    let mut best: Option<Tiles> = None;
    for m in sizes(MMUL.0) {
        for n in sizes(MMUL.2) {
            for &k in &ks {
                let t = Tiles { m, k, n };
                if t.core_bytes() > budget {
                    continue;
                }
                // Fewer bytes per MAC is a larger m n / (m + n); compare exactly, across multiplied fractions.
                let better = best.is_none_or(|b| {
                    let (x, y) = (m * n * (b.m + b.n), b.m * b.n * (m + n));
                    x > y || (x == y && (k, m) > (b.k, b.m))
                });
                if better {
                    best = Some(t);
                }
            }
        }
    }
    best.expect("the mmul shape's own tile fits any core")
}

/// The GEMM design for `M x K` by `K x N` on the whole array.
pub fn gemm(array: &ArrayModel, m_total: u64, k_total: u64, n_total: u64) -> Gemm {
    build(array, m_total, k_total, &[n_total], false)
}

/// The GEMM design for `M x K` by the transpose of an `N x K` matrix — `x W^T`, a projection by a weight
/// stored as a checkpoint stores it, `out x in` — on the whole array. Each column's shim reads `n` whole rows
/// of W (`k` contiguous elements each: the shim's innermost stride stays 1, as a bf16 transfer needs), and its
/// memtile re-lays them into the mmul's blocks as it does A's; the cores multiply by the blocks transposed.
pub fn gemm_bt(array: &ArrayModel, m_total: u64, k_total: u64, n_total: u64) -> Gemm {
    build(array, m_total, k_total, &[n_total], true)
}

/// The weight-transposed GEMM of one `M x K` operand by several weights in one dispatch: `y_i = x W_i^T` for
/// each `W_i` of `n_i x K` (`ns`, 1 to [`MAX_WEIGHTS`] of them), each weight its own runtime argument (`1 + i`)
/// and the results side by side in the one C (the last argument, `M x sum of the padded n_i`; output `i` from
/// column `sum_{j<i} padded n_j`). Each `n_i` is padded to whole blocks of output columns, so a block reads one
/// weight; one weight is [`gemm_bt`]'s design exactly.
pub fn gemm_bt_multi(array: &ArrayModel, m_total: u64, k_total: u64, ns: &[u64]) -> Gemm {
    build(array, m_total, k_total, ns, true)
}

fn build(array: &ArrayModel, m_total: u64, k_total: u64, ns: &[u64], bt: bool) -> Gemm {
    assert!(m_total > 0 && k_total > 0 && ns.iter().all(|&n| n > 0), "a GEMM of a zero dimension");
    assert!((1..=if bt { MAX_WEIGHTS } else { 1 }).contains(&ns.len()), "a GEMM of {} weights", ns.len());
    let t = choose_tiles(array, k_total);
    let (cols, rows) = (array.columns as u64, (array.rows - 2) as u64);
    let outputs: Vec<(u64, u64)> = ns.iter().map(|&n| (n, n.next_multiple_of(cols * t.n))).collect();
    let n_total = ns.iter().sum::<u64>();
    let padded =
        (m_total.next_multiple_of(rows * t.m), k_total.next_multiple_of(t.k), outputs.iter().map(|o| o.1).sum());
    let (pm, pk, pn) = padded;
    let widths = ns.iter().map(u64::to_string).collect::<Vec<_>>().join("+");
    let name = format!("gemm{}_{m_total}x{k_total}x{widths}", if bt { "_bt" } else { "" });
    let mut d = Design { name, ..Default::default() };
    for c in 0..array.columns {
        let (shim, mem) = (tile(c, 0), tile(c, 1));
        let core_row: Vec<Coord> = (0..array.columns).map(|j| tile(j, 2 + c)).collect();
        let core_col: Vec<Coord> = (2..array.rows).map(|r| tile(c, r)).collect();
        // A's m x k tile in 4 x 8 blocks, row after row of blocks; B's k x n tile in 8 x 4 blocks.
        let a_blocks = dims(&[(t.m / 4, 4 * t.k), (t.k / 8, 8), (4, t.k), (8, 1)]);
        let b_blocks = dims(&[(t.k / 8, 8 * t.n), (t.n / 4, 4), (8, t.n), (4, 1)]);
        // W's n x k tile (B transposed) in 4 x 8 blocks, as A's.
        let w_blocks = dims(&[(t.n / 4, 4 * t.k), (t.k / 8, 8), (4, t.k), (8, 1)]);
        let (b_shape, b_blocks) = if bt { (vec![t.n, t.k], w_blocks) } else { (vec![t.k, t.n], b_blocks) };
        d.fifos.push(ObjectFifo::double(format!("a{c}_in"), shim, vec![mem], vec![t.m, t.k], Elem::Bf16));
        d.fifos.push(ObjectFifo {
            to_stream: a_blocks,
            ..ObjectFifo::double(format!("a{c}"), mem, core_row, vec![t.m, t.k], Elem::Bf16)
        });
        d.fifos.push(ObjectFifo::double(format!("b{c}_in"), shim, vec![mem], b_shape.clone(), Elem::Bf16));
        d.fifos.push(ObjectFifo {
            to_stream: b_blocks,
            ..ObjectFifo::double(format!("b{c}"), mem, core_col.clone(), b_shape, Elem::Bf16)
        });
        for (r, &core) in core_col.iter().enumerate() {
            d.fifos.push(ObjectFifo::double(format!("c{c}_{r}"), core, vec![mem], vec![t.m, t.n], Elem::F32));
        }
        d.fifos.push(ObjectFifo::double(format!("c{c}"), mem, vec![shim], vec![rows * t.m, t.n], Elem::F32));
        d.links.push(Link { from: vec![format!("a{c}_in")], to: vec![format!("a{c}")] });
        d.links.push(Link { from: vec![format!("b{c}_in")], to: vec![format!("b{c}")] });
        d.links.push(Link { from: (0..rows).map(|r| format!("c{c}_{r}")).collect(), to: vec![format!("c{c}")] });
    }
    for j in 0..array.columns {
        for r in 0..rows as u32 {
            let uses = vec![
                FifoUse { fifo: format!("a{r}"), port: Port::Consume, acquire: 1 },
                FifoUse { fifo: format!("b{j}"), port: Port::Consume, acquire: 1 },
                FifoUse { fifo: format!("c{j}_{r}"), port: Port::Produce, acquire: 1 },
            ];
            let body = CoreBody::MatMul { m: t.m, k: t.k, n: t.n, k_tiles: pk / t.k, bt };
            d.cores.push(Core { tile: tile(j, 2 + r), locals_bytes: 0, stack_bytes: None, uses, body });
        }
    }
    // Runtime arguments: 0 = A (pm x pk bf16, row-major), 1 = B (pk x pn bf16; with `bt` W, pn x pk; with
    // several weights, W_i of pn_i x pk is argument 1 + i), then C (pm x pn f32, the outputs side by side).
    let c_arg = 1 + outputs.len();
    for bi in 0..pm / (rows * t.m) {
        for bj in 0..pn / (cols * t.n) {
            // The weight this block of output columns comes from, and the block's first column in it (every
            // output is padded to whole blocks, so a block lies in one).
            let block0 = bj * cols * t.n;
            let (mut w, mut w0) = (0, 0);
            while block0 >= w0 + outputs[w].1 {
                w0 += outputs[w].1;
                w += 1;
            }
            let mut bd = 0;
            for c in 0..cols {
                let row0 = (bi * rows + c) * t.m;
                let col0 = (bj * cols + c) * t.n;
                // A's rows for core row c, k columns at a time; B's columns for core column c, k rows at a time.
                let a = dims(&[(1, 0), (pk / t.k, t.k), (t.m, pk), (t.k, 1)]);
                let b = if bt {
                    dims(&[(1, 0), (pk / t.k, t.k), (t.n, pk), (t.k, 1)])
                } else {
                    dims(&[(1, 0), (pk / t.k, t.k * pn), (t.k, pn), (t.n, 1)])
                };
                let out = dims(&[(1, 0), (1, 0), (rows * t.m, pn), (t.n, 1)]);
                let c_row0 = bi * rows * t.m;
                for (arg, elem, offset, dims, fifo) in [
                    (0, Elem::Bf16, row0 * pk, a, format!("a{c}_in")),
                    (1 + w, Elem::Bf16, if bt { (col0 - w0) * pk } else { col0 }, b, format!("b{c}_in")),
                    (c_arg, Elem::F32, c_row0 * pn + col0, out, format!("c{c}")),
                ] {
                    d.sequence.push(SeqOp::Memcpy { arg, elem, offset, dims, fifo, bd });
                    bd += 1;
                }
            }
            for c in 0..cols {
                for f in [format!("c{c}"), format!("a{c}_in"), format!("b{c}_in")] {
                    d.sequence.push(SeqOp::Wait { fifo: f });
                }
            }
        }
    }
    Gemm { design: d, tiles: t, shape: (m_total, k_total, n_total), padded, bt, outputs }
}

#[cfg(test)]
mod tests {
    use super::super::model::NPU1;
    use super::super::verify::verify;
    use super::*;
    use std::collections::BTreeSet;
    use unicorn_aie::emu::{bf16, run, EmuStats};

    #[test]
    fn tiles_move_the_fewest_bytes_per_mac_that_fit_a_core() {
        // 64 x 64 of C in f32, double-buffered, is 32 KiB; A and B tiles of k = 32 take 16 KiB more. A k of 64
        // (64 KiB in all) does not fit beside the stack, nor do 128 x 64 outputs.
        let t = choose_tiles(&NPU1, 2048);
        assert_eq!(t, Tiles { m: 64, k: 32, n: 64 });
        assert_eq!(t.core_bytes(), 48 * 1024);
        assert!(Tiles { k: 64, ..t }.core_bytes() + NPU1.default_stack_bytes > NPU1.compute.memory_bytes);
        assert!(Tiles { m: 128, ..t }.core_bytes() + NPU1.default_stack_bytes > NPU1.compute.memory_bytes);
        // A short K takes a k of K itself, rounded up to the mmul's 8.
        assert_eq!(choose_tiles(&NPU1, 20).k, 24);
        assert_eq!(choose_tiles(&NPU1, 8).k, 8);
    }

    /// The Llama-3.2-1B prefill projections (512 tokens) and shapes that divide nothing: every design passes
    /// the AIE2 rules, pads only up to whole blocks, and moves A, B and C once per output block.
    #[test]
    fn designs_for_the_llama_1b_shapes_and_ragged_ones_pass_the_rules() {
        for (m, k, n) in
            [(512, 2048, 2048), (512, 2048, 512), (512, 2048, 8192), (512, 8192, 2048), (23, 100, 300), (1, 8, 4)]
        {
            for g in [gemm(&NPU1, m, k, n), gemm_bt(&NPU1, m, k, n)] {
                let usage = verify(&g.design, &NPU1).unwrap_or_else(|e| panic!("{m}x{k}x{n}: {e:?}"));
                let t = g.tiles;
                let (pm, pk, pn) = g.padded;
                assert!(pm >= m && pm - m < 4 * t.m && pm % (4 * t.m) == 0, "{m}x{k}x{n}: M padded to {pm}");
                assert!(pk >= k && pk - k < t.k && pn >= n && pn - n < 4 * t.n, "{m}x{k}x{n}: {:?}", g.padded);
                let blocks = (pm / (4 * t.m)) * (pn / (4 * t.n));
                // Per block: A's 4m rows and B's 4n columns over all of K in bf16, C's 4m x 4n in f32.
                let want = blocks * (4 * t.m * pk * 2 + pk * 4 * t.n * 2 + 16 * t.m * t.n * 4);
                assert_eq!(usage.host_bytes, want, "{m}x{k}x{n}");
                assert_eq!(g.host_bytes(), want, "{m}x{k}x{n}");
                for (at, u) in &usage.tiles {
                    assert!(u.memory_bytes <= 512 * 1024, "{at}: {u:?}");
                }
            }
        }
        // The 1B shapes divide into whole blocks: no padding.
        let g = gemm(&NPU1, 512, 2048, 8192);
        assert_eq!(g.padded, g.shape);
        assert!(g.estimate_seconds(&NPU1) > NPU1.dispatch_overhead_s);
    }

    fn rand(n: usize, seed: &mut u64) -> Vec<f32> {
        unicorn_aie::random(n as u64, seed, 1.0)
    }

    /// Run the GEMM design of `(m, k, n)` on random A and B (padded by the host with zeros; with `bt`, B given
    /// as its transpose) and compare C with an f64 product of the bf16-rounded operands.
    fn check(m: u64, k: u64, n: u64, bt: bool) -> (f64, EmuStats) {
        let g = if bt { gemm_bt(&NPU1, m, k, n) } else { gemm(&NPU1, m, k, n) };
        let (pm, pk, pn) = g.padded;
        let mut seed = 7 + m * 31 + k * 17 + n;
        let (a, b) = (rand((m * k) as usize, &mut seed), rand((k * n) as usize, &mut seed));
        let mut pa = vec![0.0f32; (pm * pk) as usize];
        let mut pb = vec![0.0f32; (pk * pn) as usize];
        for r in 0..m as usize {
            pa[r * pk as usize..][..k as usize].copy_from_slice(&a[r * k as usize..][..k as usize]);
        }
        for r in 0..k as usize {
            for c in 0..n as usize {
                let at = if bt { c * pk as usize + r } else { r * pn as usize + c };
                pb[at] = b[r * n as usize + c];
            }
        }
        let mut args = vec![pa, pb, vec![f32::NAN; (pm * pn) as usize]];
        let stats = run(&g.design, &mut args).unwrap_or_else(|e| panic!("{m}x{k}x{n}: {e}"));
        let mut worst = 0.0f64;
        for r in 0..m as usize {
            for c in 0..n as usize {
                let want: f64 = (0..k as usize)
                    .map(|i| bf16(a[r * k as usize + i]) as f64 * bf16(b[i * n as usize + c]) as f64)
                    .sum();
                let got = args[2][r * pn as usize + c] as f64;
                worst = worst.max((got - want).abs());
            }
        }
        (worst, stats)
    }

    #[test]
    fn the_gemm_design_computes_the_product_through_its_own_transfers_and_relayouts() {
        // A ragged shape (every dimension padded) and one of two output blocks in each direction.
        for (m, k, n, bt) in [(23, 100, 300, false), (512, 64, 512, false), (23, 100, 300, true), (300, 72, 264, true)]
        {
            let (err, stats) = check(m, k, n, bt);
            // f32 sums of at most 100 products of bf16 numbers below 1 (|sum| < 100): within 100 roundings of
            // 2^-24 relative each, against the exact f64 sum.
            assert!(err < 2e-5, "{m}x{k}x{n}: max |error| {err}");
            let g = gemm(&NPU1, m, k, n);
            assert_eq!(stats.macs, g.macs(), "{m}x{k}x{n}: every padded MAC once");
            assert_eq!(stats.dispatches, 1);
        }
    }

    /// The multi-weight designs at the Llama-3.2-1B and Llama-3.1-8B prefill shapes (512 rows; q / k / v
    /// together, gate / up together) and a ragged one pass the AIE2 rules, pad each output only to whole
    /// blocks, take one runtime argument per weight with C last (5 at most), and move per output block A's rows
    /// and its weight's rows over all of K and C's block, as one GEMM of all the outputs' columns would.
    #[test]
    fn multi_weight_designs_at_the_llama_prefill_shapes_pass_the_rules() {
        for (k, ns) in [
            (2048, vec![2048, 512, 512]),
            (4096, vec![4096, 1024, 1024]),
            (2048, vec![8192, 8192]),
            (4096, vec![14336, 14336]),
            (100, vec![40, 24, 24]),
        ] {
            let g = gemm_bt_multi(&NPU1, 512, k, &ns);
            let usage = verify(&g.design, &NPU1).unwrap_or_else(|e| panic!("{k} x {ns:?}: {e:?}"));
            let t = g.tiles;
            let (pm, pk, pn) = g.padded;
            assert_eq!(g.outputs.len(), ns.len());
            for (&n, &(w, pw)) in ns.iter().zip(&g.outputs) {
                assert!(w == n && pw >= n && pw - n < 4 * t.n && pw % (4 * t.n) == 0, "{ns:?}: {n} padded to {pw}");
            }
            assert_eq!(pn, g.outputs.iter().map(|o| o.1).sum::<u64>());
            if k != 100 {
                assert_eq!((pm, pk, pn), (512, k, ns.iter().sum()), "the Llama shapes divide into whole blocks");
            }
            let blocks = (pm / (4 * t.m)) * (pn / (4 * t.n));
            let want = blocks * (4 * t.m * pk * 2 + pk * 4 * t.n * 2 + 16 * t.m * t.n * 4);
            assert_eq!((usage.host_bytes, g.host_bytes()), (want, want), "{k} x {ns:?}");
            // Each weight is read by its own blocks of columns only, each block whole from one weight.
            let mut reads = vec![0u64; ns.len()];
            let mut args = BTreeSet::new();
            for op in &g.design.sequence {
                if let SeqOp::Memcpy { arg, offset, dims, .. } = op {
                    args.insert(*arg);
                    if (1..=ns.len()).contains(arg) {
                        reads[arg - 1] += dims.iter().map(|d| d.size).product::<u64>();
                        assert!(offset / pk + t.n <= g.outputs[arg - 1].1, "{ns:?}: a block past weight {arg}");
                    }
                }
            }
            assert_eq!(args, (0..ns.len() + 2).collect::<BTreeSet<_>>(), "{ns:?}: A, each weight, C");
            assert!(args.len() <= 5);
            for (i, r) in reads.iter().enumerate() {
                assert_eq!(*r, (pm / (4 * t.m)) * g.outputs[i].1 * pk, "{ns:?}: weight {i} read once per row block");
            }
        }
        // One weight is the single GEMM's design.
        assert_eq!(gemm_bt_multi(&NPU1, 23, 100, &[300]).design, gemm_bt(&NPU1, 23, 100, 300).design);
    }

    /// The host's arguments of a multi-weight GEMM: A (`m x k`) and each `n_i x k` weight, padded with zeros
    /// to the design's shape, then C filled with NaN (so a block the design never writes shows).
    fn multi_args(g: &Gemm, a: &[f32], ws: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let (m, k, _) = g.shape;
        let (pm, pk, pn) = g.padded;
        let (k, pk) = (k as usize, pk as usize);
        let mut pa = vec![0.0f32; pm as usize * pk];
        for r in 0..m as usize {
            pa[r * pk..][..k].copy_from_slice(&a[r * k..][..k]);
        }
        let mut args = vec![pa];
        for (w, &(n, pw)) in ws.iter().zip(&g.outputs) {
            let mut p = vec![0.0f32; pw as usize * pk];
            for r in 0..n as usize {
                p[r * pk..][..k].copy_from_slice(&w[r * k..][..k]);
            }
            args.push(p);
        }
        args.push(vec![f32::NAN; (pm * pn) as usize]);
        args
    }

    /// The largest |error| of each output in `c` (side by side, rows of the padded width) against an f64
    /// product of the bf16-rounded A and its weight.
    fn multi_errors(g: &Gemm, a: &[f32], ws: &[Vec<f32>], c: &[f32]) -> Vec<f64> {
        let (m, k) = (g.shape.0 as usize, g.shape.1 as usize);
        let pn = g.padded.2 as usize;
        let mut col0 = 0;
        let mut errors = Vec::new();
        for (w, &(n, pw)) in ws.iter().zip(&g.outputs) {
            let mut worst = 0.0f64;
            for r in 0..m {
                for j in 0..n as usize {
                    let want: f64 = (0..k).map(|i| bf16(a[r * k + i]) as f64 * bf16(w[j * k + i]) as f64).sum();
                    worst = worst.max((c[r * pn + col0 + j] as f64 - want).abs());
                }
            }
            errors.push(worst);
            col0 += pw as usize;
        }
        errors
    }

    fn multi_operands(m: u64, k: u64, ns: &[u64], seed: &mut u64) -> (Vec<f32>, Vec<Vec<f32>>) {
        let a = rand((m * k) as usize, seed);
        (a, ns.iter().map(|&n| rand((n * k) as usize, seed)).collect())
    }

    #[test]
    fn the_multi_weight_design_computes_every_output_through_its_own_transfers() {
        // Ragged outputs of different widths, each padded to whole blocks of its own: three weights; two (the
        // gate / up form) over two blocks of rows, the first weight's columns two blocks; three, one of them
        // two blocks wide.
        for (m, k, ns) in [(23, 100, vec![40, 24, 24]), (300, 72, vec![264, 40]), (64, 64, vec![300, 200, 8])] {
            let g = gemm_bt_multi(&NPU1, m, k, &ns);
            let mut seed = 11 + m * 7 + k;
            let (a, ws) = multi_operands(m, k, &ns, &mut seed);
            let mut args = multi_args(&g, &a, &ws);
            let stats = run(&g.design, &mut args).unwrap_or_else(|e| panic!("{m}x{k}x{ns:?}: {e}"));
            let errors = multi_errors(&g, &a, &ws, &args[ns.len() + 1]);
            // As the single GEMM: f32 sums of at most 100 products of bf16 numbers below 1.
            assert!(errors.iter().all(|&e| e < 2e-5), "{m}x{k}x{ns:?}: max |error| of each output {errors:?}");
            assert_eq!((stats.dispatches, stats.macs), (1, g.macs()), "{m}x{k}x{ns:?}");
            assert!(args[ns.len() + 1].iter().all(|v| !v.is_nan()), "{m}x{k}x{ns:?}: all of C written");
        }
    }

    #[test]
    fn a_block_read_from_the_wrong_weight_gives_wrong_numbers() {
        // Output 2's block of columns read from weight 1 (argument 2 for 3): the same sizes, so the rules pass.
        let ns = [40, 24, 24];
        let mut g = gemm_bt_multi(&NPU1, 23, 100, &ns);
        let mut moved = 0;
        for op in &mut g.design.sequence {
            if let SeqOp::Memcpy { arg: arg @ 3, .. } = op {
                *arg = 2;
                moved += 1;
            }
        }
        assert_eq!(moved, 4, "one transfer a column");
        verify(&g.design, &NPU1).unwrap();
        let mut seed = 5;
        let (a, ws) = multi_operands(23, 100, &ns, &mut seed);
        let mut args = multi_args(&g, &a, &ws);
        run(&g.design, &mut args).unwrap();
        let errors = multi_errors(&g, &a, &ws, &args[4]);
        // Outputs 0 and 1 are still right; output 2 is not.
        assert!(errors[0] < 2e-5 && errors[1] < 2e-5, "{errors:?}");
        assert!(errors[2] > 1e-2, "the emulator did not notice the wrong weight: {errors:?}");
    }

    #[test]
    fn a_wrong_relayout_gives_wrong_numbers() {
        // A's 4 x 8 blocks streamed column by column instead of row by row (the two inner levels swapped): the
        // rules still pass (the pattern covers the buffer exactly once), the numbers must not.
        let mut g = gemm(&NPU1, 64, 64, 64);
        let f = g.design.fifos.iter_mut().find(|f| f.name == "a0").unwrap();
        f.to_stream.swap(2, 3);
        verify(&g.design, &NPU1).unwrap();
        let (pm, pk, pn) = g.padded;
        let mut seed = 3;
        let mut args = vec![
            rand((pm * pk) as usize, &mut seed),
            rand((pk * pn) as usize, &mut seed),
            vec![0.0; (pm * pn) as usize],
        ];
        let (a, b) = (args[0].clone(), args[1].clone());
        run(&g.design, &mut args).unwrap();
        let c00: f64 = (0..pk as usize).map(|i| bf16(a[i]) as f64 * bf16(b[i * pn as usize]) as f64).sum();
        let c10: f64 =
            (0..pk as usize).map(|i| bf16(a[pk as usize + i]) as f64 * bf16(b[i * pn as usize]) as f64).sum();
        let (g00, g10) = (args[2][0] as f64, args[2][pn as usize] as f64);
        assert!((g00 - c00).abs() > 1e-3 || (g10 - c10).abs() > 1e-3, "the emulator did not notice the re-layout");
    }
}
