//! The whole-array bf16 GEMV design for decode, `y[N] (f32) = W[N x K] x[K]` (bf16 weights and activations,
//! f32 accumulation), for any shape: each of the 16 cores takes `r` rows of W at a time, `k` columns per buffer,
//! and folds them with the matching `k` values of x. Column `c`'s shim streams the rows of its four cores as one
//! buffer of `4r x k`, which its memtile splits among them; x enters through column 0's memtile and is
//! broadcast to every core; each core's `r` results are joined in its column's memtile and go back through its
//! shim. A block of `16r` rows is one pass over x; N and K are padded to whole blocks and buffers. One
//! dispatch runs the whole GEMV. Decode on this NPU is bound by the weights' DMA, not the MACs: the estimate
//! says so.

use super::design::{dims, tile, Coord, Core, CoreBody, Design, Elem, FifoUse, Link, ObjectFifo, Port, SeqOp};
use super::model::ArrayModel;

/// A core's share: `rows x k` of W per buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemvTiles {
    pub rows: u64,
    pub k: u64,
}

impl GemvTiles {
    /// A core's data memory for its double-buffered W, x and y buffers.
    pub fn core_bytes(&self) -> u64 {
        2 * (self.rows * self.k * 2 + self.k * 2 + self.rows * 4)
    }
}

#[derive(Debug, Clone)]
pub struct Gemv {
    pub design: Design,
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
        pn * pk * 2 + blocks * pk * 2 + pn * 4
    }

    /// [`ArrayModel::estimate_seconds`] of the dispatch: an ESTIMATE and a lower bound.
    pub fn estimate_seconds(&self, array: &ArrayModel) -> f64 {
        array.estimate_seconds(self.host_bytes(), self.macs())
    }
}

/// What a buffer handed from a memtile to a core costs beside the elements it carries, in elements: an
/// ASSUMPTION of the model (a lock handshake and a BD reload are worth about a kilobyte of transfer), which
/// only steers the choice of buffers.
const HANDOFF_ELEMS: u64 = 512;

/// A core's buffers that fit it: the least padded work (N to whole blocks of 16 cores' rows times K to whole
/// buffers) plus [`HANDOFF_ELEMS`] per buffer a core takes, then the most rows, then the longest `k` — rows a
/// power of two from 4 to 128, `k` one up to 512 or K itself rounded up to 32 where that is shorter (512 bf16
/// keep the transfers' innermost wrap far below its 10-bit limit).
pub fn choose_tiles(array: &ArrayModel, n_total: u64, k_total: u64) -> GemvTiles {
    let budget = array.compute.memory_bytes - array.default_stack_bytes;
    let cores = array.compute_tiles() as u64;
    let k_need = k_total.next_multiple_of(32);
    let ks: Vec<u64> =
        (5..=9).map(|i| 1u64 << i).filter(|&k| k <= k_need).chain((k_need <= 512).then_some(k_need)).collect();
    let mut best: Option<(u64, GemvTiles)> = None;
    for rows in (2..=7).map(|i| 1u64 << i) {
        for &k in &ks {
            let t = GemvTiles { rows, k };
            let (pn, pk) = (n_total.next_multiple_of(cores * rows), k_total.next_multiple_of(k));
            let cost = pn * pk + cores * (pn / (cores * rows)) * (pk / k) * HANDOFF_ELEMS;
            let key = (cost, u64::MAX - rows, u64::MAX - k);
            if t.core_bytes() <= budget && best.is_none_or(|(c, b)| key < (c, u64::MAX - b.rows, u64::MAX - b.k)) {
                best = Some((cost, t));
            }
        }
    }
    best.expect("32 columns of 4 rows fit any core").1
}

