//! volcengine-ai-server: a reliable asynchronous task API over Volcengine's Seedream image
//! generation. See `docs/architecture.md` for the design and `README.md` to run it.

pub mod app;
pub mod auth;
pub mod banner;
pub mod cache;
pub mod config;
pub mod console;

pub mod domain;
pub mod emulator;
pub mod error;
pub mod events;
pub mod graphql;
pub mod http;
pub mod observability;
pub mod openai;
pub mod provider;
pub mod queue;
pub mod rest;
pub mod service;
pub mod state;
pub mod store;
pub mod sys;
pub mod worker;
