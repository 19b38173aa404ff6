//! Module layering check: reads `src/` as text (std only, no build-time hooks) and checks
//! how the crate's modules depend on each other.
//!
//! Run it, with the graph and findings printed:
//!
//! ```text
//! cargo test --test layers -- --nocapture
//! ```
//!
//! Every `.rs` file under `src/` is a module: `lib.rs` and `main.rs` are the roots `lib` and
//! `main`, `src/a.rs` and `src/a/mod.rs` are `a`, `src/a/b.rs` is `a::b`. A file depends on
//! every crate-internal module it names through `use crate::…`, `use super::…`, `use self::…`
//! (groups and multi-line trees included), an inline path such as `crate::store::pool(…)`,
//! or, in `main.rs`, `twilio_receiver::…`. Each path resolves to the longest prefix that is a
//! module file (`crate::store::group::Live` is `store::group`). Comments and string literals
//! are blanked first, so documentation never creates an edge. Bare relative paths
//! (`pub use address::Address` in a `mod.rs`) are not counted: from text alone they cannot be
//! told apart from extern crates and local items.
//!
//! Test code is skipped: items marked exactly `#[cfg(test)]` (inline `mod tests { … }` and
//! others) and files declared `#[cfg(test)] mod x;` (such as `rules::tests`). Tests may
//! import whatever they need; the rules are about the code that ships.
//!
//! The rules, all asserted:
//! 1. No cycles among files (strongly connected components of more than one file; a module
//!    naming itself is ignored). Cycles among top-level modules are printed, not asserted.
//! 2. Only [`HTTP_IMPORTERS`] import the HTTP layer [`HTTP_LAYER`].
//! 3. The [`CORE`] modules import none of [`CORE_MUST_NOT_IMPORT`] and name none of the
//!    crates in [`CORE_MUST_NOT_USE`] (in a `use` or a path like `tokio::spawn`).
//!
//! `parser_reads_paths_not_comments` checks the parser itself on a small sample.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The HTTP layer: a top-level module.
const HTTP_LAYER: &str = "routes";
/// Top-level modules allowed to import the HTTP layer: itself, and what starts the server.
const HTTP_IMPORTERS: &[&str] = &["routes", "startup", "cli", "main", "lib"];
/// Top-level modules that hold the domain logic and must stay free of I/O.
const CORE: &[&str] = &["twilio", "rules", "reply", "twiml"];
/// Top-level modules the core must not import.
const CORE_MUST_NOT_IMPORT: &[&str] = &[
    "routes", "store", "ingest", "startup", "cli", "config", "spool", "media", "writer", "metrics",
];
/// External crates the core must not name.
const CORE_MUST_NOT_USE: &[&str] = &["axum", "sqlx", "tokio"];

#[test]
fn module_layering() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let crate_name = env!("CARGO_PKG_NAME").replace('-', "_");
    let graph = Graph::read(&src, &crate_name);
    let report = graph.report();
    println!("{}", report.text);
    assert!(
        report.problems.is_empty(),
        "module layering: {} problem(s)\n{}",
        report.problems.len(),
        report.problems.join("\n")
    );
}

