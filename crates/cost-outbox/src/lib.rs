//! tollgate-cost-outbox: the client-side outbox, how a caller (the router) hands usage records
//! to the cost-tracker without ever losing one, whether the service is up, slow or down.
//!
//! - [`CostOutbox::submit`] puts a record in a bounded in-memory queue; when the queue is full,
//!   or the service is known to be down, records go to the on-disk spool instead (appended,
//!   then fsync'ed before `submit` returns).
//! - One background task (tracked by [`Shutdown`], so the process waits for it) sends queued
//!   records in `RecordBatch` calls; a batch that fails is spooled, and the spool is replayed
//!   with exponential backoff and jitter until the service takes it.
//! - Replays are safe: `(request_id, attempt)` is the ledger's idempotency key, so a record
//!   sent twice (a crash between send and spool cleanup) counts once.
//! - On shutdown the queue is drained: sent if the service answers, spooled if not; the next
//!   outbox opened on the same spool directory replays it.
//! - A record the service refuses as invalid is never retried forever nor dropped silently: it
//!   is moved to `rejected.spool` in the spool directory and logged.
//!
//! Spool format: segments of length-prefixed protobuf (`u32` big-endian length, then an encoded
//! `tollgate.v1.UsageRecord`). A record cut short by a crash during its append (never
//! acknowledged to the caller) is ignored on replay.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tollgate_kit::grpc::client::TracedChannel;
use tollgate_kit::shutdown::Shutdown;
use tollgate_proto::v1::cost_tracker_client::CostTrackerClient;
use tollgate_proto::v1::{RecordBatchRequest, RecordRequest, UsageRecord};

const ACTIVE_SEGMENT: &str = "active.spool";
const REJECTED_FILE: &str = "rejected.spool";
const SEALED_PREFIX: &str = "sealed-";
/// Largest record accepted from a spool file (a corrupt length must not allocate gigabytes).
const MAX_SPOOLED_RECORD_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// Directory of the spool files; created when missing.
    pub spool_dir: PathBuf,
    /// Records held in memory before new ones go straight to disk.
    pub memory_capacity: usize,
    /// Records per RecordBatch call.
    pub batch_size: usize,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Bound on one RecordBatch call.
    pub call_timeout: Duration,
}

impl OutboxConfig {
    pub fn new(spool_dir: impl Into<PathBuf>) -> Self {
        Self {
            spool_dir: spool_dir.into(),
            memory_capacity: 10_000,
            batch_size: 500,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            call_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cost outbox spool {path}: {source}")]
    Spool {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cost outbox spool task failed: {0}")]
    Task(String),
}

/// Hands usage records to the cost-tracker, exactly once in effect. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CostOutbox {
    queue_tx: mpsc::Sender<UsageRecord>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    spool: std::sync::Mutex<Spool>,
    /// Records accepted and not yet acknowledged by the service (memory and disk).
    pending: AtomicI64,
    /// Set after a failed call; new batches are spooled until a replay succeeds.
    service_down: AtomicBool,
}

impl Shared {
    fn add_pending(&self, delta: i64) {
        let now = self.pending.fetch_add(delta, Ordering::AcqRel) + delta;
        metrics::gauge!("tollgate_cost_outbox_pending").set(now as f64);
    }

    async fn spool(self: &Arc<Self>, records: Vec<UsageRecord>) -> Result<(), OutboxError> {
        let shared = Arc::clone(self);
        tokio::task::spawn_blocking(move || match shared.spool.lock() {
            Ok(mut spool) => spool.append(&records),
            Err(_) => Err(OutboxError::Task("spool lock poisoned".into())),
        })
        .await
        .map_err(|e| OutboxError::Task(e.to_string()))?
    }
}

impl CostOutbox {
    /// Opens the spool (counting what an earlier run left in it) and starts the flusher as a
    /// task that `shutdown` waits for.
    pub fn start(
        config: OutboxConfig,
        channel: TracedChannel,
        shutdown: &Shutdown,
    ) -> Result<Self, OutboxError> {
        let spool = Spool::open(&config.spool_dir)?;
        let left_over = spool.count_records()?;
        let (queue_tx, queue_rx) = mpsc::channel(config.memory_capacity.max(1));
        let shared = Arc::new(Shared {
            spool: std::sync::Mutex::new(spool),
            pending: AtomicI64::new(0),
            service_down: AtomicBool::new(false),
        });
        shared.add_pending(i64::try_from(left_over).unwrap_or(i64::MAX));
        let flusher = Flusher {
            client: CostTrackerClient::new(channel),
            config,
            shared: Arc::clone(&shared),
            shutdown: shutdown.clone(),
        };
        shutdown.spawn_tracked(flusher.run(queue_rx));
        Ok(Self { queue_tx, shared })
    }

    /// Accepts a record for delivery. Returns once it is queued in memory or, when memory is
    /// full or the service is down, written and fsync'ed to the spool; an error means neither
    /// was possible (the disk failed) and the caller still owns the record.
    pub async fn submit(&self, record: UsageRecord) -> Result<(), OutboxError> {
        self.shared.add_pending(1);
        let record = if self.shared.service_down.load(Ordering::Acquire) {
            record
        } else {
            match self.queue_tx.try_send(record) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(record))
                | Err(mpsc::error::TrySendError::Closed(record)) => record,
            }
        };
        let result = self.shared.spool(vec![record]).await;
        if result.is_err() {
            self.shared.add_pending(-1);
        }
        result
    }

