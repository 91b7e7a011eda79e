//! Reduction operators.

use std::fmt;

/// How values from different ranks combine. Discriminants are NCCL's `ncclRedOp_t` values.
///
/// Integer sums and products wrap on overflow, as in C. `Avg` sums and then divides by the
/// number of ranks once (integers: the wrapped sum divided by the rank count itself,
/// truncated toward zero, even where the count is beyond the type's range). Floating-point `Min`/`Max` return the
/// first operand when the comparison is false (so a NaN in the accumulated value is kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReduceOp {
    /// Sum.
    Sum = 0,
    /// Product.
    Prod = 1,
    /// Maximum.
    Max = 2,
    /// Minimum.
    Min = 3,
    /// Mean over ranks.
    Avg = 4,
}

impl ReduceOp {
    /// Every operator, in NCCL order.
    pub const ALL: [ReduceOp; 5] = [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Max, ReduceOp::Min, ReduceOp::Avg];

    /// The name used on command lines and in benchmark output.
    pub const fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Prod => "prod",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::Avg => "avg",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<ReduceOp> {
        ReduceOp::ALL.iter().copied().find(|o| o.name().eq_ignore_ascii_case(s))
    }

    /// The NCCL `ncclRedOp_t` value.
    pub fn from_nccl(v: u8) -> Option<ReduceOp> {
        ReduceOp::ALL.get(v as usize).copied()
    }

    /// The operator applied pairwise while reducing (`Avg` reduces as `Sum`).
    pub const fn pairwise(self) -> ReduceOp {
        match self {
            ReduceOp::Avg => ReduceOp::Sum,
            o => o,
        }
    }
}

impl fmt::Display for ReduceOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
