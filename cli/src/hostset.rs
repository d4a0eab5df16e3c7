//! Node sets in the compact syntax of ClusterShell's `nodeset`: `node[01-64,70]`,
//! `127.0.0.[1-3,7]`, `127.0.0.[4-5]:20001`.
//!
//! - [`fold_names`] folds names that share a prefix and a suffix around their last run of digits,
//!   keeping zero padding (`node08`, `node09`, `node10` fold to `node[08-10]`).
//! - [`fold_addrs`] folds socket addresses by their last IPv4 octet; the port is written (as a
//!   `:port` suffix) only where it differs from the most common one. IPv6 addresses are not
//!   folded.
//! - [`expand`] is the inverse: comma-separated patterns, each with any number of bracket
//!   groups (a cartesian product), each group a comma list of numbers and `lo-hi` ranges. A
//!   number or range whose first number has a leading zero is zero-padded to that width.
//!
//! `expand(fold(x))` gives back the set `x` for names free of `[`, `]` and `,`.
//! Bounds: [`expand`] refuses sets of more than [`MAX_EXPAND`] names.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

/// Most names [`expand`] produces.
pub const MAX_EXPAND: usize = 1 << 20;
/// Longest run of digits taken as a number; longer runs are part of the name.
const MAX_DIGITS: usize = 18;

/// A name split around its last run of digits.
struct Item {
    prefix: String,
    /// The number and the text it was written as.
    num: Option<(u64, String)>,
    suffix: String,
}

fn split_name(name: &str) -> Item {
    let b = name.as_bytes();
    let Some(end) = b.iter().rposition(u8::is_ascii_digit).map(|i| i + 1) else {
        return Item { prefix: name.to_owned(), num: None, suffix: String::new() };
    };
    let start = b[..end].iter().rposition(|c| !c.is_ascii_digit()).map_or(0, |i| i + 1);
    let digits = &name[start..end];
    match digits.parse::<u64>() {
        Ok(n) if digits.len() <= MAX_DIGITS => {
            Item { prefix: name[..start].to_owned(), num: Some((n, digits.to_owned())), suffix: name[end..].to_owned() }
        }
        _ => Item { prefix: name.to_owned(), num: None, suffix: String::new() },
    }
}

/// Fold names into the compact syntax (see the module docs). Empty names are skipped;
/// duplicates count once. Groups appear in the order of their first name in `names`.
pub fn fold_names<S: AsRef<str>>(names: &[S]) -> String {
    fold_items(names.iter().map(|n| n.as_ref()).filter(|n| !n.is_empty()).map(split_name))
}

/// The most common port of `addrs` (the smallest among equals); `None` when empty.
pub fn common_port(addrs: &[SocketAddr]) -> Option<u16> {
    let mut count: BTreeMap<u16, usize> = BTreeMap::new();
    for a in addrs {
        *count.entry(a.port()).or_default() += 1;
    }
    let best = count.values().copied().max()?;
    count.into_iter().find(|&(_, c)| c == best).map(|(p, _)| p)
}

/// How one address is written next to others whose common port is `common`: the IP alone when
/// its port is the common one, else `ip:port`.
pub fn addr_label(addr: &SocketAddr, common: Option<u16>) -> String {
    if Some(addr.port()) == common {
        addr.ip().to_string()
    } else {
        addr.to_string()
    }
}

/// Fold addresses (see the module docs). Groups appear in the order of their first address.
pub fn fold_addrs(addrs: &[SocketAddr]) -> String {
    let common = common_port(addrs);
    fold_items(addrs.iter().map(|a| {
        let suffix = if Some(a.port()) == common { String::new() } else { format!(":{}", a.port()) };
        match a {
            SocketAddr::V4(v4) => {
                let o = v4.ip().octets();
                let last = o[3];
                Item {
                    prefix: format!("{}.{}.{}.", o[0], o[1], o[2]),
                    num: Some((last.into(), last.to_string())),
                    suffix,
                }
            }
            SocketAddr::V6(_) => Item { prefix: addr_label(a, common), num: None, suffix: String::new() },
        }
    }))
}

/// The width a number written as `text` is padded to: its length when it has a leading zero.
fn pad_of(text: &str) -> usize {
    if text.len() > 1 && text.starts_with('0') {
        text.len()
    } else {
        0
    }
}

