//! Decoding compressed upstream bodies while they stream, when the caller sends
//! `Decompress: true` or the provider sets `proxy.decompress: true`.
//!
//! The codings come from Content-Encoding (gzip, deflate, br, zstd; stacked codings are undone
//! in reverse order). A response without Content-Encoding is decoded when its first bytes are
//! the gzip or zstd magic numbers, and passes through otherwise. A decoded response loses
//! Content-Encoding and Content-Length, since sidekey re-frames it. Anything sidekey cannot
//! decode (an unknown coding, a HEAD answer, a 204 or 304, an empty body) passes through
//! exactly as it came. Without the setting this module is never called and compressed bytes
//! pass through untouched.
//!
//! "deflate" is meant to be zlib-wrapped (RFC 9110 §8.4.1.2), but some servers send raw
//! deflate; the first two bytes tell which.

use std::io;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http::response::Parts;
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use tokio::io::{AsyncBufRead, AsyncRead, BufReader};
use tokio_util::io::{ReaderStream, StreamReader};

use super::idle::IdleTimeout;
use crate::body::{BoxError, ProxyBody};
use crate::error::ProxyError;

/// A content coding sidekey can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Size of the decoded chunks handed on.
const CHUNK: usize = 16 * 1024;

/// The codings of a Content-Encoding header in the order they were applied, `identity`
/// left out; `None` when one of them is not known.
pub fn codings(headers: &HeaderMap) -> Option<Vec<Coding>> {
    let mut out = Vec::new();
    for value in headers.get_all(CONTENT_ENCODING) {
        for token in value.to_str().ok()?.split(',') {
            let token = token.trim();
            let coding =
                if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
                    Coding::Gzip
                } else if token.eq_ignore_ascii_case("deflate") {
                    Coding::Deflate
                } else if token.eq_ignore_ascii_case("br") {
                    Coding::Brotli
                } else if token.eq_ignore_ascii_case("zstd") {
                    Coding::Zstd
                } else if token.eq_ignore_ascii_case("identity") || token.is_empty() {
                    continue;
                } else {
                    return None;
                };
            out.push(coding);
        }
    }
    Some(out)
}

/// The coding a body's first bytes announce, for a response without Content-Encoding.
pub fn sniff(prefix: &[u8]) -> Option<Coding> {
    if prefix.starts_with(&GZIP_MAGIC) {
        Some(Coding::Gzip)
    } else if prefix.starts_with(&ZSTD_MAGIC) {
        Some(Coding::Zstd)
    } else {
        None
    }
}

/// Whether a deflate body starts with a zlib header (RFC 1950: method 8, window ≤ 32 KiB,
/// header checksum).
pub fn is_zlib(prefix: &[u8]) -> bool {
    match prefix {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0
        }
        _ => false,
    }
}

/// Whether this response can carry a body worth decoding.
fn has_body(status: StatusCode, head_request: bool, body: &ProxyBody) -> bool {
    !head_request
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
        && body.size_hint().exact() != Some(0)
}

/// Reads frames until at least `want` bytes of data (or the end); returns the frames read and
/// the first bytes of data.
async fn peek(
    body: &mut ProxyBody,
    want: usize,
) -> Result<(Vec<Frame<Bytes>>, BytesMut), BoxError> {
    let mut frames = Vec::new();
    let mut prefix = BytesMut::with_capacity(want);
    while prefix.len() < want {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame?;
        if let Some(d) = frame.data_ref() {
            let take = d.len().min(want - prefix.len());
            prefix.extend_from_slice(&d[..take]);
        }
        let trailers = frame.is_trailers();
        frames.push(frame);
        if trailers {
            break;
        }
    }
    Ok((frames, prefix))
}

/// The frames already read, then the rest of `body`.
fn prefixed(frames: Vec<Frame<Bytes>>, body: ProxyBody) -> ProxyBody {
    let head = futures_util::stream::iter(frames.into_iter().map(Ok));
    StreamBody::new(head.chain(BodyStream::new(body))).boxed_unsync()
}

/// A failure while peeking: nothing has reached the caller yet, so it becomes sidekey's error.
fn peek_error(e: &BoxError) -> ProxyError {
    if e.downcast_ref::<IdleTimeout>().is_some() {
        ProxyError::UpstreamTimeout(e.to_string())
    } else {
        ProxyError::UpstreamUnreachable(format!("the upstream's response body failed: {e}"))
    }
}

