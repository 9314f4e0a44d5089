//! MGET on connections that the calling task writes and reads itself: the L2 lookup of every
//! GetContext and the resolution of registered documents, the reads on the request path.
//!
//! redis-rs's multiplexed connection (still used for every other command) hands each command
//! to a driver task and the reply back through a channel, waking a worker thread each way. For the
//! 38 KB MGET of a 2 x 10k-token L2 hit the benchmark's "L2 hit anatomy" went from p50 161-167 µs
//! to 75-77 µs with this module (BENCHMARKS.md, fourth session). A call takes an idle connection
//! from a small pool (or opens one), writes the command, reads and parses the reply on its own
//! task, and puts the connection back.
//!
//! - A connection goes back to the pool only after a complete, well-formed reply. One whose call
//!   failed, ran over its budget or was cancelled midway is dropped (closed), so a half-read reply
//!   can never be taken for the next one.
//! - A pooled connection that fails with an I/O error (Redis restarted while it sat idle) empties
//!   the pool, and the call is retried once on a fresh connection. Connections idle for longer
//!   than [`MAX_IDLE_AGE`] are closed rather than reused (a middlebox may have dropped them).
//! - At most [`MAX_OPEN`] connections are open at once; a call beyond that gets
//!   [`MgetError::Saturated`] and the store sends it through the multiplexed connection.
//! - A connect that fails, or is still pending after half the time budget when its call is given
//!   up, makes calls fail at once for [`CONNECT_BACKOFF`], instead of each waiting on a host that
//!   does not answer.
//! - A reply's lengths are checked before anything is allocated for them: a corrupt or foreign
//!   length line is an error, never an allocation of its size.
//! - Only plain TCP (`redis://`) is handled, with AUTH and SELECT from the URL. For TLS or a Unix
//!   socket [`DirectMget::for_connection`] gives None and the store reads through redis-rs.
//!
//! The caller (`RedisStore::call`) bounds every call, connect included, by the time budget.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Idle connections kept for reuse; more may be open at once (up to [`MAX_OPEN`]), the rest close
/// when done.
const MAX_IDLE: usize = 16;
/// Connections open at once, idle ones included, per process.
pub const MAX_OPEN: usize = 64;
/// An idle connection older than this is closed instead of reused.
pub const MAX_IDLE_AGE: Duration = Duration::from_secs(30);
/// A reply buffer bigger than this is not kept with its idle connection.
const MAX_RETAINED_BUFFER: usize = 1 << 20;
/// The least free space offered to each read of the socket, and the most reserved at once.
const READ_CHUNK: usize = 16 * 1024;
const MAX_RESERVE: usize = 1 << 20;
/// Redis's own default limit on a bulk string (`proto-max-bulk-len`).
const MAX_BULK_BYTES: usize = 512 << 20;
/// How long calls fail fast after a connect failed.
pub const CONNECT_BACKOFF: Duration = Duration::from_millis(250);
/// The longest `*<count>` or `$<length>` line accepted, and the longest status or error line.
const MAX_HEADER_LINE: usize = 32;
const MAX_MESSAGE_LINE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MgetError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("redis answered an error: {0}")]
    Server(String),
    #[error("malformed reply: {0}")]
    Protocol(&'static str),
    #[error("connecting to redis failed a moment ago ({cause}); next attempt in {remaining:?}")]
    BackingOff { remaining: Duration, cause: String },
    #[error("all {MAX_OPEN} direct connections are busy")]
    Saturated,
}

/// A pool of plain connections for MGET.
pub struct DirectMget {
    host: String,
    port: u16,
    /// AUTH and SELECT, sent on every new connection (holds the password: not in Debug).
    handshake: Vec<u8>,
    handshake_replies: usize,
    /// The caller's time budget: a connect pending for half of it when given up counts as failed.
    budget: Duration,
    idle: Mutex<Vec<Connection>>,
    open: Arc<Semaphore>,
    connects: Mutex<ConnectState>,
}

