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
