//! Row-wise designs over the array — RMSNorm (rows of x with the norm's weights, on all 16 cores), and on two
//! cores a column the SiLU GLU (gate and up, element by element), RoPE (rows of heads with each row's cosines
//! and sines) and the masked softmax (rows of scores with their additive mask): each core takes `r` whole rows
//! of `width` at a time; each column's shim streams its cores' rows as one buffer that its memtile splits among
//! them, the second operand either broadcast to every core from column 0's memtile (the norm's weights, once
//! per block) or split like the first; the results are joined per column and go back through its shim. Rows
//! are padded to whole blocks of the cores' rows (the host pads with zeros and drops them). One dispatch per
//! launch.

use super::design::{dims, tile, Core, CoreBody, Design, Elem, FifoUse, Link, ObjectFifo, Port, RowOp, SeqOp};
use super::model::ArrayModel;

/// A generated row-wise design.
#[derive(Debug, Clone)]
pub struct RowsDesign {
    pub design: Design,
    /// Rows each core takes per buffer.
    pub rows_per_core: u64,
    /// `(rows, width)` as asked, and rows padded.
    pub shape: (u64, u64),
    pub padded_rows: u64,
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
/// `shape` is the rows and width it takes them as (the GLU's and RoPE's long rows as more, shorter ones);
/// `None` where not even one row fits a core (an RMSNorm or softmax row of more than 5,376 elements, whose
/// design must split a row's sums across cores: still to come).
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
    let (r, out_depth) = rows_per_core(array, op, rows, width, cores)?;
    let padded_rows = rows.next_multiple_of(cores * r);
    let mut d = Design { name: format!("{op:?}_{rows}x{width}"), ..Default::default() };
    if broadcast {
        let everyone = (0..array.columns).flat_map(|c| (2..array.rows).map(move |q| tile(c, q))).collect();
        d.fifos.push(ObjectFifo::double("w_in".into(), tile(0, 0), vec![tile(0, 1)], vec![width], Elem::Bf16));
        d.fifos.push(ObjectFifo::double("w".into(), tile(0, 1), everyone, vec![width], Elem::Bf16));
        d.links.push(Link { from: vec!["w_in".into()], to: vec!["w".into()] });
    }
    for c in 0..array.columns {
        let (shim, mem) = (tile(c, 0), tile(c, 1));
        let operands: &[(&str, u64, Elem)] = if broadcast {
            &[("x", width, Elem::Bf16)]
        } else {
            &[("x", width, Elem::Bf16), ("u", second_width, second_elem)]
        };
        for &(name, w, elem) in operands {
            d.fifos.push(ObjectFifo::double(format!("{name}{c}_in"), shim, vec![mem], vec![per_col * r, w], elem));
            for q in 0..per_col as u32 {
                let f = ObjectFifo::double(format!("{name}{c}_{q}"), mem, vec![tile(c, 2 + q)], vec![r, w], elem);
                d.fifos.push(f);
            }
            let to = (0..per_col).map(|q| format!("{name}{c}_{q}")).collect();
            d.links.push(Link { from: vec![format!("{name}{c}_in")], to });
        }
        for q in 0..per_col as u32 {
            let y = ObjectFifo::double(format!("y{c}_{q}"), tile(c, 2 + q), vec![mem], vec![r, width], Elem::F32);
            d.fifos.push(ObjectFifo { depth: out_depth, ..y });
            let second = if broadcast { "w".to_string() } else { format!("u{c}_{q}") };
            let uses = vec![
                FifoUse { fifo: format!("x{c}_{q}"), port: Port::Consume, acquire: 1 },
                FifoUse { fifo: second, port: Port::Consume, acquire: 1 },
                FifoUse { fifo: format!("y{c}_{q}"), port: Port::Produce, acquire: 1 },
            ];
            let body = CoreBody::Rows { op, rows: r, width };
            d.cores.push(Core { tile: tile(c, 2 + q), locals_bytes: 0, stack_bytes: None, uses, body });
        }
        d.fifos.push(ObjectFifo::double(format!("y{c}"), mem, vec![shim], vec![per_col * r, width], Elem::F32));
        d.links.push(Link { from: (0..per_col).map(|q| format!("y{c}_{q}")).collect(), to: vec![format!("y{c}")] });
    }
    // Arguments: 0 = x, 1 = the second operand (the norm's weights, up, the RoPE table or the mask), 2 = out.
    // Per block, one buffer of each column's rows in and out (and the weights once, to every core).
    for blk in 0..padded_rows / (cores * r) {
        let mut bd = 0;
        let mut push = |d: &mut Design, arg, elem, offset, fifo: String, n: u64| {
            let dims = dims(&[(1, 0), (1, 0), (1, 0), (n, 1)]);
            d.sequence.push(SeqOp::Memcpy { arg, elem, offset, dims, fifo, bd });
            bd += 1;
        };
        if broadcast {
            push(&mut d, 1, Elem::Bf16, 0, "w_in".into(), width);
        }
        let n = per_col * r * width;
        for c in 0..cols {
            let at = (blk * cores + c * per_col) * r * width;
            push(&mut d, 0, Elem::Bf16, at, format!("x{c}_in"), n);
            if !broadcast {
                let at2 = (blk * cores + c * per_col) * r * second_width;
                push(&mut d, 1, second_elem, at2, format!("u{c}_in"), per_col * r * second_width);
            }
            push(&mut d, 2, Elem::F32, at, format!("y{c}"), n);
        }
        let mut waits: Vec<String> = (0..cols).flat_map(|c| [format!("y{c}"), format!("x{c}_in")]).collect();
        if broadcast {
            waits.push("w_in".into());
        } else {
            waits.extend((0..cols).map(|c| format!("u{c}_in")));
        }
        d.sequence.extend(waits.into_iter().map(|fifo| SeqOp::Wait { fifo }));
    }
    Some(RowsDesign { design: d, rows_per_core: r, shape: (rows, width), padded_rows })
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
        // The 1B MLP's 8192-wide GLU rows are taken as 2048-wide ones; an 8192-wide RMSNorm row has no design
        // yet (and says so by None).
        assert_eq!(rows(&NPU1, RowOp::SiluGlu, 512, 8192).unwrap().shape, (2048, 2048));
        assert!(rows(&NPU1, norm, 16, 8192).is_none());
    }
}
