//! The HTTP server loop: accepts connections up to `MAX_CONNECTIONS`, serves each with hyper
//! (HTTP/1.1 with upgrades for WebSockets, h2c) and a timer, so that a connection that does not
//! finish its request headers within `HEADER_READ_TIMEOUT`, or sits idle that long between
//! keep-alive requests, is closed. `axum::serve` runs hyper without a timer, and hyper's header
//! timeout never fires then: connections that send nothing held a descriptor each for ever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

/// How the server treats connections (from `Config`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // h2 has no header timeout: a peer that stops answering pings is dropped instead.
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closed_tx, closed_rx) = tokio::sync::watch::channel(());
    metrics::gauge!("http_connections_max").set(limits.max_connections as f64);
    let open = metrics::gauge!("http_connections_open");
    loop {
        // A connection is accepted only with a slot free: beyond the cap, clients wait in the
        // kernel's backlog instead of taking descriptors the process needs.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                metrics::counter!("http_connections_at_limit_total").increment(1);
                tracing::warn!(
                    max = limits.max_connections,
                    "MAX_CONNECTIONS reached; new connections wait"
                );
                tokio::select! {
                    s = slots.clone().acquire_owned() => match s {
                        Ok(s) => s,
                        Err(_) => break,
                    },
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: not fatal.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Small writes go out at once: a subscription's messages are small, and with Nagle's
        // algorithm one sent while the previous is unacknowledged waits for the client's
        // (delayed) ACK, up to 40 ms on Linux.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let io = TokioIo::new(FirstBytes::new(stream, limits.header_read_timeout));
        let conn = builder
            .serve_connection_with_upgrades(io, TowerToHyperService::new(router.clone()))
            .into_owned();
        let (open, shutdown, closed) = (open.clone(), shutdown.clone(), closed_rx.clone());
        open.increment(1.0);
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            open.decrement(1.0);
            drop((slot, closed));
        });
    }
    // Every connection task holds a receiver: all have ended when the channel is closed.
    drop(closed_rx);
    closed_tx.closed().await;
    Ok(())
}

/// Bytes hyper-util reads to tell HTTP/1 from h2c before hyper's own timer starts.
const SNIFFED: usize = 24;

pin_project_lite::pin_project! {
    /// A connection whose first bytes must arrive within a deadline. hyper-util reads up to 24
    /// bytes to pick the protocol before handing the connection to hyper, with no timeout of
    /// its own: a client sending nothing, or the start of the h2 preface and then nothing, would
    /// hold the connection for ever. Past those bytes hyper's timers take over.
    struct FirstBytes {
        #[pin]
        io: TcpStream,
        deadline: Option<Pin<Box<Sleep>>>,
        read: usize,
    }
}

impl FirstBytes {
    fn new(io: TcpStream, within: Duration) -> FirstBytes {
        FirstBytes {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            read: 0,
        }
    }
}

impl AsyncRead for FirstBytes {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if let Some(deadline) = this.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within HEADER_READ_TIMEOUT",
                )));
            }
        }
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        if this.deadline.is_some() {
            *this.read += buf.filled().len() - before;
            if *this.read >= SNIFFED {
                *this.deadline = None;
            }
        }
        polled
    }
}

impl AsyncWrite for FirstBytes {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
