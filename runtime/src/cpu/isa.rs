//! Which vector instruction set the CPU kernels use, detected once per process.

use std::sync::OnceLock;

/// A family of kernels. Every variant is compiled on x86-64; [`Isa::available`] says whether this CPU runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust that the compiler may auto-vectorize; runs anywhere.
    Portable,
    /// x86-64 AVX2 + FMA + F16C (Haswell, Zen 1 and later).
    Avx2,
    /// AVX2 plus AVX-512 VNNI and VL (Ice Lake, Zen 4 and later): int8 dot products in one instruction, still on
    /// 256-bit vectors.
    Avx512Vnni,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512Vnni];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
        }
    }

    /// Whether this CPU can run the kernels of `self`.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx2.available()
                    && is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512f")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512Vnni => false,
        }
    }

    /// The best available kernels, detected on first use. `UNICORN_CPU_ISA=portable` (or `avx2`, `avx512vnni`)
    /// forces a choice, for debugging and comparisons; a forced ISA this CPU lacks is ignored.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let forced = std::env::var("UNICORN_CPU_ISA").ok();
            let forced = Isa::ALL.into_iter().find(|i| forced.as_deref() == Some(i.name()));
            match forced {
                Some(isa) if isa.available() => isa,
                _ => Isa::ALL.into_iter().rev().find(|i| i.available()).unwrap_or(Isa::Portable),
            }
        })
    }
}

/// Defines a function whose body is compiled twice: for baseline x86-64 (SSE2, which the crate targets) and
/// with AVX2 and FMA enabled, the second chosen at run time when the CPU has them ([`Isa::detect`] is not
/// `Portable`).
///
/// For plain-Rust slice loops that the compiler vectorizes: written once, they become 8-lane AVX2 code in the
/// second instance. The body must only call functions that inline (`#[inline(always)]` helpers, iterator
/// adapters): a call that stays a call runs that callee's baseline code. Keep `f32::mul_add` out of bodies, as
/// on the portable path it is a libm call.
macro_rules! vectorized_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if $crate::cpu::isa::Isa::detect() != $crate::cpu::isa::Isa::Portable {
                    // SAFETY: detect() returns an AVX2 family only when the CPU has AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use vectorized_fn;
