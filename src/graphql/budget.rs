//! What a GraphQL document costs before anything validates or runs it.
//!
//! async-graphql's validation visitors (complexity, depth, cache control) and its executor walk a
//! document with every fragment spread expanded in place, and its own nesting check
//! (`check_recursive_depth`) does too. A ~1 KB document of 14 fragments, each spreading the next
//! one four times, is 4^14 fields once expanded: it passes the parser's recursion limit and the
//! depth limit, and the process grew to 24 GB computing its complexity and running it. The
//! complexity limit cannot help, since computing it is the expansion.
//!
//! So a document is measured here first, in time linear in its text: each fragment's expanded
//! size is computed once (memoised, fragments in dependency order) and a spread adds its
//! fragment's size instead of walking it again. Fragment cycles are found by the same walk, with
//! an explicit stack (no recursion a long chain could overflow). The measure counts what the
//! walks visit: every field, fragment spread and inline fragment of every operation and of every
//! fragment definition (validation visits each definition on its own, used or not), spreads
//! expanded, aliased fields included. Spreads count too: a chain of fragments that spread each
//! other four times and end in an unknown fragment has no field at all, yet async-graphql's
//! nesting check walks all 4^n spreads of it.

use std::collections::HashMap;

use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection, SelectionSet};
use async_graphql::{ErrorExtensions, Positioned, ServerError};

/// `extensions.code` of a document refused for its expanded size.
pub const TOO_LARGE: &str = "QUERY_TOO_LARGE";

/// The limits a document is held to before it is validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fields (spreads and inline fragments included) of the document once every fragment
    /// spread is expanded (`GRAPHQL_MAX_EXPANDED_FIELDS`).
    pub max_fields: u64,
    /// `GRAPHQL_MAX_DEPTH`: async-graphql checks it for ordinary documents; this module checks it
    /// for introspection documents, which run without the library's depth limit (see `Shape`).
    pub max_depth: usize,
}

impl Limits {
    pub fn of(cfg: &crate::config::Config) -> Limits {
        Limits {
            max_fields: cfg.graphql_max_expanded_fields,
            max_depth: cfg.graphql_max_depth,
        }
    }
}

/// The measures of one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Selections (fields, fragment spreads, inline fragments) visited by validation: every
    /// operation and fragment definition, spreads expanded; saturates at `u64::MAX`.
    pub fields: u64,
    /// Every operation is a query selecting only `__schema`, `__type` and `__typename`.
    pub introspection_only: bool,
    /// Deepest field nesting with spreads expanded, where `ofType` does not count: a chain of
    /// `ofType` fans out to nothing (one type each) and ends where the schema's deepest type
    /// wrapping (`[String!]!`) ends, whatever depth the document asks for. graphql-js asks for
    /// nine levels of it, which is why its introspection query fails a plain depth limit.
    pub depth_without_type_refs: usize,
}

/// Why a document is refused before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The expanded document has more selections than `limit`.
    TooLarge { fields: u64, limit: u64 },
    /// A fragment spreads itself, directly or through others (the names along the cycle).
    Cycle(Vec<String>),
    /// An introspection document nested deeper than `GRAPHQL_MAX_DEPTH` (`ofType` not counted).
    TooDeep { limit: usize },
}

impl Refusal {
    /// The GraphQL error a client gets.
    pub fn to_server_error(&self) -> ServerError {
        match self {
            Refusal::TooLarge { fields, limit } => {
                let size = if *fields == u64::MAX {
                    "more than 18446744073709551615".to_string()
                } else {
                    fields.to_string()
                };
                let message = format!(
                    "Query is too large: with its fragments spread it has {size} fields and \
                     fragments, more than the limit of {limit} (GRAPHQL_MAX_EXPANDED_FIELDS)"
                );
                let (fields, limit) = (*fields, *limit);
                async_graphql::Error::new(message)
                    .extend_with(|_, e| {
                        e.set("code", TOO_LARGE);
                        e.set("limit", limit);
                        e.set("expandedSize", fields);
                    })
                    .into_server_error(Default::default())
            }
            Refusal::Cycle(path) => {
                let first = path.first().map(String::as_str).unwrap_or_default();
                let via = if path.len() > 2 {
                    format!(" via {}", path[1..path.len() - 1].join(", "))
                } else {
                    String::new()
                };
                async_graphql::Error::new(format!(
                    "Cannot spread fragment \"{first}\" within itself{via}"
                ))
                .extend_with(|_, e| e.set("code", "BAD_USER_INPUT"))
                .into_server_error(Default::default())
            }
            Refusal::TooDeep { limit } => {
                let limit = *limit;
                // The library's own message for ordinary documents, so clients see one wording.
                async_graphql::Error::new("Query is nested too deep.")
                    .extend_with(|_, e| {
                        e.set("code", "BAD_USER_INPUT");
                        e.set("limit", limit);
                    })
                    .into_server_error(Default::default())
            }
        }
    }
}

