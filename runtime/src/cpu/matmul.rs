//! Matrix multiplication against plan weights: `y = x W^T (+ bias)`, the hot path of every token.
//!
//! The work is cut into tiles of `R` activation rows by `C` weight rows; a tile computes its `R x C` dot products
//! along a stretch of `k` (see [`super::matmul_avx2`]). Decode (`rows == 1`) is a memory-bound GEMV: tiles are
//! one or two groups of weight rows, as many sequential streams, prefetched ahead or not, by the CPU's vendor
//! ([`DecodeStreams`]), and `n` is split into contiguous column chunks, a few per thread, so each weight byte is
//! streamed once. Prefill uses `4 x 3` tiles, so every weight vector loaded serves four
//! tokens; a task walks `k` in blocks (a tile's operands stay in L1) and its activation rows in blocks sized for
//! L2, so its weights are read from memory once per call, not once per token.
//!
//! q8_0/q4_0 quantize the activations to q8 blocks first ([`super::q8`], once per call, into the [`Scratch`]),
//! then multiply int8 by int8 as llama.cpp does. Float formats convert the weights to f32 on the fly. Every sum
//! accumulates in f32. Kernels are chosen per call from [`Isa`]: portable Rust, AVX2 + FMA + F16C, or for the
//! int8 formats AVX-512 VNNI on 256-bit vectors or on 512-bit ones.
//!
//! q4_0 / q8_0 matrices are always stored [`WeightLayout::Interleaved8`] (the compiler pads the rows to whole
//! groups of 8 with zero rows) and go through the same driver with tiles 8 weight rows wide
//! ([`super::matmul_x8`]): a GEMV tile is one group of 8 rows, a prefill tile 4 tokens x 8 rows; the last group
//! of a matrix whose `n` is not a multiple of 8 stores only its real rows.
//!
//! Weight data needs no alignment (q8_0 blocks are 34 bytes, so nothing inside a tensor is aligned anyway).

use super::isa::{DecodeStreams, Isa};
use super::pool;
use super::q8::Q8Acts;
use unicorn_ir::quant::{decode_row, deinterleave_row, source_to_f32, SourceDType, WeightLayout, INTERLEAVE};
use unicorn_ir::types::{WeightFormat, QK};

/// A weight matrix W stored [n, k] (n output rows of k inputs), in the plan's format.
#[derive(Clone, Copy)]
pub struct WeightRef<'a> {
    pub format: WeightFormat,
    /// Row arrangement: [`WeightLayout::Rows`] for the float formats, [`WeightLayout::Interleaved8`] (rows padded
    /// to whole groups) for q4_0 / q8_0, multiplied by [`super::matmul_x8`].
    pub layout: WeightLayout,
    pub n: usize,
    pub k: usize,
    pub data: &'a [u8],
}

impl WeightRef<'_> {
    /// Bytes of one stored row. Panics if `k` is not a whole number of blocks.
    pub fn row_bytes(&self) -> usize {
        self.format
            .row_bytes(self.k)
            .unwrap_or_else(|| panic!("{} matrix: k = {} is not whole blocks", self.format, self.k))
    }
}

/// Reusable per-call scratch (the quantized or repacked activations), so that steady-state calls allocate nothing.
#[derive(Default)]
pub struct Scratch {
    q8: Q8Acts,
    /// f32 activations of a prefill, with rows padded apart (see [`padded_stride`]).
    xf: Vec<f32>,
}

/// `y[r*n + j] = sum_i x[r*k + i] * W[j, i] (+ bias[j])` for `r in 0..rows`. `x`: `rows*k`, `y`: `rows*n`.
/// Multi-threaded on the worker pool ([`super::pool`]). Accumulates in f32. Panics if the lengths disagree.
pub fn matmul(x: &[f32], rows: usize, w: WeightRef, bias: Option<&[f32]>, y: &mut [f32], scratch: &mut Scratch) {
    matmul_with(Isa::detect(), x, rows, w, bias, y, scratch)
}

/// Dequantize row `row` of W into `out` (len k) — used for embedding lookups.
pub fn dequant_row(w: WeightRef, row: usize, out: &mut [f32]) {
    assert!(row < w.n, "row {row} of a {}-row matrix", w.n);
    assert_eq!(out.len(), w.k);
    let rb = w.row_bytes();
    match w.layout {
        WeightLayout::Rows => decode_row(w.format, &w.data[row * rb..(row + 1) * rb], out),
        WeightLayout::Interleaved8 => {
            let (g, r) = (row / INTERLEAVE, row % INTERLEAVE);
            let mut bytes = Vec::with_capacity(rb);
            deinterleave_row(w.format, w.k, &w.data[g * INTERLEAVE * rb..(g + 1) * INTERLEAVE * rb], r, &mut bytes);
            decode_row(w.format, &bytes, out);
        }
    }
}

/// One matrix of a [`matmul_many`] call: `y = x W^T (+ bias)`.
pub struct MatMulOut<'w, 'y> {
    pub w: WeightRef<'w>,
    pub bias: Option<&'w [f32]>,
    pub y: &'y mut [f32],
}

/// Most matrices one [`matmul_many`] call takes.
pub const MAX_FUSED: usize = 4;

/// Several matmuls of the same activations (a layer's q/k/v projections; gate and up) as one call: `x` is
/// quantized once, and one parallel loop runs the tasks of every matrix, so the threads meet once at the end
/// instead of once per matrix, and none waits at the end of one matrix while another finishes its last chunk.
/// The matrices must agree on `k` and on whether their format is quantized. At most [`MAX_FUSED`] matrices.
pub fn matmul_many(x: &[f32], rows: usize, outs: &mut [MatMulOut], scratch: &mut Scratch) {
    matmul_tiled(Isa::detect(), DecodeStreams::detect(), None, x, rows, outs, scratch)
}

/// [`matmul`] with the kernel family chosen by the caller (tests and benchmarks compare them).
/// Panics if this CPU cannot run `isa`.
pub fn matmul_with(
    isa: Isa,
    x: &[f32],
    rows: usize,
    w: WeightRef,
    bias: Option<&[f32]>,
    y: &mut [f32],
    scratch: &mut Scratch,
) {
    matmul_with_streams(isa, DecodeStreams::detect(), x, rows, w, bias, y, scratch)
}

/// [`matmul_with`] with how a decode GEMV streams its weights chosen by the caller too (tests compare them).
#[allow(clippy::too_many_arguments)]
pub fn matmul_with_streams(
    isa: Isa,
    streams: DecodeStreams,
    x: &[f32],
    rows: usize,
    w: WeightRef,
    bias: Option<&[f32]>,
    y: &mut [f32],
    scratch: &mut Scratch,
) {
    matmul_tiled(isa, streams, None, x, rows, &mut [MatMulOut { w, bias, y }], scratch)
}

/// [`matmul_with`] with the tile shape fixed by the caller, for tuning (`runtime/benches/matmul.rs`):
/// `(activation rows, weight rows)`, each 1..=4; for interleaved matrices the weight side counts groups of 8, up
/// to what the family's tiles take (2 on 512-bit vectors, else 1). Panics on other shapes.
pub fn matmul_with_tile(
    isa: Isa,
    tile: (usize, usize),
    x: &[f32],
    rows: usize,
    w: WeightRef,
    y: &mut [f32],
    scratch: &mut Scratch,
) {
    matmul_tiled(isa, DecodeStreams::detect(), Some(tile), x, rows, &mut [MatMulOut { w, bias: None, y }], scratch)
}

