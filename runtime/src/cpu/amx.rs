//! q4_0 / q8_0 prefill on AMX tiles (Sapphire Rapids and later Xeons): one tile call multiplies up to 32
//! activation rows by 32 weight rows (four interleaved groups) along its stretch of `k`.
//!
//! Per 32-element block: the activation quants load straight into two A tiles (16 rows x 32 bytes, rows `ldx`
//! apart); the weight quants of the four groups are re-laid into two B tiles (8 rows of 4-byte `k` quads x 16
//! columns, which is the [`WeightLayout::Interleaved8`](unicorn_ir::quant::WeightLayout) chunk order with two
//! groups side by side, q4_0 nibbles unpacked to the signed `q - 8` while they are re-laid); four `tdpbssd`
//! (signed by signed) give each output's i32 block sum, `sum((q - 8) * x)` exactly, with no correction left for
//! the vector code, which then scales and accumulates in f32 as the 512-bit tiles do (`(dw * dx) * s + acc`,
//! blocks in order). Every output is therefore bit for bit that of the VNNI families (whose i32 sums are the
//! same integers, made as `sum(q * x) - 8 * sum(x)`).
//!
//! A block's integer products are one AMX instruction per 16 x 16 outputs; what is left on the vector units is
//! one conversion and one multiply-add per 16 outputs per block, where the VNNI tiles also spend a broadcast and
//! a `dpbusd` per 4 elements.
//!
//! The instructions are written as inline assembly (Rust's AMX intrinsics are not stable), and the CPU is asked
//! for them at run time: CPUID's AMX-TILE and AMX-INT8 bits, then the kernel's permission for the tile data
//! state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, once per process), without which the first
//! tile instruction would fault.

#![cfg(target_arch = "x86_64")]

use super::matmul::TileArgs;
use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;
use unicorn_ir::types::QK;

/// Activation rows one tile call takes (two 16-row A tiles).
pub(crate) const ROWS: usize = 32;
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

/// Tiles: tmm0..3 = C[i][j] (i32, 16 x 16) at `2 * i + j`, tmm4..5 = A[i], tmm6..7 = B[j].
fn config(m: [usize; 2]) -> TileConfig {
    let mut c = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
    for (i, &mi) in m.iter().enumerate().filter(|(_, &mi)| mi > 0) {
        for j in 0..2 {
            (c.rows[2 * i + j], c.colsb[2 * i + j]) = (mi as u8, 64);
        }
        (c.rows[4 + i], c.colsb[4 + i]) = (mi as u8, QK as u16);
    }
    for j in 0..2 {
        (c.rows[6 + j], c.colsb[6 + j]) = ((QK / 4) as u8, 64);
    }
    c
}

/// One block's re-laid weights and integer sums, and the tile's f32 sums.
#[repr(C, align(64))]
struct Work {
    b: [[u8; 8 * 64]; 2],
    c: [[i32; 256]; 4],
    acc: [[f32; COLS]; ROWS],
}

/// Loads A and B for block `b` into tmm4..7 and leaves C[i][j] = A[i] * B[j] in `work.c`.
///
/// # Safety
/// Tiles configured by [`config`] for the row counts `m`; `x` valid for `m` rows of `ldx` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn block_product(x: *const u8, ldx: usize, m: [usize; 2], work: &mut Work) {
    // Row tile i: A[i] in tmm(4 + i), C[i][0..2] in tmm(2i), tmm(2i + 1).
    macro_rules! product {
        ($i:literal, $a:literal, $c0:literal, $c1:literal, $op:literal) => {
            if m[$i] > 0 {
                asm!(
                    concat!("tileloadd ", $a, ", [{x} + {ld}*1]"),
                    concat!("tilezero ", $c0),
                    concat!("tilezero ", $c1),
                    concat!($op, " ", $c0, ", ", $a, ", tmm6"),
                    concat!($op, " ", $c1, ", ", $a, ", tmm7"),
                    concat!("tilestored [{p0} + {s}*1], ", $c0),
                    concat!("tilestored [{p1} + {s}*1], ", $c1),
                    x = in(reg) x.add($i * 16 * ldx),
                    ld = in(reg) ldx,
                    p0 = in(reg) work.c[2 * $i].as_mut_ptr(),
                    p1 = in(reg) work.c[2 * $i + 1].as_mut_ptr(),
                    s = in(reg) 64usize,
                    options(nostack),
                );
            }
        };
    }
    asm!(
        "tileloadd tmm6, [{b0} + {s}*1]",
        "tileloadd tmm7, [{b1} + {s}*1]",
        b0 = in(reg) work.b[0].as_ptr(),
        b1 = in(reg) work.b[1].as_ptr(),
        s = in(reg) 64usize,
        options(nostack, readonly),
    );
    product!(0, "tmm4", "tmm0", "tmm1", "tdpbssd");
    product!(1, "tmm5", "tmm2", "tmm3", "tdpbssd");
}

