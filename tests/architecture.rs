//! The house rules, read from the code's own imports (`crate::` paths in `src/`, tests left out):
//! no two files import each other, directly or around a circle; no folder imports one that
//! imports it; and the few "nevers" of docs/DESIGN.md hold. A change that breaks one fails here
//! with the path that does it, before a reviewer has to notice.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// A module by its path under `src/`: `xmpp/router` for `src/xmpp/router.rs`, `store` for
/// `src/store/mod.rs`.
type Module = String;

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> Module {
    let relative = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("/")
}

/// The code of a file without comments and without its unit tests.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(tests) => &text[..tests],
        None => text,
    };
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a `use crate::…;` names, braces expanded: `a::{b, c::d}` gives `a::b` and `a::c::d`.
fn expand(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in tree.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&tree[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&tree[start..]);
    for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        match part.find('{') {
            Some(open) => {
                let mut inner = prefix.to_vec();
                inner.extend(segments(part[..open].trim_end_matches("::")));
                expand(&part[open + 1..part.len() - 1], &inner, out);
            }
            None => {
                let mut path = prefix.to_vec();
                path.extend(segments(part.split(" as ").next().unwrap_or(part)));
                out.push(path);
            }
        }
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "self")
        .map(str::to_owned)
        .collect()
}

/// The paths into the crate that `code` names, in `use` statements and inline.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use crate::") {
        let after = &rest[at + "use crate::".len()..];
        let end = after.find(';').expect("a use ends with ;");
        expand(&after[..end], &[], &mut paths);
        rest = &after[end..];
    }
    let without_uses: String = code
        .split(';')
        .filter(|statement| !statement.trim_start().starts_with("use crate::"))
        .collect::<Vec<_>>()
        .join(";");
    for (at, _) in without_uses.match_indices("crate::") {
        let before = without_uses[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let path: String = without_uses[at + "crate::".len()..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        paths.push(segments(&path));
    }
    paths
}

/// Which module of `modules` a path lands in: the longest prefix that is one.
fn target(path: &[String], modules: &BTreeSet<Module>) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("/"))
        .find(|m| modules.contains(m))
}

/// File-level imports: module → the modules it names.
fn imports() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let from = module_of(&src, file);
        if from == "lib" || from == "main" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(file).expect("readable"));
        let targets: BTreeSet<Module> = crate_paths(&code)
            .iter()
            .filter_map(|path| target(path, &modules))
            .filter(|to| *to != from && to != "lib")
            .collect();
        graph.insert(from, targets);
    }
    graph
}

/// The same imports between top-level folders (and files): `dialects/sum7` counts as `dialects`.
fn folder_imports(
    files: &BTreeMap<Module, BTreeSet<Module>>,
) -> BTreeMap<Module, BTreeSet<Module>> {
    let top = |m: &str| m.split('/').next().unwrap_or(m).to_owned();
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (from, targets) in files {
        let entry = graph.entry(top(from)).or_default();
        entry.extend(targets.iter().map(|t| top(t)).filter(|t| *t != top(from)));
    }
    graph
}

/// A circle in `graph`, if it has one, as the modules around it.
fn circle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        node: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        done: &mut BTreeSet<Module>,
        path: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(at) = path.iter().position(|m| m == node) {
            let mut found = path[at..].to_vec();
            found.push(node.clone());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, done, path) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

#[test]
fn no_file_imports_one_that_imports_it_around_a_circle() {
    let graph = imports();
    assert!(graph.len() > 40, "the walk found the files: {graph:?}");
    if let Some(found) = circle(&graph) {
        panic!("files import each other: {}", found.join(" → "));
    }
}

#[test]
fn no_folder_imports_one_that_imports_it() {
    let graph = folder_imports(&imports());
    if let Some(found) = circle(&graph) {
        panic!("folders import each other: {}", found.join(" → "));
    }
}

