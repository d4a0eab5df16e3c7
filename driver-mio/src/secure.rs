//! The secure channel every link runs in: a Noise handshake over the cluster key, then sealed
//! records.
//!
//! **Handshake.** Both sides first send their [`Hello`] in the clear (identity, role, a fresh
//! nonce): the dialer must learn that the node it dialed answered. Then the dialer (Noise's
//! initiator) and the acceptor run `Noise_NNpsk0_25519_AESGCM_SHA256` from the `snow` crate
//! (AES-GCM from `ring`): two messages, each side's fresh X25519 ephemeral key, and the cluster
//! key mixed in as the pre-shared key before anything else. The prologue is both hellos as they were sent, the
//! dialer's first, so a hello changed on the way (another id, another nonce) makes the handshake
//! fail. The acceptor knows the dialer holds the key once the first message opens (it is
//! encrypted under a key derived from the PSK and bound to the acceptor's fresh nonce, so it
//! cannot be replayed); the dialer knows the acceptor holds it once the second one opens. The
//! handshake gives each direction its own key, and the ephemeral keys give forward secrecy:
//! the cluster key alone does not open a recorded session.
//!
//! **Records.** After the handshake the link carries records only: a 4-byte big-endian length,
//! then an AEAD ciphertext of at most [`MAX_RECORD`] bytes (AES-256-GCM, its 16-byte tag
//! included) under a counter nonce that each side keeps for itself. Inside, the plaintext is
//! the ordinary stream of length-prefixed frames, cut into records where the sender chose: a
//! record may hold many frames (a relay seals a run of broadcasts once per child) or part of
//! one. A record that does not open — forged, bit-flipped, replayed, reordered, dropped (the next
//! one then has the wrong nonce) or cut short — is an error, and the driver closes that link.
//!
//! What it protects against, and what not: see the README ("Security").

use crate::auth::Key;
use plush_core::frame::PREFIX;
use std::fmt;

/// The Noise protocol name: pattern NN with the PSK at position 0, X25519, AES-256-GCM, SHA-256.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// Mixed into the handshake before the hellos: names this protocol and its version.
const PROLOGUE_LABEL: &[u8] = b"plush secure link v1";
/// Largest frame (after its prefix) accepted before the handshake is complete: hellos and the
/// two handshake messages are a few dozen bytes each. A larger length prefix closes the
/// connection before anything is buffered.
pub const MAX_HANDSHAKE_FRAME: usize = 256;
/// Largest record (ciphertext with its tag, after the prefix): Noise's message limit.
pub const MAX_RECORD: usize = 65_535;
/// The AEAD tag at the end of every record.
pub const TAG_LEN: usize = 16;
/// Most plaintext bytes in one record.
pub const MAX_PLAIN: usize = MAX_RECORD - TAG_LEN;

/// Why the channel refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecureError {
    /// A handshake message did not open: the peer does not hold our cluster key, or a hello or
    /// handshake message was changed on the way.
    Handshake,
    /// A record did not open: forged, altered, replayed, reordered, or something before it was
    /// dropped.
    Record,
    /// A record shorter than its tag, or longer than [`MAX_RECORD`].
    RecordSize(usize),
    /// The handshake was asked for something out of turn (a bug of ours, or a peer that sent a
    /// handshake message when it was not its turn).
    OutOfTurn,
}

impl fmt::Display for SecureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecureError::Handshake => {
                f.write_str("secure handshake failed (not our cluster key, or altered on the way)")
            }
            SecureError::Record => {
                f.write_str("a record failed to open (forged, altered, replayed, reordered or a record dropped)")
            }
            SecureError::RecordSize(n) => write!(f, "a record of {n} bytes (at least {TAG_LEN}, at most {MAX_RECORD})"),
            SecureError::OutOfTurn => f.write_str("a handshake message out of turn"),
        }
    }
}

impl std::error::Error for SecureError {}

