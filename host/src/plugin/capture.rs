//! Guest stdout and stderr captured in memory: the first bytes kept, the rest counted, writes
//! that never block and never fail.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of each of stdout and stderr kept per call; the rest is counted and dropped.
pub(crate) const CAPTURE_BYTES: usize = 4096;

/// How much a plugin may write in one `write`; the usual WASI permit size.
const WRITE_PERMIT: usize = 64 << 10;

/// Guest stdout or stderr: the first [`CAPTURE_BYTES`] bytes kept in memory, the rest counted.
/// Writes never block and never fail, so a chatty plugin cannot stall or break its own call.
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<CaptureBuf>>);

#[derive(Default)]
struct CaptureBuf {
    kept: Vec<u8>,
    dropped: u64,
}

impl Captured {
    fn push(&self, bytes: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = CAPTURE_BYTES.saturating_sub(buf.kept.len()).min(bytes.len());
        buf.kept.extend_from_slice(&bytes[..n]);
        buf.dropped += (bytes.len() - n) as u64;
    }

    /// What was captured (lossy UTF-8) and how many bytes were dropped; empties the capture.
    pub(crate) fn take(&self) -> (String, u64) {
        let mut buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let text = String::from_utf8_lossy(&buf.kept).into_owned();
        let dropped = buf.dropped;
        *buf = CaptureBuf::default();
        (text, dropped)
    }

    /// A copy of what was captured so far (lossy UTF-8).
    pub(crate) fn peek(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner).kept).into_owned()
    }
}

impl IsTerminal for Captured {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Captured {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(CaptureWriter(self.clone()))
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(CaptureWriter(self.clone()))
    }
}

/// The stream end of a [`Captured`].
struct CaptureWriter(Captured);

#[wasmtime_wasi::async_trait]
impl OutputStream for CaptureWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.0.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CaptureWriter {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CaptureWriter {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.0.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
