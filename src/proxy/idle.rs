//! The idle timeout on an upstream response body: the longest the upstream may leave us
//! waiting for its next chunk.
//!
//! The clock runs only while sidekey waits on the upstream, not while a slow caller keeps
//! sidekey from reading: it starts when a poll finds nothing ready and stops at the next
//! frame. When it runs out the body fails with [`IdleTimeout`], so hyper cuts the caller's
//! stream (an HTTP/1 connection is closed before the final chunk, an HTTP/2 stream is reset)
//! rather than ending it cleanly as if the body were complete.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
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