    /// Records accepted but not yet acknowledged by the service.
    pub fn pending(&self) -> u64 {
        u64::try_from(self.shared.pending.load(Ordering::Acquire)).unwrap_or(0)
    }
}

/// How a call ended.
enum Delivery {
    Delivered,
    /// The service or the network failed; try again later.
    Retry(tonic::Status),
    /// The service refused the input itself.
    Invalid(tonic::Status),
}

struct Flusher {
    client: CostTrackerClient<TracedChannel>,
    config: OutboxConfig,
    shared: Arc<Shared>,
    shutdown: Shutdown,
}

impl Flusher {
    async fn run(mut self, mut queue_rx: mpsc::Receiver<UsageRecord>) {
        let mut backoff = self.config.initial_backoff;
        let mut replay_at = Instant::now();
        loop {
            let spool_waiting = self.spool_has_records();
            tokio::select! {
                biased;
                () = self.shutdown.triggered() => break,
                first = queue_rx.recv() => {
                    let Some(first) = first else { break };
                    let batch = self.take_batch(first, &mut queue_rx);
                    if self.shared.service_down.load(Ordering::Acquire) {
                        self.spool_or_log(batch).await;
                    } else if !self.deliver(batch).await {
                        replay_at = Instant::now() + jittered(backoff);
                    }
                }
                () = tokio::time::sleep_until(replay_at), if spool_waiting => {
                    if self.replay_spool().await {
                        backoff = self.config.initial_backoff;
                        self.shared.service_down.store(false, Ordering::Release);
                    } else {
                        backoff = (backoff * 2).min(self.config.max_backoff);
                    }
                    replay_at = Instant::now() + jittered(backoff);
                }
            }
        }
        // Shutdown: whatever is still in memory is sent once, or spooled for the next run.
        queue_rx.close();
        let mut rest = Vec::new();
        while let Some(record) = queue_rx.recv().await {
            rest.push(record);
        }
        for batch in rest.chunks(self.config.batch_size.max(1)) {
            if self.shared.service_down.load(Ordering::Acquire) {
                self.spool_or_log(batch.to_vec()).await;
            } else {
                self.deliver(batch.to_vec()).await;
            }
        }
        tracing::info!(
            pending = self.shared.pending.load(Ordering::Acquire),
            "cost outbox flushed"
        );
    }