/// The parser on a small sample, so a broken parser fails here rather than passing quietly.
#[test]
fn parser_reads_paths_not_comments() {
    let text = r##"
//! crate::doc_comment
use crate::{a::{b, c as _}, d::E};
use super::sibling;
use self::{child::{self, X}, *};
use tokio::sync::watch;
/* crate::block /* nested crate::x */ crate::still */
fn f<'a>(x: &'a str) {
    let _ = "crate::in_string \" crate::escaped";
    let _ = r#"crate::raw "# ;
    let _ = ('"', '\'', b'x');
    crate::store::group::Live::new();
    super::super::top();
    $crate::macro_path();
    axum::serve();
}
#[cfg(test)]
mod tests { use crate::hidden; }
#[cfg(test)]
#[allow(unused)]
fn helper() { crate::hidden_too(); }
#[cfg(test)]
mod more;
mod inline { use super::from_inline; }
"##;
    let scan = scan(&tokenize(&strip(text)), &path("x::y"), "twilio_receiver");
    let found: Vec<String> = scan
        .internal
        .iter()
        .map(|r| format!("{}: {}", join(&r.scope), r.segments.join("::")))
        .collect();
    assert_eq!(
        found,
        [
            "x::y: crate::a::b",
            "x::y: crate::a::c",
            "x::y: crate::d::E",
            "x::y: super::sibling",
            "x::y: self::child::self",
            "x::y: self::child::X",
            "x::y: self",
            "x::y: crate::store::group::Live::new",
            "x::y: super::super::top",
            "x::y::inline: super::from_inline",
        ]
    );
    let external: Vec<_> = scan
        .external
        .iter()
        .map(|r| r.segments.join("::"))
        .collect();
    assert_eq!(external, ["tokio::sync::watch", "axum::serve"]);
    assert_eq!(scan.test_children, [path("x::y::more")]);

    let modules: BTreeSet<Vec<String>> = ["a", "a::b", "store", "store::group", "x", "x::y"]
        .iter()
        .map(|m| path(m))
        .collect();
    let resolve = |r: &RawRef| resolve(r, false, "twilio_receiver", &modules);
    let targets: Vec<_> = scan.internal.iter().map(resolve).collect();
    let expected = [
        "a::b",
        "a",
        "lib",
        "x",
        "x::y",
        "x::y",
        "x::y",
        "store::group",
        "lib",
        "x::y",
    ];
    assert_eq!(targets, expected.map(|t| Some(t.to_owned())));
    // `super` in a `mod.rs` is the parent of the directory module.
    let mod_rs = scan_text("use super::Thing;", &path("store"));
    assert_eq!(resolve(&mod_rs.internal[0]), Some("lib".to_owned()));
}

fn scan_text(text: &str, module: &[String]) -> Scan {
    scan(&tokenize(&strip(text)), module, "twilio_receiver")
}

// ---- reading the tree ----------------------------------------------------------------

/// Where a dependency was seen.
#[derive(Clone)]
struct Evidence {
    file: String,
    line: usize,
    path: String,
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}  {}", self.file, self.line, self.path)
    }
}

type Edges = BTreeMap<String, BTreeMap<String, Vec<Evidence>>>;

struct Graph {
    /// Every module file that is not test-only, by name.
    files: BTreeMap<String, String>,
    test_only: Vec<String>,
    /// File-level edges, self-edges left out.
    edges: Edges,
    /// Uses of [`CORE_MUST_NOT_USE`] crates: (module, crate, where).
    external: Vec<(String, String, Evidence)>,
}

/// One module file: its path inside the crate and which crate root it belongs to.
struct ModuleFile {
    rel: String,
    module: Vec<String>,
    in_main: bool,
    scan: Scan,
}

impl Graph {
    fn read(src: &Path, crate_name: &str) -> Graph {
        let mut paths = Vec::new();
        rs_files(src, &mut paths);
        let files: Vec<ModuleFile> = paths
            .iter()
            .map(|p| {
                let rel = p
                    .strip_prefix(src)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                let module = module_path(&rel);
                let text = std::fs::read_to_string(p).unwrap();
                let clean = strip(&text);
                // Blanking keeps every newline, so reported line numbers are the file's.
                assert_eq!(clean.lines().count(), text.lines().count(), "{rel}");
                let scan = scan(&tokenize(&clean), &module, crate_name);
                ModuleFile {
                    in_main: rel == "main.rs",
                    rel: format!("src/{rel}"),
                    module,
                    scan,
                }
            })
            .collect();

        // The library's modules, for resolving paths (main.rs is the root of another crate).
        let modules: BTreeSet<Vec<String>> = files
            .iter()
            .filter(|f| !f.in_main)
            .map(|f| f.module.clone())
            .collect();
        let test_roots: Vec<&Vec<String>> =
            files.iter().flat_map(|f| &f.scan.test_children).collect();
        let is_test_only = |f: &ModuleFile| {
            f.scan.whole_file_test || test_roots.iter().any(|t| f.module.starts_with(t))
        };

        let mut graph = Graph {
            files: BTreeMap::new(),
            test_only: Vec::new(),
            edges: Edges::new(),
            external: Vec::new(),
        };
        for f in &files {
            let name = module_name(&f.module, f.in_main);
            if is_test_only(f) {
                graph.test_only.push(name);
                continue;
            }
            graph.files.insert(name.clone(), f.rel.clone());
            let targets = graph.edges.entry(name.clone()).or_default();
            for r in &f.scan.internal {
                // A module naming itself is no dependency.
                let Some(to) = resolve(r, f.in_main, crate_name, &modules) else {
                    continue;
                };
                if to == name {
                    continue;
                }
                // One piece of evidence per line is enough (`use a::{B, C}` names `a` twice).
                let seen = targets.entry(to).or_default();
                if seen.last().is_none_or(|e| e.line != r.line) {
                    seen.push(evidence(f, r));
                }
            }
            for r in &f.scan.external {
                if CORE_MUST_NOT_USE.contains(&r.segments[0].as_str()) {
                    graph
                        .external
                        .push((name.clone(), r.segments[0].clone(), evidence(f, r)));
                }
            }
        }
        graph
    }

