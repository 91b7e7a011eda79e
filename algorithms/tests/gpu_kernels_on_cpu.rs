//! The GPU reduction kernels (`cuda_kernels.cu`), built as host C++ and run on the CPU over a
//! simulated grid, against the host reducer: every element type and operator, 2 to 5
//! sources, 1 to 3 destinations (one of them a source, as in place), counts 0 to 4099 over
//! grids smaller than the data (the grid-stride loop), and the divide kernel. The same
//! source NVRTC compiles for the GPU, so the arithmetic is checked on every machine with a
//! C++ compiler (CI has one), GPU or not.

#![cfg(feature = "cuda")]

use std::ffi::{c_void, CString};
use std::process::Command;

use oxccl_algorithms::kernels::cuda::type_name;
use oxccl_algorithms::{DataType, HostReducer, ReduceOp, Reducer};
use oxccl_transport::{Region, RegionMut};

type RallFn = unsafe extern "C" fn(
    *const std::ffi::c_char,
    i32,
    *const *const c_void,
    i32,
    *const *mut c_void,
    i32,
    u64,
    i32,
    u32,
    u32,
) -> i32;
type DivFn = unsafe extern "C" fn(*const std::ffi::c_char, *mut c_void, u64, i32, u32, u32) -> i32;

struct Kernels {
    rall: RallFn,
    div: DivFn,
}

