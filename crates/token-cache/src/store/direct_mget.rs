//! MGET on connections that the calling task writes and reads itself: the L2 lookup of every
//! GetContext and the resolution of registered documents, the reads on the request path.
//!
//! redis-rs's multiplexed connection (still used for every other command) hands each command
//! to a driver task and the reply back through a channel, waking a worker thread each way. For the
//! 37 KB MGET of a 2 x 10k-token L2 hit that added about 25-90 µs to the round trip itself
//! (BENCHMARKS.md, "L2 hit anatomy"), on a path whose whole target is about 150 µs. Here a call
//! takes an idle connection from a small pool (or opens one), writes the command, reads and
//! parses the reply on its own task, and puts the connection back.
//!
//! - A connection goes back to the pool only after a complete, well-formed reply. One whose call
//!   failed, ran over its budget or was cancelled midway is dropped (closed), so a half-read reply
//!   can never be taken for the next one.
//! - A pooled connection that fails with an I/O error (Redis restarted while it sat idle) empties
//!   the pool, and the call is retried once on a fresh connection.
//! - After a failed connect, calls fail at once for [`CONNECT_BACKOFF`] instead of each waiting on a
//!   host that does not answer.
//! - Only plain TCP (`redis://`) is handled, with AUTH and SELECT from the URL. For TLS or a Unix
//!   socket [`DirectMget::for_connection`] gives None and the store reads through redis-rs.
//!
//! The caller (`RedisStore::call`) bounds every call, connect included, by the time budget.

use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle connections kept for reuse; more may be open at once, the rest close when done.
const MAX_IDLE: usize = 16;
/// A reply buffer bigger than this is not kept with its idle connection.
const MAX_RETAINED_BUFFER: usize = 1 << 20;
/// The least free space offered to each read of the socket.
const READ_CHUNK: usize = 16 * 1024;
/// How long calls fail fast after a connect failed.
pub const CONNECT_BACKOFF: Duration = Duration::from_millis(250);
/// The longest header line accepted (`*<count>` or `$<length>`).
const MAX_HEADER_LINE: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum MgetError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("redis answered an error: {0}")]
    Server(String),
    #[error("malformed reply: {0}")]
    Protocol(&'static str),
    #[error("redis was unreachable a moment ago; next connect attempt in {0:?}")]
    BackingOff(Duration),
}

/// A pool of plain connections for MGET.
#[derive(Debug)]
pub struct DirectMget {
    host: String,
    port: u16,
    /// AUTH and SELECT, sent on every new connection.
    handshake: Vec<u8>,
    handshake_replies: usize,
    idle: Mutex<Vec<Connection>>,
    /// No connect attempt before this instant (set when one failed).
    connect_after: Mutex<Option<Instant>>,
}

#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl DirectMget {
    /// A pool for the server of `info`, or None when it is not plain TCP.
    pub fn for_connection(info: &ConnectionInfo) -> Option<Self> {
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
            idle: Mutex::new(Vec::new()),
            connect_after: Mutex::new(None),
        })
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
                lock(&self.idle).clear();
                let mut fresh = self.connect().await?;
                let values = fresh.mget(&command).await?;
                self.put_back(fresh);
                Ok(values)
            }
            Err(error) => Err(error),
        }
    }

    fn take_idle(&self) -> Option<Connection> {
        lock(&self.idle).pop()
    }

    fn put_back(&self, mut connection: Connection) {
        if connection.buffer.capacity() > MAX_RETAINED_BUFFER {
            connection.buffer = Vec::new();
        }
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE {
            idle.push(connection);
        }
    }

    async fn connect(&self) -> Result<Connection, MgetError> {
        if let Some(after) = *lock(&self.connect_after) {
            let now = Instant::now();
            if now < after {
                return Err(MgetError::BackingOff(after - now));
            }
        }
        match self.open().await {
            Ok(connection) => {
                *lock(&self.connect_after) = None;
                Ok(connection)
            }
            Err(error) => {
                *lock(&self.connect_after) = Some(Instant::now() + CONNECT_BACKOFF);
                Err(error)
            }
        }
    }

    async fn open(&self) -> Result<Connection, MgetError> {
        let stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
        stream.set_nodelay(true)?;
        let mut connection = Connection {
            stream,
            buffer: Vec::with_capacity(READ_CHUNK),
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
                    Some(b'-') => Err(MgetError::Server(
                        String::from_utf8_lossy(&line[1..]).into_owned(),
                    )),
                    _ => Err(MgetError::Protocol("expected a status reply")),
                };
                self.buffer.drain(..next);
                return outcome;
            }
            self.fill(self.buffer.len() + 1).await?;
        }
    }

    /// Reads until the buffer may hold `at_least` bytes (at least one read).
    async fn fill(&mut self, at_least: usize) -> Result<(), MgetError> {
        let wanted = at_least.saturating_sub(self.buffer.len()).max(READ_CHUNK);
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
        Some(b'-') => {
            return Err(MgetError::Server(
                String::from_utf8_lossy(&header[1..]).into_owned(),
            ));
        }
        _ => return Err(MgetError::Protocol("expected an array")),
    }
    let count =
        usize::try_from(integer(&header[1..])?).map_err(|_| MgetError::Protocol("null array"))?;
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
        if length < 0 {
            ranges.push(None);
            pos = next;
            continue;
        }
        let end = usize::try_from(length)
            .ok()
            .and_then(|length| next.checked_add(length))
            .ok_or(MgetError::Protocol("bulk length"))?;
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
/// CRLF has not arrived yet.
fn header_line(buffer: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>, MgetError> {
    let rest = &buffer[pos.min(buffer.len())..];
    match rest.windows(2).position(|pair| pair == b"\r\n") {
        Some(end) if end <= MAX_HEADER_LINE => Ok(Some((&rest[..end], pos + end + 2))),
        Some(_) => Err(MgetError::Protocol("header line too long")),
        None if rest.len() > MAX_HEADER_LINE => Err(MgetError::Protocol("header line too long")),
        None => Ok(None),
    }
}

fn integer(digits: &[u8]) -> Result<i64, MgetError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(MgetError::Protocol("not an integer"))
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
