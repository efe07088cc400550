//! RMSNorm, over a whole row or over each head of it. All arithmetic is f32, as in the float32 reference.

use super::attention::dot;
use super::isa::vectorized_fn;
use super::pool::parallel_chunks_mut;

vectorized_fn! {
    /// One RMSNorm group: `y = x / sqrt(mean(x^2) + eps) * g`, `g` = `w` or `1 + w`.
    fn rms_norm_group(x: &[f32], w: &[f32], eps: f32, unit_offset: bool, y: &mut [f32]) {
        let r = 1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt();
        if unit_offset {
            y.iter_mut().zip(x).zip(w).for_each(|((y, &x), &w)| *y = x * r * (1.0 + w));
        } else {
            y.iter_mut().zip(x).zip(w).for_each(|((y, &x), &w)| *y = x * r * w);
        }
    }
}

/// RMSNorm over each `w.len()`-element group of `x` (a whole row, or one head of it).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, unit_offset: bool, y: &mut [f32]) {
    let n = w.len();
    if x.len() >= 1 << 16 {
        parallel_chunks_mut(y, n, |i, ys| rms_norm_group(&x[i * n..][..n], w, eps, unit_offset, ys));
    } else {
        x.chunks(n).zip(y.chunks_mut(n)).for_each(|(xs, ys)| rms_norm_group(xs, w, eps, unit_offset, ys));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_hand_computation() {
        // mean(x^2) = (9 + 16) / 2 = 12.5; 1/sqrt(12.5) = 0.28284
        let mut y = [0.0; 2];
        rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0, false, &mut y);
        assert!((y[0] - 0.848_528).abs() < 1e-5 && (y[1] - 2.262_742).abs() < 1e-5, "{y:?}");
        rms_norm(&[3.0, 4.0], &[0.0, 1.0], 0.0, true, &mut y);
        assert!((y[0] - 0.848_528).abs() < 1e-5 && (y[1] - 2.262_742).abs() < 1e-5, "{y:?}");
    }
}
