//! q4_0 / q8_0 prefill on AMX tiles (Sapphire Rapids and later Xeons): one tile call multiplies up to 128
//! activation rows by 32 weight rows (four interleaved groups) along its stretch of `k`.
//!
//! The call first re-lays its weights for the tiles, once for all its rows: per 32-element block and 16 weight
//! rows, a B tile (8 rows of 4-byte `k` quads x 16 columns, which is the
//! [`WeightLayout::Interleaved8`](unicorn_ir::quant::WeightLayout) chunk order with two groups side by side,
//! q4_0 nibbles unpacked to the signed `q - 8`) and the 16 scales in f32. Then it walks its rows 16 at a time
//! and its outputs 16 at a time: per block, the activation quants load straight into an A tile (16 rows x 32
//! bytes, rows `ldx` apart), one `tdpbssd` (signed by signed) gives each output's i32 block sum,
//! `sum((q - 8) * x)` exactly, with no correction left for the vector code, which then scales and accumulates
//! in f32 as the 512-bit tiles do (`(dw * dx) * s + acc`, blocks in order), the 16 x 16 sums held in vector
//! registers from the first block to the last. Every output is therefore bit for bit that of the VNNI families
//! (whose i32 sums are the same integers, made as `sum(q * x) - 8 * sum(x)`).
//!
//! What is left on the vector units is one conversion, one multiply and one multiply-add per 16 outputs per
//! block; two blocks' tiles are in flight at a time (tmm0-5), so that one block's integer products overlap the
//! other's vector work. Re-laying the weights once per call rather than once per 32 rows, and holding the sums
//! in registers rather than in memory, are what this layout buys over a call of 32 x 32 outputs.
//!
//! The instructions are written as inline assembly (Rust's AMX intrinsics are not stable), and the CPU is asked
//! for them at run time: CPUID's AMX-TILE and AMX-INT8 bits, then the kernel's permission for the tile data
//! state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, once per process), without which the first
//! tile instruction would fault.

#![cfg(target_arch = "x86_64")]

use super::matmul::TileArgs;
use std::arch::asm;
use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;
use unicorn_ir::types::QK;

/// Activation rows one tile call takes (eight passes of 16).
pub(crate) const ROWS: usize = 128;
/// Weight rows one tile call takes (two 16-column B tiles, four interleaved groups of 8).
pub(crate) const COLS: usize = 32;

const G: usize = 8;
const BG4: usize = G * (2 + QK / 2);
const BG8: usize = G * (2 + QK);

/// Whether CPUID reports AMX-TILE and AMX-INT8 (leaf 7, EDX bits 24 and 25).
pub fn cpu_has_amx_int8() -> bool {
    __cpuid_count(7, 0).edx & (3 << 24) == 3 << 24
}

/// Whether this CPU has AMX-INT8 and the kernel lets this process use the tile registers (asked once).
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        if !cpu_has_amx_int8() {
            return false;
        }
        const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these codes only reads or sets this process's permission bits.
        unsafe {
            if libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0 {
                return false;
            }
            let mut perm: u64 = 0;
            libc::syscall(libc::SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mut perm as *mut u64) == 0
                && perm & (1 << XFEATURE_XTILEDATA) != 0
        }
    })
}

/// The 64-byte tile configuration `ldtilecfg` reads (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Tiles for `m` activation rows, two blocks' worth so that one block's products overlap the other's vector
/// work: tmm0..1 = C (i32, m x 16), tmm2..3 = A (m rows of a block's 32 quants), tmm4..5 = B (8 rows of four
/// `k` quads x 16 outputs).
fn config(m: usize) -> TileConfig {
    let mut c = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
    for t in 0..2 {
        (c.rows[t], c.colsb[t]) = (m as u8, 64);
        (c.rows[2 + t], c.colsb[2 + t]) = (m as u8, QK as u16);
        (c.rows[4 + t], c.colsb[4 + t]) = ((QK / 4) as u8, 64);
    }
    c
}

/// One block of 16 weight rows laid out as a B tile: row `t` holds `k` quad `t` of the first group's 8 rows,
/// then the second group's (the [`WeightLayout::Interleaved8`](unicorn_ir::quant::WeightLayout) chunk order,
/// two groups side by side, q4_0 nibbles unpacked to the signed `q - 8`), and the 16 rows' scales in f32.
#[repr(C, align(64))]
struct Packed {
    q: [u8; 8 * 64],
    d: [f32; 16],
}

/// A block's integer sums for the two tiles in flight (16 rows of 16 i32 each).
#[repr(C, align(64))]
struct Sums([[i32; 256]; 2]);

