//! The TCP transport's frame header and last-words decoders on any bytes: never a panic;
//! a header that decodes encodes back to the same bytes' meaning; a header that passes the
//! receiver's check carries exactly the length the receiver posted (a lying length can
//! never overrun a buffer); last words stay bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxccl_transport::tcp::wire::{decode_last_words, FrameHeader, HEADER_LEN, MAX_LAST_WORDS};
use oxccl_transport::transport::Tag;

fuzz_target!(|data: &[u8]| {
    let (_, words) = decode_last_words(data);
    // Lossy UTF-8 turns a bad byte into at most three; the receiver reads at most
    // MAX_LAST_WORDS bytes before decoding.
    assert!(words.len() <= 3 * data.len(), "{} bytes of last words from {}", words.len(), data.len());
    let (_, bounded) = decode_last_words(&data[..data.len().min(MAX_LAST_WORDS)]);
    assert!(bounded.len() <= 3 * MAX_LAST_WORDS);
    let Some((head, rest)) = data.split_first_chunk::<HEADER_LEN>() else { return };
    let Ok(h) = FrameHeader::decode(head) else { return };
    assert_eq!(FrameHeader::decode(&h.encode()).unwrap(), h);
    // What the receiver posted: from the rest of the input, or the header's own fields.
    let Some((posted, _)) = rest.split_first_chunk::<30>() else { return };
    let seq = u32::from_le_bytes(posted[0..4].try_into().unwrap());
    let part = u16::from_le_bytes(posted[4..6].try_into().unwrap());
    let tag = Tag(u128::from_le_bytes(posted[6..22].try_into().unwrap()));
    let len = u64::from_le_bytes(posted[22..30].try_into().unwrap()) as usize;
    for (seq, part, tag, len) in
        [(seq, part, tag, len), (h.seq, h.part, h.tag, len), (h.seq, h.part, h.tag, h.len as usize)]
    {
        if h.check(seq, part, tag, len).is_ok() {
            assert_eq!((h.seq, h.part, h.tag, h.len), (seq, part, tag, len as u64));
        }
    }
});
