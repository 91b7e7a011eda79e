//! [`UniqueId`]: what ranks need to find each other, like NCCL's `ncclUniqueId`.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use oxccl_transport::auth::{random_bytes, Secret};

use crate::bootstrap::tcp_store::TcpStoreServer;
use crate::error::{Error, Result};

/// The rendezvous address (a [`TcpStore`](crate::TcpStore) server) and the world's 128-bit
/// secret. One rank creates it with [`UniqueId::new`] and hands it to the others out of band
/// (a file, an MPI broadcast, a command-line argument: its string form round-trips).
///
/// ```
/// let id = oxccl::UniqueId::new().unwrap();
/// let text = id.to_string();            // "oxccl://127.0.0.1:PORT#<32 hex digits>"
/// assert_eq!(text.parse::<oxccl::UniqueId>().unwrap(), id);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UniqueId {
    /// Where the store listens.
    pub addr: SocketAddr,
    /// The secret every connection must prove it knows.
    pub secret: Secret,
}

/// Bytes in the binary form ([`UniqueId::to_bytes`]), NCCL's `NCCL_UNIQUE_ID_BYTES`.
pub const UNIQUE_ID_BYTES: usize = 128;

impl UniqueId {
    /// Starts a store server in this process, on loopback or on the address that
    /// `OXCCL_SOCKET_IFNAME` selects, and returns its id with a fresh secret. The server runs
    /// until the process exits.
    pub fn new() -> Result<UniqueId> {
        let ip = crate::bootstrap::net::bind_address_from_env(None)?;
        let secret: Secret = random_bytes()?;
        let server = TcpStoreServer::start(SocketAddr::new(ip, 0), secret)?;
        let id = UniqueId { addr: server.addr(), secret };
        // Like NCCL's bootstrap root thread, the server lives as long as the process.
        std::mem::forget(server);
        Ok(id)
    }

    /// The id of an existing store.
    pub fn from_parts(addr: SocketAddr, secret: Secret) -> UniqueId {
        UniqueId { addr, secret }
    }

    /// The 128-byte binary form (for C callers and MPI broadcasts): a version byte, the
    /// address as text, the secret.
    pub fn to_bytes(&self) -> [u8; UNIQUE_ID_BYTES] {
        let mut b = [0u8; UNIQUE_ID_BYTES];
        b[0] = 1;
        b[1..17].copy_from_slice(&self.secret);
        let a = self.addr.to_string();
        b[17] = a.len() as u8;
        b[18..18 + a.len()].copy_from_slice(a.as_bytes());
        b
    }

    /// Parses the binary form.
    pub fn from_bytes(b: &[u8; UNIQUE_ID_BYTES]) -> Result<UniqueId> {
        let bad = || Error::invalid_argument("not an oxccl unique id (bad binary form)");
        if b[0] != 1 {
            return Err(bad());
        }
        let n = b[17] as usize;
        if n == 0 || 18 + n > UNIQUE_ID_BYTES {
            return Err(bad());
        }
        let addr = std::str::from_utf8(&b[18..18 + n]).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let mut secret = [0u8; 16];
        secret.copy_from_slice(&b[1..17]);
        Ok(UniqueId { addr, secret })
    }
}

impl fmt::Display for UniqueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oxccl://{}#{}", self.addr, hex(&self.secret))
    }
}

impl fmt::Debug for UniqueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret in logs.
        write!(f, "UniqueId({}, secret: <hidden>)", self.addr)
    }
}

impl FromStr for UniqueId {
    type Err = Error;
    fn from_str(s: &str) -> Result<UniqueId> {
        let bad = || Error::invalid_argument(format!("'{s}' is not an oxccl unique id (oxccl://HOST:PORT#SECRET)"));
        let rest = s.strip_prefix("oxccl://").ok_or_else(bad)?;
        let (addr, secret) = rest.split_once('#').ok_or_else(bad)?;
        Ok(UniqueId { addr: addr.parse().map_err(|_| bad())?, secret: parse_secret(secret).ok_or_else(bad)? })
    }
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses 32 hex digits into a secret.
pub fn parse_secret(s: &str) -> Option<Secret> {
    let s = s.trim();
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_binary_forms_round_trip() {
        let id = UniqueId::from_parts("10.1.2.3:29500".parse().unwrap(), [0xab; 16]);
        let s = id.to_string();
        assert_eq!(s, format!("oxccl://10.1.2.3:29500#{}", "ab".repeat(16)));
        assert_eq!(s.parse::<UniqueId>().unwrap(), id);
        assert_eq!(UniqueId::from_bytes(&id.to_bytes()).unwrap(), id);
        assert!("oxccl://nope".parse::<UniqueId>().is_err());
        assert!("oxccl://1.2.3.4:5#abc".parse::<UniqueId>().is_err());
        assert!(UniqueId::from_bytes(&[0; UNIQUE_ID_BYTES]).is_err());
        assert!(!format!("{id:?}").contains("abab"), "Debug must not print the secret");
    }
}
