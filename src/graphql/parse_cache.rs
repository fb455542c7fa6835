//! A cache of parsed GraphQL documents. Clients send the same few documents over and over (a
//! poll, a submit) with different variables; parsing one with async-graphql's pest grammar was a
//! fifth of the CPU of a `task(id)` poll. Each document also remembers whether it passed strict
//! validation once: then only what depends on the request (its variables, see `inputs.rs`; the
//! limits) is checked again.
//!
//! Every document is measured here too (`budget.rs`) before anything validates or runs it: a
//! document whose expansion passes the budget is refused, whether it came from the cache or not,
//! and the verdict is kept with the cached document.
//!
//! The parsed document is handed to the request itself (`Request::set_parsed_query`), not through
//! an async-graphql extension: with any extension registered, every field of every response
//! (each subscription message too) goes through the extension chain and formats its type names.

use std::collections::HashMap;
use std::sync::Mutex;

use async_graphql::parser::types::ExecutableDocument;
use async_graphql::ServerError;

use super::budget::{self, Limits, Shape};
use super::inputs::InputCheck;

/// Bytes of documents kept, their parsed trees included (`weight`); when full the cache starts
/// over (clients use a handful of documents, so a full cache means someone sends generated ones,
/// which a cache cannot help with anyway). Bounded by count before (512 documents of up to
/// 16 KiB), it could hold about 850 MB of trees.
const MAX_CACHE_BYTES: usize = 16 << 20;
/// Longer documents are parsed every time rather than kept.
const MAX_QUERY_BYTES: usize = 16 * 1024;
/// A parsed tree's size in bytes per byte of the document's text, at most: measured 15 for
/// aliased `__typename`s, 31–38 for a poll, a submit or a fragment chain, 52 with arguments,
/// 63 for nested selections and 120 for one-letter fields (about 240 bytes a field).
const TREE_BYTES_PER_BYTE: usize = 128;

pub struct ParseCache {
    docs: Mutex<Docs>,
    inputs: InputCheck,
    limits: Limits,
}

#[derive(Default)]
struct Docs {
    by_query: HashMap<String, Known>,
    /// Sum of the kept documents' `weight`.
    bytes: usize,
}

/// What a kept document costs: its text (the key) and its tree (an upper estimate from the
/// text's length: the tree is not measured, it is a foreign type).
fn weight(query: &str) -> usize {
    query.len() * (1 + TREE_BYTES_PER_BYTE)
}

struct Known {
    /// The document, or why it is refused (a refused document's tree is not kept).
    doc: Result<(ExecutableDocument, Shape), ServerError>,
    /// Passed strict validation (with some variables: it never depends on which).
    validated: bool,
}

/// What `prepare` found out about a request that may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    pub validation: Validation,
    /// Every operation of the document is introspection (`budget::Shape::introspection_only`):
    /// it runs on the schema that measures it by its own depth rule.
    pub introspection: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// The document passed strict validation before and these variables pass `InputCheck`:
    /// the request may skip the document's rules.
    Done,
    /// Everything is validated (a new document, or variables the check refuses or cannot tell).
    Needed,
}

impl ParseCache {
    pub fn new(inputs: InputCheck, limits: Limits) -> ParseCache {
        ParseCache {
            docs: Mutex::default(),
            inputs,
            limits,
        }
    }

    /// Gives `req` its parsed document, from the cache or parsed now and kept, measures it
    /// against the budget and tells whether its validation is done. `Err` is the refusal to send
    /// instead of running it. A document that does not parse is left to the execution, which
    /// reports the syntax error (and is not kept: a bad document costs its sender a parse each
    /// time).
    pub fn prepare(&self, req: &mut async_graphql::Request) -> Result<Prepared, ServerError> {
        let cached = self.docs.lock().ok().and_then(|d| {
            d.by_query.get(&req.query).map(|k| match &k.doc {
                Ok((doc, shape)) => Ok((doc.clone(), *shape, k.validated)),
                Err(e) => Err(e.clone()),
            })
        });
        if let Some(known) = cached {
            let (doc, shape, validated) = known?;
            let done = validated
                && self
                    .inputs
                    .accepts(&doc, req.operation_name.as_deref(), &req.variables);
            req.set_parsed_query(doc);
            return Ok(Prepared {
                validation: if done {
                    Validation::Done
                } else {
                    Validation::Needed
                },
                introspection: shape.introspection_only,
            });
        }
        let key = (req.query.len() <= MAX_QUERY_BYTES).then(|| req.query.clone());
        let Ok(doc) = req.parsed_query() else {
            return Ok(Prepared {
                validation: Validation::Needed,
                introspection: false,
            });
        };
        let verdict = budget::admit(doc, self.limits).map_err(|r| {
            tracing::info!(refusal = ?r, "GraphQL document refused before validation");
            r.to_server_error()
        });
        if let Some(key) = key {
            let kept = match &verdict {
                Ok(shape) => Ok((doc.clone(), *shape)),
                Err(e) => Err(e.clone()),
            };
            if let Ok(mut docs) = self.docs.lock() {
                let w = weight(&key);
                if docs.bytes + w > MAX_CACHE_BYTES {
                    *docs = Docs::default();
                }
                let known = Known {
                    doc: kept,
                    validated: false,
                };
                if docs.by_query.insert(key, known).is_none() {
                    docs.bytes += w;
                }
            }
        }
        let shape = verdict?;
        Ok(Prepared {
            validation: Validation::Needed,
            introspection: shape.introspection_only,
        })
    }

