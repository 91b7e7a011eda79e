//! Memory that peers on this host map into their own address space: [`SharedBuffer`]
//! (under oxccl's `SharedBuffer<T>` and the C ABI's `oxcclMemAlloc`), the [`MemoryKey`] that names a
//! span of it to a peer, and [`PeerMappings`], the peer side's cache of what it mapped.
//!
//! Why: a buffer of ordinary process memory can only reach a peer through a copy (the FIFO)
//! or the kernel (`process_vm_readv`, one system call and a page walk per chunk). A buffer
//! that peers map is read and written by them with plain loads and stores, so a collective
//! over it is the bare memory traffic of its reduction: on a two-rank all-reduce, each rank
//! reads its half of both inputs once and writes the finished half into both outputs once.
//!
//! A shared buffer is a `memfd_create` file: no name in `/dev/shm` (nothing is left behind
//! by a crash or `kill -9`), its pages reserved with `fallocate` (no SIGBUS later), mode
//! 0600 like every memfd. Its first page is a header that holds an id and a `freed` word;
//! the data starts at the second page. Peers open it through `/proc/<pid>/fd/<fd>` of the
//! owner (same user, ptrace allowed, as for the transport's own segments), check the
//! header's id (the descriptor number might have been reused for another file), and keep
//! the mapping until the owner marks it freed: the next lookup for that owner unmaps it.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::region::{MemoryKind, Region, RegionMut};

const PAGE: usize = 4096;
const MAGIC: u64 = 0x6f78_6363_6c42_7566; // "oxcclBuf"

/// The first page of every shared buffer.
#[repr(C)]
struct Header {
    magic: u64,
    id: u64,
    data_len: u64,
    /// Set to 1 by the owner when it frees the buffer; peers then unmap it.
    freed: AtomicU32,
}

/// Names `len` bytes at `offset` of a peer-mappable buffer, or (`fd < 0`) an address in
/// the owner's process, usable by peers in that same process only, or (`device`) a span of
/// GPU memory: its allocation's CUDA IPC handle and the span's offset in it (or, for peers in
/// the owner's process, its address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryKey {
    /// The owner's process id.
    pub pid: u32,
    /// The owner's descriptor of the buffer's file, or -1 for a plain address or device
    /// memory.
    pub fd: i32,
    /// The buffer's id (unique in its process), 0 for a plain address; for device memory the
    /// allocation's id ([`DeviceKey::buffer_id`](crate::cuda::DeviceKey::buffer_id)).
    pub id: u64,
    /// Byte offset of the span in the buffer's data (or in the device allocation), or its
    /// address when `fd < 0` and there is no device part.
    pub offset: u64,
    /// The span's length.
    pub len: u64,
    /// For device memory: the allocation, named for other processes.
    pub device: Option<crate::cuda::DeviceKey>,
}

impl MemoryKey {
    /// Its size on the wire.
    pub const BYTES: usize = 120;
    /// The size of the leading part of [`MemoryKey::to_bytes`] that a key of host memory
    /// needs (the rest, the device part, is zero and decodes as none).
    pub const HOST_BYTES: usize = 32;

    /// The key of an address in this process (`region` must be host memory).
    pub fn process_address(region: Region) -> MemoryKey {
        MemoryKey {
            pid: std::process::id(),
            fd: -1,
            id: 0,
            offset: region.as_ptr() as u64,
            len: region.len() as u64,
            device: None,
        }
    }

    /// The key of a span of device memory, for peers in this process (by address) and in
    /// other processes (by CUDA IPC handle); `None` for host memory or where CUDA cannot
    /// name it.
    pub fn device_memory(region: Region) -> Option<MemoryKey> {
        let MemoryKind::Device { ordinal } = region.kind() else { return None };
        if region.is_empty() {
            return Some(MemoryKey { pid: std::process::id(), fd: -1, ..MemoryKey::default() });
        }
        match crate::cuda::device_key(ordinal, region.as_ptr()) {
            Ok((dk, offset)) => Some(MemoryKey {
                pid: std::process::id(),
                fd: -1,
                // Device memory: the allocation's id (travels here, not in the device part).
                id: dk.buffer_id,
                offset,
                len: region.len() as u64,
                device: Some(dk),
            }),
            Err(e) => {
                tracing::debug!(error = %e, "device memory cannot be named for peers");
                None
            }
        }
    }

