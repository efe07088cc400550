//! Every generated GPU kernel run on the machine's Vulkan device (lavapipe in CI) against a reference computed
//! here in f64 from the same inputs: fresh random values, weights encoded by the plan writer's own encoders and
//! decoded by the reference decoder, nonzero buffer offsets, row counts and sizes that are not multiples of the
//! workgroups.

use unicorn_ir::quant::{decode_row, encode_row, interleave_rows, INTERLEAVE};
use unicorn_ir::WeightFormat;
use unicorn_runtime::vulkan::hal::{Buffer, Gpu, Launch};
use unicorn_targets::vulkan::glsl::{self, AttentionShape, Elementwise, MatPath, MAX_BUFFERS};
use unicorn_targets::vulkan::spirv;

const FORMATS: [WeightFormat; 5] =
    [WeightFormat::F32, WeightFormat::F16, WeightFormat::Bf16, WeightFormat::Q8_0, WeightFormat::Q4_0];

use unicorn_ir::rng::XorShift as Rng;

fn gpu() -> Gpu {
    Gpu::open(0).unwrap_or_else(|e| panic!("{e} (the GPU kernel tests need a Vulkan device; CI uses lavapipe)"))
}

fn words(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// A buffer holding `pad` zero words, then `data`; the kernel finds it at `base = pad`.
fn buffer_at(gpu: &Gpu, pad: u32, data: &[u8]) -> Buffer {
    let mut b = gpu.buffer(pad as u64 * 4 + data.len() as u64).unwrap();
    b.write(pad as u64 * 4, data).unwrap();
    b
}

/// Compile `src` and run it once: `push` is (rows, pos, keep, cap, pass) and the bases come from `pads`.
fn dispatch(gpu: &Gpu, name: &str, src: &str, bufs: &[&Buffer], pads: &[u32], push5: [u32; 5], groups: [u32; 3]) {
    let code = spirv::compile(name, src).unwrap();
    let kernel = gpu.kernel(&code, c"main", bufs.len() as u32, ((5 + MAX_BUFFERS) * 4) as u32).unwrap();
    let mut push = push5.to_vec();
    push.extend((0..MAX_BUFFERS).map(|i| pads.get(i).copied().unwrap_or(0)));
    gpu.run(&[Launch { kernel: &kernel, buffers: bufs, push: &push, groups }]).unwrap();
}

fn read_floats(b: &Buffer, pad: u32, n: usize) -> Vec<f32> {
    floats(&b.read(pad as u64 * 4, n as u64 * 4))
}

fn assert_close(name: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}");
    // The outputs start as NaN: one left unwritten (or any non-finite result) fails here, since the maximum
    // below would pass over it.
    if let Some(i) = got.iter().position(|g| !g.is_finite()) {
        panic!("{name}: element {i} of {} is {}", got.len(), got[i]);
    }
    let scale = want.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
    let worst = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max);
    assert!(worst <= tol * scale, "{name}: worst error {worst:.3e} > {tol:e} of max |y| {scale:.3e}");
}

/// `rows x k` values encoded in `format`, in the layout the kernels read (q4_0 / q8_0 interleaved and padded
/// to whole groups), and the values the reference decoder reads back (what the kernel must reproduce).
fn encode_matrix(format: WeightFormat, w: &[f32], rows: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::new();
    for r in 0..rows {
        encode_row(format, &w[r * k..(r + 1) * k], &mut bytes);
    }
    let rb = format.row_bytes(k).unwrap();
    let mut decoded = vec![0f32; rows * k];
    for r in 0..rows {
        decode_row(format, &bytes[r * rb..(r + 1) * rb], &mut decoded[r * k..(r + 1) * k]);
    }
    if format.is_quantized() {
        bytes.resize(rows.next_multiple_of(INTERLEAVE) * rb, 0);
        let mut out = Vec::new();
        for g in bytes.chunks(INTERLEAVE * rb) {
            interleave_rows(format, k, g, &mut out);
        }
        bytes = out;
    }
    (bytes, decoded)
}

/// Every way a matmul kernel walks its rows that this device runs: tiled (prefill), with cooperative matrices
/// where the device has them, and row by row (decode), with subgroup shuffles and integer dot products where
/// it has them.
fn paths(gpu: &Gpu) -> Vec<MatPath> {
    let profile = gpu.info().profile();
    let mut v = vec![MatPath::Tiled, MatPath::RowByRow];
    for path in [MatPath::TiledCoop, MatPath::RowByRowSg, MatPath::RowByRowDot] {
        if profile.missing(&path.requires()).is_none() {
            v.push(path);
        }
    }
    v
}

/// Whether a kernel of `path` multiplies `format` weights by int8 activations: the integer-dot path's
/// quantized matrices (every shape these tests use fits its staging).
fn int8_acts(path: MatPath, format: WeightFormat) -> bool {
    path == MatPath::RowByRowDot && format.is_quantized()
}

/// How far an int8-activation result may be from [`operand`]'s reference beyond rounding, per output row `o`
/// of the `n x k` matrix `wd` and row of `x`: a quant whose `v * 127 / amax` lies within a few ulps of a
/// rounding boundary may round either way on a GPU, whose division is good to 2.5 ulp (not correctly
/// rounded, as the CPU's is), and moves the result by `|w| * amax / 127`. The largest such sum over the
/// outputs, in absolute terms (0 when `int8` is false).
#[allow(clippy::too_many_arguments)]
fn int8_slack(x: &[f32], gain: &[f32], k: usize, norm: Option<(f32, bool)>, int8: bool, wd: &[f32], n: usize) -> f64 {
    if !int8 {
        return 0.0;
    }
    let mut worst = 0f64;
    for row in x.chunks(k) {
        let v: Vec<f32> = match norm {
            Some((_, unit)) => row.iter().zip(gain).map(|(&a, &g)| a * (g + if unit { 1.0 } else { 0.0 })).collect(),
            None => row.to_vec(),
        };
        let inv_rms = match norm {
            Some((eps, _)) => {
                1.0 / (row.iter().map(|&a| a as f64 * a as f64).sum::<f64>() / k as f64 + eps as f64).sqrt()
            }
            None => 1.0,
        };
        let mut ambiguous = Vec::new();
        for (b, block) in v.chunks(32).enumerate() {
            let amax = block.iter().fold(0f32, |m, a| m.max(a.abs()));
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            for (e, &a) in block.iter().enumerate() {
                let p = (a * id) as f64;
                if ((p - p.floor()) - 0.5).abs() <= 8.0 * p.abs().max(1.0) * f32::EPSILON as f64 {
                    ambiguous.push((b * 32 + e, amax as f64 / 127.0 * inv_rms));
                }
            }
        }
        for o in 0..n {
            let s: f64 = ambiguous.iter().map(|&(j, d)| (wd[o * k + j] as f64).abs() * d).sum();
            worst = worst.max(s);
        }
    }
    worst
}

/// [`assert_close`] with `slack` more absolute error allowed.
fn assert_close_slack(name: &str, got: &[f32], want: &[f64], tol: f64, slack: f64) {
    let scale = want.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
    assert_close(name, got, want, tol + slack * 1.0001 / scale);
}

/// The operand a launch's matrices see, in f64: rows of `k` of `x` itself, or normalized by an RMSNorm of
/// (eps, unit offset) with weight `gain`; with `int8`, what the integer-dot path multiplies instead — each
/// row (times the norm's weight) quantized to int8 blocks of 32 as the CPU's q8_0 activations are (`amax`,
/// `q = round_ties_even(v * 127 / amax)`, scale `amax / 127`, in f32), the norm's 1 / rms applied after.
fn operand(x: &[f32], gain: &[f32], k: usize, norm: Option<(f32, bool)>, int8: bool) -> Vec<f64> {
    if !int8 {
        return normed(x, gain, k, norm);
    }
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(k) {
        let v: Vec<f32> = match norm {
            Some((_, unit)) => row.iter().zip(gain).map(|(&a, &g)| a * (g + if unit { 1.0 } else { 0.0 })).collect(),
            None => row.to_vec(),
        };
        let inv_rms = match norm {
            Some((eps, _)) => {
                1.0 / (row.iter().map(|&a| a as f64 * a as f64).sum::<f64>() / k as f64 + eps as f64).sqrt()
            }
            None => 1.0,
        };
        for block in v.chunks(32) {
            let amax = block.iter().fold(0f32, |m, a| m.max(a.abs()));
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let d = amax / 127.0;
            out.extend(block.iter().map(|&a| (a * id).round_ties_even() as f64 * d as f64 * inv_rms));
        }
    }
    out
}

