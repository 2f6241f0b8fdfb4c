//! The WASI imports a plugin gets: captured stdio, no sockets, and no call that needs a tokio runtime.
//!
//! Rust's wasm32-wasip2 std imports `wasi:cli`, `wasi:io`, `wasi:sockets` and friends, so they
//! are linked, but a plugin reaches nothing through them. wasmtime-wasi's synchronous bindings
//! run their blocking calls (`blocking-write-and-flush`, `poll`, `create-udp-socket`, ...)
//! through `in_tokio`, which calls `Handle::block_on` when the thread is inside a tokio runtime
//! and panics the host on a worker thread ("Cannot start a runtime from within a runtime").
//! A panicking plugin writes its message to stderr first, so any guest panic would take the
//! host down. Here those calls are re-linked to poll their future without any runtime:
//! everything a plugin can hold (captured stdio, a closed stdin, deadlines on its frozen clock
//! that have passed) is ready at once, and anything that would truly block (a sleep) is
//! refused with a trap instead of hanging.

use std::future::Future;
use std::pin::pin;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::bindings::io::poll as async_poll;
use wasmtime_wasi::p2::bindings::io::streams::{
    HostInputStream as AsyncHostInputStream, HostOutputStream as AsyncHostOutputStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::bindings::sync::sockets::udp_create_socket;
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, DynPollable, Pollable, SocketError, SocketResult, StreamError, StreamResult,
    UdpSocket, subscribe,
};
use wasmtime_wasi::runtime::poll_noop;

use super::host::CallState;

const WOULD_BLOCK: &str = "the plugin waited for i/o or time that will not come; plugins cannot block";

/// Links the WASI interfaces into `linker`: wasmtime-wasi's synchronous set, with `wasi:io`
/// and UDP socket creation replaced by versions that never need a tokio runtime.
pub(crate) fn add_to_linker(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    streams::add_to_linker::<CallState, NonBlocking>(linker, |s| NonBlockingIo(s.table()))?;
    poll::add_to_linker::<CallState, NonBlocking>(linker, |s| NonBlockingIo(s.table()))?;
    monotonic_clock::add_to_linker::<CallState, NonBlocking>(linker, |s| NonBlockingIo(s.table()))?;
    udp_create_socket::add_to_linker::<CallState, NoSockets>(linker, |_| NoSockets)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Polls `future` a few times, without a runtime; None when it is still not ready. More than
/// once because a pollable may yield once before it is ready (wasmtime-wasi's past deadlines
/// do, to let tokio's reactor run).
fn now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    (0..3).find_map(|_| poll_noop(future.as_mut()))
}

/// `wasi:io` over the store's resource table, each blocking call polled once.
struct NonBlockingIo<'a>(&'a mut ResourceTable);

struct NonBlocking;

impl HasData for NonBlocking {
    type Data<'a> = NonBlockingIo<'a>;
}

impl streams::Host for NonBlockingIo<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.0, err)
    }
}