/// Measures `doc` and holds it to `limits`: the expanded size for every document, the depth (with
/// `ofType` not counted) for introspection documents.
pub fn admit(doc: &ExecutableDocument, limits: Limits) -> Result<Shape, Refusal> {
    let shape = measure(doc)?;
    if shape.fields > limits.max_fields {
        return Err(Refusal::TooLarge {
            fields: shape.fields,
            limit: limits.max_fields,
        });
    }
    if shape.introspection_only && shape.depth_without_type_refs > limits.max_depth {
        return Err(Refusal::TooDeep {
            limit: limits.max_depth,
        });
    }
    Ok(shape)
}

/// Top-level fields an introspection document may select.
fn is_meta_field(name: &str) -> bool {
    matches!(name, "__schema" | "__type" | "__typename")
}

/// One definition (operation or fragment) on its own, its spreads not followed.
struct Local<'a> {
    fields: u64,
    depth: usize,
    /// Spread fragment → (how many times, deepest nesting at a spread of it).
    spreads: HashMap<&'a str, (u64, usize)>,
    /// Its top-level fields (through inline fragments) are all meta fields.
    meta_top: bool,
    /// Fragments spread at its top level (through inline fragments).
    top_spreads: Vec<&'a str>,
}

/// Walks one selection set with an explicit stack (the parser bounds nesting at 64, but nothing
/// here should rely on it).
fn local(set: &Positioned<SelectionSet>) -> Local<'_> {
    let mut out = Local {
        fields: 0,
        depth: 0,
        spreads: HashMap::new(),
        meta_top: true,
        top_spreads: Vec::new(),
    };
    // (selection set, nesting of its fields' parent, whether it is the definition's top level)
    let mut stack = vec![(set, 0usize, true)];
    while let Some((set, depth, top)) = stack.pop() {
        for sel in &set.node.items {
            match &sel.node {
                Selection::Field(f) => {
                    let name = f.node.name.node.as_str();
                    out.fields = out.fields.saturating_add(1);
                    let d = if name == "ofType" { depth } else { depth + 1 };
                    out.depth = out.depth.max(d);
                    if top && !is_meta_field(name) {
                        out.meta_top = false;
                    }
                    if !f.node.selection_set.node.items.is_empty() {
                        stack.push((&f.node.selection_set, d, false));
                    }
                }
                Selection::InlineFragment(i) => {
                    out.fields = out.fields.saturating_add(1);
                    stack.push((&i.node.selection_set, depth, top));
                }
                Selection::FragmentSpread(s) => {
                    out.fields = out.fields.saturating_add(1);
                    let name = s.node.fragment_name.node.as_str();
                    let e = out.spreads.entry(name).or_insert((0, 0));
                    e.0 = e.0.saturating_add(1);
                    e.1 = e.1.max(depth);
                    if top {
                        out.top_spreads.push(name);
                    }
                }
            }
        }
    }
    out
}

/// A definition's measures with its spreads expanded.
#[derive(Debug, Clone, Copy)]
struct Expanded {
    fields: u64,
    depth: usize,
    meta_top: bool,
}

fn expand(l: &Local<'_>, done: &HashMap<&str, Expanded>) -> Expanded {
    let mut e = Expanded {
        fields: l.fields,
        depth: l.depth,
        meta_top: l.meta_top,
    };
    for (name, (count, at)) in &l.spreads {
        // An unknown fragment adds nothing here; validation reports it.
        if let Some(t) = done.get(name) {
            e.fields = e.fields.saturating_add(count.saturating_mul(t.fields));
            e.depth = e.depth.max(at.saturating_add(t.depth));
        }
    }
    for name in &l.top_spreads {
        e.meta_top &= done.get(name).is_some_and(|t| t.meta_top);
    }
    e
}

