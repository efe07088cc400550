//! The CPU backend: reference-quality kernels with AVX2/FMA paths chosen at run time.

pub mod isa;
pub mod matmul;
pub mod matmul_avx2;
pub mod matmul_vnni;
pub mod ops;
pub mod q8;