    fn take_batch(
        &self,
        first: UsageRecord,
        queue_rx: &mut mpsc::Receiver<UsageRecord>,
    ) -> Vec<UsageRecord> {
        let mut batch = Vec::with_capacity(self.config.batch_size.max(1));
        batch.push(first);
        while batch.len() < self.config.batch_size {
            match queue_rx.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        batch
    }

    fn spool_has_records(&self) -> bool {
        self.shared
            .spool
            .lock()
            .map(|spool| spool.has_records())
            .unwrap_or(true)
    }

    async fn spool_or_log(&self, batch: Vec<UsageRecord>) {
        let count = batch.len();
        if let Err(error) = self.shared.spool(batch).await {
            // Nothing else can hold them: the disk refused. Loud, and counted out of pending.
            tracing::error!(%error, count, "cost records could neither be sent nor spooled");
            self.shared.add_pending(-(count as i64));
        }
    }

    /// Sends a batch; spools it (or the part that is not delivered) on failure. True when
    /// the service took everything it could take.
    async fn deliver(&mut self, batch: Vec<UsageRecord>) -> bool {
        match self.send(batch.clone()).await {
            Delivery::Delivered => {
                self.delivered(batch.len());
                true
            }
            Delivery::Retry(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), count = batch.len(), "cost-tracker unreachable; spooling records");
                self.shared.service_down.store(true, Ordering::Release);
                self.spool_or_log(batch).await;
                false
            }
            Delivery::Invalid(_) => self.deliver_one_by_one(batch).await,
        }
    }

    /// A batch was refused as invalid: find the culprits, deliver the rest.
    async fn deliver_one_by_one(&mut self, batch: Vec<UsageRecord>) -> bool {
        let mut retry = Vec::new();
        for record in batch {
            let call = self.client.record(RecordRequest {
                record: Some(record.clone()),
            });
            match tokio::time::timeout(self.config.call_timeout, call).await {
                Ok(Ok(_)) => self.delivered(1),
                Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                    self.reject(record, &status).await;
                }
                _ => retry.push(record),
            }
        }
        if retry.is_empty() {
            return true;
        }
        self.shared.service_down.store(true, Ordering::Release);
        self.spool_or_log(retry).await;
        false
    }

    async fn reject(&self, record: UsageRecord, status: &tonic::Status) {
        tracing::error!(
            request_id = record.request_id,
            attempt = record.attempt,
            reason = status.message(),
            "cost-tracker refused a usage record; kept in rejected.spool"
        );
        let shared = Arc::clone(&self.shared);
        let result = tokio::task::spawn_blocking(move || match shared.spool.lock() {
            Ok(spool) => spool.append_rejected(&record),
            Err(_) => Err(OutboxError::Task("spool lock poisoned".into())),
        })
        .await;
        if let Ok(Err(error)) | Err(error) = result.map_err(|e| OutboxError::Task(e.to_string())) {
            tracing::error!(%error, "could not keep the refused record");
        }
        self.shared.add_pending(-1);
    }

    fn delivered(&self, count: usize) {
        self.shared.add_pending(-(count as i64));
        metrics::counter!("tollgate_cost_outbox_flushed_total").increment(count as u64);
    }

    async fn send(&mut self, records: Vec<UsageRecord>) -> Delivery {
        let call = self.client.record_batch(RecordBatchRequest { records });
        match tokio::time::timeout(self.config.call_timeout, call).await {
            Ok(Ok(_)) => Delivery::Delivered,
            Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                Delivery::Invalid(status)
            }
            Ok(Err(status)) => Delivery::Retry(status),
            Err(_) => Delivery::Retry(tonic::Status::deadline_exceeded("record batch timed out")),
        }
    }

    /// Sends every sealed segment (sealing the active one first); a segment is deleted once all
    /// of it is delivered. False at the first failure.
    async fn replay_spool(&mut self) -> bool {
        let segments = {
            let Ok(mut spool) = self.shared.spool.lock() else {
                return false;
            };
            match spool.seal_and_list() {
                Ok(segments) => segments,
                Err(error) => {
                    tracing::error!(%error, "cannot read the cost outbox spool");
                    return false;
                }
            }
        };
        for segment in segments {
            let path = segment.clone();
            let read = tokio::task::spawn_blocking(move || read_segment(&path))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            let records = match read {
                Ok(records) => records,
                Err(error) => {
                    tracing::error!(%error, "cannot read a cost outbox spool segment");
                    return false;
                }
            };
            let batch_size = self.config.batch_size.max(1);
            for (index, batch) in records.chunks(batch_size).enumerate() {
                match self.send(batch.to_vec()).await {
                    Delivery::Delivered => self.delivered(batch.len()),
                    Delivery::Invalid(_) => {
                        let mut all = true;
                        for record in batch {
                            match self.send(vec![record.clone()]).await {
                                Delivery::Delivered => self.delivered(1),
                                Delivery::Invalid(status) => {
                                    self.reject(record.clone(), &status).await
                                }
                                Delivery::Retry(_) => all = false,
                            }
                        }
                        if !all {
                            // Resending the whole batch later is harmless: the ledger ignores
                            // duplicates. Keep it and what follows.
                            keep_rest(&segment, &records[index * batch_size..]);
                            return false;
                        }
                    }
                    Delivery::Retry(_) => {
                        keep_rest(&segment, &records[index * batch_size..]);
                        return false;
                    }
                }
            }
            if let Err(error) = std::fs::remove_file(&segment) {
                tracing::error!(%error, path = %segment.display(), "cannot remove a replayed spool segment");
                return false;
            }
        }
        // Only this task seals segments, so none appeared while they were replayed.
        if let Ok(mut spool) = self.shared.spool.lock() {
            spool.sealed_waiting = false;
        }
        true
    }
}

