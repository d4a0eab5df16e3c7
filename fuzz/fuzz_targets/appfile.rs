//! Application files (`plush apply`): arbitrary text through the parser and validator.
//!
//! Checked: nothing panics; an error names a line of the file (1 to one past the last line);
//! an accepted file has 1 to `MAX_PHASES` phases with distinct names, a command in each,
//! barrier thresholds from 0 to 1 with positive timeouts, and exactly one way of naming hosts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plush::appfile::{parse_at_most, MAX_PHASES};
use std::collections::BTreeSet;

/// Names a host set in the file may expand to: small, so that each execution stays fast (the
/// bound logic is the same at any size).
const MAX_HOSTS: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_at_most(text, MAX_HOSTS) {
        Err(e) => {
            let lines = text.lines().count().max(1);
            assert!((1..=lines + 1).contains(&e.line), "line {} of a {lines}-line file: {e}", e.line);
            assert!(!e.message.is_empty());
        }
        Ok(app) => {
            assert!(!app.phases.is_empty() && app.phases.len() <= MAX_PHASES);
            let names: BTreeSet<&str> = app.phases.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names.len(), app.phases.len(), "two phases share a name");
            for p in &app.phases {
                assert!(!p.argv.is_empty() && !p.argv[0].is_empty(), "phase {} has no command", p.name);
                if let Some(b) = &p.barrier {
                    assert!((0.0..=1.0).contains(&b.threshold), "threshold {}", b.threshold);
                    assert!(b.timeout_s > 0.0 && b.timeout_s.is_finite());
                }
                if let Some(t) = p.timeout_s {
                    assert!(t > 0.0 && t.is_finite());
                }
            }
            let h = &app.hosts;
            let ways =
                usize::from(h.local.is_some()) + usize::from(!h.sets.is_empty()) + usize::from(h.hostfile.is_some());
            assert!(ways <= 1, "hosts named {ways} ways");
        }
    }
});