type Reader = Pin<Box<dyn AsyncBufRead + Send>>;

/// Undoes one coding.
fn decoder(coding: Coding, input: Reader, zlib: bool) -> Pin<Box<dyn AsyncRead + Send>> {
    use async_compression::tokio::bufread as dec;
    match coding {
        Coding::Gzip => {
            let mut d = dec::GzipDecoder::new(input);
            d.multiple_members(true);
            Box::pin(d)
        }
        Coding::Deflate if zlib => Box::pin(dec::ZlibDecoder::new(input)),
        Coding::Deflate => Box::pin(dec::DeflateDecoder::new(input)),
        Coding::Brotli => Box::pin(dec::BrotliDecoder::new(input)),
        Coding::Zstd => {
            let mut d = dec::ZstdDecoder::new(input);
            d.multiple_members(true);
            Box::pin(d)
        }
    }
}

/// `body` with `applied` codings undone, last applied first.
fn decoded(body: ProxyBody, applied: &[Coding], outer_is_zlib: bool) -> ProxyBody {
    let data = body.into_data_stream().map_err(io::Error::other);
    let mut input: Reader = Box::pin(StreamReader::new(data));
    let mut stages = applied.iter().rev().enumerate().peekable();
    while let Some((i, &coding)) = stages.next() {
        // Only the outermost coding's first bytes were seen; an inner deflate is taken as zlib.
        let out = decoder(coding, input, i > 0 || outer_is_zlib);
        if stages.peek().is_none() {
            return reader_body(out);
        }
        input = Box::pin(BufReader::with_capacity(CHUNK, out));
    }
    reader_body(input)
}

/// Hands on the cause (an idle timeout, a reset) rather than the io wrapper around it.
fn unwrap_io(e: io::Error) -> BoxError {
    if e.get_ref().is_none() {
        return Box::new(e);
    }
    e.into_inner()
        .unwrap_or_else(|| "the response body could not be decoded".into())
}

fn reader_body<R: AsyncRead + Send + 'static>(r: R) -> ProxyBody {
    let frames = ReaderStream::with_capacity(r, CHUNK)
        .map_ok(Frame::data)
        .map_err(unwrap_io);
    StreamBody::new(frames).boxed_unsync()
}