/// The folders that carry pushes and requests: what knows no transport imports none of them.
const TRANSPORT: &[&str] = &[
    "xmpp",
    "http",
    "dialects",
    "push",
    "cluster",
    "commands",
    "app_server",
];

#[test]
fn each_folder_keeps_to_its_side() {
    let graph = folder_imports(&imports());
    let never: [(&str, Vec<&str>); 10] = [
        // What knows no transport.
        ("token", TRANSPORT.to_vec()),
        ("store", TRANSPORT.to_vec()),
        ("trace", TRANSPORT.to_vec()),
        ("config", [TRANSPORT, &["store"]].concat()),
        ("message", [TRANSPORT, &["store"]].concat()),
        // The link knows no role.
        ("xmpp", [TRANSPORT, &["registrar", "store"]].concat()),
        // The doors reach XMPP only through push's seam.
        (
            "http",
            vec!["xmpp", "dialects", "registrar", "commands", "app_server"],
        ),
        ("push", vec!["xmpp", "dialects", "http", "cluster"]),
        // The cluster knows the seam, not a dialect.
        ("cluster", vec!["xmpp", "dialects", "http"]),
        (
            "dialects",
            vec!["http", "cluster", "commands", "app_server"],
        ),
    ];
    let mut broken = Vec::new();
    for (folder, forbidden) in never {
        let imports = graph.get(folder).cloned().unwrap_or_default();
        for bad in forbidden.iter().filter(|bad| imports.contains(**bad)) {
            broken.push(format!("{folder} imports {bad}"));
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

#[test]
fn no_dialect_knows_another() {
    let graph = imports();
    for (from, targets) in &graph {
        let Some(dialect) = from
            .strip_prefix("dialects/")
            .and_then(|d| d.split('/').next())
        else {
            continue;
        };
        for to in targets {
            if let Some(other) = to
                .strip_prefix("dialects/")
                .and_then(|d| d.split('/').next())
            {
                assert_eq!(dialect, other, "{from} imports {to}");
            }
        }
    }
}

#[test]
fn the_reader_sees_what_a_use_names() {
    let mut paths = Vec::new();
    expand("a::{self, b}, c::{d::{e, f as g}}", &[], &mut paths);
    let paths: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(paths, ["a", "a::b", "c::d::e", "c::d::f"]);
    let inline = crate_paths("let x = crate::store::open(); let y = notcrate::z;");
    assert_eq!(inline, [vec!["store".to_owned(), "open".to_owned()]]);
}

/// The tree that docs/DESIGN.md leads with.
fn design_tree() -> String {
    let design =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/DESIGN.md"))
            .expect("docs/DESIGN.md");
    let house = design
        .find("## The house")
        .expect("a section \"The house\"");
    let start = design[house..].find("```\n").expect("a tree") + house + 4;
    let end = design[start..].find("```").expect("the tree ends") + start;
    design[start..end].to_owned()
}

#[test]
fn the_design_tree_matches_src() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tree = design_tree();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut missing = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let name = relative
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        let shown = match relative.parent().filter(|p| !p.as_os_str().is_empty()) {
            // A folder's own file is the folder's line.
            Some(folder) if name == "mod.rs" => {
                let folder = folder.file_name().expect("a folder").to_string_lossy();
                tree.contains(&format!("{folder}/"))
            }
            _ => tree.contains(&name),
        };
        if !shown {
            missing.push(relative.display().to_string());
        }
    }
    assert!(missing.is_empty(), "not in DESIGN.md's tree: {missing:?}");
    let named: Vec<&str> = tree
        .split(|c: char| c.is_whitespace() || "(),".contains(c))
        .filter(|word| word.ends_with(".rs"))
        .collect();
    let names: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let stale: Vec<&&str> = named.iter().filter(|n| !names.contains(**n)).collect();
    assert!(
        stale.is_empty(),
        "DESIGN.md's tree names files that are gone: {stale:?}"
    );
}
