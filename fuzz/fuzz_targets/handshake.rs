//! The accepting side of the secret-proving handshake, fed any bytes: never a panic, and
//! never an accepted connection (the proof must answer a fresh random challenge, which a
//! fixed input cannot).
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxccl::bootstrap::tcp_store::FuzzPeer;
use oxccl_transport::auth::accept_handshake;

fuzz_target!(|data: &[u8]| {
    let mut peer = FuzzPeer { input: data, output: Vec::new() };
    let r = accept_handshake(&mut peer, &[7u8; 16]);
    assert!(r.is_err(), "a fixed input passed the handshake: {r:?}");
});
