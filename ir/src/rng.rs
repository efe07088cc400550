//! A small deterministic generator (xorshift64) for the inputs of tests and benchmarks: the same values on
//! every run and every machine, with no dependency. Not for anything a user sees (sampling has its own).

/// xorshift64 (shifts 13, 7, 17). The seed must not be 0, which would stay 0.
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The high 32 bits of the next value.
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in [-1, 1), on a grid of 2^-23 (the next value's top 24 bits).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// `n` values of [`XorShift::f32`] times `scale`.
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }

    /// In `0..n` (by remainder, so not exactly uniform unless `n` is a power of two).
    pub fn below(&mut self, n: u32) -> u32 {
        self.next_u32() % n
    }
}

#[cfg(test)]
mod tests {
    use super::XorShift;

    #[test]
    fn values_are_in_range_and_reproducible() {
        let (mut a, mut b) = (XorShift(7), XorShift(7));
        let v = a.vec(10_000, 1.0);
        assert_eq!(v, b.vec(10_000, 1.0));
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        // A uniform variable on [-1, 1) has mean 0 and variance 1/3.
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.03 && (var - 1.0 / 3.0).abs() < 0.02, "{mean} {var}");
        // The first value from seed 1: 1 ^ 1<<13 = 0x2001; ^ >>7 = 0x2041; ^ <<17 = 0x4082_2041.
        assert_eq!(XorShift(1).next_u64(), 0x4082_2041);
    }
}
