//! Test doubles for spare. Nothing here is linked into release builds: other crates use it
//! only as a dev-dependency, and the benchmark and testnet run its binary.
//!
//! [`ScriptedUpstream`] is a scripted OpenAI-compatible model server on loopback. Start
//! reading at [`Script`], which sets what it streams and how it fails.
//!
//! ```no_run
//! # async fn demo() -> Result<(), spare_testkit::TestkitError> {
//! use std::time::Duration;
//! use spare_testkit::{Script, ScriptedUpstream};
//!
//! let upstream = ScriptedUpstream::start(
//!     Script::new("llama-test").with_chunks(8).with_gap(Duration::from_millis(5)),
//! )
//! .await?;
//! let base_url = upstream.base_url(); // http://127.0.0.1:PORT/v1
//! # let _ = base_url;
//! upstream.shutdown().await
//! # }
//! ```

mod error;
mod openai;
mod plan;
mod script;
mod server;

pub use error::TestkitError;
pub use script::{DEFAULT_MODEL, FailureMode, Script, ToolCallScript};
pub use server::ScriptedUpstream;