/// The tolerance of a matmul path for weights of `format`, relative to max |y|: the cooperative-matrix GEMM
/// multiplies `x` and the dequantized weights rounded to f16 (relative error 2^-11 each, so about 1e-3 on a
/// product and less on a sum of random-sign products); f32 weights and every other path keep f32 products.
fn tolerance(path: MatPath, format: WeightFormat) -> f64 {
    if path == MatPath::TiledCoop && format != WeightFormat::F32 {
        2e-3
    } else {
        1e-5
    }
}

/// A matmul launch's workgroups for `rows` rows of `x`.
fn work(members: &[glsl::MatMember], k: usize, rows: usize, path: MatPath) -> [u32; 3] {
    let (tiles, tile_rows) = glsl::matmul_work(members, k as u64, path);
    [tiles as u32, (rows as u64).div_ceil(tile_rows) as u32, 1]
}

#[test]
fn matmul_per_format_with_and_without_bias() {
    let gpu = gpu();
    let paths = paths(&gpu);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // A partial tile of rows and of outputs; two tiles of rows with more blocks than block slots; and, for the
    // float formats, columns past the last whole block. Then single rows (a decode step): fewer steps of
    // eight columns than threads for the row-by-row path, more (2304 columns: 288 steps for 256 threads), and
    // columns that are no multiple of eight (which take the tiled path whatever is asked), and rows of 4096 and
    // 6144 columns.
    // And tiles of the tiled path: more rows and outputs than one 64 x 64 tile holds, neither a multiple of it.
    let shapes = [
        (3usize, 96usize, 20usize),
        (11, 32 * 40, 9),
        (9, 70, 17),
        (1, 96, 20),
        (1, 32 * 72, 13),
        (1, 70, 17),
        // Single rows whose steps the threads take in batches (`glsl::gemv_walk`): two whole steps a thread,
        // and three, which the batches of two steps (q8_0) do not divide.
        (1, 4096, 24),
        (1, 6144, 9),
        (70, 64, 100),
        (65, 70, 129),
        // Launches of many outputs, whose row-by-row workgroups make 2 and 8 groups of 8.
        (2, 64, 4100),
        (1, 64, 16392),
        // Tiles of 128 outputs for the cooperative-matrix GEMM: two tiles of rows, the last tile of outputs
        // partial.
        (200, 64, 6200),
    ];
    for (format, (rows, k, n)) in FORMATS.into_iter().flat_map(|f| shapes.map(|s| (f, s))) {
        if format.is_quantized() && k % 32 != 0 {
            continue;
        }
        for (bias, path) in [false, true].into_iter().flat_map(|b| paths.iter().map(move |&p| (b, p))) {
            // x on a 16-byte boundary (the row-by-row path reads it in 16-byte words) and off one.
            let pad_x = if bias { 8 } else { 5 };
            let (x, w, b) = (rng.vec(rows * k, 1.0), rng.vec(n * k, 1.0), rng.vec(n, 1.0));
            let (wbytes, wd) = encode_matrix(format, &w, n, k);
            let int8 = int8_acts(path, format) && k.is_multiple_of(32);
            let xs = operand(&x, &[], k, None, int8);
            let slack = int8_slack(&x, &[], k, None, int8, &wd, n);
            let want: Vec<f64> = (0..rows * n)
                .map(|e| {
                    let (r, o) = (e / n, e % n);
                    let dot: f64 = (0..k).map(|i| xs[r * k + i] * wd[o * k + i] as f64).sum();
                    dot + if bias { b[o] as f64 } else { 0.0 }
                })
                .collect();
            let xb = buffer_at(&gpu, pad_x, &words(&x));
            let wb = buffer_at(&gpu, 12, &wbytes);
            let bb = buffer_at(&gpu, 3, &words(&b));
            let yb = buffer_at(&gpu, 7, &words(&vec![f32::NAN; rows * n]));
            let name = format!("matmul_{format}{} {path:?} {rows}x{k}x{n}", if bias { "_bias" } else { "" });
            let src = glsl::matmul(format, bias, k as u64, n as u64, path);
            let groups = work(&[glsl::MatMember { format, bias, n: n as u64 }], k, rows, path);
            let push = [rows as u32, 0, 0, 0, 0];
            if bias {
                dispatch(&gpu, &name, &src, &[&xb, &wb, &bb, &yb], &[pad_x, 12, 3, 7], push, groups);
            } else {
                dispatch(&gpu, &name, &src, &[&xb, &wb, &yb], &[pad_x, 12, 7], push, groups);
            }
            assert_close_slack(&name, &read_floats(&yb, 7, rows * n), &want, tolerance(path, format), slack);
        }
    }
}

/// Word offsets of a fused launch's operand `x` and its norm weight for case number `case`, turn about: both on
/// 16-byte boundaries (the row-by-row path reads them in 16-byte words), neither, and only `x` (the path falls
/// back to single words).
fn operand_pads(case: usize) -> (u32, u32) {
    [(4, 8), (2, 5), (4, 5)][case % 3]
}

/// The operand a fused launch's matrices see, in f64: rows of `k` of `x` itself, or normalized by an RMSNorm
/// of (eps, unit offset) with weight `gain`.
fn normed(x: &[f32], gain: &[f32], k: usize, norm: Option<(f32, bool)>) -> Vec<f64> {
    match norm {
        None => x.iter().map(|&v| v as f64).collect(),
        Some((eps, unit)) => (0..x.len())
            .map(|e| {
                let row = &x[(e / k) * k..(e / k + 1) * k];
                let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / k as f64;
                x[e] as f64 / (ms + eps as f64).sqrt() * (gain[e % k] as f64 + if unit { 1.0 } else { 0.0 })
            })
            .collect(),
    }
}

/// One launch of three matrices of one operand (q/k/v-like, the middle one with a bias), each against the f64
/// reference: the workgroups along x walk the members' tiles in order. Then the same with an RMSNorm fused in
/// front (with and without Gemma's unit offset): the reference normalizes `x` in f64 first.
#[test]
fn matmul_group_computes_each_member() {
    let gpu = gpu();
    let paths = paths(&gpu);
    let mut rng = Rng(0x51ed_2701);
    let k = 96usize;
    let norms = [None, Some((1e-5f32, false)), Some((1e-6, true))];
    // Eleven rows and one, each path; and on the cooperative-matrix path 130 rows of a launch of enough outputs
    // that it takes tiles of 128 outputs (`glsl::COOP_WIDE_OUTPUTS`), its members ending in partial tiles.
    let cases = FORMATS.into_iter().flat_map(|f| {
        let paths = paths.clone();
        norms.into_iter().flat_map(move |n| {
            paths.clone().into_iter().flat_map(move |p| [(f, n, p, 11usize), (f, n, p, 1), (f, n, p, 130)])
        })
    });
    for (case, (format, norm, path, rows)) in cases.enumerate() {
        if rows > 64 && path != MatPath::TiledCoop {
            continue;
        }
        // (Three row counts a case: shifted, so that each row count meets each placement.)
        let (pad_x, pad_g) = operand_pads(case + case / 3);
        let sizes = if rows > 64 {
            [(6000usize, false), (150, true), (40, false)]
        } else {
            [(20, false), (9, true), (16, false)]
        };
        assert_eq!(rows > 64, sizes.iter().map(|s| s.0 as u64).sum::<u64>() >= glsl::COOP_WIDE_OUTPUTS);
        let members = sizes.map(|(n, bias)| glsl::MatMember { format, bias, n: n as u64 });
        let x = rng.vec(rows * k, 1.0);
        let gain = rng.vec(k, 1.0);
        let int8 = int8_acts(path, format);
        let xs = operand(&x, &gain, k, norm, int8);
        let mut slacks = Vec::new();
        let mut bufs = vec![buffer_at(&gpu, pad_x, &words(&x))];
        let mut pads = vec![pad_x];
        if norm.is_some() {
            // The norm's weight, then its result twice (the norm unit's, and the matmuls' operand): unwritten.
            bufs.push(buffer_at(&gpu, pad_g, &words(&gain)));
            bufs.push(buffer_at(&gpu, 0, &words(&vec![f32::NAN; rows * k])));
            bufs.push(buffer_at(&gpu, 0, &words(&vec![f32::NAN; rows * k])));
            pads.extend([pad_g, 0, 0]);
        }
        let first_member = bufs.len();
        let mut wants = Vec::new();
        for (m, mm) in members.iter().enumerate() {
            let n = mm.n as usize;
            let (w, b) = (rng.vec(n * k, 1.0), rng.vec(n, 1.0));
            let (wbytes, wd) = encode_matrix(format, &w, n, k);
            slacks.push(int8_slack(&x, &gain, k, norm, int8, &wd, n));
            wants.push(
                (0..rows * n)
                    .map(|e| {
                        let (r, o) = (e / n, e % n);
                        let dot: f64 = (0..k).map(|i| xs[r * k + i] * wd[o * k + i] as f64).sum();
                        dot + if mm.bias { b[o] as f64 } else { 0.0 }
                    })
                    .collect::<Vec<f64>>(),
            );
            // Weights start on a 16-byte boundary, as the executor places them.
            bufs.push(buffer_at(&gpu, 4 + 4 * m as u32, &wbytes));
            pads.push(4 + 4 * m as u32);
            if mm.bias {
                bufs.push(buffer_at(&gpu, 1, &words(&b)));
                pads.push(1);
            }
            bufs.push(buffer_at(&gpu, 6 + m as u32, &words(&vec![f32::NAN; rows * n])));
            pads.push(6 + m as u32);
        }
        let prologue = norm.map(|(eps, unit_offset)| glsl::NormPrologue { eps, unit_offset });
        let src = glsl::matmul_group(&members, k as u64, prologue, false, path);
        let groups = work(&members, k, rows, path);
        let refs: Vec<&Buffer> = bufs.iter().collect();
        dispatch(&gpu, "matmul_group", &src, &refs, &pads, [rows as u32, 0, 0, 0, 0], groups);
        let mut at = first_member;
        for (m, mm) in members.iter().enumerate() {
            at += 1 + mm.bias as usize;
            let got = read_floats(&bufs[at], pads[at], rows * mm.n as usize);
            let what = format!("matmul_group {format} {path:?} norm {norm:?} rows {rows} member {m}");
            assert_close_slack(&what, &got, &wants[m], tolerance(path, format), slacks[m]);
            at += 1;
        }
    }
}