/// A handshake in progress on one connection.
pub struct Handshake {
    hs: Box<snow::HandshakeState>,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake").field("initiator", &self.hs.is_initiator()).finish()
    }
}

impl Handshake {
    /// Start the handshake once both hellos are known: `dialer_hello` and `acceptor_hello` are
    /// the hellos' payloads exactly as sent (without their length prefixes). The dialer is the
    /// initiator and sends first ([`Handshake::next_frame`]).
    pub fn start(key: &Key, we_dialed: bool, dialer_hello: &[u8], acceptor_hello: &[u8]) -> Result<Self, SecureError> {
        let mut prologue = Vec::with_capacity(PROLOGUE_LABEL.len() + 4 + dialer_hello.len() + acceptor_hello.len());
        prologue.extend_from_slice(PROLOGUE_LABEL);
        // Lengths first, so that where one hello ends and the next starts is unambiguous.
        prologue.extend_from_slice(&(dialer_hello.len() as u16).to_be_bytes());
        prologue.extend_from_slice(&(acceptor_hello.len() as u16).to_be_bytes());
        prologue.extend_from_slice(dialer_hello);
        prologue.extend_from_slice(acceptor_hello);
        // The parameters are a constant that parses; the builder fails only on a bad PSK slot
        // or length, neither of which can happen here. Mapped rather than unwrapped all the same.
        let params = NOISE_PARAMS.parse().map_err(|_| SecureError::OutOfTurn)?;
        let b = snow::Builder::with_resolver(params, Box::new(Resolver))
            .psk(0, key.bytes())
            .and_then(|b| b.prologue(&prologue))
            .map_err(|_| SecureError::OutOfTurn)?;
        let hs = if we_dialed { b.build_initiator() } else { b.build_responder() };
        Ok(Handshake { hs: Box::new(hs.map_err(|_| SecureError::OutOfTurn)?) })
    }

    /// Our next handshake message as a whole frame (length prefix included), if it is our turn.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, SecureError> {
        if self.hs.is_handshake_finished() || !self.hs.is_my_turn() {
            return Ok(None);
        }
        let mut buf = vec![0u8; PREFIX + MAX_HANDSHAKE_FRAME];
        let n = self.hs.write_message(&[], &mut buf[PREFIX..]).map_err(|_| SecureError::OutOfTurn)?;
        buf[..PREFIX].copy_from_slice(&(n as u32).to_be_bytes());
        buf.truncate(PREFIX + n);
        Ok(Some(buf))
    }

    /// Take the peer's handshake message (a frame's payload). Any payload inside it must be
    /// empty.
    pub fn read(&mut self, msg: &[u8]) -> Result<(), SecureError> {
        if self.hs.is_handshake_finished() || self.hs.is_my_turn() {
            return Err(SecureError::OutOfTurn);
        }
        let mut payload = [0u8; MAX_HANDSHAKE_FRAME];
        match self.hs.read_message(msg, &mut payload) {
            Ok(0) => Ok(()),
            Ok(_) | Err(_) => Err(SecureError::Handshake),
        }
    }

    /// Both messages were exchanged.
    pub fn is_finished(&self) -> bool {
        self.hs.is_handshake_finished()
    }

    /// The channel, once [`Handshake::is_finished`].
    pub fn into_channel(self) -> Result<Channel, SecureError> {
        let t = self.hs.into_transport_mode().map_err(|_| SecureError::OutOfTurn)?;
        Ok(Channel { t: Box::new(t) })
    }
}

/// Both directions of an established link: seals what we send, opens what we receive.
pub struct Channel {
    t: Box<snow::TransportState>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("sent", &self.t.sending_nonce())
            .field("received", &self.t.receiving_nonce())
            .finish()
    }
}