/// The driver behind every matmul entry point, with the tile shape (activation rows x weight rows, each 1..=4)
/// optionally chosen by the caller.
fn matmul_tiled(
    isa: Isa,
    streams: DecodeStreams,
    tile: Option<(usize, usize)>,
    x: &[f32],
    rows: usize,
    outs: &mut [MatMulOut],
    scratch: &mut Scratch,
) {
    assert!(isa.available(), "this CPU cannot run the {} kernels", isa.name());
    assert!((1..=MAX_FUSED).contains(&outs.len()), "matmul of {} matrices at once", outs.len());
    let (k, quantized) = (outs[0].w.k, outs[0].w.format.is_quantized());
    assert_eq!(x.len(), rows * k, "matmul: x is not rows x k = {rows} x {k}");
    for o in outs.iter() {
        let WeightRef { format, layout, n, .. } = o.w;
        assert!(o.w.k == k && format.is_quantized() == quantized, "fused matmuls disagree on k or format kind");
        let want = if format.is_quantized() { WeightLayout::Interleaved8 } else { WeightLayout::Rows };
        assert_eq!(layout, want, "matmul: {format} matrices are stored {}", want.name());
        assert_eq!(o.y.len(), rows * n, "matmul: y is not rows x n = {rows} x {n}");
        let stored = layout.stored_rows(n) * o.w.row_bytes();
        assert_eq!(o.w.data.len(), stored, "matmul: {format} weight data is not {n} x {k} laid out {}", layout.name());
        if let Some(b) = o.bias {
            assert_eq!(b.len(), n, "matmul: bias is not n = {n} long");
        }
    }
    if rows == 0 {
        return;
    }
    if k == 0 {
        for o in outs.iter_mut() {
            for yr in o.y.chunks_mut(o.w.n.max(1)) {
                match o.bias {
                    Some(b) => yr.copy_from_slice(b),
                    None => yr.fill(0.0),
                }
            }
        }
        return;
    }

    let (xp, ldx, xd, xm, ldxd) = if quantized {
        let q = &mut scratch.q8;
        q.quantize(isa, x, rows, k);
        (q.qs.as_ptr().cast::<u8>(), k, q.d.as_ptr(), q.m.as_ptr(), k / QK)
    } else if rows > 1 {
        let ld = padded_stride(k);
        let xf = &mut scratch.xf;
        xf.resize(rows * ld, 0.0);
        if rows * k >= 1 << 16 {
            pool::parallel_chunks_mut(&mut xf[..rows * ld], ld, |r, dst| dst[..k].copy_from_slice(&x[r * k..][..k]));
        } else {
            xf.chunks_mut(ld).zip(x.chunks(k)).for_each(|(dst, src)| dst[..k].copy_from_slice(src));
        }
        (xf.as_ptr().cast::<u8>(), 4 * ld, std::ptr::null(), std::ptr::null(), 0)
    } else {
        (x.as_ptr().cast::<u8>(), 4 * k, std::ptr::null(), std::ptr::null(), 0)
    };
    let x_elem = if quantized { 1 } else { 4 };
    // Prefill walks `k` in blocks so that a tile's operands stay in L1 and a row block's activations in L2.
    // Decode steps do not: one row, or up to four int8 ones (a server's step over several sequences: 32 KiB at
    // k = 8192, which L2 holds), read each group of weight rows front to back, one sequential stream, where
    // blocks of k would revisit every group once per block (4 x 2048 x 8192 q4_0 on Zen 4, 2 threads, cold,
    // five interleaved pairs: 412-448 against 432-544 us; q8_0 588-710 against 688-755).
    let kc = if rows == 1 || (quantized && rows <= DECODE_ROWS) {
        k
    } else {
        K_BLOCK_BYTES.div_ceil(x_elem).next_multiple_of(QK).min(k)
    };
    let threads = pool::threads();
    let want = threads * TASKS_PER_THREAD;
    let mut plans = [None; MAX_FUSED];
    let mut total_tasks = 0;
    let mut macs = 0;
    for (o, plan) in outs.iter_mut().zip(&mut plans) {
        let WeightRef { format, layout, n, data, .. } = o.w;
        if n == 0 {
            continue;
        }
        let interleave = if layout == WeightLayout::Interleaved8 { INTERLEAVE } else { 1 };
        let groups = if interleave > 1 { super::matmul_x8::max_groups(isa) } else { 4 };
        let amx = amx_tile(isa, format, rows).filter(|_| tile.is_none());
        let (rt, ct) = match tile {
            _ if amx.is_some() => (AMX_ROWS, AMX_COLS),
            Some((rt, ct)) => (rt, ct * interleave),
            // Decode takes `streams.groups` groups per tile (see [`DecodeStreams`]): one on Zen 4, on 256-bit
            // vectors, one sequential weight stream per task. Two groups' streams in 512-bit vectors measured
            // slower there (q4_0 8192 x 2048 GEMV, one thread: 14 against 25 GB/s), and so did 64-byte loads of
            // one group's chunk pairs against activation patterns made once per call (q4_0 10-14 against 18-20
            // GB/s, q8_0 11-13 against 17-19); on Intel's cores two streams read faster.
            None if interleave > 1 && rows == 1 => (1, streams.groups.min(groups) * interleave),
            // A few rows of q4_0 (a server's decode step over several sequences) whose q8 activations fit 8 KiB
            // stay on one group per tile too: its one sequential weight stream beat the 512-bit tiles' two on
            // Zen 4 (q4_0 8192 x 2048, 2 threads, cold: 2 rows 270-340 against 360-400 us, 4 rows 355-410
            // against 430-450; 4-sequence server decode 114-126 against 96-104 tok/s). With k = 8192 the 512-bit
            // tiles' sharing of each activation load between two groups wins (4 x 2048 x 8192: 400-420 against
            // 600-680 us); for q8_0 neither won clearly.
            None if interleave > 1
                && rows <= DECODE_ROWS
                && format == WeightFormat::Q4_0
                && rows * k <= SMALL_BATCH_X_BYTES =>
            {
                (4, interleave)
            }
            None if interleave > 1 => (4, groups * interleave),
            None => default_tile(format, rows, k),
        };
        let fits = (1..=4).contains(&rt) && (1..=groups).contains(&(ct / interleave)) && ct % interleave == 0;
        assert!(fits || amx.is_some(), "matmul: no {rt} x {ct} tile for {format} with {}", isa.name());
        let job = Job {
            tiles: if interleave > 1 { super::matmul_x8::tiles(isa, format) } else { tiles(isa, format) },
            wide: amx,
            interleave,
            rt,
            ct,
            k,
            kc,
            // Software prefetch is for decode steps' weight streams: a one-row GEMV's as [`DecodeStreams`] says,
            // and a server's step over 2-4 sequences always (see [`BATCH_PREFETCH`]).
            prefetch: match rows {
                _ if interleave == 1 => 0,
                1 => streams.prefetch,
                2..=DECODE_ROWS => BATCH_PREFETCH,
                _ => 0,
            },
            n,
            row_block: (L2_BYTES / (kc * x_elem)).max(rt).next_multiple_of(rt),
            format,
            x: xp,
            x_elem,
            ldx,
            xd,
            xm,
            ldxd,
            w: data.as_ptr(),
            ldw: o.w.row_bytes(),
            y: o.y.as_mut_ptr(),
            bias: o.bias.map_or(std::ptr::null(), |b| b.as_ptr()),
        };
        // Contiguous column chunks, a few per thread so that work stealing evens out; if `n` is too narrow for
        // that, row parts too.
        let col_tiles = n.div_ceil(ct);
        let cols_per = col_tiles.div_ceil(col_tiles.min(want)) * ct;
        let col_chunks = n.div_ceil(cols_per);
        let row_parts = (want / col_chunks).clamp(1, rows.div_ceil(rt));
        let rows_per = rows.div_ceil(row_parts).next_multiple_of(rt);
        let row_parts = rows.div_ceil(rows_per);
        let split = Split { first_task: total_tasks, cols_per, row_parts, rows_per };
        total_tasks += col_chunks * row_parts;
        macs += rows * n * k;
        *plan = Some((job, split));
    }
    let plans = &plans[..outs.len()];
    if threads == 1 || macs < PAR_MIN_MACS {
        for (job, _) in plans.iter().flatten() {
            // SAFETY: each whole output, on this thread only.
            unsafe { job.run(0, rows, 0, job.n) };
        }
        return;
    }
    pool::parallel_for(total_tasks, |t| {
        let (job, sp) = plans.iter().flatten().rev().find(|(_, sp)| sp.first_task <= t).expect("task 0 exists");
        let t = t - sp.first_task;
        let (c, r) = (t / sp.row_parts, t % sp.row_parts);
        let (j0, r0) = (c * sp.cols_per, r * sp.rows_per);
        // SAFETY: tasks cover disjoint blocks of the outputs, which do not overlap each other.
        unsafe { job.run(r0, (r0 + sp.rows_per).min(rows), j0, (j0 + sp.cols_per).min(job.n)) };
    });
}