/// A matmul with the residual add fused behind it: `sum = x W^T (+ b) + res`, the matmul's own result never
/// written; the sum in its own buffer, and in place of the residual (the memory plan may give them one slot).
#[test]
fn matmul_with_a_residual_epilogue() {
    let gpu = gpu();
    let paths = paths(&gpu);
    let mut rng = Rng(0x7f4a_7c15);
    let (k, n) = (96usize, 20usize);
    let cases = [(1, false, false), (11, true, false), (1, true, true), (5, false, true)];
    for (format, path, (rows, bias, in_place)) in
        FORMATS.into_iter().flat_map(|f| paths.clone().into_iter().flat_map(move |p| cases.map(|c| (f, p, c))))
    {
        let (x, w, b, res) = (rng.vec(rows * k, 1.0), rng.vec(n * k, 1.0), rng.vec(n, 1.0), rng.vec(rows * n, 1.0));
        let (wbytes, wd) = encode_matrix(format, &w, n, k);
        let int8 = int8_acts(path, format);
        let xs = operand(&x, &[], k, None, int8);
        let slack = int8_slack(&x, &[], k, None, int8, &wd, n);
        let want: Vec<f64> = (0..rows * n)
            .map(|e| {
                let (r, o) = (e / n, e % n);
                let dot: f64 = (0..k).map(|i| xs[r * k + i] * wd[o * k + i] as f64).sum();
                dot + if bias { b[o] as f64 } else { 0.0 } + res[e] as f64
            })
            .collect();
        let poison = words(&vec![f32::NAN; rows * n]);
        let (xb, wb, bb) =
            (buffer_at(&gpu, 1, &words(&x)), buffer_at(&gpu, 8, &wbytes), buffer_at(&gpu, 3, &words(&b)));
        let (yb, rb) = (buffer_at(&gpu, 4, &poison), buffer_at(&gpu, 5, &words(&res)));
        let sb = buffer_at(&gpu, 6, &poison);
        let out = if in_place { (&rb, 5) } else { (&sb, 6) };
        let mut bufs = vec![&xb, &wb];
        let mut pads = vec![1, 8];
        if bias {
            bufs.push(&bb);
            pads.push(3);
        }
        bufs.extend([&yb, &yb, &rb, out.0]);
        pads.extend([4, 4, 5, out.1]);
        let name = format!("matmul_{format}+add {path:?} rows {rows} bias {bias} in place {in_place}");
        let src = glsl::matmul_group(&[glsl::MatMember { format, bias, n: n as u64 }], k as u64, None, true, path);
        let groups = work(&[glsl::MatMember { format, bias, n: n as u64 }], k, rows, path);
        dispatch(&gpu, &name, &src, &bufs, &pads, [rows as u32, 0, 0, 0, 0], groups);
        assert_close_slack(&name, &read_floats(out.0, out.1, rows * n), &want, tolerance(path, format), slack);
        assert!(read_floats(&yb, 4, rows * n).iter().all(|v| v.is_nan()), "{name}: the matmul's result is not written");
    }
}

/// Gate and up projections with the GLU behind them, on every matmul path (decode's row by row, prefill's
/// tiles, whose halves are gate's and up's): `out = act(x G^T + bg) * (x U^T + bu)`, with and without a norm in
/// front, against the f64 reference; neither projection's result is written. The shapes take one tile and
/// many (ragged), one tile of rows and two.
#[test]
fn gate_and_up_with_the_glu_fused_behind_them() {
    use unicorn_ir::spec::Activation;
    let gpu = gpu();
    let mut rng = Rng(0x6a09_e667);
    let k = 96usize;
    // (A norm and biases together would pass the 12-binding limit; the lowering does not fuse that.)
    let cases = [
        (20usize, 1usize, None, false),
        (4100, 2, Some((1e-6f32, true)), false),
        (9, 11, Some((1e-5, false)), false),
        (33, 3, None, true),
        (150, 70, Some((1e-5, false)), false),
    ];
    let all_paths = paths(&gpu);
    for (case, (path, format, act, (n, rows, norm, bias))) in FORMATS
        .into_iter()
        .flat_map(|f| [Activation::Silu, Activation::GeluTanh].map(|a| (f, a)))
        .flat_map(|(f, a)| cases.map(|c| (f, a, c)))
        .flat_map(|(f, a, c)| all_paths.iter().map(move |&p| (p, f, a, c)))
        .enumerate()
    {
        let (pad_x, pad_g) = operand_pads(case);
        let x = rng.vec(rows * k, 1.0);
        let gain = rng.vec(k, 1.0);
        let int8 = int8_acts(path, format);
        let xs = operand(&x, &gain, k, norm, int8);
        let mut slacks = Vec::new();
        let mut bufs = vec![buffer_at(&gpu, pad_x, &words(&x))];
        let mut pads = vec![pad_x];
        let poison = |len: usize| words(&vec![f32::NAN; len]);
        if norm.is_some() {
            bufs.extend([buffer_at(&gpu, pad_g, &words(&gain)), buffer_at(&gpu, 0, &poison(rows * k))]);
            bufs.push(buffer_at(&gpu, 0, &poison(rows * k)));
            pads.extend([pad_g, 0, 0]);
        }
        let mut proj = Vec::new();
        for m in 0..2 {
            let (w, b) = (rng.vec(n * k, 1.0), rng.vec(n, 1.0));
            let (wbytes, wd) = encode_matrix(format, &w, n, k);
            slacks.push(int8_slack(&x, &gain, k, norm, int8, &wd, n));
            let y: Vec<f64> = (0..rows * n)
                .map(|e| {
                    let (r, o) = (e / n, e % n);
                    (0..k).map(|i| xs[r * k + i] * wd[o * k + i] as f64).sum::<f64>()
                        + if bias { b[o] as f64 } else { 0.0 }
                })
                .collect();
            proj.push(y);
            // Weights start on a 16-byte boundary, as the executor places them.
            bufs.push(buffer_at(&gpu, 4 + 4 * m, &wbytes));
            pads.push(4 + 4 * m);
            if bias {
                bufs.push(buffer_at(&gpu, 1, &words(&b)));
                pads.push(1);
            }
            bufs.push(buffer_at(&gpu, 4, &poison(rows * n)));
            pads.push(4);
        }
        let want: Vec<f64> = proj[0]
            .iter()
            .zip(&proj[1])
            .map(|(&u, &v)| match act {
                Activation::Silu => u / (1.0 + (-u).exp()) * v,
                Activation::GeluTanh => 0.5 * u * (1.0 + (0.7978845608028654 * (u + 0.044715 * u * u * u)).tanh()) * v,
            })
            .collect();
        // The GLU's operands (the two projections' results, never written) and its result.
        bufs.push(buffer_at(&gpu, 4, &poison(rows * n)));
        bufs.push(buffer_at(&gpu, 4, &poison(rows * n)));
        bufs.push(buffer_at(&gpu, 6, &poison(rows * n)));
        pads.extend([4, 4, 6]);
        let members = [0, 1].map(|_| glsl::MatMember { format, bias, n: n as u64 });
        let prologue = norm.map(|(eps, unit_offset)| glsl::NormPrologue { eps, unit_offset });
        let src = glsl::matmul_glu(members, k as u64, prologue, act, path);
        let (tiles, tile_rows) = glsl::glu_work(&members, k as u64, path);
        let groups = [tiles as u32, (rows as u64).div_ceil(tile_rows) as u32, 1];
        let refs: Vec<&Buffer> = bufs.iter().collect();
        let name = format!("matmul2_{format}+glu {path:?} {act:?} n {n} rows {rows} norm {norm:?} bias {bias}");
        dispatch(&gpu, &name, &src, &refs, &pads, [rows as u32, 0, 0, 0, 0], groups);
        let last = bufs.len() - 1;
        // A projection off by s moves act(u) * v by at most 1.2 |v| s (either activation's slope is below 1.2)
        // and by |act(u)| s <= (|u| + 0.3) s.
        let slack = proj[0]
            .iter()
            .zip(&proj[1])
            .map(|(&u, &v)| 1.2 * v.abs() * slacks[0] + (u.abs() + 0.3) * slacks[1] + slacks[0] * slacks[1])
            .fold(0.0, f64::max);
        assert_close_slack(&name, &read_floats(&bufs[last], 6, rows * n), &want, tolerance(path, format), slack);
    }
}