    /// The same graph between top-level modules; edges inside one top-level module dropped.
    fn top_level(&self) -> Edges {
        let mut top = Edges::new();
        for (from, targets) in &self.edges {
            let entry = top.entry(top_of(from).to_owned()).or_default();
            for (to, evidence) in targets {
                if top_of(to) != top_of(from) {
                    entry
                        .entry(top_of(to).to_owned())
                        .or_default()
                        .extend(evidence.iter().cloned());
                }
            }
        }
        top
    }

    fn report(&self) -> Report {
        let mut text = String::new();
        let mut problems = Vec::new();
        let top = self.top_level();
        let edge_count: usize = self.edges.values().map(BTreeMap::len).sum();
        let _ = writeln!(
            text,
            "Module layering of src/: {} files, {edge_count} file edges (test code skipped; \
             test-only files: {})",
            self.files.len(),
            list_or_none(&self.test_only),
        );

        text.push_str("\nTop-level graph:\n");
        print_graph(&mut text, &top);
        text.push_str("\nFile graph:\n");
        print_graph(&mut text, &self.edges);

        // Rule 1.
        text.push_str("\nCycles among files (rule 1):\n");
        let file_cycles = cycles(&self.edges);
        print_cycles(&mut text, &file_cycles, &self.edges);
        for cycle in &file_cycles {
            problems.push(format!("rule 1, cycle among files: {}", cycle.join(", ")));
        }
        text.push_str("\nCycles among top-level modules (reported, not asserted):\n");
        print_cycles(&mut text, &cycles(&top), &top);

        // Rule 2.
        let _ = writeln!(
            text,
            "\nImports of the HTTP layer `{HTTP_LAYER}` from outside {} (rule 2):",
            HTTP_IMPORTERS.join(", ")
        );
        let mut found = Vec::new();
        for (from, targets) in &self.edges {
            if HTTP_IMPORTERS.contains(&top_of(from)) {
                continue;
            }
            for (to, evidence) in targets {
                if top_of(to) == HTTP_LAYER {
                    found.extend(evidence.iter().map(|e| format!("{from} -> {to}  ({e})")));
                }
            }
        }
        print_findings(&mut text, &found);
        problems.extend(
            found
                .iter()
                .map(|f| format!("rule 2, imports the HTTP layer: {f}")),
        );

        // Rule 3.
        let _ = writeln!(
            text,
            "\nCore purity of {} (rule 3): no {}; no {}",
            CORE.join(", "),
            CORE_MUST_NOT_IMPORT.join(", "),
            CORE_MUST_NOT_USE.join(", "),
        );
        let mut found = Vec::new();
        for (from, targets) in &self.edges {
            if !CORE.contains(&top_of(from)) {
                continue;
            }
            for (to, evidence) in targets {
                if CORE_MUST_NOT_IMPORT.contains(&top_of(to)) {
                    found.extend(evidence.iter().map(|e| format!("{from} -> {to}  ({e})")));
                }
            }
        }
        for (from, krate, e) in &self.external {
            if CORE.contains(&top_of(from)) {
                found.push(format!("{from} uses {krate}  ({e})"));
            }
        }
        print_findings(&mut text, &found);
        problems.extend(found.iter().map(|f| format!("rule 3, core not pure: {f}")));

        Report { text, problems }
    }
}