/// Decodes the response body if it is compressed; adjusts `parts` to match.
pub async fn decode(
    parts: &mut Parts,
    mut body: ProxyBody,
    head_request: bool,
) -> Result<ProxyBody, ProxyError> {
    if !has_body(parts.status, head_request, &body) {
        return Ok(body);
    }
    let Some(mut applied) = codings(&parts.headers) else {
        return Ok(body);
    };
    let mut outer_is_zlib = true;
    if applied.is_empty() || applied.last() == Some(&Coding::Deflate) {
        let (frames, prefix) = peek(&mut body, 4).await.map_err(|e| peek_error(&e))?;
        if applied.is_empty() {
            match sniff(&prefix) {
                Some(c) => applied.push(c),
                None => return Ok(prefixed(frames, body)),
            }
        } else {
            outer_is_zlib = is_zlib(&prefix);
        }
        body = prefixed(frames, body);
    }
    parts.headers.remove(CONTENT_ENCODING);
    parts.headers.remove(CONTENT_LENGTH);
    Ok(decoded(body, &applied, outer_is_zlib))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::full;
    use tokio::io::AsyncReadExt;

    async fn encode(coding: Coding, data: &[u8], zlib: bool) -> Vec<u8> {
        use async_compression::tokio::bufread as enc;
        let mut out = Vec::new();
        match coding {
            Coding::Gzip => enc::GzipEncoder::new(data).read_to_end(&mut out).await,
            Coding::Deflate if zlib => enc::ZlibEncoder::new(data).read_to_end(&mut out).await,
            Coding::Deflate => enc::DeflateEncoder::new(data).read_to_end(&mut out).await,
            Coding::Brotli => enc::BrotliEncoder::new(data).read_to_end(&mut out).await,
            Coding::Zstd => enc::ZstdEncoder::new(data).read_to_end(&mut out).await,
        }
        .expect("encode");
        out
    }

    fn response(encoding: Option<&str>, len: usize) -> Parts {
        let mut b = http::Response::builder().header(CONTENT_LENGTH, len);
        if let Some(e) = encoding {
            b = b.header(CONTENT_ENCODING, e);
        }
        b.body(()).expect("response").into_parts().0
    }

    /// A body delivered in small chunks, as a network would.
    fn chunked(bytes: Vec<u8>) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = bytes
            .chunks(3)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    fn text() -> Vec<u8> {
        b"{\"items\":[1,2,3]} ".repeat(500)
    }

    #[tokio::test]
    async fn each_coding_is_decoded_and_headers_dropped() {
        for (coding, name, zlib) in [
            (Coding::Gzip, "gzip", false),
            (Coding::Deflate, "deflate", true),
            (Coding::Deflate, "deflate", false),
            (Coding::Brotli, "br", false),
            (Coding::Zstd, "zstd", false),
        ] {
            let enc = encode(coding, &text(), zlib).await;
            let mut parts = response(Some(name), enc.len());
            let body = decode(&mut parts, chunked(enc), false)
                .await
                .expect("decode");
            let got = body.collect().await.expect("body").to_bytes();
            assert_eq!(got, text(), "{name} zlib={zlib}");
            assert!(parts.headers.get(CONTENT_ENCODING).is_none());
            assert!(parts.headers.get(CONTENT_LENGTH).is_none());
        }
    }

    #[tokio::test]
    async fn stacked_codings_are_undone_in_reverse() {
        let inner = encode(Coding::Gzip, &text(), false).await;
        let outer = encode(Coding::Brotli, &inner, false).await;
        let mut parts = response(Some("gzip, br"), outer.len());
        let body = decode(&mut parts, full(outer), false)
            .await
            .expect("decode");
        assert_eq!(body.collect().await.expect("body").to_bytes(), text());
    }

    #[tokio::test]
    async fn magic_bytes_are_sniffed_without_content_encoding() {
        for coding in [Coding::Gzip, Coding::Zstd] {
            let enc = encode(coding, &text(), false).await;
            let mut parts = response(None, enc.len());
            let body = decode(&mut parts, chunked(enc), false)
                .await
                .expect("decode");
            assert_eq!(body.collect().await.expect("body").to_bytes(), text());
            assert!(parts.headers.get(CONTENT_LENGTH).is_none());
        }
        // Plain bytes pass through, length kept.
        let mut parts = response(None, 5);
        let body = decode(&mut parts, chunked(b"plain".to_vec()), false)
            .await
            .expect("decode");
        assert_eq!(body.collect().await.expect("body").to_bytes(), "plain");
        assert_eq!(parts.headers[CONTENT_LENGTH], "5");
    }

    #[tokio::test]
    async fn what_cannot_be_decoded_passes_through() {
        let enc = encode(Coding::Gzip, &text(), false).await;
        // An unknown coding.
        let mut parts = response(Some("gzip, aes128gcm"), enc.len());
        let body = decode(&mut parts, full(enc.clone()), false)
            .await
            .expect("decode");
        assert_eq!(body.collect().await.expect("body").to_bytes(), enc);
        assert_eq!(parts.headers[CONTENT_ENCODING], "gzip, aes128gcm");
        // A HEAD answer.
        let mut parts = response(Some("gzip"), enc.len());
        let body = decode(&mut parts, crate::body::empty(), true)
            .await
            .expect("decode");
        assert!(body.collect().await.expect("body").to_bytes().is_empty());
        assert_eq!(parts.headers[CONTENT_ENCODING], "gzip");
    }

    #[tokio::test]
    async fn corrupt_data_fails_the_body_instead_of_ending_it() {
        let mut parts = response(Some("gzip"), 10);
        let body = decode(&mut parts, full(&b"\x1f\x8bnot gzip at all"[..]), false)
            .await
            .expect("decode starts");
        assert!(body.collect().await.is_err());
    }

    #[test]
    fn zlib_headers_are_recognised() {
        assert!(is_zlib(&[0x78, 0x9c]));
        assert!(is_zlib(&[0x78, 0x01]));
        assert!(is_zlib(&[0x78, 0xda]));
        assert!(!is_zlib(&[0xcb, 0x48]));
        assert!(!is_zlib(&[0x78]));
    }
}
