//! Authorities and (later) entitlements of the terminalwire client.
//!
//! # Layout
//!
//! - [`authority`]: the authority of a URL, which keys everything the client
//!   remembers about a server.

#![forbid(unsafe_code)]

pub mod authority;

pub use authority::{Authority, AuthorityError};
