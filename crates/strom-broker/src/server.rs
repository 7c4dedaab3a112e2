//! The accept loop and the connections.
//!
//! Each connection has a reader task and a processor: the reader reads frames
//! ahead (clients pipeline requests) into a bounded queue; the processor runs
//! each request's first phase one at a time, in order, so that produce
//! requests from one connection are appended in the order they were sent.
//! A request with a second phase ([`Reply::Later`]: a produce with acks=all
//! waiting for replication, a fetch long-polling for data) goes on
//! concurrently while the next requests'
//! first phases run; answers are written in request order, as the protocol
//! requires, at most `MAX_PENDING_ANSWERS` of them waiting.
//!
//! Bad input never panics and never wedges the broker: a frame size out of
//! bounds, a malformed header, an unknown API key or a body that does not
//! decode closes that connection with a log line.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use strom_protocol::messages::{self, ApiKey, FRAME_SIZE_PREFIX, RequestFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

use crate::api::fetch_frame::{FileRecords, Frame, Part};
use crate::api::{self, Reply};
use crate::broker::Broker;
use crate::memory::RequestLease;

/// Requests read ahead of the one being answered. Clients keep at most 5
/// produce requests in flight; 16 lets metadata and heartbeats queue beside
/// them without letting one connection buffer without limit. While a parked
/// request (JoinGroup, SyncGroup) waits, as many again are read on to notice
/// a client going away; while second phases (an acks=all produce, a long-poll
/// Fetch) wait, reading goes on as usual.
const MAX_QUEUED_REQUESTS: usize = 16;
/// Answers a connection holds unwritten (second phases running, and the
/// answers queued behind them): as many as requests read ahead, so a client
/// that pipelines acks=all produces is bounded as before; beyond it, no more
/// requests are read until answers go out.
const MAX_PENDING_ANSWERS: usize = MAX_QUEUED_REQUESTS;
/// A frame's buffer grows as its bytes arrive, starting at this much, so a
/// client that announces 100 MiB and sends nothing costs 64 KiB, not 100 MiB.
const INITIAL_FRAME_BUFFER: usize = 64 * 1024;
/// Most bytes one `sendfile` call is asked for: a follower's fetch of many
/// megabytes goes out in steps, and the task yields between them so that
/// other connections' tasks on the same worker run.
const SENDFILE_CHUNK: usize = 1024 * 1024;
/// Pause after a failed accept (out of descriptors, say) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections until the broker shuts down, at most `max.connections`
/// at a time (beyond that, new connections wait in the listen backlog, as
/// with Kafka).
pub async fn serve(broker: Arc<Broker>, listener: TcpListener) {
    let max_connections = broker.config.settings.max_connections;
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let permit = tokio::select! {
            () = broker.shutdown.cancelled() => return,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = broker.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let broker_for_task = Arc::clone(&broker);
                broker.tasks.spawn(async move {
                    serve_connection(broker_for_task, stream, peer).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// What the reader hands the processor.
enum Incoming {
    /// A request, and its bytes' share of `queued.max.request.bytes`, held
    /// until it has been answered.
    Request(Box<RequestFrame>, RequestLease),
    /// The connection must close: why, for the log.
    Close(String),
}

async fn serve_connection(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let _open = broker.metrics.open_connection();
    let (read, mut write) = stream.into_split();
    let (queue, mut requests) = mpsc::channel(MAX_QUEUED_REQUESTS);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn(read_requests(
        Arc::clone(&broker),
        read,
        queue,
        Arc::clone(&in_flight),
    ));
    // Requests read while a parked one was being answered.
    let mut backlog: VecDeque<Incoming> = VecDeque::new();
    // Answers not yet written, in request order: second phases still
    // running, and the answers that came after them (each waits its turn).
    let mut pending: FuturesOrdered<PendingAnswer> = FuturesOrdered::new();
    let reason = loop {
        let incoming = match backlog.pop_front() {
            Some(next) => Some(next),
            None => tokio::select! {
                () = broker.shutdown.cancelled() => break "broker shutting down".to_owned(),
                incoming = requests.recv(), if pending.len() < MAX_PENDING_ANSWERS => incoming,
                Some(answered) = pending.next(), if !pending.is_empty() => {
                    match write_answer(&broker, &mut write, &in_flight, answered).await {
                        Ok(()) => continue,
                        Err(reason) => break reason,
                    }
                }
            },
        };
        let (frame, lease) = match incoming {
            None => break "client closed the connection".to_owned(),
            Some(Incoming::Close(reason)) => break reason,
            Some(Incoming::Request(frame, lease)) => (frame, lease),
        };
        // A parked request (a JoinGroup waiting for its rebalance, a long
        // poll) must not hold up shutdown, nor outlive its client: a client
        // that goes away meanwhile closes the connection, as in Kafka. Their
        // handlers make their changes in tracked tasks that run to the end,
        // so only the waiting is cut short. Other requests run to completion
        // (an acks=0 produce from a client that closes right after sending it
        // still appends; shutdown waits for them).
        let parks = api::may_park(frame.api_key);
        let started = Instant::now();
        let api_key = frame.api_key;
        let handling = api::handle(&broker, &frame, peer);
        tokio::pin!(handling);
        let mut client_gone = None;
        let mut write_failed = None;
        let reply = loop {
            tokio::select! {
                reply = &mut handling => break Some(reply),
                () = broker.shutdown.cancelled(), if parks => break None,
                next = requests.recv(), if parks && client_gone.is_none() && backlog.len() < MAX_QUEUED_REQUESTS => {
                    match next {
                        Some(Incoming::Request(frame, lease)) => backlog.push_back(Incoming::Request(frame, lease)),
                        Some(Incoming::Close(reason)) => client_gone = Some(reason),
                        None => client_gone = Some("client closed the connection".to_owned()),
                    }
                    if client_gone.is_some() {
                        break None;
                    }
                }
                // Earlier requests' second phases finish while this one runs.
                Some(answered) = pending.next(), if !pending.is_empty() && write_failed.is_none() => {
                    if let Err(reason) = write_answer(&broker, &mut write, &in_flight, answered).await {
                        write_failed = Some(reason);
                    }
                }
            }
        };
        let Some(reply) = reply else {
            break client_gone.unwrap_or_else(|| "broker shutting down".to_owned());
        };
        if let Some(reason) = write_failed {
            break reason;
        }
        match reply {
            // The second phase runs while the next requests' first phases
            // do. It needs nothing of the request's bytes any more: their
            // share of the budget goes back now, not when it is answered.
            Reply::Later(second_phase) => {
                drop(lease);
                pending.push_back(Box::pin(async move {
                    Answered {
                        reply: second_phase.await,
                        api_key,
                        started,
                        _lease: None,
                    }
                }));
            }
            reply => {
                let closes = matches!(reply, Reply::Close(_));
                let answered = Answered {
                    reply,
                    api_key,
                    started,
                    _lease: Some(lease),
                };
                if pending.is_empty() {
                    if let Err(reason) =
                        write_answer(&broker, &mut write, &in_flight, answered).await
                    {
                        break reason;
                    }
                    continue;
                }
                // Behind a second phase still running: it waits its turn.
                pending.push_back(Box::pin(std::future::ready(answered)));
                if closes {
                    // Nothing behind a closing request runs: the answers
                    // owed before it go out, then the connection closes.
                    break drain(&broker, &mut write, &in_flight, &mut pending).await;
                }
            }
        }
    };
    reader.abort();
    let _ = write.shutdown().await;
    tracing::debug!(%peer, %reason, "connection closed");
}

/// A request's answer, with what is recorded when it is written.
struct Answered {
    reply: Reply,
    api_key: ApiKey,
    started: Instant,
    /// The request's share of `queued.max.request.bytes`, returned once
    /// it is answered (or, for a second phase, once its first is done).
    _lease: Option<RequestLease>,
}

/// Writes the queued answers in order until one closes the connection (or
/// a write fails): the reason to close.
async fn drain(
    broker: &Broker,
    write: &mut OwnedWriteHalf,
    in_flight: &AtomicUsize,
    pending: &mut FuturesOrdered<PendingAnswer>,
) -> String {
    loop {
        let answered = tokio::select! {
            () = broker.shutdown.cancelled() => return "broker shutting down".to_owned(),
            answered = pending.next() => answered,
        };
        let Some(answered) = answered else {
            return "closing after the answers owed".to_owned();
        };
        if let Err(reason) = write_answer(broker, write, in_flight, answered).await {
            return reason;
        }
    }
}

/// An answer in the connection's queue: ready, or a second phase running.
type PendingAnswer = Pin<Box<dyn Future<Output = Answered> + Send>>;

/// Writes one answer, in its turn: `Err` with the reason when the
/// connection must close.
async fn write_answer(
    broker: &Broker,
    write: &mut OwnedWriteHalf,
    in_flight: &AtomicUsize,
    answered: Answered,
) -> Result<(), String> {
    in_flight.fetch_sub(1, Ordering::AcqRel);
    broker
        .metrics
        .record_request(answered.api_key, answered.started.elapsed());
    match answered.reply {
        Reply::Frame(bytes) => write
            .write_all(&bytes)
            .await
            .map_err(|e| format!("write failed: {e}")),
        Reply::Stored(frame) => write_stored(write, frame)
            .await
            .map_err(|e| format!("write failed: {e}")),
        Reply::None => Ok(()),
        Reply::Close(reason) => Err(reason),
        Reply::Later(_) => {
            // A second phase resolves to an answer, never to another phase.
            tracing::error!(api = ?answered.api_key, "a second phase asked for a third; closing the connection");
            Err("internal error: nested second phase".to_owned())
        }
    }
}

/// Writes a frame whose records are sent from their segment files.
async fn write_stored(write: &mut OwnedWriteHalf, frame: Frame<FileRecords>) -> io::Result<()> {
    for part in frame.parts {
        match part {
            Part::Bytes(bytes) => write.write_all(&bytes).await?,
            Part::Records(records) => send_file(write, &records).await?,
        }
    }
    Ok(())
}

/// Sends `records` from their segment file with `sendfile`: the kernel
/// hands the page cache's pages to the socket, nothing is copied through
/// the broker (Kafka's network threads do the same). All but the last byte
/// go that way; the last one is read, then the slice is checked to still
/// hold the batches it was resolved to (no truncation since), then the byte
/// is written, so that no reader completes a frame from a log truncated
/// meanwhile: the connection closes instead and the reader fetches again.
async fn send_file(write: &mut OwnedWriteHalf, records: &FileRecords) -> io::Result<()> {
    let FileRecords {
        slice,
        file,
        position,
        len,
    } = records;
    if *len == 0 {
        return Ok(());
    }
    let last = position + (len - 1);
    let mut offset = *position;
    {
        let stream: &TcpStream = write.as_ref();
        while offset < last {
            let count = usize::try_from(last - offset)
                .unwrap_or(usize::MAX)
                .min(SENDFILE_CHUNK);
            stream.writable().await?;
            let sent = stream.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(stream, &**file, Some(&mut offset), count)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the segment file ended before its records did (truncated)",
                    ));
                }
                // Readiness and the runtime's budget are not consumed by a
                // send that succeeds: let the worker's other tasks run.
                Ok(_) => tokio::task::yield_now().await,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, last)?;
    if !slice.is_current() {
        return Err(io::Error::other(
            "the log was truncated while its records were being sent",
        ));
    }
    write.write_all(&byte).await
}

/// Reads frames until the connection ends or misbehaves.
async fn read_requests(
    broker: Arc<Broker>,
    mut read: OwnedReadHalf,
    queue: mpsc::Sender<Incoming>,
    in_flight: Arc<AtomicUsize>,
) {
    let max_frame = broker.config.settings.socket_request_max_bytes;
    let idle = Duration::from_millis(broker.config.settings.connections_max_idle_ms);
    loop {
        let mut size_buf = [0u8; FRAME_SIZE_PREFIX];
        // Idle: no request for connections.max.idle.ms while none is being
        // answered (a long-poll fetch in progress is not idleness).
        let read_size = loop {
            match tokio::time::timeout(idle, read.read_exact(&mut size_buf)).await {
                Ok(result) => break result,
                Err(_) if in_flight.load(Ordering::Acquire) > 0 => {}
                Err(_) => {
                    let _ = queue
                        .send(Incoming::Close(
                            "idle for connections.max.idle.ms".to_owned(),
                        ))
                        .await;
                    return;
                }
            }
        };
        if read_size.is_err() {
            return; // EOF or reset: the processor sees the queue close
        }
        let size = i32::from_be_bytes(size_buf);
        let Ok(size) = usize::try_from(size) else {
            let _ = queue
                .send(Incoming::Close(format!("negative frame size {size}")))
                .await;
            return;
        };
        if size > max_frame {
            tracing::warn!(
                size,
                max_frame,
                "request larger than socket.request.max.bytes; closing the connection"
            );
            let _ = queue
                .send(Incoming::Close(format!(
                    "frame of {size} bytes exceeds socket.request.max.bytes {max_frame}"
                )))
                .await;
            return;
        }
        // The frame's bytes come out of the broker-wide budget before they
        // are read; with it spent, the bytes wait in the socket.
        let lease = tokio::select! {
            lease = broker.request_budget.acquire(size) => lease,
            () = queue.closed() => return,
        };
        let mut frame = BytesMut::with_capacity(size.min(INITIAL_FRAME_BUFFER));
        while frame.len() < size {
            let want = size - frame.len();
            if frame.capacity() == frame.len() {
                frame.reserve(want.min(frame.len().max(INITIAL_FRAME_BUFFER)));
            }
            let mut limited = (&mut read).take(want as u64);
            match limited.read_buf(&mut frame).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let item = match messages::parse_request(frame.freeze()) {
            Ok(request) => {
                in_flight.fetch_add(1, Ordering::AcqRel);
                Incoming::Request(Box::new(request), lease)
            }
            Err(e) => {
                tracing::warn!(error = %e, "unparseable request header; closing the connection");
                Incoming::Close(e.to_string())
            }
        };
        let closing = matches!(item, Incoming::Close(_));
        if queue.send(item).await.is_err() || closing {
            return;
        }
    }
}
