//! A cache of parsed GraphQL documents. Clients send the same few documents over and over (a
//! poll, a submit) with different variables; parsing one with async-graphql's pest grammar was a
//! fifth of the CPU of a `task(id)` poll. Each document also remembers whether it passed strict
//! validation once: then only what depends on the request (its variables, see `inputs.rs`; the
//! limits) is checked again.
//!
//! The parsed document is handed to the request itself (`Request::set_parsed_query`), not through
//! an async-graphql extension: with any extension registered, every field of every response
//! (each subscription message too) goes through the extension chain and formats its type names.

use std::collections::HashMap;
use std::sync::Mutex;

use async_graphql::parser::types::ExecutableDocument;

use super::inputs::InputCheck;

/// Documents kept; when full the cache starts over (clients use a handful of documents, so a
/// full cache means someone sends generated ones, which a cache cannot help with anyway).
const MAX_DOCUMENTS: usize = 512;
/// Longer documents are parsed every time rather than kept.
const MAX_QUERY_BYTES: usize = 16 * 1024;

#[derive(Default)]
pub struct ParseCache {
    docs: Mutex<HashMap<String, Known>>,
    inputs: InputCheck,
}

struct Known {
    doc: ExecutableDocument,
    /// Passed strict validation (with some variables: it never depends on which).
    validated: bool,
}

/// What `prepare` found out about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// The document passed strict validation before and these variables pass `InputCheck`:
    /// the request may skip the document's rules.
    Done,
    /// Everything is validated (a new document, or variables the check refuses or cannot tell).
    Needed,
}

impl ParseCache {
    pub fn new(inputs: InputCheck) -> ParseCache {
        ParseCache {
            docs: Mutex::default(),
            inputs,
        }
    }

    /// Gives `req` its parsed document, from the cache or parsed now and kept, and tells whether
    /// its validation is done. A document that does not parse is left to the execution, which
    /// reports the syntax error (and is not kept: a bad document costs its sender a parse each
    /// time).
    pub fn prepare(&self, req: &mut async_graphql::Request) -> Validation {
        let cached = self
            .docs
            .lock()
            .ok()
            .and_then(|d| d.get(&req.query).map(|k| (k.doc.clone(), k.validated)));
        if let Some((doc, validated)) = cached {
            let done = validated
                && self
                    .inputs
                    .accepts(&doc, req.operation_name.as_deref(), &req.variables);
            req.set_parsed_query(doc);
            return if done {
                Validation::Done
            } else {
                Validation::Needed
            };
        }
        if req.query.len() > MAX_QUERY_BYTES {
            return Validation::Needed;
        }
        let Ok(doc) = req.parsed_query().cloned() else {
            return Validation::Needed;
        };
        if let Ok(mut docs) = self.docs.lock() {
            if docs.len() >= MAX_DOCUMENTS {
                docs.clear();
            }
            docs.insert(
                req.query.clone(),
                Known {
                    doc,
                    validated: false,
                },
            );
        }
        Validation::Needed
    }

    /// Records that `query` passed strict validation.
    pub fn validated(&self, query: &str) {
        if let Some(k) = self
            .docs
            .lock()
            .ok()
            .as_mut()
            .and_then(|d| d.get_mut(query))
        {
            k.validated = true;
        }
    }
}