/// How one matrix of a call is cut into tasks: tasks `first_task..` take column chunks of `cols_per` outputs,
/// each in `row_parts` parts of `rows_per` activation rows.
#[derive(Clone, Copy)]
struct Split {
    first_task: usize,
    cols_per: usize,
    row_parts: usize,
    rows_per: usize,
}

/// Activation rows from which the AMX family multiplies q8_0 / q4_0 on tiles; fewer (decode, small batches) take
/// the 512-bit VNNI tiles, which waste nothing on tile rows left empty.
const AMX_MIN_ROWS: usize = 8;
#[cfg(target_arch = "x86_64")]
const AMX_ROWS: usize = super::amx::ROWS;
#[cfg(target_arch = "x86_64")]
const AMX_COLS: usize = super::amx::COLS;
#[cfg(not(target_arch = "x86_64"))]
const AMX_ROWS: usize = 0;
#[cfg(not(target_arch = "x86_64"))]
const AMX_COLS: usize = 0;

/// The AMX tile function for a call of `rows` activation rows, where `isa` is [`Isa::Amx`] and `format` an
/// int8 one.
fn amx_tile(isa: Isa, format: WeightFormat, rows: usize) -> Option<TileFn> {
    if isa != Isa::Amx || rows < AMX_MIN_ROWS {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        match format {
            WeightFormat::Q8_0 => return Some(super::amx::tile::<false> as TileFn),
            WeightFormat::Q4_0 => return Some(super::amx::tile::<true> as TileFn),
            _ => {}
        }
    }
    None
}

/// Tile shape (activation rows x weight rows), as measured on Zen 4 (the target machine).
///
/// GEMV: one weight row at a time streams the weights sequentially, which the prefetchers follow best; but
/// f32 activations past 16 KiB no longer stay in L1 beside the stream, and sharing each load of them among four
/// weight rows wins. Prefill: 4 x 3 = 12 accumulators, the most that fit the 16 vector registers beside the
/// operands (4 x 2 and 2 x 4 measured 5-20% slower).
fn default_tile(format: WeightFormat, rows: usize, k: usize) -> (usize, usize) {
    match (rows, format) {
        (1, WeightFormat::F32 | WeightFormat::F16 | WeightFormat::Bf16) if k > 4096 => (1, 4),
        (1, _) => (1, 1),
        _ => (4, 3),
    }
}

/// Row stride (in f32) for prefill activations of `k` elements: with a power-of-two `k`, the rows of a tile
/// would all map to the same L1 sets (as would the weight rows, at the same offsets), and conflict misses cost
/// f32/f16 prefill up to 40%. Padding each row by 64 bytes moves consecutive rows to different sets.
fn padded_stride(k: usize) -> usize {
    k.next_multiple_of(16) + 16
}

/// Below this many multiply-adds a matmul runs on the calling thread: waking the pool would cost more.
const PAR_MIN_MACS: usize = 1 << 17;
/// Activation rows up to which an int8 call is a decode step (one sequence's, or a server's over several
/// sequences): it reads each group of weight rows front to back over the whole of `k`.
const DECODE_ROWS: usize = 4;
/// Bytes ahead of each weight stream that a decode step over 2..=[`DECODE_ROWS`] sequences prefetches, on every
/// CPU. Such a step does up to four rows' work per weight byte, and between the multiply-adds the hardware
/// prefetchers alone leave the stream's misses exposed: on Zen 4 (2 threads, cold, three interleaved rounds)
/// 4 x 8192 x 2048 q4_0 took 350-397 us prefetched 2 KiB ahead against 487-499 without, 4 x 2048 x 8192 353-364
/// against 413-472; 4 KiB ahead measured the same as 2; q8_0 and two rows changed within the noise.
const BATCH_PREFETCH: usize = 2048;
/// q8 activation bytes up to which a call of 2-4 rows on interleaved q4_0 weights takes one group per tile.
const SMALL_BATCH_X_BYTES: usize = 8 << 10;
const TASKS_PER_THREAD: usize = 4;
/// Activation bytes per row of a prefill k-block.
const K_BLOCK_BYTES: usize = 2048;
// The AMX tiles take a q8 prefill's k-block whole.
#[cfg(target_arch = "x86_64")]
const _: () = assert!(K_BLOCK_BYTES <= super::amx::MAX_K);
/// Activation bytes of a row block (the rows a task's weight tile meets before the next tile).
const L2_BYTES: usize = 256 << 10;

/// One tile's operands, as raw pointers (the tile functions are `unsafe` SIMD code).
///
/// Rows `0..rows` of the activations start at `x + r * ldx` (bytes): f32 for float formats, q8 quants for
/// q8_0/q4_0, whose per-block scales and q4_0 corrections are at `xd / xm + r * ldxd` (elements). Weight rows
/// `0..cols` start at `w + c * ldw` (bytes). The tile writes `y[r * ldy + c]`, adding `bias[c]` unless `bias` is
/// null, or adds to what `y` holds if `accumulate`. Specialized tiles ignore `rows` and `cols`: they are in the
/// tile function's type.
pub(crate) struct TileArgs {
    pub rows: usize,
    pub cols: usize,
    pub k: usize,
    pub accumulate: bool,
    pub x: *const u8,
    pub ldx: usize,
    pub xd: *const f32,
    pub xm: *const i32,
    pub ldxd: usize,
    pub w: *const u8,
    pub ldw: usize,
    pub y: *mut f32,
    pub ldy: usize,
    pub bias: *const f32,
    /// Bytes ahead of each weight stream (group) that an interleaved int8 tile prefetches, or 0 (see
    /// [`DecodeStreams`], [`BATCH_PREFETCH`]); never read past the matrix's end, a prefetch does not fault.
    pub prefetch: usize,
}

