//! Row-wise designs over the array — RMSNorm (rows of x with the norm's weights, on all 16 cores), and on two
//! cores a column the SiLU GLU (gate and up, element by element), RoPE (rows of heads with each row's cosines
//! and sines) and the masked softmax (rows of scores with their additive mask): each core takes `r` whole rows
//! of `width` at a time; each column's shim streams its cores' rows as one buffer that its memtile splits among
//! them, the second operand either broadcast to every core from column 0's memtile (the norm's weights, once
//! per block) or split like the first; the results are joined per column and go back through its shim. Rows
//! are padded to whole blocks of the cores' rows (the host pads with zeros and drops them). One dispatch per
//! launch.
//!
//! An RMSNorm or softmax row too wide for a core (more than 5,376 elements) is streamed in pieces
//! ([`rows_in_pieces`]): each core takes one whole row at a time and makes two passes over its pieces, the
//! first for the row's statistics, the second for its outputs, so the host sends each such row twice.

use super::design::{
    dims, tile, Core, CoreBody, Design, Dim, Elem, FifoUse, Link, ObjectFifo, Port, RowOp, RowPieces, SeqOp,
};
use super::model::ArrayModel;

/// The piece a row too wide for a core is streamed in ([`rows_in_pieces`]), in elements: a power of two whose
/// double-buffered pieces (bf16 row and second operand, f32 output: 8 KiB) leave a core's memory nearly
/// free, and whose transfers keep within the shim DMA's 10-bit wraps (256 words a bf16 piece, 512 an f32
/// one) with the whole row's padding under a tenth of a row that needs pieces (511 of more than 5,376).
pub const ROW_PIECE: u64 = 512;

/// The widest row [`rows_in_pieces`] takes: 2^20 elements, the largest stride a shim transfer takes (2^20
/// 32-bit words, here an f32 output row's). Wider rows are refused (`None`); no model has one.
pub const MAX_ROW_WIDTH: u64 = 1 << 20;

/// A generated row-wise design.
#[derive(Debug, Clone)]
pub struct RowsDesign {
    pub design: Design,
    /// Rows each core takes per buffer.
    pub rows_per_core: u64,
    /// `(rows, width)` as asked, and rows padded.
    pub shape: (u64, u64),
    pub padded_rows: u64,
    /// The width the host lays each row out at: `shape`'s, or for rows in pieces padded to whole pieces
    /// (what the pad holds is never read).
    pub padded_width: u64,
}

/// Rows a core takes per buffer and its output fifo's depth: the most rows (a power of two up to 64) whose
/// double-buffered input (bf16), second operand and f32 output fit its memory, and that keep a block of the
/// `cores`' rows within the rows there are; where not even one row fits so, one row with the output
/// single-buffered (the core then waits for each row's result to leave before it writes the next: an RMSNorm
/// row of 4,096, Llama-3.1-8B's).
fn rows_per_core(array: &ArrayModel, op: RowOp, rows: u64, width: u64, cores: u64) -> Option<(u64, u32)> {
    let budget = array.compute.memory_bytes - array.default_stack_bytes;
    let bytes = |r: u64, out_depth: u64| {
        let (n, elem) = op.second(r, width);
        2 * (r * width * 2 + n * elem.bytes()) + out_depth * r * width * 4
    };
    let cap = (1u64 << (rows / cores).max(1).ilog2()).min(64);
    (0..=cap.ilog2())
        .rev()
        .map(|i| 1u64 << i)
        .find(|&r| bytes(r, 2) <= budget)
        .map(|r| (r, 2))
        .or_else(|| (bytes(1, 1) <= budget).then_some((1, 1)))
}

