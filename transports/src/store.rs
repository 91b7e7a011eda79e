//! The key-value store that ranks rendezvous through (addresses, host names, secrets' proofs).
//!
//! Implementations live in the `oxccl` crate (`TcpStore`, `FileStore`); transports only use the
//! trait, to publish their listening addresses and read their peers'.

use std::time::Instant;

use crate::error::Result;

/// A key-value store shared by every rank of a world.
///
/// Keys are UTF-8 strings; values are bytes. `get` waits for a key that is not there yet, until
/// the deadline, then fails with `Error::Timeout` naming the key.
pub trait Store: Send + Sync {
    /// Sets `key` to `value`, replacing any earlier value.
    fn set(&self, key: &str, value: &[u8]) -> Result<()>;
    /// The value of `key`, waiting until it is set or `deadline` passes.
    fn get(&self, key: &str, deadline: Instant) -> Result<Vec<u8>>;
    /// Adds `delta` to the integer at `key` (0 when absent) and returns the new value.
    fn add(&self, key: &str, delta: i64) -> Result<i64>;
}

/// A store that prefixes every key, so several communicators can share one store.
pub struct PrefixStore<S> {
    prefix: String,
    inner: S,
}

impl<S: Store> PrefixStore<S> {
    /// Wraps `inner`, prefixing keys with `prefix` and a slash.
    pub fn new(prefix: impl Into<String>, inner: S) -> Self {
        PrefixStore { prefix: prefix.into(), inner }
    }
    fn key(&self, key: &str) -> String {
        format!("{}/{}", self.prefix, key)
    }
}

impl<S: Store> Store for PrefixStore<S> {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.inner.set(&self.key(key), value)
    }
    fn get(&self, key: &str, deadline: Instant) -> Result<Vec<u8>> {
        self.inner.get(&self.key(key), deadline)
    }
    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        self.inner.add(&self.key(key), delta)
    }
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        (**self).set(key, value)
    }
    fn get(&self, key: &str, deadline: Instant) -> Result<Vec<u8>> {
        (**self).get(key, deadline)
    }
    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        (**self).add(key, delta)
    }
}

/// An in-process store for tests and thread worlds.
#[derive(Default)]
pub struct MemoryStore {
    map: std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>,
    changed: std::sync::Condvar,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(key.to_string(), value.to_vec());
        self.changed.notify_all();
        Ok(())
    }
    fn get(&self, key: &str, deadline: Instant) -> Result<Vec<u8>> {
        let start = Instant::now();
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = m.get(key) {
                return Ok(v.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(crate::Error::timeout(format!("store key '{key}' was never set"), now - start));
            }
            m = self.changed.wait_timeout(m, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let cur = m.get(key).map(|v| parse_counter(key, v)).transpose()?.unwrap_or(0);
        let new = cur.wrapping_add(delta);
        m.insert(key.to_string(), new.to_string().into_bytes());
        self.changed.notify_all();
        Ok(new)
    }
}

/// Parses a counter value written by `add`.
pub fn parse_counter(key: &str, v: &[u8]) -> Result<i64> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| crate::Error::invalid_usage(format!("store key '{key}' does not hold a counter")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn memory_store_set_get_add_and_timeout() {
        let s = MemoryStore::new();
        s.set("a", b"1").unwrap();
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(s.get("a", soon).unwrap(), b"1");
        assert_eq!(s.add("n", 2).unwrap(), 2);
        assert_eq!(s.add("n", 3).unwrap(), 5);
        let err = s.get("missing", soon).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Timeout);
        assert!(err.to_string().contains("missing"));
        let p = PrefixStore::new("c1", std::sync::Arc::new(MemoryStore::new()));
        p.set("k", b"v").unwrap();
        assert_eq!(p.inner.get("c1/k", soon).unwrap(), b"v");
    }
}
