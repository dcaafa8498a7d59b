//! The idle timeout in both directions of a response: the longest the upstream may leave us
//! waiting for its next chunk ([`IdleBody`]), and the longest a write to the caller may stay
//! blocked because the caller stopped reading ([`WriteStall`]).
//!
//! The clock runs only while sidekey waits on the upstream, not while a slow caller keeps
//! sidekey from reading: it starts when a poll finds nothing ready and stops at the next
//! frame. When it runs out the body fails with [`IdleTimeout`], so hyper cuts the caller's
//! stream (an HTTP/1 connection is closed before the final chunk, an HTTP/2 stream is reset)
//! rather than ending it cleanly as if the body were complete.
//!
//! A caller that stops reading does not stall the body: hyper simply stops polling it while
//! the socket is full, so no timer inside the body can fire, and both the caller's and the
//! upstream's connections would stay held for as long as the caller likes. [`WriteStall`]
//! wraps the caller's connection instead: a write (or flush) that stays blocked for the idle
//! timeout fails with `TimedOut`, hyper closes the caller's connection, the response body is
//! dropped half-read, and with it the upstream connection, which is closed and never pooled.
//! The clock runs only while a write is blocked, so a slow caller that keeps reading, a long
//! wait for the upstream's answer, and an idle keep-alive connection are all unaffected.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::body::BoxError;

/// The upstream sent nothing for too long in the middle of a body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no body data for {0:?}")]
pub struct IdleTimeout(pub Duration);

pin_project_lite::pin_project! {
    /// A body that fails with [`IdleTimeout`] when its inner body stalls.
    pub struct IdleBody<B> {
        #[pin]
        inner: B,
        // Made on the first stall only: most bodies never wait.
        sleep: Option<Pin<Box<Sleep>>>,
        timeout: Duration,
        waiting: bool,
    }
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            sleep: None,
            timeout,
            waiting: false,
        }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.waiting = false;
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                if !*this.waiting {
                    *this.waiting = true;
                    let deadline = Instant::now() + *this.timeout;
                    match this.sleep.as_mut() {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => *this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let Some(sleep) = this.sleep.as_mut() else {
                    return Poll::Pending;
                };
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::warn!(
                            idle_timeout_ms = this.timeout.as_millis() as u64,
                            "upstream body stalled; cutting the response"
                        );
                        Poll::Ready(Some(Err(Box::new(IdleTimeout(*this.timeout)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The caller's connection, whose writes fail with `TimedOut` once one has been blocked
    /// for the idle timeout.
    pub struct WriteStall<S> {
        #[pin]
        inner: S,
        // Made on the first blocked write only: most connections never block.
        sleep: Option<Pin<Box<Sleep>>>,
        timeout: Duration,
        blocked: bool,
    }
}

impl<S> WriteStall<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            sleep: None,
            timeout,
            blocked: false,
        }
    }
}

/// Decides what a write that made no progress returns: `Pending` until it has been blocked
/// for `timeout`, then `TimedOut`.
fn blocked<T>(
    sleep: &mut Option<Pin<Box<Sleep>>>,
    is_blocked: &mut bool,
    timeout: Duration,
    cx: &mut Context<'_>,
) -> Poll<io::Result<T>> {
    if !*is_blocked {
        *is_blocked = true;
        let deadline = Instant::now() + timeout;
        match sleep.as_mut() {
            Some(s) => s.as_mut().reset(deadline),
            None => *sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }
    let Some(s) = sleep.as_mut() else {
        return Poll::Pending;
    };
    match s.as_mut().poll(cx) {
        Poll::Ready(()) => {
            tracing::info!(
                idle_timeout_ms = timeout.as_millis() as u64,
                "caller stopped reading; write stalled, closing its connection"
            );
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the caller read nothing for {timeout:?}"),
            )))
        }
        Poll::Pending => Poll::Pending,
    }
}

impl<S: AsyncRead> AsyncRead for WriteStall<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for WriteStall<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.inner.poll_write(cx, buf) {
            Poll::Pending => blocked(this.sleep, this.blocked, *this.timeout, cx),
            ready => {
                *this.blocked = false;
                ready
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.inner.poll_write_vectored(cx, bufs) {
            Poll::Pending => blocked(this.sleep, this.blocked, *this.timeout, cx),
            ready => {
                *this.blocked = false;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        match this.inner.poll_flush(cx) {
            Poll::Pending => blocked(this.sleep, this.blocked, *this.timeout, cx),
            ready => {
                *this.blocked = false;
                ready
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        match this.inner.poll_shutdown(cx) {
            Poll::Pending => blocked(this.sleep, this.blocked, *this.timeout, cx),
            ready => {
                *this.blocked = false;
                ready
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_and_a_steady_one_does_not() {
        let steady = futures_util::stream::unfold(0u8, |n| async move {
            if n == 5 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(90)).await;
            Some((Ok::<_, BoxError>(Frame::data(Bytes::from(vec![n]))), n + 1))
        });
        let b = std::pin::pin!(IdleBody::new(
            StreamBody::new(steady),
            Duration::from_millis(100)
        ));
        let got = b.collect().await.expect("steady body").to_bytes();
        assert_eq!(got.as_ref(), &[0, 1, 2, 3, 4]);

        let stalls = futures_util::stream::iter(vec![Ok::<_, BoxError>(Frame::data(
            Bytes::from_static(b"a"),
        ))])
        .chain(futures_util::stream::pending());
        let mut b = std::pin::pin!(IdleBody::new(
            StreamBody::new(stalls),
            Duration::from_millis(100)
        ));
        assert!(b.frame().await.expect("first").is_ok());
        let err = b.frame().await.expect("an error").expect_err("times out");
        assert!(err.downcast_ref::<IdleTimeout>().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_for_the_idle_timeout_fails_and_a_moving_one_does_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A 64-byte pipe: the writer blocks as soon as the reader stops.
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = WriteStall::new(a, Duration::from_millis(100));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            // Reads slowly but steadily for a while, then stops for good.
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(90)).await;
                let _ = b.read(&mut buf).await;
            }
            b
        });
        for _ in 0..10 {
            w.write_all(&[1u8; 64])
                .await
                .expect("a reader that keeps reading");
        }
        let _held = reader.await.expect("reader");
        let started = Instant::now();
        let mut failed = None;
        for _ in 0..4 {
            if let Err(e) = w.write_all(&[1u8; 64]).await {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("the stalled write fails");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_caller_spends_not_reading_does_not_count() {
        let body = futures_util::stream::iter(vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"a"))),
            Ok(Frame::data(Bytes::from_static(b"b"))),
        ]);
        let mut b = std::pin::pin!(IdleBody::new(
            StreamBody::new(body),
            Duration::from_millis(100)
        ));
        assert!(b.frame().await.expect("a").is_ok());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(b.frame().await.expect("b").is_ok());
        assert!(b.frame().await.is_none());
    }
}
