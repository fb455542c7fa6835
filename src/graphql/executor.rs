//! Which schema runs a document, the same for HTTP and for both WebSocket subprotocols: every
//! document goes through `ParseCache::prepare` first (the expansion budget, and the shape that
//! routes it), and is refused there before any validation when it is too large.
//!
//! Introspection documents run on a schema of their own (`Schemas::introspection`): the library's
//! depth limit would refuse graphql-js's `getIntrospectionQuery()` (nine levels of `ofType`), so
//! that schema has none, and `budget.rs` holds such documents to `GRAPHQL_MAX_DEPTH` with `ofType`
//! not counted. They reach no resolver of ours (only the schema's own description), and the
//! expansion budget and the complexity limit hold them like any other document.

use std::sync::Arc;

use async_graphql::{Data, Executor, Request, Response};
use futures::stream::{BoxStream, StreamExt};

use super::parse_cache::{ParseCache, Prepared, Validation};
use super::{AppSchema, Schemas};

/// The schema for a prepared document; `true` when it is strictly validated for the first time
/// (the caller marks it validated once it passed).
pub fn schema_for(schemas: &Schemas, p: Prepared) -> (&AppSchema, bool) {
    if p.introspection {
        return (&schemas.introspection, false);
    }
    match p.validation {
        Validation::Done => (&schemas.checked, false),
        Validation::Needed => (&schemas.strict, true),
    }
}

/// The executor a WebSocket session runs its operations with: `prepare` (budget, routing), then
/// the strict or the introspection schema. Subscriptions are long-lived, so their one validation
/// is not worth skipping.
#[derive(Clone)]
pub struct Guarded {
    pub schemas: Arc<Schemas>,
    pub documents: Arc<ParseCache>,
}

impl Guarded {
    fn pick(&self, req: &mut Request) -> Result<&AppSchema, async_graphql::ServerError> {
        let p = self.documents.prepare(req)?;
        Ok(if p.introspection {
            &self.schemas.introspection
        } else {
            &self.schemas.strict
        })
    }
}

impl Executor for Guarded {
    async fn execute(&self, mut request: Request) -> Response {
        match self.pick(&mut request) {
            Ok(schema) => schema.execute(request).await,
            Err(e) => Response::from_errors(vec![e]),
        }
    }

    fn execute_stream(
        &self,
        mut request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        match self.pick(&mut request) {
            Ok(schema) => {
                schema.execute_stream_with_session_data(request, session_data.unwrap_or_default())
            }
            Err(e) => futures::stream::once(async move { Response::from_errors(vec![e]) }).boxed(),
        }
    }
}
