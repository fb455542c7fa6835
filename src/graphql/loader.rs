//! The DataLoader behind `Task.user`: the users of a page of tasks in one store read.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;

use crate::domain::User;
use crate::service::Service;

/// Batches `Task.user` lookups: a page of tasks costs one store query.
pub struct UserLoader(pub Arc<Service>);

impl Loader<String> for UserLoader {
    type Value = User;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, User>, Self::Error> {
        let users = self
            .0
            .users_by_id(keys)
            .await
            .map_err(super::error::to_gql)?;
        Ok(users.into_iter().map(|u| (u.id.clone(), u)).collect())
    }
}