    /// Records that `query` passed strict validation.
    pub fn validated(&self, query: &str) {
        if let Some(k) = self
            .docs
            .lock()
            .ok()
            .as_mut()
            .and_then(|d| d.by_query.get_mut(query))
        {
            k.validated = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max_fields: u64) -> ParseCache {
        ParseCache::new(
            InputCheck::default(),
            Limits {
                max_fields,
                max_depth: 12,
            },
        )
    }

    #[test]
    fn a_document_over_the_budget_is_refused_every_time_and_kept_as_a_refusal() {
        let c = cache(10);
        let q = "{ a: __typename b: __typename c: __typename d: __typename e: __typename \
                 f: __typename g: __typename h: __typename i: __typename j: __typename k: __typename }";
        for _ in 0..3 {
            let mut req = async_graphql::Request::new(q);
            let err = c.prepare(&mut req).expect_err("refused");
            assert!(err.message.contains("limit of 10"), "{}", err.message);
        }
        let docs = c.docs.lock().expect("lock");
        assert!(docs.by_query.get(q).is_some_and(|k| k.doc.is_err()));
    }

    #[test]
    fn a_long_document_is_measured_though_it_is_not_kept() {
        let c = cache(10);
        let q = format!("{{ {} }}", "__typename ".repeat(MAX_QUERY_BYTES / 10));
        let mut req = async_graphql::Request::new(q.clone());
        assert!(c.prepare(&mut req).is_err());
        assert!(!c.docs.lock().expect("lock").by_query.contains_key(&q));
    }

    #[test]
    fn a_validated_document_skips_validation_unless_it_is_introspection() {
        let c = cache(1_000);
        let q = "{ __typename }";
        let mut req = async_graphql::Request::new(q);
        let p = c.prepare(&mut req).expect("admitted");
        assert_eq!(p.validation, Validation::Needed);
        assert!(p.introspection);
        c.validated(q);
        let mut req = async_graphql::Request::new(q);
        let p = c.prepare(&mut req).expect("admitted");
        assert_eq!(p.validation, Validation::Done);
        assert!(
            p.introspection,
            "introspection is routed by its shape, not by the cache"
        );
        // A document that does not parse is left to the execution.
        let mut req = async_graphql::Request::new("{");
        assert_eq!(
            c.prepare(&mut req).expect("left to execution").validation,
            Validation::Needed
        );
    }
    /// Distinct documents just under the length kept, each with thousands of one-letter fields
    /// (the heaviest tree per byte): by count, 512 of them were kept.
    #[test]
    fn kept_documents_stay_within_the_byte_bound() {
        let c = cache(10_000);
        let fields = "a ".repeat(MAX_QUERY_BYTES / 2 - 16);
        let mut kept_most = 0;
        for i in 0..64 {
            let q = format!("{{ b{i}: a {fields}}}");
            assert!(q.len() <= MAX_QUERY_BYTES);
            let _ = c.prepare(&mut async_graphql::Request::new(q));
            let docs = c.docs.lock().expect("lock");
            assert!(docs.bytes <= MAX_CACHE_BYTES, "{} bytes kept", docs.bytes);
            kept_most = kept_most.max(docs.by_query.len());
        }
        assert!(
            (1..64).contains(&kept_most),
            "{kept_most} documents were kept at once"
        );
    }
}
