//! The `Store` contract: every rule of the trait (`src/store/mod.rs`), written once and run
//! against each implementation, as atuin's `tests-database` does for its backends. It is what lets
//! the embedded store, MongoDB, FerretDB, and the next backend be trusted to mean the same thing.
//!
//! Each test is one story over a fresh, empty store: `sqlite::<name>` on a temp data folder, and
//! `mongo::<name>` on a database of its own at `TEST_MONGO_URL` (set by `scripts/test`, which
//! starts FerretDB; without it the `mongo::` tests fail, and the embedded pass skips them). Ids are UUIDv7 with chosen
//! times, so "oldest first" and "newest first" are known in advance, and rows are inserted out of
//! that order so a backend returning insertion order cannot pass.

mod fixtures;
mod idempotency;
mod keys_and_images;
mod listings;
mod mongo_only;
mod tasks;
mod users;
mod webhooks;

/// One test per rule and backend: `sqlite::name` and `mongo::name`. Each
/// runs `module::name(store)` on a store of its own.
macro_rules! contract {
    ($($module:ident: [$($name:ident)*])*) => {
        mod sqlite {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    use volcengine_ai_server::config::SyncMode;
                    use volcengine_ai_server::store::{sqlite::SqliteStore, TaskCacheBounds};
                    let dir = tempfile::tempdir().expect("temp dir");
                    let cache = TaskCacheBounds { tasks: 1000, bytes: 1 << 20 };
                    let store = SqliteStore::open(dir.path(), SyncMode::Normal, cache)
                        .expect("open the embedded store");
                    super::$module::$name(std::sync::Arc::new(store)).await;
                }
            )*)*
        }

                mod mongo {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::mongo_backend::Database::fresh().await;
                    super::$module::$name(db.store.clone()).await;
                    db.drop().await;
                }
            )*)*
        }
    };
}

contract! {
    users: [
        kind_and_ping_answer
        users_round_trip_and_are_found_by_id_and_by_email_in_any_case
        a_taken_email_is_refused_on_insert_whatever_its_case
        a_user_id_is_stored_once
        a_taken_email_is_refused_on_update_and_a_changed_email_frees_the_old_one
        users_are_listed_in_id_order_after_a_cursor_and_counted
        deleting_a_user_deletes_its_tasks_images_keys_and_idempotency_keys
    ]
    tasks: [
        a_task_round_trips_with_every_field
        client_options_round_trip_whatever_their_keys_and_numbers
        a_task_id_is_stored_once
        replace_task_is_a_compare_and_set_on_version_and_status
        concurrent_writers_of_one_version_have_exactly_one_winner
        a_lease_is_extended_only_by_its_owner_while_processing
        heartbeats_racing_a_state_change_never_undo_it
    ]
    listings: [
        due_tasks_are_pending_ones_due_and_processing_ones_with_lapsed_leases_oldest_first
        oldest_pending_and_processing_tasks_in_creation_order
        pending_queue_numbers_span_the_pending_tasks_only
        tasks_are_listed_newest_first_by_user_status_cursor_offset_and_limit
        counts_follow_every_change
        tasks_changed_reads_changes_in_order_after_a_cursor
        a_limit_bounds_every_listing_and_zero_reads_nothing
        scheduled_tasks_are_due_from_their_start_earliest_first
        active_tasks_and_their_images_count_scheduled_pending_and_processing
        unfinished_tasks_are_past_their_deadline_from_it_on
    ]
    idempotency: [
        an_idempotency_key_belongs_to_one_user
        a_released_idempotency_key_is_taken_by_the_next_task
        concurrent_inserts_under_one_key_store_one_task
        a_refused_insert_leaves_its_idempotency_key_free
        deleting_a_task_deletes_its_images_and_frees_its_key
    ]
    keys_and_images: [
        api_keys_round_trip_are_found_by_hash_and_listed_oldest_first
        revoking_a_key_is_idempotent_and_keeps_the_first_time
        touching_a_key_records_its_use_and_never_undoes_a_revocation
        images_are_stored_read_and_deleted_byte_for_byte
        an_image_put_again_under_its_id_is_replaced
    ]
    webhooks: [
        webhook_events_are_stored_with_their_change_and_claimed_by_one_at_a_time
        a_claim_is_renewed_by_its_holder_and_redelivery_spares_an_attempt_in_flight
    ]
}

mod mongo_backend {
    use std::sync::Arc;
    use std::time::Duration;

    use volcengine_ai_server::store::mongo::{MongoOptions, MongoStore};

    pub struct Database {
        pub store: super::fixtures::S,
        url: String,
        name: String,
    }

    impl Database {
        /// A database no other test uses, on the server at `TEST_MONGO_URL`.
        pub async fn fresh() -> Database {
            let url = std::env::var("TEST_MONGO_URL").expect(
                "the MongoDB contract tests need TEST_MONGO_URL (scripts/test starts FerretDB)",
            );
            let name = format!("contract{}", uuid::Uuid::new_v4().simple());
            let store = MongoStore::connect(MongoOptions {
                url: &url,
                database: &name,
                majority_writes: false,
                timeout: Duration::from_secs(30),
                // As in production: on FerretDB, task writes take lock documents.
                write_locks: None,
            })
            .await
            .expect("connect to TEST_MONGO_URL");
            Database {
                store: Arc::new(store),
                url,
                name,
            }
        }

        /// The test's database, for what the store does not say.
        pub async fn raw(&self) -> mongodb::Database {
            mongodb::Client::with_uri_str(&self.url)
                .await
                .expect("client")
                .database(&self.name)
        }

        /// Drops the database of a test that passed (a failed one keeps it to look at).
        pub async fn drop(self) {
            self.raw()
                .await
                .drop()
                .await
                .expect("drop the test database");
        }
    }
}