#[test]
fn embed_per_format_reads_the_rows_of_the_tokens() {
    let gpu = gpu();
    let (vocab, k) = (19usize, 64usize);
    let mut rng = Rng(7);
    let tokens = [3u32, 0, 18, 3];
    for format in FORMATS {
        let table = rng.vec(vocab * k, 1.0);
        let (bytes, decoded) = encode_matrix(format, &table, vocab, k);
        let want: Vec<f64> =
            tokens.iter().flat_map(|&t| decoded[t as usize * k..][..k].iter().map(|&v| v as f64 * 1.5)).collect();
        let tb = buffer_at(&gpu, 2, &tokens.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<_>>());
        let wb = buffer_at(&gpu, 4, &bytes);
        let yb = buffer_at(&gpu, 1, &words(&vec![f32::NAN; tokens.len() * k]));
        let src = glsl::embed(format, k as u64, 1.5);
        let groups = [(k as u32).div_ceil(glsl::WIDE), tokens.len() as u32, 1];
        dispatch(&gpu, "embed", &src, &[&tb, &wb, &yb], &[2, 4, 1], [tokens.len() as u32, 0, 0, 0, 0], groups);
        assert_close(&format!("embed_{format}"), &read_floats(&yb, 1, tokens.len() * k), &want, 1e-7);
    }
}

/// The residual add fused behind a whole-row norm: `res + norm(x)` against the f64 reference, with and
/// without the unit offset, the sum in its own buffer and in the residual's place (the memory plan may put it
/// there), the norm's own result never written.
#[test]
fn rms_norm_with_the_residual_add_behind_it() {
    let gpu = gpu();
    let mut rng = Rng(12);
    for (width, unit, in_place) in [(96usize, false, false), (200, true, false), (64, true, true)] {
        let rows = 3;
        let (x, w, res) = (rng.vec(rows * width, 1.0), rng.vec(width, 1.0), rng.vec(rows * width, 2.0));
        let eps = 1e-6f32;
        let want: Vec<f64> = x
            .chunks(width)
            .zip(res.chunks(width))
            .flat_map(|(row, r)| {
                let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / width as f64;
                let inv = 1.0 / (ms + eps as f64).sqrt();
                let g = |wi: f32| wi as f64 + if unit { 1.0 } else { 0.0 };
                row.iter().zip(&w).zip(r).map(move |((&v, &wi), &ri)| ri as f64 + v as f64 * inv * g(wi))
            })
            .collect();
        let xb = buffer_at(&gpu, 3, &words(&x));
        let wb = buffer_at(&gpu, 0, &words(&w));
        let yb = buffer_at(&gpu, 5, &words(&vec![f32::NAN; rows * width]));
        let rb = buffer_at(&gpu, 7, &words(&res));
        let sb = buffer_at(&gpu, 2, &words(&vec![f32::NAN; rows * width]));
        let src = glsl::rms_norm_add(width as u64, eps, unit);
        let sum = if in_place { &rb } else { &sb };
        let pads = [3, 0, 5, 5, 7, if in_place { 7 } else { 2 }];
        let groups = [1, rows as u32, 1];
        dispatch(&gpu, "rms_norm_add", &src, &[&xb, &wb, &yb, &yb, &rb, sum], &pads, [rows as u32, 0, 0, 0, 0], groups);
        let got = read_floats(sum, pads[5], rows * width);
        assert_close(&format!("rms_norm+add {width} unit {unit} in place {in_place}"), &got, &want, 1e-5);
        assert!(read_floats(&yb, 5, rows * width).iter().all(|v| v.is_nan()), "the norm's result is never written");
    }
}

/// Two norms in one launch (a layer's q and k norms: groups of a head over rows of several heads, and other
/// widths, weights and offsets each) against the f64 reference, each as the single norm computes it.
#[test]
fn two_norms_side_by_side() {
    let gpu = gpu();
    let mut rng = Rng(13);
    let reference = |x: &[f32], w: &[f32], g: usize, eps: f32, unit: bool| -> Vec<f64> {
        x.chunks(g)
            .flat_map(|grp| {
                let ms = grp.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / g as f64;
                let inv = 1.0 / (ms + eps as f64).sqrt();
                grp.iter().zip(w).map(move |(&v, &wi)| v as f64 * inv * (wi as f64 + if unit { 1.0 } else { 0.0 }))
            })
            .collect()
    };
    for ((wa, ga, ua), (wb, gb, ub)) in [((128, 32, true), (32, 32, true)), ((96, 16, false), (80, 40, true))] {
        let rows = 3;
        let (xa, xb) = (rng.vec(rows * wa, 1.0), rng.vec(rows * wb, 2.0));
        let (na, nb) = (rng.vec(ga, 1.0), rng.vec(gb, 1.0));
        let (ea, eb) = (1e-6f32, 1e-5f32);
        let bufs = [
            buffer_at(&gpu, 3, &words(&xa)),
            buffer_at(&gpu, 0, &words(&na)),
            buffer_at(&gpu, 9, &words(&vec![f32::NAN; rows * wa])),
            buffer_at(&gpu, 5, &words(&xb)),
            buffer_at(&gpu, 2, &words(&nb)),
            buffer_at(&gpu, 1, &words(&vec![f32::NAN; rows * wb])),
        ];
        let src = glsl::rms_norm_pair((ga as u64, wa as u64, ea, ua), (gb as u64, wb as u64, eb, ub));
        let groups = [(wa / ga + wb / gb) as u32, rows as u32, 1];
        let refs: Vec<&Buffer> = bufs.iter().collect();
        dispatch(&gpu, "rms_norm_pair", &src, &refs, &[3, 0, 9, 5, 2, 1], [rows as u32, 0, 0, 0, 0], groups);
        let what = format!("rms_norm+rms_norm {wa}/{ga} {wb}/{gb}");
        assert_close(&what, &read_floats(&bufs[2], 9, rows * wa), &reference(&xa, &na, ga, ea, ua), 1e-5);
        assert_close(&what, &read_floats(&bufs[5], 1, rows * wb), &reference(&xb, &nb, gb, eb, ub), 1e-5);
    }
}

#[test]
fn rms_norm_over_rows_and_over_heads() {
    let gpu = gpu();
    let mut rng = Rng(11);
    for (width, g, unit) in [(96usize, 96usize, false), (64, 16, true), (200, 200, false)] {
        let rows = 3;
        let (x, w) = (rng.vec(rows * width, 1.0), rng.vec(g, 1.0));
        let eps = 1e-5f32;
        let want: Vec<f64> = x
            .chunks(g)
            .flat_map(|grp| {
                let ms = grp.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / g as f64;
                let inv = 1.0 / (ms + eps as f64).sqrt();
                grp.iter().zip(&w).map(move |(&v, &wi)| v as f64 * inv * (wi as f64 + if unit { 1.0 } else { 0.0 }))
            })
            .collect();
        let xb = buffer_at(&gpu, 3, &words(&x));
        let wb = buffer_at(&gpu, 0, &words(&w));
        let yb = buffer_at(&gpu, 9, &words(&vec![f32::NAN; rows * width]));
        let src = glsl::rms_norm(g as u64, eps, unit);
        let groups = [(width / g) as u32, rows as u32, 1];
        dispatch(&gpu, "rms_norm", &src, &[&xb, &wb, &yb], &[3, 0, 9], [rows as u32, 0, 0, 0, 0], groups);
        assert_close(&format!("rms_norm {width}/{g}"), &read_floats(&yb, 9, rows * width), &want, 1e-5);
    }
}

