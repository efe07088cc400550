//! Prefill attention over the array in one dispatch: QK^T, the causal (or sliding-window) mask, the online
//! softmax and PV for every head and query row of a chunk. Each column takes every fourth head; a column's
//! four cores take four consecutive query blocks of its head at a time (a round), so that they need the same
//! keys: the column's shim streams the four Q blocks as one buffer its memtile splits among them, and the key
//! tiles once, broadcast to the four; their outputs are joined per column and go back through its shim.
//! Channels: each memtile takes Q, the tiles and four outputs in, and sends four Q blocks, the tiles and the
//! joined output out (six each, its limit); each shim sends two streams and takes one.
//!
//! **The keys and values, position by position.** Argument 1 holds each position's keys, then its values, so
//! that a round's tiles are one run of positions: one transfer of a position's K row then its V row of the
//! round's kv head, position after position (strides of a position's keys, `kv_heads x head_dim`, and of a
//! position, twice that), cut into tiles of `keys` positions by the fifo. The memtile re-lays each tile as
//! the cores take it, its keys' K rows then their V rows (a re-layout of its outgoing DMA). No stride or size
//! limited by a buffer descriptor's fields grows with the keys (the run's length is the third level, whose size
//! a shim BD takes from the transfer's length), and a round takes one transfer a column whatever the keys, so
//! the buffer descriptors a round holds do not grow either; what grows is the transfer's length in words, an
//! i32 of mlir-aie's BD lowering.
//!
//! **One design for every chunk of a prompt.** A design is built for at most `rows` query rows over at most
//! `max_keys` keys ([`PrefillShape`]); where a chunk sits is given per dispatch by two runtime parameters
//! ([`ATTENTION_PARAMS`]): `q0`, the position of the chunk's first row, which sets the causal and window masks
//! and the keys the rows see, and `kv_len`, the keys that hold data (the cached positions and the chunk's
//! real rows; the rows after `kv_len - q0` are padding). So the core programs, the fifos and the runtime
//! sequence — the xclbin and its instruction stream — are built once per plan, and one design serves the
//! chunk at position 0, the one after it, and a decode step's row at any depth.
//!
//! How the values reach the cores: each core's tile holds them in a runtime parameter buffer
//! ([`super::design::RtpBuffer`]: two i32 words), which the runtime sequence writes at the start of the
//! dispatch (`aiex.npu.rtp_write`, one register write of the instruction stream a word) and then opens to the
//! core through a lock of its tile (`aiex.set_lock` to 1; the core acquires it at the start of its pass, so
//! it never reads the previous dispatch's values): mlir-aie's runtime-parameter idiom (`rtp_write` read by a
//! core, as its `test/npu-xrt/runtime_cumsum` does on npu1, with IRON's `WorkerRuntimeBarrier` lock;
//! `AIEX.td`, `AIEOps.td` and `python/iron/worker.py` of v1.4.1, see [`super::aie`]). The alternative, a small
//! host buffer of the values streamed to every core through a fifo once a dispatch, has no channel to take:
//! the shims' two outgoing channels carry Q and the tiles, the memtiles' six each way are all in use, and a
//! core's two incoming ones take Q and the tiles. (mlir-aie's scratchpad parameters, read by cores from a host
//! buffer without a channel, exist at v1.4.1 for npu2 only, through its full-ELF flow.) The cost: two rtp
//! writes and one lock write per core with work per dispatch (48 register writes of the instruction stream
//! for 16 cores), 8 bytes and one lock of each core's tile; no host transfer.
//!
//! The transfers do not depend on the values: every round streams, from a static runtime sequence, the key
//! tiles any admitted `q0` may need ([`AttentionRounds::of`]: from the window's start at `q0 = 0`, 0 without
//! a window, to the last key its last row sees at the largest `q0`), and a core skips the tiles its rows do
//! not see under the dispatch's values ([`AttentionTile::computes`]: acquired and released, never read). The
//! price is host traffic: each dispatch moves the keys of the design's maximum, whatever the chunk's
//! position (a design for one prompt of `rows` from position 0 moves what a design fixed at position 0 did).
//!
//! Host arguments: 0 = Q (`rows x heads x head_dim` bf16, rows padded to whole rounds; a row after the chunk's
//! real ones is padding and its values are never used), 1 = the keys and the values by position (`key_rows`
//! positions of `2 x kv_heads x head_dim` bf16, each its keys then its values: positions `0..max_keys` and at
//! least a tile more. Those before `kv_len` are the cache and the chunk's keys; those from `kv_len` on are read
//! only within a tile that also holds a key before it, where they are masked but must be finite — zeros, or a
//! stale cache's values — as 0 times a NaN is NaN; the rest may hold anything), 2 = the output (`rows x heads x
//! head_dim` f32, padded like Q; a padding row's output is 0).