/// Builds the harness with the system's C++ compiler and loads it, or says why not.
fn build() -> Result<Kernels, String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernels");
    let lib = std::env::temp_dir().join(format!("oxccl-kernels-on-cpu-{}.so", std::process::id()));
    let out = Command::new("c++")
        .args(["-O1", "-std=c++14", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC"])
        .arg(dir.join("cuda_kernels_on_cpu.cpp"))
        .arg("-o")
        .arg(&lib)
        .output()
        .map_err(|e| format!("no C++ compiler (c++): {e}"))?;
    if !out.status.success() {
        panic!("the kernels do not build as C++:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let path = CString::new(lib.to_str().unwrap()).unwrap();
    // SAFETY: loads the library just built; its symbols are looked up by name below.
    let h = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
    assert!(!h.is_null(), "dlopen {lib:?}");
    let _ = std::fs::remove_file(&lib);
    // SAFETY: the harness exports these two functions with these signatures.
    unsafe {
        let rall = libc::dlsym(h, c"oxccl_cpu_rall".as_ptr());
        let div = libc::dlsym(h, c"oxccl_cpu_div".as_ptr());
        assert!(!rall.is_null() && !div.is_null());
        Ok(Kernels {
            rall: std::mem::transmute::<*mut c_void, RallFn>(rall),
            div: std::mem::transmute::<*mut c_void, DivFn>(div),
        })
    }
}

fn op_index(op: ReduceOp) -> i32 {
    match op {
        ReduceOp::Sum | ReduceOp::Avg => 0,
        ReduceOp::Prod => 1,
        ReduceOp::Min => 2,
        ReduceOp::Max => 3,
    }
}

/// Deterministic bytes for `n` elements of `d`: any bit pattern for integers; for floats,
/// small integers (every partial result exact, so one rounding on the GPU and one per step on
/// the host agree bit for bit) or, with `any_float`, values of every magnitude.
fn fill(d: DataType, n: usize, seed: u64, any_float: bool, op: ReduceOp) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let small = |x: u64| if op == ReduceOp::Prod { 1.0 + (x % 2) as f64 } else { (x % 41) as f64 - 20.0 };
    let mut out = Vec::with_capacity(n * d.size());
    for _ in 0..n {
        let x = next();
        let v = if any_float {
            f64::from_bits(0x3f00_0000_0000_0000 | (x >> 12))
                * if x & 1 == 0 { 1.0 } else { -1.0 }
                * ((x >> 3) % 7) as f64
        } else {
            small(x)
        };
        match d {
            DataType::I8 | DataType::U8 => out.push(x as u8),
            DataType::I32 | DataType::U32 => out.extend_from_slice(&(x as u32).to_le_bytes()),
            DataType::I64 | DataType::U64 => out.extend_from_slice(&x.to_le_bytes()),
            DataType::F16 => out.extend_from_slice(&half::f16::from_f64(v).to_bits().to_le_bytes()),
            DataType::Bf16 => out.extend_from_slice(&half::bf16::from_f64(v).to_bits().to_le_bytes()),
            DataType::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            DataType::F64 => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
    out
}

/// Bytes at a chosen offset from a 16-byte boundary.
struct Aligned {
    words: Vec<u128>,
    shift: usize,
    len: usize,
}

impl Aligned {
    fn new(b: &[u8], shift: usize) -> Aligned {
        let mut a = Aligned { words: vec![0u128; (b.len() + shift).div_ceil(16) + 1], shift, len: b.len() };
        let p = a.ptr().cast::<u8>();
        // SAFETY: the words hold `shift + len` bytes and more.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), p, b.len()) };
        a
    }

    fn ptr(&mut self) -> *mut c_void {
        // SAFETY: within the allocation (`shift` < 16 < its size).
        unsafe { self.words.as_mut_ptr().cast::<u8>().add(self.shift).cast() }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `shift + len` bytes lie within the words.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>().add(self.shift), self.len) }
    }
}

fn region(b: &[u8]) -> Region {
    // SAFETY: the vectors outlive every use in one check.
    unsafe { Region::from_slice(b) }
}

fn region_mut(b: &mut [u8]) -> RegionMut {
    // SAFETY: as above.
    unsafe { RegionMut::from_slice(b) }
}

#[test]
fn gpu_kernels_compute_what_the_host_reducer_computes() {
    let k = match build() {
        Ok(k) => k,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let host = HostReducer::new();
    let mut checked = 0;
    for d in DataType::ALL {
        let es = d.size();
        let tname = CString::new(type_name(d)).unwrap();
        for op in ReduceOp::ALL {
            for (nsrc, ndst, in_place) in [(2usize, 1usize, false), (2, 2, true), (3, 1, true), (5, 3, false)] {
                for n in [0usize, 1, 7, 1000, 4099] {
                    // Values of every magnitude only where one rounding is all there is (two
                    // sources); with more, small integers keep every partial sum exact.
                    for any_float in [false, true] {
                        if any_float && (!d.is_float() || nsrc != 2) {
                            continue;
                        }
                        let seed = (checked as u64) << 8 | nsrc as u64;
                        let srcs: Vec<Vec<u8>> =
                            (0..nsrc).map(|s| fill(d, n, seed + s as u64, any_float, op)).collect();
                        // The host's answer.
                        let mut want = vec![0u8; n * es];
                        let src_regions: Vec<Region> = srcs.iter().map(|s| region(s)).collect();
                        host.reduce_into_all(d, op, &[region_mut(&mut want)], &src_regions, false).unwrap();
                        // The kernel's, into `ndst` destinations, the first being source 0
                        // itself when in place; every buffer 16-byte aligned (the kernel's
                        // vector path) or one element off (its scalar path), in turn.
                        let shift = if checked % 2 == 0 { 0 } else { es };
                        let mut srcs_k: Vec<Aligned> = srcs.iter().map(|s| Aligned::new(s, shift)).collect();
                        let mut others: Vec<Aligned> = (0..ndst - usize::from(in_place))
                            .map(|_| Aligned::new(&vec![0xa5u8; n * es], shift))
                            .collect();
                        let src_ptrs: Vec<*const c_void> = srcs_k.iter_mut().map(|s| s.ptr().cast_const()).collect();
                        let mut dst_ptrs: Vec<*mut c_void> = others.iter_mut().map(|o| o.ptr()).collect();
                        if in_place {
                            dst_ptrs.insert(0, srcs_k[0].ptr());
                        }
                        let avg = i32::from(op == ReduceOp::Avg);
                        // Fewer threads than elements: the grid-stride loop does the rest.
                        // SAFETY: every pointer holds `n` elements of `d`; the harness writes
                        // only the destinations.
                        let rc = unsafe {
                            (k.rall)(
                                tname.as_ptr(),
                                op_index(op),
                                src_ptrs.as_ptr(),
                                nsrc as i32,
                                dst_ptrs.as_ptr(),
                                ndst as i32,
                                n as u64,
                                avg,
                                3,
                                32,
                            )
                        };
                        assert_eq!(rc, 0);
                        let mut outs: Vec<&[u8]> = others.iter().map(|o| o.bytes()).collect();
                        if in_place {
                            outs.insert(0, srcs_k[0].bytes());
                        }
                        for (i, got) in outs.iter().enumerate() {
                            assert!(
                                *got == &want[..],
                                "{d} {op} {nsrc} sources, destination {i} of {ndst}, {n} elements (any_float {any_float}): first difference at byte {:?}",
                                got.iter().zip(&want).position(|(a, b)| a != b)
                            );
                        }
                        checked += 1;
                    }
                }
            }
        }
        // Divide (the end of Avg where the schedule reduces first).
        // Counts past the 8-bit types' range divide by the count itself, not a wrapped one.
        for divisor in [1usize, 3, 7, 128, 200, 256, 1000] {
            let mut buf = fill(d, 1000, divisor as u64, false, ReduceOp::Sum);
            let mut want = buf.clone();
            host.divide(d, region_mut(&mut want), divisor).unwrap();
            // SAFETY: `buf` holds 1000 elements of `d`.
            let rc = unsafe { (k.div)(tname.as_ptr(), buf.as_mut_ptr().cast(), 1000, divisor as i32, 2, 64) };
            assert_eq!(rc, 0);
            assert_eq!(buf, want, "{d} divided by {divisor}");
        }
    }
    eprintln!("{checked} kernel runs matched the host reducer");
    assert!(checked > 1000);
}
