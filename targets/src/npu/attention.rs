//! Prefill attention over the array in one dispatch: QK^T, the causal (or sliding-window) mask, the online
//! softmax and PV for every head and query row of a chunk. Each column takes every fourth head; a column's
//! four cores take four consecutive query blocks of its head at a time (a round), so that they need the same
//! keys: the column's shim streams the four Q blocks as one buffer its memtile splits among them, and the key
//! tiles (each K tile followed by the same keys' V) once, broadcast to the four; their outputs are joined per
//! column and go back through its shim. A round's tiles run from the first key its first row sees to the last
//! its last row sees; a core masks what its own rows do not see. Channels: each memtile takes Q, the tiles and
//! four outputs in, and sends four Q blocks, the tiles and the joined output out (six each, its limit); each
//! shim sends two streams and takes one.
//!
//! Host arguments: 0 = Q (`rows x heads x head_dim` bf16, rows padded to whole rounds with zeros), 1 = the
//! keys then the values (each `key_rows x kv_heads x head_dim` bf16, positions `0..pos + rows` followed by at
//! least a tile of zero padding), 2 = the output (`rows x heads x head_dim` f32, padded like Q).

use super::design::{
    dims, tile, AttentionRounds, Core, CoreBody, Design, Elem, FifoUse, Link, ObjectFifo, Port, SeqOp,
};
use super::model::ArrayModel;

/// The geometry of one prefill attention launch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefillShape {
    /// Query rows (the chunk) and the position of the first.
    pub rows: u64,
    pub pos: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub window: Option<u64>,
    pub scale: f32,
}

/// A generated attention design.
#[derive(Debug, Clone)]
pub struct AttentionDesign {
    pub design: Design,
    /// Query rows a core takes per round, and keys per tile.
    pub q_rows: u64,
    pub keys: u64,
    /// Rows of Q and of the output the host provides (padded to whole rounds), and key positions of each of K
    /// and V in argument 1 (padded by at least one tile).
    pub padded_rows: u64,
    pub key_rows: u64,
}

impl AttentionDesign {
    /// Multiply-accumulates one dispatch takes: per round and core, QK^T and PV over the round's tiles.
    pub fn macs(&self) -> u64 {
        let per_core = |b: CoreBody| match b {
            CoreBody::Attention { q_rows, keys, head_dim, rounds, .. } => {
                rounds.of(q_rows, keys).iter().map(|r| r.tiles).sum::<u64>() * 2 * q_rows * keys * head_dim
            }
            _ => 0,
        };
        self.design.cores.iter().map(|c| per_core(c.body)).sum()
    }
}

/// Bytes of a core's data memory for blocks of `q` rows and tiles of `k` keys of `hd`-dimension heads: Q,
/// the tiles and the output double-buffered; the running output, the tile's scores and each row's maximum and
/// sum as locals.
fn core_bytes(q: u64, k: u64, hd: u64) -> (u64, u64) {
    let buffers = 2 * (q * hd * 2) + 2 * (2 * k * hd * 2) + 2 * (q * hd * 4);
    let locals = q * hd * 4 + q * k * 4 + 2 * q * 4;
    (buffers, locals)
}