    /// Little-endian encoding.
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        b[0..4].copy_from_slice(&self.pid.to_le_bytes());
        b[4..8].copy_from_slice(&self.fd.to_le_bytes());
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..24].copy_from_slice(&self.offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
        if let Some(d) = &self.device {
            b[32..36].copy_from_slice(&1u32.to_le_bytes());
            b[36..40].copy_from_slice(&d.ordinal.to_le_bytes());
            b[40..48].copy_from_slice(&d.base.to_le_bytes());
            b[48..112].copy_from_slice(&d.handle);
            b[112..120].copy_from_slice(&d.size.to_le_bytes());
        }
        b
    }

    /// Decodes [`MemoryKey::to_bytes`].
    pub fn from_bytes(b: &[u8; Self::BYTES]) -> MemoryKey {
        let w4 = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        let w8 = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let device = (u32::from_le_bytes(w4(32)) == 1).then(|| crate::cuda::DeviceKey {
            ordinal: u32::from_le_bytes(w4(36)),
            base: w8(40),
            handle: b[48..112].try_into().expect("64 bytes"),
            buffer_id: w8(8),
            size: w8(112),
        });
        MemoryKey {
            pid: u32::from_le_bytes(w4(0)),
            fd: i32::from_le_bytes(w4(4)),
            id: w8(8),
            offset: w8(16),
            len: w8(24),
            device,
        }
    }
}

struct Registered {
    end: usize,
    fd: i32,
    id: u64,
}

/// Every live shared buffer of this process, by data start address.
static REGISTRY: RwLock<BTreeMap<usize, Registered>> = RwLock::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn os(what: String) -> Error {
    Error::io(what, std::io::Error::last_os_error())
}

/// A buffer that peers on this host can map (see the module docs). Dropping it frees it;
/// peers that mapped it let go of it at their next lookup.
pub struct SharedBuffer {
    base: *mut u8,
    map_len: usize,
    len: usize,
    /// Held open for the buffer's life: peers open it through `/proc/<pid>/fd/<fd>`.
    _fd: OwnedFd,
}

// SAFETY: the buffer is plain memory owned by this value; access goes through `&self` /
// `&mut self` or through regions whose users promise validity.
unsafe impl Send for SharedBuffer {}
// SAFETY: as above; shared references only read.
unsafe impl Sync for SharedBuffer {}

impl SharedBuffer {
    /// Allocates `len` zeroed bytes (page-aligned) that peers can map.
    pub fn new(len: usize) -> Result<SharedBuffer> {
        let data = len.next_multiple_of(PAGE).max(PAGE);
        let map_len = PAGE + data;
        let name = CString::new("oxccl-buffer").expect("no NUL");
        // SAFETY: a valid C string; returns a new descriptor or -1.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(os("shared buffer: memfd_create".into()));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: plain syscalls on our descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), map_len as libc::off_t) } != 0 {
            return Err(os("shared buffer: ftruncate".into()));
        }
        // SAFETY: as above. Reserving the pages now makes a lack of memory an error here, not
        // a SIGBUS at first touch.
        if unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, map_len as libc::off_t) } != 0 {
            return Err(os(format!("shared buffer: cannot reserve {map_len} bytes")));
        }
        let base = map(&fd, map_len, "shared buffer")?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the header lies in the first page of a fresh, writable, zeroed mapping.
        unsafe {
            let h = base.cast::<Header>();
            std::ptr::addr_of_mut!((*h).magic).write(MAGIC);
            std::ptr::addr_of_mut!((*h).id).write(id);
            std::ptr::addr_of_mut!((*h).data_len).write(data as u64);
        }
        let start = base as usize + PAGE;
        REGISTRY
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(start, Registered { end: start + data, fd: fd.as_raw_fd(), id });
        Ok(SharedBuffer { base, map_len, len, _fd: fd })
    }

    /// The first byte.
    pub fn as_ptr(&self) -> *const u8 {
        // SAFETY: the data starts one page into the mapping.
        unsafe { self.base.add(PAGE) }
    }

    /// The first byte, writable.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: as above.
        unsafe { self.base.add(PAGE) }
    }

    /// The length asked for.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` initialized (zero-filled) bytes owned by this buffer.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), self.len) }
    }
}

impl Drop for SharedBuffer {
    fn drop(&mut self) {
        let start = self.as_ptr() as usize;
        REGISTRY.write().unwrap_or_else(|e| e.into_inner()).remove(&start);
        // SAFETY: the header is in our mapping, alive until the munmap below.
        unsafe { (*self.base.cast::<Header>()).freed.store(1, Ordering::Release) };
        // SAFETY: unmaps exactly our mapping; nothing uses it after drop.
        unsafe { libc::munmap(self.base.cast(), self.map_len) };
    }
}

impl std::fmt::Debug for SharedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBuffer").field("ptr", &self.as_ptr()).field("len", &self.len).finish()
    }
}