impl std::fmt::Debug for DirectMget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectMget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// Connect failures and successes, for the backoff.
#[derive(Debug, Default)]
struct ConnectState {
    /// No connect attempt before this instant, and why.
    backoff: Option<(Instant, String)>,
    /// When the last successful connect started: a failure of an attempt that started earlier
    /// says nothing about the server now and does not start a backoff.
    last_success_started: Option<Instant>,
}

#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
    last_used: Instant,
    /// Counts this connection against [`MAX_OPEN`] until it is closed.
    _permit: OwnedSemaphorePermit,
}

impl DirectMget {
    /// A pool for the server of `info`, or None when it is not plain TCP. `budget` is the time
    /// budget of the calls it serves.
    pub fn for_connection(info: &ConnectionInfo, budget: Duration) -> Option<Self> {
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let settings = info.redis_settings();
        let mut handshake = Vec::new();
        let mut handshake_replies = 0;
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(username) = settings.username() {
                auth.arg(username);
            }
            auth.arg(password);
            handshake.extend(auth.get_packed_command());
            handshake_replies += 1;
        }
        if settings.db() != 0 {
            handshake.extend(redis::cmd("SELECT").arg(settings.db()).get_packed_command());
            handshake_replies += 1;
        }
        Some(Self {
            host: host.clone(),
            port: *port,
            handshake,
            handshake_replies,
            budget,
            idle: Mutex::new(Vec::new()),
            open: Arc::new(Semaphore::new(MAX_OPEN)),
            connects: Mutex::new(ConnectState::default()),
        })
    }

    /// Opens one connection into the pool now (at start), so that the first request does not
    /// pay for it and a wrong password shows in the start-up log.
    pub async fn warm(&self) -> Result<(), MgetError> {
        let connection = self.connect().await?;
        self.put_back(connection);
        Ok(())
    }

    /// The values of `keys`, in order (None where a key is absent).
    pub async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, MgetError> {
        let command = redis::cmd("MGET").arg(keys).get_packed_command();
        let pooled = self.take_idle();
        let reused = pooled.is_some();
        let mut connection = match pooled {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        match connection.mget(&command).await {
            Ok(values) => {
                self.put_back(connection);
                Ok(values)
            }
            Err(MgetError::Io(error)) if reused => {
                // Every idle connection predates the failure: likely all dead the same way.
                tracing::debug!(%error, "a pooled redis connection failed; retrying on a new one");
                drop(connection);
                lock(&self.idle).clear();
                let mut fresh = self.connect().await?;
                let values = fresh.mget(&command).await?;
                self.put_back(fresh);
                Ok(values)
            }
            Err(error) => Err(error),
        }
    }

    /// The most recently used idle connection that is young enough (older ones are closed).
    fn take_idle(&self) -> Option<Connection> {
        let mut idle = lock(&self.idle);
        while let Some(connection) = idle.pop() {
            if connection.last_used.elapsed() <= MAX_IDLE_AGE {
                return Some(connection);
            }
        }
        None
    }

    fn put_back(&self, mut connection: Connection) {
        if connection.buffer.capacity() > MAX_RETAINED_BUFFER {
            connection.buffer = Vec::new();
        }
        connection.last_used = Instant::now();
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE {
            idle.push(connection);
        }
    }

    async fn connect(&self) -> Result<Connection, MgetError> {
        if let Some((until, cause)) = &lock(&self.connects).backoff {
            let now = Instant::now();
            if now < *until {
                return Err(MgetError::BackingOff {
                    remaining: *until - now,
                    cause: cause.clone(),
                });
            }
        }
        let permit = self
            .open
            .clone()
            .try_acquire_owned()
            .map_err(|_| MgetError::Saturated)?;
        let mut attempt = ConnectAttempt {
            pool: self,
            started: Instant::now(),
            finished: false,
        };
        let outcome = self.open(permit).await;
        attempt.finished = true;
        match &outcome {
            Ok(_) => {
                let mut state = lock(&self.connects);
                state.backoff = None;
                state.last_success_started = Some(attempt.started);
            }
            Err(error) => self.back_off(attempt.started, error.to_string()),
        }
        outcome
    }

    /// Starts a backoff for a connect that started at `started` and failed, unless a connect
    /// that started later has succeeded since.
    fn back_off(&self, started: Instant, cause: String) {
        let mut state = lock(&self.connects);
        if state
            .last_success_started
            .is_some_and(|success| success > started)
        {
            return;
        }
        state.backoff = Some((Instant::now() + CONNECT_BACKOFF, cause));
    }

    async fn open(&self, permit: OwnedSemaphorePermit) -> Result<Connection, MgetError> {
        let stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
        stream.set_nodelay(true)?;
        let mut connection = Connection {
            stream,
            buffer: Vec::with_capacity(READ_CHUNK),
            last_used: Instant::now(),
            _permit: permit,
        };
        if self.handshake_replies > 0 {
            connection.stream.write_all(&self.handshake).await?;
            for _ in 0..self.handshake_replies {
                connection.read_status().await?;
            }
            if !connection.buffer.is_empty() {
                return Err(MgetError::Protocol("bytes after the handshake replies"));
            }
        }
        Ok(connection)
    }
}

