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
    /// AVX-512 F, BW, VL and VNNI on 512-bit vectors (Ice Lake, Zen 4 and later): the int8 kernels take 16
    /// weight rows per vector. Zen 4 executes a 512-bit op as two 256-bit halves, so there the gain is fewer
    /// instructions per multiply-add (broadcasts, loads, scale steps), not a wider datapath.
    Avx512,
    /// [`Isa::Avx512`] plus AMX-INT8 tiles for prefill's q8_0/q4_0 matmuls (Sapphire Rapids and later Xeons),
    /// where the kernel grants this process the tile state (see [`super::amx`]).
    Amx,
}

impl Isa {
    pub const ALL: [Isa; 5] = [Isa::Portable, Isa::Avx2, Isa::Avx512Vnni, Isa::Avx512, Isa::Amx];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Avx512 => "avx512",
            Isa::Amx => "amx",
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
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Isa::Avx512Vnni.available() && is_x86_feature_detected!("avx512bw"),
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => Isa::Avx512.available() && super::amx::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512Vnni | Isa::Avx512 | Isa::Amx => false,
        }
    }

    /// The family named `name` (as `UNICORN_CPU_ISA` takes it), if this CPU runs it.
    pub fn parse(name: &str) -> Result<Isa, String> {
        let names = |v: Vec<Isa>| v.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ");
        let isa = Isa::ALL.into_iter().find(|i| i.name() == name).ok_or_else(|| {
            format!("UNICORN_CPU_ISA={name}: unknown kernel family (known: {})", names(Isa::ALL.to_vec()))
        })?;
        if !isa.available() {
            return Err(format!(
                "UNICORN_CPU_ISA={name}: this CPU cannot run those kernels (it runs: {})",
                names(Isa::available_all())
            ));
        }
        Ok(isa)
    }

    /// Every family this CPU runs, slowest first.
    pub fn available_all() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.available()).collect()
    }

    /// The family `UNICORN_CPU_ISA` forces (`portable`, `avx2`, `avx512vnni`, `avx512`, `amx`; for debugging and comparisons), or
    /// the best available one when it is unset or empty. A name that is unknown, or a family this CPU lacks, is an
    /// error: a forced choice never falls back quietly.
    pub fn from_env() -> Result<Isa, String> {
        match std::env::var("UNICORN_CPU_ISA") {
            Ok(name) if !name.is_empty() => Isa::parse(&name),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(Isa::best()),
            Err(std::env::VarError::NotUnicode(_)) => Err("UNICORN_CPU_ISA is not valid UTF-8".into()),
        }
    }

    /// The fastest family this CPU runs, chosen by default: [`Isa::Amx`] where the CPU has AMX-INT8 and the
    /// kernel grants the tile state (on an Intel Xeon with AMX its tiles matched the 512-bit ones bit for bit
    /// and transformers end to end, and prefilled 1.2-1.4x faster than the 512-bit family; docs/benchmarks.md).
    pub fn best() -> Isa {
        Isa::ALL.into_iter().rev().find(|i| i.available()).unwrap_or(Isa::Portable)
    }

    /// The kernels in use: [`Isa::from_env`], decided on first use. Panics if `UNICORN_CPU_ISA` is invalid; the
    /// binaries call [`Isa::from_env`] first and report that as an error.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| Isa::from_env().unwrap_or_else(|e| panic!("{e}")))
    }
}

/// How a decode GEMV (one activation row of int8 weights, read once per token) streams its weights. The memory
/// systems differ: on Zen 4 one sequential stream per thread, left to the hardware prefetchers, reads at 84-98%
/// of the machine's bandwidth, and a second stream or software prefetch only slowed it (Llama-3.2-1B q4_0, one
/// thread: 26.4 GB/s against 15.5 with two streams, 22.5 with prefetch 1 KiB ahead); on a Sapphire Rapids Xeon
/// one stream per thread is latency-bound (11.6 GB/s a thread), and two streams a tile (the 512-bit tiles' two
/// groups of 8 rows) with each stream prefetched 3 KiB ahead read 1.4x as fast (16.4 GB/s; q8_0 1.3x).
/// docs/benchmarks.md has the runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeStreams {
    /// Groups of 8 weight rows one tile reads at once (each group a stream of its own): 1, or 2 where the kernel
    /// family has 512-bit tiles (others take 1).
    pub groups: usize,
    /// How far ahead of each stream a tile prefetches, in bytes; 0 for none.
    pub prefetch: usize,
}

impl DecodeStreams {
    /// One stream a tile, no software prefetch: AMD's cores, and any CPU not measured.
    pub const ONE: DecodeStreams = DecodeStreams { groups: 1, prefetch: 0 };
    /// Two streams a tile, each prefetched 3 KiB ahead: Intel's cores.
    pub const INTEL: DecodeStreams = DecodeStreams { groups: 2, prefetch: 3 << 10 };
    /// Where a prefetch distance stops making sense (a stream is one matrix's group: tens of KiB).
    pub const MOST_PREFETCH: usize = 1 << 16;