impl Channel {
    /// Seal `plain` (any length; empty seals nothing) as records of at most [`MAX_PLAIN`]
    /// plaintext bytes each, appended to `out` with their length prefixes.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), SecureError> {
        for piece in plain.chunks(MAX_PLAIN) {
            let start = out.len();
            out.resize(start + PREFIX + piece.len() + TAG_LEN, 0);
            let n = match self.t.write_message(piece, &mut out[start + PREFIX..]) {
                Ok(n) => n,
                Err(_) => {
                    out.truncate(start);
                    return Err(SecureError::OutOfTurn);
                }
            };
            out[start..start + PREFIX].copy_from_slice(&(n as u32).to_be_bytes());
            out.truncate(start + PREFIX + n);
        }
        Ok(())
    }

    /// Open one record (a frame's payload: the ciphertext and its tag) and append its
    /// plaintext to `plain`. On error `plain` is as it was; the link must be closed (the
    /// receive nonce has moved on).
    pub fn open(&mut self, record: &[u8], plain: &mut Vec<u8>) -> Result<(), SecureError> {
        if record.len() < TAG_LEN || record.len() > MAX_RECORD {
            return Err(SecureError::RecordSize(record.len()));
        }
        let start = plain.len();
        plain.resize(start + record.len(), 0);
        match self.t.read_message(record, &mut plain[start..]) {
            Ok(n) => {
                plain.truncate(start + n);
                Ok(())
            }
            Err(_) => {
                plain.truncate(start);
                Err(SecureError::Record)
            }
        }
    }
}

/// A whole handshake between two in-memory parties: (dialer's channel, acceptor's channel).
/// For tests, benchmarks and the fuzzer's seeds.
pub fn pair(
    key_a: &Key,
    key_b: &Key,
    dialer_hello: &[u8],
    acceptor_hello: &[u8],
) -> Result<(Channel, Channel), SecureError> {
    let mut a = Handshake::start(key_a, true, dialer_hello, acceptor_hello)?;
    let mut b = Handshake::start(key_b, false, dialer_hello, acceptor_hello)?;
    while !(a.is_finished() && b.is_finished()) {
        if let Some(f) = a.next_frame()? {
            b.read(&f[PREFIX..])?;
        }
        if let Some(f) = b.next_frame()? {
            a.read(&f[PREFIX..])?;
        }
    }
    Ok((a.into_channel()?, b.into_channel()?))
}

/// The primitives of [`NOISE_PARAMS`], as `snow::Builder::new` picks them with `ring-accelerated`
/// (ring first, snow's own where ring has none): AES-256-GCM, SHA-256 and the random numbers
/// from `ring`, X25519 from snow's default resolver. Named one by one, so that the primitives
/// nobody uses (the pure-Rust AES-GCM, ChaCha20-Poly1305, BLAKE2 and SHA-512 that the default
/// resolver also offers) are not linked in: 90 KB of the static x86_64 client.
struct Resolver;