fn fold_items(items: impl Iterator<Item = Item>) -> String {
    // (prefix, suffix) -> numbers as written; atoms by themselves. Order of first appearance.
    let mut order: Vec<(String, String, bool)> = Vec::new();
    let mut groups: BTreeMap<(String, String), Vec<(u64, String)>> = BTreeMap::new();
    let mut atoms: HashSet<String> = HashSet::new();
    for it in items {
        match it.num {
            Some(n) => {
                let key = (it.prefix, it.suffix);
                let g = groups.entry(key.clone()).or_default();
                if g.is_empty() {
                    order.push((key.0, key.1, false));
                }
                g.push(n);
            }
            None => {
                if atoms.insert(it.prefix.clone()) {
                    order.push((it.prefix, String::new(), true));
                }
            }
        }
    }
    let mut parts = Vec::with_capacity(order.len());
    for (prefix, suffix, atom) in order {
        if atom {
            parts.push(prefix);
            continue;
        }
        let Some(nums) = groups.get(&(prefix.clone(), suffix.clone())) else { continue };
        let elems = fold_numbers(nums);
        if elems.len() == 1 && !elems[0].contains('-') {
            parts.push(format!("{prefix}{}{suffix}", elems[0]));
        } else {
            parts.push(format!("{prefix}[{}]{suffix}", elems.join(",")));
        }
    }
    parts.join(",")
}

/// Numbers as written -> bracket elements (`7`, `08-10`), sorted by their first number.
fn fold_numbers(nums: &[(u64, String)]) -> Vec<String> {
    // Classes by padding width: a padded text of width w, or an unpadded one of exactly w
    // characters when such a class exists, prints the same with `{:0w$}`.
    let padded: HashSet<usize> = nums.iter().map(|(_, t)| pad_of(t)).filter(|&w| w > 0).collect();
    let mut classes: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (n, t) in nums {
        let w = match pad_of(t) {
            0 if padded.contains(&t.len()) => t.len(),
            w => w,
        };
        classes.entry(w).or_default().push(*n);
    }
    let mut ranges: Vec<(u64, usize, u64)> = Vec::new();
    for (w, mut ns) in classes {
        ns.sort_unstable();
        ns.dedup();
        let mut i = 0;
        while i < ns.len() {
            let lo = ns[i];
            let mut hi = lo;
            while i + 1 < ns.len() && ns[i + 1] == hi + 1 {
                i += 1;
                hi = ns[i];
            }
            ranges.push((lo, w, hi));
            i += 1;
        }
    }
    ranges.sort_unstable();
    ranges
        .into_iter()
        .map(|(lo, w, hi)| if lo == hi { format!("{lo:0w$}") } else { format!("{lo:0w$}-{hi:0w$}") })
        .collect()
}

/// Expand a node set (see the module docs) into its names, in the order written, each once.
pub fn expand(set: &str) -> Result<Vec<String>, String> {
    expand_at_most(set, MAX_EXPAND)
}

/// [`expand`], refusing sets of more than `max` names (at most [`MAX_EXPAND`]).
pub fn expand_at_most(set: &str, max: usize) -> Result<Vec<String>, String> {
    let max = max.min(MAX_EXPAND);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for part in split_top(set)? {
        if part.is_empty() {
            return Err(format!("empty name in {set:?}"));
        }
        for name in expand_one(part, max)? {
            if seen.insert(name.clone()) {
                if out.len() == max {
                    return Err(format!("{set:?} names more than {max} nodes"));
                }
                out.push(name);
            }
        }
    }
    Ok(out)
}

