//! The spare buyer gateway: an OpenAI-compatible HTTP server on loopback that sends each
//! request to a provider on the spare network and relays the response.
//!
//! - [`server`]: routes, the origin and API key checks, and [`serve`], the entry point.
//! - [`chat`](crate::chat): `POST /v1/chat/completions` and failover (start here).
//! - [`relay`](crate::relay): relaying a provider's response as events or one completion.
//! - [`select`]: finding and ranking the providers of a model.
//! - [`provider`]: the buyer side of one `/spare/infer/1` stream and its frame checks.
//! - [`reputation`]: per-provider numbers in memory and in redb.
//! - [`aggregate`]: turning streamed chunks into one `chat.completion`.
//! - [`api_key`]: the local API key.
//!
//! All HTTP errors are mapped to OpenAI's error body in one place, `error::ApiError`.

pub mod aggregate;
pub mod api_key;
mod chat;
pub mod config;
mod error;
pub mod provider;
mod relay;
pub mod reputation;
pub mod select;
pub mod server;

pub use api_key::load_or_create_api_key;
pub use config::GatewayConfig;
pub use error::GatewayError;
pub use server::{GatewayState, router, serve, serve_on};
