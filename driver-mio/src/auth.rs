//! The pre-shared cluster key and the authentication step after the hellos.
//!
//! Each side of a connection sends its [`Hello`] (with a fresh random nonce), then, once it has
//! the peer's hello, a 32-byte tag: HMAC-SHA256 under the cluster key over a direction label
//! (dialer or acceptor), both node ids, both roles and both nonces, the sender's first. The
//! receiver recomputes the tag it expects and compares in constant time. A tag covers the
//! receiver's fresh nonce, so it cannot be replayed on another connection; the direction label
//! stops a tag from being reflected back to the side that asked.
//!
//! Key files hold the key as 64 hex digits (a trailing newline is allowed), are created with
//! mode 0600, and are refused when group or others may read them, as ssh does with its keys.

use hmac::{Hmac, KeyInit, Mac};
use plush_core::wire::{Hello, Role};
use plush_core::NodeId;
use sha2::Sha256;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Bytes in a cluster key.
pub const KEY_LEN: usize = 32;
/// Bytes in an authentication tag.
pub const TAG_LEN: usize = 32;
/// Largest key file read; anything longer is refused before reading.
const MAX_KEY_FILE: u64 = 256;

/// The pre-shared cluster key. Its `Debug` output never shows the bytes.
#[derive(Clone)]
pub struct Key([u8; KEY_LEN]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A fresh random key (thread RNG: ChaCha12 seeded from the OS).
    pub fn generate() -> Key {
        let mut k = [0u8; KEY_LEN];
        rand::fill(&mut k[..]);
        Key(k)
    }

    /// A key from raw bytes (tests, or keys kept elsewhere).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }

    /// Read a key file: 64 hex digits, optionally followed by a newline; the file must not be
    /// readable or writable by group or others.
    pub fn read_file(path: &Path) -> io::Result<Key> {
        let meta = fs::metadata(path)?;
        if meta.mode() & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "key file {} is accessible by group or others (mode {:o}); use 0600",
                    path.display(),
                    meta.mode() & 0o777
                ),
            ));
        }
        if meta.len() > MAX_KEY_FILE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("key file {} is too long", path.display())));
        }
        let text = fs::read(path)?;
        Key::parse_hex(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("key file {} does not hold 64 hex digits", path.display()),
            )
        })
    }

    /// Read a key from a stream (a launcher hands it on a client's stdin): 64 hex digits and a
    /// newline; at most 256 bytes are read, up to the first newline or the end of the stream.
    pub fn read_from(r: impl io::Read) -> io::Result<Key> {
        let mut line = Vec::with_capacity(KEY_LEN * 2 + 1);
        io::BufRead::read_until(&mut io::BufReader::new(r.take(MAX_KEY_FILE)), b'\n', &mut line)?;
        Key::parse_hex(&line)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "the key given does not hold 64 hex digits"))
    }

    fn parse_hex(text: &[u8]) -> Option<Key> {
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        if text.len() != KEY_LEN * 2 {
            return None;
        }
        let mut k = [0u8; KEY_LEN];
        for (i, pair) in text.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            k[i] = (hi * 16 + lo) as u8;
        }
        Some(Key(k))
    }

    /// The key as a line of 64 hex digits (what [`Key::read_from`] reads).
    pub(crate) fn hex_line(&self) -> String {
        let mut hex = String::with_capacity(KEY_LEN * 2 + 1);
        for b in self.0 {
            hex.push_str(&format!("{b:02x}"));
        }
        hex.push('\n');
        hex
    }

    /// Write the key to a new file (mode 0600); fails if the file exists.
    pub fn write_new_file(&self, path: &Path) -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        let mut hex = String::with_capacity(KEY_LEN * 2 + 1);
        for b in self.0 {
            hex.push_str(&format!("{b:02x}"));
        }
        hex.push('\n');
        f.write_all(hex.as_bytes())?;
        f.sync_all()
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length: this cannot fail.
        match <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        }
    }
}

fn put_id(m: &mut Hmac<Sha256>, id: &NodeId) {
    let a = id.addr();
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    m.update(&ip);
    m.update(&a.port().to_be_bytes());
}

fn put_hello(m: &mut Hmac<Sha256>, h: &Hello) {
    put_id(m, &h.node_id);
    m.update(&[match h.role {
        Role::Client => 1,
        Role::Controller => 2,
    }]);
    m.update(&h.nonce.to_be_bytes());
}

fn transcript(key: &Key, sender_dialed: bool, sender: &Hello, receiver: &Hello) -> Hmac<Sha256> {
    let mut m = key.mac();
    m.update(if sender_dialed { b"plush-auth-v1 dialer  " } else { b"plush-auth-v1 acceptor" });
    put_hello(&mut m, sender);
    put_hello(&mut m, receiver);
    m
}

/// The tag `sender` sends to `receiver` (whose nonce it answers). Public for harnesses that
/// speak the handshake themselves (benchmarks, tests).
pub fn tag(key: &Key, sender_dialed: bool, sender: &Hello, receiver: &Hello) -> [u8; TAG_LEN] {
    transcript(key, sender_dialed, sender, receiver).finalize().into_bytes().into()
}

/// Whether `tag` is the one `sender` owes `receiver`; compared in constant time.
pub fn verify(key: &Key, sender_dialed: bool, sender: &Hello, receiver: &Hello, tag: &[u8]) -> bool {
    transcript(key, sender_dialed, sender, receiver).verify_slice(tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(i: u32, nonce: u64) -> Hello {
        Hello::new(NodeId::loopback(i, 7000), Role::Client, nonce)
    }

    #[test]
    fn a_tag_verifies_only_with_the_same_key_direction_and_nonces() {
        let k = Key::from_bytes([7; KEY_LEN]);
        let (a, b) = (hello(1, 11), hello(2, 22));
        let t = tag(&k, true, &a, &b);
        assert!(verify(&k, true, &a, &b, &t));
        assert!(!verify(&Key::from_bytes([8; KEY_LEN]), true, &a, &b, &t), "other key");
        assert!(!verify(&k, false, &a, &b, &t), "reflected");
        assert!(!verify(&k, true, &a, &hello(2, 23), &t), "other nonce");
        assert!(!verify(&k, true, &hello(3, 11), &b, &t), "other id");
        assert!(!verify(&k, true, &a, &b, &t[..31]), "short");
    }

    #[test]
    fn key_files_round_trip_and_are_private() {
        let dir = std::env::temp_dir().join(format!("plush-auth-test-{}", std::process::id()));
        let _ = fs::remove_file(&dir);
        let k = Key::generate();
        k.write_new_file(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o600);
        assert_eq!(Key::read_file(&dir).unwrap().0, k.0);
        let hex = fs::read(&dir).unwrap();
        assert!(k.write_new_file(&dir).is_err(), "never overwrites");
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        assert!(Key::read_file(&dir).is_err(), "readable by others");
        fs::remove_file(&dir).unwrap();
        assert!(Key::parse_hex(b"zz").is_none());
        let mut piped = hex.clone();
        piped.extend_from_slice(b"what follows the line is not read");
        assert_eq!(Key::read_from(&piped[..]).unwrap().0, k.0);
        assert!(Key::read_from(&hex[..10]).is_err(), "cut short");
        assert!(Key::parse_hex(&[b'a'; 65]).is_none());
    }
}
