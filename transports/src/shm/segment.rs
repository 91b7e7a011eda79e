//! Shared memory segments: `memfd_create` memory mapped by every rank of a host.
//!
//! A segment is an anonymous memory file: it has no name in `/dev/shm` (so a crash, even
//! `kill -9`, leaves nothing behind; it is freed when the last process that maps it ends),
//! it is not limited by the size of `/dev/shm`, and its pages are allocated up front with
//! `fallocate`, so running out of memory is a clear error at setup, never a SIGBUS later.
//! Peers map it through `/proc/<pid>/fd/<fd>` of the owner, which the kernel allows to
//! processes of the same user.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{Error, Result};

/// A mapped segment.
pub struct Segment {
    ptr: *mut u8,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory; all access to it goes through atomics or
// through the FIFO protocol, which orders the plain accesses.
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

fn os(what: &str) -> Error {
    Error::io(what.to_string(), std::io::Error::last_os_error())
}

impl Segment {
    /// Creates a zero-filled segment of `len` bytes with all its memory reserved.
    pub fn create(len: usize) -> Result<Segment> {
        let name = CString::new("oxccl-shm").expect("no NUL");
        // SAFETY: a valid C string; returns a new descriptor or -1.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(os("shared memory: memfd_create"));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain syscalls on our descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(os("shared memory: ftruncate"));
        }
        // SAFETY: as above.
        let r = unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, len as libc::off_t) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            return Err(Error::io(
                format!(
                    "shared memory: cannot reserve {len} bytes ({} MiB) for the FIFOs; free memory or \
                     lower OXCCL_SHM_SLOTS / OXCCL_SHM_SLOT_BYTES",
                    len >> 20
                ),
                e,
            ));
        }
        let ptr = super::shared::map(&fd, len, "shared memory")?;
        Ok(Segment { ptr, len, fd })
    }

    /// Maps the segment that process `pid` holds open as descriptor `fd`, of `len` bytes.
    pub fn open(pid: u32, fd: i32, len: usize) -> Result<Segment> {
        let path = CString::new(format!("/proc/{pid}/fd/{fd}")).expect("no NUL");
        // SAFETY: a valid C string; returns a new descriptor or -1.
        let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(Error::io(
                format!("shared memory: opening a peer's segment at /proc/{pid}/fd/{fd} (same user, ptrace allowed?)"),
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: a zeroed stat is valid; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: our descriptor and a valid stat buffer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(os("shared memory: fstat"));
        }
        if st.st_size as usize != len {
            return Err(Error::invalid_usage(format!(
                "shared memory: a peer's segment has {} bytes, not the {len} announced",
                st.st_size
            )));
        }
        let ptr = super::shared::map(&fd, len, "shared memory")?;
        Ok(Segment { ptr, len, fd })
    }

    /// The start of the mapping.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }
    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The descriptor (for peers to open through /proc).
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; nothing uses it after drop.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