use super::design::{
    dims, tile, AttentionRounds, Core, CoreBody, Design, Elem, FifoUse, Link, ObjectFifo, Port, RtpBuffer, SeqOp,
    ATTENTION_PARAMS,
};
use super::emu::AttentionTile;
use super::model::ArrayModel;

/// The geometry of the prefill attention a design is built for (a dispatch's `q0 + rows` is at most
/// `max_keys`, so `max_keys >= rows`): the plan's kernels state it as they carry it.
pub use unicorn_ir::npu::PrefillShape;

/// A generated attention design.
#[derive(Debug, Clone)]
pub struct AttentionDesign {
    pub design: Design,
    pub shape: PrefillShape,
    /// Query rows a core takes per round, and keys per tile.
    pub q_rows: u64,
    pub keys: u64,
    /// Rows of Q and of the output the host provides (padded to whole rounds), and key positions in argument 1
    /// (`max_keys` and at least a tile more), each its keys then its values.
    pub padded_rows: u64,
    pub key_rows: u64,
}

impl AttentionDesign {
    /// The runtime parameter values of a dispatch ([`ATTENTION_PARAMS`] in order), as
    /// [`super::emu::run_with`] takes them: the chunk's first row at `q0`, keys before `kv_len` holding data.
    pub fn params(q0: u64, kv_len: u64) -> [u32; 2] {
        let word = |v: u64| u32::try_from(v).ok().filter(|&w| w <= i32::MAX as u32).expect("a position within i32");
        [word(q0), word(kv_len)]
    }

    /// Multiply-accumulates a dispatch at `q0` with `kv_len` takes: per round and core, QK^T and PV over the
    /// round's tiles it computes on.
    pub fn macs(&self, q0: u64, kv_len: u64) -> u64 {
        let per_core = |b: CoreBody| match b {
            CoreBody::Attention { q_rows, keys, head_dim, rounds, slot } => {
                let tile = AttentionTile { q_rows, keys, head_dim, window: rounds.window, scale: rounds.scale };
                let computed = rounds.of(q_rows, keys).into_iter().map(|r| {
                    let pos0 = q0 + r.row0 + slot * q_rows;
                    (0..r.tiles).filter(|t| tile.computes(r.key0 + t * keys, pos0, kv_len)).count() as u64
                });
                computed.sum::<u64>() * 2 * q_rows * keys * head_dim
            }
            _ => 0,
        };
        self.design.cores.iter().map(|c| per_core(c.body)).sum()
    }
}

/// The attention of the Llama-3.2-1B (heads of 64) and Llama-3.1-8B (heads of 128) prefill for the tests:
/// chunks of 512 rows over `max_keys` keys, 32 heads over 8.
#[cfg(test)]
pub(crate) fn llama_prefill(head_dim: u64, max_keys: u64) -> PrefillShape {
    PrefillShape { rows: 512, max_keys, heads: 32, kv_heads: 8, head_dim, window: None, scale: 0.1 }
}