/// Rewrites a partly replayed segment with only what is left of it (atomically: a new file
/// renamed over the old one), so that delivered records are neither resent nor counted twice.
fn keep_rest(segment: &Path, rest: &[UsageRecord]) {
    let tmp = segment.with_extension("rewrite");
    let write = || -> std::io::Result<()> {
        let mut buffer = Vec::new();
        for record in rest {
            let bytes = record.encode_to_vec();
            buffer.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            buffer.extend_from_slice(&bytes);
        }
        let mut file = File::create(&tmp)?;
        file.write_all(&buffer)?;
        file.sync_all()?;
        std::fs::rename(&tmp, segment)
    };
    if let Err(error) = write() {
        // The old segment is intact: its delivered part will be resent and ignored as
        // duplicates by the ledger.
        tracing::warn!(%error, path = %segment.display(), "could not shorten a spool segment");
    }
}

/// Delay with ±25 % jitter, so that many clients recovering at once do not retry in lockstep.
fn jittered(delay: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let unit = (hasher.finish() % 1000) as f64 / 1000.0; // [0, 1)
    delay.mul_f64(0.75 + unit * 0.5)
}

#[derive(Debug)]
struct Spool {
    dir: PathBuf,
    /// Records in the active segment (sealed ones are counted by the flusher's replay).
    active_records: u64,
    /// Whether sealed segments may be waiting: kept in memory so that the flusher's loop does
    /// not list the directory each time round.
    sealed_waiting: bool,
    sealed_sequence: u64,
}

impl Spool {
    fn open(dir: &Path) -> Result<Self, OutboxError> {
        std::fs::create_dir_all(dir).map_err(|source| OutboxError::Spool {
            path: dir.to_owned(),
            source,
        })?;
        let mut spool = Self {
            dir: dir.to_owned(),
            active_records: 0,
            sealed_waiting: false,
            sealed_sequence: 0,
        };
        spool.sealed_waiting = !spool.sealed_segments()?.is_empty();
        // A torn tail (a crash during an append) is cut off, so that later appends stay readable.
        let active = spool.active_path();
        let (records, intact) = read_segment_with_length(&active).map_err(|e| spool.io_error(e))?;
        if active.exists() {
            let file = OpenOptions::new()
                .write(true)
                .open(&active)
                .map_err(|e| spool.io_error(e))?;
            if file.metadata().map_err(|e| spool.io_error(e))?.len() > intact {
                file.set_len(intact).map_err(|e| spool.io_error(e))?;
                file.sync_all().map_err(|e| spool.io_error(e))?;
            }
        }
        spool.active_records = records.len() as u64;
        Ok(spool)
    }

    fn active_path(&self) -> PathBuf {
        self.dir.join(ACTIVE_SEGMENT)
    }

    fn io_error(&self, source: std::io::Error) -> OutboxError {
        OutboxError::Spool {
            path: self.dir.clone(),
            source,
        }
    }