/// Blocks of `k` one call takes (a prefill k-block of the matmul: [`super::matmul`]'s `K_BLOCK_BYTES`).
const MAX_BLOCKS: usize = 64;
/// The longest stretch of `k` a call takes.
pub(crate) const MAX_K: usize = MAX_BLOCKS * QK;

/// Re-lays half `j` of the tile's weights (groups `2j` and `2j + 1`) for all `blocks` blocks into `dst`; a group
/// past the matrix becomes zero quants and zero scales.
///
/// # Safety
/// As [`tile`]; `dst` valid for `blocks` writes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn pack<const Q4: bool>(a: &TileArgs, j: usize, blocks: usize, dst: *mut Packed) {
    let groups = a.cols.div_ceil(G);
    let bg = if Q4 { BG4 } else { BG8 };
    let (mask, eight) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(8));
    for b in 0..blocks {
        let out = &mut *dst.add(b);
        for half in 0..2 {
            let g = 2 * j + half;
            let q = out.q.as_mut_ptr().add(32 * half);
            if g >= groups {
                for t in 0..8 {
                    _mm256_storeu_si256(q.add(64 * t).cast(), _mm256_setzero_si256());
                }
                _mm256_storeu_ps(out.d.as_mut_ptr().add(8 * half), _mm256_setzero_ps());
                continue;
            }
            let p = a.w.add(g * G * a.ldw + b * bg);
            if Q4 {
                for t in 0..4 {
                    let v = _mm256_loadu_si256(p.add(2 * G + 32 * t).cast());
                    let lo = _mm256_sub_epi8(_mm256_and_si256(v, mask), eight);
                    let hi = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(v, 4), mask), eight);
                    _mm256_storeu_si256(q.add(64 * t).cast(), lo);
                    _mm256_storeu_si256(q.add(64 * (4 + t)).cast(), hi);
                }
            } else {
                for t in 0..8 {
                    _mm256_storeu_si256(q.add(64 * t).cast(), _mm256_loadu_si256(p.add(2 * G + 32 * t).cast()));
                }
            }
            _mm256_storeu_ps(out.d.as_mut_ptr().add(8 * half), _mm256_cvtph_ps(_mm_loadu_si128(p.cast())));
        }
    }
}

/// The f32 sums of 16 rows (starting at `x`) by 16 outputs (`w`, re-laid) over `blocks` blocks: per block one
/// `tdpbssd` gives each output's i32 block sum, `sum((q - 8) * x)` exactly, and the vector code scales and adds
/// it, `(dw * dx) * s + acc`, blocks in order, as the 512-bit VNNI tiles do; so every output is bit for bit
/// theirs. Rows past the configured ones come out as garbage (their `dx` are zeros; they are not stored).
///
/// # Safety
/// Tiles configured by [`config`]; `x` valid for the configured rows of `blocks * QK` bytes, `ldx` apart; `w`
/// and `dx` for `blocks` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn sums(
    x: *const u8,
    ldx: usize,
    w: *const Packed,
    blocks: usize,
    dx: *const [f32; 16],
    c: &mut Sums,
) -> [__m512; 16] {
    #[inline(always)]
    unsafe fn add(acc: &mut [__m512; 16], c: &[i32; 256], w: &Packed, dx: &[f32; 16]) {
        let dw = _mm512_load_ps(w.d.as_ptr());
        for (r, acc) in acc.iter_mut().enumerate() {
            let s = _mm512_cvtepi32_ps(_mm512_load_si512(c.as_ptr().add(16 * r).cast()));
            *acc = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(dx[r])), s, *acc);
        }
    }
    // One block's product: A (tmm `a`) from `x`, B (tmm `b`) from `w`, C (tmm `c`) = A x B stored at `{cp}`.
    #[rustfmt::skip]
    macro_rules! block {
        ($c:literal, $a:literal, $b:literal, $x_off:literal, $w_off:literal, $cp:literal) => {
            concat!(
                "tileloadd tmm", $a, ", [{x} + {ld}*1", $x_off, "]\n",
                "tileloadd tmm", $b, ", [{w} + {s}*1", $w_off, "]\n",
                "tilezero tmm", $c, "\n",
                "tdpbssd tmm", $c, ", tmm", $a, ", tmm", $b, "\n",
                "tilestored [{", $cp, "} + {s}*1], tmm", $c, "\n",
            )
        };
    }
    let mut acc = [_mm512_setzero_ps(); 16];
    let mut b = 0;
    while b + 2 <= blocks {
        asm!(
            block!("0", "2", "4", "", "", "c0"),
            block!("1", "3", "5", " + 32", " + {next}", "c1"),
            x = in(reg) x.add(b * QK),
            ld = in(reg) ldx,
            w = in(reg) w.add(b),
            s = in(reg) 64usize,
            next = const std::mem::size_of::<Packed>(),
            c0 = in(reg) c.0[0].as_mut_ptr(),
            c1 = in(reg) c.0[1].as_mut_ptr(),
            options(nostack),
        );
        add(&mut acc, &c.0[0], &*w.add(b), &*dx.add(b));
        add(&mut acc, &c.0[1], &*w.add(b + 1), &*dx.add(b + 1));
        b += 2;
    }
    if b < blocks {
        asm!(
            block!("0", "2", "4", "", "", "c0"),
            x = in(reg) x.add(b * QK),
            ld = in(reg) ldx,
            w = in(reg) w.add(b),
            s = in(reg) 64usize,
            c0 = in(reg) c.0[0].as_mut_ptr(),
            options(nostack),
        );
        add(&mut acc, &c.0[0], &*w.add(b), &*dx.add(b));
    }
    acc
}