impl snow::resolvers::CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        snow::resolvers::RingResolver.resolve_rng()
    }

    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        snow::resolvers::DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &snow::params::HashChoice) -> Option<Box<dyn snow::types::Hash>> {
        snow::resolvers::RingResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &snow::params::CipherChoice) -> Option<Box<dyn snow::types::Cipher>> {
        snow::resolvers::RingResolver.resolve_cipher(choice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plush_core::frame::split_frame;

    fn key(b: u8) -> Key {
        let mut k = [0u8; 32];
        for (i, x) in k.iter_mut().enumerate() {
            *x = b.wrapping_add(i as u8);
        }
        Key::from_bytes(k)
    }

    fn records(sealed: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut rest = sealed;
        while let Some((r, used)) = split_frame(rest, MAX_RECORD).unwrap() {
            out.push(r);
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        out
    }

    #[test]
    fn both_sides_with_the_key_talk_in_both_directions() {
        let (mut a, mut b) = pair(&key(1), &key(1), b"hello-a", b"hello-b").unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut sealed = Vec::new();
        a.seal(b"first", &mut sealed).unwrap();
        a.seal(&big, &mut sealed).unwrap();
        let recs = records(&sealed);
        assert_eq!(recs.len(), 1 + big.len().div_ceil(MAX_PLAIN));
        let mut plain = Vec::new();
        for r in recs {
            assert!(r.len() <= MAX_RECORD);
            b.open(r, &mut plain).unwrap();
        }
        assert_eq!(&plain[..5], b"first");
        assert_eq!(&plain[5..], &big[..]);
        let mut back = Vec::new();
        b.seal(b"answer", &mut back).unwrap();
        let mut got = Vec::new();
        a.open(records(&back)[0], &mut got).unwrap();
        assert_eq!(got, b"answer");
    }

    #[test]
    fn another_key_or_another_hello_fails_the_handshake() {
        assert_eq!(pair(&key(1), &key(2), b"a", b"b").err(), Some(SecureError::Handshake));
        // The acceptor saw other hellos than the dialer (an id or nonce changed on the way).
        let mut a = Handshake::start(&key(1), true, b"a", b"b").unwrap();
        let mut b = Handshake::start(&key(1), false, b"a", b"B").unwrap();
        let f = a.next_frame().unwrap().unwrap();
        assert_eq!(b.read(&f[PREFIX..]), Err(SecureError::Handshake));
        // Out of turn: the acceptor does not speak first; the dialer does not read first.
        let mut b = Handshake::start(&key(1), false, b"a", b"b").unwrap();
        assert_eq!(b.next_frame().unwrap(), None);
        let mut a = Handshake::start(&key(1), true, b"a", b"b").unwrap();
        assert_eq!(a.read(&[0; 48]), Err(SecureError::OutOfTurn));
    }

    #[test]
    fn altered_replayed_reordered_dropped_and_short_records_do_not_open() {
        let fresh = || pair(&key(3), &key(3), b"x", b"y").unwrap();
        let seal3 = |a: &mut Channel| {
            let mut s = Vec::new();
            for m in [&b"one"[..], b"two", b"three"] {
                a.seal(m, &mut s).unwrap();
            }
            records(&s).into_iter().map(<[u8]>::to_vec).collect::<Vec<_>>()
        };
        let mut plain = Vec::new();
        // A flipped bit, anywhere.
        for i in 0..(3 + TAG_LEN) {
            let (mut a, mut b) = fresh();
            let mut r = seal3(&mut a);
            r[0][i] ^= 0x10;
            assert_eq!(b.open(&r[0], &mut plain), Err(SecureError::Record), "bit {i}");
            assert!(plain.is_empty(), "nothing of a failed record is kept");
        }
        // Replayed.
        let (mut a, mut b) = fresh();
        let r = seal3(&mut a);
        b.open(&r[0], &mut plain).unwrap();
        assert_eq!(b.open(&r[0], &mut plain), Err(SecureError::Record));
        // Reordered.
        let (mut a, mut b) = fresh();
        let r = seal3(&mut a);
        assert_eq!(b.open(&r[1], &mut plain), Err(SecureError::Record));
        // One dropped.
        let (mut a, mut b) = fresh();
        let r = seal3(&mut a);
        let mut p2 = Vec::new();
        b.open(&r[0], &mut p2).unwrap();
        assert_eq!(b.open(&r[2], &mut p2), Err(SecureError::Record));
        // Cut short, or too short to hold a tag.
        let (mut a, mut b) = fresh();
        let r = seal3(&mut a);
        assert_eq!(b.open(&r[0][..r[0].len() - 1], &mut p2), Err(SecureError::Record));
        assert_eq!(b.open(&r[0][..TAG_LEN - 1], &mut p2), Err(SecureError::RecordSize(TAG_LEN - 1)));
        // A record of the other direction reflected back.
        let (mut a, _b) = fresh();
        let r = seal3(&mut a);
        assert_eq!(a.open(&r[0], &mut p2), Err(SecureError::Record));
    }
}
