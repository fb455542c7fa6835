//! Redis Streams queue of the distributed mode: `XADD` to enqueue, a consumer group read by every
//! worker (`XREADGROUP`), `XACK`+`XDEL` once the task's outcome is stored, and `XAUTOCLAIM` of
//! entries a dead worker left unacknowledged past the lease. Delayed retries wait in a sorted set
//! and are moved to the stream when due.
//!
//! Redis only wakes workers up: after a `FLUSHALL` or a restart without persistence the stream and
//! group are recreated here and the reconciler refills them from MongoDB.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use tokio::sync::Mutex;

use super::{Delivery, Queue, QueueError, QueueMarks};

const GROUP: &str = "workers";
/// How long one blocking read waits before checking delayed entries and reclaims again.
const BLOCK_MS: usize = 1000;

/// Moves due members of the delayed set to the stream, atomically, skipping ids that already
/// wait there. KEYS: delayed, stream, waiting.
const PROMOTE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  if redis.call('SADD', KEYS[3], id) == 1 then
    redis.call('XADD', KEYS[2], '*', 'task', id)
  end
end
return #due
";

/// Adds an id to the stream unless it already waits there (the reconciler re-enqueues every
/// due task on each pass; without this a backlog would fill the stream with copies).
/// KEYS: stream, waiting. Public for the benchmarks' backend floor, which runs the same script.
pub const ENQUEUE: &str = r"
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[1], '*', 'task', ARGV[1])
  return 1
end
return 0
";

/// The next queue number, never at or below ARGV[1] (the highest this process has seen): after
/// a `FLUSHALL` the counter restarts above the numbers pending tasks still carry. KEYS: issued.
const NEXT_SEQ: &str = r"
local v = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[1])
if v <= floor then
  v = floor + 1
  redis.call('SET', KEYS[1], v)
end
return v
";

/// Raises KEYS[1] to ARGV[1]; with ARGV[2] = '1', only if KEYS[1] is missing.
const RAISE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and ARGV[2] == '1' then return 0 end
if not cur or tonumber(cur) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 0
";

pub struct RedisQueue {
    cmd: ConnectionManager,
    /// A blocking read occupies its connection; this one is used for nothing else, by one
    /// reader at a time.
    reader: Mutex<ConnectionManager>,
    stream: String,
    delayed: String,
    /// Ids in the stream not yet delivered.
    waiting: String,
    consumer: String,
    /// Entries idle this long belong to a dead consumer.
    reclaim_after: Duration,
    last_reclaim: std::sync::Mutex<Instant>,
    promote: redis::Script,
    enqueue: redis::Script,
    /// Queue numbering (`Queue::next_seq`, `Queue::taken`).
    issued: String,
    taken: String,
    /// The highest queue number this process has given or seen taken.
    seq_floor: std::sync::atomic::AtomicU64,
    next_seq: redis::Script,
    raise: redis::Script,
}

fn unavailable(e: redis::RedisError) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

fn delivery(entry: StreamId) -> Option<Delivery> {
    let task_id: String = entry.get("task")?;
    Some(Delivery {
        task_id,
        token: entry.id,
    })
}

