//! The host-set parser of the command line (`-w`, `-x`, host files): arbitrary text.
//!
//! Checked: nothing panics; a set expands to at most `MAX` names (asked for), each once; and when the
//! names are plain (no `[`, `]` or `,`, none empty), folding them and expanding the fold gives
//! back the same names (as a set).
#![no_main]

use libfuzzer_sys::fuzz_target;
use plush::hostset::{expand, expand_at_most, fold_names};

/// Names per input at most: large sets are refused early, so that each execution stays fast
/// (the bound logic is the same at any size).
const MAX: usize = 4096;
use std::collections::BTreeSet;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(names) = expand_at_most(text, MAX) else { return };
    assert!(names.len() <= MAX);
    let set: BTreeSet<&String> = names.iter().collect();
    assert_eq!(set.len(), names.len(), "a name appears twice");
    if names.iter().any(|n| n.is_empty() || n.contains(['[', ']', ','])) {
        return;
    }
    let folded = fold_names(&names);
    let again = expand(&folded).unwrap_or_else(|e| panic!("the fold {folded:?} of {names:?} does not parse: {e}"));
    let again: BTreeSet<&String> = again.iter().collect();
    assert_eq!(again, set, "fold {folded:?} changed the set");
});