    fn sealed_segments(&self) -> Result<Vec<PathBuf>, OutboxError> {
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(|e| self.io_error(e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(SEALED_PREFIX))
            })
            .collect();
        segments.sort();
        Ok(segments)
    }

    fn count_records(&self) -> Result<u64, OutboxError> {
        let mut total = self.active_records;
        for segment in self.sealed_segments()? {
            total += read_segment(&segment).map_err(|e| self.io_error(e))?.len() as u64;
        }
        Ok(total)
    }

    fn has_records(&self) -> bool {
        self.active_records > 0 || self.sealed_waiting
    }

    /// Appends and fsyncs: the records survive a crash once this returns.
    fn append(&mut self, records: &[UsageRecord]) -> Result<(), OutboxError> {
        let mut buffer = Vec::new();
        for record in records {
            let bytes = record.encode_to_vec();
            buffer.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            buffer.extend_from_slice(&bytes);
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.active_path())
            .map_err(|e| self.io_error(e))?;
        file.write_all(&buffer).map_err(|e| self.io_error(e))?;
        file.sync_data().map_err(|e| self.io_error(e))?;
        self.active_records += records.len() as u64;
        Ok(())
    }

    fn append_rejected(&self, record: &UsageRecord) -> Result<(), OutboxError> {
        let bytes = record.encode_to_vec();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(REJECTED_FILE))
            .map_err(|e| self.io_error(e))?;
        file.write_all(&(bytes.len() as u32).to_be_bytes())
            .and_then(|()| file.write_all(&bytes))
            .and_then(|()| file.sync_data())
            .map_err(|e| self.io_error(e))
    }

    /// Turns the active segment into a sealed one (new appends start a fresh active segment)
    /// and lists the sealed segments, oldest first.
    fn seal_and_list(&mut self) -> Result<Vec<PathBuf>, OutboxError> {
        if self.active_records > 0 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            self.sealed_sequence += 1;
            let sealed = self.dir.join(format!(
                "{SEALED_PREFIX}{nanos:020}-{:06}.spool",
                self.sealed_sequence
            ));
            std::fs::rename(self.active_path(), &sealed).map_err(|e| self.io_error(e))?;
            self.active_records = 0;
        }
        let segments = self.sealed_segments()?;
        self.sealed_waiting = !segments.is_empty();
        Ok(segments)
    }
}

/// Reads a segment; a record cut short at the end (a crash during its append) is skipped.
fn read_segment(path: &Path) -> std::io::Result<Vec<UsageRecord>> {
    read_segment_with_length(path).map(|(records, _)| records)
}

/// The records of a segment and the length of its intact prefix.
fn read_segment_with_length(path: &Path) -> std::io::Result<(Vec<UsageRecord>, u64)> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(error) => return Err(error),
    };
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut intact = 0u64;
    loop {
        let mut length = [0u8; 4];
        match reader.read_exact(&mut length) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(error) => return Err(error),
        }
        let length = u32::from_be_bytes(length) as usize;
        if length > MAX_SPOOLED_RECORD_BYTES {
            tracing::error!(path = %path.display(), length, "corrupt spool record length; rest of segment skipped");
            break;
        }
        let mut bytes = vec![0u8; length];
        match reader.read_exact(&mut bytes) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::warn!(path = %path.display(), "spool segment ends in a partial record (never acknowledged); skipped");
                break;
            }
            Err(error) => return Err(error),
        }
        match UsageRecord::decode(bytes.as_slice()) {
            Ok(record) => {
                records.push(record);
                intact += 4 + length as u64;
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "undecodable spool record; rest of segment skipped");
                break;
            }
        }
    }
    Ok((records, intact))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> UsageRecord {
        UsageRecord {
            request_id: id.to_owned(),
            attempt: 1,
            cost_usd: "0.001".into(),
            ..Default::default()
        }
    }

    #[test]
    fn spool_survives_reopening_and_ignores_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("tollgate-spool-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut spool = Spool::open(&dir).unwrap();
        spool.append(&[record("a"), record("b")]).unwrap();
        // A crash in the middle of the next append leaves a partial record.
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.join(ACTIVE_SEGMENT))
            .unwrap();
        file.write_all(&[0, 0, 0, 50, 1, 2]).unwrap();
        drop(file);
        let reopened = Spool::open(&dir).unwrap();
        assert_eq!(reopened.count_records().unwrap(), 2);
        let mut reopened = reopened;
        let segments = reopened.seal_and_list().unwrap();
        assert_eq!(segments.len(), 1);
        let ids: Vec<String> = read_segment(&segments[0])
            .unwrap()
            .into_iter()
            .map(|r| r.request_id)
            .collect();
        assert_eq!(ids, vec!["a", "b"]);
        assert!(!reopened.active_path().exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(750) && d <= Duration::from_millis(1250));
        }
    }
}
