//! The frame header that precedes every message part on a TCP data connection.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "OXFR"
//!      4     1  version (2)
//!      5     1  kind (1 = data)
//!      6     2  part index (striping across connections)
//!      8     4  sequence number of this frame on this connection
//!     12     4  the sender's progress marker (low 32 bits; see `Transport::set_progress`)
//!     16    16  tag
//!     32     8  length of the payload that follows, in bytes
//! ```
//! All integers are little-endian. A receiver checks every field against the receive it
//! posted, so a lying or corrupted header can neither overrun a buffer nor go unnoticed.

use crate::error::{Error, Result};
use crate::transport::Tag;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 40;
const MAGIC: [u8; 4] = *b"OXFR";
const VERSION: u8 = 2;
/// The kind of a data frame.
pub const KIND_DATA: u8 = 1;
/// The kind of a rank's last words: it failed, and says why (see [`encode_last_words`]).
pub const KIND_ERROR: u8 = 2;
/// The most bytes of last words a receiver accepts.
pub const MAX_LAST_WORDS: usize = 512;

/// The payload of an error frame: the rank whose death caused the failure (plus one; zero if
/// none) and the message, at most [`MAX_LAST_WORDS`] bytes in all.
pub fn encode_last_words(culprit: Option<usize>, msg: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(MAX_LAST_WORDS);
    b.extend_from_slice(&(culprit.map_or(0, |c| c as u32 + 1)).to_le_bytes());
    let m = msg.as_bytes();
    b.extend_from_slice(&m[..m.len().min(MAX_LAST_WORDS - 4)]);
    b
}

/// Parses last words: `(culprit, message)`.
pub fn decode_last_words(b: &[u8]) -> (Option<usize>, String) {
    if b.len() < 4 {
        return (None, String::from_utf8_lossy(b).into_owned());
    }
    let c = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    ((c > 0).then(|| c - 1), String::from_utf8_lossy(&b[4..]).into_owned())
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The frame kind.
    pub kind: u8,
    /// Which part of a striped message.
    pub part: u16,
    /// The frame's sequence number on its connection.
    pub seq: u32,
    /// The message tag.
    pub tag: Tag,
    /// The sender's progress marker when it queued the frame.
    pub progress: u32,
    /// Payload length in bytes.
    pub len: u64,
}

impl FrameHeader {
    /// The wire form.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.kind;
        b[6..8].copy_from_slice(&self.part.to_le_bytes());
        b[8..12].copy_from_slice(&self.seq.to_le_bytes());
        b[12..16].copy_from_slice(&self.progress.to_le_bytes());
        b[16..32].copy_from_slice(&self.tag.0.to_le_bytes());
        b[32..40].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Parses `b`, refusing a wrong magic, version or kind.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<FrameHeader> {
        if b[0..4] != MAGIC {
            return Err(Error::invalid_usage(format!("corrupt frame: bad magic {:02x?}", &b[0..4])));
        }
        if b[4] != VERSION {
            return Err(Error::invalid_usage(format!(
                "frame version {} is not {VERSION} (mixed oxccl versions?)",
                b[4]
            )));
        }
        if b[5] != KIND_DATA && b[5] != KIND_ERROR {
            return Err(Error::invalid_usage(format!("unknown frame kind {}", b[5])));
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Ok(FrameHeader {
            kind: b[5],
            part: u16::from_le_bytes([b[6], b[7]]),
            seq: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            progress: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
            tag: Tag(u128::from_le_bytes(b[16..32].try_into().expect("16 bytes"))),
            len: u64_at(32),
        })
    }

    /// Checks this header against what the receiver expects next on the connection.
    pub fn check(&self, seq: u32, part: u16, tag: Tag, len: usize) -> Result<()> {
        if self.seq != seq {
            return Err(Error::invalid_usage(format!(
                "frame sequence {} where {seq} was expected (lost or duplicated frame)",
                self.seq
            )));
        }
        if self.tag != tag {
            return Err(Error::invalid_usage(format!(
                "mismatched calls: message with tag {} arrived where tag {tag} was expected",
                self.tag
            )));
        }
        if self.len != len as u64 || self.part != part {
            return Err(Error::invalid_usage(format!(
                "mismatched calls: message part {} of {} bytes arrived where part {part} of {len} bytes was expected",
                self.part, self.len
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejections() {
        let h =
            FrameHeader { kind: KIND_DATA, part: 3, seq: 9, tag: Tag(0xabc | (7 << 100)), progress: 77, len: 1 << 40 };
        let b = h.encode();
        assert_eq!(FrameHeader::decode(&b).unwrap(), h);
        h.check(9, 3, h.tag, 1 << 40).unwrap();
        assert!(h.check(8, 3, h.tag, 1 << 40).is_err());
        assert!(h
            .check(9, 3, Tag(0xabd), 1 << 40)
            .unwrap_err()
            .to_string()
            .contains(&format!("tag {:#x}", 0xabc | (7u128 << 100))));
        // The high half (the fingerprint) counts as much as the low half.
        assert!(h.check(9, 3, Tag(0xabc), 1 << 40).is_err());
        assert!(h.check(9, 3, h.tag, 5).is_err());
        let mut bad = b;
        bad[0] = b'X';
        assert!(FrameHeader::decode(&bad).is_err());
        let mut bad = b;
        bad[4] = 1;
        assert!(FrameHeader::decode(&bad).unwrap_err().to_string().contains("version"));
        let mut bad = b;
        bad[5] = 77;
        assert!(FrameHeader::decode(&bad).is_err());
        let w = encode_last_words(Some(3), &"x".repeat(2000));
        assert_eq!(w.len(), MAX_LAST_WORDS);
        assert_eq!(decode_last_words(&w).0, Some(3));
        assert_eq!(decode_last_words(&encode_last_words(None, "bye")), (None, "bye".to_string()));
    }

    proptest::proptest! {
        /// Any 40 bytes: decoding never panics, and whatever decodes re-encodes to the
        /// same bytes (reserved bits aside there are none: every byte is a field).
        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::array::uniform32(proptest::num::u8::ANY), tail in proptest::array::uniform8(proptest::num::u8::ANY)) {
            let mut h = [0u8; HEADER_LEN];
            h[..32].copy_from_slice(&b);
            h[32..].copy_from_slice(&tail);
            if b[0] % 2 == 0 {
                // Half the cases get past magic and version, to reach the other fields.
                h[0..4].copy_from_slice(&MAGIC);
                h[4] = VERSION;
                h[5] = b[5] % 3;
            }
            if let Ok(d) = FrameHeader::decode(&h) {
                proptest::prop_assert_eq!(d.encode(), h);
                // Checking against any expectation gives a verdict, never a panic.
                let _ = d.check(d.seq ^ 1, d.part, d.tag, 0);
            }
        }

        /// Valid headers survive the round trip exactly.
        #[test]
        fn valid_headers_round_trip(part: u16, seq: u32, tag: u128, progress: u32, len: u64, error: bool) {
            let kind = if error { KIND_ERROR } else { KIND_DATA };
            let h = FrameHeader { kind, part, seq, tag: Tag(tag), progress, len };
            proptest::prop_assert_eq!(FrameHeader::decode(&h.encode()).unwrap(), h);
        }

        /// Last words of any bytes decode without panicking, and never claim more than sent.
        #[test]
        fn last_words_of_any_bytes(b in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let (_, msg) = decode_last_words(&b);
            proptest::prop_assert!(msg.len() <= 3 * b.len());
        }
    }
}