/// Split at the commas outside brackets; brackets must balance and not nest.
fn split_top(set: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = false;
    let mut start = 0;
    for (i, c) in set.char_indices() {
        match c {
            '[' if depth => return Err(format!("nested brackets in {set:?}")),
            '[' => depth = true,
            ']' if !depth => return Err(format!("unbalanced ']' in {set:?}")),
            ']' => depth = false,
            ',' if !depth => {
                parts.push(&set[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth {
        return Err(format!("unclosed '[' in {set:?}"));
    }
    parts.push(&set[start..]);
    Ok(parts)
}

/// One pattern (no top-level comma): the cartesian product of its bracket groups.
fn expand_one(pat: &str, max: usize) -> Result<Vec<String>, String> {
    let Some(open) = pat.find('[') else { return Ok(vec![pat.to_owned()]) };
    let close = pat[open..].find(']').map(|i| open + i).ok_or_else(|| format!("unclosed '[' in {pat:?}"))?;
    let head = &pat[..open];
    let nums = expand_list(&pat[open + 1..close], max)?;
    let tails = expand_one(&pat[close + 1..], max)?;
    if nums.len().saturating_mul(tails.len()) > max {
        return Err(format!("{pat:?} names more than {max} nodes"));
    }
    let mut out = Vec::with_capacity(nums.len() * tails.len());
    for n in &nums {
        for t in &tails {
            out.push(format!("{head}{n}{t}"));
        }
    }
    Ok(out)
}

/// The inside of one bracket group: `1-3,07,10-12`.
fn expand_list(list: &str, max: usize) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for elem in list.split(',') {
        let (lo, hi) = elem.split_once('-').unwrap_or((elem, elem));
        let num = |t: &str| -> Result<u64, String> {
            if t.is_empty() || t.len() > MAX_DIGITS || !t.bytes().all(|c| c.is_ascii_digit()) {
                return Err(format!("{elem:?} is not a number or a range lo-hi"));
            }
            t.parse().map_err(|_| format!("{elem:?} is not a number"))
        };
        let (a, b) = (num(lo)?, num(hi)?);
        if a > b {
            return Err(format!("the range {elem:?} is upside down"));
        }
        if b - a >= max.saturating_sub(out.len()) as u64 {
            return Err(format!("[{list}] names more than {max} nodes"));
        }
        let w = pad_of(lo);
        out.extend((a..=b).map(|n| format!("{n:0w$}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn set(v: Vec<String>) -> Vec<String> {
        let mut v = v;
        v.sort();
        v.dedup();
        v
    }

    /// A small deterministic generator (xorshift64*), enough for property tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn folds_names_with_padding_and_comma_lists() {
        let names: Vec<String> = (1..=64).map(|i| format!("node{i:02}")).chain(["node70".to_owned()]).collect();
        assert_eq!(fold_names(&names), "node[01-64,70]");
        assert_eq!(fold_names(&["node08", "node09", "node10", "node100"]), "node[08-10,100]");
        assert_eq!(fold_names(&["n1", "n2", "n3", "n7"]), "n[1-3,7]");
        assert_eq!(fold_names(&["n1", "n01"]), "n[1,01]");
        assert_eq!(fold_names(&["a5-ib", "a6-ib", "b"]), "a[5-6]-ib,b");
        assert_eq!(fold_names(&["node5"]), "node5");
        assert_eq!(fold_names(&["x", "x", "y"]), "x,y");
    }

    #[test]
    fn folds_addresses_by_last_octet_and_names_odd_ports() {
        let a = |o: [u8; 4], p: u16| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(o), p));
        let mut v: Vec<SocketAddr> = (1..=100).map(|i| a([127, 0, 0, i], 20_000)).collect();
        assert_eq!(fold_addrs(&v), "127.0.0.[1-100]");
        v.truncate(3);
        v.push(a([127, 0, 0, 7], 20_000));
        assert_eq!(fold_addrs(&v), "127.0.0.[1-3,7]");
        v.push(a([127, 0, 0, 9], 20_001));
        v.push(a([127, 0, 1, 0], 20_000));
        assert_eq!(fold_addrs(&v), "127.0.0.[1-3,7],127.0.0.9:20001,127.0.1.0");
        assert_eq!(addr_label(&v[4], common_port(&v)), "127.0.0.9:20001");
        assert_eq!(addr_label(&v[0], common_port(&v)), "127.0.0.1");
        assert_eq!(fold_addrs(&[]), "");
    }

    #[test]
    fn expands_ranges_lists_padding_and_products() {
        assert_eq!(expand("node[01-03,10]").unwrap(), ["node01", "node02", "node03", "node10"]);
        assert_eq!(expand("n[9-11]").unwrap(), ["n9", "n10", "n11"]);
        assert_eq!(expand("r[1-2]n[1-2],x").unwrap(), ["r1n1", "r1n2", "r2n1", "r2n2", "x"]);
        assert_eq!(expand("a,a,b").unwrap(), ["a", "b"]);
        for bad in ["n[", "n]", "n[[1]]", "n[3-1]", "n[a]", "n[1-]", "n[]", "a,,b", "", "n[0-99999999999]"] {
            assert!(expand(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn expand_undoes_fold_for_random_name_sets() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let prefixes = ["node", "n", "rack1-n", "", "x.", "gpu-"];
        let suffixes = ["", "-ib", ".lan", "a2"];
        for _ in 0..500 {
            let k = 1 + r.below(60);
            let names: Vec<String> = (0..k)
                .map(|_| {
                    let p = prefixes[r.below(prefixes.len() as u64) as usize];
                    let s = suffixes[r.below(suffixes.len() as u64) as usize];
                    let w = r.below(5) as usize;
                    let range = if r.below(3) == 0 { 2_000 } else { 40 };
                    let n = r.below(range);
                    format!("{p}{n:0w$}{s}")
                })
                .collect();
            let folded = fold_names(&names);
            let back = expand(&folded).unwrap_or_else(|e| panic!("{folded}: {e}"));
            assert_eq!(set(back), set(names.clone()), "fold gave {folded}");
        }
    }

    #[test]
    fn expand_undoes_fold_for_random_address_sets() {
        let mut r = Rng(42);
        for _ in 0..500 {
            let k = 1 + r.below(300);
            let mut addrs: Vec<SocketAddr> = (0..k)
                .map(|_| {
                    let o = [127, 0, r.below(3) as u8, r.below(256) as u8];
                    let port = if r.below(8) == 0 { 20_001 } else { 20_000 };
                    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(o), port))
                })
                .collect();
            addrs.sort_unstable();
            let common = common_port(&addrs);
            let labels: Vec<String> = addrs.iter().map(|a| addr_label(a, common)).collect();
            let folded = fold_addrs(&addrs);
            let back = expand(&folded).unwrap_or_else(|e| panic!("{folded}: {e}"));
            assert_eq!(set(back), set(labels), "fold gave {folded}");
        }
    }
}
