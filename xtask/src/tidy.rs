//! `cargo xtask tidy`: checks that ARCHITECTURE.md still tells the truth.
//!
//! - Every workspace crate is named in ARCHITECTURE.md (by its path), and it stays a map (at
//!   most 250 lines).
//! - Every Rust source file opens with a module doc comment (`//!`).
//! - The layer tables of ARCHITECTURE.md hold: a module imports (names a `crate::` or
//!   `super::` path of, groups and names re-exported by the crate root included) only modules
//!   of its own layer or of the layers below it. Test modules (`#[cfg(test)] mod tests`, inline
//!   or in a file of their own) are not checked.
//! - No crate has an import cycle between modules, other than between a module and its own
//!   descendants (a parent and its children are one unit).
//! - The I/O-free crates ([`crate::io_free`]) pull in no runtime, network, HTTP or database
//!   crate.
//!
//! It also prints, per crate, the modules caught in import cycles: the architecture's measure
//! of how knotted a crate is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Most lines ARCHITECTURE.md may have.
const MAP_LINES: usize = 250;

/// One crate's modules: path (`a::b`, `""` for the root) → the source of its file.
struct CrateSource {
    name: String,
    modules: BTreeMap<String, String>,
}

/// Runs every check; fails listing every broken invariant.
pub fn run() -> anyhow::Result<()> {
    let root = crate::manifest_dir().join("..");
    let architecture =
        std::fs::read_to_string(root.join("ARCHITECTURE.md")).context("read ARCHITECTURE.md")?;
    let members = workspace_members(&root)?;
    let mut problems = Vec::new();

    // A map, not a manual: detail lives beside the code and in docs/architecture/.
    let length = architecture.lines().count();
    if length > MAP_LINES {
        problems.push(format!(
            "ARCHITECTURE.md is {length} lines, over {MAP_LINES}: move detail to the module's docs or docs/architecture/"
        ));
    }
    for member in &members {
        if !architecture.contains(&format!("`{member}`")) {
            problems.push(format!("crate `{member}` is missing from ARCHITECTURE.md"));
        }
    }

    let tables = layer_tables(&architecture)?;
    let mut crates = Vec::new();
    for member in &members {
        let dir = root.join(member);
        let name = package_name(&dir)?;
        for file in rust_files(&dir)? {
            let text = std::fs::read_to_string(&file)?;
            if !opens_with_module_doc(&text) {
                let shown = file
                    .strip_prefix(&root)
                    .unwrap_or(&file)
                    .display()
                    .to_string();
                problems.push(format!("{shown}: no module doc comment (`//!`) at the top"));
            }
        }
        crates.push(CrateSource {
            modules: modules(&dir.join("src"))?,
            name,
        });
    }

    println!("| crate | modules | modules in import cycles |");
    println!("| --- | --- | --- |");
    for krate in &crates {
        let graph = imports(&krate.modules);
        let cyclic = cyclic_modules(&graph);
        if !cyclic.is_empty() {
            problems.push(format!(
                "{}: modules in import cycles: {}",
                krate.name,
                shown(&cyclic)
            ));
        }
        println!(
            "| {} | {} | {} |",
            krate.name,
            krate.modules.len(),
            if cyclic.is_empty() {
                "0".to_owned()
            } else {
                format!("{}: {}", cyclic.len(), shown(&cyclic))
            }
        );
        let Some(table) = tables.get(&krate.name) else {
            continue;
        };
        for module in krate.modules.keys() {
            if table.layer_of(module).is_none() {
                problems.push(format!(
                    "{}: module `{module}` is in no layer of ARCHITECTURE.md",
                    krate.name
                ));
            }
        }
        for (from, targets) in &graph {
            let Some((from_layer, from_name)) = table.layer_of(from) else {
                continue;
            };
            // The crate root is the crate's facade (modules and re-exports), not a layer.
            for to in targets.iter().filter(|to| !to.is_empty()) {
                if let Some((to_layer, to_name)) = table.layer_of(to)
                    && to_layer > from_layer
                {
                    problems.push(format!(
                        "{}: `{from}` ({from_name}) imports `{to}` ({to_name}), a layer above it",
                        krate.name
                    ));
                }
            }
        }
    }

    problems.extend(crate::io_free::check()?);

    if problems.is_empty() {
        println!("\ntidy: ARCHITECTURE.md holds");
        return Ok(());
    }
    for problem in &problems {
        eprintln!("tidy: {problem}");
    }
    bail!("{} architecture invariant(s) broken", problems.len())
}