/// A connect in progress. Dropped unfinished (its call ran out of budget, or was cancelled) after
/// half the budget, it counts as failed: a host that never answers a SYN would otherwise cost
/// every call its whole budget.
struct ConnectAttempt<'a> {
    pool: &'a DirectMget,
    started: Instant,
    finished: bool,
}

impl Drop for ConnectAttempt<'_> {
    fn drop(&mut self) {
        if !self.finished && self.started.elapsed() >= self.pool.budget / 2 {
            self.pool
                .back_off(self.started, "no answer to the connect".to_owned());
        }
    }
}

/// The pool's locks guard plain pushes and pops: a panic cannot leave them half-done.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Connection {
    async fn mget(&mut self, command: &[u8]) -> Result<Vec<Option<Vec<u8>>>, MgetError> {
        self.stream.write_all(command).await?;
        self.buffer.clear();
        loop {
            match parse_bulk_array(&self.buffer)? {
                Parsed::Complete(ranges) => {
                    return Ok(ranges
                        .into_iter()
                        .map(|range| range.map(|range| self.buffer[range].to_vec()))
                        .collect());
                }
                Parsed::Incomplete { at_least } => self.fill(at_least).await?,
            }
        }
    }

    /// One status reply (`+OK`) of the handshake, consumed from the buffer (the next one may
    /// have come in the same read); an error reply fails the connect.
    async fn read_status(&mut self) -> Result<(), MgetError> {
        loop {
            if let Some((line, next)) = header_line(&self.buffer, 0)? {
                let outcome = match line.first() {
                    Some(b'+') => Ok(()),
                    Some(b'-') => Err(server_error(line)),
                    _ => Err(MgetError::Protocol("expected a status reply")),
                };
                self.buffer.drain(..next);
                return outcome;
            }
            self.fill(self.buffer.len() + 1).await?;
        }
    }

    /// One read towards `at_least` bytes in all: room for what is missing is reserved up to
    /// [`MAX_RESERVE`] at a time (the buffer grows as data arrives, never ahead of it by more).
    async fn fill(&mut self, at_least: usize) -> Result<(), MgetError> {
        let wanted = at_least
            .saturating_sub(self.buffer.len())
            .clamp(READ_CHUNK, MAX_RESERVE);
        self.buffer.reserve(wanted);
        if self.stream.read_buf(&mut self.buffer).await? == 0 {
            return Err(MgetError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// Where each value lies in the buffer (None for a missing key).
    Complete(Vec<Option<Range<usize>>>),
    /// The reply needs at least this many bytes in all.
    Incomplete { at_least: usize },
}

/// Parses a RESP2 array of bulk strings (MGET's reply) from the start of `buffer`. The whole
/// buffer must be that one reply: bytes after it mean the connection is out of step.
fn parse_bulk_array(buffer: &[u8]) -> Result<Parsed, MgetError> {
    let Some((header, mut pos)) = header_line(buffer, 0)? else {
        return Ok(Parsed::Incomplete {
            at_least: buffer.len() + 1,
        });
    };
    match header.first() {
        Some(b'*') => {}
        Some(b'-') => return Err(server_error(header)),
        _ => return Err(MgetError::Protocol("expected an array")),
    }
    let count = usize::try_from(integer(&header[1..])?)
        .map_err(|_| MgetError::Protocol("array length out of range"))?;
    let mut ranges = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let Some((item, next)) = header_line(buffer, pos)? else {
            return Ok(Parsed::Incomplete {
                at_least: buffer.len() + 1,
            });
        };
        if item.first() != Some(&b'$') {
            return Err(MgetError::Protocol("expected a bulk string"));
        }
        let length = integer(&item[1..])?;
        if length == -1 {
            ranges.push(None);
            pos = next;
            continue;
        }
        let end = usize::try_from(length)
            .ok()
            .filter(|length| *length <= MAX_BULK_BYTES)
            .and_then(|length| next.checked_add(length))
            .ok_or(MgetError::Protocol("bulk length out of range"))?;
        let Some(terminator) = buffer.get(end..end + 2) else {
            return Ok(Parsed::Incomplete { at_least: end + 2 });
        };
        if terminator != b"\r\n" {
            return Err(MgetError::Protocol("bulk string not terminated"));
        }
        ranges.push(Some(next..end));
        pos = end + 2;
    }
    if pos != buffer.len() {
        return Err(MgetError::Protocol("bytes after the reply"));
    }
    Ok(Parsed::Complete(ranges))
}

/// The line starting at `pos` (without its CRLF) and where the next one starts; None when its
/// CRLF has not arrived yet. Length lines are short; status and error lines (`+`, `-`) may carry
/// a sentence.
fn header_line(buffer: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>, MgetError> {
    let rest = &buffer[pos.min(buffer.len())..];
    let limit = match rest.first() {
        Some(b'+' | b'-') => MAX_MESSAGE_LINE,
        _ => MAX_HEADER_LINE,
    };
    let searched = &rest[..rest.len().min(limit + 2)];
    match searched.windows(2).position(|pair| pair == b"\r\n") {
        Some(end) => Ok(Some((&rest[..end], pos + end + 2))),
        None if rest.len() >= limit + 2 => Err(MgetError::Protocol("header line too long")),
        None => Ok(None),
    }
}

/// The error a `-` line carries (its text after the `-`).
fn server_error(line: &[u8]) -> MgetError {
    MgetError::Server(String::from_utf8_lossy(&line[1..]).into_owned())
}

/// A RESP integer: `-1` or plain decimal digits (no sign, no leading zeros past a lone `0`).
fn integer(digits: &[u8]) -> Result<i64, MgetError> {
    let plain = match digits {
        b"-1" => return Ok(-1),
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    plain
        .then(|| std::str::from_utf8(digits).ok()?.parse().ok())
        .flatten()
        .ok_or(MgetError::Protocol("not a length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values_and_missing_keys() {
        let reply = b"*3\r\n$5\r\nhello\r\n$-1\r\n$0\r\n\r\n";
        let Parsed::Complete(ranges) = parse_bulk_array(reply).unwrap() else {
            panic!("complete reply taken as incomplete");
        };
        let values: Vec<Option<&[u8]>> = ranges
            .into_iter()
            .map(|range| range.map(|range| &reply[range]))
            .collect();
        assert_eq!(values, vec![Some(&b"hello"[..]), None, Some(&b""[..])]);
    }

    #[test]
    fn every_prefix_of_a_reply_is_incomplete_and_asks_for_more() {
        let reply = b"*2\r\n$12\r\nhello\r\nworld\r\n$-1\r\n";
        for cut in 0..reply.len() {
            match parse_bulk_array(&reply[..cut]).unwrap() {
                Parsed::Incomplete { at_least } => assert!(at_least > cut, "cut {cut}"),
                Parsed::Complete(_) => panic!("a prefix of {cut} bytes taken as complete"),
            }
        }
        assert!(matches!(
            parse_bulk_array(reply).unwrap(),
            Parsed::Complete(_)
        ));
    }

    #[test]
    fn a_bulk_length_tells_how_much_to_read() {
        assert_eq!(
            parse_bulk_array(b"*1\r\n$40000\r\nab").unwrap(),
            Parsed::Incomplete {
                at_least: 12 + 40_000 + 2
            }
        );
    }

    #[test]
    fn a_length_beyond_any_value_is_an_error_not_an_allocation() {
        for reply in [
            &b"*1\r\n$9000000000000000000\r\n"[..],
            b"*1\r\n$536870913\r\n",
            b"*99999999999999999999\r\n",
        ] {
            assert!(
                matches!(parse_bulk_array(reply), Err(MgetError::Protocol(_))),
                "{:?}",
                String::from_utf8_lossy(reply)
            );
        }
    }

    #[test]
    fn long_error_lines_are_read_as_errors() {
        let reply = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
        assert!(matches!(
            parse_bulk_array(reply),
            Err(MgetError::Server(message)) if message.starts_with("WRONGPASS")
        ));
        // Not yet complete: more may come.
        assert!(matches!(
            parse_bulk_array(&reply[..50]),
            Ok(Parsed::Incomplete { .. })
        ));
    }

    #[test]
    fn lengths_are_plain_decimals() {
        for bad in ["+5", "007", "-2", "", "1 ", "x"] {
            assert!(integer(bad.as_bytes()).is_err(), "{bad:?}");
        }
        for (text, value) in [("0", 0), ("-1", -1), ("37000", 37_000)] {
            assert_eq!(integer(text.as_bytes()).unwrap(), value);
        }
    }

    /// A call given up halfway through a reply closes its connection: the next call does not
    /// read the rest of that reply as its own.
    #[tokio::test]
    async fn a_call_cancelled_mid_reply_does_not_return_its_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut accepted = 0;
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                accepted += 1;
                let mut request = [0u8; 256];
                let _ = socket.read(&mut request).await;
                if accepted == 1 {
                    // Half a reply, then nothing.
                    socket.write_all(b"*1\r\n$10\r\nhalf").await.unwrap();
                    held.push(socket);
                } else {
                    socket.write_all(b"*1\r\n$5\r\nwhole\r\n").await.unwrap();
                    held.push(socket);
                    return accepted;
                }
            }
            accepted
        });
        let info =
            redis::IntoConnectionInfo::into_connection_info(format!("redis://127.0.0.1:{port}"))
                .unwrap();
        let pool = DirectMget::for_connection(&info, Duration::from_millis(100)).unwrap();
        let keys = vec!["k".to_owned()];
        let given_up = tokio::time::timeout(Duration::from_millis(100), pool.mget(&keys)).await;
        assert!(given_up.is_err(), "the first call waits for the rest");
        let values = tokio::time::timeout(Duration::from_secs(5), pool.mget(&keys))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(values, vec![Some(b"whole".to_vec())]);
        assert_eq!(
            server.await.unwrap(),
            2,
            "the second call opened its own connection"
        );
    }

    #[test]
    fn debug_output_leaves_out_the_password() {
        let info =
            redis::IntoConnectionInfo::into_connection_info("redis://:hunter2@127.0.0.1:6379/2")
                .unwrap();
        let pool = DirectMget::for_connection(&info, Duration::from_millis(20)).unwrap();
        assert!(!format!("{pool:?}").contains("hunter2"));
    }

    #[test]
    fn errors_and_garbage_are_rejected() {
        assert!(matches!(
            parse_bulk_array(b"-NOAUTH Authentication required.\r\n"),
            Err(MgetError::Server(message)) if message.starts_with("NOAUTH")
        ));
        for bad in [
            &b"+OK\r\n"[..],
            b"*1\r\n:5\r\n",
            b"*1\r\n$3\r\nabcXY",
            b"*1\r\n$x\r\n",
            b"*-1\r\n",
            b"*1\r\n$1\r\na\r\n*0\r\n",
            &[b'*'; 40],
        ] {
            assert!(
                parse_bulk_array(bad).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
