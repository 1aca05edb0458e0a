//! House rules for the source tree, checked by reading it (as
//! rust-analyzer's tidy test does): the layers import downwards only and
//! no files import each other in a cycle, no file under `src/` is longer
//! than 700 lines, `unsafe` appears only in `src/sys`, every source file
//! opens with a `//!` comment saying what it holds, and nothing in the
//! repository points at files outside it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, relative to the repository root.
fn rust_files(dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root().join(dir)];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(
                    p.strip_prefix(root())
                        .expect("under the root")
                        .to_path_buf(),
                );
            }
        }
    }
    out.sort();
    out
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(root().join(p)).expect("readable source")
}

/// The text with comments and string literals blanked out (enough for
/// these checks: no raw strings with quotes in them are needed).
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'"' {
            out.push('"');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if b.get(i) == Some(&b'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            out.push('"');
            i += 1;
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            // A char literal like '"' or '{'.
            out.push_str("' '");
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The module path of each file under `src/` (`src/a/b.rs` and
/// `src/a/b/mod.rs` are `a::b`), honouring `#[path]` attributes.
fn module_paths(files: &[PathBuf]) -> BTreeMap<Vec<String>, PathBuf> {
    let mut map = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix("src").expect("under src");
        let mut parts: Vec<String> = rel
            .iter()
            .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
            parts.pop();
        }
        if parts == ["main"] {
            continue;
        }
        map.insert(parts, f.clone());
    }
    // `#[path = "x.rs"] mod name;` files sit where the attribute says.
    for f in files {
        let text = read(f);
        let lines: Vec<&str> = text.lines().collect();
        for (n, l) in lines.iter().enumerate() {
            let Some(rest) = l.trim().strip_prefix("#[path = \"") else {
                continue;
            };
            let target = rest.trim_end_matches("\"]");
            let Some(name) = lines[n + 1..]
                .iter()
                .find_map(|m| m.trim().strip_prefix("mod "))
                .map(|m| m.trim_end_matches(';').to_string())
            else {
                continue;
            };
            let owner = map
                .iter()
                .find(|(_, p)| *p == f)
                .map(|(m, _)| m.clone())
                .expect("owner module");
            let file = f.parent().expect("dir").join(target);
            map.retain(|_, p| *p != file);
            let mut m = owner;
            m.push(name);
            map.insert(m, file);
        }
    }
    map
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into full paths.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(p).into_iter().map(move |e| format!("{prefix}{e}")))
        .collect()
}

/// The inline modules (`mod name { ... }`) of `code`: name and the byte
/// range of their body.
fn inline_modules(code: &str) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let b = code.as_bytes();
    let mut from = 0;
    while let Some(i) = code[from..].find("mod ") {
        let at = from + i;
        from = at + 4;
        if at > 0 && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_') {
            continue;
        }
        let rest = &code[at + 4..];
        let name_len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let after = rest[name_len..].trim_start();
        if !after.starts_with('{') {
            continue;
        }
        let open = at + 4 + name_len + (rest[name_len..].len() - after.len());
        let mut depth = 0;
        let mut close = code.len();
        for (k, c) in code[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = open + k;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push((rest[..name_len].to_string(), open, close));
    }
    out
}

/// The files `file` (module `module`) imports from, by `use` items and by
/// paths written inline.
fn imports(
    file: &Path,
    module: &[String],
    modules: &BTreeMap<Vec<String>, PathBuf>,
) -> BTreeSet<PathBuf> {
    let code = code_only(&read(file));
    let inline = inline_modules(&code);
    // Each path with the byte offset it was written at.
    let mut paths: Vec<(usize, String)> = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("use ") {
        let at = from + i;
        from = at + 4;
        let before = code[..at].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = code[from..].find(';').map_or(code.len(), |e| from + e);
        paths.extend(expand(&code[from..end]).into_iter().map(|p| (at, p)));
    }
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            let before = code[..at].chars().last();
            let tail = &code[at..];
            let len = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                paths.push((at, tail[..len].to_string()));
            }
        }
    }
    let mut out = BTreeSet::new();
    for (at, p) in paths {
        // Inside `mod tests { ... }`, `super` is the file's own module.
        let mut here = module.to_vec();
        here.extend(
            inline
                .iter()
                .filter(|(_, open, close)| *open < at && at < *close)
                .map(|(name, _, _)| name.clone()),
        );
        let segs: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
        let mut base: Vec<String> = match segs.first() {
            Some(&"crate") => Vec::new(),
            Some(&"super") => {
                let mut m = here.clone();
                m.pop();
                m
            }
            Some(&"self") => here.clone(),
            _ => continue,
        };
        let mut rest = &segs[1..];
        while rest.first() == Some(&"super") {
            base.pop();
            rest = &rest[1..];
        }
        // The longest prefix of the path that is a module is the file.
        let mut best = None;
        let mut m = Vec::new();
        for s in base.iter().map(String::as_str).chain(rest.iter().copied()) {
            m.push(s.to_string());
            if let Some(f) = modules.get(&m) {
                best = Some(f.clone());
            } else if m.len() > base.len() {
                break;
            }
        }
        if m.is_empty() || base.is_empty() && best.is_none() {
            best = best.or_else(|| modules.get(&Vec::new()).cloned());
        }
        if let Some(f) = best {
            if f != file {
                out.insert(f);
            }
        }
    }
    out
}