fn shown(modules: &BTreeSet<String>) -> String {
    modules
        .iter()
        .map(|m| format!("`{m}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `members` of the workspace's Cargo.toml.
fn workspace_members(root: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let start = text.find("members = [").context("no workspace members")?;
    let list = &text[start..];
    let end = list.find(']').context("unterminated members")?;
    Ok(list[..end]
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect())
}

fn package_name(dir: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(dir.join("Cargo.toml"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned)
        .with_context(|| format!("{}: no package name", dir.display()))
}

/// Every `.rs` file of a crate: `src/`, `tests/`, `benches/`, `examples/`.
fn rust_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for sub in ["src", "tests", "benches", "examples"] {
        walk(&dir.join(sub), &mut out)?;
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether the first line that is not blank or an inner attribute is a `//!` comment.
fn opens_with_module_doc(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("#!["))
        .is_some_and(|l| l.starts_with("//!"))
}

/// The modules of a crate's `src/`, by module path, with their source.
fn modules(src: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut files = Vec::new();
    walk(src, &mut files)?;
    let mut out = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src)?;
        // A binary's own modules (src/bin/...) are not the library's, and a test module in a
        // file of its own (`#[cfg(test)] mod tests;`) is not checked.
        if relative.starts_with("bin") || relative.file_stem().is_some_and(|s| s == "tests") {
            continue;
        }
        let mut parts: Vec<String> = relative
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if matches!(
            parts.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            parts.pop();
        }
        let path = parts.join("::");
        let text = std::fs::read_to_string(&file)?;
        out.entry(path)
            .and_modify(|existing: &mut String| existing.push_str(&text))
            .or_insert(text);
    }
    Ok(out)
}

/// The code of a file without comments and without its test module.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if trimmed == "#[cfg(test)]"
            && let Some(next) = lines.peek().map(|next| next.trim())
            && next.starts_with("mod tests")
        {
            if next == "mod tests;" {
                // Its own file is a module of its own, skipped as a test module; the rest of
                // this file is code.
                lines.next();
                continue;
            }
            // An inline test module ends the file's code.
            break;
        }
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Module → the other modules of the crate it names (`crate::` and `super::` paths).
fn imports(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let known: BTreeSet<&str> = modules.keys().map(String::as_str).collect();
    let reexported = modules
        .get("")
        .map(|root| reexports(root))
        .unwrap_or_default();
    let mut graph = BTreeMap::new();
    for (module, text) in modules {
        let code = code(text);
        let mut targets = BTreeSet::new();
        for (prefix, base) in [("crate::", String::new()), ("super::", parent(module))] {
            let mut rest = code.as_str();
            while let Some(i) = rest.find(prefix) {
                let boundary = rest[..i]
                    .chars()
                    .next_back()
                    .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
                let after = &rest[i + prefix.len()..];
                rest = after;
                if !boundary {
                    continue;
                }
                for path in use_paths(after) {
                    let full = if base.is_empty() {
                        path
                    } else {
                        format!("{base}::{path}")
                    };
                    // A name the crate root re-exports stands for the module it comes from.
                    let first = full.split("::").next().unwrap_or_default();
                    let full = match reexported.get(first) {
                        Some(source) if longest_module(&known, &full) == Some("") => {
                            format!("{source}{}", &full[first.len()..])
                        }
                        _ => full,
                    };
                    if let Some(target) = longest_module(&known, &full)
                        && target != module
                    {
                        targets.insert(target.to_owned());
                    }
                }
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

/// The names a crate root re-exports (`pub use a::b::X;`) → the paths they stand for.
fn reexports(root: &str) -> BTreeMap<String, String> {
    let code = code(root);
    let mut out = BTreeMap::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("pub use ") {
        rest = &rest[i + "pub use ".len()..];
        let tree = rest.strip_prefix("crate::").unwrap_or(rest);
        for path in use_paths(tree) {
            if let Some((_, name)) = path.rsplit_once("::") {
                out.insert(name.to_owned(), path.clone());
            }
        }
    }
    out
}

fn parent(module: &str) -> String {
    module
        .rsplit_once("::")
        .map(|(p, _)| p.to_owned())
        .unwrap_or_default()
}

/// The paths a use-tree starting at `text` names: `a::b::{c, d::e}` → `a::b::c`, `a::b::d::e`.
fn use_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    expand(text, String::new(), &mut out);
    out
}

/// Expands one use-tree; returns how many bytes it used.
fn expand(text: &str, prefix: String, out: &mut Vec<String>) -> usize {
    let ident_len = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    let ident = &text[..ident_len];
    let mut path = prefix;
    if !ident.is_empty() && ident != "self" {
        if !path.is_empty() {
            path.push_str("::");
        }
        path.push_str(ident);
    }
    let rest = &text[ident_len..];
    if ident.is_empty()
        && let Some(group) = rest.strip_prefix('{')
    {
        // `crate::{a::X, b::Y}`: a group right after the prefix.
        return expand_group(group, path, out);
    }
    if let Some(after) = rest.strip_prefix("::") {
        if let Some(group) = after.strip_prefix('{') {
            return ident_len + 2 + expand_group(group, path, out);
        }
        return ident_len + 2 + expand(after, path, out);
    }
    if !path.is_empty() {
        out.push(path);
    }
    ident_len
}

/// Expands the trees of a group (`group` starts after its `{`), separated by commas, up to the
/// matching brace; returns how many bytes the group used, braces included.
fn expand_group(group: &str, path: String, out: &mut Vec<String>) -> usize {
    let mut inner = group;
    loop {
        inner = inner.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if inner.is_empty() || inner.starts_with('}') {
            break;
        }
        let n = expand(inner, path.clone(), out);
        if n == 0 {
            break;
        }
        inner = &inner[n..];
    }
    (group.len() - inner.len() + 2).min(group.len() + 1)
}

/// The module `path` is in: the longest known prefix, else the crate root.
fn longest_module<'a>(known: &BTreeSet<&'a str>, path: &str) -> Option<&'a str> {
    let mut candidate = path;
    loop {
        if let Some(found) = known.get(candidate) {
            return Some(found);
        }
        match candidate.rsplit_once("::") {
            Some((parent, _)) => candidate = parent,
            None => return known.get("").copied(),
        }
    }
}

/// Whether one module is the other or an ancestor of it.
fn related(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        outer.is_empty() || inner == outer || inner.starts_with(&format!("{outer}::"))
    };
    within(a, b) || within(b, a)
}

/// Modules in a strongly connected component of more than one module, ignoring edges between a
/// module and its ancestors (a parent naming its child and back is one unit).
fn cyclic_modules(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    let nodes: Vec<&String> = graph.keys().collect();
    let index: BTreeMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let edges: Vec<Vec<usize>> = nodes
        .iter()
        .map(|from| {
            graph[*from]
                .iter()
                .filter(|to| !related(from, to))
                .filter_map(|to| index.get(to.as_str()).copied())
                .collect()
        })
        .collect();
    // Tarjan's algorithm, iteratively.
    let n = nodes.len();
    let (mut order, mut low, mut on_stack) = (vec![usize::MAX; n], vec![0; n], vec![false; n]);
    let (mut stack, mut counter, mut out) = (Vec::new(), 0, BTreeSet::new());
    for start in 0..n {
        if order[start] != usize::MAX {
            continue;
        }
        let mut work = vec![(start, 0usize)];
        while let Some(&mut (v, ref mut next)) = work.last_mut() {
            if *next == 0 && order[v] == usize::MAX {
                order[v] = counter;
                low[v] = counter;
                counter += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = edges[v].get(*next) {
                *next += 1;
                if order[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(order[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(u, _)) = work.last() {
                low[u] = low[u].min(low[v]);
            }
            if low[v] == order[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    out.extend(component.into_iter().map(|i| nodes[i].clone()));
                }
            }
        }
    }
    out
}

/// One crate's layers, lowest first: (name, module prefixes).
struct LayerTable {
    layers: Vec<(String, Vec<String>)>,
}

impl LayerTable {
    /// The layer (index, name) of the most specific prefix that covers `module`.
    fn layer_of(&self, module: &str) -> Option<(usize, &str)> {
        let mut best: Option<(usize, usize, &str)> = None;
        for (i, (name, prefixes)) in self.layers.iter().enumerate() {
            for prefix in prefixes {
                let covers = prefix == module
                    || (prefix.is_empty() && module.is_empty())
                    || module.starts_with(&format!("{prefix}::"));
                if covers && best.is_none_or(|(len, _, _)| prefix.len() >= len) {
                    best = Some((prefix.len(), i, name));
                }
            }
        }
        best.map(|(_, i, name)| (i, name))
    }
}

/// The tables of ARCHITECTURE.md with the header `| crate | layer | modules |`: one row per
/// layer, lowest first; modules in backticks (`crate root` for the root module).
fn layer_tables(architecture: &str) -> anyhow::Result<BTreeMap<String, LayerTable>> {
    let mut tables: BTreeMap<String, LayerTable> = BTreeMap::new();
    let mut in_table = false;
    for line in architecture.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells == ["crate", "layer", "modules"] {
            in_table = true;
            continue;
        }
        if !in_table || !line.trim_start().starts_with('|') {
            in_table = false;
            continue;
        }
        if cells.len() != 3 || cells[0].starts_with("---") {
            continue;
        }
        let krate = cells[0].trim_matches('`').to_owned();
        let layer = cells[1].to_owned();
        let modules: Vec<String> = cells[2]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|m| {
                if m == "crate root" {
                    String::new()
                } else {
                    m.to_owned()
                }
            })
            .collect();
        if modules.is_empty() {
            bail!("ARCHITECTURE.md: layer `{layer}` of {krate} names no module");
        }
        tables
            .entry(krate)
            .or_insert(LayerTable { layers: Vec::new() })
            .layers
            .push((layer, modules));
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_trees_expand_into_paths() {
        assert_eq!(use_paths("a::b::C;"), ["a::b::C"]);
        assert_eq!(
            use_paths("drift::{self, store::X, judge::{A, B}};"),
            [
                "drift",
                "drift::store::X",
                "drift::judge::A",
                "drift::judge::B"
            ]
        );
        assert_eq!(use_paths("deploy::step(&cx, now)"), ["deploy::step"]);
        assert_eq!(
            use_paths("{a::X, b::{c, d::Y}};"),
            ["a::X", "b::c", "b::d::Y"]
        );
    }

    #[test]
    fn groups_after_the_prefix_reexports_and_test_files_are_followed() {
        let modules: BTreeMap<String, String> = [
            (
                "".into(),
                "//! root\nmod a;\nmod b;\nmod c;\npub use c::Facade;\n".into(),
            ),
            (
                "a".into(),
                "//! a\n#[cfg(test)]\nmod tests;\nuse crate::{b::X, Facade};\n".into(),
            ),
            ("b".into(), "//! b\n".into()),
            ("c".into(), "//! c\n".into()),
        ]
        .into();
        let graph = imports(&modules);
        assert_eq!(graph["a"], BTreeSet::from(["b".to_owned(), "c".to_owned()]));
    }

    #[test]
    fn imports_skip_comments_tests_and_themselves() {
        let modules: BTreeMap<String, String> = [
            ("".into(), "//! root\nmod a;\nmod b;\n".into()),
            (
                "a".into(),
                "//! a\nuse crate::b::X;\n// crate::c::Y\n#[cfg(test)]\nmod tests { use crate::c; }\n"
                    .into(),
            ),
            ("b".into(), "//! b\nfn f() { super::a::g(); crate::b::h(); }\n".into()),
            ("c".into(), "//! c\n".into()),
        ]
        .into();
        let graph = imports(&modules);
        assert_eq!(graph["a"], BTreeSet::from(["b".to_owned()]));
        assert_eq!(graph["b"], BTreeSet::from(["a".to_owned()]));
        assert_eq!(
            cyclic_modules(&graph),
            BTreeSet::from(["a".to_owned(), "b".to_owned()])
        );
    }

    #[test]
    fn a_parent_and_its_child_are_no_cycle() {
        let graph: BTreeMap<String, BTreeSet<String>> = [
            ("d".to_owned(), BTreeSet::from(["d::p".to_owned()])),
            ("d::p".to_owned(), BTreeSet::from(["d".to_owned()])),
        ]
        .into();
        assert!(cyclic_modules(&graph).is_empty());
    }

    #[test]
    fn the_most_specific_layer_wins_and_tables_parse() {
        let tables = layer_tables(
            "| crate | layer | modules |\n| --- | --- | --- |\n| x | stores | `d::store` |\n| x | services | `d`, `crate root` |\n",
        )
        .expect("parse");
        let table = &tables["x"];
        assert_eq!(table.layer_of("d::store"), Some((0, "stores")));
        assert_eq!(table.layer_of("d::other"), Some((1, "services")));
        assert_eq!(table.layer_of(""), Some((1, "services")));
        assert_eq!(table.layer_of("e"), None);
    }

    #[test]
    fn module_docs_are_found_after_inner_attributes() {
        assert!(opens_with_module_doc("#![allow(x)]\n\n//! Doc.\n"));
        assert!(!opens_with_module_doc("/// Item doc.\nfn f() {}\n"));
    }
}
