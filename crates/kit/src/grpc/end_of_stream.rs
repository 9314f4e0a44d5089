//! [`EndOfStreamLookahead`]: a request body that says it has ended as soon as it has, so that
//! hyper sends the last DATA frame of a unary call with END_STREAM set.
//!
//! hyper's HTTP/2 client asks the body `is_end_stream()` after each data frame. tonic's request
//! body only learns that its single message was the last when polled once more, so every unary
//! call went out as HEADERS, DATA, then an empty DATA frame carrying END_STREAM. A large DATA
//! frame is handed to the socket on its own (h2 chains it instead of copying it), so that empty
//! frame cost one more `writev` on the client and one more read, often one more wake-up, on the
//! server (strace of a GetContext with 28 KiB of inline documents: HEADERS, two 16 KiB DATA
//! frames and the empty one; with this and 128 KiB frames, HEADERS and one DATA frame; see
//! BENCHMARKS.md). Here the body is polled once more right after each data frame, without
//! waiting: if it has ended, `is_end_stream()` says so; if it has another frame, that frame is
//! kept for the next poll; if it is not ready (a client stream), nothing changes.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;

type Polled = Option<Result<Frame<Bytes>, Status>>;

/// Wraps a request body; see the module docs.
pub struct EndOfStreamLookahead {
    inner: Body,
    /// A frame (or error, or the end) the lookahead polled and the caller has not seen yet.
    ahead: Option<Polled>,
}

impl EndOfStreamLookahead {
    pub fn new(inner: Body) -> Self {
        Self { inner, ahead: None }
    }
}

impl HttpBody for EndOfStreamLookahead {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(polled) = self.ahead.take() {
            return Poll::Ready(polled);
        }
        let polled = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if matches!(&polled, Some(Ok(frame)) if frame.is_data()) {
            // Pending registers this task's waker with the inner body, which is what the caller
            // polling again later would do anyway.
            if let Poll::Ready(next) = Pin::new(&mut self.inner).poll_frame(cx) {
                self.ahead = Some(next);
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match &self.ahead {
            Some(None) => true,
            Some(Some(_)) => false,
            None => self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.ahead {
            None => self.inner.size_hint(),
            Some(None) => SizeHint::with_exact(0),
            Some(Some(_)) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Wake;

    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;

    struct NoopWaker;

    impl Wake for NoopWaker {
        fn wake(self: Arc<Self>) {}
    }

    fn poll(body: &mut EndOfStreamLookahead) -> Poll<Polled> {
        let waker = Arc::new(NoopWaker).into();
        Pin::new(body).poll_frame(&mut Context::from_waker(&waker))
    }

    fn data(polled: Poll<Polled>) -> Option<Bytes> {
        match polled {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
            _ => None,
        }
    }

    /// A body fed frame by frame through the returned sender, as a client stream is.
    fn streamed_body() -> (
        mpsc::Sender<Result<Frame<Bytes>, Status>>,
        EndOfStreamLookahead,
    ) {
        let (sender, receiver) = mpsc::channel(4);
        let stream = http_body_util::StreamBody::new(ReceiverStream::new(receiver));
        (sender, EndOfStreamLookahead::new(Body::new(stream)))
    }

    /// A unary request body as tonic makes it: a stream of one message, which does not know it
    /// has ended until polled again. The end shows right after the message.
    #[test]
    fn a_single_message_body_ends_with_its_data() {
        let once =
            tokio_stream::iter([Ok::<_, Status>(Frame::data(Bytes::from_static(b"message")))]);
        let inner = Body::new(http_body_util::StreamBody::new(once));
        assert!(!inner.is_end_stream());
        let mut body = EndOfStreamLookahead::new(inner);
        assert!(!body.is_end_stream());
        assert_eq!(data(poll(&mut body)), Some(Bytes::from_static(b"message")));
        assert!(body.is_end_stream(), "the end is known with the only frame");
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }

    /// A client stream: frames come one at a time, some later; none is lost or reordered, and the
    /// end shows only once the stream has ended.
    #[tokio::test]
    async fn a_stream_keeps_every_frame_in_order_and_ends_once() {
        let (sender, mut body) = streamed_body();
        for chunk in ["a", "b"] {
            let sent = sender.send(Ok(Frame::data(Bytes::from(chunk)))).await;
            assert!(sent.is_ok());
        }
        assert_eq!(data(poll(&mut body)), Some(Bytes::from("a")));
        assert!(!body.is_end_stream());
        assert_eq!(data(poll(&mut body)), Some(Bytes::from("b")));
        assert!(!body.is_end_stream(), "the sender is still open");
        assert!(poll(&mut body).is_pending());
        let sent = sender.send(Ok(Frame::data(Bytes::from("c")))).await;
        assert!(sent.is_ok());
        drop(sender);
        assert_eq!(data(poll(&mut body)), Some(Bytes::from("c")));
        assert!(body.is_end_stream());
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }

    /// An error right after a data frame is kept and returned on the next poll, not dropped.
    #[tokio::test]
    async fn an_error_after_data_is_returned_next() {
        let (sender, mut body) = streamed_body();
        let sent = sender.send(Ok(Frame::data(Bytes::from("a")))).await;
        assert!(sent.is_ok());
        let sent = sender.send(Err(Status::aborted("client gave up"))).await;
        assert!(sent.is_ok());
        assert_eq!(data(poll(&mut body)), Some(Bytes::from("a")));
        assert!(!body.is_end_stream());
        match poll(&mut body) {
            Poll::Ready(Some(Err(status))) => assert_eq!(status.message(), "client gave up"),
            other => panic!("expected the error, got {other:?}"),
        }
    }
}
