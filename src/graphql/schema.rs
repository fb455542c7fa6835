//! Query, Mutation and Subscription roots. Resolvers translate arguments and call the service;
//! no business rule lives here.

use std::sync::Arc;

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Object, Subscription, ID};
use futures::stream::{Stream, StreamExt};

use super::error::GqlResultExt;
use super::types::{
    ApiKey, CreateImageTaskInput, CreateUserInput, CreatedApiKey, ImageModel, Task, TaskStatus,
    TotalCount, UpdateUserInput, User,
};
use super::webhooks::WebhookDelivery;
use crate::auth::Principal;
use crate::domain;
use crate::events::Channel;
use crate::service::{CreateImageTask, CreateUser, UpdateUser};
use crate::state::AppState;

pub type TaskConnection = Connection<String, Task, TotalCount>;
pub type UserConnection = Connection<String, User, TotalCount>;

fn ctx<'a>(c: &Context<'a>) -> async_graphql::Result<&'a AppState> {
    c.data::<AppState>()
}

/// The caller, put in every request's data by the HTTP and WebSocket handlers.
fn who<'a>(c: &Context<'a>) -> async_graphql::Result<&'a Principal> {
    c.data::<Principal>()
}

fn first(n: Option<i32>) -> Option<i64> {
    n.map(i64::from)
}

fn task(t: domain::Task) -> Task {
    Task(Arc::new(t))
}

/// A Relay connection over a service page; cursors are the items' ids.
fn connection<I, N: async_graphql::OutputType>(
    page: crate::service::Page<I>,
    after: &Option<String>,
    id: impl Fn(&I) -> String,
    node: impl Fn(I) -> N,
) -> Connection<String, N, TotalCount> {
    let mut conn = Connection::with_additional_fields(
        after.is_some(),
        page.has_more,
        TotalCount {
            total_count: page.total,
        },
    );
    conn.edges
        .extend(page.items.into_iter().map(|i| Edge::new(id(&i), node(i))));
    conn
}

pub struct Query;

/// Reads: users, tasks and the model catalogue.
#[Object]
impl Query {
    /// The user with this id (null if none).
    async fn user(&self, c: &Context<'_>, id: ID) -> async_graphql::Result<Option<User>> {
        Ok(ctx(c)?
            .service
            .find_user(who(c)?, &id)
            .await
            .gql()?
            .map(User))
    }

    /// The user with this email, compared regardless of case (null if none).
    async fn user_by_email(
        &self,
        c: &Context<'_>,
        email: String,
    ) -> async_graphql::Result<Option<User>> {
        Ok(ctx(c)?
            .service
            .user_by_email(who(c)?, &email)
            .await
            .gql()?
            .map(User))
    }

