//! Byte regions: the spans of memory that transports move and reducers combine.
//!
//! A region is an address, a length and a [`MemoryKind`]. Safe code can split and offset
//! regions freely, but never reads or writes through them: only a transport or a reducer does,
//! under the promise made when the region was created with an `unsafe` constructor.

use std::ops::Range;

/// Where a buffer lives. Reducers and transports are chosen by it, so that one algorithm
/// schedule serves host and device buffers alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryKind {
    /// Ordinary process memory.
    Host,
    /// Memory of GPU `ordinal`.
    Device {
        /// The device index.
        ordinal: u32,
    },
}

/// A read-only span of memory.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    ptr: *const u8,
    len: usize,
    kind: MemoryKind,
}

/// A writable span of memory.
#[derive(Debug, Clone, Copy)]
pub struct RegionMut {
    ptr: *mut u8,
    len: usize,
    kind: MemoryKind,
}

// SAFETY: a region is an address and a length; it is only dereferenced by transports and
// reducers under the validity promise of its constructor, which covers any thread.
unsafe impl Send for Region {}
// SAFETY: as for Send; shared references to a region expose nothing but the address.
unsafe impl Sync for Region {}
// SAFETY: as for Region.
unsafe impl Send for RegionMut {}
// SAFETY: as for Region.
unsafe impl Sync for RegionMut {}

impl Region {
    /// A region of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// The memory must be valid for reads of `len` bytes, of the given kind, and must stay so
    /// (and not be written by anyone else) until every request and reduction that uses the
    /// region has completed or its transport has failed.
    pub unsafe fn from_raw_parts(ptr: *const u8, len: usize, kind: MemoryKind) -> Self {
        Region { ptr, len, kind }
    }

    /// A host region over `bytes`.
    ///
    /// # Safety
    /// As [`Region::from_raw_parts`]: the slice must outlive every use of the region.
    pub unsafe fn from_slice(bytes: &[u8]) -> Self {
        Region { ptr: bytes.as_ptr(), len: bytes.len(), kind: MemoryKind::Host }
    }

    /// The empty host region.
    pub fn empty() -> Self {
        Region { ptr: std::ptr::NonNull::<u8>::dangling().as_ptr(), len: 0, kind: MemoryKind::Host }
    }

    /// The start address.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the region has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Where the memory lives.
    pub fn kind(&self) -> MemoryKind {
        self.kind
    }

    /// The sub-region `range` (in bytes). Panics when the range is out of bounds: that is a bug
    /// in the schedule that asked for it.
    pub fn slice(&self, range: Range<usize>) -> Region {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "region slice {range:?} out of bounds of {} bytes",
            self.len
        );
        Region { ptr: self.ptr.wrapping_add(range.start), len: range.end - range.start, kind: self.kind }
    }
}

impl RegionMut {
    /// A writable region of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// The memory must be valid for reads and writes of `len` bytes, of the given kind, and
    /// must stay so (and not be accessed by anyone else) until every request and reduction
    /// that uses the region has completed or its transport has failed.
    pub unsafe fn from_raw_parts(ptr: *mut u8, len: usize, kind: MemoryKind) -> Self {
        RegionMut { ptr, len, kind }
    }

    /// A host region over `bytes`.
    ///
    /// # Safety
    /// As [`RegionMut::from_raw_parts`]: the slice must outlive every use of the region.
    pub unsafe fn from_slice(bytes: &mut [u8]) -> Self {
        RegionMut { ptr: bytes.as_mut_ptr(), len: bytes.len(), kind: MemoryKind::Host }
    }

    /// The empty host region.
    pub fn empty() -> Self {
        RegionMut { ptr: std::ptr::NonNull::<u8>::dangling().as_ptr(), len: 0, kind: MemoryKind::Host }
    }

    /// The start address.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }
    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the region has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Where the memory lives.
    pub fn kind(&self) -> MemoryKind {
        self.kind
    }
    /// The same span, read-only.
    pub fn as_region(&self) -> Region {
        Region { ptr: self.ptr, len: self.len, kind: self.kind }
    }

    /// The sub-region `range` (in bytes). Panics when out of bounds.
    pub fn slice(&self, range: Range<usize>) -> RegionMut {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "region slice {range:?} out of bounds of {} bytes",
            self.len
        );
        RegionMut { ptr: self.ptr.wrapping_add(range.start), len: range.end - range.start, kind: self.kind }
    }

    /// Whether `other` overlaps this region.
    pub fn overlaps(&self, other: &Region) -> bool {
        let (a0, a1) = (self.ptr as usize, self.ptr as usize + self.len);
        let (b0, b1) = (other.ptr as usize, other.ptr as usize + other.len);
        self.len > 0 && other.len > 0 && a0 < b1 && b0 < a1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slicing_offsets_and_bounds() {
        let mut v = vec![0u8; 16];
        // SAFETY: `v` outlives the regions, which are only inspected, never dereferenced.
        let r = unsafe { RegionMut::from_slice(&mut v) };
        let s = r.slice(4..10);
        assert_eq!(s.len(), 6);
        assert_eq!(s.as_mut_ptr() as usize - r.as_mut_ptr() as usize, 4);
        assert!(r.overlaps(&s.as_region()));
        assert!(!r.slice(0..4).overlaps(&r.slice(4..8).as_region()));
        assert!(std::panic::catch_unwind(|| r.slice(10..17)).is_err());
    }
}
