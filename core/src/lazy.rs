//! [`Lazy`]: state that is empty in a settled node, boxed only while some of it is set. In a
//! simulator of a million nodes every inline byte of a node is a megabyte, and most of a node's
//! repair, election and control bookkeeping is empty most of the time.

use core::ops::{Deref, DerefMut};

/// State with an idle value: what a settled node holds.
pub(crate) trait Idle: Default + 'static {
    /// The idle value, which every empty [`Lazy`] reads as.
    const IDLE: &'static Self;
    /// Whether nothing is set (list capacities aside).
    fn is_idle(&self) -> bool;
}

/// A `T` allocated on its first mutable access and freed by [`Lazy::trim`] once idle again.
/// Reading an empty one sees [`Idle::IDLE`] and allocates nothing. Field by field it reads and
/// writes like a `T` (through `Deref`/`DerefMut`).
#[derive(Debug, Default)]
pub(crate) struct Lazy<T>(Option<Box<T>>);

impl<T: Idle> Lazy<T> {
    /// Free the state if nothing in it is set any more (the node calls this after every input).
    #[inline]
    pub fn trim(&mut self) {
        if self.0.as_ref().is_some_and(|b| b.is_idle()) {
            self.0 = None;
        }
    }

    /// The state, when allocated.
    pub fn get(&self) -> Option<&T> {
        self.0.as_deref()
    }
}

impl<T: Idle> Deref for Lazy<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        self.0.as_deref().unwrap_or(T::IDLE)
    }
}

impl<T: Idle> DerefMut for Lazy<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Default::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct S {
        list: Vec<u32>,
        at: Option<u64>,
    }

    impl Idle for S {
        const IDLE: &'static S = &S { list: Vec::new(), at: None };
        fn is_idle(&self) -> bool {
            self.list.is_empty() && self.at.is_none()
        }
    }

    #[test]
    fn reads_allocate_nothing_writes_do_and_trim_frees_once_idle() {
        let mut l: Lazy<S> = Lazy::default();
        assert!(l.list.is_empty() && l.at.is_none());
        assert!(l.get().is_none(), "a read allocated");
        l.list.push(3);
        l.at = Some(9);
        assert!(l.get().is_some());
        l.trim();
        assert_eq!((l.list.as_slice(), l.at), (&[3][..], Some(9)), "trim dropped set state");
        l.list.clear();
        l.trim();
        assert!(l.get().is_some(), "trim freed state that was still set");
        l.at = None;
        l.trim();
        assert!(l.get().is_none(), "idle state was not freed");
    }
}