/// The tile function: `a.rows <= ROWS`, `a.cols <= COLS` (see [`TileArgs`]); the weight groups a tile covers
/// exist up to `ceil(cols / 8)` (the compiler pads rows to whole groups), and no further group is read.
///
/// # Safety
/// [`available`] returned true; AVX-512 F/BW/VL, AVX2, FMA and F16C are present; the pointers are valid as
/// [`TileArgs`] describes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn tile<const Q4: bool>(a: &TileArgs) {
    debug_assert!(a.rows >= 1 && a.rows <= ROWS && a.cols >= 1 && a.cols <= COLS);
    let m = [a.rows.min(16), a.rows.saturating_sub(16)];
    let groups = a.cols.div_ceil(G);
    let halves = groups.div_ceil(2);
    let bg = if Q4 { BG4 } else { BG8 };
    let cfg = config(m);
    asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly));
    let mut work = Work { b: [[0; 8 * 64]; 2], c: [[0; 256]; 4], acc: [[0.0; COLS]; ROWS] };
    let (mask, eight) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(8));
    for b in 0..a.k / QK {
        // B[j] row t (k quad t of the block) = group 2j's 8 columns' quad t, then group 2j+1's. A group past
        // the matrix stays zeros.
        let mut dw = [_mm512_setzero_ps(); 2];
        for g in 0..groups {
            let p = a.w.add(g * G * a.ldw + b * bg);
            let (half, dst) = (g % 2, work.b[g / 2].as_mut_ptr().add(32 * (g % 2)));
            if Q4 {
                for t in 0..4 {
                    let v = _mm256_loadu_si256(p.add(2 * G + 32 * t).cast());
                    let lo = _mm256_sub_epi8(_mm256_and_si256(v, mask), eight);
                    let hi = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(v, 4), mask), eight);
                    _mm256_storeu_si256(dst.add(64 * t).cast(), lo);
                    _mm256_storeu_si256(dst.add(64 * (4 + t)).cast(), hi);
                }
            } else {
                for t in 0..8 {
                    _mm256_storeu_si256(dst.add(64 * t).cast(), _mm256_loadu_si256(p.add(2 * G + 32 * t).cast()));
                }
            }
            let s = _mm256_cvtph_ps(_mm_loadu_si128(p.cast()));
            // (insertf64x4 is AVX-512 F; the f32x8 form would need DQ.)
            let hi = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(dw[g / 2]), _mm256_castps_pd(s), 1));
            dw[g / 2] = if half == 0 { _mm512_castps256_ps512(s) } else { hi };
        }
        block_product(a.x.add(b * QK), a.ldx, m, &mut work);
        for (i, &mi) in m.iter().enumerate() {
            for rr in 0..mi {
                let r = 16 * i + rr;
                let xi = r * a.ldxd + b;
                let dx = _mm512_set1_ps(*a.xd.add(xi));
                for (j, &dw) in dw.iter().enumerate().take(halves) {
                    let s = _mm512_cvtepi32_ps(_mm512_loadu_si512(work.c[2 * i + j].as_ptr().add(16 * rr).cast()));
                    let acc = work.acc[r].as_mut_ptr().add(16 * j);
                    _mm512_storeu_ps(acc, _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), s, _mm512_loadu_ps(acc)));
                }
            }
        }
    }
    asm!("tilerelease", options(nostack, nomem));
    for r in 0..a.rows {
        for j in 0..halves {
            let c0 = 16 * j;
            let n = (a.cols - c0).min(16);
            let m: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
            let y = a.y.add(r * a.ldy + c0);
            let v = _mm512_loadu_ps(work.acc[r].as_ptr().add(c0));
            let v = if a.accumulate {
                _mm512_add_ps(_mm512_maskz_loadu_ps(m, y), v)
            } else if a.bias.is_null() {
                v
            } else {
                _mm512_add_ps(_mm512_maskz_loadu_ps(m, a.bias.add(c0)), v)
            };
            _mm512_mask_storeu_ps(y, m, v);
        }
    }
}
