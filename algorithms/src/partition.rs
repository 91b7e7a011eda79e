//! Chunk arithmetic: how vectors split into blocks per rank and chunks per message. Pure
//! functions, tested without any transport.

use std::ops::Range;

/// Elements of block `i` when `count` elements split into `parts` blocks as evenly as possible
/// (the first `count % parts` blocks get one element more).
pub fn block(count: usize, parts: usize, i: usize) -> Range<usize> {
    debug_assert!(i < parts);
    let base = count / parts;
    let extra = count % parts;
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}

/// Splits `range` into consecutive chunks of at most `chunk` elements (at least 1). An empty
/// range gives no chunks.
pub fn chunks(range: Range<usize>, chunk: usize) -> impl Iterator<Item = Range<usize>> + Clone {
    let chunk = chunk.max(1);
    let end = range.end;
    (range.start..end).step_by(chunk).map(move |s| s..(s + chunk).min(end))
}

/// Byte range of the element range `r` for elements of `size` bytes.
pub fn bytes(r: &Range<usize>, size: usize) -> Range<usize> {
    r.start * size..r.end * size
}

/// Elements per pipeline chunk for a chunk size in bytes.
pub fn chunk_elems(chunk_bytes: usize, elem: usize) -> usize {
    (chunk_bytes / elem.max(1)).max(1)
}

/// `(r + k) mod p` for signed offsets.
pub fn ring_index(r: usize, k: isize, p: usize) -> usize {
    (r as isize + k).rem_euclid(p as isize) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_exactly_and_differ_by_at_most_one() {
        for count in [0usize, 1, 2, 7, 10, 1000, 1003] {
            for parts in 1..10 {
                let mut next = 0;
                let mut sizes = Vec::new();
                for i in 0..parts {
                    let b = block(count, parts, i);
                    assert_eq!(b.start, next);
                    next = b.end;
                    sizes.push(b.len());
                }
                assert_eq!(next, count);
                let (mn, mx) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(mx - mn <= 1);
            }
        }
    }

    #[test]
    fn chunks_cover_the_range() {
        assert_eq!(chunks(3..10, 3).collect::<Vec<_>>(), vec![3..6, 6..9, 9..10]);
        assert_eq!(chunks(5..5, 3).count(), 0);
        assert_eq!(chunks(0..4, 0).count(), 4);
        assert_eq!(bytes(&(2..5), 4), 8..20);
        assert_eq!(chunk_elems(10, 4), 2);
        assert_eq!(chunk_elems(1, 8), 1);
        assert_eq!(ring_index(0, -1, 5), 4);
        assert_eq!(ring_index(4, 3, 5), 2);
    }
}