struct Report {
    text: String,
    problems: Vec<String>,
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `a/b.rs` is `[a, b]`, `a/mod.rs` is `[a]`, `lib.rs` and `main.rs` are the root `[]`.
fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_owned)
        .collect();
    if rel == "lib.rs" || rel == "main.rs" || parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

fn module_name(module: &[String], in_main: bool) -> String {
    match (module.is_empty(), in_main) {
        (true, true) => "main".to_owned(),
        (true, false) => "lib".to_owned(),
        _ => join(module),
    }
}

fn top_of(name: &str) -> &str {
    name.split("::").next().unwrap()
}

fn evidence(f: &ModuleFile, r: &RawRef) -> Evidence {
    Evidence {
        file: f.rel.clone(),
        line: r.line,
        // `use a::{self, B}` shows as `a`.
        path: join(&r.segments[..1])
            + &r.segments[1..]
                .iter()
                .filter(|s| *s != "self")
                .map(|s| format!("::{s}"))
                .collect::<String>(),
    }
}

/// The module a path names: its longest prefix that is a module file.
fn resolve(
    r: &RawRef,
    in_main: bool,
    crate_name: &str,
    modules: &BTreeSet<Vec<String>>,
) -> Option<String> {
    let segments = &r.segments;
    let (mut full, rest, root_is_main) = match segments[0].as_str() {
        "crate" => (Vec::new(), &segments[1..], in_main),
        "self" => (r.scope.clone(), &segments[1..], in_main),
        "super" => {
            let mut at = r.scope.clone();
            let supers = segments.iter().take_while(|s| *s == "super").count();
            for _ in 0..supers {
                at.pop()?;
            }
            (at, &segments[supers..], in_main)
        }
        s if s == crate_name => (Vec::new(), &segments[1..], false),
        _ => return None,
    };
    if root_is_main {
        // main.rs declares no modules of its own: everything it has is the root.
        return Some("main".to_owned());
    }
    // `self` after the first segment (`use a::{self, b}`) names the path so far.
    full.extend(rest.iter().filter(|s| *s != "self").cloned());
    (0..=full.len())
        .rev()
        .map(|n| &full[..n])
        .find(|prefix| prefix.is_empty() || modules.contains(*prefix))
        .map(|m| module_name(m, false))
}

// ---- scanning one file ------------------------------------------------------------------

