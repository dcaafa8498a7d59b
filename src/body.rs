//! The body type sidekey hands to hyper, and small constructors for it.
//!
//! Responses mix bodies sidekey makes (JSON errors) with upstream bodies relayed as they stream
//! (possibly decoded on the fly), so they are boxed behind one type-erased body. Upstream request
//! bodies use the same type so that a replayable buffer and a one-shot stream look alike.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

/// A boxed error carried by a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type of sidekey's requests and responses.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes` whole.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}