/// The design of `op` over `rows x width` (row-major bf16, the second operand as `op` says; f32 out), whose
/// `shape` is the rows and width it takes them as (the GLU's and RoPE's long rows as more, shorter ones).
/// An RMSNorm or softmax row that does not fit a core (more than 5,376 elements: Llama-3.1-70B's 8,192-wide
/// norm, a softmax over 16,384 scores) takes the design of [`rows_in_pieces`] in pieces of [`ROW_PIECE`];
/// `None` only for a row wider than [`MAX_ROW_WIDTH`].
pub fn rows(array: &ArrayModel, op: RowOp, rows: u64, width: u64) -> Option<RowsDesign> {
    assert!(rows > 0 && width > 0, "a row-wise op over nothing");
    // Rows too long for a core (double-buffered) are taken as more, shorter ones of the same row-major data,
    // at the fewest pieces a row that fit, each piece a whole number of `unit`s.
    let split = |unit: u64| {
        let units = width / unit;
        (1..=units)
            .filter(|&s| units.is_multiple_of(s))
            .map(|s| (rows * s, width / s))
            .find(|&(r, w)| rows_per_core(array, op, r, w, 8).is_some_and(|(_, depth)| depth == 2))
    };
    let (rows, width) = match op {
        // The GLU is element by element.
        RowOp::SiluGlu => split(1)?,
        RowOp::RmsNorm { .. } | RowOp::Softmax { .. } => (rows, width),
        // RoPE rotates each head by itself: pieces of whole heads, each with its own table row (the host
        // repeats a row's cosines and sines for its pieces).
        RowOp::Rope { head_dim } => {
            assert!(
                head_dim.is_multiple_of(2) && width.is_multiple_of(head_dim),
                "RoPE of whole heads of an even dimension"
            );
            split(head_dim)?
        }
    };
    // Two split operands and the joined result take 2 n + 1 of a memtile's 6 outgoing channels for n cores a
    // column: two cores a column for those, all four for the norm (whose weights are broadcast).
    let broadcast = matches!(op, RowOp::RmsNorm { .. });
    let per_col = if broadcast { (array.rows - 2) as u64 } else { 2 };
    // The second operand's row (a core's share of it is `r` of them) and type; the norm's is its weights.
    let (second_width, second_elem) = match op {
        RowOp::Rope { head_dim } => (head_dim, Elem::F32),
        _ => (width, op.second(1, width).1),
    };
    let cols = array.columns as u64;
    let cores = cols * per_col;
    let (r, out_depth) = match rows_per_core(array, op, rows, width, cores) {
        Some(fit) => fit,
        None if matches!(op, RowOp::RmsNorm { .. } | RowOp::Softmax { .. }) => {
            return rows_in_pieces(array, op, rows, width, ROW_PIECE);
        }
        None => return None,
    };
    let padded_rows = rows.next_multiple_of(cores * r);
    let mut d = Design { name: format!("{op:?}_{rows}x{width}"), ..Default::default() };
    if broadcast {
        broadcast_weights(&mut d, array, width);
    }
    for c in 0..array.columns {
        let mem = tile(c, 1);
        split_operand(&mut d, "x", c, per_col, (vec![per_col * r, width], vec![r, width]), Elem::Bf16);
        if !broadcast {
            let shapes = (vec![per_col * r, second_width], vec![r, second_width]);
            split_operand(&mut d, "u", c, per_col, shapes, second_elem);
        }
        for q in 0..per_col as u32 {
            let y = ObjectFifo::double(format!("y{c}_{q}"), tile(c, 2 + q), vec![mem], vec![r, width], Elem::F32);
            d.fifos.push(ObjectFifo { depth: out_depth, ..y });
            let (uses, body) = (core_uses(c, q, broadcast), CoreBody::Rows { op, rows: r, width });
            d.cores.push(Core { tile: tile(c, 2 + q), locals_bytes: 0, stack_bytes: None, uses, body });
        }
        join_results(&mut d, c, per_col, vec![per_col * r, width]);
    }
    // Arguments: 0 = x, 1 = the second operand (the norm's weights, up, the RoPE table or the mask), 2 = out.
    // Per block, one buffer of each column's rows in and out (and the weights once, to every core).
    let n = per_col * r * width;
    for blk in 0..padded_rows / (cores * r) {
        let weights = broadcast.then(|| linear(width));
        push_block(&mut d, cols, weights, second_elem, |c| {
            // The column's first row.
            let first = (blk * cores + c * per_col) * r;
            BlockColumn {
                x: (first * width, linear(n)),
                second: (!broadcast).then(|| (first * second_width, linear(per_col * r * second_width))),
                y: (first * width, linear(n)),
            }
        });
    }
    Some(RowsDesign { design: d, rows_per_core: r, shape: (rows, width), padded_rows, padded_width: width })
}

