//! The CPU backend: kernels with AMX tiles (prefill), AVX-512 (512-bit), AVX-512 VNNI (256-bit), AVX2/FMA and
//! portable paths, chosen at run time.

pub mod amx;
pub mod attention;
pub mod elementwise;
pub mod exec;
pub mod isa;
pub mod kv;
pub mod matmul;
pub mod matmul_avx2;
pub mod matmul_x16;
pub mod matmul_x8;
pub mod norm;
pub mod pool;
pub mod q8;
pub mod rope;
