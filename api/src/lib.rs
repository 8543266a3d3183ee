//! `vmapi`: the control API every `vmm` serves on its `--api-socket`.
//!
//! It follows Cloud Hypervisor's REST API (its OpenAPI file
//! `vmm/src/api/openapi/cloud-hypervisor.yaml`): the same paths under
//! `/api/v1`, methods, JSON names and shapes, and status codes. The crate
//! holds three things, each usable alone:
//!
//! - [`types`]: the serde types (`VmConfig`, `VmInfo`, `VmCounters`, ...),
//!   named and shaped as CH's schema names them, plus the few extensions
//!   this project adds (documented on each field).
//! - [`http`]: bounded HTTP/1.1 framing: a request parser with header, body
//!   and time limits that turns malformed input into a typed
//!   [`HttpError`] (which the server answers with 400 and a one-line
//!   reason), and a response writer and reader.
//! - [`client`]: [`Client`], a small blocking client over a Unix socket with
//!   connect, read and write timeouts, used by `vm` and the tests.
//! - [`fds`]: descriptors handed over with a request (SCM_RIGHTS).
//!
//! Error bodies are what Cloud Hypervisor sends: a JSON array of strings,
//! the error's messages from the outermost to its root cause.

pub mod client;
pub mod endpoint;
pub mod error;
pub mod fds;
pub mod http;
pub mod migration;
mod sys;
pub mod types;

pub use client::Client;
pub use endpoint::Endpoint;
pub use error::{Error, HttpError, Result};
pub use http::{Method, Request, Response};
pub use migration::{MigrationUrl, VmReceiveMigrationData, VmSendMigrationData};
pub use types::*;
