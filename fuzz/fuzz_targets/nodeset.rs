//! Node sets as they arrive in `Results`, `Participants`, `Forget` and barrier messages: two
//! sets decoded from arbitrary bytes, then combined the way the core combines them.
//!
//! Checked: nothing panics; a set that decodes re-encodes, no longer (the decoder only takes
//! sorted, disjoint, not touching runs; postcard also takes over-long varints), and decodes to
//! itself; `remove_all` agrees with
//! `minus`; and on the first nodes of both sets and the node after each, `extend` is the union
//! and `minus` the difference.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plush_core::NodeSet;

/// The first nodes of a set and the node after each: inside and just past its first runs.
fn probes(s: &NodeSet, out: &mut Vec<plush_core::NodeId>) {
    for n in s.iter().take(64) {
        out.push(n);
        out.extend(n.offset(1));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok((a, rest)) = postcard::take_from_bytes::<NodeSet>(data) else { return };
    let bytes = postcard::to_allocvec(&a).expect("a set encodes");
    assert!(bytes.len() <= data.len() - rest.len(), "re-encoding grew the set");
    assert_eq!(postcard::from_bytes::<NodeSet>(&bytes).as_ref(), Ok(&a), "round trip");
    let Ok(b) = postcard::from_bytes::<NodeSet>(rest) else { return };

    let mut union = a.clone();
    union.extend(&b);
    let diff = a.minus(&b);
    let mut removed = a.clone();
    removed.remove_all(&b);
    assert_eq!(diff, removed, "minus and remove_all disagree");
    assert!(union.len() >= a.len().max(b.len()));
    assert!(diff.len() <= a.len());

    let mut ids = Vec::new();
    probes(&a, &mut ids);
    probes(&b, &mut ids);
    for id in ids {
        let (in_a, in_b) = (a.contains(&id), b.contains(&id));
        assert_eq!(union.contains(&id), in_a || in_b, "union at {id}");
        assert_eq!(diff.contains(&id), in_a && !in_b, "difference at {id}");
    }
});