/// Bytes of a core's data memory for blocks of `q` rows and tiles of `k` keys of `hd`-dimension heads: Q,
/// the tiles and the output double-buffered; the running output, the tile's scores and each row's maximum and
/// sum as locals (the runtime parameters' two words are the rules' to count, with their buffer).
fn core_bytes(q: u64, k: u64, hd: u64) -> (u64, u64) {
    let buffers = 2 * (q * hd * 2) + 2 * (2 * k * hd * 2) + 2 * (q * hd * 4);
    let locals = q * hd * 4 + q * k * 4 + 2 * q * 4;
    (buffers, locals)
}

/// The design of `shape`'s attention. Heads of an odd dimension (whose rows are no whole words of bf16) are
/// refused by assertion: every model the compiler takes has even heads.
pub fn attention(array: &ArrayModel, shape: PrefillShape) -> AttentionDesign {
    let PrefillShape { rows, max_keys, heads, kv_heads, head_dim: hd, window, scale } = shape;
    assert!(rows > 0 && heads > 0 && kv_heads > 0 && heads.is_multiple_of(kv_heads), "an attention of {shape:?}");
    assert!(max_keys >= rows && max_keys <= i32::MAX as u64 / 2, "keys for the rows, as i32 words: {shape:?}");
    assert!(hd.is_multiple_of(2) && hd <= 1022, "heads of an even dimension within a DMA wrap");
    let budget = array.compute.memory_bytes - array.default_stack_bytes - 4 * ATTENTION_PARAMS.len() as u64;
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
    let key_rows = max_keys + keys;
    let mut d = Design {
        name: format!("attention_{rows}rows_{max_keys}keys_{heads}x{hd}"),
        params: ATTENTION_PARAMS.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    };
    let locals = core_bytes(q_rows, keys, hd).1;
    for c in 0..array.columns {
        let (shim, mem) = (tile(c, 0), tile(c, 1));
        let cores: Vec<_> = (2..array.rows).map(|r| tile(c, r)).collect();
        d.fifos.push(ObjectFifo::double(format!("q{c}_in"), shim, vec![mem], vec![group, hd], Elem::Bf16));
        d.fifos.push(ObjectFifo::double(format!("kv{c}_in"), shim, vec![mem], vec![2 * keys, hd], Elem::Bf16));
        // A tile arrives position by position, each its K row then its V row; the cores take its K rows, then
        // the same keys' V rows.
        d.fifos.push(ObjectFifo {
            to_stream: dims(&[(2, hd), (keys, 2 * hd), (hd, 1)]),
            ..ObjectFifo::double(format!("kv{c}"), mem, cores.clone(), vec![2 * keys, hd], Elem::Bf16)
        });
        d.links.push(Link { from: vec![format!("kv{c}_in")], to: vec![format!("kv{c}")] });
        for (s, &core) in cores.iter().enumerate() {
            d.fifos.push(ObjectFifo::double(format!("q{c}_{s}"), mem, vec![core], vec![q_rows, hd], Elem::Bf16));
            d.fifos.push(ObjectFifo::double(format!("o{c}_{s}"), core, vec![mem], vec![q_rows, hd], Elem::F32));
            let rounds = AttentionRounds {
                rows,
                max_keys,
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
            // A core with rounds to run reads the dispatch's q0 and kv_len from its tile.
            if body.params_read() > 0 {
                d.rtp.push(RtpBuffer { tile: core, words: (0..ATTENTION_PARAMS.len()).collect() });
            }
            d.cores.push(Core { tile: core, locals_bytes: locals, stack_bytes: None, uses, body });
        }
        d.links.push(Link { from: vec![format!("q{c}_in")], to: (0..per_col).map(|s| format!("q{c}_{s}")).collect() });
        d.fifos.push(ObjectFifo::double(format!("o{c}"), mem, vec![shim], vec![group, hd], Elem::F32));
        d.links.push(Link { from: (0..per_col).map(|s| format!("o{c}_{s}")).collect(), to: vec![format!("o{c}")] });
    }
    // The runtime sequence, round by round: every column's Q blocks, tiles and output, then a wait on each (each
    // transfer holds one of the shims' BDs until then).
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
    let (kv_row, position) = (kv_heads * hd, 2 * kv_heads * hd);
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
            // The round's tiles as one run of positions, each its kv head's K row then its V row.
            let kv = dims(&[(r.tiles * keys, position), (2, kv_row), (hd, 1)]);
            push(1, Elem::Bf16, r.key0 * position + g * hd, kv, format!("kv{c}_in"));
            push(2, Elem::F32, rows_at, dims(&[(group, row_stride), (hd, 1)]), format!("o{c}"));
            waits.extend([format!("o{c}"), format!("q{c}_in"), format!("kv{c}_in")]);
        }
        d.sequence.extend(waits.into_iter().map(|fifo| SeqOp::Wait { fifo }));
    }
    AttentionDesign { design: d, shape, q_rows, keys, padded_rows, key_rows }
}