/// The design of RMSNorm or the masked softmax over `rows x width` whose rows are streamed in pieces of `piece`
/// elements (even: whole words of bf16), for rows too wide for a core; `None` for a row wider than
/// [`MAX_ROW_WIDTH`].
///
/// The host lays the rows out padded to whole pieces (`padded_width`; the second operand's rows too: the
/// norm's one row of weights, or the mask's rows), and the rows padded to whole blocks of the cores' rows as
/// [`rows`] does. Nothing the pad holds is read: each core is told the row's true width
/// ([`RowPieces`]) and computes over the first `width - j piece` elements of the last piece only, writing
/// zeros to the pad's outputs. (Padding with values that leave the result alone — zeros for the sum of
/// squares, a -inf mask for the softmax — would work only while every host fills the pad so, and a NaN or
/// an infinite score left there by a careless one would still reach the softmax's sum: ignoring the pad
/// makes the result the unpadded op's whatever the host leaves there.)
///
/// The cores, fifos and links are [`rows`]'s (RMSNorm on all 16 cores with the weights broadcast, the softmax
/// on two a column with the mask split like the scores), each core taking one row at a time and the fifos
/// holding one piece of a core's row: a core makes two passes over its row ([`CoreBody::RowPieces`]), the
/// first folding the pieces into the row's statistics — RMSNorm's sum of squares in f32; the softmax's
/// running maximum and sum of exponentials, online as the attention body keeps them — and the second reading
/// the same pieces again with the second operand's (the weights, or the mask, which the softmax's first pass
/// reads too) to write the outputs piece by piece. So each block of rows (one a core) is one transfer a
/// column of its cores' rows sent twice — `[(2, 0), (pieces, piece), (cores a column, padded_width), (piece,
/// 1)]`, the outermost level repeating the whole block at stride 0, each buffer piece `j` of the column's
/// rows, which the memtile splits among its cores — the mask the same way, the weights once a block (pass 2
/// only), and the outputs once, `[(pieces, piece), (cores a column, padded_width), (piece, 1)]`. The host
/// traffic is the rows' twice and the mask's twice: 2 x 2 bytes in and 4 out per element for RMSNorm, 8
/// in and 4 out for the softmax, against half the input for a row that fits a core.
pub fn rows_in_pieces(array: &ArrayModel, op: RowOp, rows: u64, width: u64, piece: u64) -> Option<RowsDesign> {
    assert!(
        matches!(op, RowOp::RmsNorm { .. } | RowOp::Softmax { .. }),
        "{op:?} is element by element: its long rows are taken as more, shorter ones"
    );
    assert!(rows > 0 && width > 0, "a row-wise op over nothing");
    assert!(piece > 0 && piece.is_multiple_of(2), "pieces of whole words of bf16, not {piece}");
    let rp = RowPieces { op, width, piece };
    let (pieces, padded_width) = (rp.pieces(), rp.pieces() * piece);
    if padded_width > MAX_ROW_WIDTH {
        return None;
    }
    let broadcast = matches!(op, RowOp::RmsNorm { .. });
    let per_col = if broadcast { (array.rows - 2) as u64 } else { 2 };
    let cols = array.columns as u64;
    let cores = cols * per_col;
    let padded_rows = rows.next_multiple_of(cores);
    let mut d = Design { name: format!("{op:?}_{rows}x{width}_in_pieces_of_{piece}"), ..Default::default() };
    if broadcast {
        broadcast_weights(&mut d, array, piece);
    }
    let operands: &[&str] = if broadcast { &["x"] } else { &["x", "u"] };
    for c in 0..array.columns {
        let mem = tile(c, 1);
        for name in operands {
            split_operand(&mut d, name, c, per_col, (vec![per_col, piece], vec![piece]), Elem::Bf16);
        }
        for q in 0..per_col as u32 {
            let core = tile(c, 2 + q);
            d.fifos.push(ObjectFifo::double(format!("y{c}_{q}"), core, vec![mem], vec![piece], Elem::F32));
            let uses = core_uses(c, q, broadcast);
            // The row's statistics: two f32.
            d.cores.push(Core { tile: core, locals_bytes: 8, stack_bytes: None, uses, body: CoreBody::RowPieces(rp) });
        }
        join_results(&mut d, c, per_col, vec![per_col, piece]);
    }
    // Arguments: 0 = x, 1 = the weights (one row) or the mask, 2 = out, each row at a stride of padded_width.
    // Per block (a row a core), each column's rows twice (and the mask's), the weights once, the outputs once.
    let twice = dims(&[(2, 0), (pieces, piece), (per_col, padded_width), (piece, 1)]);
    let once = dims(&[(pieces, piece), (per_col, padded_width), (piece, 1)]);
    for blk in 0..padded_rows / cores {
        let weights = broadcast.then(|| linear(padded_width));
        push_block(&mut d, cols, weights, Elem::Bf16, |c| {
            let at = (blk * cores + c * per_col) * padded_width;
            BlockColumn {
                x: (at, twice.clone()),
                second: (!broadcast).then(|| (at, twice.clone())),
                y: (at, once.clone()),
            }
        });
    }
    Some(RowsDesign { design: d, rows_per_core: 1, shape: (rows, width), padded_rows, padded_width })
}

/// The norm's weights, `n` elements a buffer, from column 0's shim through its memtile to every core.
fn broadcast_weights(d: &mut Design, array: &ArrayModel, n: u64) {
    let everyone = (0..array.columns).flat_map(|c| (2..array.rows).map(move |q| tile(c, q))).collect();
    d.fifos.push(ObjectFifo::double("w_in".into(), tile(0, 0), vec![tile(0, 1)], vec![n], Elem::Bf16));
    d.fifos.push(ObjectFifo::double("w".into(), tile(0, 1), everyone, vec![n], Elem::Bf16));
    d.links.push(Link { from: vec!["w_in".into()], to: vec!["w".into()] });
}