/// Blanks comments, string literals and char literals with spaces, keeping newlines so line
/// numbers survive.
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        let start = i;
        if at(i) == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if at(i) == '/' && at(i + 1) == '*' {
            // Block comments nest.
            let mut depth = 0;
            loop {
                if i >= c.len() {
                    break;
                } else if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if let Some(end) = raw_string_end(&c, i) {
            i = end;
        } else if at(i) == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if at(i) == '\'' && at(i + 1) == '\\' {
            // An escaped char literal: '\n', '\'', '\u{1F600}'.
            i += 3;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if at(i) == '\'' && at(i + 2) == '\'' {
            // A plain char literal (a lifetime `'a` has no closing quote).
            i += 3;
        } else {
            out.push(c[i]);
            i += 1;
            continue;
        }
        for &ch in &c[start..i.min(c.len())] {
            out.push(if ch == '\n' { '\n' } else { ' ' });
        }
    }
    out
}

/// The end of a raw string (`r"…"`, `r#"…"#`, `br#"…"#`, `cr"…"`) starting at `i`, if any.
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    if i > 0 && is_ident_char(c[i - 1]) {
        return None;
    }
    let mut j = i;
    if matches!(c.get(j), Some('b' | 'c')) {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = c[j..].iter().take_while(|&&ch| ch == '#').count();
    j += hashes;
    if c.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < c.len() {
        if c[j] == '"'
            && c[j + 1..]
                .iter()
                .take(hashes)
                .filter(|&&ch| ch == '#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(c.len())
}

fn is_ident_char(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

struct Tok {
    text: String,
    line: usize,
}

/// Identifiers (and numbers), `::`, and every other character as its own token.
fn tokenize(clean: &str) -> Vec<Tok> {
    let c: Vec<char> = clean.chars().collect();
    let mut toks = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let start = i;
        if c[i] == '\n' {
            line += 1;
            i += 1;
            continue;
        } else if c[i].is_whitespace() {
            i += 1;
            continue;
        } else if is_ident_char(c[i]) {
            while i < c.len() && is_ident_char(c[i]) {
                i += 1;
            }
        } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
            i += 2;
        } else {
            i += 1;
        }
        toks.push(Tok {
            text: c[start..i].iter().collect(),
            line,
        });
    }
    toks
}

/// A path as written, with the module (inline modules included) it was written in.
struct RawRef {
    scope: Vec<String>,
    segments: Vec<String>,
    line: usize,
}

#[derive(Default)]
struct Scan {
    /// Paths starting with `crate`, `super`, `self` or the crate's own name.
    internal: Vec<RawRef>,
    /// Paths starting with any other name (external crates, mostly).
    external: Vec<RawRef>,
    /// Files declared as `#[cfg(test)] mod x;`.
    test_children: Vec<Vec<String>>,
    /// The file starts with `#![cfg(test)]`.
    whole_file_test: bool,
}

fn scan(toks: &[Tok], file_module: &[String], crate_name: &str) -> Scan {
    let text = |i: usize| toks.get(i).map_or("", |t| t.text.as_str());
    let is_ident = |i: usize| text(i).starts_with(|c: char| c.is_alphabetic() || c == '_');
    let mut out = Scan::default();
    // One entry per open brace: the inline module's name if the brace opened one.
    let mut braces: Vec<Option<String>> = Vec::new();
    let scope = |braces: &[Option<String>]| -> Vec<String> {
        let mut s = file_module.to_vec();
        s.extend(braces.iter().flatten().cloned());
        s
    };
    let mut pending_test = false;
    let mut i = 0;
    while i < toks.len() {
        // Attributes: `#[cfg(test)]` marks the next item as test code.
        if text(i) == "#" {
            let inner = text(i + 1) == "!";
            let open = if inner { i + 2 } else { i + 1 };
            if text(open) == "[" {
                let end = block_end(toks, open);
                let words: Vec<&str> = (open + 1..end - 1).map(text).collect();
                if words == ["cfg", "(", "test", ")"] {
                    if inner && braces.is_empty() {
                        out.whole_file_test = true;
                        return out;
                    }
                    pending_test = !inner;
                    i = end;
                    continue;
                }
                if pending_test {
                    i = end;
                    continue;
                }
            }
        }
        if pending_test {
            pending_test = false;
            let end = item_end(toks, i);
            let words: Vec<&str> = (i..end).map(text).collect();
            if let [.., "mod", name, ";"] = words.as_slice() {
                let mut child = scope(&braces);
                child.push((*name).to_owned());
                out.test_children.push(child);
            }
            i = end;
            continue;
        }
        let after_path = i > 0 && matches!(text(i - 1), "::" | "$");
        match text(i) {
            "{" => braces.push(None),
            "}" => {
                braces.pop();
            }
            "mod" if is_ident(i + 1) && text(i + 2) == "{" => {
                braces.push(Some(text(i + 1).to_owned()));
                i += 3;
                continue;
            }
            "use" if !after_path => {
                let end = (i..toks.len())
                    .find(|&j| text(j) == ";")
                    .unwrap_or(toks.len());
                let mut leaves = Vec::new();
                let mut pos = i + 1;
                use_tree(&toks[..end], &mut pos, Vec::new(), &mut leaves);
                for (segments, line) in leaves {
                    push_ref(&mut out, scope(&braces), segments, line, crate_name);
                }
                i = end + 1;
                continue;
            }
            _ if is_ident(i) && text(i + 1) == "::" && !after_path => {
                let mut segments = vec![text(i).to_owned()];
                let mut j = i;
                while text(j + 1) == "::" && is_ident(j + 2) {
                    segments.push(text(j + 2).to_owned());
                    j += 2;
                }
                push_ref(&mut out, scope(&braces), segments, toks[i].line, crate_name);
                i = j + 1;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn push_ref(out: &mut Scan, scope: Vec<String>, segments: Vec<String>, line: usize, krate: &str) {
    let first = segments[0].as_str();
    let internal = matches!(first, "crate" | "super" | "self") || first == krate;
    let raw = RawRef {
        scope,
        segments,
        line,
    };
    if internal {
        out.internal.push(raw);
    } else {
        out.external.push(raw);
    }
}

/// Flattens a use tree (`a::{b, c::{d, e as f}, *}`) into its leaf paths; a glob leaves
/// the path it globs.
fn use_tree(
    toks: &[Tok],
    pos: &mut usize,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, usize)>,
) {
    let mut path = prefix;
    while let Some(tok) = toks.get(*pos) {
        *pos += 1;
        match tok.text.as_str() {
            "::" => {}
            "{" => {
                while toks.get(*pos).is_some_and(|t| t.text != "}") {
                    use_tree(toks, pos, path.clone(), out);
                    if toks.get(*pos).is_some_and(|t| t.text == ",") {
                        *pos += 1;
                    }
                }
                *pos += 1;
                return;
            }
            "*" => {
                out.push((path, tok.line));
                return;
            }
            name => {
                path.push(name.to_owned());
                if toks.get(*pos).is_some_and(|t| t.text == "::") {
                    continue;
                }
                if toks.get(*pos).is_some_and(|t| t.text == "as") {
                    *pos += 2;
                }
                out.push((path, tok.line));
                return;
            }
        }
    }
}

/// The index after the bracket that closes the one at `open`.
fn block_end(toks: &[Tok], open: usize) -> usize {
    let mut depth = 0;
    for (j, t) in toks.iter().enumerate().skip(open) {
        match t.text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
    }
    toks.len()
}

/// The index after the item starting at `start`: after its `;` or its closing brace, or
/// before the brace that closes its container (an attribute on a field or statement).
fn item_end(toks: &[Tok], start: usize) -> usize {
    let mut depth = 0;
    for (j, t) in toks.iter().enumerate().skip(start) {
        match t.text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" => depth -= 1,
            "}" => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
                if depth < 0 {
                    return j;
                }
            }
            ";" if depth == 0 => return j + 1,
            _ => {}
        }
    }
    toks.len()
}

// ---- graph algorithms and printing --------------------------------------------------

/// Strongly connected components with more than one member (Tarjan), each sorted.
fn cycles(edges: &Edges) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        edges: &'a Edges,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            let edges = self.edges;
            for w in edges.get(v).into_iter().flat_map(BTreeMap::keys) {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w.as_str()]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w.as_str()) {
                    let low = self.low[v].min(self.index[w.as_str()]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.found.sort();
    t.found
}

fn print_graph(text: &mut String, edges: &Edges) {
    for (from, targets) in edges {
        let to: Vec<&str> = targets.keys().map(String::as_str).collect();
        let _ = writeln!(text, "  {from} -> {}", list_or_none(&to));
    }
}

/// Each cycle with the edges inside it and where the first of each edge was seen.
fn print_cycles(text: &mut String, found: &[Vec<String>], edges: &Edges) {
    if found.is_empty() {
        text.push_str("  (none)\n");
    }
    for members in found {
        let _ = writeln!(text, "  {}", members.join(", "));
        for from in members {
            for (to, evidence) in &edges[from] {
                if members.contains(to) {
                    let _ = writeln!(text, "    {from} -> {to}  ({})", evidence[0]);
                }
            }
        }
    }
}

fn print_findings(text: &mut String, found: &[String]) {
    if found.is_empty() {
        text.push_str("  (none)\n");
    }
    for f in found {
        let _ = writeln!(text, "  {f}");
    }
}

fn list_or_none<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return "(none)".to_owned();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}

fn join(path: &[String]) -> String {
    path.join("::")
}

fn path(name: &str) -> Vec<String> {
    name.split("::").map(str::to_owned).collect()
}
