//! The pre-shared cluster key: generated, written to and read from key files, handed to
//! remote clients. The key is what the secure channel ([`crate::secure`]) authenticates with.
//!
//! Key files hold the key as 64 hex digits (a trailing newline is allowed), are created with
//! mode 0600, and are refused when group or others may read them, as ssh does with its keys.
//! A key that is one byte repeated (all zeros included) is refused wherever a key is read: it
//! is a placeholder, not a secret. Every error about a key file names the file.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Bytes in a cluster key.
pub const KEY_LEN: usize = 32;
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

    /// A public name for the session this key belongs to: the first 8 bytes of the SHA-256 of a
    /// fixed label and the key (it reveals nothing of the key). A controller that restarts on
    /// its journal keeps its key, hence its session tag; a new session has a fresh key. The
    /// job record keys what a client started by it (see [`crate::record`]), since job ids
    /// restart at 1 in every session.
    pub fn session_tag(&self) -> u64 {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"plush session tag\0");
        h.update(self.0);
        let d = h.finalize();
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&d[..8]);
        u64::from_be_bytes(tag)
    }

    /// A key from raw bytes (tests, or keys kept elsewhere). Unlike the readers, this does not
    /// refuse weak keys: the caller chose the bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }

    /// Read a key file: 64 hex digits, optionally followed by a newline; the file must not be
    /// readable or writable by group or others. Every error names the file.
    pub fn read_file(path: &Path) -> io::Result<Key> {
        let named = |e: io::Error| io::Error::new(e.kind(), format!("key file {}: {e}", path.display()));
        let meta = fs::metadata(path).map_err(named)?;
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
        let text = fs::read(path).map_err(named)?;
        let key = Key::parse_hex(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("key file {} does not hold 64 hex digits", path.display()),
            )
        })?;
        key.check()
            .map_err(|why| io::Error::new(io::ErrorKind::InvalidData, format!("key file {}: {why}", path.display())))
    }

    /// Read a key from a stream (a launcher hands it on a client's stdin): 64 hex digits and a
    /// newline; at most 256 bytes are read, up to the first newline or the end of the stream.
    pub fn read_from(r: impl io::Read) -> io::Result<Key> {
        let mut line = Vec::with_capacity(KEY_LEN * 2 + 1);
        io::BufRead::read_until(&mut io::BufReader::new(r.take(MAX_KEY_FILE)), b'\n', &mut line)?;
        let key = Key::parse_hex(&line)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "the key given does not hold 64 hex digits"))?;
        key.check().map_err(|why| io::Error::new(io::ErrorKind::InvalidData, format!("the key given: {why}")))
    }

    /// Refuse a key that is one byte repeated (all zeros included): a placeholder somebody
    /// forgot to replace, or a file that was zeroed.
    fn check(self) -> Result<Key, &'static str> {
        if self.0.iter().all(|&b| b == self.0[0]) {
            return Err("the key is one byte repeated, which is no secret; generate a real one");
        }
        Ok(self)
    }

    /// The key's bytes (the secure channel's pre-shared key).
    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
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
        f.write_all(self.hex_line().as_bytes())?;
        f.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn weak_keys_and_missing_files_are_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("plush-auth-weak-{}", std::process::id()));
        let _ = fs::remove_file(&dir);
        Key::from_bytes([0; KEY_LEN]).write_new_file(&dir).unwrap();
        let e = Key::read_file(&dir).unwrap_err().to_string();
        assert!(e.contains(&dir.display().to_string()) && e.contains("one byte repeated"), "{e}");
        fs::remove_file(&dir).unwrap();
        Key::from_bytes([0xa7; KEY_LEN]).write_new_file(&dir).unwrap();
        assert!(Key::read_file(&dir).is_err(), "any byte repeated");
        assert!(Key::read_from(&b"a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7\n"[..]).is_err());
        fs::remove_file(&dir).unwrap();
        let e = Key::read_file(&dir).unwrap_err().to_string();
        assert!(e.contains(&dir.display().to_string()), "a missing file is named: {e}");
    }
}