/// Operand `name` of column `c`: buffers of `whole` from its shim to its memtile, which splits each into its
/// `per_col` cores' buffers of `share`.
fn split_operand(d: &mut Design, name: &str, c: u32, per_col: u64, (whole, share): (Vec<u64>, Vec<u64>), elem: Elem) {
    let (shim, mem) = (tile(c, 0), tile(c, 1));
    d.fifos.push(ObjectFifo::double(format!("{name}{c}_in"), shim, vec![mem], whole, elem));
    for q in 0..per_col as u32 {
        d.fifos.push(ObjectFifo::double(format!("{name}{c}_{q}"), mem, vec![tile(c, 2 + q)], share.clone(), elem));
    }
    let to = (0..per_col).map(|q| format!("{name}{c}_{q}")).collect();
    d.links.push(Link { from: vec![format!("{name}{c}_in")], to });
}

/// Column `c`'s cores' results (fifos `y{c}_{q}`) joined at its memtile into buffers of `whole` to its shim.
fn join_results(d: &mut Design, c: u32, per_col: u64, whole: Vec<u64>) {
    d.fifos.push(ObjectFifo::double(format!("y{c}"), tile(c, 1), vec![tile(c, 0)], whole, Elem::F32));
    d.links.push(Link { from: (0..per_col).map(|q| format!("y{c}_{q}")).collect(), to: vec![format!("y{c}")] });
}

/// What core `q` of column `c` takes and gives: its rows, the second operand (the broadcast weights, or its
/// share) and its results.
fn core_uses(c: u32, q: u32, broadcast: bool) -> Vec<FifoUse> {
    let second = if broadcast { "w".to_string() } else { format!("u{c}_{q}") };
    vec![
        FifoUse { fifo: format!("x{c}_{q}"), port: Port::Consume, acquire: 1 },
        FifoUse { fifo: second, port: Port::Consume, acquire: 1 },
        FifoUse { fifo: format!("y{c}_{q}"), port: Port::Produce, acquire: 1 },
    ]
}

/// A transfer of `n` consecutive elements.
fn linear(n: u64) -> Vec<Dim> {
    dims(&[(1, 0), (1, 0), (1, 0), (n, 1)])
}

/// Where one column's transfers of a block lie in their arguments, each at an offset by an access pattern: its
/// cores' rows in, their share of the second operand (none where that is broadcast), their results out.
struct BlockColumn {
    x: (u64, Vec<Dim>),
    second: Option<(u64, Vec<Dim>)>,
    y: (u64, Vec<Dim>),
}

/// One block's transfers, each on the next buffer descriptor from 0: the broadcast `weights` (argument 1,
/// bf16) where there are any, then each column's ([`BlockColumn`] of `column(c)`): its rows (argument 0,
/// bf16), its share of the second operand (argument 1, `second_elem`), its results (argument 2, f32); then
/// the waits that end the block.
fn push_block(
    d: &mut Design,
    cols: u64,
    weights: Option<Vec<Dim>>,
    second_elem: Elem,
    column: impl Fn(u64) -> BlockColumn,
) {
    let broadcast = weights.is_some();
    let mut bd = 0;
    let mut push = |d: &mut Design, arg, elem, (offset, dims): (u64, Vec<Dim>), fifo: String| {
        d.sequence.push(SeqOp::Memcpy { arg, elem, offset, dims, fifo, bd });
        bd += 1;
    };
    if let Some(w) = weights {
        push(d, 1, Elem::Bf16, (0, w), "w_in".into());
    }
    for c in 0..cols {
        let BlockColumn { x, second, y } = column(c);
        push(d, 0, Elem::Bf16, x, format!("x{c}_in"));
        if let Some(u) = second {
            push(d, 1, second_elem, u, format!("u{c}_in"));
        }
        push(d, 2, Elem::F32, y, format!("y{c}"));
    }
    wait_for_block(d, cols, broadcast);
}

/// The waits that end a block's transfers: every column's result and operand, then the broadcast weights or
/// each column's split second operand.
fn wait_for_block(d: &mut Design, cols: u64, broadcast: bool) {
    let mut waits: Vec<String> = (0..cols).flat_map(|c| [format!("y{c}"), format!("x{c}_in")]).collect();
    if broadcast {
        waits.push("w_in".into());
    } else {
        waits.extend((0..cols).map(|c| format!("u{c}_in")));
    }
    d.sequence.extend(waits.into_iter().map(|fifo| SeqOp::Wait { fifo }));
}

