//! A connection that gives up on a client that stops reading: a write that
//! makes no progress for [`SEND_TIMEOUT`] fails, which ends the response
//! and frees what it held (its connection slot, its buffer budget). nginx's
//! `send_timeout` does the same, with the same default.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How long a write may wait for the client to read.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// `T` with a deadline on every write that has to wait.
pub struct SendTimeout<T> {
    inner: T,
    timeout: Duration,
    /// Armed while a write waits; cleared when one makes progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> SendTimeout<T> {
    /// Wraps `inner`; writes waiting longer than `timeout` fail.
    pub fn new(inner: T, timeout: Duration) -> Self {
        SendTimeout {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Turns a pending write into an error once it has waited too long.
    fn check<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stalled = None;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client stopped reading",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_given_up() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = SendTimeout::new(a, Duration::from_secs(60));
        // Progress keeps the connection: the client reads, slowly.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(50)).await;
                let _ = b.read(&mut buf).await;
            }
            b // then stops reading, but stays connected
        });
        let data = vec![7u8; 64 * 1024];
        let start = tokio::time::Instant::now();
        let err = w.write_all(&data).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Each read within the timeout restarted it: 3 x 50 s, then 60 s.
        assert_eq!(start.elapsed().as_secs(), 210);
        let b = reader.await.unwrap();
        drop(b);
    }
}
