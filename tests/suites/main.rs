//! The black-box suites, one module each, in ONE test binary.
//!
//! Each file under `tests/` is its own binary that links the whole server (about 100 MB in a
//! debug build); at 25 of them, built once per backend, a fresh `scripts/test` outgrew the CI
//! machine's disk. So the suites are modules here, selected by name:
//! `cargo test --test suites -- rest::` runs one suite, `-- rest:: graphql::` two.
//! Only the suites that read process-global state (the metrics recorder, the allocator's
//! numbers) keep a binary of their own: `tests/metrics.rs`, `tests/memory.rs`.
//!
//! The suites that need MongoDB and Redis (`distributed::`, `store_contract::mongo…`) read
//! `TEST_MONGO_URL` and `TEST_REDIS_URL` and fail without them; `scripts/test` skips them in its
//! embedded pass and runs them once it has started both services. Every other suite runs on the
//! embedded default, or on MongoDB + Redis when `TEST_BACKEND=distributed` (see `common`).

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod cli;
mod connections;
mod deadlines;
mod distributed;
mod durability;
mod emulator;
mod fuzz;
mod graphql;
mod graphql_safety;
mod jimeng;
mod layers;
mod openai;
mod openapi;
mod provider;
mod push;
mod queue_position;
mod rest;
mod rest_compat;
mod scheduling;
mod secrets;
mod store_contract;
mod usage;
mod video;
mod webhooks;