    /// All users, in creation order.
    async fn users(
        &self,
        c: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<UserConnection> {
        let page = ctx(c)?
            .service
            .list_users(who(c)?, after.as_deref(), self::first(first))
            .await
            .gql()?;
        Ok(connection(page, &after, |u| u.id.clone(), User))
    }

    /// The user the request's API key belongs to (null for the admin key, and without auth).
    async fn me(&self, c: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let who = who(c)?;
        match who.user_id() {
            None => Ok(None),
            Some(id) => Ok(ctx(c)?.service.find_user(who, id).await.gql()?.map(User)),
        }
    }

    /// The task with this id (null if none).
    async fn task(&self, c: &Context<'_>, id: ID) -> async_graphql::Result<Option<Task>> {
        Ok(ctx(c)?
            .service
            .poll_task(who(c)?, &id)
            .await
            .gql()?
            .map(task))
    }

    /// Tasks, newest first.
    async fn tasks(
        &self,
        c: &Context<'_>,
        user_id: Option<ID>,
        status: Option<TaskStatus>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<TaskConnection> {
        let page = ctx(c)?
            .service
            .list_tasks(
                who(c)?,
                user_id.as_ref().map(|u| u.0.as_str()),
                status.map(Into::into),
                after.as_deref(),
                0,
                self::first(first),
            )
            .await
            .gql()?;
        Ok(connection(page, &after, |t| t.id.clone(), task))
    }

    /// API keys of `userId` (admin), or of the caller's own user (user key).
    async fn api_keys(
        &self,
        c: &Context<'_>,
        user_id: Option<ID>,
    ) -> async_graphql::Result<Vec<ApiKey>> {
        let keys = ctx(c)?
            .service
            .list_api_keys(who(c)?, user_id.as_ref().map(|u| u.0.as_str()))
            .await
            .gql()?;
        Ok(keys.into_iter().map(ApiKey).collect())
    }

    /// Models that can be asked for, with their limits.
    async fn image_models(&self, c: &Context<'_>) -> async_graphql::Result<Vec<ImageModel>> {
        Ok(ctx(c)?
            .service
            .catalog()
            .all()
            .iter()
            .cloned()
            .map(ImageModel)
            .collect())
    }

    /// Video models that can be asked for (`createVideoTask`), with what each accepts.
    async fn video_models(
        &self,
        c: &Context<'_>,
    ) -> async_graphql::Result<Vec<super::video::VideoModel>> {
        Ok(ctx(c)?
            .service
            .video_catalog()
            .all()
            .iter()
            .map(super::video::VideoModel::of)
            .collect())
    }
}

pub struct Mutation;

/// Changes: users and tasks.
#[Object]
impl Mutation {
    /// Creates a user; the email must be unused (`CONFLICT` otherwise).
    async fn create_user(
        &self,
        c: &Context<'_>,
        input: CreateUserInput,
    ) -> async_graphql::Result<User> {
        let u = ctx(c)?
            .service
            .create_user(
                who(c)?,
                CreateUser {
                    email: input.email,
                    name: input.name,
                },
            )
            .await
            .gql()?;
        Ok(User(u))
    }

    /// Changes a user's name and/or email (the email only with the admin key: a user key gets
    /// `FORBIDDEN` whatever the address, so it cannot probe which ones are taken).
    async fn update_user(
        &self,
        c: &Context<'_>,
        id: ID,
        input: UpdateUserInput,
    ) -> async_graphql::Result<User> {
        let u = ctx(c)?
            .service
            .update_user(
                who(c)?,
                &id,
                UpdateUser {
                    email: input.email,
                    name: input.name,
                },
            )
            .await
            .gql()?;
        Ok(User(u))
    }

    /// Deletes the user with its tasks and images.
    async fn delete_user(&self, c: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        ctx(c)?.service.delete_user(who(c)?, &id).await.gql()?;
        Ok(true)
    }

    /// Submits a prompt; answers at once with the `PENDING` task (`SCHEDULED` with
    /// `delaySeconds` or `runAt`). Follow it with `taskUpdated`.
    async fn create_image_task(
        &self,
        c: &Context<'_>,
        input: CreateImageTaskInput,
    ) -> async_graphql::Result<Task> {
        let (t, _) = ctx(c)?
            .service
            .create_image_task(
                who(c)?,
                CreateImageTask {
                    user_id: input.user_id.map(|i| i.0),
                    prompt: input.prompt,
                    model: input.model,
                    size: input.size,
                    seed: input.seed,
                    guidance_scale: input.guidance_scale,
                    watermark: input.watermark,
                    images: input.images.unwrap_or_default(),
                    n: input.n,
                    quality: None,
                    style: None,
                    options: None,
                    delay: input.delay_seconds,
                    run_at: input.run_at.map(crate::domain::rfc3339),
                    deadline_seconds: input.deadline_seconds,
                    idempotency_key: input.idempotency_key,
                    webhook: input.webhook,
                    webhook_events_filter: input
                        .webhook_events_filter
                        .map(|f| f.into_iter().map(|e| e.filter_name()).collect()),
                    opaque_owner: false,
                },
            )
            .await
            .gql()?;
        Ok(task(t))
    }

    /// Submits a Seedance video task (text to video, or first / first and last frame); every
    /// parameter is checked against the model first. Answers at once with the `PENDING` task;
    /// once `COMPLETED`, `result.videoUrl` is the MP4 stored here.
    async fn create_video_task(
        &self,
        c: &Context<'_>,
        input: super::video::CreateVideoTaskInput,
    ) -> async_graphql::Result<Task> {
        let (t, _) = ctx(c)?
            .service
            .create_video_task(who(c)?, input.into())
            .await
            .gql()?;
        Ok(task(t))
    }

    /// Cancels a scheduled, pending or processing task.
    async fn cancel_task(&self, c: &Context<'_>, id: ID) -> async_graphql::Result<Task> {
        Ok(task(ctx(c)?.service.cancel_task(who(c)?, &id).await.gql()?))
    }

    /// Runs a failed or cancelled task again.
    async fn retry_task(&self, c: &Context<'_>, id: ID) -> async_graphql::Result<Task> {
        Ok(task(ctx(c)?.service.retry_task(who(c)?, &id).await.gql()?))
    }

    /// Sends a webhook event of the task again under the same `webhook-id`, from a fresh retry
    /// schedule: `deliveryId`, or the task's newest event. One being attempted right now is
    /// left to that attempt. The owner or the admin only (another user's task is `NOT_FOUND`).
    async fn redeliver_webhook(
        &self,
        c: &Context<'_>,
        task_id: ID,
        delivery_id: Option<ID>,
    ) -> async_graphql::Result<WebhookDelivery> {
        let d = ctx(c)?
            .service
            .redeliver_webhook(
                who(c)?,
                &task_id,
                delivery_id.as_ref().map(|i| i.0.as_str()),
            )
            .await
            .gql()?;
        Ok((&d).into())
    }

    /// Deletes a finished task and its stored images.
    async fn delete_task(&self, c: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        ctx(c)?.service.delete_task(who(c)?, &id).await.gql()?;
        Ok(true)
    }

    /// Makes an API key for a user (admin only). The answer holds the secret, once.
    async fn create_api_key(
        &self,
        c: &Context<'_>,
        user_id: ID,
        name: Option<String>,
    ) -> async_graphql::Result<CreatedApiKey> {
        let (key, secret) = ctx(c)?
            .service
            .create_api_key(who(c)?, &user_id, name.as_deref())
            .await
            .gql()?;
        Ok(CreatedApiKey {
            key: secret,
            api_key: ApiKey(key),
        })
    }

    /// Revokes a key: the admin any key, a user its own. Requests with it fail from then on.
    async fn revoke_api_key(&self, c: &Context<'_>, id: ID) -> async_graphql::Result<ApiKey> {
        let key = ctx(c)?.service.revoke_api_key(who(c)?, &id).await.gql()?;
        Ok(ApiKey(key))
    }
}

pub struct Subscription;

/// Live task updates over WebSocket (`/graphql/ws`).
#[Subscription]
impl Subscription {
    /// The task's current state first, then every newer version in order; completes after a
    /// terminal state.
    async fn task_updated(
        &self,
        c: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<impl Stream<Item = Task>> {
        let ctx = ctx(c)?.clone();
        let who = who(c)?;
        crate::service::check_id("id", &id).gql()?;
        let slot = super::ws::SubscriptionSlot::take(c).gql()?;
        // Listen first, then read: an update between the two is then seen, never lost.
        let events = ctx
            .service
            .subscribe(crate::events::Channel::Task(id.0.clone()))
            .await
            .gql()?;
        // Someone else's task is answered as missing: nothing of it is ever sent.
        let snapshot = ctx.service.get_task(who, &id).await.gql()?;
        let open = (
            crate::observability::GaugeGuard::new("graphql_subscriptions"),
            slot,
        );
        Ok(super::follow::follow(
            ctx.service.clone(),
            snapshot,
            events,
            ctx.config.subscription_resync,
        )
        .map(move |t| {
            let _ = &open;
            t
        }))
    }

    /// Every change of the caller's tasks; the admin names a user with `userId` or, leaving it
    /// out, follows all users' tasks.
    async fn tasks_updated(
        &self,
        c: &Context<'_>,
        user_id: Option<ID>,
    ) -> async_graphql::Result<impl Stream<Item = Task>> {
        let ctx = ctx(c)?.clone();
        let scope = ctx
            .service
            .task_scope(who(c)?, user_id.as_ref().map(|u| u.0.as_str()))
            .gql()?;
        let slot = super::ws::SubscriptionSlot::take(c).gql()?;
        let events = ctx
            .service
            .subscribe(Channel::tasks_of(scope.as_deref()))
            .await
            .gql()?;
        let open = (
            crate::observability::GaugeGuard::new("graphql_subscriptions"),
            slot,
        );
        Ok(super::follow::follow_tasks(
            ctx.service.clone(),
            scope,
            events,
            ctx.config.subscription_resync,
        )
        .map(move |t| {
            let _ = &open;
            t
        }))
    }
}
