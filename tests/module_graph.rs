//! Keeps the crate's top-level modules acyclic: each `src/<module>` may use only modules that do
//! not, directly or through others, use it back.
//!
//! An import cycle makes every module in it one unit: none can be tested, moved or understood
//! without the others (ARCHITECTURE-NEXT once found eight in one loop). The test reads every
//! file under `src/`, collects the `crate::<module>` paths its code names (in `use` lines, in
//! `crate::{a, b::C}` groups and inline in expressions; comments are ignored, so a doc link is
//! not a dependency), builds the graph between top-level modules and fails naming a cycle.
//! `lib.rs` and `main.rs` are the roots that see everything and are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src/")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The code of a Rust file with comments, string and char literals blanked out (so that
/// `//! see [crate::x]` or `"crate::x"` does not count, and braces in literals do not upset
/// the block matching of [`without_tests`]).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let mut depth = 0usize; // nesting of /* */
    while i < b.len() {
        if depth > 0 {
            if b[i..].starts_with(b"*/") {
                depth -= 1;
                i += 2;
            } else if b[i..].starts_with(b"/*") {
                depth += 1;
                i += 2;
            } else {
                i += 1;
            }
            continue;
        }
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            depth = 1;
            i += 2;
        } else if b[i] == b'\'' && i + 2 < b.len() && b[i + 2] == b'\'' {
            // A char literal ('{', '"'): its character must not open a string or a block.
            i += 3;
        } else if b[i..].starts_with(b"'\\") {
            // An escaped char literal ('\'', '\\', '\u{7f}'): up to its closing quote.
            i += 2;
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
        } else if b[i] == b'r' && (b[i + 1..].starts_with(b"\"") || b[i + 1..].starts_with(b"#")) {
            // A raw string r"..." or r#"..."#; anything else starting with r is an identifier.
            let mut j = i + 1;
            while j < b.len() && b[j] == b'#' {
                j += 1;
            }
            if j < b.len() && b[j] == b'"' && (i == 0 || !is_ident(b[i - 1])) {
                let hashes = j - i - 1;
                let mut close = vec![b'"'];
                close.extend(std::iter::repeat_n(b'#', hashes));
                let mut k = j + 1;
                while k < b.len() && !b[k..].starts_with(&close) {
                    k += 1;
                }
                i = k + close.len();
                out.push(' ');
            } else {
                out.push('r');
                i += 1;
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// `code` without its `#[cfg(test)]` items (the `mod tests { … }` blocks): unit tests may reach
/// up the graph for fixtures (a snapshot built from YAML) without making the code they test
/// depend on it. Files that are test modules as a whole (`tests.rs`) are skipped by [`graph`].
fn without_tests(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // The item ends at the end of its block, or at its `;` if it has none (`mod tests;`).
        let (semi, open) = (after.find(';'), after.find('{'));
        let end = match (semi, open) {
            (Some(s), Some(o)) if s < o => s + 1,
            (_, Some(o)) => {
                let mut depth = 0usize;
                let mut end = after.len();
                for (i, c) in after[o..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = o + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (Some(s), None) => s + 1,
            (None, None) => after.len(),
        };
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The top-level modules named after each `crate::` in `code`: `crate::a::x` gives `a`,
/// `crate::{a::x, b}` gives `a` and `b`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let b = code.as_bytes();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate") {
        let start = from + at;
        from = start + 5;
        if start > 0 && (is_ident(b[start - 1]) || matches!(b[start - 1], b':' | b'$')) {
            continue; // `$crate`, `foo_crate`, `x::crate`
        }
        let rest = code[from..].trim_start();
        let Some(rest) = rest.strip_prefix("::") else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // Names at the group's top level: split on commas outside nested braces.
            let mut level = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => level += 1,
                    '}' if level == 0 => break,
                    '}' => level -= 1,
                    ',' if level == 0 => {
                        push_first(&item, &mut found);
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if level == 0 {
                    item.push(c);
                }
            }
            push_first(&item, &mut found);
        } else {
            push_first(rest, &mut found);
        }
    }
    found
}

/// The first identifier of a path (`a::b::C` gives `a`).
fn push_first(path: &str, out: &mut BTreeSet<String>) {
    let name: String = path
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if !name.is_empty() && name != "self" {
        out.insert(name);
    }
}

/// The top-level module graph of `src/`: module → the modules it uses.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).expect("under src/");
        let first = rel
            .components()
            .next()
            .expect("a path")
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        let test_file = f.file_name().is_some_and(|n| n == "tests.rs");
        if module == "lib" || module == "main" || module == "bin" || test_file {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read a source file");
        let uses = g.entry(module.clone()).or_default();
        for m in crate_paths(&without_tests(&code_only(&text))) {
            if m != module {
                uses.insert(m);
            }
        }
    }
    g
}

/// One cycle in `g`, as the modules along it (first repeated at the end), if there is any.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_string(), Mark::OnPath);
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match marks.get(m).copied().unwrap_or(Mark::New) {
                Mark::OnPath => {
                    let at = path.iter().position(|p| p == m).expect("on the path");
                    let mut cycle = path[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(m, g, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in g.keys() {
        if marks.get(n).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(c) = visit(n, g, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn top_level_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(g.len() > 10, "found only {} modules under src/", g.len());
    // A path through a re-export at the crate root (`crate::Thing`) would hide the module it
    // really reaches; every path must name a module file.
    for (m, uses) in &g {
        for u in uses {
            assert!(
                g.contains_key(u),
                "{m} uses `crate::{u}`, which is no module under src/: name the module that defines it"
            );
        }
    }
    if let Some(cycle) = find_cycle(&g) {
        let edges: Vec<String> = g
            .iter()
            .map(|(m, uses)| {
                format!(
                    "  {m} -> {}",
                    Vec::from_iter(uses.iter().cloned()).join(", ")
                )
            })
            .collect();
        panic!(
            "import cycle between top-level modules: {}\n(a module may use only modules that do not use it back; move the shared item down to where both can reach it)\ngraph:\n{}",
            cycle.join(" -> "),
            edges.join("\n")
        );
    }
}

#[test]
fn the_parser_sees_every_form_of_crate_path() {
    let code = code_only(
        "use crate::a::X;\nuse crate::{b::{self, Y}, c};\nlet v = crate::d::f();\n\
         // crate::e is a comment\nlet s = \"crate::f\"; let r = r#\"crate::g\"#;\n\
         macro_rules! m { () => { $crate::h } }\nuse crate :: i;",
    );
    let found: Vec<String> = crate_paths(&code).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "d", "i"]);
}

#[test]
fn test_items_and_literals_are_not_dependencies() {
    let code = code_only(
        "use crate::a;\nlet c = '{'; let q = '\\''; let l: &'static str = x;\n\
         #[cfg(test)]\nmod tests {\n    use crate::b;\n    fn f() { if x { crate::c::g() } }\n}\n\
         #[cfg(test)]\nmod more;\nuse crate::d;",
    );
    let found: Vec<String> = crate_paths(&without_tests(&code)).into_iter().collect();
    assert_eq!(found, ["a", "d"]);
}

#[test]
fn a_cycle_is_found_and_named() {
    let mut g = BTreeMap::new();
    let edge = |g: &mut BTreeMap<String, BTreeSet<String>>, a: &str, b: &str| {
        g.entry(a.to_string()).or_default().insert(b.to_string());
    };
    edge(&mut g, "a", "b");
    edge(&mut g, "b", "c");
    edge(&mut g, "x", "a");
    assert_eq!(find_cycle(&g), None);
    edge(&mut g, "c", "a");
    assert_eq!(
        find_cycle(&g).expect("a cycle").join(" -> "),
        "a -> b -> c -> a"
    );
}
