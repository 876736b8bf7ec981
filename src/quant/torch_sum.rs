//! torch's CPU summation order for contiguous f32 vectors (ATen `cascade_sum`: 8-lane vectors, four
//! interleaved accumulators, a four-level cascade), so sums and means used by bitsandbytes' double
//! quantization (`absmax.mean()`) are reproduced bit for bit. Single-threaded torch only: above
//! 32,768 values a multi-threaded torch splits the sum differently.

/// Lanes of ATen's `Vectorized<float>` used by its CPU sum kernel (AVX2 / NEON / default: 8).
const TORCH_SUM_LANES: usize = 8;

/// ATen's `multi_row_sum`: four-level cascade over `size` rows of `NROWS` lane-wise accumulators.
fn multi_row_sum<const NROWS: usize, const W: usize>(
    load: impl Fn(usize, usize) -> [f32; W],
    size: usize,
) -> [[f32; W]; NROWS] {
    const LEVELS: usize = 4;
    let ceil_log2 = if size <= 1 {
        0
    } else {
        (usize::BITS - (size - 1).leading_zeros()) as usize
    };
    let level_power = (ceil_log2 / LEVELS).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0.0f32; W]; NROWS]; LEVELS];
    let add = |a: &mut [f32; W], b: &[f32; W]| a.iter_mut().zip(b).for_each(|(x, y)| *x += *y);
    let mut i = 0usize;
    while i + level_step <= size {
        for _ in 0..level_step {
            for (k, a) in acc[0].iter_mut().enumerate() {
                add(a, &load(i, k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let (below, above) = acc.split_at_mut(j);
            for (hi, lo) in above[0].iter_mut().zip(below[j - 1].iter_mut()) {
                add(hi, lo);
                *lo = [0.0; W];
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for (k, a) in acc[0].iter_mut().enumerate() {
            add(a, &load(i, k));
        }
        i += 1;
    }
    for j in 1..LEVELS {
        let (first, rest) = acc.split_at_mut(1);
        for (lo, hi) in first[0].iter_mut().zip(rest[j - 1].iter()) {
            add(lo, hi);
        }
    }
    acc[0]
}

/// ATen's `row_sum`: `multi_row_sum` over four interleaved rows, then the tail, then the rows.
fn row_sum<const W: usize>(load: impl Fn(usize) -> [f32; W], size: usize) -> [f32; W] {
    const ILP: usize = 4;
    let size_ilp = size / ILP;
    let mut p = multi_row_sum::<ILP, W>(|i, k| load(i * ILP + k), size_ilp);
    for i in size_ilp * ILP..size {
        let v = load(i);
        p[0].iter_mut().zip(&v).for_each(|(x, y)| *x += *y);
    }
    for k in 1..ILP {
        let v = p[k];
        p[0].iter_mut().zip(&v).for_each(|(x, y)| *x += *y);
    }
    p[0]
}

/// `torch.sum` of a contiguous fp32 vector on CPU, bit for bit (single-threaded `cascade_sum`).
///
/// Vectors of at least 8 values take ATen's `vectorized_inner_sum` (8-lane cascade, scalar tail,
/// then the lanes in order); shorter ones take `scalar_inner_sum`. Matches single-threaded torch at
/// any length; with several threads torch splits sums over more than 32768 values per thread.
pub fn torch_sum_f32(v: &[f32]) -> f32 {
    const W: usize = TORCH_SUM_LANES;
    if v.len() < W {
        return row_sum::<1>(|i| [v[i]], v.len())[0];
    }
    let vec_size = v.len() / W;
    let lanes = row_sum::<W>(
        |i| {
            let mut a = [0.0f32; W];
            a.copy_from_slice(&v[i * W..(i + 1) * W]);
            a
        },
        vec_size,
    );
    let mut acc = 0.0f32;
    for &x in &v[vec_size * W..] {
        acc += x;
    }
    for l in lanes {
        acc += l;
    }
    acc
}

/// `torch.mean` of a contiguous fp32 vector on CPU: [`torch_sum_f32`] divided by the count in fp32.
pub fn torch_mean_f32(v: &[f32]) -> f32 {
    torch_sum_f32(v) / v.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_sum_order() {
        // Short vectors: four interleaved partial sums, tail into the first, then combined.
        // [1e8, 1, -1e8, 1, 1, 1]: p = [(1e8 + 1) + 1, 1, -1e8, 1] = [1e8, 1, -1e8, 1], so
        // ((1e8 + 1) - 1e8) + 1 = 1 (torch gives 1.0; a left-to-right sum gives 3).
        let v = [1e8f32, 1.0, -1e8, 1.0, 1.0, 1.0];
        assert_eq!(torch_sum_f32(&v), 1.0);
        assert_eq!(torch_sum_f32(&[]), 0.0);
        assert!(torch_mean_f32(&[]).is_nan());
        let v: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        assert_eq!(torch_sum_f32(&v), 499_500.0);
    }
}