impl streams::HostOutputStream for NonBlockingIo<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        now(AsyncHostOutputStream::drop(self.0, stream)).unwrap_or_else(|| Err(wasmtime::Error::msg(WOULD_BLOCK)))
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        AsyncHostOutputStream::check_write(self.0, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        AsyncHostOutputStream::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        now(AsyncHostOutputStream::blocking_write_and_flush(self.0, stream, bytes))
            .unwrap_or_else(|| Err(StreamError::trap(WOULD_BLOCK)))
    }

    fn blocking_write_zeroes_and_flush(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        now(AsyncHostOutputStream::blocking_write_zeroes_and_flush(self.0, stream, len))
            .unwrap_or_else(|| Err(StreamError::trap(WOULD_BLOCK)))
    }

    fn subscribe(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        AsyncHostOutputStream::subscribe(self.0, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        AsyncHostOutputStream::write_zeroes(self.0, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        AsyncHostOutputStream::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        now(AsyncHostOutputStream::blocking_flush(self.0, stream))
            .unwrap_or_else(|| Err(StreamError::trap(WOULD_BLOCK)))
    }

    fn splice(&mut self, dst: Resource<DynOutputStream>, src: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        AsyncHostOutputStream::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        now(AsyncHostOutputStream::blocking_splice(self.0, dst, src, len))
            .unwrap_or_else(|| Err(StreamError::trap(WOULD_BLOCK)))
    }
}

impl streams::HostInputStream for NonBlockingIo<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        now(AsyncHostInputStream::drop(self.0, stream)).unwrap_or_else(|| Err(wasmtime::Error::msg(WOULD_BLOCK)))
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        AsyncHostInputStream::read(self.0, stream, len)
    }

    fn blocking_read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        now(AsyncHostInputStream::blocking_read(self.0, stream, len))
            .unwrap_or_else(|| Err(StreamError::trap(WOULD_BLOCK)))
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        AsyncHostInputStream::skip(self.0, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        now(AsyncHostInputStream::blocking_skip(self.0, stream, len))
            .unwrap_or_else(|| Err(StreamError::trap(WOULD_BLOCK)))
    }

    fn subscribe(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        AsyncHostInputStream::subscribe(self.0, stream)
    }
}

impl poll::Host for NonBlockingIo<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        now(async_poll::Host::poll(self.0, pollables)).unwrap_or_else(|| Err(wasmtime::Error::msg(WOULD_BLOCK)))
    }
}

impl poll::HostPollable for NonBlockingIo<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        now(async_poll::HostPollable::ready(self.0, pollable)).unwrap_or_else(|| Err(wasmtime::Error::msg(WOULD_BLOCK)))
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        now(async_poll::HostPollable::block(self.0, pollable)).unwrap_or_else(|| Err(wasmtime::Error::msg(WOULD_BLOCK)))
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.0, pollable)
    }
}

/// `wasi:clocks/monotonic-clock` on the frozen clock ([`CallState`]'s is stopped at 0): time
/// never moves, so a deadline at or before 0 is ready and any later one never is. A plugin that
/// sleeps traps (its wait is never ready) instead of holding the host thread or needing a tokio
/// timer, which the stock version does.
impl monotonic_clock::Host for NonBlockingIo<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        Ok(0)
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        Ok(1_000_000_000)
    }

    fn subscribe_instant(&mut self, when: monotonic_clock::Instant) -> wasmtime::Result<Resource<DynPollable>> {
        let deadline = self.0.push(Deadline { passed: when == 0 })?;
        subscribe(self.0, deadline)
    }

    fn subscribe_duration(&mut self, duration: monotonic_clock::Duration) -> wasmtime::Result<Resource<DynPollable>> {
        let deadline = self.0.push(Deadline { passed: duration == 0 })?;
        subscribe(self.0, deadline)
    }
}

/// A deadline on the frozen clock: passed already, or never.
struct Deadline {
    passed: bool,
}

#[wasmtime_wasi::async_trait]
impl Pollable for Deadline {
    async fn ready(&mut self) {
        if !self.passed {
            std::future::pending::<()>().await;
        }
    }
}

/// `wasi:sockets/udp-create-socket` that refuses every socket: plugins have no network, and
/// the stock version would go through `in_tokio` before checking that.
struct NoSockets;

impl HasData for NoSockets {
    type Data<'a> = NoSockets;
}

impl network::Host for NoSockets {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        error.downcast()
    }

    fn network_error_code(&mut self, _err: Resource<wasmtime::Error>) -> wasmtime::Result<Option<ErrorCode>> {
        Ok(None)
    }
}

impl network::HostNetwork for NoSockets {
    fn drop(&mut self, _network: Resource<network::Network>) -> wasmtime::Result<()> {
        // Never called: the network resources live in the stock `wasi:sockets/network`.
        Ok(())
    }
}

impl udp_create_socket::Host for NoSockets {
    fn create_udp_socket(&mut self, _family: udp_create_socket::IpAddressFamily) -> SocketResult<Resource<UdpSocket>> {
        Err(ErrorCode::AccessDenied.into())
    }
}
