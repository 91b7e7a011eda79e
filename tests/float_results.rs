//! Floating-point all-reduce with values that do not add exactly: every algorithm must give
//! every rank the same bits (each element's final value is computed once and copied), and
//! stay within a rounding bound of a reference sum in f64.

mod common;

use common::test_config;
use half::bf16;
use oxccl::{Communicator, ReduceOp};

/// A reproducible value in (-1, 1) spread over a few orders of magnitude.
fn value(rank: usize, i: usize) -> f64 {
    let mut x = (rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 29;
    let unit = (x >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    (unit * 2.0 - 1.0) * 10f64.powi((x % 4) as i32 - 2)
}

/// Runs all-reduce on `comms` (one thread each) with elements made by `make`, and returns
/// every rank's result as f64 plus its raw bits.
fn run<T: oxccl::Element + Copy + Send>(
    comms: &[Communicator],
    count: usize,
    make: impl Fn(f64) -> T + Sync,
    bits: impl Fn(T) -> u64 + Sync,
    back: impl Fn(T) -> f64 + Sync,
) -> Vec<Vec<(f64, u64)>> {
    std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .iter()
            .map(|c| {
                let (make, bits, back) = (&make, &bits, &back);
                s.spawn(move || {
                    let mut buf: Vec<T> = (0..count).map(|i| make(value(c.rank(), i))).collect();
                    c.all_reduce(&mut buf, ReduceOp::Sum).unwrap();
                    buf.into_iter().map(|v| (back(v), bits(v))).collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Checks bitwise agreement and the bound: |result - exact| <= (p + 1) · eps · sum |x_r|
/// (plus the final rounding to the type), with the inputs as rounded to the type.
fn check(p: usize, what: &str, results: &[Vec<(f64, u64)>], rounded: impl Fn(f64) -> f64, eps: f64) {
    for (r, res) in results.iter().enumerate().skip(1) {
        let same = res.iter().zip(&results[0]).all(|(a, b)| a.1 == b.1);
        assert!(same, "{what}, {p} ranks: rank {r}'s result differs in its bits from rank 0's");
    }
    for (i, &(got, _)) in results[0].iter().enumerate() {
        let xs: Vec<f64> = (0..p).map(|r| rounded(value(r, i))).collect();
        let exact: f64 = xs.iter().sum();
        let mag: f64 = xs.iter().map(|x| x.abs()).sum();
        let bound = (p as f64 + 1.0) * eps * mag + eps * exact.abs();
        assert!((got - exact).abs() <= bound, "{what}, {p} ranks, element {i}: {got} vs {exact} (bound {bound})");
    }
}

#[test]
fn every_all_reduce_algorithm_agrees_bitwise_and_within_rounding() {
    let count = 1009; // prime: blocks and chunks of uneven sizes
    for algo in ["ring", "recursive_doubling", "direct", "tree", "halving_doubling", "hierarchical", "mapped"] {
        for p in [2, 3, 4, 5, 7, 8, 9] {
            let cfg = test_config().with_algorithm(&format!("all_reduce:{algo}")).unwrap();
            // Hierarchical on pretend hosts of unequal size; the others on one.
            let hosts: Vec<usize> = (0..p).map(|r| if algo == "hierarchical" { r % 2 + r / 5 } else { 0 }).collect();
            let comms = || Communicator::local_world_on_hosts(&hosts, cfg.clone()).unwrap();
            let what = format!("{algo} f32");
            let res = run(&comms(), count, |v| v as f32, |v| v.to_bits() as u64, |v| v as f64);
            check(p, &what, &res, |v| v as f32 as f64, f32::EPSILON as f64);
            let what = format!("{algo} f64");
            let res = run(&comms(), count, |v| v, f64::to_bits, |v| v);
            check(p, &what, &res, |v| v, f64::EPSILON);
            // bf16 reduces through f32 and rounds once per step.
            let what = format!("{algo} bf16");
            let res = run(&comms(), count, bf16::from_f64, |v| v.to_bits() as u64, |v| v.to_f64());
            check(p, &what, &res, |v| bf16::from_f64(v).to_f64(), 2.0f64.powi(-8));
        }
    }
}
