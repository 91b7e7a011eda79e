//! Reduction kernels against a plain copy of the same bytes (criterion).
//!
//! `cargo bench --bench reduce_kernels`: throughput is reported in bytes of the destination
//! per second; a reduction reads two buffers and writes one, a copy reads one and writes one.
//! The 64 MiB copy is the machine's copy bandwidth that `benches/RESULTS.md` compares the
//! 64 MiB all-reduce's memory traffic with.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::{bf16, f16};
use oxccl_algorithms::{DataType, HostReducer, ReduceOp, Reducer};
use oxccl_transport::{MemoryKind, Region, RegionMut};

fn reg<T>(v: &[T]) -> Region {
    // SAFETY: the vectors outlive every use of the region in the benchmark.
    unsafe { Region::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v), MemoryKind::Host) }
}

fn reg_mut<T>(v: &mut [T]) -> RegionMut {
    // SAFETY: as above.
    unsafe { RegionMut::from_raw_parts(v.as_mut_ptr().cast(), std::mem::size_of_val(v), MemoryKind::Host) }
}

fn kernels(c: &mut Criterion) {
    let r = HostReducer::new();
    let mut g = c.benchmark_group("reduce");
    for bytes in [64usize << 10, 1 << 20, 16 << 20, 64 << 20] {
        g.throughput(Throughput::Bytes(bytes as u64));
        let n = bytes / 4;
        let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut d: Vec<f32> = vec![1.0; n];
        g.bench_with_input(BenchmarkId::new("f32_sum_in_place", bytes), &bytes, |b, _| {
            let dr = reg_mut(&mut d);
            b.iter(|| r.reduce(DataType::F32, ReduceOp::Sum, dr, reg(&a), dr.as_region()).unwrap())
        });
        let n = bytes / 2;
        let a: Vec<bf16> = (0..n).map(|i| bf16::from_f32((i % 100) as f32)).collect();
        let mut d: Vec<bf16> = vec![bf16::ONE; n];
        g.bench_with_input(BenchmarkId::new("bf16_sum_in_place", bytes), &bytes, |b, _| {
            let dr = reg_mut(&mut d);
            b.iter(|| r.reduce(DataType::Bf16, ReduceOp::Sum, dr, reg(&a), dr.as_region()).unwrap())
        });
        let a: Vec<f16> = (0..n).map(|i| f16::from_f32((i % 100) as f32)).collect();
        let mut d: Vec<f16> = vec![f16::ONE; n];
        g.bench_with_input(BenchmarkId::new("f16_sum_in_place", bytes), &bytes, |b, _| {
            let dr = reg_mut(&mut d);
            b.iter(|| r.reduce(DataType::F16, ReduceOp::Sum, dr, reg(&a), dr.as_region()).unwrap())
        });
        let src = vec![7u8; bytes];
        let mut dst = vec![0u8; bytes];
        g.bench_with_input(BenchmarkId::new("copy_from_slice", bytes), &bytes, |b, _| {
            b.iter(|| dst.copy_from_slice(std::hint::black_box(&src)))
        });
    }
    g.finish();
}

/// The fused kernel of the `mapped` algorithms: `p` sources reduced into `p` destinations,
/// as one rank of a p-rank call does with its slice, with 512 KiB of input in all (in cache)
/// and 16 MiB (out of it). Throughput in bytes of input (`p` sources), so that it compares
/// with the per-byte reduction price of the cost model.
fn fused(c: &mut Criterion) {
    let r = HostReducer::new();
    let mut g = c.benchmark_group("reduce_into_all");
    for total in [512usize << 10, 16 << 20] {
        for p in [2usize, 4, 8] {
            let slice = total / p;
            g.throughput(Throughput::Bytes(total as u64));
            for (name, dtype) in [("f32", DataType::F32), ("bf16", DataType::Bf16), ("f16", DataType::F16)] {
                // 0x3c in every byte is a normal number in every type, and the sums stay
                // finite (the destinations are not sources); written, so that the sources
                // are not the zero page, which is always in cache.
                let srcs: Vec<Vec<u8>> = (0..p).map(|_| vec![0x3c; slice]).collect();
                let mut dsts: Vec<Vec<u8>> = (0..p).map(|_| vec![0x3c; slice]).collect();
                let regions: Vec<Region> = srcs.iter().map(|v| reg(v)).collect();
                let outs: Vec<RegionMut> = dsts.iter_mut().map(|v| reg_mut(v)).collect();
                g.bench_with_input(BenchmarkId::new(format!("{name}_sum_{p}_ranks"), total), &p, |b, _| {
                    b.iter(|| r.reduce_into_all(dtype, ReduceOp::Sum, &outs, &regions, false).unwrap())
                });
            }
        }
    }
    g.finish();
}

/// `Avg`'s division: the fused kernel averaging `p` sources (throughput in bytes of input,
/// as `reduce_into_all`), and the division that ends `Avg` in the other algorithms
/// (`Reducer::divide`, in bytes of the buffer), for integer types against f32, in cache
/// (512 KiB) and out of it (16 MiB).
fn average(c: &mut Criterion) {
    let r = HostReducer::new();
    let mut g = c.benchmark_group("average");
    let types = [("i8", DataType::I8), ("i32", DataType::I32), ("i64", DataType::I64), ("f32", DataType::F32)];
    for total in [512usize << 10, 16 << 20] {
        g.throughput(Throughput::Bytes(total as u64));
        for (name, dtype) in types {
            for p in [2usize, 8] {
                let slice = total / p;
                // 0x1c in every byte: a normal f32; integers of either sign after the sum.
                let srcs: Vec<Vec<u8>> = (0..p).map(|_| vec![0x1c; slice]).collect();
                let mut dsts: Vec<Vec<u8>> = (0..p).map(|_| vec![0x1c; slice]).collect();
                let regions: Vec<Region> = srcs.iter().map(|v| reg(v)).collect();
                let outs: Vec<RegionMut> = dsts.iter_mut().map(|v| reg_mut(v)).collect();
                g.bench_with_input(BenchmarkId::new(format!("{name}_avg_{p}_ranks"), total), &p, |b, _| {
                    b.iter(|| r.reduce_into_all(dtype, ReduceOp::Avg, &outs, &regions, false).unwrap())
                });
            }
            // A fresh buffer for every call (made outside the timing): divided in place again
            // and again, the values would fall to zero, which some dividers finish early.
            let buf = vec![0x1cu8; total];
            g.bench_with_input(BenchmarkId::new(format!("{name}_divide_by_3"), total), &total, |b, _| {
                b.iter_batched_ref(
                    || buf.clone(),
                    |v| r.divide(dtype, reg_mut(v), 3).unwrap(),
                    criterion::BatchSize::LargeInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, kernels, fused, average);
criterion_main!(benches);