    /// The default for this CPU, by its vendor (CPUID leaf 0).
    pub fn for_this_cpu() -> DecodeStreams {
        #[cfg(target_arch = "x86_64")]
        {
            let id = std::arch::x86_64::__cpuid(0);
            // "GenuineIntel" is EBX, EDX, ECX.
            if (id.ebx, id.edx, id.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e) {
                return DecodeStreams::INTEL;
            }
        }
        DecodeStreams::ONE
    }

    /// `UNICORN_CPU_DECODE=GROUPS[:PREFETCH]` (say `2:3072`, or `1:0`; for tuning and comparisons), or this CPU's
    /// default where it is unset or empty. Anything else is an error naming the variable.
    pub fn from_env() -> Result<DecodeStreams, String> {
        match std::env::var("UNICORN_CPU_DECODE") {
            Ok(v) if !v.is_empty() => DecodeStreams::parse(&v),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(DecodeStreams::for_this_cpu()),
            Err(std::env::VarError::NotUnicode(_)) => Err("UNICORN_CPU_DECODE is not valid UTF-8".into()),
        }
    }

    /// `GROUPS[:PREFETCH]`: groups 1 or 2, prefetch bytes up to [`Self::MOST_PREFETCH`].
    pub fn parse(v: &str) -> Result<DecodeStreams, String> {
        let bad = |why: &str| format!("UNICORN_CPU_DECODE={v}: {why} (expected GROUPS[:PREFETCH_BYTES], say 2:3072)");
        let (g, p) = v.split_once(':').unwrap_or((v, "0"));
        let groups = match g.trim().parse::<usize>() {
            Ok(g @ 1..=2) => g,
            _ => return Err(bad("groups must be 1 or 2")),
        };
        let prefetch = match p.trim().parse::<usize>() {
            Ok(p) if p <= Self::MOST_PREFETCH => p,
            _ => return Err(bad(&format!("prefetch must be 0 to {} bytes", Self::MOST_PREFETCH))),
        };
        Ok(DecodeStreams { groups, prefetch })
    }

    /// The streams in use: [`DecodeStreams::from_env`], decided on first use. Panics if `UNICORN_CPU_DECODE` is
    /// invalid; the binaries call [`DecodeStreams::from_env`] first and report that as an error.
    pub fn detect() -> DecodeStreams {
        static STREAMS: OnceLock<DecodeStreams> = OnceLock::new();
        *STREAMS.get_or_init(|| DecodeStreams::from_env().unwrap_or_else(|e| panic!("{e}")))
    }
}

/// Defines a function whose body is compiled twice: for baseline x86-64 (SSE2, which the crate targets) and
/// with AVX2, FMA and F16C enabled, the second chosen at run time when the CPU has them ([`Isa::detect`] is
/// not `Portable`).
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
                #[target_feature(enable = "avx2,fma,f16c")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if $crate::cpu::isa::Isa::detect() != $crate::cpu::isa::Isa::Portable {
                    // SAFETY: detect() returns an AVX2 family only when the CPU has AVX2, FMA and F16C.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use vectorized_fn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forced_family_is_checked_never_ignored() {
        let e = Isa::parse("avx9000").unwrap_err();
        assert!(e.contains("UNICORN_CPU_ISA=avx9000") && e.contains("portable, avx2, avx512vnni, avx512, amx"), "{e}");
        assert_eq!(Isa::parse("portable"), Ok(Isa::Portable));
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()).is_ok(), isa.available(), "{}", isa.name());
            if !isa.available() {
                let e = Isa::parse(isa.name()).unwrap_err();
                assert!(e.contains("cannot run"), "{e}");
            }
        }
        assert!(Isa::best().available());
        // The default is the fastest family the CPU has.
        assert_eq!(Isa::available_all().last(), Some(&Isa::best()));
        eprintln!("CPU kernel families here: {:?}, in use: {}", Isa::available_all(), Isa::detect().name());
    }

    #[test]
    fn decode_streams_are_parsed_and_checked() {
        assert_eq!(DecodeStreams::parse("2:3072"), Ok(DecodeStreams { groups: 2, prefetch: 3072 }));
        assert_eq!(DecodeStreams::parse("1"), Ok(DecodeStreams::ONE));
        assert_eq!(DecodeStreams::parse("2:0"), Ok(DecodeStreams { groups: 2, prefetch: 0 }));
        for (v, why) in
            [("3:0", "groups"), ("0", "groups"), ("x", "groups"), ("1:70000", "prefetch"), ("2:-1", "prefetch")]
        {
            let e = DecodeStreams::parse(v).unwrap_err();
            assert!(e.contains(&format!("UNICORN_CPU_DECODE={v}")) && e.contains(why), "{e}");
        }
        let here = DecodeStreams::for_this_cpu();
        assert!(here == DecodeStreams::ONE || here == DecodeStreams::INTEL, "{here:?}");
        eprintln!("decode streams here: {here:?}");
    }
}
