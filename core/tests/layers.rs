//! The core's modules form layers: no module imports, directly or through others, a module
//! that imports it. Read from the sources: every `use crate::…` line outside test modules is an
//! edge from the file's top-level module (a folder counts as one module) to the one it names.
//! Also: no source file of the core or of the simulator grows past [`MAX_LINES`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Longest a source file may be, in lines: past it, a file holds more than one concern.
const MAX_LINES: usize = 1200;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir).expect("read src").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src` belongs to (`lib` for lib.rs).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component").as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// The modules a file's non-test `use crate::` lines name (`use crate::{a::X, b::Y}` names both).
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let body = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut rest = body;
    while let Some(at) = rest.find("use crate::") {
        let stmt = &rest[at + "use crate::".len()..];
        let end = stmt.find(';').unwrap_or(stmt.len());
        let stmt = &stmt[..end];
        if let Some(inner) = stmt.strip_prefix('{') {
            for part in inner.trim_end_matches('}').split(',') {
                if let Some(m) = part.trim().split("::").next().filter(|m| !m.is_empty()) {
                    out.insert(m.to_string());
                }
            }
        } else if let Some(m) = stmt.split("::").next() {
            out.insert(m.trim_end_matches(['{', '}', ' ']).to_string());
        }
        rest = &rest[at + "use crate::".len() + end..];
    }
    out
}

fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let m = module_of(src, &f);
        let text = fs::read_to_string(&f).expect("read");
        let deps = g.entry(m.clone()).or_default();
        deps.extend(imports(&text).into_iter().filter(|d| *d != m));
    }
    g
}

/// A cycle through the graph, if any (depth-first, colouring nodes).
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        n: &str,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(g, d, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys().find_map(|n| visit(g, n, &mut done, &mut Vec::new()))
}

fn crate_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name).join("src")
}

#[test]
fn no_module_of_the_core_imports_one_that_imports_it() {
    let g = graph(&crate_src("core"));
    assert!(g.len() > 10, "read the core's modules: {:?}", g.keys());
    assert!(g["node"].contains("tree"), "edges are read: {:?}", g["node"]);
    assert_eq!(cycle(&g), None, "an import cycle among the core's modules");
}

#[test]
fn the_cycle_finder_finds_a_planted_cycle() {
    let mut g = graph(&crate_src("core"));
    g.entry("wire".into()).or_default().insert("node".into());
    let c = cycle(&g).expect("wire -> node -> ... -> wire");
    assert_eq!(c.first(), c.last());
    assert!(c.contains(&"wire".to_string()) && c.contains(&"node".to_string()), "{c:?}");
}

#[test]
fn imports_are_read_from_grouped_and_nested_use_lines() {
    let text = "use crate::a::X;\npub use crate::{b::Y, c};\nuse crate::d::{e::F, G};\n#[cfg(test)]\nuse crate::z::Q;";
    let got: Vec<_> = imports(text).into_iter().collect();
    assert_eq!(got, ["a", "b", "c", "d"]);
}

#[test]
fn no_source_file_of_the_core_or_the_simulator_is_over_the_limit() {
    for krate in ["core", "driver-sim"] {
        let mut files = Vec::new();
        sources(&crate_src(krate), &mut files);
        for f in files {
            let n = fs::read_to_string(&f).expect("read").lines().count();
            assert!(n <= MAX_LINES, "{} has {n} lines (at most {MAX_LINES})", f.display());
        }
    }
}
