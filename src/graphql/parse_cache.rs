//! A cache of parsed GraphQL documents. Clients send the same few documents over and over (a
//! poll, a submit) with different variables; parsing one with async-graphql's pest grammar was a
//! fifth of the CPU of a `task(id)` poll. Validation, limits and execution still run on every
//! request: only the text-to-document step is skipped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{ServerResult, Variables};

/// Documents kept; when full the cache starts over (clients use a handful of documents, so a
/// full cache means someone sends generated ones, which a cache cannot help with anyway).
const MAX_DOCUMENTS: usize = 512;
/// Longer documents are parsed every time rather than kept.
const MAX_QUERY_BYTES: usize = 16 * 1024;

#[derive(Default)]
pub struct ParseCache {
    docs: Arc<Mutex<HashMap<String, ExecutableDocument>>>,
}

impl ExtensionFactory for ParseCache {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ParseCacheExtension {
            docs: self.docs.clone(),
        })
    }
}

struct ParseCacheExtension {
    docs: Arc<Mutex<HashMap<String, ExecutableDocument>>>,
}

#[async_trait::async_trait]
impl Extension for ParseCacheExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        if let Some(doc) = self.docs.lock().ok().and_then(|d| d.get(query).cloned()) {
            return Ok(doc);
        }
        // Errors are not kept: a bad document costs its sender a parse each time.
        let doc = next.run(ctx, query, variables).await?;
        if query.len() <= MAX_QUERY_BYTES {
            if let Ok(mut docs) = self.docs.lock() {
                if docs.len() >= MAX_DOCUMENTS {
                    docs.clear();
                }
                docs.insert(query.to_string(), doc.clone());
            }
        }
        Ok(doc)
    }
}
