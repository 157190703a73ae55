//! The layout is a rule, checked here: imports inside this crate run one way
//! (capabilities → AWS helpers → core), no two modules or folders import each
//! other even indirectly, and no hand-written Rust file of the workspace grows
//! past the size where it should be split along its seams.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer: a module may import its own layer or lower ones.
const LAYERS: [(&str, u8); 18] = [
    ("background", 0),
    ("bounded", 0),
    ("config", 0),
    ("clock", 0),
    ("observability", 0),
    ("outbound", 0),
    ("problem", 0),
    ("startup", 0),
    ("aws", 1),
    ("auth", 2),
    ("guard", 2),
    ("ops", 2),
    ("fleet", 2),
    ("jobs", 2),
    ("inference", 2),
    ("memory", 2),
    ("mcp", 2),
    ("http", 2),
];

const MAX_LINES: usize = 800;

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path.is_dir() {
            if !matches!(
                name,
                "target" | "node_modules" | ".git" | ".venv" | ".local"
            ) {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// `a/b.rs` and `a/b/mod.rs` → `a::b`; `lib.rs` → ``.
fn module_of(file: &Path) -> String {
    let relative = file.strip_prefix(source_dir()).unwrap();
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// Every `crate::x::y…` path in the code (comments excluded), resolved to the
/// longest known module prefix.
fn imports(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let tail = &rest[at + "crate::".len()..];
            let path: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let mut best = String::new();
            let mut prefix = String::new();
            for segment in path.split("::").filter(|s| !s.is_empty()) {
                prefix = if prefix.is_empty() {
                    segment.to_owned()
                } else {
                    format!("{prefix}::{segment}")
                };
                if modules.contains(&prefix) {
                    best = prefix.clone();
                }
            }
            if !best.is_empty() {
                found.insert(best);
            }
            rest = &tail[path.len().min(tail.len())..];
        }
    }
    found
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or_default()
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&source_dir(), &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    files
        .iter()
        .filter(|file| module_of(file) != "layering" && !module_of(file).is_empty())
        .map(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            assert!(
                !text.contains("crate::{"),
                "{}: write one `use crate::…` per module, so this check sees it",
                file.display()
            );
            let own = module_of(file);
            let mut uses = imports(&text, &modules);
            // A module's own children and itself are not dependencies.
            uses.retain(|used| used != &own && !used.starts_with(&format!("{own}::")));
            (own, uses)
        })
        .collect()
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, edges, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn every_top_level_module_has_a_layer() {
    for module in graph().keys() {
        assert!(
            LAYERS.iter().any(|(name, _)| *name == top(module)),
            "{module} has no layer in shared/src/layering.rs: place it"
        );
    }
}

#[test]
fn imports_run_down_the_layers() {
    let layer = |module: &str| {
        LAYERS
            .iter()
            .find(|(name, _)| *name == top(module))
            .map_or(u8::MAX, |(_, layer)| *layer)
    };
    for (module, uses) in graph() {
        for used in uses {
            assert!(
                layer(&used) <= layer(&module),
                "{module} (layer {}) imports {used} (layer {}): imports must run down",
                layer(&module),
                layer(&used)
            );
        }
    }
}

#[test]
fn no_import_circle_between_modules_or_folders() {
    let modules = graph();
    assert_eq!(find_cycle(&modules), None, "modules import each other");
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, uses) in &modules {
        let entry = folders.entry(top(module).to_owned()).or_default();
        entry.extend(
            uses.iter()
                .map(|u| top(u).to_owned())
                .filter(|u| u != top(module)),
        );
    }
    assert_eq!(find_cycle(&folders), None, "folders import each other");
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut edges = BTreeMap::new();
    edges.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    edges.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert!(find_cycle(&edges).is_some());
    edges.insert("b".to_owned(), BTreeSet::new());
    assert!(find_cycle(&edges).is_none());
}

#[test]
fn no_hand_written_rust_file_is_past_the_split_size() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["shared", "functions", "tests"] {
        rust_files(&workspace.join(dir), &mut files);
    }
    assert!(files.len() > 20, "found the workspace's sources");
    let long: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let lines = std::fs::read_to_string(file).ok()?.lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", file.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these along their seams (types, behaviour, I/O): {long:?}"
    );
}