/// Measures a document in time linear in its size (see the module's comment).
pub fn measure(doc: &ExecutableDocument) -> Result<Shape, Refusal> {
    let locals: HashMap<&str, Local<'_>> = doc
        .fragments
        .iter()
        .map(|(name, f)| (name.as_str(), local(&f.node.selection_set)))
        .collect();
    let mut done: HashMap<&str, Expanded> = HashMap::with_capacity(locals.len());
    // Depth-first over the spread graph, post-order, with an explicit stack of (fragment, its
    // spreads still to visit); `on_stack` finds cycles.
    let mut on_stack: HashMap<&str, usize> = HashMap::new();
    for root in locals.keys() {
        if done.contains_key(root) {
            continue;
        }
        let mut stack: Vec<(&str, Vec<&str>)> = Vec::new();
        let pending = |name: &str| -> Vec<&str> {
            locals
                .get(name)
                .map(|l| l.spreads.keys().copied().collect())
                .unwrap_or_default()
        };
        on_stack.insert(root, 0);
        stack.push((root, pending(root)));
        while let Some((name, todo)) = stack.last_mut() {
            let name = *name;
            match todo.pop() {
                Some(next) => {
                    if done.contains_key(next) || !locals.contains_key(next) {
                        continue;
                    }
                    if let Some(&at) = on_stack.get(next) {
                        let mut path: Vec<String> =
                            stack[at..].iter().map(|(n, _)| n.to_string()).collect();
                        path.push(next.to_string());
                        return Err(Refusal::Cycle(path));
                    }
                    on_stack.insert(next, stack.len());
                    stack.push((next, pending(next)));
                }
                None => {
                    if let Some(l) = locals.get(name) {
                        let e = expand(l, &done);
                        done.insert(name, e);
                    }
                    on_stack.remove(name);
                    stack.pop();
                }
            }
        }
    }

    let mut fields = done
        .values()
        .fold(0u64, |sum, e| sum.saturating_add(e.fields));
    let mut depth = done.values().map(|e| e.depth).max().unwrap_or(0);
    let mut introspection_only = true;
    for (_, op) in doc.operations.iter() {
        let e = expand(&local(&op.node.selection_set), &done);
        fields = fields.saturating_add(e.fields);
        depth = depth.max(e.depth);
        introspection_only &= op.node.ty == OperationType::Query && e.meta_top;
    }
    Ok(Shape {
        fields,
        introspection_only,
        depth_without_type_refs: depth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::parser::parse_query;

    fn shape(q: &str) -> Result<Shape, Refusal> {
        measure(&parse_query(q).expect("parses"))
    }

    /// `n` fragments, each spreading the next one `k` times, the last selecting `__typename`.
    pub fn fan_out(n: usize, k: usize) -> String {
        let mut q = String::from("query Attack { ...F0 }\n");
        for i in 0..n {
            let spreads = vec![format!("...F{}", i + 1); k].join(" ");
            q.push_str(&format!("fragment F{i} on Query {{ {spreads} }}\n"));
        }
        q.push_str(&format!("fragment F{n} on Query {{ __typename }}\n"));
        q
    }

    #[test]
    fn fields_aliases_and_inline_fragments_count_once_each() {
        // Five fields and an inline fragment.
        let s = shape("{ a: __typename b: __typename ... on Query { c: __typename } me { id } }")
            .expect("measured");
        assert_eq!(s.fields, 6);
        assert!(!s.introspection_only);
    }

    #[test]
    fn a_fragment_counts_where_it_is_spread_and_as_a_definition() {
        // The operation: `me`, two spreads, 2 * 2 fields = 7; the fragment on its own: 2.
        let s = shape("{ me { ...U ...U } } fragment U on User { id email }").expect("measured");
        assert_eq!(s.fields, 7 + 2);
    }

    #[test]
    fn every_operation_counts() {
        let s = shape("query A { me { id } } query B { me { id email } } query C { __typename }")
            .expect("measured");
        assert_eq!(s.fields, 2 + 3 + 1);
    }

    #[test]
    fn the_fan_out_attack_is_counted_exactly_without_expanding_it() {
        for n in [3usize, 14, 30] {
            let s = shape(&fan_out(n, 4)).expect("measured");
            // F_n is one field; F_i is four spreads of F_(i+1); the operation one spread of F_0.
            let mut size = vec![0u64; n + 1];
            size[n] = 1;
            for i in (0..n).rev() {
                size[i] = 4u64.saturating_add(4u64.saturating_mul(size[i + 1]));
            }
            let want = size
                .iter()
                .fold(1u64.saturating_add(size[0]), |a, b| a.saturating_add(*b));
            assert_eq!(s.fields, want, "n = {n}");
        }
        // A chain ending in an unknown fragment has no field, and 4^n spreads to walk.
        let empty = fan_out(14, 4).replace("{ __typename }", "{ ...Missing }");
        assert!(shape(&empty).expect("measured").fields > 4u64.pow(14));
        // 4^40 does not fit in a u64: the count saturates.
        assert_eq!(shape(&fan_out(40, 4)).expect("measured").fields, u64::MAX);
    }

    #[test]
    fn admit_refuses_past_the_budget_and_names_the_limit() {
        let limits = Limits {
            max_fields: 10_000,
            max_depth: 12,
        };
        let doc = parse_query(fan_out(14, 4)).expect("parses");
        let err = admit(&doc, limits).expect_err("refused");
        assert!(matches!(err, Refusal::TooLarge { limit: 10_000, .. }));
        let e = err.to_server_error();
        assert!(e.message.contains("10000"), "{}", e.message);
        let ext = serde_json::to_value(e.extensions.expect("extensions")).expect("json");
        assert_eq!(ext["code"], TOO_LARGE);
        assert_eq!(ext["limit"], 10_000);
        let small = parse_query(fan_out(5, 4)).expect("parses");
        assert!(admit(&small, limits).is_ok());
    }

    #[test]
    fn cycles_are_found_and_named() {
        let err = shape("{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }")
            .expect_err("cycle");
        match &err {
            Refusal::Cycle(path) => {
                assert_eq!(path.first(), path.last());
                assert_eq!(path.len(), 3, "{path:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_server_error().message.contains("within itself"));
        assert!(matches!(
            shape("{ ...A } fragment A on Query { __typename ...A ...A }"),
            Err(Refusal::Cycle(_))
        ));
        // A cycle among fragments no operation uses is still a cycle.
        assert!(matches!(
            shape("{ __typename } fragment A on Query { ... on Query { ...A } }"),
            Err(Refusal::Cycle(_))
        ));
    }

    /// A chain of 20,000 fragments: a recursive walk would overflow the stack of this test thread.
    #[test]
    fn a_long_chain_does_not_recurse() {
        let n = 20_000;
        let mut q = String::from("{ ...F0 }\n");
        for i in 0..n {
            q.push_str(&format!("fragment F{i} on Query {{ ...F{} }}\n", i + 1));
        }
        q.push_str(&format!("fragment F{n} on Query {{ __typename }}\n"));
        let s = shape(&q).expect("measured");
        // F_i is n - i spreads and the leaf; the operation one spread more than F_0. Validation
        // walks each definition expanded, hence the square.
        let n = n as u64;
        assert_eq!(s.fields, (n + 2) + (n + 1) * (n + 2) / 2);
        let mut cyclic = q.clone();
        cyclic.push_str("fragment Loop on Query { ...F0 }\n");
        cyclic = cyclic.replace(
            &format!("fragment F{n} on Query {{ __typename }}"),
            &format!("fragment F{n} on Query {{ ...Loop }}"),
        );
        assert!(matches!(shape(&cyclic), Err(Refusal::Cycle(_))));
    }

    #[test]
    fn an_unknown_fragment_is_its_spread_alone() {
        let s = shape("{ me { ...Missing id } }").expect("measured");
        assert_eq!(s.fields, 3);
    }

    #[test]
    fn introspection_documents_are_told_apart() {
        let q = include_str!("../../tests/fixtures/introspection-query.graphql");
        let s = shape(q).expect("measured");
        assert!(s.introspection_only);
        // __schema > types > fields > args > type > name; the nine `ofType` levels do not count.
        assert_eq!(s.depth_without_type_refs, 6);
        assert!(s.fields < 1_000, "{}", s.fields);
        assert!(shape("{ __typename }").expect("m").introspection_only);
        assert!(
            shape("{ ...M } fragment M on Query { __type(name: \"Task\") { name } }")
                .expect("m")
                .introspection_only
        );
        for q in [
            "{ __typename me { id } }",
            "{ ... on Query { me { id } } __schema { description } }",
            "query A { __typename } query B { me { id } }",
            "mutation { __typename }",
            "{ ...M } fragment M on Query { me { id } }",
        ] {
            assert!(!shape(q).expect("m").introspection_only, "{q}");
        }
    }

    #[test]
    fn an_introspection_document_is_held_to_the_depth_limit_outside_type_refs() {
        let limits = Limits {
            max_fields: 10_000,
            max_depth: 4,
        };
        // types > fields > type > fields > type: five levels that each fan out.
        let deep = "{ __schema { types { fields { type { fields { type { name } } } } } } }";
        assert_eq!(
            admit(&parse_query(deep).expect("p"), limits),
            Err(Refusal::TooDeep { limit: 4 })
        );
        let refs = "{ __type(name: \"Task\") { ofType { ofType { ofType { ofType { ofType { name } } } } } } }";
        assert!(admit(&parse_query(refs).expect("p"), limits).is_ok());
        // The library's limit holds ordinary documents; this one does not apply to them.
        let ordinary = "{ me { a: id b: id c: id } }";
        assert!(admit(&parse_query(ordinary).expect("p"), limits).is_ok());
    }
}