/// Maps `len` bytes of `fd` shared, readable and writable, populated now rather than on
/// first touch: a FIFO slot's first write otherwise takes a page fault per 4 KiB (32 us for a
/// 64 KiB slot, 15 times its copy) inside the first collectives, where it also misled the
/// senders' timing of their slot copies.
pub(super) fn map(fd: &OwnedFd, len: usize, what: &str) -> Result<*mut u8> {
    // SAFETY: maps `len` bytes of a file we hold open; the kernel checks the arguments.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(os(format!("{what}: mmap of {len} bytes")));
    }
    Ok(p.cast())
}

/// The key peers map `region` with, when it lies inside one of this process's shared
/// buffers.
pub fn registered_key(region: Region) -> Option<MemoryKey> {
    if region.kind() != MemoryKind::Host {
        return None;
    }
    let (start, len) = (region.as_ptr() as usize, region.len());
    let reg = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    let (&base, r) = reg.range(..=start).next_back()?;
    (start.checked_add(len)? <= r.end).then(|| MemoryKey {
        pid: std::process::id(),
        fd: r.fd,
        id: r.id,
        offset: (start - base) as u64,
        len: len as u64,
        device: None,
    })
}

/// One peer buffer mapped here.
struct Mapping {
    base: *mut u8,
    map_len: usize,
    data_len: usize,
}

impl Mapping {
    fn freed(&self) -> bool {
        // SAFETY: the header is in the first page of our live mapping.
        unsafe { (*self.base.cast::<Header>()).freed.load(Ordering::Acquire) != 0 }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly our mapping; it is dropped only when no call uses it.
        unsafe { libc::munmap(self.base.cast(), self.map_len) };
    }
}

/// The peer side: buffers of other processes mapped into this one, kept until their owner
/// frees them.
#[derive(Default)]
pub struct PeerMappings {
    maps: Mutex<HashMap<(u32, u64), Mapping>>,
    devices: crate::cuda::PeerDeviceMappings,
}

// SAFETY: the mappings are shared memory owned by this cache; the raw pointers are only
// turned into regions under the promise of `map`'s caller.
unsafe impl Send for PeerMappings {}
// SAFETY: as above; the map is behind a mutex.
unsafe impl Sync for PeerMappings {}