#[cfg(test)]
mod tests {
    use super::super::emu::{bf16, run};
    use super::super::model::NPU1;
    use super::super::verify::verify;
    use super::*;

    fn rand(n: u64, seed: &mut u64) -> Vec<f32> {
        super::super::random(n, seed, 2.0)
    }

    /// RMSNorm, the SiLU GLU, RoPE and the masked softmax at the Llama-3.2-1B prefill shapes pass the rules; on
    /// ragged shapes the emulated results match an f64 computation from the bf16-rounded inputs.
    #[test]
    fn row_wise_designs_pass_the_rules_and_compute_their_op() {
        let norm = RowOp::RmsNorm { eps: 1e-5 };
        for (op, rows_n, width) in [(norm, 512, 2048), (RowOp::SiluGlu, 512, 8192), (norm, 1, 2048)] {
            let g = rows(&NPU1, op, rows_n, width).unwrap();
            verify(&g.design, &NPU1).unwrap_or_else(|e| panic!("{op:?} {rows_n}x{width}: {e:?}"));
        }
        // Llama-3.1-8B's 4096-wide norm rows take one row a core with its output single-buffered.
        let wide = rows(&NPU1, norm, 512, 4096).unwrap();
        verify(&wide.design, &NPU1).unwrap();
        assert_eq!((wide.rows_per_core, wide.design.fifos.iter().find(|f| f.name == "y0_0").unwrap().depth), (1, 1));
        for (op, rows_n, width) in [(norm, 37, 96), (RowOp::SiluGlu, 70, 40), (norm, 19, 4096)] {
            let g = rows(&NPU1, op, rows_n, width).unwrap();
            verify(&g.design, &NPU1).unwrap();
            let mut seed = rows_n * 3 + width;
            let pr = g.padded_rows;
            let x = rand(pr * width, &mut seed);
            let second = match op {
                RowOp::RmsNorm { .. } => rand(width, &mut seed),
                _ => rand(pr * width, &mut seed),
            };
            let mut args = vec![x.clone(), second.clone(), vec![f32::NAN; (pr * width) as usize]];
            run(&g.design, &mut args).unwrap_or_else(|e| panic!("{op:?}: {e}"));
            let w = width as usize;
            for r in 0..rows_n as usize {
                let xr: Vec<f64> = x[r * w..][..w].iter().map(|&v| bf16(v) as f64).collect();
                let inv = 1.0 / (xr.iter().map(|v| v * v).sum::<f64>() / width as f64 + 1e-5).sqrt();
                for i in 0..w {
                    let want = match op {
                        RowOp::RmsNorm { .. } => xr[i] * inv * bf16(second[i]) as f64,
                        _ => xr[i] / (1.0 + (-xr[i]).exp()) * bf16(second[r * w + i]) as f64,
                    };
                    let got = args[2][r * w + i] as f64;
                    assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{op:?} row {r} [{i}]: {got} vs {want}");
                }
            }
        }
        // RoPE of 64-dimension heads and the masked softmax: at the 1B prefill shapes (q rows of 32 heads, the
        // scores of 512 keys), and ragged ones against f64.
        let rope = RowOp::Rope { head_dim: 64 };
        let softmax = RowOp::Softmax { scale: 0.125 };
        for (op, rows_n, width) in [(rope, 512, 2048), (softmax, 16384, 512)] {
            let g = rows(&NPU1, op, rows_n, width).unwrap();
            verify(&g.design, &NPU1).unwrap_or_else(|e| panic!("{op:?} {rows_n}x{width}: {e:?}"));
        }
        for (op, rows_n, width) in [(RowOp::Rope { head_dim: 16 }, 21, 48), (softmax, 19, 40)] {
            let g = rows(&NPU1, op, rows_n, width).unwrap();
            verify(&g.design, &NPU1).unwrap();
            let mut seed = rows_n * 5 + width;
            let (pr, w) = (g.padded_rows as usize, width as usize);
            let x = rand(pr as u64 * width, &mut seed);
            let second: Vec<f32> = match op {
                // Each row's cosines and sines at its position (row r at position 3 r) of the table's frequencies.
                RowOp::Rope { head_dim } => (0..pr)
                    .flat_map(|r| {
                        let half = head_dim as usize / 2;
                        let angle = move |f: usize| (3 * r) as f32 * 10000f32.powf(-(f as f32) / half as f32);
                        (0..half).map(angle).map(f32::cos).chain((0..half).map(angle).map(f32::sin)).collect::<Vec<_>>()
                    })
                    .collect(),
                // Causal over a chunk at position 10: row r sees keys up to 10 + r (of 40); some rows see none.
                _ => (0..pr * w)
                    .map(|e| if e % w <= 10 + e / w && e / w != 4 { 0.0 } else { f32::NEG_INFINITY })
                    .collect(),
            };
            let mut args = vec![x.clone(), second.clone(), vec![f32::NAN; pr * w]];
            run(&g.design, &mut args).unwrap_or_else(|e| panic!("{op:?}: {e}"));
            for r in 0..rows_n as usize {
                let xr: Vec<f64> = x[r * w..][..w].iter().map(|&v| bf16(v) as f64).collect();
                let want: Vec<f64> = match op {
                    RowOp::Rope { head_dim } => {
                        let (hd, half) = (head_dim as usize, head_dim as usize / 2);
                        let t = &second[r * hd..][..hd];
                        (0..w)
                            .map(|i| {
                                let (h, f) = (i / hd * hd, i % hd);
                                let (c, sn) = (t[f % half] as f64, t[half + f % half] as f64);
                                if f < half {
                                    xr[h + f] * c - xr[h + f + half] * sn
                                } else {
                                    xr[h + f] * c + xr[h + f - half] * sn
                                }
                            })
                            .collect()
                    }
                    _ => {
                        let z: Vec<f64> = (0..w).map(|i| xr[i] * 0.125 + bf16(second[r * w + i]) as f64).collect();
                        let mx = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = z.iter().map(|v| if mx.is_finite() { (v - mx).exp() } else { 0.0 }).collect();
                        let sum: f64 = e.iter().sum();
                        e.iter().map(|v| if sum > 0.0 { v / sum } else { 0.0 }).collect()
                    }
                };
                for (i, want) in want.iter().enumerate() {
                    let got = args[2][r * w + i] as f64;
                    assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{op:?} row {r} [{i}]: {got} vs {want}");
                }
            }
        }
        // A 70B-class q row (64 heads of 128) is rotated as two rows of 32 heads, each piece with its row's table.
        let wide_rope = RowOp::Rope { head_dim: 128 };
        let g = rows(&NPU1, wide_rope, 512, 8192).unwrap();
        assert_eq!(g.shape, (1024, 4096));
        verify(&g.design, &NPU1).unwrap();
        // The 1B MLP's 8192-wide GLU rows are taken as 2048-wide ones.
        assert_eq!(rows(&NPU1, RowOp::SiluGlu, 512, 8192).unwrap().shape, (2048, 2048));
    }

