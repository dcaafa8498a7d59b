//! The request body as the upstream sees it, attempt after attempt: streamed from the caller
//! once, kept (up to a cap) so that a retry can send it again byte for byte.
//!
//! [`Replay`] owns the caller's body. Each attempt gets an [`AttemptBody`] that first replays
//! what earlier attempts already read, then keeps reading the caller's body, copying chunks
//! (reference-counted, not copied) into the buffer while the total stays within the cap. The
//! first chunk that would pass the cap drops the buffer: from then on the body is a one-shot
//! stream and [`Replay::replayable`] says no, so a retry can never send a truncated or doubled
//! body. The cap counts the bytes actually read, so a lying Content-Length changes nothing.
//! With a cap of zero nothing is kept, yet a body never read (a connect error) stays
//! replayable.
//!
//! Starting a new attempt retires the previous one: an old `AttemptBody` still held by a
//! connection task fails on its next poll instead of stealing chunks from the caller's body.
//!
//! Each attempt also carries an [`EndSignal`], fired once the upstream has been handed the last
//! of the body, since the response timeout counts from the end of the request body; until
//! then it records when the body last moved, so a send that makes no progress is noticed.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::body::{BoxError, ProxyBody};

/// What an attempt's request body has done: when it last handed data to the connection, and
/// whether it has ended (fired once the connection has the last of it).
#[derive(Debug)]
pub struct EndSignal {
    fired: AtomicBool,
    start: Instant,
    /// Nanoseconds after `start` of the last progress (the attempt starting counts).
    last_progress: AtomicU64,
}

impl Default for EndSignal {
    fn default() -> Self {
        Self {
            fired: AtomicBool::new(false),
            start: Instant::now(),
            last_progress: AtomicU64::new(0),
        }
    }
}

impl EndSignal {
    fn fire(&self) {
        if !self.fired.load(Ordering::Acquire) {
            // The last progress is the end: the response timeout counts from here.
            self.progress();
            self.fired.store(true, Ordering::Release);
        }
    }

    fn progress(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_progress.store(nanos, Ordering::Relaxed);
    }

    /// When the body last moved (or the attempt started).
    pub fn last_progress(&self) -> Instant {
        self.start + Duration::from_nanos(self.last_progress.load(Ordering::Relaxed))
    }