#[cfg(test)]
mod tests {
    use super::super::emu::{bf16, run_with};
    use super::super::model::NPU1;
    use super::super::verify::verify;
    use super::*;

    /// The host's arguments of a chunk at `q0` with `real` real rows: random Q for the real rows, and in the
    /// padding ones finite garbage (up to 100; NaN in every other row, which a score's maximum could drop
    /// unseen); random K and V at the positions before `kv_len = q0 + real`, finite garbage (up to 100) in
    /// a tile's worth after it less one (what a tile holding a key before `kv_len` reaches) and NaN in the rest;
    /// the output NaN.
    fn args(g: &AttentionDesign, q0: u64, real: u64, seed: &mut u64) -> Vec<Vec<f32>> {
        let PrefillShape { heads, kv_heads, head_dim, .. } = g.shape;
        let row = (heads * head_dim) as usize;
        let q = super::super::random(g.padded_rows * row as u64, seed, 1.0);
        let q = q
            .into_iter()
            .enumerate()
            .map(|(e, v)| match e / row {
                r if r < real as usize => v,
                r if (r - real as usize).is_multiple_of(2) => v * 100.0,
                _ => f32::NAN,
            })
            .collect();
        let (kv_len, position) = ((q0 + real) as usize, (2 * kv_heads * head_dim) as usize);
        let kv = super::super::random(g.key_rows * position as u64, seed, 1.0);
        let kv = kv
            .into_iter()
            .enumerate()
            .map(|(e, v)| match e / position {
                p if p < kv_len => v,
                p if p < kv_len + g.keys as usize - 1 => v * 100.0,
                _ => f32::NAN,
            })
            .collect();
        vec![q, kv, vec![f32::NAN; g.padded_rows as usize * row]]
    }

    /// The worst error of the output in `a` against an f64 softmax attention of the bf16 inputs of the chunk at
    /// `q0` with `real` real rows, relative to the largest |V| of the keys before `kv_len`: infinite where an
    /// output is not finite, or a padding row's output is not 0.
    fn error(g: &AttentionDesign, a: &[Vec<f32>], q0: u64, real: u64) -> f64 {
        let PrefillShape { heads, kv_heads, head_dim, window, scale, .. } = g.shape;
        let (h, kvh, hd) = (heads as usize, kv_heads as usize, head_dim as usize);
        let (q, kv, out) = (&a[0], &a[1], &a[2]);
        let kv_len = (q0 + real) as usize;
        // Position j's keys at `2 j kvh hd`, its values `kvh hd` after them.
        let (keys_at, values_at) = (|j: usize| 2 * j * kvh * hd, |j: usize| (2 * j + 1) * kvh * hd);
        let vmax =
            (0..kv_len).flat_map(|j| &kv[values_at(j)..][..kvh * hd]).fold(0.0f64, |m, &v| m.max(bf16(v).abs() as f64));
        let mut worst = 0.0f64;
        for r in 0..g.padded_rows as usize {
            for head in 0..h {
                let got = &out[(r * h + head) * hd..][..hd];
                if r >= real as usize {
                    if got.iter().any(|&v| v != 0.0) {
                        return f64::INFINITY;
                    }
                    continue;
                }
                let p = q0 as usize + r;
                let first = window.map_or(0, |w| (p + 1).saturating_sub(w as usize));
                let gk = head / (h / kvh);
                let qr: Vec<f64> = (0..hd).map(|d| bf16(q[(r * h + head) * hd + d]) as f64).collect();
                let key = |j: usize, d: usize| bf16(kv[keys_at(j) + gk * hd + d]) as f64;
                let val = |j: usize, d: usize| bf16(kv[values_at(j) + gk * hd + d]) as f64;
                let s: Vec<f64> =
                    (first..=p).map(|j| (0..hd).map(|d| qr[d] * key(j, d)).sum::<f64>() * scale as f64).collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let l: f64 = e.iter().sum();
                for (d, &got) in got.iter().enumerate() {
                    let want = (first..=p).zip(&e).map(|(j, w)| w * val(j, d)).sum::<f64>() / l;
                    if !got.is_finite() {
                        return f64::INFINITY;
                    }
                    worst = worst.max((got as f64 - want).abs() / vmax);
                }
            }
        }
        worst
    }