/// Prefetches (into L1) the cache lines of `bytes` bytes from `p`, where `p` may point past the weights (a
/// prefetch never faults, so the address is only computed, with wrapping arithmetic).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch_block(p: *const u8, bytes: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for line in (0..bytes).step_by(64) {
        // SAFETY: prefetching an address has no architectural effect and cannot fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line).cast()) };
    }
}

/// Computes one tile. Safety: every pointer in the [`TileArgs`] is valid for the extent it describes.
pub(crate) type TileFn = unsafe fn(&TileArgs);

/// Tile functions indexed `[rows - 1][cols - 1]`, for `rows, cols <= 4`.
fn tiles(isa: Isa, format: WeightFormat) -> &'static [[TileFn; 4]; 4] {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => super::matmul_avx2::tiles(format),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Avx512 | Isa::Amx => super::matmul_avx2::tiles(format),
        _ => portable_tiles(format),
    }
}

/// A matmul call cut into tiles: everything but the block of the output being computed.
#[derive(Clone, Copy)]
struct Job {
    tiles: &'static [[TileFn; 4]; 4],
    /// A tile function that takes any `rows <= rt` and `cols <= ct` (AMX prefill), used instead of `tiles`.
    wide: Option<TileFn>,
    /// Weight rows per group of the layout (1, or 8 for [`WeightLayout::Interleaved8`], whose tiles are 8 wide).
    interleave: usize,
    /// Tile shape (activation rows x weight rows).
    rt: usize,
    ct: usize,
    k: usize,
    /// Elements of `k` per pass (a multiple of 32, or `k`).
    kc: usize,
    /// [`TileArgs::prefetch`].
    prefetch: usize,
    n: usize,
    row_block: usize,
    format: WeightFormat,
    x: *const u8,
    /// Bytes per activation element: 4 (f32) or 1 (q8).
    x_elem: usize,
    ldx: usize,
    xd: *const f32,
    xm: *const i32,
    ldxd: usize,
    w: *const u8,
    ldw: usize,
    y: *mut f32,
    bias: *const f32,
}

// SAFETY: the pointers come from slices borrowed for the whole call; concurrent `run`s write disjoint blocks.
unsafe impl Sync for Job {}

impl Job {
    /// Computes rows `r0..r1`, columns `j0..j1` of the output.
    ///
    /// # Safety
    /// The ranges lie within the output, and no concurrent call covers any of the same elements.
    unsafe fn run(&self, r0: usize, r1: usize, j0: usize, j1: usize) {
        let mut rb = r0;
        while rb < r1 {
            let rb_end = (rb + self.row_block).min(r1);
            let mut k0 = 0;
            while k0 < self.k {
                let k1 = (k0 + self.kc).min(self.k);
                let kb = k0 / QK; // q8 blocks before k0 (float formats never read xd / xm)
                                  // An interleaved group stores its rows' blocks k0-first, 8 at a time.
                let wk = self.format.row_bytes(k0).expect("k blocks are whole quant blocks") * self.interleave;
                let mut j = j0;
                while j < j1 {
                    let cols = self.ct.min(j1 - j);
                    let mut r = rb;
                    while r < rb_end {
                        let rows = self.rt.min(rb_end - r);
                        let args = TileArgs {
                            rows,
                            cols,
                            k: k1 - k0,
                            accumulate: k0 > 0,
                            x: self.x.add(r * self.ldx + k0 * self.x_elem),
                            ldx: self.ldx,
                            xd: self.xd.wrapping_add(r * self.ldxd + kb),
                            xm: self.xm.wrapping_add(r * self.ldxd + kb),
                            ldxd: self.ldxd,
                            w: self.w.add(j * self.ldw + wk),
                            ldw: self.ldw,
                            y: self.y.add(r * self.n + j),
                            ldy: self.n,
                            bias: if self.bias.is_null() || k0 > 0 { std::ptr::null() } else { self.bias.add(j) },
                            prefetch: self.prefetch,
                        };
                        match self.wide {
                            Some(f) => f(&args),
                            None => (self.tiles[rows - 1][cols.div_ceil(self.interleave) - 1])(&args),
                        }
                        r += rows;
                    }
                    j += cols;
                }
                k0 = k1;
            }
            rb = rb_end;
        }
    }
}

// ---- Portable tiles: plain loops over the tile's pairs, written so that the compiler can vectorize them. ----

fn portable_tiles(format: WeightFormat) -> &'static [[TileFn; 4]; 4] {
    static F32: [[TileFn; 4]; 4] = [[portable_float::<0> as TileFn; 4]; 4];
    static F16: [[TileFn; 4]; 4] = [[portable_float::<1> as TileFn; 4]; 4];
    static BF16: [[TileFn; 4]; 4] = [[portable_float::<2> as TileFn; 4]; 4];
    match format {
        WeightFormat::F32 => &F32,
        WeightFormat::F16 => &F16,
        WeightFormat::Bf16 => &BF16,
        WeightFormat::Q8_0 | WeightFormat::Q4_0 => panic!("{format} matrices are multiplied interleaved (matmul_x8)"),
    }
}

/// Writes `sums[r][c]` (plus bias) to the tile's outputs.
unsafe fn portable_store(a: &TileArgs, sums: &[[f32; 4]; 4]) {
    for (r, s) in sums.iter().enumerate().take(a.rows) {
        for (c, s) in s.iter().enumerate().take(a.cols) {
            let b = if a.bias.is_null() { 0.0 } else { *a.bias.add(c) };
            let y = a.y.add(r * a.ldy + c);
            *y = if a.accumulate { *y + s } else { s + b };
        }
    }
}