/// The design of `shape`'s attention. Heads of an odd dimension (whose rows are no whole words of bf16) are
/// refused by assertion: every model the compiler takes has even heads.
pub fn attention(array: &ArrayModel, shape: PrefillShape) -> AttentionDesign {
    let PrefillShape { rows, pos, heads, kv_heads, head_dim: hd, window, scale } = shape;
    assert!(rows > 0 && heads > 0 && kv_heads > 0 && heads.is_multiple_of(kv_heads), "an attention of {shape:?}");
    assert!(hd.is_multiple_of(2) && hd <= 1022, "heads of an even dimension within a DMA wrap");
    let budget = array.compute.memory_bytes - array.default_stack_bytes;
    let (cols, per_col) = (array.columns as u64, (array.rows - 2) as u64);
    // The largest blocks (rows) and tiles (keys) that fit, rows first (each round then walks fewer tiles), but
    // no more rows a block than a column's cores share (a decode step's one row takes blocks of 4, not 32).
    let most_rows = rows.div_ceil(per_col).next_power_of_two().max(4);
    let (q_rows, keys) =
        [(32u64, 32u64), (32, 16), (16, 32), (16, 16), (16, 8), (8, 32), (8, 8), (4, 32), (4, 8), (4, 4)]
            .into_iter()
            .filter(|&(q, _)| q <= most_rows)
            .find(|&(q, k)| {
                let (b, l) = core_bytes(q, k, hd);
                b + l <= budget
            })
            .unwrap_or_else(|| panic!("no attention tile of a {hd}-dimension head fits a core"));
    let group = per_col * q_rows;
    let padded_rows = rows.next_multiple_of(group);
    let key_rows = pos + rows + keys;
    let mut d = Design { name: format!("attention_{rows}at{pos}_{heads}x{hd}"), ..Default::default() };
    let locals = core_bytes(q_rows, keys, hd).1;
    for c in 0..array.columns {
        let (shim, mem) = (tile(c, 0), tile(c, 1));
        let cores: Vec<_> = (2..array.rows).map(|r| tile(c, r)).collect();
        d.fifos.push(ObjectFifo::double(format!("q{c}_in"), shim, vec![mem], vec![group, hd], Elem::Bf16));
        d.fifos.push(ObjectFifo::double(format!("kv{c}_in"), shim, vec![mem], vec![2 * keys, hd], Elem::Bf16));
        d.fifos.push(ObjectFifo::double(format!("kv{c}"), mem, cores.clone(), vec![2 * keys, hd], Elem::Bf16));
        d.links.push(Link { from: vec![format!("kv{c}_in")], to: vec![format!("kv{c}")] });
        for (s, &core) in cores.iter().enumerate() {
            d.fifos.push(ObjectFifo::double(format!("q{c}_{s}"), mem, vec![core], vec![q_rows, hd], Elem::Bf16));
            d.fifos.push(ObjectFifo::double(format!("o{c}_{s}"), core, vec![mem], vec![q_rows, hd], Elem::F32));
            let rounds = AttentionRounds {
                rows,
                pos,
                heads,
                kv_heads,
                columns: cols,
                per_col,
                window: window.unwrap_or(0),
                scale,
                column: c as u64,
            };
            let uses = vec![
                FifoUse { fifo: format!("q{c}_{s}"), port: Port::Consume, acquire: 1 },
                FifoUse { fifo: format!("kv{c}"), port: Port::Consume, acquire: 1 },
                FifoUse { fifo: format!("o{c}_{s}"), port: Port::Produce, acquire: 1 },
            ];
            let body = CoreBody::Attention { q_rows, keys, head_dim: hd, rounds, slot: s as u64 };
            d.cores.push(Core { tile: core, locals_bytes: locals, stack_bytes: None, uses, body });
        }
        d.links.push(Link { from: vec![format!("q{c}_in")], to: (0..per_col).map(|s| format!("q{c}_{s}")).collect() });
        d.fifos.push(ObjectFifo::double(format!("o{c}"), mem, vec![shim], vec![group, hd], Elem::F32));
        d.links.push(Link { from: (0..per_col).map(|s| format!("o{c}_{s}")).collect(), to: vec![format!("o{c}")] });
    }
    // The runtime sequence, round by round: every column's Q blocks, tiles and output, then the waits (each
    // round's three transfers a column hold three of the shims' BDs until then).
    let schedules: Vec<_> = (0..cols)
        .map(|c| {
            let rounds = match d.cores[(c * per_col) as usize].body {
                CoreBody::Attention { rounds, .. } => rounds,
                _ => unreachable!("every core of the design attends"),
            };
            rounds.of(q_rows, keys)
        })
        .collect();
    let row_stride = heads * hd;
    let (key_stride, values) = (kv_heads * hd, key_rows * kv_heads * hd);
    for i in 0..schedules[0].len() {
        let mut bd = 0;
        let mut waits = Vec::new();
        for (c, sched) in schedules.iter().enumerate() {
            let Some(r) = sched.get(i) else { continue };
            let g = r.head / (heads / kv_heads);
            let rows_at = (r.row0 * heads + r.head) * hd;
            let mut push = |arg, elem, offset, dims, fifo: String| {
                d.sequence.push(SeqOp::Memcpy { arg, elem, offset, dims, fifo, bd });
                bd += 1;
            };
            push(0, Elem::Bf16, rows_at, dims(&[(group, row_stride), (hd, 1)]), format!("q{c}_in"));
            // Tile after tile, its K then the same keys' V.
            let kv = dims(&[(r.tiles, keys * key_stride), (2, values), (keys, key_stride), (hd, 1)]);
            push(1, Elem::Bf16, r.key0 * key_stride + g * hd, kv, format!("kv{c}_in"));
            push(2, Elem::F32, rows_at, dims(&[(group, row_stride), (hd, 1)]), format!("o{c}"));
            waits.extend([format!("o{c}"), format!("q{c}_in"), format!("kv{c}_in")]);
        }
        d.sequence.extend(waits.into_iter().map(|fifo| SeqOp::Wait { fifo }));
    }
    AttentionDesign { design: d, q_rows, keys, padded_rows, key_rows }
}

#[cfg(test)]
mod tests {
    use super::super::emu::{bf16, run};
    use super::super::model::NPU1;
    use super::super::verify::verify;
    use super::*;