#[test]
fn rope_rotates_each_head_at_its_position() {
    let gpu = gpu();
    let mut rng = Rng(13);
    let (rows, width, hd, pos) = (3usize, 48usize, 12usize, 37u32);
    let inv: Vec<f32> = (0..hd / 2).map(|i| 10000f32.powf(-(2.0 * i as f32) / hd as f32)).collect();
    // Rows of `width` rotated as the reference does, against f64.
    let reference = |x: &[f32], width: usize| -> Vec<f64> {
        let mut want = vec![0f64; rows * width];
        for r in 0..rows {
            for h in (0..width).step_by(hd) {
                for f in 0..hd / 2 {
                    // The angle in f32, as the reference computes it.
                    let angle = ((pos as usize + r) as f32 * inv[f]) as f64;
                    let (a, b) = (x[r * width + h + f] as f64, x[r * width + h + f + hd / 2] as f64);
                    want[r * width + h + f] = a * angle.cos() - b * angle.sin();
                    want[r * width + h + f + hd / 2] = b * angle.cos() + a * angle.sin();
                }
            }
        }
        want
    };
    let x = rng.vec(rows * width, 1.0);
    let xb = buffer_at(&gpu, 1, &words(&x));
    let yb = buffer_at(&gpu, 2, &words(&vec![f32::NAN; rows * width]));
    let src = glsl::rope(&inv, width as u64, hd as u64);
    let groups = [(width as u32 / 2).div_ceil(glsl::WIDE), rows as u32, 1];
    dispatch(&gpu, "rope", &src, &[&xb, &yb], &[1, 2], [rows as u32, pos, 0, 0, 0], groups);
    let single = read_floats(&yb, 2, rows * width);
    assert_close("rope", &single, &reference(&x, width), 1e-5);

    // q and k in one launch (k narrower: fewer kv heads), each against the reference, and the first bit for
    // bit what it is alone.
    let kw = 24usize;
    let k = rng.vec(rows * kw, 1.0);
    let (kb, kyb) = (buffer_at(&gpu, 3, &words(&k)), buffer_at(&gpu, 4, &words(&vec![f32::NAN; rows * kw])));
    let yb2 = buffer_at(&gpu, 2, &words(&vec![f32::NAN; rows * width]));
    let src = glsl::rope_pair(&inv, width as u64, kw as u64, hd as u64);
    let groups = [((width + kw) as u32 / 2).div_ceil(glsl::WIDE), rows as u32, 1];
    dispatch(&gpu, "rope+rope", &src, &[&xb, &yb2, &kb, &kyb], &[1, 2, 3, 4], [rows as u32, pos, 0, 0, 0], groups);
    let pair_q = read_floats(&yb2, 2, rows * width);
    assert_close("rope+rope q", &pair_q, &reference(&x, width), 1e-5);
    assert_close("rope+rope k", &read_floats(&kyb, 4, rows * kw), &reference(&k, kw), 1e-5);
    assert!(pair_q.iter().zip(&single).all(|(a, b)| a.to_bits() == b.to_bits()), "rope+rope q differs from rope");
}

#[test]
fn elementwise_kernels() {
    let gpu = gpu();
    let mut rng = Rng(17);
    let (rows, width) = (2usize, 150usize);
    for op in
        [Elementwise::Add, Elementwise::GluSilu, Elementwise::GluGeluTanh, Elementwise::Scale, Elementwise::Softcap]
    {
        let (a, b) = (rng.vec(rows * width, 4.0), rng.vec(rows * width, 1.0));
        let c = 2.5f32;
        let want: Vec<f64> = a
            .iter()
            .zip(&b)
            .map(|(&u, &v)| {
                let (u, v, c) = (u as f64, v as f64, c as f64);
                match op {
                    Elementwise::Add => u + v,
                    Elementwise::GluSilu => u / (1.0 + (-u).exp()) * v,
                    Elementwise::GluGeluTanh => {
                        0.5 * u * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (u + 0.044715 * u.powi(3))).tanh()) * v
                    }
                    Elementwise::Scale => u * c,
                    Elementwise::Softcap => c * (u / c).tanh(),
                }
            })
            .collect();
        let ab = buffer_at(&gpu, 1, &words(&a));
        let bb = buffer_at(&gpu, 2, &words(&b));
        let yb = buffer_at(&gpu, 3, &words(&vec![f32::NAN; rows * width]));
        let src = glsl::elementwise(op, width as u64, c);
        let groups = [(width as u32).div_ceil(glsl::WIDE), rows as u32, 1];
        let push = [rows as u32, 0, 0, 0, 0];
        if matches!(op, Elementwise::Scale | Elementwise::Softcap) {
            dispatch(&gpu, op.name(), &src, &[&ab, &yb], &[1, 3], push, groups);
        } else {
            dispatch(&gpu, op.name(), &src, &[&ab, &bb, &yb], &[1, 2, 3], push, groups);
        }
        assert_close(op.name(), &read_floats(&yb, 3, rows * width), &want, 1e-6);
    }
}

#[test]
fn select_rows_keeps_the_last_rows() {
    let gpu = gpu();
    let (rows, keep, width) = (5usize, 2usize, 70usize);
    let x = Rng(19).vec(rows * width, 1.0);
    let want: Vec<f64> = x[(rows - keep) * width..].iter().map(|&v| v as f64).collect();
    let xb = buffer_at(&gpu, 4, &words(&x));
    let yb = buffer_at(&gpu, 6, &words(&vec![f32::NAN; keep * width]));
    let groups = [(width as u32).div_ceil(glsl::WIDE), keep as u32, 1];
    let src = glsl::select_rows(width as u64);
    dispatch(&gpu, "select_rows", &src, &[&xb, &yb], &[4, 6], [rows as u32, 0, keep as u32, 0, 0], groups);
    assert_close("select_rows", &read_floats(&yb, 6, keep * width), &want, 0.0);
}