impl RedisQueue {
    pub async fn connect(
        client: &redis::Client,
        prefix: &str,
        consumer: &str,
        reclaim_after: Duration,
    ) -> Result<RedisQueue, QueueError> {
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(3)));
        let cmd = client
            .get_connection_manager_with_config(cfg.clone())
            .await
            .map_err(unavailable)?;
        let reader = client
            .get_connection_manager_with_config(
                cfg.set_response_timeout(Some(Duration::from_millis(BLOCK_MS as u64 + 5000))),
            )
            .await
            .map_err(unavailable)?;
        let q = RedisQueue {
            cmd,
            reader: Mutex::new(reader),
            stream: format!("{prefix}:queue"),
            delayed: format!("{prefix}:queue:delayed"),
            waiting: format!("{prefix}:queue:waiting"),
            consumer: consumer.to_string(),
            reclaim_after,
            last_reclaim: std::sync::Mutex::new(Instant::now()),
            promote: redis::Script::new(PROMOTE),
            enqueue: redis::Script::new(ENQUEUE),
            issued: format!("{prefix}:queue:issued"),
            taken: format!("{prefix}:queue:taken"),
            seq_floor: std::sync::atomic::AtomicU64::new(0),
            next_seq: redis::Script::new(NEXT_SEQ),
            raise: redis::Script::new(RAISE),
        };
        q.ensure_group().await?;
        Ok(q)
    }

    async fn ensure_group(&self) -> Result<(), QueueError> {
        let mut c = self.cmd.clone();
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn promote_due(&self) -> Result<(), QueueError> {
        let mut c = self.cmd.clone();
        let _: i64 = self
            .promote
            .key(&self.delayed)
            .key(&self.stream)
            .key(&self.waiting)
            .arg(Utc::now().timestamp_millis())
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Takes over one entry a dead consumer left unacknowledged, at most every few seconds.
    async fn reclaim(&self) -> Result<Option<Delivery>, QueueError> {
        {
            let mut last = self
                .last_reclaim
                .lock()
                .map_err(|_| QueueError::Unavailable("mutex poisoned".into()))?;
            if last.elapsed() < Duration::from_secs(2) {
                return Ok(None);
            }
            *last = Instant::now();
        }
        let mut c = self.cmd.clone();
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(self.reclaim_after.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(reply.claimed.into_iter().find_map(delivery))
    }

    /// From delivery on, the reconciler may enqueue the id again if the task stays due.
    async fn delivered(&self, d: &Delivery) -> Result<(), QueueError> {
        let mut c = self.cmd.clone();
        redis::cmd("SREM")
            .arg(&self.waiting)
            .arg(&d.task_id)
            .query_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    fn saw(&self, seq: u64) {
        self.seq_floor
            .fetch_max(seq, std::sync::atomic::Ordering::Relaxed);
    }

    async fn raise(&self, key: &str, to: u64, only_if_missing: bool) -> Result<(), QueueError> {
        let mut c = self.cmd.clone();
        self.raise
            .key(key)
            .arg(to)
            .arg(if only_if_missing { "1" } else { "0" })
            .invoke_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn read(&self) -> Result<Option<Delivery>, QueueError> {
        let mut reader = self.reader.lock().await;
        let r: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(&mut *reader)
            .await;
        match r {
            Ok(reply) => {
                Ok(reply.and_then(|r| r.keys.into_iter().flat_map(|k| k.ids).find_map(delivery)))
            }
            // The stream or group vanished (FLUSHALL, restart without persistence).
            Err(e) if e.code() == Some("NOGROUP") => {
                drop(reader);
                tracing::warn!("queue consumer group missing; recreating it");
                self.ensure_group().await?;
                Ok(None)
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

#[async_trait]
impl Queue for RedisQueue {
    fn kind(&self) -> &'static str {
        "redis-streams"
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let mut c = self.cmd.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn enqueue(
        &self,
        task_id: &str,
        not_before: Option<DateTime<Utc>>,
    ) -> Result<(), QueueError> {
        let mut c = self.cmd.clone();
        match not_before {
            Some(at) if at > Utc::now() => redis::cmd("ZADD")
                .arg(&self.delayed)
                .arg(at.timestamp_millis())
                .arg(task_id)
                .query_async::<i64>(&mut c)
                .await
                .map(|_| ())
                .map_err(unavailable),
            _ => self
                .enqueue
                .key(&self.stream)
                .key(&self.waiting)
                .arg(task_id)
                .invoke_async::<i64>(&mut c)
                .await
                .map(|_| ())
                .map_err(unavailable),
        }
    }

    async fn dequeue(&self) -> Result<Delivery, QueueError> {
        loop {
            self.promote_due().await?;
            if let Some(d) = self.reclaim().await? {
                tracing::info!(task_id = %d.task_id, "reclaimed a queue entry left by a dead worker");
                self.delivered(&d).await?;
                return Ok(d);
            }
            if let Some(d) = self.read().await? {
                self.delivered(&d).await?;
                return Ok(d);
            }
        }
    }

    async fn ack(&self, d: &Delivery) -> Result<(), QueueError> {
        let mut c = self.cmd.clone();
        redis::pipe()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&d.token)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(&d.token)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        let mut c = self.cmd.clone();
        let (stream, delayed): (u64, u64) = redis::pipe()
            .cmd("SCARD")
            .arg(&self.waiting)
            .cmd("ZCARD")
            .arg(&self.delayed)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(stream + delayed)
    }

    async fn next_seq(&self) -> Result<u64, QueueError> {
        let mut c = self.cmd.clone();
        let floor = self.seq_floor.load(std::sync::atomic::Ordering::Relaxed);
        let seq: u64 = self
            .next_seq
            .key(&self.issued)
            .arg(floor)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        self.saw(seq);
        Ok(seq)
    }

    async fn taken(&self, seq: u64) -> Result<(), QueueError> {
        self.saw(seq);
        self.raise(&self.taken, seq, false).await
    }

    async fn marks(&self) -> Result<QueueMarks, QueueError> {
        let mut c = self.cmd.clone();
        let (issued, taken): (Option<u64>, Option<u64>) = redis::cmd("MGET")
            .arg(&self.issued)
            .arg(&self.taken)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let marks = QueueMarks {
            issued: issued.unwrap_or(0),
            taken: taken.unwrap_or(0),
        };
        self.saw(marks.issued.max(marks.taken));
        Ok(marks)
    }

    async fn seed_marks(&self, marks: QueueMarks) -> Result<(), QueueError> {
        self.saw(marks.issued);
        self.raise(&self.issued, marks.issued, false).await?;
        self.raise(&self.taken, marks.taken, true).await
    }
}