    fn within_shim_bd_limits(d: &Design) {
        super::super::shim_bd_limits(d).unwrap_or_else(|e| panic!("{}: {e}", d.name));
    }

    /// The f64 softmax or RMSNorm of one row from the bf16-rounded inputs (`second`: the row's mask, or the
    /// weights).
    fn reference(op: RowOp, x: &[f32], second: &[f32]) -> Vec<f64> {
        let x: Vec<f64> = x.iter().map(|&v| bf16(v) as f64).collect();
        let second: Vec<f64> = second.iter().map(|&v| bf16(v) as f64).collect();
        match op {
            RowOp::RmsNorm { eps } => {
                let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + eps as f64).sqrt();
                x.iter().zip(&second).map(|(v, g)| v * inv * g).collect()
            }
            RowOp::Softmax { scale } => {
                let z: Vec<f64> = x.iter().zip(&second).map(|(v, m)| v * scale as f64 + m).collect();
                let mx = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = z.iter().map(|v| if mx.is_finite() { (v - mx).exp() } else { 0.0 }).collect();
                let sum: f64 = e.iter().sum();
                e.iter().map(|v| if sum > 0.0 { v / sum } else { 0.0 }).collect()
            }
            _ => unreachable!(),
        }
    }

    /// The host's arguments of a design in pieces for `rows_n` rows: random rows of x (and RMSNorm's weights),
    /// the softmax's mask from `visible(row, element)`; every padding element — the rows' pad to whole pieces,
    /// the rows padded to whole blocks — NaN, which the design must never read into a real row's result.
    fn pieces_args(g: &RowsDesign, op: RowOp, seed: &mut u64, visible: impl Fn(usize, usize) -> bool) -> Vec<Vec<f32>> {
        let (rows_n, width) = (g.shape.0 as usize, g.shape.1 as usize);
        let (pr, pw) = (g.padded_rows as usize, g.padded_width as usize);
        let real = |r: usize, i: usize| r < rows_n && i < width;
        let x = rand((pr * pw) as u64, seed);
        let x: Vec<f32> = x.iter().enumerate().map(|(e, &v)| if real(e / pw, e % pw) { v } else { f32::NAN }).collect();
        let second: Vec<f32> = match op {
            RowOp::RmsNorm { .. } => {
                let w = rand(pw as u64, seed);
                w.iter().enumerate().map(|(i, &v)| if i < width { v } else { f32::NAN }).collect()
            }
            _ => (0..pr * pw)
                .map(|e| match (real(e / pw, e % pw), visible(e / pw, e % pw)) {
                    (false, _) => f32::NAN,
                    (true, true) => 0.0,
                    (true, false) => f32::NEG_INFINITY,
                })
                .collect(),
        };
        vec![x, second, vec![f32::NAN; pr * pw]]
    }

    /// The largest error of the emulated rows of `args` (after a run) against [`reference`], relative to each
    /// value (an RMSNorm output by `1 + |value|`, as the tests of whole rows take it); every output in a real
    /// row's pad is zero.
    fn pieces_error(g: &RowsDesign, op: RowOp, args: &[Vec<f32>]) -> f64 {
        let (rows_n, width, pw) = (g.shape.0 as usize, g.shape.1 as usize, g.padded_width as usize);
        let mut worst = 0f64;
        for r in 0..rows_n {
            let x = &args[0][r * pw..][..width];
            let second = match op {
                RowOp::RmsNorm { .. } => &args[1][..width],
                _ => &args[1][r * pw..][..width],
            };
            let want = reference(op, x, second);
            let got = &args[2][r * pw..][..pw];
            for (i, w) in want.iter().enumerate() {
                let scale = if matches!(op, RowOp::RmsNorm { .. }) { 1.0 + w.abs() } else { w.abs() };
                let err = (got[i] as f64 - w).abs();
                // A value the f64 softmax makes exactly zero (masked) must be zero.
                let rel = if scale > 0.0 {
                    err / scale
                } else if err == 0.0 {
                    0.0
                } else {
                    f64::INFINITY
                };
                worst = worst.max(if rel.is_nan() { f64::INFINITY } else { rel });
            }
            assert!(got[width..].iter().all(|&v| v == 0.0), "row {r}: the pad's outputs are not zeros");
        }
        worst
    }

    /// RMSNorm of any width: rows too wide for a core (Llama-3.1-70B's 8,192; a ragged 12,000, not a multiple
    /// of the piece) take the design in pieces, pass the rules at the 70B prefill shape and within the shim's
    /// transfer limits up to rows of 2^20, and compute the norm on the emulator within 1e-5 of f64 from the
    /// bf16 inputs, whatever the padding holds; the host sends each row twice.
    #[test]
    fn rms_norm_rows_of_any_width_stream_in_pieces() {
        let norm = RowOp::RmsNorm { eps: 1e-5 };
        // The widest row a core holds whole, and the first that it does not.
        assert!(matches!(rows(&NPU1, norm, 64, 5376).unwrap().design.cores[0].body, CoreBody::Rows { .. }));
        for (rows_n, width) in [(64, 5377), (512, 8192), (512, 12000), (3, 1 << 20)] {
            let g = rows(&NPU1, norm, rows_n, width).unwrap_or_else(|| panic!("no design for {rows_n}x{width}"));
            let u = verify(&g.design, &NPU1).unwrap_or_else(|e| panic!("{rows_n}x{width}: {e:?}"));
            within_shim_bd_limits(&g.design);
            let rp = RowPieces { op: norm, width, piece: ROW_PIECE };
            assert!(g.design.cores.iter().all(|c| c.body == CoreBody::RowPieces(rp)), "{rows_n}x{width}");
            assert_eq!((g.rows_per_core, g.padded_width), (1, width.next_multiple_of(ROW_PIECE)));
            // x twice, the weights once a block of 16 rows, the output once.
            let (pr, pw) = (g.padded_rows, g.padded_width);
            assert_eq!(u.host_bytes, 2 * pr * pw * 2 + pr / 16 * pw * 2 + pr * pw * 4, "{rows_n}x{width}");
        }
        // Wider than a shim transfer's stride reaches: refused.
        assert!(rows(&NPU1, norm, 1, (1 << 20) + 1).is_none());
        for (rows_n, width) in [(37u64, 8192u64), (19, 12000)] {
            let g = rows(&NPU1, norm, rows_n, width).unwrap();
            let mut seed = rows_n * 7 + width;
            let mut args = pieces_args(&g, norm, &mut seed, |_, _| true);
            let stats = run(&g.design, &mut args).unwrap_or_else(|e| panic!("{rows_n}x{width}: {e}"));
            assert_eq!(stats.host_bytes, verify(&g.design, &NPU1).unwrap().host_bytes);
            let err = pieces_error(&g, norm, &args);
            assert!(err <= 1e-5, "RMSNorm {rows_n}x{width}: {err:e} from f64");
            println!("RMSNorm {rows_n}x{width} in pieces of {ROW_PIECE}: {err:.1e} from f64");
        }
    }

    /// The masked softmax of any width: scores of 16,384 and 32,768 keys pass the rules; on the emulator rows of
    /// 16,384 and a ragged 10,000 with a mask that hides keys — causally, the whole of a row (zeros), the first
    /// pieces of a row whole, all but one key of another — compute the softmax within 1e-5 of each value
    /// of f64 from the bf16 inputs, whatever the padding holds.
    #[test]
    fn softmax_rows_of_any_width_stream_in_pieces() {
        let softmax = RowOp::Softmax { scale: 1.5 };
        for (rows_n, width) in [(512, 16384), (512, 32768), (5, 1 << 20)] {
            let g = rows(&NPU1, softmax, rows_n, width).unwrap();
            let u = verify(&g.design, &NPU1).unwrap_or_else(|e| panic!("{rows_n}x{width}: {e:?}"));
            within_shim_bd_limits(&g.design);
            assert!(g.design.cores.iter().all(|c| matches!(c.body, CoreBody::RowPieces(_))));
            // The scores and the mask twice each, the output once.
            let (pr, pw) = (g.padded_rows, g.padded_width);
            assert_eq!(u.host_bytes, 2 * 2 * pr * pw * 2 + pr * pw * 4, "{rows_n}x{width}");
        }
        for (rows_n, width) in [(11u64, 16384usize), (13, 10000)] {
            let g = rows(&NPU1, softmax, rows_n, width as u64).unwrap();
            let mut seed = rows_n * 3 + width as u64;
            // Causal at position width - 12: row r sees keys up to width - 12 + r; row 4 none; row 2 none of its
            // first three pieces; row 5 only its last key (in the last piece, ragged at 10,000).
            let visible = |r: usize, i: usize| match r {
                4 => false,
                2 => i >= 3 * ROW_PIECE as usize,
                5 => i == width - 1,
                _ => i + 12 <= width + r,
            };
            let mut args = pieces_args(&g, softmax, &mut seed, visible);
            run(&g.design, &mut args).unwrap_or_else(|e| panic!("{rows_n}x{width}: {e}"));
            let err = pieces_error(&g, softmax, &args);
            assert!(err <= 1e-5, "softmax {rows_n}x{width}: {err:e} from f64");
            let pw = g.padded_width as usize;
            assert!(args[2][4 * pw..][..pw].iter().all(|&v| v == 0.0), "a row masked entirely gives zeros");
            assert_eq!(args[2][5 * pw + width - 1], 1.0, "a row that sees one key");
            println!("softmax {rows_n}x{width} in pieces of {ROW_PIECE}: {err:.1e} from f64");
        }
    }

    /// A design in pieces whose second pass reads the wrong piece — one transfer's repeat at a stride of one
    /// piece instead of 0, so the first column's cores get each piece's successor in pass 2 (of x for RMSNorm,
    /// of the mask for the softmax) — passes the rules but gives wrong numbers on the emulator, in those rows
    /// only.
    #[test]
    fn a_second_pass_read_one_piece_off_passes_the_rules_but_computes_wrong_numbers() {
        for (op, fifo, width) in
            [(RowOp::RmsNorm { eps: 1e-5 }, "x0_in", 8192u64), (RowOp::Softmax { scale: 1.5 }, "u0_in", 12000)]
        {
            let g = rows(&NPU1, op, 37, width).unwrap();
            let mut seed = 17 + width;
            let visible = |r: usize, i: usize| i < 9000 + r;
            let mut args = pieces_args(&g, op, &mut seed, visible);
            let mut right = args.clone();
            run(&g.design, &mut right).unwrap();
            assert!(pieces_error(&g, op, &right) <= 1e-5);
            let mut wrong = g.clone();
            let edited = wrong.design.sequence.iter_mut().find_map(|o| match o {
                SeqOp::Memcpy { fifo: f, dims, .. } if f == fifo => Some(dims),
                _ => None,
            });
            let dims = edited.expect("the transfer");
            assert_eq!((dims[0].size, dims[0].stride), (2, 0), "pass 1 and 2 as a repeat");
            dims[0].stride = ROW_PIECE;
            verify(&wrong.design, &NPU1).unwrap_or_else(|e| panic!("{op:?}: the rules refuse it: {e:?}"));
            run(&wrong.design, &mut args).unwrap();
            let err = pieces_error(&wrong, op, &args);
            assert!(err > 1e-2, "{op:?}: {err:e} from f64 with pass 2 one piece off");
            // The first column's cores (its first block's rows) only.
            let pw = g.padded_width as usize;
            let per_col = if matches!(op, RowOp::RmsNorm { .. }) { 4 } else { 2 };
            let same =
                args[2][per_col * pw..].iter().zip(&right[2][per_col * pw..]).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{op:?}: rows past the first column's changed");
        }
    }
}
