//! The code's layout, held to ARCHITECTURE.md ("Layers"): each layer of the shared crate
//! imports only what the layer map allows, no source file of the workspace is over 600
//! lines, and no file of the shared crate or the local stack takes part in an import circle.
//! The checks read the sources as text, so they run in a few milliseconds and fail on the
//! import that breaks a rule, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest non-test source file.
const MAX_LINES: usize = 600;

/// What each layer of `shared/src` may import from the crate: itself and these.
const LAYERS: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("telemetry", &[]),
    ("ports", &["domain"]),
    ("adapters", &["domain", "ports", "telemetry"]),
    ("app", &["domain", "ports", "telemetry"]),
    ("http", &["domain", "ports", "app", "telemetry"]),
    ("lambda", &["domain", "ports", "app", "http", "telemetry"]),
    ("testing", &["domain", "ports"]),
    (
        "config",
        &["domain", "ports", "app", "adapters", "telemetry"],
    ),
    (
        "bootstrap",
        &[
            "domain",
            "ports",
            "app",
            "http",
            "lambda",
            "adapters",
            "config",
            "telemetry",
        ],
    ),
];

/// Names a layer of `shared/src` must not use at all (outside its tests): transport and
/// SDK types stay in `http`, `lambda` and `adapters`.
const FORBIDDEN_NAMES: &[(&str, &[&str])] = &[
    (
        "domain",
        &[
            "lambda_http",
            "lambda_runtime",
            "aws_lambda_events",
            "aws_sdk_",
            "aws_config",
            "reqwest",
            "HeaderMap",
        ],
    ),
    (
        "ports",
        &[
            "lambda_http",
            "lambda_runtime",
            "aws_lambda_events",
            "aws_sdk_",
            "reqwest",
            "HeaderMap",
        ],
    ),
    (
        "app",
        &[
            "lambda_http",
            "lambda_runtime",
            "aws_lambda_events",
            "aws_sdk_",
            "aws_config",
            "reqwest",
            "HeaderMap",
        ],
    ),
    (
        "adapters",
        &["lambda_http", "lambda_runtime", "aws_lambda_events"],
    ),
    ("testing", &["lambda_http", "lambda_runtime", "aws_sdk_"]),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A source file of one crate: where it is, its module path, its text without comments and
/// without the test module it may end with.
struct Source {
    path: PathBuf,
    module: Vec<String>,
    code: String,
    lines: usize,
    test: bool,
}

fn sources(root: &Path) -> Vec<Source> {
    let mut files = Vec::new();
    collect(root, &mut files);
    files.sort();
    let mut sources: Vec<Source> = files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("source is readable");
            let relative = path.strip_prefix(root).expect("under the root");
            let mut module: Vec<String> = relative
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            Source {
                path,
                module,
                code: without_test_modules(&strip_comments(&text)),
                lines: text.lines().count(),
                test: false,
            }
        })
        .collect();
    // A file is a test only inside a `tests` module its parent declares `#[cfg(test)]`.
    let declared_for_tests: BTreeSet<Vec<String>> = sources
        .iter()
        .filter(|parent| {
            let text = std::fs::read_to_string(&parent.path).unwrap_or_default();
            strip_comments(&text).contains("#[cfg(test)]\nmod tests;")
        })
        .map(|parent| {
            let mut module = parent.module.clone();
            module.push("tests".to_owned());
            module
        })
        .collect();
    for source in &mut sources {
        source.test =
            (1..=source.module.len()).any(|n| declared_for_tests.contains(&source.module[..n]));
    }
    sources
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("directory is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text with comments blanked out (strings and character literals kept), so a path
/// named in a doc comment is not an import.
fn strip_comments(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && raw_prefix_starts_here(&chars, i)
        {
            // A raw string: r"…", r#"…"#.
            let start = i;
            i += 1;
            let mut hashes = 0;
            while chars.get(i) == Some(&'#') {
                hashes += 1;
                i += 1;
            }
            if chars.get(i) != Some(&'"') {
                out.extend(&chars[start..i]);
                continue;
            }
            i += 1;
            while i < chars.len() {
                if chars[i] == '"' && (0..hashes).all(|h| chars.get(i + 1 + h) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (chars.get(i + 2) == Some(&'\'') || next == Some('\\')) {
            // A character literal (not a lifetime).
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Whether the `r` at `i` opens a raw string: `r"…"`, or `br"…"` / `cr"…"` (raw byte and
/// C strings), not the end of an identifier such as `for"`.
fn raw_prefix_starts_here(chars: &[char], i: usize) -> bool {
    let before = |n: usize| i.checked_sub(n).map(|j| chars[j]);
    !is_ident(before(1)) || (matches!(before(1), Some('b' | 'c')) && !is_ident(before(2)))
}

fn is_ident(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || c == '_')
}

/// The code without its `#[cfg(test)] mod … { … }` blocks (tests may import anything), and
/// with the paths a line break split (`crate::\n    app`) joined again.
fn without_test_modules(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]\nmod ") {
        let Some(open) = rest[at..].find('{').map(|o| at + o) else {
            break;
        };
        // A declaration (`mod tests;`) comes before any brace: keep it and go on.
        if rest[at..open].contains(';') {
            let end = at + rest[at..].find(';').unwrap_or(0) + 1;
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        }
        out.push_str(&rest[..at]);
        let mut depth = 0usize;
        let mut end = rest.len();
        for (i, c) in rest[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    join_split_paths(&out)
}

/// `a ::\n b` as `a::b`.
fn join_split_paths(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            while out.ends_with(char::is_whitespace) {
                out.pop();
            }
            out.push_str("::");
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every crate path the code names, as written: `crate::a::b`, `super::c`, and the
/// first-segment-relative paths of its `use` trees (`use codec::*`).
fn referenced_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let statements = use_statements(code);
    let mut rest = code.to_owned();
    for (start, end) in statements.iter().rev() {
        expand_tree(&normalise(&code[*start..*end]), &mut Vec::new(), &mut paths);
        rest.replace_range(*start..*end, "");
    }
    // Paths outside `use` statements: `crate::x::y` and `super::x` in expressions and types.
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(found) = rest[from..].find(start) {
            let at = from + found;
            from = at + start.len();
            if at > 0 && is_ident(rest[..at].chars().next_back()) {
                continue;
            }
            let path: Vec<String> = rest[at..]
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap_or_default()
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            paths.push(path);
        }
    }
    paths
}

/// Where the bodies of the `use` statements are (after `use`, before `;`).
fn use_statements(code: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = code[from..].find("use ") {
        let at = from + found;
        from = at + 4;
        let before = code[..at].trim_end_matches([' ', '\t']);
        let starts_statement = before.is_empty()
            || before.ends_with(['\n', ';', '{', '}'])
            || before.ends_with("pub")
            || before.ends_with(')');
        if !starts_statement || is_ident(code[..at].chars().next_back()) {
            continue;
        }
        if let Some(end) = code[from..].find(';') {
            out.push((from, from + end));
            from += end;
        }
    }
    out
}

/// `text` in one line, without the spaces around `::`, `{`, `}` and `,`.
fn normalise(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out = String::new();
    for word in words {
        let glued = out.ends_with([':', '{', ',']) || word.starts_with([':', '{', '}', ',']);
        if !out.is_empty() && !glued {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// `a::{b, c::{d, e}}` as `a::b`, `a::c::d`, `a::c::e`.
fn expand_tree(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim_start_matches("::");
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let depth = prefix.len();
        prefix.extend(head);
        for part in split_top_level(inner) {
            expand_tree(part, prefix, out);
        }
        prefix.truncate(depth);
    } else {
        let mut path = prefix.clone();
        let without_alias = tree.split(" as ").next().unwrap_or_default();
        path.extend(
            without_alias
                .split("::")
                .filter(|s| !s.is_empty() && *s != "*" && *s != "self")
                .map(str::to_owned),
        );
        out.push(path);
    }
}

fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// One crate's files and the files each imports from.
struct Graph {
    files: Vec<Source>,
    /// Indexes into `files`: who imports from whom, with the path that names it.
    edges: BTreeMap<usize, BTreeMap<usize, String>>,
    /// Relative paths that name nothing (`super::` past the crate root, say): each is a
    /// broken rule, since what it imports cannot be checked.
    unresolved: Vec<(usize, String)>,
}

fn graph(root: &Path) -> Graph {
    let files = sources(root);
    let by_module: BTreeMap<Vec<String>, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.module.clone(), i))
        .collect();
    let mut edges: BTreeMap<usize, BTreeMap<usize, String>> = BTreeMap::new();
    let mut unresolved = Vec::new();
    for (i, file) in files.iter().enumerate() {
        for path in referenced_paths(&file.code) {
            let absolute = match absolute(&file.module, &path, &by_module) {
                Resolved::Inside(absolute) => absolute,
                Resolved::Outside => continue,
                Resolved::Unresolved => {
                    unresolved.push((i, path.join("::")));
                    continue;
                }
            };
            // The deepest module the path names.
            let target = (1..=absolute.len())
                .rev()
                .find_map(|n| by_module.get(&absolute[..n]).copied());
            if let Some(target) = target
                && target != i
            {
                edges
                    .entry(i)
                    .or_default()
                    .entry(target)
                    .or_insert_with(|| path.join("::"));
            }
        }
    }
    Graph {
        files,
        edges,
        unresolved,
    }
}

/// What a path names.
enum Resolved {
    /// A path from the crate root.
    Inside(Vec<String>),
    /// Something outside the crate (another crate, `std`).
    Outside,
    /// A relative path that leaves the crate root.
    Unresolved,
}

/// `path` as written in `module`, from the crate root.
fn absolute(
    module: &[String],
    path: &[String],
    modules: &BTreeMap<Vec<String>, usize>,
) -> Resolved {
    let Some(first) = path.first() else {
        return Resolved::Outside;
    };
    match first.as_str() {
        "crate" => Resolved::Inside(path[1..].to_vec()),
        "super" | "self" => {
            let mut base = module.to_vec();
            let mut rest = path;
            while let Some(step) = rest.first() {
                match step.as_str() {
                    "super" => {
                        if base.pop().is_none() {
                            return Resolved::Unresolved;
                        }
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
            base.extend(rest.iter().cloned());
            Resolved::Inside(base)
        }
        child => {
            // `use codec::*` in a module with a child module `codec`.
            let mut base = module.to_vec();
            base.push(child.to_owned());
            if modules.contains_key(&base) {
                base.extend(path[1..].iter().cloned());
                Resolved::Inside(base)
            } else {
                Resolved::Outside
            }
        }
    }
}

fn display(file: &Source) -> String {
    file.path
        .strip_prefix(workspace())
        .unwrap_or(&file.path)
        .display()
        .to_string()
}

#[test]
fn each_layer_of_the_shared_crate_imports_only_what_the_layer_map_allows() {
    let broken = layer_violations(&workspace().join("shared/src"));
    assert!(
        broken.is_empty(),
        "imports against the layer map:\n{}",
        broken.join("\n")
    );
}

/// Every import under `root` against the layer map, and every way a file could hide one.
fn layer_violations(root: &Path) -> Vec<String> {
    let graph = graph(root);
    let mut broken = Vec::new();
    for (from, targets) in &graph.edges {
        let file = &graph.files[*from];
        if file.test {
            continue;
        }
        let Some(layer) = file.module.first() else {
            continue;
        };
        let Some((_, allowed)) = LAYERS.iter().find(|(name, _)| name == layer) else {
            broken.push(format!("{}: not in a layer of the map", display(file)));
            continue;
        };
        for (to, path) in targets {
            let Some(target) = graph.files[*to].module.first() else {
                continue;
            };
            if target != layer && !allowed.contains(&target.as_str()) {
                broken.push(format!(
                    "{}: `{path}`: {layer} may not import {target}",
                    display(file)
                ));
            }
        }
    }
    for (i, path) in &graph.unresolved {
        broken.push(format!(
            "{}: `{path}` names nothing in the crate",
            display(&graph.files[*i])
        ));
    }
    for file in graph.files.iter().filter(|f| !f.test) {
        broken.extend(hidden_imports(file).map(|why| format!("{}: {why}", display(file))));
        let Some(layer) = file.module.first() else {
            continue;
        };
        if let Some((_, names)) = FORBIDDEN_NAMES.iter().find(|(l, _)| l == layer) {
            for name in names.iter() {
                if mentions(&file.code, name) {
                    broken.push(format!("{}: {layer} may not use `{name}`", display(file)));
                }
            }
        }
    }
    broken
}

/// What would let a file import past the checks: a module inline in the file (its paths are
/// relative to a module the checks do not see), the crate root named under another name or
/// globbed, or `lib.rs` re-exporting anything (a layer could then import it from the root).
fn hidden_imports(file: &Source) -> impl Iterator<Item = String> {
    let code = &file.code;
    let mut why = Vec::new();
    if has_inline_module(code) {
        why.push("a module inline in the file: give it a file of its own".to_owned());
    }
    if code.contains("use crate as") || code.contains("crate::*") || code.contains("crate::{*") {
        why.push("the crate root imported whole: name what is imported".to_owned());
    }
    if file.module.is_empty() && !use_statements(code).is_empty() {
        why.push("the crate root imports or re-exports: it only declares modules".to_owned());
    }
    why.into_iter()
}

/// Whether `code` declares a module with a body (`mod name {`).
fn has_inline_module(code: &str) -> bool {
    code.match_indices("mod ").any(|(at, _)| {
        if is_ident(code[..at].chars().next_back()) {
            return false;
        }
        let after = code[at + 4..].trim_start();
        let name = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        name > 0 && after[name..].trim_start().starts_with('{')
    })
}

/// Whether `code` names `name` (as a whole identifier, or an identifier it begins, for a
/// prefix ending in `_`).
fn mentions(code: &str, name: &str) -> bool {
    code.match_indices(name).any(|(at, _)| {
        let before_ok = !is_ident(code[..at].chars().next_back());
        let after = code[at + name.len()..].chars().next();
        let after_ok = name.ends_with('_') || !is_ident(after);
        before_ok && after_ok
    })
}

#[test]
fn no_file_of_the_shared_crate_or_the_local_stack_is_in_an_import_circle() {
    let mut circles = Vec::new();
    for root in ["shared/src", "infra/src"] {
        let graph = graph(&workspace().join(root));
        for circle in circles_of(&graph) {
            circles.push(
                circle
                    .iter()
                    .map(|&i| display(&graph.files[i]))
                    .collect::<Vec<_>>()
                    .join(" -> "),
            );
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

/// Strongly connected groups of more than one file, among imports between files that are
/// not each other's ancestor modules (a module and the modules it declares always see each
/// other; that is the module tree, not a circle).
fn circles_of(graph: &Graph) -> Vec<Vec<usize>> {
    let n = graph.files.len();
    let related = |a: &[String], b: &[String]| a.starts_with(b) || b.starts_with(a);
    let next: Vec<Vec<usize>> = (0..n)
        .map(|i| {
            graph
                .edges
                .get(&i)
                .map(|targets| {
                    targets
                        .keys()
                        .copied()
                        .filter(|&j| !related(&graph.files[i].module, &graph.files[j].module))
                        .filter(|&j| !graph.files[i].test && !graph.files[j].test)
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect();
    // Kosaraju: finishing order on the graph, then components on the reversed graph.
    let mut order = Vec::new();
    let mut seen = vec![false; n];
    for start in 0..n {
        visit(start, &next, &mut seen, &mut order);
    }
    let mut reversed = vec![Vec::new(); n];
    for (i, targets) in next.iter().enumerate() {
        for &j in targets {
            reversed[j].push(i);
        }
    }
    let mut component = vec![usize::MAX; n];
    let mut groups = Vec::new();
    for &start in order.iter().rev() {
        if component[start] != usize::MAX {
            continue;
        }
        let mut members = Vec::new();
        let mut stack = vec![start];
        component[start] = groups.len();
        while let Some(i) = stack.pop() {
            members.push(i);
            for &j in &reversed[i] {
                if component[j] == usize::MAX {
                    component[j] = groups.len();
                    stack.push(j);
                }
            }
        }
        groups.push(members);
    }
    groups.into_iter().filter(|g| g.len() > 1).collect()
}

fn visit(start: usize, next: &[Vec<usize>], seen: &mut [bool], order: &mut Vec<usize>) {
    if seen[start] {
        return;
    }
    // Iterative depth-first search, pushing each node once its children are done.
    let mut stack = vec![(start, 0)];
    seen[start] = true;
    while let Some((node, child)) = stack.pop() {
        if let Some(&to) = next[node].get(child) {
            stack.push((node, child + 1));
            if !seen[to] {
                seen[to] = true;
                stack.push((to, 0));
            }
        } else {
            order.push(node);
        }
    }
}

#[test]
fn no_source_file_of_the_workspace_is_over_600_lines() {
    let mut long = Vec::new();
    for member in workspace_members() {
        let root = workspace().join(&member).join("src");
        if !root.is_dir() {
            continue;
        }
        for file in sources(&root) {
            if !file.test && file.lines > MAX_LINES {
                long.push(format!("{}: {} lines", display(&file), file.lines));
            }
        }
    }
    assert!(
        long.is_empty(),
        "source files over {MAX_LINES} lines (tests apart):\n{}",
        long.join("\n")
    );
}

/// The workspace's members, from its `Cargo.toml`: a new crate is checked without anyone
/// adding it here.
fn workspace_members() -> Vec<String> {
    let manifest = std::fs::read_to_string(workspace().join("Cargo.toml")).expect("Cargo.toml");
    let start = manifest.find("members = [").expect("a members list") + "members = [".len();
    let end = start + manifest[start..].find(']').expect("the list ends");
    manifest[start..end]
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn the_checks_see_imports_however_they_are_written() {
    let code = strip_comments(
        "//! `crate::app` in a doc comment is no import\n\
         use crate::domain::{ids::PredictionId, record::{Advance, PredictionRecord as R}};\n\
         pub(crate) use super::codec::*;\n\
         let s = \"crate::http in a string\";\n\
         fn f() { crate::ports::records::open_shard(x); }\n",
    );
    let found: BTreeSet<String> = referenced_paths(&code)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    let expected: BTreeSet<String> = [
        "crate::domain::ids::PredictionId",
        "crate::domain::record::Advance",
        "crate::domain::record::PredictionRecord",
        "super::codec",
        "crate::ports::records::open_shard",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(found, expected);
    assert!(mentions("use lambda_http::Body;", "lambda_http"));
    assert!(!mentions("use my_lambda_http_thing;", "lambda_http"));
    assert!(mentions("aws_sdk_s3::Client", "aws_sdk_"));
}

/// What would slip past a text-based check, planted in a crate of its own: each is caught.
#[test]
fn the_checks_catch_what_would_slip_past_them() {
    let root = std::env::temp_dir().join(format!("tidy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let files = [
        (
            "lib.rs",
            "pub mod app;\npub mod domain;\npub use app::App;\n",
        ),
        ("app/mod.rs", "pub struct App;\n"),
        (
            "domain/mod.rs",
            "pub mod split;\npub mod strings;\npub mod inline;\npub mod escape;\n",
        ),
        // A path split over lines.
        ("domain/split.rs", "use crate::\n    app::App;\n"),
        // A raw byte string holding `//` and a quote, then a real import.
        (
            "domain/strings.rs",
            "const S: &[u8] = br#\"// \" crate::app\"#;\nuse crate::app::App;\n",
        ),
        // A module inline in the file, importing through it.
        (
            "domain/inline.rs",
            "mod hidden {\n    use super::super::super::app::App;\n}\n",
        ),
        // A path that leaves the crate root.
        ("domain/escape.rs", "use super::super::super::app::App;\n"),
    ];
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("a directory");
        std::fs::write(path, text).expect("written");
    }
    let broken = layer_violations(&root).join("\n");
    let _ = std::fs::remove_dir_all(&root);
    for expected in [
        "domain/split.rs: `crate::app::App`: domain may not import app",
        "domain/strings.rs: `crate::app::App`: domain may not import app",
        "domain/inline.rs: a module inline in the file",
        "domain/escape.rs: `super::super::super::app::App` names nothing",
        "lib.rs: the crate root imports or re-exports",
    ] {
        assert!(
            broken.contains(expected),
            "{expected} not found in:\n{broken}"
        );
    }
}