    /// Whether the body has ended; [`EndSignal::last_progress`] is then when it did.
    pub fn has_ended(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

/// The caller's body failed while an attempt was reading it.
#[derive(Debug, thiserror::Error)]
#[error("the caller's request body failed: {0}")]
pub struct CallerBodyError(#[source] pub BoxError);

/// A retry started; this older attempt may no longer read the body.
#[derive(Debug, thiserror::Error)]
#[error("the request body moved on to a newer attempt")]
pub struct Superseded;

struct State {
    /// What is left of the caller's body; `None` once it has ended.
    incoming: Option<ProxyBody>,
    /// Every data chunk read so far, while their total is within `cap`.
    chunks: Vec<Bytes>,
    buffered: usize,
    trailers: Option<HeaderMap>,
    cap: usize,
    /// Bytes were read past the cap and let go: the body cannot be sent again.
    overflowed: bool,
    /// The caller's body failed: nothing can be sent again.
    broken: bool,
    /// The attempt allowed to read.
    current: u64,
}

/// The caller's request body, kept for replay up to a cap.
#[derive(Clone)]
pub struct Replay {
    state: Arc<Mutex<State>>,
}

impl Replay {
    /// Wraps the caller's body; `cap` is the most bytes kept for replay (0 keeps nothing).
    pub fn new(body: ProxyBody, cap: usize) -> Self {
        let ended = body.is_end_stream();
        Self {
            state: Arc::new(Mutex::new(State {
                incoming: (!ended).then_some(body),
                chunks: Vec::new(),
                buffered: 0,
                trailers: None,
                cap,
                overflowed: false,
                broken: false,
                current: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state itself stays consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a new attempt would send the whole body from its first byte.
    pub fn replayable(&self) -> bool {
        let s = self.lock();
        !s.overflowed && !s.broken
    }

    /// Retires the current attempt (so its connection can read no further) and says whether
    /// another attempt may follow. Retiring first matters: an attempt still uploading could
    /// otherwise read past the cap while the retry waits, leaving the next attempt a body
    /// with its start missing.
    pub fn prepare_retry(&self) -> bool {
        let mut s = self.lock();
        let replayable = !s.overflowed && !s.broken;
        // An attempt that cannot be followed keeps its body: its response is the one relayed.
        if replayable {
            s.current += 1;
        }
        replayable
    }

    /// Whether the caller's body failed during an attempt.
    pub fn caller_failed(&self) -> bool {
        self.lock().broken
    }

    /// Starts a new attempt, retiring the previous one.
    pub fn attempt(&self) -> (AttemptBody, Arc<EndSignal>) {
        let mut s = self.lock();
        s.current += 1;
        let end = Arc::new(EndSignal::default());
        let body = AttemptBody {
            state: self.state.clone(),
            id: s.current,
            next: 0,
            sent: 0,
            trailers_sent: false,
            end: end.clone(),
        };
        (body, end)
    }
}

/// The request body of one attempt.
pub struct AttemptBody {
    state: Arc<Mutex<State>>,
    id: u64,
    /// Index of the next buffered chunk to replay.
    next: usize,
    /// Bytes of the buffer this attempt has sent.
    sent: usize,
    trailers_sent: bool,
    end: Arc<EndSignal>,
}

impl AttemptBody {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether nothing is left for this attempt to send.
    fn done(&self, s: &State) -> bool {
        s.incoming.is_none()
            && (s.overflowed || self.next >= s.chunks.len())
            && (s.trailers.is_none() || self.trailers_sent)
    }
}

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut s = this.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.current != this.id {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if !s.overflowed && this.next < s.chunks.len() {
            let chunk = s.chunks[this.next].clone();
            this.next += 1;
            this.sent += chunk.len();
            this.end.progress();
            if this.done(&s) {
                this.end.fire();
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(incoming) = s.incoming.as_mut() else {
            if let (Some(t), false) = (&s.trailers, this.trailers_sent) {
                this.trailers_sent = true;
                let t = t.clone();
                this.end.fire();
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            this.end.fire();
            return Poll::Ready(None);
        };
        match Pin::new(incoming).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.incoming = None;
                this.end.fire();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.broken = true;
                s.incoming = None;
                Poll::Ready(Some(Err(Box::new(CallerBodyError(e)))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        if !s.overflowed {
                            if s.buffered + data.len() > s.cap {
                                // Let the buffer go: this body is now a one-shot stream.
                                s.overflowed = true;
                                s.chunks = Vec::new();
                                s.buffered = 0;
                                this.next = 0;
                                this.sent = 0;
                            } else {
                                s.buffered += data.len();
                                s.chunks.push(data.clone());
                                this.next = s.chunks.len();
                                this.sent = s.buffered;
                            }
                        }
                        Frame::data(data)
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(t) => {
                            s.trailers = Some(t.clone());
                            this.trailers_sent = true;
                            Frame::trailers(t)
                        }
                        // An unknown frame kind: nothing to keep or send.
                        Err(_) => return Poll::Ready(Some(Ok(Frame::data(Bytes::new())))),
                    },
                };
                if s.incoming.as_ref().is_some_and(|b| b.is_end_stream()) {
                    s.incoming = None;
                }
                this.end.progress();
                if this.done(&s) {
                    this.end.fire();
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.lock();
        let done = s.current == self.id && self.done(&s);
        if done {
            self.end.fire();
        }
        done
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.lock();
        if s.current != self.id {
            return SizeHint::default();
        }
        let left = if s.overflowed {
            0
        } else {
            (s.buffered - self.sent.min(s.buffered)) as u64
        };
        match &s.incoming {
            None => SizeHint::with_exact(left),
            Some(b) => {
                let inner = b.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(inner.lower().saturating_add(left));
                if let Some(u) = inner.upper() {
                    h.set_upper(u.saturating_add(left));
                }
                h
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{empty, full};
    use http_body_util::{BodyExt, StreamBody};

    /// A caller body sending these chunks.
    fn chunked(chunks: &[&'static [u8]]) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    async fn read_all(b: AttemptBody) -> Result<Bytes, BoxError> {
        Ok(b.collect().await?.to_bytes())
    }

    #[tokio::test]
    async fn a_small_body_replays_byte_for_byte() {
        let r = Replay::new(chunked(&[b"hello ", b"wor", b"ld"]), 64);
        for _ in 0..3 {
            assert!(r.replayable());
            let (b, end) = r.attempt();
            assert_eq!(read_all(b).await.expect("body"), "hello world");
            assert!(end.has_ended());
        }
    }

    #[tokio::test]
    async fn a_partly_read_body_replays_what_was_read_then_the_rest() {
        let r = Replay::new(chunked(&[b"ab", b"cd", b"ef"]), 64);
        let (mut first, _) = r.attempt();
        let f = first.frame().await.expect("frame").expect("ok");
        assert_eq!(f.into_data().expect("data"), "ab");
        assert!(r.replayable());
        let (second, _) = r.attempt();
        // The retired attempt may no longer read.
        assert!(first.frame().await.expect("frame").is_err());
        assert_eq!(read_all(second).await.expect("body"), "abcdef");
    }

    #[tokio::test]
    async fn a_body_past_the_cap_streams_once() {
        let r = Replay::new(chunked(&[b"1234", b"5678", b"9"]), 6);
        let (b, end) = r.attempt();
        assert_eq!(read_all(b).await.expect("body"), "123456789");
        assert!(end.has_ended());
        assert!(!r.replayable());
    }

    #[tokio::test]
    async fn the_cap_counts_bytes_not_the_declared_length() {
        // A full body says its exact size, but the cap judges what is read.
        let r = Replay::new(full(vec![7u8; 100]), 99);
        assert!(r.replayable(), "nothing read yet");
        let (b, _) = r.attempt();
        assert_eq!(read_all(b).await.expect("body").len(), 100);
        assert!(!r.replayable());
        let r = Replay::new(full(vec![7u8; 100]), 100);
        let (b, _) = r.attempt();
        read_all(b).await.expect("body");
        assert!(r.replayable());
    }

    #[tokio::test]
    async fn cap_zero_keeps_nothing_but_an_unread_body_stays_replayable() {
        let r = Replay::new(chunked(&[b"x"]), 0);
        let (b, _) = r.attempt();
        drop(b);
        assert!(r.replayable(), "never read, so a connect error may retry");
        let (b, _) = r.attempt();
        assert_eq!(read_all(b).await.expect("body"), "x");
        assert!(!r.replayable());
    }

    #[tokio::test]
    async fn an_empty_body_ends_at_once_every_time() {
        let r = Replay::new(empty(), 0);
        for _ in 0..2 {
            let (b, end) = r.attempt();
            assert!(b.is_end_stream());
            assert!(end.has_ended());
            assert_eq!(b.size_hint().exact(), Some(0));
        }
        assert!(r.replayable());
    }

    #[tokio::test]
    async fn a_failing_caller_body_is_not_replayable() {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"a"))),
            Err("gone".into()),
        ];
        let r = Replay::new(
            StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync(),
            64,
        );
        let (b, _) = r.attempt();
        assert!(read_all(b).await.is_err());
        assert!(r.caller_failed());
        assert!(!r.replayable());
    }

    #[tokio::test]
    async fn trailers_are_kept_and_replayed() {
        let mut t = HeaderMap::new();
        t.insert("x-sum", "1".parse().expect("value"));
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"a"))),
            Ok(Frame::trailers(t.clone())),
        ];
        let r = Replay::new(
            StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync(),
            64,
        );
        for _ in 0..2 {
            let (b, _) = r.attempt();
            let c = b.collect().await.expect("body");
            assert_eq!(c.trailers(), Some(&t));
            assert_eq!(c.to_bytes(), "a");
        }
    }

    #[tokio::test]
    async fn size_hint_is_exact_for_a_buffered_replay() {
        let r = Replay::new(chunked(&[b"abc", b"de"]), 64);
        let (b, _) = r.attempt();
        read_all(b).await.expect("body");
        let (b, _) = r.attempt();
        assert_eq!(b.size_hint().exact(), Some(5));
    }
}
