//! A cache of parsed GraphQL documents. Clients send the same few documents over and over (a
//! poll, a submit) with different variables; parsing one with async-graphql's pest grammar was a
//! fifth of the CPU of a `task(id)` poll. Validation, limits and execution still run on every
//! request: only the text-to-document step is skipped.
//!
//! The parsed document is handed to the request itself (`Request::set_parsed_query`), not through
//! an async-graphql extension: with any extension registered, every field of every response
//! (each subscription message too) goes through the extension chain and formats its type names.

use std::collections::HashMap;
use std::sync::Mutex;

use async_graphql::parser::types::ExecutableDocument;

/// Documents kept; when full the cache starts over (clients use a handful of documents, so a
/// full cache means someone sends generated ones, which a cache cannot help with anyway).
const MAX_DOCUMENTS: usize = 512;
/// Longer documents are parsed every time rather than kept.
const MAX_QUERY_BYTES: usize = 16 * 1024;

#[derive(Default)]
pub struct ParseCache {
    docs: Mutex<HashMap<String, ExecutableDocument>>,
}

impl ParseCache {
    /// Gives `req` its parsed document, from the cache or parsed now and kept. A document that
    /// does not parse is left to the execution, which reports the syntax error (and is not
    /// kept: a bad document costs its sender a parse each time).
    pub fn prepare(&self, req: &mut async_graphql::Request) {
        let cached = self
            .docs
            .lock()
            .ok()
            .and_then(|d| d.get(&req.query).cloned());
        if let Some(doc) = cached {
            req.set_parsed_query(doc);
            return;
        }
        if req.query.len() > MAX_QUERY_BYTES {
            return;
        }
        let Ok(doc) = req.parsed_query().cloned() else {
            return;
        };
        if let Ok(mut docs) = self.docs.lock() {
            if docs.len() >= MAX_DOCUMENTS {
                docs.clear();
            }
            docs.insert(req.query.clone(), doc);
        }
    }
}
