//! The layout's promise: the modules' imports form no circle, and storage (`db`) needs
//! nothing above it — the rules (`sync`) use it, never the other way round.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its code (not its comments) names as
/// `crate::…`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let relative = path.strip_prefix(&root).expect("under src");
            let first = relative
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .expect("a file name");
            let module = first.trim_end_matches(".rs").to_owned();
            let text = std::fs::read_to_string(&path).expect("a source file");
            let named = graph.entry(module.clone()).or_default();
            for line in text.lines() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for (at, _) in line.match_indices("crate::") {
                    let rest = &line[at + "crate::".len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != module {
                        named.insert(name);
                    }
                }
            }
        }
    }
    graph
}

fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut pending = vec![from.to_owned()];
    while let Some(module) = pending.pop() {
        if module == to {
            return true;
        }
        if seen.insert(module.clone()) {
            pending.extend(graph.get(&module).into_iter().flatten().cloned());
        }
    }
    false
}

#[test]
fn the_modules_imports_form_no_circle() {
    let graph = imports();
    let circles: Vec<String> = graph
        .iter()
        .flat_map(|(module, named)| {
            let graph = &graph;
            named
                .iter()
                .filter(move |other| reaches(graph, other, module))
                .map(move |other| format!("{module} -> {other} -> … -> {module}"))
        })
        .collect();
    assert!(circles.is_empty(), "import circles: {circles:#?}");
}

#[test]
fn storage_needs_nothing_but_the_domain() {
    let graph = imports();
    let db = graph.get("db").expect("a db module");
    assert_eq!(
        db.iter().map(String::as_str).collect::<Vec<_>>(),
        ["domain"],
        "db must not import the rules or anything above them"
    );
    assert!(graph.get("sync").is_some_and(|s| s.contains("db")));
}
