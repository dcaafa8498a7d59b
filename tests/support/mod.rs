//! Test support: real peers on 127.0.0.1 for integration tests.
//!
//! - [`ca`]: a certificate authority made in the test, and server certificates it signs.
//! - [`upstream`]: loopback upstream servers (HTTP/1.1, h2c, TLS with ALPN) that record what
//!   they received.
//! - [`sidekey`]: the real `sidekey` binary, started on random ports with config files written
//!   to a temporary directory; its log lines are collected for assertions.
//! - [`client`]: a small HTTP client for driving sidekey.
#![allow(dead_code)] // each test binary uses a different part of the support code

pub mod ca;
pub mod client;
pub mod sidekey;
pub mod upstream;

/// The caller key every test sidekey accepts unless a test says otherwise.
pub const CALLER_KEY: &str = "test-caller-key-0123456789";