/// The GEMV design for `N x K` by `K` on the whole array.
pub fn gemv(array: &ArrayModel, n_total: u64, k_total: u64) -> Gemv {
    assert!(n_total > 0 && k_total > 0, "a GEMV of a zero dimension");
    let t = choose_tiles(array, n_total, k_total);
    let (cols, rows) = (array.columns as u64, (array.rows - 2) as u64);
    let cores = cols * rows;
    let padded = (n_total.next_multiple_of(cores * t.rows), k_total.next_multiple_of(t.k));
    let (pn, pk) = padded;
    let mut d = Design { name: format!("gemv_{n_total}x{k_total}"), ..Default::default() };
    let everyone: Vec<Coord> = (0..array.columns).flat_map(|c| (2..array.rows).map(move |r| tile(c, r))).collect();
    d.fifos.push(ObjectFifo::double("x_in".into(), tile(0, 0), vec![tile(0, 1)], vec![t.k], Elem::Bf16));
    d.fifos.push(ObjectFifo::double("x".into(), tile(0, 1), everyone, vec![t.k], Elem::Bf16));
    d.links.push(Link { from: vec!["x_in".into()], to: vec!["x".into()] });
    for c in 0..array.columns {
        let (shim, mem) = (tile(c, 0), tile(c, 1));
        d.fifos.push(ObjectFifo::double(format!("w{c}_in"), shim, vec![mem], vec![rows * t.rows, t.k], Elem::Bf16));
        for q in 0..rows as u32 {
            d.fifos.push(ObjectFifo::double(
                format!("w{c}_{q}"),
                mem,
                vec![tile(c, 2 + q)],
                vec![t.rows, t.k],
                Elem::Bf16,
            ));
            d.fifos.push(ObjectFifo::double(format!("y{c}_{q}"), tile(c, 2 + q), vec![mem], vec![t.rows], Elem::F32));
            let uses = vec![
                FifoUse { fifo: format!("w{c}_{q}"), port: Port::Consume, acquire: 1 },
                FifoUse { fifo: "x".into(), port: Port::Consume, acquire: 1 },
                FifoUse { fifo: format!("y{c}_{q}"), port: Port::Produce, acquire: 1 },
            ];
            let body = CoreBody::MatVec { rows: t.rows, k: t.k, k_tiles: pk / t.k };
            d.cores.push(Core { tile: tile(c, 2 + q), locals_bytes: 0, stack_bytes: None, uses, body });
        }
        d.fifos.push(ObjectFifo::double(format!("y{c}"), mem, vec![shim], vec![rows * t.rows], Elem::F32));
        d.links.push(Link { from: vec![format!("w{c}_in")], to: (0..rows).map(|q| format!("w{c}_{q}")).collect() });
        d.links.push(Link { from: (0..rows).map(|q| format!("y{c}_{q}")).collect(), to: vec![format!("y{c}")] });
    }
    // Runtime arguments: 0 = W (pn x pk bf16, row-major), 1 = x (pk bf16), 2 = y (pn f32). Per block of
    // 16r rows: x once, each column's 4r rows k columns at a time, then the 4r results.
    for blk in 0..pn / (cores * t.rows) {
        let mut bd = 0;
        let mut push = |d: &mut Design, arg, elem, offset, dims, fifo: String| {
            d.sequence.push(SeqOp::Memcpy { arg, elem, offset, dims, fifo, bd });
            bd += 1;
        };
        push(&mut d, 1, Elem::Bf16, 0, dims(&[(1, 0), (1, 0), (1, 0), (pk, 1)]), "x_in".into());
        for c in 0..cols {
            let row0 = (blk * cores + c * rows) * t.rows;
            let w = dims(&[(1, 0), (pk / t.k, t.k), (rows * t.rows, pk), (t.k, 1)]);
            push(&mut d, 0, Elem::Bf16, row0 * pk, w, format!("w{c}_in"));
            push(&mut d, 2, Elem::F32, row0, dims(&[(1, 0), (1, 0), (1, 0), (rows * t.rows, 1)]), format!("y{c}"));
        }
        for f in
            std::iter::once("x_in".to_string()).chain((0..cols).flat_map(|c| [format!("y{c}"), format!("w{c}_in")]))
        {
            d.sequence.push(SeqOp::Wait { fifo: f });
        }
    }
    Gemv { design: d, tiles: t, shape: (n_total, k_total), padded }
}

#[cfg(test)]
mod tests {
    use super::super::emu::{bf16, run};
    use super::super::model::NPU1;
    use super::super::verify::verify;
    use super::*;

    #[test]
    fn buffers_follow_the_rows_and_fit_a_core() {
        // Llama-3.2-1B: o_proj / down (2048 rows), k/v (512 rows), gate/up (8192 rows).
        assert_eq!(choose_tiles(&NPU1, 2048, 8192), GemvTiles { rows: 128, k: 64 });
        assert_eq!(choose_tiles(&NPU1, 512, 2048), GemvTiles { rows: 32, k: 256 });
        assert_eq!(choose_tiles(&NPU1, 8192, 2048), GemvTiles { rows: 128, k: 64 });
        // q, k and v together (3072 rows): blocks of 1024 rows, none padded.
        assert_eq!(choose_tiles(&NPU1, 3072, 2048), GemvTiles { rows: 64, k: 128 });
        // Few rows take the fewest; a short K is taken whole.
        assert_eq!(choose_tiles(&NPU1, 37, 5000), GemvTiles { rows: 4, k: 512 });
        assert_eq!(choose_tiles(&NPU1, 1000, 300), GemvTiles { rows: 32, k: 320 });
        for (n, k) in [(2048, 8192), (37, 5000), (1 << 20, 1 << 20)] {
            assert!(choose_tiles(&NPU1, n, k).core_bytes() + NPU1.default_stack_bytes <= NPU1.compute.memory_bytes);
        }
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
            let (pn, pk) = g.padded;
            let mut seed = n * 7 + k;
            let vals = super::super::random(n * k + k, &mut seed, 1.0);
            let mut r = vals.into_iter();
            let mut r = move || r.next().expect("enough values");
            let mut w = vec![0.0f32; (pn * pk) as usize];
            for i in 0..n as usize {
                for j in 0..k as usize {
                    w[i * pk as usize + j] = r();
                }
            }
            let mut x = vec![0.0f32; pk as usize];
            for v in x.iter_mut().take(k as usize) {
                *v = r();
            }
            let mut args = vec![w.clone(), x.clone(), vec![f32::NAN; pn as usize]];
            let stats = run(&g.design, &mut args).unwrap_or_else(|e| panic!("{n}x{k}: {e}"));
            assert_eq!(stats.macs, g.macs());
            assert_eq!(stats.host_bytes, u.host_bytes);
            for i in 0..n as usize {
                let want: f64 = (0..k as usize).map(|j| bf16(w[i * pk as usize + j]) as f64 * bf16(x[j]) as f64).sum();
                let got = args[2][i] as f64;
                // f32 sums of at most 5000 products of bf16 numbers below 1.
                assert!((got - want).abs() < 2e-4, "{n}x{k} row {i}: {got} vs {want}");
            }
        }
        // Decode is bound by the weights' transfer, not the MACs (an estimate on stated assumptions), and the
        // bytes counted are those the sequence moves.
        let g = gemv(&NPU1, 8192, 2048);
        assert_eq!(g.host_bytes(), verify(&g.design, &NPU1).unwrap().host_bytes);
        let dma = g.host_bytes() as f64 / NPU1.host_bytes_s;
        assert!((g.estimate_seconds(&NPU1) - NPU1.dispatch_overhead_s - dma).abs() < 1e-12);
    }
}