/// The layer of a file: a file may import only from its own layer or one
/// below. `config` and `sys` are shared by all; `error.rs` gathers every
/// layer's errors for the CLI, so it sits at the top.
fn layer(file: &Path) -> u8 {
    let s = file.to_string_lossy();
    if s.starts_with("src/cli/") || s == "src/error.rs" {
        4
    } else if s.starts_with("src/runtime/") {
        3
    } else if s.starts_with("src/transport/") {
        2
    } else if s.starts_with("src/message/") {
        1
    } else {
        0
    }
}

#[test]
fn layers_import_downwards_and_files_form_no_cycle() {
    let files = rust_files("src");
    let modules = module_paths(&files);
    let mut graph: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (module, file) in &modules {
        if file.ends_with("lib.rs") {
            continue;
        }
        let deps = imports(file, module, &modules);
        for d in &deps {
            if d.ends_with("lib.rs") {
                continue;
            }
            if layer(d) > layer(file) {
                problems.push(format!(
                    "{} imports {} (upwards)",
                    file.display(),
                    d.display()
                ));
            }
            let ds = d.to_string_lossy();
            let fs = file.to_string_lossy();
            let shared = ds.starts_with("src/config/") || ds.starts_with("src/sys/");
            if fs.starts_with("src/message/") && !ds.starts_with("src/message/") && !shared {
                problems.push(format!("{} imports {}: message is a leaf", fs, ds));
            }
            if (fs.starts_with("src/config/") || fs.starts_with("src/sys/")) && !shared {
                problems.push(format!(
                    "{} imports {}: config and sys are shared leaves",
                    fs, ds
                ));
            }
        }
        graph.insert(file.clone(), deps);
    }
    // A cycle is a file that reaches itself.
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(PathBuf, Vec<PathBuf>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((f, path)) = stack.pop() {
            for d in graph.get(&f).into_iter().flatten() {
                if d == start {
                    let names: Vec<String> = path.iter().map(|p| p.display().to_string()).collect();
                    problems.push(format!(
                        "import cycle: {} -> {}",
                        names.join(" -> "),
                        start.display()
                    ));
                } else if seen.insert(d.clone()) {
                    let mut p = path.clone();
                    p.push(d.clone());
                    stack.push((d.clone(), p));
                }
            }
        }
    }
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The check sees what it should: the supervisor imports the claude
    // protocol, and nothing below the runtime imports the runtime.
    let sup = &graph[Path::new("src/runtime/supervisor/tasks.rs")];
    assert!(sup.contains(Path::new("src/runtime/claude.rs")), "{sup:?}");
}

#[test]
fn no_file_under_src_is_longer_than_700_lines() {
    let long: Vec<String> = rust_files("src")
        .into_iter()
        .map(|f| (read(&f).lines().count(), f))
        .filter(|(n, _)| *n > 700)
        .map(|(n, f)| format!("{}: {n} lines", f.display()))
        .collect();
    assert!(long.is_empty(), "{}", long.join("\n"));
}

#[test]
fn unsafe_code_lives_only_in_sys() {
    let mut found = Vec::new();
    for f in rust_files("src") {
        if f.starts_with("src/sys") {
            continue;
        }
        for (n, line) in code_only(&read(&f)).lines().enumerate() {
            if line.contains("unsafe ") || line.contains("unsafe{") {
                found.push(format!("{}:{}", f.display(), n + 1));
            }
        }
    }
    assert!(found.is_empty(), "unsafe outside src/sys: {found:?}");
    let lib = read(Path::new("src/lib.rs"));
    assert!(lib.contains("#![deny(unsafe_code)]"));
}

#[test]
fn every_source_file_says_what_it_holds() {
    let mut bare = Vec::new();
    for dir in ["src", "tests", "examples"] {
        for f in rust_files(dir) {
            if !read(&f).trim_start().starts_with("//!") {
                bare.push(f.display().to_string());
            }
        }
    }
    assert!(bare.is_empty(), "no //! comment at the top: {bare:?}");
}

#[test]
fn nothing_points_outside_the_repository() {
    // Spelled in pieces, so that this file does not match itself.
    let shared = ["..", "/shared"].concat();
    let reference = ["shared", "/reference"].concat();
    let work = ["/", "work/"].concat();
    let needles = [
        shared.as_str(),
        reference.as_str(),
        "DESIGN.md",
        work.as_str(),
    ];
    let mut files: Vec<PathBuf> = ["src", "tests", "examples"]
        .iter()
        .flat_map(|d| rust_files(d))
        .filter(|f| !f.ends_with("tests/tidy.rs"))
        .collect();
    for extra in [
        "README.md",
        "man/mister-smith.1",
        "docs/PERFORMANCE.md",
        "docs/ARCHITECTURE.md",
        ".ci/run",
    ] {
        if root().join(extra).exists() {
            files.push(PathBuf::from(extra));
        }
    }
    let mut hits = Vec::new();
    for f in files {
        for (n, line) in read(&f).lines().enumerate() {
            if needles.iter().any(|x| line.contains(x)) {
                hits.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(hits.is_empty(), "{}", hits.join("\n"));
}

#[test]
fn use_trees_expand_into_paths() {
    assert_eq!(
        expand("crate::a::{b, c::{d, e}}"),
        ["crate::a::b", "crate::a::c::d", "crate::a::c::e"]
    );
    assert_eq!(expand("super::X"), ["super::X"]);
}
