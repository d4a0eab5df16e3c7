//! Containers whose decoding is bounded before anything is allocated: [`List`] (at most `CAP`
//! entries, [`MAX_LIST`] unless stated) and [`Filler`] (at most [`MAX_FILLER`] bytes, kept as a
//! length). Every list a message carries is one of these, so a lying length from the network
//! is refused, not allocated.

use core::fmt;
use core::ops::Deref;
use serde::{Deserialize, Serialize};

/// Most entries in any list carried by a message; a longer list is a decode error.
pub const MAX_LIST: usize = 1024;

/// A list read from the network: at most `CAP` entries ([`MAX_LIST`] unless stated), checked
/// before allocating.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct List<T, const CAP: usize = MAX_LIST>(pub Vec<T>);

impl<T, const CAP: usize> Deref for List<T, CAP> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T: Serialize, const CAP: usize> Serialize for List<T, CAP> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>, const CAP: usize> Deserialize<'de> for List<T, CAP> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const CAP: usize>(core::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const CAP: usize> serde::de::Visitor<'de> for V<T, CAP> {
            type Value = List<T, CAP>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list of at most {CAP} entries")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<List<T, CAP>, A::Error> {
                let hint = seq.size_hint().unwrap_or(0);
                if hint > CAP {
                    return Err(serde::de::Error::invalid_length(hint, &self));
                }
                // Preallocate little: a lying length must not make us allocate.
                let mut v = Vec::with_capacity(hint.min(16));
                while let Some(x) = seq.next_element()? {
                    if v.len() == CAP {
                        return Err(serde::de::Error::invalid_length(CAP + 1, &self));
                    }
                    v.push(x);
                }
                Ok(List(v))
            }
        }
        d.deserialize_seq(V(core::marker::PhantomData))
    }
}

/// Bytes of no meaning in a [`crate::wire::TreeMsg::Broadcast`], to give its frame a chosen size: the
/// benchmarks measure a relay with frames of the sizes real traffic has, not only the smallest.
/// Only the length is kept: decoding borrows the bytes and copies nothing, so a relayed
/// broadcast allocates nothing whatever its size. Bound: at most [`MAX_FILLER`] bytes (a longer
/// one is refused when decoded and cut when encoded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filler(pub u32);

/// Most bytes of a [`Filler`].
pub const MAX_FILLER: usize = 64 << 10;

impl Serialize for Filler {
    /// As a sequence of zero bytes: postcard writes it exactly as a byte string (its length,
    /// then the bytes), without a buffer of zeros in the binary to borrow them from. Slow per
    /// byte, but a filler is encoded once and relayed as it came.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let n = (self.0 as usize).min(MAX_FILLER);
        let mut seq = s.serialize_seq(Some(n))?;
        for _ in 0..n {
            seq.serialize_element(&0u8)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Filler {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Filler;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "at most {MAX_FILLER} bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Filler, E> {
                if v.len() > MAX_FILLER {
                    return Err(E::invalid_length(v.len(), &self));
                }
                Ok(Filler(v.len() as u32))
            }
        }
        d.deserialize_bytes(V)
    }
}
