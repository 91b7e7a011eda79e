//! Folding a world of any size onto a power of two, shared by the recursive algorithms.
//!
//! With q the largest power of two not above p and e = p - q, the first 2e ranks pair up:
//! each even rank r hands its data to the odd rank r+1, which stands for both as virtual
//! rank r/2; every rank from 2e on stands for itself as virtual rank r - e. Virtual ranks
//! keep the order of real ranks, so a run of consecutive virtual ranks stands for a run of
//! consecutive real ranks: a contiguous range of per-rank blocks stays one message.

use std::ops::Range;

/// The folding of a world of `p` ranks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fold {
    /// Participating (virtual) ranks: the largest power of two not above p.
    pub q: usize,
    /// Folded pairs: p - q.
    pub e: usize,
}

impl Fold {
    pub fn new(p: usize) -> Fold {
        let q = 1usize << (usize::BITS - 1 - p.leading_zeros());
        Fold { q, e: p - q }
    }

    /// This rank's virtual rank, or `None` for an even rank of the first 2e (it hands its
    /// data to `r + 1` and waits).
    pub fn virtual_rank(self, r: usize) -> Option<usize> {
        if r < 2 * self.e {
            (r % 2 == 1).then_some(r / 2)
        } else {
            Some(r - self.e)
        }
    }

    /// The real rank that virtual rank `v` runs on.
    pub fn real(self, v: usize) -> usize {
        if v < self.e {
            2 * v + 1
        } else {
            v + self.e
        }
    }

    /// The real ranks virtual ranks `vs` stand for (a contiguous range).
    pub fn real_ranks(self, vs: Range<usize>) -> Range<usize> {
        let start = |v: usize| if v < self.e { 2 * v } else { v + self.e };
        start(vs.start)..start(vs.end)
    }

    /// Steps of the exchange among virtual ranks: lg q.
    pub fn steps(self) -> usize {
        self.q.trailing_zeros() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_ranks_cover_every_real_rank_once_in_order() {
        for p in 1..40 {
            let f = Fold::new(p);
            assert!(f.q.is_power_of_two() && f.q <= p && 2 * f.q > p);
            let covered: Vec<usize> = (0..f.q).flat_map(|v| f.real_ranks(v..v + 1)).collect();
            assert_eq!(covered, (0..p).collect::<Vec<_>>(), "p {p}");
            for v in 0..f.q {
                assert_eq!(f.virtual_rank(f.real(v)), Some(v));
                assert!(f.real_ranks(v..v + 1).contains(&f.real(v)));
            }
            let idle = (0..p).filter(|&r| f.virtual_rank(r).is_none()).count();
            assert_eq!(idle, f.e);
        }
    }
}