/// Writes rows `r0..r0 + m`, outputs `16j..` (as many of 16 as the tile has) of the sums: `y = acc`, plus the
/// bias or what `y` holds (see [`TileArgs`]).
///
/// # Safety
/// As [`tile`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn store(a: &TileArgs, r0: usize, m: usize, j: usize, acc: &[__m512; 16]) {
    let c0 = 16 * j;
    let n = (a.cols - c0).min(16);
    let mask: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
    for (r, &v) in acc.iter().enumerate().take(m) {
        let y = a.y.add((r0 + r) * a.ldy + c0);
        let v = if a.accumulate {
            _mm512_add_ps(_mm512_maskz_loadu_ps(mask, y), v)
        } else if a.bias.is_null() {
            v
        } else {
            _mm512_add_ps(_mm512_maskz_loadu_ps(mask, a.bias.add(c0)), v)
        };
        _mm512_mask_storeu_ps(y, mask, v);
    }
}

/// The tile function: `a.rows <= ROWS`, `a.cols <= COLS`, `a.k <= MAX_K` (see [`TileArgs`]); the weight groups
/// a tile covers exist up to `ceil(cols / 8)` (the compiler pads rows to whole groups), and no further group is
/// read.
///
/// The call's weights are re-laid for the tiles once (see [`pack`]) and then serve all its rows: 16 rows by 16
/// outputs at a time, whose f32 sums stay in sixteen vector registers over every block of `k`.
///
/// # Safety
/// [`available`] returned true; AVX-512 F/BW/VL, AVX2, FMA and F16C are present; the pointers are valid as
/// [`TileArgs`] describes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn tile<const Q4: bool>(a: &TileArgs) {
    assert!(a.rows >= 1 && a.rows <= ROWS && a.cols >= 1 && a.cols <= COLS && a.k.is_multiple_of(QK) && a.k <= MAX_K);
    let blocks = a.k / QK;
    let halves = a.cols.div_ceil(16);
    let mut packed = MaybeUninit::<[[Packed; MAX_BLOCKS]; 2]>::uninit();
    let packed = packed.as_mut_ptr().cast::<[Packed; MAX_BLOCKS]>();
    for j in 0..halves {
        pack::<Q4>(a, j, blocks, (*packed.add(j)).as_mut_ptr());
    }
    let mut dx = MaybeUninit::<[[f32; 16]; MAX_BLOCKS]>::uninit();
    let dx = dx.as_mut_ptr().cast::<[f32; 16]>();
    let mut c = Sums([[0; 256]; 2]);
    let mut configured = 0;
    for r0 in (0..a.rows).step_by(16) {
        let m = (a.rows - r0).min(16);
        if m != configured {
            let cfg = config(m);
            asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly));
            configured = m;
        }
        // The rows' activation scales, block by block, as 16-lane vectors (zeros past the last row).
        let lanes = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(a.ldxd as i32),
        );
        let mask: __mmask16 = if m == 16 { 0xffff } else { (1u16 << m) - 1 };
        let xd = a.xd.add(r0 * a.ldxd);
        for b in 0..blocks {
            let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, lanes, xd.add(b).cast());
            _mm512_storeu_ps((*dx.add(b)).as_mut_ptr(), v);
        }
        let x = a.x.add(r0 * a.ldx);
        for j in 0..halves {
            let acc = sums(x, a.ldx, (*packed.add(j)).as_ptr(), blocks, dx, &mut c);
            store(a, r0, m, j, &acc);
        }
    }
    asm!("tilerelease", options(nostack, nomem));
}