impl PeerMappings {
    /// A region over the span `key` names. Same-process keys (`fd < 0`) are taken as they
    /// are, when the pid is this process's. Others are mapped (once per buffer) and checked
    /// against the buffer's header and size. Mappings of buffers their owner has freed are
    /// let go first.
    ///
    /// The region stays valid until the owner frees the buffer and a later call here lets go
    /// of it: callers use it only inside a collective in which the owner holds the buffer.
    pub fn map(&self, key: &MemoryKey) -> Result<RegionMut> {
        if let Some(dk) = &key.device {
            return self.map_device(key, dk);
        }
        if key.fd < 0 {
            if key.pid != std::process::id() || key.id != 0 {
                return Err(Error::unsupported(format!(
                    "memory of process {} is not a shared buffer (allocate it as an oxccl SharedBuffer)",
                    key.pid
                )));
            }
            // SAFETY: an address of this very process, which the peer (a thread here) keeps
            // valid for the collective, as the caller promises.
            return Ok(unsafe { RegionMut::from_raw_parts(key.offset as *mut u8, key.len as usize, MemoryKind::Host) });
        }
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        maps.retain(|_, m| !m.freed());
        let m = match maps.entry((key.pid, key.id)) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(open(key)?),
        };
        let end = key.offset.checked_add(key.len).filter(|&e| e <= m.data_len as u64);
        if end.is_none() {
            return Err(Error::invalid_usage(format!(
                "a peer named bytes {}..+{} of its shared buffer {}, which holds {}",
                key.offset, key.len, key.id, m.data_len
            )));
        }
        // SAFETY: inside our live mapping of the buffer (checked above).
        let p = unsafe { m.base.add(PAGE + key.offset as usize) };
        // SAFETY: shared memory mapped here; the caller's promise covers its validity.
        Ok(unsafe { RegionMut::from_raw_parts(p, key.len as usize, MemoryKind::Host) })
    }

    /// A device span: in this process, the owner's address; in another, the allocation
    /// opened (once) in the CUDA context current on this thread, plus the span's offset.
    /// CUDA keeps an opened allocation alive until it is closed, so a region stays valid
    /// for as long as these mappings live.
    fn map_device(&self, key: &MemoryKey, dk: &crate::cuda::DeviceKey) -> Result<RegionMut> {
        let (base, ordinal, size) = if key.pid == std::process::id() {
            (dk.base as *mut u8, dk.ordinal, crate::cuda::allocation_size(dk.base as *const u8)?)
        } else {
            self.devices.open(key.pid, dk)?
        };
        // Within the allocation: a lying key must not name bytes beyond it.
        if key.offset.checked_add(key.len).is_none_or(|end| end > size as u64) {
            return Err(Error::invalid_usage(format!(
                "a peer named device bytes {}..+{} of an allocation of {size}",
                key.offset, key.len
            )));
        }
        let start = base as u64 + key.offset;
        // SAFETY: device memory of a live allocation (the owner holds it for the collective,
        // as the caller promises); the region is only handed to the device reducer.
        Ok(unsafe { RegionMut::from_raw_parts(start as *mut u8, key.len as usize, MemoryKind::Device { ordinal }) })
    }

    /// How many peer buffers are mapped now.
    pub fn len(&self) -> usize {
        self.maps.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn open(key: &MemoryKey) -> Result<Mapping> {
    let path = format!("/proc/{}/fd/{}", key.pid, key.fd);
    let c = CString::new(path.clone()).expect("no NUL");
    // SAFETY: a valid C string; returns a new descriptor or -1.
    let raw = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(os(format!("shared buffer: opening a peer's buffer at {path} (same user, ptrace allowed?)")));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: a zeroed stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: our descriptor and a valid stat buffer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(os("shared buffer: fstat".into()));
    }
    let map_len = st.st_size as usize;
    if map_len < 2 * PAGE || !map_len.is_multiple_of(PAGE) {
        return Err(Error::invalid_usage(format!("{path} is not an oxccl shared buffer ({map_len} bytes)")));
    }
    let base = map(&fd, map_len, "shared buffer of a peer")?;
    let m = Mapping { base, map_len, data_len: map_len - PAGE };
    // SAFETY: the header is in the first page of the mapping just made.
    let (magic, id, data_len) = unsafe {
        let h = &*base.cast::<Header>();
        (h.magic, h.id, h.data_len)
    };
    if magic != MAGIC || id != key.id || data_len as usize != m.data_len {
        return Err(Error::invalid_usage(format!(
            "{path} is not the shared buffer {} it was announced as (the owner freed it?)",
            key.id
        )));
    }
    Ok(m)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_key_round_trips_and_maps_the_same_bytes() {
        let mut b = SharedBuffer::new(3 * PAGE + 5).unwrap();
        b.as_mut_slice()[100] = 7;
        // SAFETY: `b` outlives every use of the region.
        let region = unsafe { Region::from_slice(&b.as_slice()[64..200]) };
        let key = registered_key(region).expect("registered");
        assert_eq!((key.offset, key.len), (64, 136));
        assert_eq!(MemoryKey::from_bytes(&key.to_bytes()), key);
        let peers = PeerMappings::default();
        let m = peers.map(&key).unwrap();
        assert_eq!(m.len(), 136);
        // A second mapping of the same file: the byte written through one is seen through
        // the other.
        assert_ne!(m.as_mut_ptr() as usize, region.as_ptr() as usize);
        // SAFETY: inside the mapping just made.
        assert_eq!(unsafe { *m.as_mut_ptr().add(36) }, 7);
        // SAFETY: as above.
        unsafe { *m.as_mut_ptr().add(37) = 9 };
        assert_eq!(b.as_slice()[101], 9);
        assert_eq!(peers.len(), 1);
        drop(b);
        assert!(registered_key(region).is_none());
        // The next lookup lets go of the freed buffer, and its key no longer maps.
        assert!(peers.map(&key).is_err());
        assert_eq!(peers.len(), 0);
    }

    #[test]
    fn spans_outside_a_buffer_are_refused() {
        let b = SharedBuffer::new(PAGE).unwrap();
        // SAFETY: `b` outlives every use of the region.
        let whole = unsafe { Region::from_slice(b.as_slice()) };
        let key = registered_key(whole).unwrap();
        let peers = PeerMappings::default();
        for bad in [MemoryKey { len: 2 * PAGE as u64, ..key }, MemoryKey { offset: u64::MAX, ..key }] {
            assert!(peers.map(&bad).is_err(), "{bad:?}");
        }
        assert!(peers.map(&MemoryKey { id: key.id + 1000, ..key }).is_err());
        let heap = vec![0u8; 64];
        // SAFETY: `heap` outlives every use of the region.
        let heap = unsafe { Region::from_slice(&heap) };
        assert!(registered_key(heap).is_none());
        assert!(peers.map(&MemoryKey { pid: 1, ..MemoryKey::process_address(heap) }).is_err());
        assert!(peers.map(&MemoryKey::process_address(heap)).is_ok());
    }
}