    /// Run `design` (`g`'s, or one edited from it) on the arguments of a chunk at `q0` with `real` real rows
    /// ([`args`]), giving it the runtime values `params`: the error against the reference of that chunk
    /// ([`error`]), and the dispatch's host bytes. The rules must accept the design, and the emulator count
    /// the MACs [`AttentionDesign::macs`] does.
    fn check_with(g: &AttentionDesign, design: &Design, q0: u64, real: u64, params: [u32; 2]) -> (f64, u64) {
        verify(design, &NPU1).unwrap_or_else(|e| panic!("{}: {e:?}", design.name));
        let mut seed = q0 * 7 + real * 3 + g.shape.heads + g.shape.head_dim;
        let mut a = args(g, q0, real, &mut seed);
        let stats = run_with(design, &mut a, &params).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stats.macs, g.macs(params[0] as u64, params[1] as u64), "{}: the tiles computed", design.name);
        (error(g, &a, q0, real), stats.host_bytes)
    }

    /// [`check_with`] `g`'s design and the chunk's own runtime values.
    fn check(g: &AttentionDesign, q0: u64, real: u64) -> (f64, u64) {
        check_with(g, &g.design, q0, real, AttentionDesign::params(q0, q0 + real))
    }

    /// The error bound: the bf16 rounding of the probabilities that the PV product takes (2^-9 of each, so of
    /// the output at most 2^-9 of max |V|), with room for f32 sums.
    const BOUND: f64 = 3e-3;

    /// The design at the Llama-3.2-1B and Llama-3.1-8B prefill shapes (chunks of 512 rows; 32 heads of 64 and
    /// of 128 over 8) passes the rules and keeps within the shim's limits for a prompt of one chunk, and far
    /// past the 4,064 keys at 1B and 2,032 at 8B that V after all of K allowed (a stride of the keys within
    /// 2^20 words): over 8,192 and 16,384 keys, over the models' context of 131,072 in chunks of 512, and over
    /// the most keys the placement takes (`npu_attention_covers`: a round's transfer within i32 words), though
    /// not over keys whose rounds' transfers reach 2^31 words. The
    /// runtime sequence is the same length at every context (a round's tiles are one transfer a column), each
    /// core holds its two words of runtime parameters, and a round's BDs are three a column.
    #[test]
    fn the_design_passes_the_rules_at_the_model_shapes() {
        let full = unicorn_ir::npu::attention_max_keys(131_072, 512);
        for (hd, most) in [(64u64, 33_554_399), (128, 16_777_183)] {
            let short = attention(&NPU1, llama_prefill(hd, 512)).design.sequence.len();
            for max_keys in [512, 8192, 16_384, full, most] {
                let g = attention(&NPU1, llama_prefill(hd, max_keys));
                let u = verify(&g.design, &NPU1).unwrap_or_else(|e| panic!("{hd} {max_keys}: {e:?}"));
                super::super::shim_bd_limits(&g.design).unwrap_or_else(|e| panic!("{hd} {max_keys}: {e}"));
                assert_eq!(g.design.sequence.len(), short, "{hd} {max_keys}");
                assert!(g.design.sequence.iter().all(|op| !matches!(op, SeqOp::Memcpy { bd, .. } if *bd >= 12)));
                assert_eq!(g.design.rtp.len(), 16, "every core has heads to attend");
                assert!(g.design.rtp.iter().all(|b| b.words == [0, 1]));
                // A core's three fifo ends take six locks, its barrier the seventh.
                let core = u.tiles[&tile(0, 2)];
                assert_eq!(core.locks, 7);
                assert!(core.memory_bytes <= 65536);
            }
            // Keys whose rounds' transfers reach 2^31 words are past mlir-aie's i32 of a BD's length.
            let over = attention(&NPU1, llama_prefill(hd, i32::MAX as u64 / hd + 1));
            let e = super::super::shim_bd_limits(&over.design).unwrap_err();
            assert!(e.contains("past i32"), "{e}");
        }
    }

    /// One design (GQA: 8 heads over 2; chunks of up to 50 rows over up to 160 keys) serves a prompt's chunks:
    /// the first, at position 0, and a later ragged one of 37 rows after 70 cached positions, each within the
    /// bound of its own reference; the same transfers either way (the same host bytes, the rules' count), the
    /// cores computing on fewer tiles for the first. The keys past `kv_len` (finite garbage, then NaN) and Q's
    /// padding rows (garbage and NaN) never reach a real row's output, and the padding rows' output is 0.
    #[test]
    fn one_design_serves_every_chunk_of_a_prompt() {
        let shape =
            PrefillShape { rows: 50, max_keys: 160, heads: 8, kv_heads: 2, head_dim: 16, window: None, scale: 0.25 };
        let g = attention(&NPU1, shape);
        let (err0, bytes0) = check(&g, 0, 50);
        assert!(err0 < BOUND, "the chunk at 0: max |error| {err0} of max |V|");
        let (err1, bytes1) = check(&g, 70, 37);
        assert!(err1 < BOUND, "the chunk at 70: max |error| {err1} of max |V|");
        assert_eq!(bytes0, bytes1, "one static sequence");
        assert_eq!(bytes0, verify(&g.design, &NPU1).unwrap().host_bytes);
        assert!(g.macs(0, 50) < g.macs(70, 107), "{} {}", g.macs(0, 50), g.macs(70, 107));
        // The last chunk the design admits: its rows end at max_keys.
        let (err, _) = check(&g, 110, 50);
        assert!(err < BOUND, "the chunk at 110: max |error| {err} of max |V|");
        assert_eq!(g.padded_rows, 4 * g.q_rows * 50u64.div_ceil(4 * g.q_rows));
    }

    /// A sliding window shorter than a round, over heads that do not fill the columns, at position 0 and after
    /// 45 positions (the window then starts well into the tiles the round streams), with one design.
    #[test]
    fn a_sliding_window_at_two_positions() {
        let shape =
            PrefillShape { rows: 50, max_keys: 100, heads: 6, kv_heads: 6, head_dim: 32, window: Some(12), scale: 0.2 };
        let g = attention(&NPU1, shape);
        for (q0, real) in [(0, 50), (45, 50), (30, 7)] {
            let (err, _) = check(&g, q0, real);
            assert!(err < BOUND, "q0 {q0}, {real} rows: max |error| {err} of max |V|");
        }
    }

    /// A decode step (one row, in blocks of 4 rows) from one design at three depths: after 70 cached positions,
    /// the first position, and the last the design takes; only the block holding the row computes.
    #[test]
    fn a_decode_step_at_any_depth() {
        let shape =
            PrefillShape { rows: 1, max_keys: 100, heads: 8, kv_heads: 2, head_dim: 64, window: None, scale: 0.125 };
        let g = attention(&NPU1, shape);
        assert_eq!((g.q_rows, g.keys), (4, 32));
        for q0 in [70, 0, 99] {
            let (err, _) = check(&g, q0, 1);
            assert!(err < BOUND, "q0 {q0}: max |error| {err} of max |V|");
        }
        // Per head, one core of its column, over the tiles up to the row's position.
        assert_eq!(g.macs(70, 71), 8 * 3 * 2 * 4 * 32 * 64);
    }

    /// The runtime values matter: the chunk at 70 run with q0 off by one either way, or with kv_len one short
    /// (its last row then taken for padding), gives wrong numbers.
    #[test]
    fn wrong_runtime_values_give_wrong_numbers() {
        let shape =
            PrefillShape { rows: 50, max_keys: 160, heads: 8, kv_heads: 2, head_dim: 16, window: None, scale: 0.25 };
        let g = attention(&NPU1, shape);
        for (q0, kv_len) in [(71, 107), (69, 107), (70, 106)] {
            let (err, _) = check_with(&g, &g.design, 70, 37, AttentionDesign::params(q0, kv_len));
            assert!(err > 1e-2, "q0 {q0}, kv_len {kv_len}: the emulator did not notice (max |error| {err})");
        }
    }

    /// The emulator takes the design's runtime values as its cores would and refuses what the design does not
    /// admit: too few values, or a chunk whose rows reach past the design's keys.
    #[test]
    fn runtime_values_the_design_does_not_admit_are_refused() {
        let shape =
            PrefillShape { rows: 20, max_keys: 40, heads: 4, kv_heads: 2, head_dim: 16, window: None, scale: 0.25 };
        let g = attention(&NPU1, shape);
        let mut seed = 1;
        let mut a = args(&g, 0, 20, &mut seed);
        let e = run_with(&g.design, &mut a, &[0]).unwrap_err();
        assert!(e.contains("2 runtime parameters (q0, kv_len), given 1"), "{e}");
        let e = super::super::emu::run(&g.design, &mut a).unwrap_err();
        assert!(e.contains("given 0"), "{e}");
        let e = run_with(&g.design, &mut a, &AttentionDesign::params(21, 41)).unwrap_err();
        assert!(e.contains("q0 = 21: a design of 20 rows over 40 keys takes q0 up to 20"), "{e}");
        run_with(&g.design, &mut a, &AttentionDesign::params(20, 40)).unwrap();
    }

    /// Argument 1 holds each position's keys then its values, and the cores take a tile's keys then its values:
    /// a design that reads them otherwise passes the rules and gives wrong numbers — a key tile read at the
    /// wrong kv head (one head's offset further), a position's values taken from the next position's keys, or
    /// the tiles passed on without the memtile's re-layout (keys and values row by row).
    #[test]
    fn keys_and_values_read_otherwise_give_wrong_numbers() {
        let shape =
            PrefillShape { rows: 20, max_keys: 23, heads: 4, kv_heads: 2, head_dim: 16, window: None, scale: 0.25 };
        let g = attention(&NPU1, shape);
        let (mut head, mut next, mut rows) = (g.design.clone(), g.design.clone(), g.design.clone());
        if let Some(SeqOp::Memcpy { offset, .. }) = head.sequence.get_mut(1) {
            *offset += 16;
        }
        for op in &mut next.sequence {
            if let SeqOp::Memcpy { arg: 1, dims, .. } = op {
                dims[1].stride *= 2;
            }
        }
        rows.fifos.iter_mut().filter(|f| f.name.starts_with("kv") && !f.name.ends_with("_in")).for_each(|f| {
            f.to_stream.clear();
        });
        for (what, d) in [("the wrong head", head), ("the next position's keys", next), ("no re-layout", rows)] {
            let (err, _) = check_with(&g, &d, 3, 20, AttentionDesign::params(3, 23));
            assert!(err > 1e-2, "{what}: the emulator did not notice (max |error| {err})");
        }
    }
}