/// The greedy-token kernel against the host's argmax on rows built to catch each way it could go wrong: random
/// logits (the largest anywhere), the largest in the first and in the last slot, a tie (the first of equals
/// wins, across threads and within one), NaNs (never picked) and a row of -inf (the first slot), at a row
/// offset, for a vocabulary that is no multiple of the workgroup.
#[test]
fn argmax_picks_the_first_largest_logit_of_each_row() {
    let gpu = gpu();
    let v = 1000usize;
    let mut rng = Rng(23);
    let mut rows: Vec<Vec<f32>> = (0..3).map(|_| rng.vec(v, 1.0)).collect();
    rows[1][0] = 5.0;
    rows[2][v - 1] = 5.0;
    let mut tie = rng.vec(v, 1.0);
    for i in [700, 300, 301, 555] {
        tie[i] = 9.0;
    }
    rows.push(tie);
    let mut nan = rng.vec(v, 1.0);
    nan[0] = f32::NAN;
    nan[10] = f32::NAN;
    nan[400] = 3.0;
    rows.push(nan);
    rows.push(vec![f32::NEG_INFINITY; v]);
    let want: Vec<u32> = vec![unicorn_runtime::sampler::argmax(&rows[0]), 0, v as u32 - 1, 300, 400, 0];
    assert_eq!(want[0], unicorn_runtime::sampler::argmax(&rows[0]));
    assert_eq!(&want[1..4], [1, 2, 3].map(|r| unicorn_runtime::sampler::argmax(&rows[r])));
    let flat: Vec<f32> = rows.concat();
    let n = rows.len();
    let mut xb = buffer_at(&gpu, 3, &words(&flat));
    // The ids (unwritten: all ones), then the scratch (zero, as the executor leaves it), at an offset.
    let scratch = n * glsl::argmax_scratch_words() as usize;
    let mut init = vec![0xffu8; n * 4];
    init.extend(vec![0u8; scratch * 4]);
    let ib = buffer_at(&gpu, 2, &init);
    let src = glsl::argmax(v as u64);
    let groups = [glsl::ARGMAX_GROUPS, n as u32, 1];
    let ids = |ib: &Buffer| -> Vec<u32> {
        ib.read(8, (n + scratch) as u64 * 4)
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    dispatch(&gpu, "argmax", &src, &[&xb, &ib], &[3, 2], [n as u32, 0, 0, n as u32, 0], groups);
    let got = ids(&ib);
    assert_eq!(got[..n], want);
    // Every counter is back to zero, so a second launch over other logits is right too.
    let counters: Vec<u32> = (0..n).map(|r| got[n + (r + 1) * glsl::argmax_scratch_words() as usize - 1]).collect();
    assert_eq!(counters, vec![0; n]);
    let mut again = flat.clone();
    again.rotate_left(v);
    let want2: Vec<u32> = (0..n).map(|r| want[(r + 1) % n]).collect();
    xb.write(3 * 4, &words(&again)).unwrap();
    dispatch(&gpu, "argmax", &src, &[&xb, &ib], &[3, 2], [n as u32, 0, 0, n as u32, 0], groups);
    assert_eq!(ids(&ib)[..n], want2);
}

/// The top-k kernel against the host's selection (`sampler::top_k`, the order the sampler relies on), exactly:
/// rows of many ties (values on a coarse grid, so equal logits straddle workgroups and the cut at k), NaNs
/// (never picked), a row of fewer numbers than k (the rest none), and the largest k, over a vocabulary of
/// several workgroups that is no multiple of one, at row and buffer offsets; then a second launch, every
/// counter having been reset.
#[test]
fn top_k_picks_what_the_sampler_would_pick_from_the_row() {
    use unicorn_runtime::sampler::top_k;
    let gpu = gpu();
    let v = 9000usize;
    let mut rng = Rng(41);
    let mut rows: Vec<Vec<f32>> =
        (0..3).map(|_| rng.vec(v, 1.0).iter().map(|x| (x * 8.0).round() / 4.0).collect()).collect();
    rows[1][5] = f32::NAN;
    rows[1][4100] = f32::INFINITY;
    rows[2][8999] = 9.0;
    let mut few = vec![f32::NAN; v];
    for i in [3, 4095, 4096, 8191, 8192] {
        few[i] = i as f32;
    }
    rows.push(few);
    rows.push(rng.vec(v, 1.0));
    let n = rows.len();
    let flat: Vec<f32> = rows.concat();
    let mut xb = buffer_at(&gpu, 3, &words(&flat));
    let res_words = glsl::TOP_K_WORDS as usize;
    let scratch_words = glsl::top_k_scratch_words(v as u64) as usize;
    let rb = buffer_at(&gpu, 5, &vec![0u8; n * res_words * 4]);
    let sb = buffer_at(&gpu, 7, &vec![0u8; n * scratch_words * 4]);
    let src = glsl::top_k(v as u64);
    let groups = [glsl::top_k_groups(v as u64) as u32, n as u32, 1];
    assert_eq!(groups[0], 3);
    let check = |xb: &Buffer, rows: &[Vec<f32>], k: usize| {
        dispatch(&gpu, "top_k", &src, &[xb, &rb, &sb], &[3, 5, 7], [n as u32, 0, k as u32, 0, 0], groups);
        let got: Vec<u32> = rb
            .read(5 * 4, (n * res_words) as u64 * 4)
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let mut want = Vec::new();
        for (r, row) in rows.iter().enumerate() {
            top_k(row, k, &mut want);
            let picks: Vec<(u32, u32)> = got[r * res_words..][..2 * k].chunks(2).map(|p| (p[0], p[1])).collect();
            for (i, p) in picks.iter().enumerate() {
                match want.get(i) {
                    Some(&(l, id)) => assert_eq!(*p, (l.to_bits(), id), "row {r}, k {k}, pick {i}"),
                    None => assert_eq!(p.1, u32::MAX, "row {r}, k {k}, pick {i}: past the row's numbers"),
                }
            }
        }
        let counters: Vec<u32> = sb
            .read(7 * 4, (n * scratch_words) as u64 * 4)
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .skip(scratch_words - 1)
            .step_by(scratch_words)
            .collect();
        assert_eq!(counters, vec![0; n], "counters left at zero");
    };
    for k in [1, 7, 40, glsl::MAX_TOP_K as usize] {
        check(&xb, &rows, k);
    }
    rows.rotate_left(1);
    xb.write(3 * 4, &words(&rows.concat())).unwrap();
    check(&xb, &rows, 40);
}

/// Attention of `rows` new rows at `pos` over a ring cache of `cap` slots holding positions `..pos`, then the
/// append pass: the outputs against an f64 softmax over the visible positions, and the cache's new slots
/// against the rows' keys and values.
fn check_attention(kv_f16: bool, shape: AttentionShape, rows: usize, pos: usize, cap: usize, seed: u64) {
    check_attention_split(kv_f16, shape, rows, pos, cap, 0, seed)
}

fn check_attention_split(
    kv_f16: bool,
    shape: AttentionShape,
    rows: usize,
    pos: usize,
    cap: usize,
    splits: u32,
    seed: u64,
) {
    for subgroup in subgroup_variants() {
        check_attention_with(kv_f16, shape, rows, pos, cap, splits, None, subgroup, seed)
    }
}

/// Attention both ways where the device has subgroup shuffles: portable (0), and over subgroups of its size
/// (prefill's blocked pass 0; the split pass's scores and maxima met by shuffles).
fn subgroup_variants() -> Vec<u32> {
    let profile = gpu().info().profile();
    let sg = if profile.subgroup_shuffle { profile.subgroup_size } else { 0 };
    if sg > 0 {
        vec![0, sg]
    } else {
        vec![0]
    }
}

/// Rows of `width` rotate-half rotated to positions `pos..`, in f32 as the reference (and the kernels) do.
fn rotate(x: &[f32], width: usize, hd: usize, pos: usize, inv: &[f32]) -> Vec<f32> {
    let mut y = x.to_vec();
    for (r, row) in y.chunks_mut(width).enumerate() {
        let src = &x[r * width..(r + 1) * width];
        for h in (0..width).step_by(hd) {
            for f in 0..hd / 2 {
                let angle = (pos + r) as f32 * inv[f];
                let (c, sn) = (angle.cos(), angle.sin());
                let (a, b) = (src[h + f], src[h + f + hd / 2]);
                row[h + f] = a * c - b * sn;
                row[h + f + hd / 2] = b * c + a * sn;
            }
        }
    }
    y
}

/// [`check_attention`] of one row through the split passes when `splits > 0`: pass 2 over `splits` key ranges
/// (appending the row), which with more than one range also combines them (the partials after the cache in
/// its binding). With `rope` (an inverse-frequency table), the RoPE-fused kernel gets q and k unrotated, and
/// the reference rotates them first (the cache must hold the rotated key). `subgroup` is the subgroup size the
/// kernel is generated for (0: no shuffles).
#[allow(clippy::too_many_arguments)]
fn check_attention_with(
    kv_f16: bool,
    shape: AttentionShape,
    rows: usize,
    pos: usize,
    cap: usize,
    splits: u32,
    rope: Option<&[f32]>,
    subgroup: u32,
    seed: u64,
) {
    let gpu = gpu();
    let mut rng = Rng(seed);
    let (h, kvh, hd) = (shape.heads as usize, shape.kv_heads as usize, shape.head_dim as usize);
    let q_in = rng.vec(rows * h * hd, 1.0);
    let (k_in, v) = (rng.vec(rows * kvh * hd, 1.0), rng.vec(rows * kvh * hd, 1.0));
    // What attention itself sees: q and k rotated where the kernel rotates them.
    let (q, k) = match rope {
        Some(inv) => (rotate(&q_in, h * hd, hd, pos, inv), rotate(&k_in, kvh * hd, hd, pos, inv)),
        None => (q_in.clone(), k_in.clone()),
    };
    // The cache as stored, and as the kernel reads it back (f16 rounds each value).
    let round = |x: f32| if kv_f16 { half_round(x) } else { x };
    let cache: Vec<f32> = rng.vec(2 * kvh * cap * hd, 1.0).into_iter().map(round).collect();
    let cache_bytes: Vec<u8> = if kv_f16 {
        cache.chunks(2).flat_map(|p| pack_half2(p[0], p[1]).to_le_bytes()).collect()
    } else {
        words(&cache)
    };
    let vals = kvh * cap * hd;
    let mut want = vec![0f64; rows * h * hd];
    for r in 0..rows {
        let p = pos + r;
        let first = shape.window.map_or(0, |w| (p + 1).saturating_sub(w as usize));
        for head in 0..h {
            let g = head / (h / kvh);
            let key = |j: usize, d: usize, value: bool| -> f64 {
                if j < pos {
                    cache[if value { vals } else { 0 } + (g * cap + j % cap) * hd + d] as f64
                } else {
                    (if value { &v } else { &k })[(j - pos) * kvh * hd + g * hd + d] as f64
                }
            };
            let scores: Vec<f64> = (first..=p)
                .map(|j| (0..hd).map(|d| q[(r * h + head) * hd + d] as f64 * key(j, d, false)).sum::<f64>())
                .map(|s| s * shape.scale as f64)
                .collect();
            let m = scores.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let l: f64 = e.iter().sum();
            for d in 0..hd {
                want[(r * h + head) * hd + d] = (first..=p).zip(&e).map(|(j, &w)| w * key(j, d, true)).sum::<f64>() / l;
            }
        }
    }
    let (qb, kb, vb) =
        (buffer_at(&gpu, 1, &words(&q_in)), buffer_at(&gpu, 2, &words(&k_in)), buffer_at(&gpu, 3, &words(&v)));
    // Room for the split partials after the cache, poisoned so that a partial read before it is written shows.
    let mut with_scratch = cache_bytes.clone();
    // The partials of the largest launch, then the heads' counters (zero, as the cache is allocated).
    with_scratch.extend(words(&vec![f32::NAN; rows * h * glsl::ATTN_MAX_SPLITS as usize * (hd + 2)]));
    with_scratch.extend(vec![0u8; rows * h * 4]);
    let cb = buffer_at(&gpu, 4, &with_scratch);
    let yb = buffer_at(&gpu, 5, &words(&vec![f32::NAN; rows * h * hd]));
    let unused = buffer_at(&gpu, 0, &[0; 4]);
    let (src, bufs, pads) = match rope {
        Some(inv) => (
            glsl::rope_attention(kv_f16, shape, inv, subgroup),
            vec![&qb, &unused, &kb, &unused, &unused, &unused, &vb, &cb, &yb],
            vec![1, 0, 2, 0, 0, 0, 3, 4, 5],
        ),
        None => (glsl::attention(kv_f16, shape, subgroup), vec![&qb, &kb, &vb, &cb, &yb], vec![1, 2, 3, 4, 5]),
    };
    let name = format!(
        "attention {h}x{hd} over {kvh} kv_f16={kv_f16} window={:?} splits={splits} rope={} subgroup={subgroup} \
         rows={rows} pos={pos}",
        shape.window,
        rope.is_some()
    );
    let (r32, p32, c32) = (rows as u32, pos as u32, cap as u32);
    if splits > 0 {
        // One row: the ranges' pass appends it too.
        assert_eq!(rows, 1);
        dispatch(&gpu, &name, &src, &bufs, &pads, [r32, p32, splits, c32, 2], [h as u32, r32, splits]);
        // The last range of each head combined them and left its counter at zero.
        let at = 16 + cache_bytes.len() as u64 + (rows * h * glsl::ATTN_MAX_SPLITS as usize * (hd + 2)) as u64 * 4;
        let counters = cb.read(at, (rows * h * 4) as u64);
        assert!(counters.iter().all(|&b| b == 0), "{name}: a head's range counter is left nonzero");
    } else {
        let tiles = r32.div_ceil(glsl::attention_tile_rows(shape, subgroup));
        dispatch(&gpu, &name, &src, &bufs, &pads, [r32, p32, 0, c32, 0], [h as u32, tiles, 1]);
    }
    // Rotating on the GPU, q and k carry its cos and sin of angles up to the position in radians (5000 below),
    // whose error grows with the angle on NVIDIA's driver (6e-5 of max |y| measured there at position 5000).
    let tol = if rope.is_some() { 2e-4 } else { 1e-5 };
    assert_close(&name, &read_floats(&yb, 5, rows * h * hd), &want, tol);
    if splits == 0 {
        let groups = [((kvh * hd / 2) as u32).div_ceil(glsl::WIDE), rows as u32, 1];
        dispatch(&gpu, &name, &src, &bufs, &pads, [rows as u32, pos as u32, 0, cap as u32, 1], groups);
    }
    let stored = cb.read(16, cache_bytes.len() as u64);
    let stored: Vec<f32> = if kv_f16 {
        stored.chunks(4).flat_map(|c| unpack_half2(u32::from_le_bytes(c.try_into().unwrap()))).collect()
    } else {
        floats(&stored)
    };
    // Rows a later row of the ring overwrites (more rows than slots) are not stored.
    for r in rows.saturating_sub(cap)..rows {
        let slot = (pos + r) % cap;
        for g in 0..kvh {
            for d in 0..hd {
                let at = (g * cap + slot) * hd + d;
                let src_at = r * kvh * hd + g * hd + d;
                if rope.is_some() {
                    // The key rotated on the GPU, whose cos and sin of a large angle (position 600 of the
                    // fastest frequency is 600 radians) are good to about 5e-5 on NVIDIA's driver, not to the
                    // host's last bit.
                    let tol = if kv_f16 { 2e-3 } else { 1e-4 } * (1.0 + k[src_at].abs());
                    let err = (stored[at] - k[src_at]).abs();
                    assert!(err <= tol, "{name}: rotated key of row {r}, kv head {g}, dim {d}: off by {err}");
                } else {
                    assert_eq!(stored[at], round(k[src_at]), "{name}: key of row {r}, kv head {g}, dim {d}");
                }
                assert_eq!(stored[vals + at], round(v[src_at]), "{name}: value of row {r}, kv head {g}, dim {d}");
            }
        }
    }
}

fn half_round(x: f32) -> f32 {
    unpack_half2(pack_half2(x, 0.0))[0]
}

fn pack_half2(a: f32, b: f32) -> u32 {
    let h = |x: f32| half_bits(x) as u32;
    h(a) | (h(b) << 16)
}

fn unpack_half2(w: u32) -> [f32; 2] {
    [half_to_f32(w as u16), half_to_f32((w >> 16) as u16)]
}

/// f16 through the plan writer's encoder and the reference decoder (round to nearest even).
fn half_bits(x: f32) -> u16 {
    let mut b = Vec::new();
    encode_row(WeightFormat::F16, &[x], &mut b);
    u16::from_le_bytes([b[0], b[1]])
}

fn half_to_f32(h: u16) -> f32 {
    let mut v = [0f32];
    decode_row(WeightFormat::F16, &h.to_le_bytes(), &mut v);
    v[0]
}

const GQA: AttentionShape = AttentionShape { heads: 4, kv_heads: 2, head_dim: 16, window: None, scale: 0.25 };

#[test]
fn attention_over_cache_and_rows_then_append() {
    // A prefill chunk after earlier positions, in a ring that has wrapped (positions 0..13 in 16 slots is not
    // wrapped; 0..21 in 24 is not either), so the window cases below wrap it.
    check_attention(false, GQA, 3, 13, 16, 1);
    check_attention(true, GQA, 3, 13, 16, 2);
    check_attention(false, AttentionShape { head_dim: 80, heads: 2, kv_heads: 1, ..GQA }, 1, 9, 10, 3);
    // Partial chunks: a decode row over 150 cached positions, prefill rows, a head of 256 dimensions
    // (Gemma 3), four per thread.
    check_attention(false, GQA, 1, 150, 160, 7);
    check_attention(true, GQA, 5, 61, 70, 8);
    check_attention(false, AttentionShape { head_dim: 256, heads: 2, kv_heads: 2, ..GQA }, 2, 70, 80, 9);
    // Chunks of 256 keys: a decode row over 600 cached positions (three chunks, each quarter of one folded in
    // by its own thread group), and prefill rows across a chunk boundary with a 128-dimension head.
    check_attention(true, GQA, 1, 600, 640, 10);
    check_attention(false, AttentionShape { head_dim: 128, heads: 4, kv_heads: 1, ..GQA }, 3, 254, 260, 11);
    // Tiles of 16 query rows: two, the second partial, after a few cached positions; three from position 0
    // (a prompt's first chunk), whose keys all come from the execution's own rows; an odd head dimension
    // share per thread (80 over 16 threads).
    check_attention(true, GQA, 20, 7, 40, 12);
    check_attention(false, GQA, 40, 0, 48, 13);
    check_attention(false, AttentionShape { head_dim: 80, heads: 2, kv_heads: 1, ..GQA }, 17, 3, 24, 14);
    // Tiles of the blocked pass (64 rows of a 64-dimension head, 32 of a 128, 128 of a 16): several, the
    // last partial, and a window shorter than a tile over a wrapped ring.
    let hd64 = AttentionShape { head_dim: 64, heads: 4, kv_heads: 2, scale: 0.125, window: None };
    check_attention(true, hd64, 70, 5, 80, 16);
    check_attention(false, AttentionShape { head_dim: 128, heads: 2, kv_heads: 1, ..hd64 }, 40, 0, 48, 17);
    check_attention(false, GQA, 130, 0, 136, 18);
    check_attention(true, AttentionShape { window: Some(20), ..hd64 }, 70, 10, 20, 19);
}

#[test]
fn split_key_attention_of_decode_rows() {
    // A decode row over 600 cached positions in 10 ranges (each range more than one chunk of 64 keys), f32 and
    // f16 caches; more ranges than keys (empty ranges weigh nothing); heads of 80 dimensions (40 pairs: six
    // subsets of keys, 16 threads idle) and 256 (Gemma 3); a window over a wrapped ring; rows past the first.
    check_attention_split(false, GQA, 1, 600, 640, 10, 20);
    check_attention_split(true, GQA, 1, 600, 640, 4, 21);
    check_attention_split(false, GQA, 1, 4, 8, 8, 22);
    check_attention_split(true, AttentionShape { head_dim: 80, heads: 2, kv_heads: 1, ..GQA }, 1, 130, 140, 3, 23);
    check_attention_split(false, AttentionShape { head_dim: 256, heads: 2, kv_heads: 2, ..GQA }, 1, 200, 210, 2, 24);
    check_attention_split(false, AttentionShape { window: Some(6), ..GQA }, 1, 30, 6, 2, 25);
    check_attention_split(true, AttentionShape { window: Some(100), ..GQA }, 1, 300, 100, 5, 26);
    // One range: the split pass writes the result itself; and the first position of a sequence.
    check_attention_split(false, GQA, 1, 40, 48, 1, 27);
    check_attention_split(true, GQA, 1, 0, 8, 1, 28);
}

#[test]
fn rope_fused_decode_attention_rotates_q_and_k_as_it_reads_them() {
    let inv = |hd: usize| -> Vec<f32> { (0..hd / 2).map(|i| 10000f32.powf(-(2.0 * i as f32) / hd as f32)).collect() };
    for sg in subgroup_variants() {
        rope_fused_cases(&inv, sg);
    }
}

fn rope_fused_cases(inv: &dyn Fn(usize) -> Vec<f32>, sg: u32) {
    // Several ranges and one, f32 and f16 caches, a far position (large angles), a head of 256 dimensions, a
    // window over a wrapped ring, and position 0 (the row's own key alone).
    check_attention_with(false, GQA, 1, 600, 640, 10, Some(&inv(16)), sg, 30);
    check_attention_with(true, GQA, 1, 5000, 5008, 4, Some(&inv(16)), sg, 31);
    check_attention_with(false, GQA, 1, 40, 48, 1, Some(&inv(16)), sg, 32);
    let wide = AttentionShape { head_dim: 256, heads: 2, kv_heads: 2, ..GQA };
    check_attention_with(true, wide, 1, 200, 210, 2, Some(&inv(256)), sg, 33);
    check_attention_with(false, AttentionShape { window: Some(6), ..GQA }, 1, 30, 6, 2, Some(&inv(16)), sg, 34);
    check_attention_with(true, GQA, 1, 0, 8, 1, Some(&inv(16)), sg, 35);
}

#[test]
fn attention_splits_follow_the_keys() {
    use unicorn_ir::plan::vulkan_abi::{attention_splits, ATTN_MAX_SPLITS};
    assert_eq!(attention_splits(1, 0, None), Some(1));
    assert_eq!(attention_splits(1, 63, None), Some(1));
    assert_eq!(attention_splits(1, 64, None), Some(2));
    assert_eq!(attention_splits(1, 600, None), Some(10));
    assert_eq!(attention_splits(1, 600, Some(128)), Some(2));
    assert_eq!(attention_splits(1, 1 << 20, None), Some(ATTN_MAX_SPLITS));
    // Prefill rows take the unsplit passes.
    assert_eq!(attention_splits(2, 600, None), None);
}

#[test]
fn windowed_attention_over_a_wrapped_ring() {
    // Window 6 in a ring of 6 slots: positions 11.. overwrite slots the earlier rows of the chunk still read
    // from the cache in pass 0, which is why appending is a second pass.
    let w = AttentionShape { window: Some(6), ..GQA };
    check_attention(false, w, 4, 11, 6, 4);
    check_attention(true, w, 4, 11, 6, 5);
    check_attention(false, w, 1, 30, 6, 6);
    // A window shorter than a tile: each of its 16 rows sees its own 6 keys, the tile together 21.
    check_attention(true, w, 19, 3, 6, 15);
}

/// A row's result does not depend on the rows launched with it: every row of a launch of one repeated row has
/// the bits of that row launched alone, on every path, with and without a fused norm, across tiles. (A batch
/// of sequences must give each the bits it gets alone: one flipped int8 quant moves a logit by 1%.)
#[test]
fn a_row_gets_the_same_bits_wherever_it_sits_in_the_launch() {
    let gpu = gpu();
    let paths = paths(&gpu);
    let mut rng = Rng(0x1234_5679);
    let (k, n) = (96usize, 20usize);
    for (format, path) in FORMATS.into_iter().flat_map(|f| paths.iter().map(move |&p| (f, p))) {
        for prologue in [None, Some(glsl::NormPrologue { eps: 1e-6, unit_offset: false })] {
            let (x1, gain, w) = (rng.vec(k, 1.0), rng.vec(k, 1.0), rng.vec(n * k, 1.0));
            let (wbytes, _) = encode_matrix(format, &w, n, k);
            let members = [glsl::MatMember { format, bias: false, n: n as u64 }];
            let src = glsl::matmul_group(&members, k as u64, prologue, false, path);
            let run = |rows: usize| {
                let x: Vec<f32> = (0..rows).flat_map(|_| x1.iter().copied()).collect();
                let mut bufs = vec![buffer_at(&gpu, 2, &words(&x))];
                if prologue.is_some() {
                    bufs.push(buffer_at(&gpu, 5, &words(&gain)));
                    bufs.push(buffer_at(&gpu, 0, &words(&vec![f32::NAN; rows * k])));
                    bufs.push(buffer_at(&gpu, 0, &words(&vec![f32::NAN; rows * k])));
                }
                bufs.push(buffer_at(&gpu, 4, &wbytes));
                bufs.push(buffer_at(&gpu, 6, &words(&vec![f32::NAN; rows * n])));
                let pads: &[u32] = if prologue.is_some() { &[2, 5, 0, 0, 4, 6] } else { &[2, 4, 6] };
                let refs: Vec<&Buffer> = bufs.iter().collect();
                let groups = work(&members, k, rows, path);
                dispatch(&gpu, "matmul_group", &src, &refs, pads, [rows as u32, 0, 0, 0, 0], groups);
                read_floats(bufs.last().unwrap(), 6, rows * n)
            };
            let alone = run(1);
            assert!(alone.iter().all(|v| v.is_finite()), "{format} {path:?}: unwritten outputs");
            for rows in [3, 137] {
                let got = run(rows);
                for (r, row) in got.chunks(n).enumerate() {
                    let same = row.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{format} {path:?} norm {}: row {r} of {rows} differs from the row alone",
                        prologue.is_some()
                    );
                }
            }
        }
    }
}

