//! Rotary position embedding (rotate-half convention), in f32 as in the float32 reference.

use super::pool::parallel_chunks_mut;

/// Rotary embedding, rotate-half convention: within each head, element `i` pairs with `i + head_dim/2`.
/// Row `r` is at absolute position `start + r`.
pub fn rope(x: &[f32], width: usize, head_dim: usize, start: usize, inv_freq: &[f32], y: &mut [f32]) {
    let half = head_dim / 2;
    parallel_chunks_mut(y, width, |r, yr| {
        let xr = &x[r * width..][..width];
        let pos = (start + r) as f32;
        for (f, &inv) in inv_freq.iter().enumerate().take(half) {
            // The reference computes the angle in f32 too.
            let (sin, cos) = (pos * inv).sin_cos();
            for h in (0..width).step_by(head_dim) {
                let (a, b) = (xr[h + f], xr[h + f + half]);
                yr[h + f] = a * cos - b * sin;
                yr[h + f + half] = b * cos + a * sin;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_pairs_by_position_times_frequency() {
        // head_dim 4: pairs (0,2) at frequency 1 and (1,3) at frequency 0.5; position 2 -> angles 2 and 1.
        let x = [1.0, 1.0, 0.0, 0.0];
        let mut y = [0.0; 4];
        rope(&x, 4, 4, 2, &[1.0, 0.5], &mut y);
        let expect = [2f32.cos(), 1f32.cos(), 2f32.sin(), 1f32.sin()];
        for (a, b) in y.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
    }
}
