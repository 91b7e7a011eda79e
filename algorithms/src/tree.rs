//! Tree shapes shared by the tree algorithms: binomial trees (broadcast, reduce) and the
//! two complementary binary trees of double binary tree all-reduce.

/// A rank's place in a tree: its parent and children (real ranks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub parent: Option<usize>,
    pub children: Vec<usize>,
}

/// The binomial tree rooted at `root`, on relative ranks `vr = r - root (mod p)`: the
/// parent of vr clears its lowest set bit; the children of vr are vr + 2^j for every 2^j
/// below vr's lowest set bit (below p for the root), largest subtree first.
pub(crate) fn binomial(p: usize, root: usize, r: usize) -> Node {
    let vr = (r + p - root) % p;
    let real = |v: usize| (v + root) % p;
    let parent = (vr != 0).then(|| real(vr & (vr - 1)));
    let limit = if vr == 0 { p.next_power_of_two() } else { vr & vr.wrapping_neg() };
    let mut children = Vec::new();
    let mut m = limit >> 1;
    while m > 0 {
        if vr + m < p {
            children.push(real(vr + m));
        }
        m >>= 1;
    }
    Node { parent, children }
}

/// Tree `t` (0 or 1) of the double binary tree over `p` ranks. Tree 0 is the heap-ordered
/// binary tree on positions 0..p (parent (i-1)/2, children 2i+1 and 2i+2) with position i
/// on rank i; tree 1 is the same shape with position i on rank p-1-i. A rank is interior
/// (has children) in at most one of them, so each rank forwards at most one tree's traffic
/// in each direction.
pub(crate) fn double_binary(p: usize, t: usize, r: usize) -> Node {
    let rank_of = |i: usize| if t == 0 { i } else { p - 1 - i };
    let i = rank_of(r);
    let parent = (i > 0).then(|| rank_of((i - 1) / 2));
    let children = [2 * i + 1, 2 * i + 2].into_iter().filter(|&c| c < p).map(rank_of).collect();
    Node { parent, children }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_tree(p: usize, node: impl Fn(usize) -> Node) -> usize {
        let mut root = None;
        for r in 0..p {
            let n = node(r);
            match n.parent {
                None => {
                    assert!(root.is_none(), "p {p}: two roots");
                    root = Some(r);
                }
                Some(q) => assert!(node(q).children.contains(&r), "p {p}: {q} does not list child {r}"),
            }
            for &c in &n.children {
                assert_eq!(node(c).parent, Some(r), "p {p}: child {c} of {r}");
            }
        }
        // Every rank reaches the root.
        for r in 0..p {
            let mut x = r;
            for _ in 0..p {
                match node(x).parent {
                    Some(q) => x = q,
                    None => break,
                }
            }
            assert_eq!(Some(x), root, "p {p}: {r} does not reach the root");
        }
        root.unwrap()
    }

    #[test]
    fn binomial_trees_span_every_rank_from_the_root() {
        for p in 1..20 {
            for root in 0..p {
                assert_eq!(check_tree(p, |r| binomial(p, root, r)), root);
            }
        }
    }

    #[test]
    fn double_binary_trees_span_and_share_no_interior_rank() {
        for p in 1..40 {
            check_tree(p, |r| double_binary(p, 0, r));
            check_tree(p, |r| double_binary(p, 1, r));
            for r in 0..p {
                let interior = (0..2).filter(|&t| !double_binary(p, t, r).children.is_empty()).count();
                assert!(interior <= 1, "p {p}: rank {r} is interior in both trees");
            }
        }
    }
}