fn dot_f32(x: &[f32], w: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (xc, wc) = (x.chunks_exact(8), w.chunks_exact(8));
    let tail: f32 = xc.remainder().iter().zip(wc.remainder()).map(|(a, b)| a * b).sum();
    for (xs, ws) in xc.zip(wc) {
        for l in 0..8 {
            // Not `mul_add`: without a target FMA that is a libm call.
            acc[l] += xs[l] * ws[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

unsafe fn portable_float<const F: u8>(a: &TileArgs) {
    const CHUNK: usize = 256;
    let (dtype, es) = match F {
        0 => (SourceDType::F32, 4),
        1 => (SourceDType::F16, 2),
        _ => (SourceDType::Bf16, 2),
    };
    let mut sums = [[0.0f32; 4]; 4];
    let mut buf = [0.0f32; CHUNK];
    for c in 0..a.cols {
        let wrow = std::slice::from_raw_parts(a.w.add(c * a.ldw), a.k * es);
        for (i, wchunk) in wrow.chunks(CHUNK * es).enumerate() {
            let wf = &mut buf[..wchunk.len() / es];
            source_to_f32(dtype, wchunk, wf);
            for (r, s) in sums.iter_mut().enumerate().take(a.rows) {
                let xr = std::slice::from_raw_parts(a.x.add(r * a.ldx).cast::<f32>().add(i * CHUNK), wf.len());
                s[c] += dot_f32(xr, wf);
            }
        }
    }
    portable_store(a, &sums);
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicorn_ir::quant::encode_row;

    use unicorn_ir::rng::XorShift as Rng;

    /// A random `n x k` matrix in `format`, and its exact dequantized values.
    fn weights(rng: &mut Rng, format: WeightFormat, n: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
        let src = rng.vec(n * k, 1.0);
        let mut data = Vec::new();
        for row in src.chunks(k) {
            encode_row(format, row, &mut data);
        }
        let mut deq = vec![0.0; n * k];
        for (row, out) in data.chunks(format.row_bytes(k).unwrap()).zip(deq.chunks_mut(k)) {
            decode_row(format, row, out);
        }
        (data, deq)
    }

    /// The layouts the kernels read a `format` matrix in (the one the CPU target chooses).
    fn layouts(format: WeightFormat, _n: usize) -> Vec<WeightLayout> {
        vec![if format.is_quantized() { WeightLayout::Interleaved8 } else { WeightLayout::Rows }]
    }

    /// Row-major `data` (`n` rows of `k`) rearranged into `layout`, padded with zero rows to whole groups as the
    /// compiler stores it.
    fn pack(format: WeightFormat, layout: WeightLayout, k: usize, data: &[u8]) -> Vec<u8> {
        match layout {
            WeightLayout::Rows => data.to_vec(),
            WeightLayout::Interleaved8 => {
                let group = INTERLEAVE * format.row_bytes(k).unwrap();
                let mut padded = data.to_vec();
                padded.resize(data.len().next_multiple_of(group), 0);
                let mut out = Vec::with_capacity(padded.len());
                for g in padded.chunks(group) {
                    unicorn_ir::quant::interleave_rows(format, k, g, &mut out);
                }
                out
            }
        }
    }

    /// Activations with a different magnitude per 32-block, as real hidden states have.
    /// Random `n x k` weights in `format` and `rows x k` activations; `f(x, w, decoded w, isa)` for every layout
    /// the format is stored in and every kernel family this CPU runs.
    fn each_layout_and_isa(
        rng: &mut Rng,
        format: WeightFormat,
        rows: usize,
        n: usize,
        k: usize,
        mut f: impl FnMut(&[f32], WeightRef, &[f32], Isa),
    ) {
        let (data, deq) = weights(rng, format, n, k);
        let x = activations(rng, rows, k);
        for layout in layouts(format, n) {
            let data = pack(format, layout, k, &data);
            let w = WeightRef { format, layout, n, k, data: &data };
            for isa in isas() {
                f(&x, w, &deq, isa);
            }
        }
    }

    fn activations(rng: &mut Rng, rows: usize, k: usize) -> Vec<f32> {
        let mut x = rng.vec(rows * k, 1.0);
        for (i, blk) in x.chunks_mut(32).enumerate() {
            let s = [0.1, 1.0, 7.0, 0.5][i % 4];
            blk.iter_mut().for_each(|v| *v *= s);
        }
        x
    }

    fn isas() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.available()).collect()
    }

    /// Checks `y` against an f64 reference on the dequantized weights and the unquantized activations.
    ///
    /// Float formats: `|err| <= 1e-4 * sum|x w|`. Quantized formats also quantize the activations: each element
    /// moves by at most `d_x / 2` with `d_x = amax / 127` of its block, so a block's contribution moves by at
    /// most `d_x / 2 * sum|w|` over that block; the bound is the sum of those over the blocks (times 1.001 for
    /// the f32 rounding of `127 / amax`), plus the float allowance.
    #[allow(clippy::too_many_arguments)]
    fn check(
        what: &str,
        format: WeightFormat,
        x: &[f32],
        rows: usize,
        deq: &[f32],
        n: usize,
        k: usize,
        bias: Option<&[f32]>,
        y: &[f32],
    ) {
        for r in 0..rows {
            let xr = &x[r * k..(r + 1) * k];
            for j in 0..n {
                let wr = &deq[j * k..(j + 1) * k];
                let mut exact = bias.map_or(0.0, |b| f64::from(b[j]));
                let mut mag = 0.0f64;
                let mut qbound = 0.0f64;
                for (xb, wb) in xr.chunks(32).zip(wr.chunks(32)) {
                    let amax = xb.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
                    let wsum: f64 = wb.iter().map(|&v| f64::from(v).abs()).sum();
                    qbound += amax / 127.0 / 2.0 * wsum * 1.001;
                    for (&a, &b) in xb.iter().zip(wb) {
                        exact += f64::from(a) * f64::from(b);
                        mag += (f64::from(a) * f64::from(b)).abs();
                    }
                }
                let tol = 1e-4 * mag + 1e-6 + if format.is_quantized() { qbound } else { 0.0 };
                let got = f64::from(y[r * n + j]);
                assert!(
                    (got - exact).abs() <= tol,
                    "{what}: y[{r}, {j}] = {got}, expected {exact} (|err| {} > tol {tol})",
                    (got - exact).abs()
                );
            }
        }
    }

    #[test]
    fn matches_f64_reference_every_format_isa_and_shape() {
        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        let mut scratch = Scratch::default();
        for format in WeightFormat::ALL {
            // Float formats take any k: down to 1 and 3, shorter than one 8-lane vector. 4160 is more than one
            // prefill block of k and no multiple of it (decode-size calls of up to four rows take k whole).
            let ks: &[usize] =
                if format.is_quantized() { &[32, 96, 2048, 4160] } else { &[32, 96, 2048, 13, 100, 1, 3] };
            for &k in ks {
                for n in [1, 7, 8, 64] {
                    let (data, deq) = weights(&mut rng, format, n, k);
                    let bias = rng.vec(n, 1.0);
                    for layout in layouts(format, n) {
                        let data = pack(format, layout, k, &data);
                        let w = WeightRef { format, layout, n, k, data: &data };
                        for rows in [1, 3, 4, 17] {
                            let x = activations(&mut rng, rows, k);
                            for isa in isas() {
                                for bias in [None, Some(&bias[..])] {
                                    let mut y = vec![f32::NAN; rows * n];
                                    matmul_with(isa, &x, rows, w, bias, &mut y, &mut scratch);
                                    let what = format!(
                                        "{format} {} {} rows={rows} n={n} k={k} bias={}",
                                        layout.name(),
                                        isa.name(),
                                        bias.is_some()
                                    );
                                    check(&what, format, &x, rows, &deq, n, k, bias, &y);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn threaded_splits_cover_every_output() {
        // Shapes above the threading threshold with ragged column chunks and row tails, a narrow `n` that
        // forces row parts, a long `k`, and the shapes that pick the other tile and activation-copy paths.
        let mut rng = Rng(77);
        let mut scratch = Scratch::default();
        for format in WeightFormat::ALL {
            // Several k blocks (2048 q8 bytes, 512 floats), the last one partial; and for floats a scalar tail.
            let long_k = if format.is_quantized() { (5, 40, 4192) } else { (6, 20, 1001) };
            let shapes = [(1, 301, 512), (5, 301, 256), (203, 3, 256), (37, 70, 1024), long_k];
            // The quantized formats store these padded to whole groups of 8 rows (301, 3 and 70 rows end in a
            // partial group); and whole groups: ragged chunks of groups, one group, long k.
            let x8 = [(1, 344, 512), (6, 344, 256), (203, 8, 256), (37, 72, 1024), (5, 40, 4192)];
            // Decode with k > 4096: float formats take the 1 x 4 tile (`default_tile`), with a ragged last tile
            // (37 columns) and whole ones (64).
            let long_gemv = [(1, 37, 4160), (1, 64, 8192)];
            // Prefill activations are copied to padded rows on the pool from rows * k = 1 << 16 on: just below,
            // at, and past it with a k that is not a multiple of the padding (16).
            let copies = [(31, 40, 2048), (32, 40, 2048), (65, 24, if format.is_quantized() { 1056 } else { 1040 })];
            for (rows, n, k) in shapes.into_iter().chain(x8).chain(long_gemv).chain(copies) {
                each_layout_and_isa(&mut rng, format, rows, n, k, |x, w, deq, isa| {
                    let mut y = vec![f32::NAN; rows * n];
                    matmul_with(isa, x, rows, w, None, &mut y, &mut scratch);
                    let what = format!("{format} {} {} {rows}x{n}x{k}", w.layout.name(), isa.name());
                    check(&what, format, x, rows, deq, n, k, None, &y);
                });
            }
        }
    }

    #[test]
    fn fused_calls_match_separate_ones() {
        // q/k/v-like shapes (one wide, two narrow) and gate/up-like ones, for decode and prefill, every
        // quantized format and layout, threaded (above the threshold) and not (below it), with and without bias.
        let mut rng = Rng(31);
        let mut scratch = Scratch::default();
        for format in [WeightFormat::Q4_0, WeightFormat::Q8_0, WeightFormat::F16] {
            for (rows, ns, k) in [(1, vec![256, 64, 64], 512), (7, vec![96, 96], 256), (1, vec![8, 16, 24], 64)] {
                let mats: Vec<_> = ns.iter().map(|&n| weights(&mut rng, format, n, k)).collect();
                let biases: Vec<Vec<f32>> = ns.iter().map(|&n| rng.vec(n, 1.0)).collect();
                let x = activations(&mut rng, rows, k);
                for layout in layouts(format, 8) {
                    let packed: Vec<Vec<u8>> = mats.iter().map(|(d, _)| pack(format, layout, k, d)).collect();
                    let ws: Vec<WeightRef> =
                        ns.iter().zip(&packed).map(|(&n, data)| WeightRef { format, layout, n, k, data }).collect();
                    let mut fused: Vec<Vec<f32>> = ns.iter().map(|&n| vec![f32::NAN; rows * n]).collect();
                    let mut outs: Vec<MatMulOut> = ws
                        .iter()
                        .zip(&biases)
                        .zip(&mut fused)
                        .enumerate()
                        .map(|(i, ((&w, b), y))| MatMulOut { w, bias: (i != 1).then_some(&b[..]), y })
                        .collect();
                    matmul_many(&x, rows, &mut outs, &mut scratch);
                    for (i, ((&w, b), got)) in ws.iter().zip(&biases).zip(&fused).enumerate() {
                        let mut want = vec![0.0; rows * w.n];
                        matmul(&x, rows, w, (i != 1).then_some(&b[..]), &mut want, &mut scratch);
                        assert_eq!(got, &want, "{format} {} {rows}x{ns:?}x{k} matrix {i}", layout.name());
                    }
                }
            }
        }
    }

    #[test]
    fn simd_and_portable_agree() {
        let mut rng = Rng(4242);
        let mut scratch = Scratch::default();
        for format in WeightFormat::ALL {
            for (rows, n, k) in [(1, 64, 2048), (17, 64, 2048), (6, 9, 96)] {
                let (data, deq) = weights(&mut rng, format, n, k);
                let x = activations(&mut rng, rows, k);
                for layout in layouts(format, n) {
                    let data = pack(format, layout, k, &data);
                    let w = WeightRef { format, layout, n, k, data: &data };
                    let mut yp = vec![0.0; rows * n];
                    matmul_with(Isa::Portable, &x, rows, w, None, &mut yp, &mut scratch);
                    for isa in isas().into_iter().filter(|&i| i != Isa::Portable) {
                        let mut ya = vec![0.0; rows * n];
                        matmul_with(isa, &x, rows, w, None, &mut ya, &mut scratch);
                        // All quantize activations identically, so only the f32 summation order differs.
                        for r in 0..rows {
                            for j in 0..n {
                                let mag: f32 = (0..k).map(|i| (x[r * k + i] * deq[j * k + i]).abs()).sum();
                                let (p, a) = (yp[r * n + j], ya[r * n + j]);
                                let what =
                                    format!("{format} {} {} {rows}x{n}x{k} [{r},{j}]", layout.name(), isa.name());
                                assert!((p - a).abs() <= 2e-5 * mag + 1e-6, "{what}: {p} vs {a}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_tile_shape_a_caller_can_choose_matches_f64_reference() {
        // `matmul_with_tile` (what the benchmarks tune with): every float tile of 1..=4 activation rows by
        // 1..=4 weight rows, most of which the default choice never takes, and the interleaved tiles of 1..=4
        // rows by one group (or two on 512-bit vectors); ragged in rows and columns, with a scalar tail (k = 100) and, for floats, several
        // prefill k blocks (k = 1100).
        let mut rng = Rng(0x7117);
        let mut scratch = Scratch::default();
        for format in WeightFormat::ALL {
            let ks: &[usize] = if format.is_quantized() { &[96] } else { &[100, 1100] };
            // n = 10: with 2-group tiles one ragged 16-row tile; n = 21: a whole one, then a lone ragged group.
            for &k in ks {
                for n in [10, 21] {
                    let rows = 7;
                    each_layout_and_isa(&mut rng, format, rows, n, k, |x, w, deq, isa| {
                        let cts: Vec<usize> = match format.is_quantized() {
                            true => (1..=super::super::matmul_x8::max_groups(isa)).collect(),
                            false => vec![1, 2, 3, 4],
                        };
                        for rt in 1..=4 {
                            for &ct in &cts {
                                let mut y = vec![f32::NAN; rows * n];
                                matmul_with_tile(isa, (rt, ct), x, rows, w, &mut y, &mut scratch);
                                let what = format!("{format} {} tile {rt}x{ct} {rows}x{n}x{k}", isa.name());
                                check(&what, format, x, rows, deq, n, k, None, &y);
                            }
                        }
                    });
                }
            }
        }
    }

    #[test]
    fn amx_tiles_are_bit_for_bit_the_512_bit_ones_and_match_f64_reference() {
        // Prefill shapes through the AMX tiles: one pass of 16 rows and several, calls of 128 rows and a ragged
        // last one (17, 45, 203, 300 rows), ragged in weight groups (n = 8, 24, 40, 301: a lone group in a
        // 16-output half), odd and even block counts in a stretch of k (3, 65 and 131 blocks: stretches of 64
        // and a remainder), threaded and not, with a bias.
        #[cfg(target_arch = "x86_64")]
        if !Isa::Amx.available() {
            assert!(!super::super::amx::cpu_has_amx_int8(), "the CPU has AMX-INT8 but the kernel refused the tiles");
            eprintln!("AMX: skipped, this CPU has no AMX-INT8; the AMX tiles were not run");
            return;
        }
        #[cfg(not(target_arch = "x86_64"))]
        return;
        let mut rng = Rng(0xa3);
        let mut scratch = Scratch::default();
        for format in [WeightFormat::Q4_0, WeightFormat::Q8_0] {
            let shapes = [(8, 8, 32), (16, 24, 96), (17, 40, 256), (32, 32, 2048), (45, 301, 1024), (100, 72, 4192)];
            for (rows, n, k) in shapes.into_iter().chain([(203, 10, 512), (300, 40, 2080)]) {
                let (data, deq) = weights(&mut rng, format, n, k);
                let bias = rng.vec(n, 1.0);
                let x = activations(&mut rng, rows, k);
                let layout = WeightLayout::Interleaved8;
                let data = pack(format, layout, k, &data);
                let w = WeightRef { format, layout, n, k, data: &data };
                let (mut want, mut got) = (vec![0.0; rows * n], vec![f32::NAN; rows * n]);
                matmul_with(Isa::Avx512, &x, rows, w, Some(&bias), &mut want, &mut scratch);
                matmul_with(Isa::Amx, &x, rows, w, Some(&bias), &mut got, &mut scratch);
                let what = format!("{format} amx {rows}x{n}x{k}");
                check(&what, format, &x, rows, &deq, n, k, Some(&bias), &got);
                assert!(got == want, "{what}: the AMX tiles differ from the 512-bit ones");
            }
        }
        eprintln!("AMX: the AMX tiles ran and matched");
    }

    #[test]
    fn decode_streams_change_no_output() {
        // One stream or two a tile, prefetched or not (DecodeStreams): the same tiles' arithmetic in another
        // order of loads, so the same bits, for every int8 family; ragged groups (n = 40, 301: a lone last
        // group, a partial one), threaded (2048 outputs) and not, with a bias.
        let mut rng = Rng(0xd5);
        let mut scratch = Scratch::default();
        let streams = [
            DecodeStreams::ONE,
            DecodeStreams::INTEL,
            DecodeStreams { groups: 2, prefetch: 0 },
            DecodeStreams { groups: 1, prefetch: 64 },
        ];
        for format in [WeightFormat::Q4_0, WeightFormat::Q8_0] {
            for (n, k) in [(2048, 2048), (40, 96), (301, 4160)] {
                let bias = rng.vec(n, 1.0);
                each_layout_and_isa(&mut rng, format, 1, n, k, |x, w, deq, isa| {
                    let mut want = vec![f32::NAN; n];
                    matmul_with_streams(isa, DecodeStreams::ONE, x, 1, w, Some(&bias), &mut want, &mut scratch);
                    check(&format!("{format} {} 1x{n}x{k}", isa.name()), format, x, 1, deq, n, k, Some(&bias), &want);
                    for s in streams {
                        let mut got = vec![f32::NAN; n];
                        matmul_with_streams(isa, s, x, 1, w, Some(&bias), &mut got, &mut scratch);
                        assert!(got == want, "{format} {} 1x{n}x{k} {s:?}: differs from one stream", isa.name());
                    }
                });
            }
        }
    }

    #[test]
    fn wide_int8_tiles_are_bit_for_bit_the_256_bit_ones() {
        // The 512-bit tiles compute the same i32 per block and apply the scales in the same order as the
        // 256-bit VNNI tiles (matmul_x16's contract), so every output is identical, for decode and prefill,
        // whole and ragged 16-row tiles, threaded and not.
        if !Isa::Avx512.available() {
            eprintln!("no AVX-512 BW/VNNI on this CPU: the 512-bit tiles were not run");
            return;
        }
        let mut rng = Rng(0x16);
        let mut scratch = Scratch::default();
        for format in [WeightFormat::Q4_0, WeightFormat::Q8_0] {
            for (rows, n, k) in [(1, 2048, 2048), (1, 40, 96), (5, 301, 256), (17, 10, 1024), (64, 72, 512)] {
                let (data, _) = weights(&mut rng, format, n, k);
                let x = activations(&mut rng, rows, k);
                let layout = WeightLayout::Interleaved8;
                let data = pack(format, layout, k, &data);
                let w = WeightRef { format, layout, n, k, data: &data };
                let (mut want, mut got) = (vec![0.0; rows * n], vec![f32::NAN; rows * n]);
                matmul_with(Isa::Avx512Vnni, &x, rows, w, None, &mut want, &mut scratch);
                matmul_with(Isa::Avx512, &x, rows, w, None, &mut got, &mut scratch);
                assert!(got == want, "{format} {rows}x{n}x{k}: the 512-bit tiles differ from the 256-bit ones");
            }
        }
    }

    #[test]
    fn simd_kernels_round_each_multiply_add_once() {
        // Dot products whose exact value is representable in f32 while a term of it is not: the SIMD kernels
        // accumulate with fused multiply-adds, so they return the exact value, where rounding each product
        // first (as the portable kernels do) loses it. A kernel family that quietly ran the portable tiles
        // would fail here; the f64-tolerance tests cannot tell the two apart.
        let simd: Vec<Isa> = isas().into_iter().filter(|&i| i != Isa::Portable).collect();
        if simd.is_empty() {
            eprintln!("no SIMD kernel family on this CPU: nothing to check");
            return;
        }
        let mut scratch = Scratch::default();
        let n = 3;
        // Float formats: x[0] w[0] = -1 and x[32] w[32] = (1 + 2^-ex)(1 + 2^-mw) with ex + mw = 24, so the
        // exact sum 2^-ex + 2^-mw + 2^-24 spans 23 bits and the product alone 25. Elements 32 apart share a
        // lane of one accumulator in every tile (the GEMV row's four accumulators cover 32 elements) and a k
        // block, so the check holds whichever tile runs. k = 4104 takes the 1 x 4 GEMV tile (k > 4096) and
        // prefill k blocks.
        for (format, mw) in [(WeightFormat::F32, 12), (WeightFormat::F16, 10), (WeightFormat::Bf16, 7)] {
            let ex = 24 - mw;
            let (a, b) = (1.0 + 2f32.powi(-ex), 1.0 + 2f32.powi(-mw));
            let exact = f64::from(2f32.powi(-ex)) + f64::from(2f32.powi(-mw)) + 2f64.powi(-24);
            for k in [40, 4104] {
                let mut w = vec![0.0; k];
                (w[0], w[32]) = (-1.0, b);
                let mut data = Vec::new();
                (0..n).for_each(|_| encode_row(format, &w, &mut data));
                let wr = WeightRef { format, layout: WeightLayout::Rows, n, k, data: &data };
                for rows in [1, 4] {
                    let mut x = vec![0.0; rows * k];
                    x.chunks_mut(k).for_each(|r| (r[0], r[32]) = (1.0, a));
                    for &isa in &simd {
                        let mut y = vec![f32::NAN; rows * n];
                        matmul_with(isa, &x, rows, wr, None, &mut y, &mut scratch);
                        let what = format!("{format} {} {rows}x{n}x{k}", isa.name());
                        assert!(y.iter().all(|&v| f64::from(v) == exact), "{what}: {y:?}, exactly {exact}");
                    }
                }
            }
        }
        // Quantized formats, k = 64 (two blocks), activations of block maximum 127 (so d_x = 1 and the quants
        // are the values): block 0 has d_w = 1 and dot -16401, block 1 has d_w = 1 + 2^-10 (an f16) and dot
        // 16385. The exact sum is 16385 (1 + 2^-10) - 16401 = 2^-10; 16385 (1 + 2^-10) rounds to 16401 in f32.
        let f16_bits = |v: f32| half::f16::from_f32(v).to_le_bytes();
        let d1 = 1.0 + 2f32.powi(-10);
        for format in [WeightFormat::Q8_0, WeightFormat::Q4_0] {
            // (activations, weight quants) of each block, zero past the listed values.
            let blocks: [(Vec<i8>, Vec<i8>); 2] = if format == WeightFormat::Q8_0 {
                [(vec![127, 16], vec![-127, -17]), (vec![127, 16, 16], vec![127, 8, 8])]
            } else {
                // q4_0 weight quants are -8..=7.
                let x0: Vec<i8> = [127; 17].into_iter().chain([18]).collect();
                let w0: Vec<i8> = [-8; 16].into_iter().chain([-1, -1]).collect();
                let x1: Vec<i8> = [127; 19].into_iter().chain([2]).collect();
                let w1: Vec<i8> = [7; 18].into_iter().chain([3, 1]).collect();
                [(x0, w0), (x1, w1)]
            };
            let dot = |(x, w): &(Vec<i8>, Vec<i8>)| x.iter().zip(w).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
            assert_eq!(blocks.iter().map(dot).collect::<Vec<i32>>(), [-16401, 16385]);
            let mut row = Vec::new();
            let mut xrow = vec![0.0f32; 64];
            for (i, ((xs, ws), d)) in blocks.iter().zip([1.0, d1]).enumerate() {
                xs.iter().enumerate().for_each(|(j, &v)| xrow[32 * i + j] = f32::from(v));
                let mut q = [0i8; 32];
                q[..ws.len()].copy_from_slice(ws);
                row.extend_from_slice(&f16_bits(d));
                if format == WeightFormat::Q8_0 {
                    row.extend(q.iter().map(|&v| v as u8));
                } else {
                    row.extend((0..16).map(|j| (q[j] + 8) as u8 | ((q[j + 16] + 8) as u8) << 4));
                }
            }
            let data = pack(format, WeightLayout::Interleaved8, 64, &row.repeat(n));
            let wr = WeightRef { format, layout: WeightLayout::Interleaved8, n, k: 64, data: &data };
            for rows in [1, 4] {
                let x = xrow.repeat(rows);
                for &isa in &simd {
                    let mut y = vec![f32::NAN; rows * n];
                    matmul_with(isa, &x, rows, wr, None, &mut y, &mut scratch);
                    let what = format!("{format} {} {rows}x{n}x64", isa.name());
                    assert!(y.iter().all(|&v| v == 2f32.powi(-10)), "{what}: {y:?}, exactly 2^-10");
                }
            }
        }
    }

    #[test]
    fn dequant_row_decodes_one_row() {
        let mut rng = Rng(9);
        for format in WeightFormat::ALL {
            for n in [5, 16] {
                let k = 64;
                let (data, deq) = weights(&mut rng, format, n, k);
                for layout in layouts(format, n) {
                    let data = pack(format, layout, k, &data);
                    let w = WeightRef { format, layout, n, k, data: &data };
                    let mut out = vec![0.0; k];
                    for row in [0, 3, 4, 9, 15].into_iter().filter(|&r| r < n) {
                        dequant_row(w, row, &mut out);
                        assert_eq!(out, &deq[row * k..(row + 1) * k], "{format} {} row {row}", layout.name());
                    }
                }
            }
        }
        // Exact values by hand: an f32 row is copied; a q8_0 block with d = 0.5 (f16 0x3800) gives q / 2.
        let mut data = Vec::new();
        [1.0f32, -2.5, 3.25].iter().for_each(|v| data.extend_from_slice(&v.to_le_bytes()));
        let mut out = [0.0; 3];
        dequant_row(
            WeightRef { layout: WeightLayout::Rows, format: WeightFormat::F32, n: 1, k: 3, data: &data },
            0,
            &mut out,
        );
        assert_eq!(out, [1.0, -2.5, 3.25]);
        let mut blk = vec![0x00, 0x38];
        blk.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut out = [0.0; 32];
        let layout = WeightLayout::Interleaved8;
        let data = pack(WeightFormat::Q8_0, layout, 32, &blk);
        assert_eq!(data.len(), 8 * blk.len(), "one row padded to a group of 8");
        dequant_row(WeightRef { layout, format: WeightFormat::Q8_0, n: 1, k: 32, data: &data }, 0, &mut out);
        assert_eq!((out[0], out[17], out[31]), (-8.0, 0.5, 7.5));
    }

    #[test]
    fn edge_sizes_and_scratch_reuse() {
        let mut scratch = Scratch::default();
        let w = WeightRef { layout: WeightLayout::Interleaved8, format: WeightFormat::Q4_0, n: 0, k: 64, data: &[] };
        matmul(&[0.0; 128], 2, w, None, &mut [], &mut scratch);
        let w = WeightRef { layout: WeightLayout::Rows, format: WeightFormat::F32, n: 2, k: 0, data: &[] };
        let mut y = [9.0; 4];
        matmul(&[], 2, w, Some(&[1.0, 2.0]), &mut y, &mut scratch);
        assert_eq!(y, [1.0, 2.0, 1.0, 2.0]);

        // Steady state: a second call of the same (or a smaller) shape keeps the scratch buffers where they are.
        let mut rng = Rng(5);
        let (data, _) = weights(&mut rng, WeightFormat::Q8_0, 64, 512);
        let layout = WeightLayout::Interleaved8;
        let data = pack(WeightFormat::Q8_0, layout, 512, &data);
        let w = WeightRef { layout, format: WeightFormat::Q8_0, n: 64, k: 512, data: &data };
        let x = activations(&mut rng, 8, 512);
        let mut y = vec![0.0; 8 * 64];
        matmul(&x, 8, w, None, &mut y, &mut scratch);
        let ptrs = (scratch.q8.qs.as_ptr(), scratch.q8.d.as_ptr(), scratch.q8.m.as_ptr());
        matmul(&x, 8, w, None, &mut y, &mut scratch);
        matmul(&x[..512], 1, w, None, &mut y[..64], &mut scratch);
        assert_eq!(ptrs, (scratch.q8.qs.as_ptr(), scratch.q8.d.as_ptr(), scratch.q8.m.as_ptr()));
        let (data, _) = weights(&mut rng, WeightFormat::Bf16, 64, 512);
        let w = WeightRef { layout: WeightLayout::Rows, format: WeightFormat::Bf16, n: 64, k: 512, data: &data };
        matmul(&x, 8, w, None, &mut y, &mut scratch);
        let ptr = scratch.xf.as_ptr();
        matmul(&x, 8, w, None, &mut y, &mut scratch);
        matmul(&x[..512 * 3], 3, w, None, &mut y[..64 * 3], &mut scratch);
        assert_eq!(ptr, scratch.xf.as_ptr());
    }

    #[test]
    fn detected_isa_is_available() {
        assert!(Isa::detect().available());
    }
}
