//! [`FileStore`]: a key-value store in a directory of a shared file system, for clusters
//! where ranks share storage but no rank can host a TCP server others reach.
//!
//! Each key is a file (its name percent-encoded); `set` writes a temporary file and renames
//! it into place, so readers never see half a value; `get` polls with backoff until the file
//! appears; `add` holds an exclusive `flock` on a lock file while it reads and rewrites.
//! The directory is created with mode 0700: the file system's permissions are its secret.

use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oxccl_transport::store::parse_counter;
use oxccl_transport::Store;

use crate::error::{Error, Result};

/// A store in a directory.
pub struct FileStore {
    dir: PathBuf,
}

fn encode(key: &str) -> String {
    key.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

impl FileStore {
    /// Opens (creating if needed) a store in `dir`.
    pub fn new(dir: impl AsRef<Path>) -> Result<FileStore> {
        let dir = dir.as_ref().to_path_buf();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("file store: creating {}", dir.display()), e))?;
        Ok(FileStore { dir })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(encode(key))
    }

    fn write(&self, key: &str, value: &[u8]) -> Result<()> {
        let tmp = self.dir.join(format!(".tmp-{}-{}", std::process::id(), encode(key)));
        let io = |e| Error::io(format!("file store: writing key '{key}' in {}", self.dir.display()), e);
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(value).map_err(io)?;
        f.sync_data().map_err(io)?;
        fs::rename(&tmp, self.path(key)).map_err(io)
    }
}

impl Store for FileStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.write(key, value)
    }

    fn get(&self, key: &str, deadline: Instant) -> Result<Vec<u8>> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(1);
        loop {
            match fs::read(self.path(key)) {
                Ok(v) => return Ok(v),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("file store: reading key '{key}'"), e)),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::timeout(format!("store key '{key}' was never set"), now - start));
            }
            std::thread::sleep(backoff.min(deadline - now));
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let lock_path = self.dir.join(".lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("file store: opening the lock file", e))?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io("file store: locking", std::io::Error::from(e)))?;
        let cur = match fs::read(self.path(key)) {
            Ok(v) => parse_counter(key, &v)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(Error::io(format!("file store: reading key '{key}'"), e)),
        };
        let new = cur.wrapping_add(delta);
        self.write(key, new.to_string().as_bytes())?;
        drop(lock);
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_add_across_instances() {
        let dir =
            std::env::temp_dir().join(format!("oxccl-fs-{}-{:?}", std::process::id(), std::thread::current().id()));
        let a = FileStore::new(&dir).unwrap();
        let b = FileStore::new(&dir).unwrap();
        let soon = Instant::now() + Duration::from_secs(5);
        a.set("tcp/addr/0", b"1.2.3.4:5").unwrap();
        assert_eq!(b.get("tcp/addr/0", soon).unwrap(), b"1.2.3.4:5");
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let d = dir.clone();
                std::thread::spawn(move || {
                    let s = FileStore::new(&d).unwrap();
                    for _ in 0..10 {
                        s.add("ctr", 1).unwrap();
                    }
                })
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(a.add("ctr", 0).unwrap(), 40);
        assert!(a.get("nope", Instant::now() + Duration::from_millis(20)).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
