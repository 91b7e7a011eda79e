//! Closed-form fills and expected results for checking collectives: every rank fills its
//! input from its rank and the element index, so the right answer for every element is known
//! without running anything. `oxccl-bench -c 1` and the test suite use them; so can you.
//!
//! Values are small integers, exact in every data type (bf16 included), so expected results
//! are exact, not approximate: integer sums and products wrap as C's do, and `Avg` divides
//! once, as the library does.

use half::{bf16, f16};

use crate::{Element, ReduceOp};

/// An element type with the conversions the checks need.
pub trait CheckElem: Element {
    /// `v` as this type (wrapping for integers).
    fn from_i64(v: i64) -> Self;
    /// The mean of `p` values whose exact sum is `sum`, as the library computes it.
    fn avg_of(sum: i64, p: usize) -> Self;
}

macro_rules! check_int {
    ($($t:ty),*) => {$(
        impl CheckElem for $t {
            fn from_i64(v: i64) -> Self { v as $t }
            fn avg_of(sum: i64, p: usize) -> Self { ((sum as $t) as i128 / p as i128) as $t }
        }
    )*};
}
check_int!(i8, u8, i32, u32, i64, u64);

impl CheckElem for f32 {
    fn from_i64(v: i64) -> Self {
        v as f32
    }
    fn avg_of(sum: i64, p: usize) -> Self {
        sum as f32 / p as f32
    }
}
impl CheckElem for f64 {
    fn from_i64(v: i64) -> Self {
        v as f64
    }
    fn avg_of(sum: i64, p: usize) -> Self {
        sum as f64 / p as f64
    }
}
impl CheckElem for f16 {
    fn from_i64(v: i64) -> Self {
        f16::from_f32(v as f32)
    }
    fn avg_of(sum: i64, p: usize) -> Self {
        f16::from_f32(sum as f32 / p as f32)
    }
}
impl CheckElem for bf16 {
    fn from_i64(v: i64) -> Self {
        bf16::from_f32(v as f32)
    }
    fn avg_of(sum: i64, p: usize) -> Self {
        bf16::from_f32(sum as f32 / p as f32)
    }
}

/// The value rank `rank` contributes at element `i` to a reduction with `op`: 1 to 5 (1 or 2
/// for products, so they stay exact).
pub fn contribution(rank: usize, i: usize, op: ReduceOp) -> i64 {
    match op {
        ReduceOp::Prod => 1 + ((rank + i) % 2) as i64,
        _ => 1 + ((3 * rank + i) % 5) as i64,
    }
}

/// The reduction over `p` ranks of [`contribution`] at element `i`.
pub fn reduced<T: CheckElem>(p: usize, i: usize, op: ReduceOp) -> T {
    let vals = (0..p).map(|r| contribution(r, i, op));
    match op {
        ReduceOp::Sum => T::from_i64(vals.sum()),
        ReduceOp::Prod => T::from_i64(vals.fold(1i64, |a, b| a.wrapping_mul(b))),
        ReduceOp::Min => T::from_i64(vals.min().unwrap_or(0)),
        ReduceOp::Max => T::from_i64(vals.max().unwrap_or(0)),
        ReduceOp::Avg => T::avg_of(vals.sum(), p),
    }
}

/// A value that identifies (source rank, block, element) for data-movement collectives:
/// 1 to 101, exact in every type.
pub fn pattern(src: usize, block: usize, i: usize) -> i64 {
    1 + ((src * 131 + block * 17 + i) % 101) as i64
}

/// Fills `buf` with this rank's contributions, element `i` of `buf` being element
/// `offset + i` of the whole vector.
pub fn fill_contribution<T: CheckElem>(buf: &mut [T], rank: usize, op: ReduceOp, offset: usize) {
    for (i, x) in buf.iter_mut().enumerate() {
        *x = T::from_i64(contribution(rank, offset + i, op));
    }
}

/// How many elements of `buf` differ from the reduction over `p` ranks (element `i` of `buf`
/// being element `offset + i` of the whole vector).
pub fn wrong_reduced<T: CheckElem>(buf: &[T], p: usize, op: ReduceOp, offset: usize) -> usize {
    buf.iter().enumerate().filter(|(i, x)| **x != reduced::<T>(p, offset + i, op)).count()
}

/// Fills `buf` with `pattern(src, block, i)` for `i` in `0..buf.len()`.
pub fn fill_pattern<T: CheckElem>(buf: &mut [T], src: usize, block: usize) {
    for (i, x) in buf.iter_mut().enumerate() {
        *x = T::from_i64(pattern(src, block, i));
    }
}

/// How many elements of `buf` differ from `pattern(src, block, i)`.
pub fn wrong_pattern<T: CheckElem>(buf: &[T], src: usize, block: usize) -> usize {
    buf.iter().enumerate().filter(|(i, x)| **x != T::from_i64(pattern(src, block, *i))).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_are_exact_and_wrap_like_c() {
        assert_eq!(reduced::<f32>(3, 0, ReduceOp::Sum), (1 + 4 + 2) as f32);
        assert_eq!(reduced::<i8>(8, 1, ReduceOp::Prod), 16i8);
        assert_eq!(
            reduced::<i8>(200, 0, ReduceOp::Sum),
            (0..200).map(|r| contribution(r, 0, ReduceOp::Sum)).sum::<i64>() as i8
        );
        assert_eq!(reduced::<u32>(3, 0, ReduceOp::Avg), 7 / 3);
        assert_eq!(reduced::<bf16>(3, 0, ReduceOp::Avg), bf16::from_f32(7.0 / 3.0));
        let mut v = vec![0f64; 5];
        fill_contribution(&mut v, 1, ReduceOp::Max, 2);
        assert_eq!(v, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(wrong_reduced(&[reduced::<f64>(2, 0, ReduceOp::Min), 99.0], 2, ReduceOp::Min, 0), 1);
    }
}