    /// Run the design of `shape` on random Q, K and V and return the worst error against an f64 softmax
    /// attention of the bf16-rounded inputs, relative to the largest |V|, and the design.
    fn check(shape: PrefillShape, edit: impl FnOnce(&mut Design)) -> (f64, AttentionDesign) {
        let mut g = attention(&NPU1, shape);
        edit(&mut g.design);
        verify(&g.design, &NPU1).unwrap_or_else(|e| panic!("{shape:?}: {e:?}"));
        let PrefillShape { rows, pos, heads, kv_heads, head_dim: hd, window, scale } = shape;
        let (h, kvh, hd) = (heads as usize, kv_heads as usize, hd as usize);
        let keys = (pos + rows) as usize;
        let mut seed = rows * 7 + pos * 3 + heads + hd as u64;
        let q = super::super::random(g.padded_rows * heads * hd as u64, &mut seed, 1.0);
        // K and V of the visible positions, then zeros to the argument's padded end.
        let kv_len = g.key_rows as usize * kvh * hd;
        let mut kv = vec![0.0f32; 2 * kv_len];
        let real = super::super::random(2 * (keys * kvh * hd) as u64, &mut seed, 1.0);
        kv[..keys * kvh * hd].copy_from_slice(&real[..keys * kvh * hd]);
        kv[kv_len..kv_len + keys * kvh * hd].copy_from_slice(&real[keys * kvh * hd..]);
        let mut args = vec![q.clone(), kv.clone(), vec![f32::NAN; g.padded_rows as usize * h * hd]];
        let stats = run(&g.design, &mut args).unwrap_or_else(|e| panic!("{shape:?}: {e}"));
        assert_eq!(stats.macs, g.macs(), "{shape:?}: every tile of every round once");
        let vmax = real.iter().fold(0.0f64, |m, &v| m.max(bf16(v).abs() as f64));
        let mut worst = 0.0f64;
        for r in 0..rows as usize {
            let p = pos as usize + r;
            let first = window.map_or(0, |w| (p + 1).saturating_sub(w as usize));
            for head in 0..h {
                let gk = head / (h / kvh);
                let qr: Vec<f64> = (0..hd).map(|d| bf16(q[(r * h + head) * hd + d]) as f64).collect();
                let key = |j: usize, d: usize| bf16(kv[(j * kvh + gk) * hd + d]) as f64;
                let val = |j: usize, d: usize| bf16(kv[kv_len + (j * kvh + gk) * hd + d]) as f64;
                let s: Vec<f64> =
                    (first..=p).map(|j| (0..hd).map(|d| qr[d] * key(j, d)).sum::<f64>() * scale as f64).collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let l: f64 = e.iter().sum();
                for d in 0..hd {
                    let want = (first..=p).zip(&e).map(|(j, w)| w * val(j, d)).sum::<f64>() / l;
                    let got = args[2][(r * h + head) * hd + d] as f64;
                    worst = worst.max((got - want).abs() / vmax);
                }
            }
        }
        (worst, g)
    }

    /// The design at the Llama-3.2-1B and Llama-3.1-8B prefill shapes (512 rows; 32 heads of 64 and of 128 over
    /// 8) passes the rules, and attends on the emulator: a ragged chunk after cached positions with grouped
    /// heads, and a sliding window shorter than a round over heads that do not fill the columns. The error
    /// bound is the bf16 rounding of the probabilities that the PV product takes (2^-9 of each, so of the
    /// output at most 2^-9 of max |V|), with room for f32 sums.
    #[test]
    fn the_attention_design_attends_through_its_own_transfers() {
        for hd in [64, 128] {
            let shape =
                PrefillShape { rows: 512, pos: 0, heads: 32, kv_heads: 8, head_dim: hd, window: None, scale: 0.125 };
            let g = attention(&NPU1, shape);
            verify(&g.design, &NPU1).unwrap_or_else(|e| panic!("{hd}: {e:?}"));
        }
        let gqa = PrefillShape { rows: 37, pos: 11, heads: 8, kv_heads: 2, head_dim: 16, window: None, scale: 0.25 };
        let (err, g) = check(gqa, |_| {});
        assert!(err < 3e-3, "{gqa:?}: max |error| {err} of max |V|");
        assert_eq!(g.padded_rows, 4 * g.q_rows * 37u64.div_ceil(4 * g.q_rows));
        let windowed =
            PrefillShape { rows: 50, pos: 5, heads: 6, kv_heads: 6, head_dim: 32, window: Some(12), scale: 0.2 };
        let (err, _) = check(windowed, |_| {});
        assert!(err < 3e-3, "{windowed:?}: max |error| {err} of max |V|");
        // A decode step: one row after 70 cached positions, in blocks of 4 rows.
        let decode = PrefillShape { rows: 1, pos: 70, heads: 8, kv_heads: 2, head_dim: 64, window: None, scale: 0.125 };
        let (err, g) = check(decode, |_| {});
        assert!(err < 3e-3, "{decode:?}: max |error| {err} of max |V|");
        assert_eq!((g.q_rows, g.keys), (4, 32));
    }

    /// A key tile read at the wrong kv head (one head's offset further): the rules pass, the numbers must not.
    #[test]
    fn a_transfer_at_the_wrong_head_gives_wrong_numbers() {
        let shape = PrefillShape { rows: 20, pos: 3, heads: 4, kv_heads: 2, head_dim: 16, window: None, scale: 0.25 };
        let (err, _) = check(shape, |d| {
            if let Some(SeqOp::Memcpy { offset, .. }) = d.sequence.get_mut(1) {
                *offset += 16;
            }
        });
        assert!(err > 1e-2, "the emulator did not notice the wrong head (max |error| {err})");
    }
}
