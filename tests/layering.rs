//! The shape of `src/`: which top-level modules import which. Read from the source text, so a
//! new import that closes a cycle, or reaches up from the floor, fails here with its path.
//!
//! The rules: no cycle among top-level modules; `wire` (the DNS wire format), `metrics` (the
//! encoding helpers), `backoff` (retry pacing) and `bounded` (file reading) are the floor and
//! import none of ours; `ops` serves what it is given and imports no layer; `forward` and `zone`
//! sit below `dns`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level modules each file's `crate::` paths name, by the top-level module it is in.
fn imports(src: &Path) -> Graph {
    let mut graph = Graph::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap();
            let first = relative.components().next().unwrap();
            let top = first.as_os_str().to_str().unwrap().trim_end_matches(".rs");
            if matches!(top, "lib" | "main" | "bin") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let targets = graph.entry(top.to_string()).or_default();
            targets.extend(crate_paths(&text).into_iter().filter(|t| t != top));
        }
    }
    graph
}

/// The first segment of every `crate::` path in `text`, including each member of a
/// `crate::{a::b, c}` group.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let mut depth = 0;
                let mut item_start = true;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => item_start = true,
                        c if c.is_whitespace() => {}
                        _ if item_start => {
                            item_start = false;
                            found.insert(ident(&group[i..]));
                        }
                        _ => {}
                    }
                }
            }
            None => {
                found.insert(ident(rest));
            }
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

/// A cycle through `graph`, as the modules along it, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
}

#[test]
fn top_level_modules_form_no_cycle_and_the_floor_imports_nothing() {
    let graph = imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    for expected in ["dns", "forward", "ops", "wire", "zone", "source", "alloc"] {
        assert!(
            graph.contains_key(expected),
            "{expected} not found: {graph:?}"
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
    for floor in ["wire", "metrics", "backoff", "bounded", "ops"] {
        let imported = &graph[floor];
        assert!(imported.is_empty(), "{floor} imports {imported:?}");
    }
    for below_dns in ["forward", "zone"] {
        let imported = &graph[below_dns];
        assert!(
            !imported.contains("dns"),
            "{below_dns} imports dns: {imported:?}"
        );
    }
}

#[test]
fn the_reader_sees_grouped_paths_and_the_search_finds_cycles() {
    let text = "use crate::{wire::header::{rcode, TC}, zone};\nlet x = crate::dns::Handler::new();";
    let found: Vec<String> = crate_paths(text).into_iter().collect();
    assert_eq!(found, ["dns", "wire", "zone"]);
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .into_iter()
        .fold(Graph::new(), |mut g, (from, to)| {
            g.entry(from.into()).or_default().insert(to.into());
            g
        });
    assert_eq!(find_cycle(&graph).unwrap().join(" -> "), "a -> b -> c -> a");
    let mut acyclic = graph.clone();
    acyclic.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&acyclic), None);
}
