//! The store server's request loop, as one authenticated client's stream of any bytes:
//! never a panic, never more than the bounded allocation (run with -malloc_limit_mb), and
//! every response it writes is a whole, well-formed frame (status 0-2, length, payload).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (_, mut out) = oxccl::bootstrap::tcp_store::fuzz_serve_requests(data);
    let mut responses = 0usize;
    while !out.is_empty() {
        assert!(out.len() >= 5, "a truncated response header: {out:?}");
        assert!(out[0] <= 2, "status {}", out[0]);
        let len = u32::from_le_bytes(out[1..5].try_into().unwrap()) as usize;
        assert!(out.len() >= 5 + len, "a response promises {len} bytes, has {}", out.len() - 5);
        out.drain(..5 + len);
        responses += 1;
    }
    // At most one response per 11-byte request header.
    assert!(responses <= data.len() / 11, "{responses} responses to {} bytes", data.len());
});