/// A buffer the device cannot hold is one line that says how much one buffer needed, and the device stays
/// usable after it (nothing half-made is left bound).
#[test]
fn a_buffer_past_the_device_memory_names_its_size() {
    use unicorn_runtime::vulkan::hal::Place;
    let gpu = gpu();
    let err = gpu.buffer_in(1 << 42, Place::Device).err().expect("4 TiB does not fit");
    assert!(err.contains("out of device memory") && err.contains("4194304"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let b = gpu.buffer_in(1 << 20, Place::Device).expect("a MiB still fits");
    assert_eq!(floats(&b.fetch(0, 16).unwrap()), [0.0; 4], "zeroed");
}

/// A device buffer the host does not map (a discrete GPU's video memory) holds what is written to it through
/// staging copies, across the staging buffer's 64 MiB chunks and at odd word offsets, and reads back the same.
#[test]
fn unmapped_device_buffers_hold_what_staging_copies_write() {
    use unicorn_runtime::vulkan::hal::Place;
    let gpu = gpu();
    gpu.stage_device_buffers(true);
    let len = (64u64 << 20) + 12;
    let mut b = gpu.buffer_in(len + 8, Place::Device).unwrap();
    assert!(!b.mapped());
    assert_eq!(b.fetch(len, 8).unwrap(), [0; 8], "zeroed");
    let mut rng = Rng(7);
    let data: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
    b.write(4, &data).unwrap();
    let back = b.fetch(0, len + 8).unwrap();
    assert_eq!(back[..4], [0; 4]);
    assert!(back[4..4 + len as usize] == data[..], "the bytes written");
    assert_eq!(back[4 + len as usize..], [0; 4]);
    assert_eq!(b.fetch(4 + (64 << 20), 12).unwrap(), data[64 << 20..], "a read that starts past a chunk");
    // Buffers made afterwards take the device's own placement again: mapped where the GPU shares the host's
    // memory (lavapipe), not on a discrete GPU.
    gpu.stage_device_buffers(false);
    let shared = !matches!(gpu.info().kind, "discrete" | "virtual");
    assert_eq!(gpu.buffer_in(64, Place::Device).unwrap().mapped(), shared, "{}", gpu.info().kind);
}
