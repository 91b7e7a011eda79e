//! The handshake that every connection (store and data) opens with: the connecting side proves
//! it knows the world's 128-bit secret, without sending it, by an HMAC-SHA256 over a fresh
//! challenge from the accepting side.
//!
//! ```text
//! connector -> acceptor  Hello:     "OXHS" version purpose from to index world nonce_c[16]  (36 B)
//! acceptor  -> connector Challenge: nonce_a[16]
//! connector -> acceptor  Proof:     HMAC(secret, "oxccl-auth-v1" || Hello || nonce_a)     (32 B)
//! acceptor  -> connector Verdict:   1 = accepted, 0 = refused (then the acceptor closes)
//! ```

use std::io::{Read, Write};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

/// The world's shared secret.
pub type Secret = [u8; 16];

const MAGIC: &[u8; 4] = b"OXHS";
const VERSION: u8 = 1;
const HELLO_LEN: usize = 36;

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Purpose {
    /// A key-value store client.
    Store = 1,
    /// A data connection between two ranks.
    Data = 2,
}

/// The identity a connector claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// What the connection is for.
    pub purpose: Purpose,
    /// The connecting rank (`u32::MAX` for a store client that is no rank).
    pub from: u32,
    /// The rank it wants (`u32::MAX` for the store).
    pub to: u32,
    /// Which of several connections between the pair.
    pub index: u32,
    /// The world size it believes in.
    pub world: u32,
}

impl Hello {
    fn encode(&self, nonce: &[u8; 16]) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(MAGIC);
        b[4] = VERSION;
        b[5] = self.purpose as u8;
        b[8..12].copy_from_slice(&self.from.to_le_bytes());
        b[12..16].copy_from_slice(&self.to.to_le_bytes());
        b[16..20].copy_from_slice(&self.index.to_le_bytes());
        b[20..24].copy_from_slice(&self.world.to_le_bytes());
        // Bytes 24..36 hold the first 12 bytes of the connector's nonce; the rest is in the MAC.
        b[24..36].copy_from_slice(&nonce[..12]);
        b
    }

    fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello> {
        if &b[0..4] != MAGIC {
            return Err(Error::invalid_usage("connection did not start with the oxccl handshake"));
        }
        if b[4] != VERSION {
            return Err(Error::invalid_usage(format!(
                "handshake version {} is not {VERSION} (mixed oxccl versions?)",
                b[4]
            )));
        }
        let purpose = match b[5] {
            1 => Purpose::Store,
            2 => Purpose::Data,
            k => return Err(Error::invalid_usage(format!("unknown handshake purpose {k}"))),
        };
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok(Hello { purpose, from: u(8), to: u(12), index: u(16), world: u(20) })
    }
}

fn mac(secret: &Secret, hello: &[u8; HELLO_LEN], challenge: &[u8; 16]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(b"oxccl-auth-v1");
    m.update(hello);
    m.update(challenge);
    m.finalize().into_bytes().into()
}

/// Fresh random bytes from the OS.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b)
        .map_err(|e| Error::io("reading random bytes", std::io::Error::other(e.to_string())))?;
    Ok(b)
}

fn io_err(what: &str, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            Error::timeout(format!("handshake: {what} timed out"), std::time::Duration::ZERO)
        }
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
            Error::invalid_usage(format!(
                "handshake: the other side closed the connection during {what} (wrong secret?)"
            ))
        }
        _ => Error::io(format!("handshake: {what}"), e),
    }
}

/// Runs the connecting side. `Ok(())` once the acceptor has verified the proof.
pub fn connect_handshake<S: Read + Write>(stream: &mut S, secret: &Secret, hello: Hello) -> Result<()> {
    let nonce: [u8; 16] = random_bytes()?;
    let hb = hello.encode(&nonce);
    stream.write_all(&hb).map_err(|e| io_err("sending hello", e))?;
    let mut challenge = [0u8; 16];
    stream.read_exact(&mut challenge).map_err(|e| io_err("reading challenge", e))?;
    stream.write_all(&mac(secret, &hb, &challenge)).map_err(|e| io_err("sending proof", e))?;
    let mut verdict = [0u8; 1];
    stream.read_exact(&mut verdict).map_err(|e| io_err("reading verdict", e))?;
    if verdict[0] != 1 {
        return Err(Error::invalid_usage("handshake refused: the other side does not share our secret"));
    }
    Ok(())
}

/// Runs the accepting side: returns the verified identity, or an error (after telling the
/// connector it was refused) when the proof is wrong.
pub fn accept_handshake<S: Read + Write>(stream: &mut S, secret: &Secret) -> Result<Hello> {
    let mut hb = [0u8; HELLO_LEN];
    stream.read_exact(&mut hb).map_err(|e| io_err("reading hello", e))?;
    let hello = Hello::decode(&hb)?;
    let challenge: [u8; 16] = random_bytes()?;
    stream.write_all(&challenge).map_err(|e| io_err("sending challenge", e))?;
    let mut proof = [0u8; 32];
    stream.read_exact(&mut proof).map_err(|e| io_err("reading proof", e))?;
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(b"oxccl-auth-v1");
    m.update(&hb);
    m.update(&challenge);
    if m.verify_slice(&proof).is_err() {
        let _ = stream.write_all(&[0]);
        return Err(Error::invalid_usage(format!(
            "refused a connection claiming rank {} ({:?}): it does not know the world's secret",
            hello.from as i64, hello.purpose
        )));
    }
    stream.write_all(&[1]).map_err(|e| io_err("sending verdict", e))?;
    Ok(hello)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn pair(server_secret: Secret, client_secret: Secret) -> (Result<Hello>, Result<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            accept_handshake(&mut s, &server_secret)
        });
        let mut c = TcpStream::connect(addr).unwrap();
        let hello = Hello { purpose: Purpose::Data, from: 3, to: 1, index: 0, world: 4 };
        let r = connect_handshake(&mut c, &client_secret, hello);
        (t.join().unwrap(), r)
    }

    #[test]
    fn right_secret_is_accepted_with_identity() {
        let (a, c) = pair([7; 16], [7; 16]);
        c.unwrap();
        let h = a.unwrap();
        assert_eq!((h.from, h.to, h.world, h.purpose), (3, 1, 4, Purpose::Data));
    }

    #[test]
    fn wrong_secret_is_refused_on_both_sides() {
        let (a, c) = pair([7; 16], [8; 16]);
        assert!(a.unwrap_err().to_string().contains("does not know the world's secret"));
        assert!(c.unwrap_err().to_string().contains("refused"));
    }
}
