//! The accepting side of the secret-proving handshake, fed any bytes: never a panic, and
//! never an accepted connection (the proof must answer a fresh random challenge, which a
//! fixed input cannot).
#![no_main]

use std::io::{Read, Write};

use libfuzzer_sys::fuzz_target;
use oxccl_transport::auth::accept_handshake;

struct Peer<'a> {
    input: &'a [u8],
    output: Vec<u8>,
}

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut peer = Peer { input: data, output: Vec::new() };
    let r = accept_handshake(&mut peer, &[7u8; 16]);
    assert!(r.is_err(), "a fixed input passed the handshake: {r:?}");
});
