//! The Redis side of the contract: keys, and the scripts that enqueue each (job, attempt) at
//! most once. Every script touches keys of one cluster slot only: our own keys carry the
//! contract key as a hash tag (`{jobs:default:queue}:…` hashes like `jobs:default:queue`).

use std::{collections::HashSet, time::Duration};

use domain::{
    concurrency::ConcurrencyGroup,
    envelope::JobEnvelope,
    ids::{JobId, UserId},
    retry::Attempt,
    task::Namespace,
};
use redis::{
    Client, Cmd, RedisFuture, Script, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};

/// Where the queues live: one Redis-compatible server, or a Redis Cluster.
#[derive(Clone)]
pub enum Target {
    /// One server.
    Single(Client),
    /// A cluster, from its seed nodes.
    Cluster(std::sync::Arc<ClusterClient>),
}

impl Target {
    /// `url`: one server, or the seed nodes of a cluster, comma-separated; `cluster`: a
    /// single seed names a cluster too.
    ///
    /// # Errors
    /// When a URL does not parse.
    pub fn open(url: &str, cluster: bool) -> redis::RedisResult<Self> {
        let nodes: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        if cluster || nodes.len() > 1 {
            // Redirections and failovers are retried; an unreachable node fails within
            // about a second (the defaults wait minutes), so callers move on.
            let client = ClusterClient::builder(nodes)
                .connection_timeout(Duration::from_secs(2))
                // Longer than a blocking pull (1 s), short enough that a request stuck on a
                // node that died gives up soon.
                .response_timeout(Duration::from_secs(3))
                .retries(4)
                .min_retry_wait(20)
                .max_retry_wait(400)
                .build()?;
            return Ok(Self::Cluster(std::sync::Arc::new(client)));
        }
        Ok(Self::Single(Client::open(url)?))
    }

    /// Whether this is a cluster (commands of one call may not span slots).
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

/// A Redis connection that reconnects by itself after the server went away; on a cluster,
/// it follows the slots (MOVED, ASK, failover).
#[derive(Clone)]
pub enum Conn {
    /// To one server.
    Single(ConnectionManager),
    /// To a cluster.
    Cluster(ClusterConn),
}

/// A cluster connection that starts afresh after a timeout or a broken connection: the
/// client's own repair can stay stuck on a node that died and came back on the same
/// address (seen with redis 1.8), every request to its slots then timing out.
#[derive(Clone)]
pub struct ClusterConn {
    client: std::sync::Arc<ClusterClient>,
    conn: ClusterConnection,
}

impl ClusterConn {
    /// After `e`, a fresh connection for the next request, when `e` says this one broke.
    async fn renew_after(&mut self, e: &redis::RedisError) {
        if (e.is_timeout() || e.is_io_error() || e.is_connection_dropped())
            && let Ok(fresh) = self.client.get_async_connection().await
        {
            self.conn = fresh;
        }
    }
}

impl Conn {
    fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => Box::pin(async move {
                let r = c.conn.req_packed_command(cmd).await;
                if let Err(e) = &r {
                    c.renew_after(e).await;
                }
                r
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => Box::pin(async move {
                let r = c.conn.req_packed_commands(pipeline, offset, count).await;
                if let Err(e) = &r {
                    c.renew_after(e).await;
                }
                r
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.conn.get_db(),
        }
    }
}

/// How long the "already dispatched" markers live.
const DEDUP_TTL_SECS: u64 = 7 * 24 * 3_600;

/// How a namespace hands out envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `jobs:<ns>:queue` LIST: LPUSH, BRPOP/BLMOVE.
    List,
    /// `jobs:<ns>:stream` STREAM with group `jobs:<ns>:group`.
    Stream,
}

/// `browser` is a stream; every other namespace a list.
pub fn transport(ns: &Namespace) -> Transport {
    if ns.as_str() == "browser" {
        Transport::Stream
    } else {
        Transport::List
    }
}

/// The ready structure's key.
pub fn ready_key(ns: &Namespace) -> String {
    match transport(ns) {
        Transport::List => ns.queue_key(),
        Transport::Stream => ns.stream_key(),
    }
}

/// Marks (job, attempt) as handed to `base`; in `base`'s slot.
pub fn dedup_key(base: &str, env: &JobEnvelope) -> String {
    format!("{{{base}}}:dispatched:{}:{}", env.job_id, env.attempt.get())
}

/// The marker of (job, attempt) in `base`'s slot.
fn marker(base: &str, job: JobId, attempt: Attempt) -> String {
    format!("{{{base}}}:dispatched:{job}:{}", attempt.get())
}

/// A (job, attempt) some structure holds.
pub type Held = HashSet<(JobId, u32)>;

/// An attempt that ended, so its at-most-once records may go; `job_over`: no attempt follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// The job.
    pub job: JobId,
    /// The attempt that ended.
    pub attempt: Attempt,
    /// Whether the job is over.
    pub job_over: bool,
}

/// A worker's in-flight list, in the queue's slot so BLMOVE is single-slot.
pub fn processing_key(ns: &Namespace, worker: &str) -> String {
    format!("{{{}}}:processing:{worker}", ns.queue_key())
}

/// The set of workers of `ns` that may hold a processing list, in the queue's slot: reapers
/// and the reconciler read it instead of scanning keys (a scan sees one node of a cluster).
pub fn workers_key(ns: &Namespace) -> String {
    format!("{{{}}}:workers", ns.queue_key())
}

/// A worker's liveness key; its in-flight list is reaped when this expires.
pub fn alive_key(ns: &Namespace, worker: &str) -> String {
    format!("{{{}}}:alive:{worker}", ns.queue_key())
}

/// The slots `user`'s jobs hold (queued in Redis or running): a SET of job ids. Its hash tag
/// is the user, so a claim touches one cluster slot.
pub fn slots_key(user: UserId) -> String {
    format!("runledger:slots:{{{user}}}")
}

/// The slots of `user`'s jobs in concurrency group `key`, in the user's cluster slot.
pub fn group_key(user: UserId, key: &str) -> String {
    format!("runledger:slots:{{{user}}}:group:{key}")
}

/// The answer to a slot claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The job holds a slot (now, or since an earlier claim).
    Held,
    /// The user holds as many slots as its plan allows.
    UserFull,
    /// The job's concurrency group holds as many as its limit.
    GroupFull,
}

/// A slot to give back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The job's owner.
    pub user: UserId,
    /// The job.
    pub job: JobId,
    /// Its concurrency group's key.
    pub group: Option<String>,
}

fn claim_script() -> Script {
    // A job already holding its slot keeps it (a claim redone after a crash, or by a second
    // dispatcher, counts once); otherwise both counts are checked before either is taken.
    Script::new(
        r"local job = ARGV[1]
          if redis.call('SISMEMBER', KEYS[1], job) == 1 then
            if KEYS[2] then redis.call('SADD', KEYS[2], job) end
            return 1
          end
          local limit = tonumber(ARGV[2])
          if limit > 0 and redis.call('SCARD', KEYS[1]) >= limit then return 0 end
          if KEYS[2] and redis.call('SISMEMBER', KEYS[2], job) == 0
             and redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[3]) then
            return -1
          end
          if KEYS[2] then redis.call('SADD', KEYS[2], job) end
          redis.call('SADD', KEYS[1], job)
          return 1",
    )
}

fn undelivered_script() -> Script {
    // Entries stay in the stream until acknowledged: those not yet handed out are the
    // stream's length less the group's pending ones.
    Script::new(
        r"local len = redis.call('XLEN', KEYS[1])
          local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1])
          if ok and pending then return len - pending[1] end
          return len",
    )
}

/// Runs `cmds` in one round trip on one server; one command each, sent together, on a
/// cluster (their keys may live in different slots).
async fn run_each(conn: &mut Conn, cmds: Vec<Cmd>) -> redis::RedisResult<()> {
    if cmds.is_empty() {
        return Ok(());
    }
    if conn.is_cluster() {
        let sent = futures::future::join_all(cmds.iter().map(|c| {
            let mut conn = conn.clone();
            async move { c.query_async::<Value>(&mut conn).await }
        }))
        .await;
        let Some(e) = sent.into_iter().find_map(Result::err) else {
            return Ok(());
        };
        // The copies that failed are gone: the connection kept is the one to renew.
        if let Conn::Cluster(c) = conn {
            c.renew_after(&e).await;
        }
        return Err(e);
    }
    let mut pipe = redis::pipe();
    for c in cmds {
        pipe.add_command(c).ignore();
    }
    pipe.query_async(conn).await
}

/// Connects, with a response timeout long enough for blocking reads; the connection comes
/// back by itself after an outage.
///
/// # Errors
/// When the server cannot be reached now.
pub async fn connect(target: &Target) -> redis::RedisResult<Conn> {
    match target {
        Target::Single(client) => {
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(Duration::from_secs(10)))
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_number_of_retries(3);
            Ok(Conn::Single(
                client.get_connection_manager_with_config(config).await?,
            ))
        }
        Target::Cluster(client) => Ok(Conn::Cluster(ClusterConn {
            conn: client.get_async_connection().await?,
            client: client.clone(),
        })),
    }
}

fn push_script() -> Script {
    Script::new(
        r"if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
            if ARGV[3] == 'stream' then
              redis.call('XADD', KEYS[1], '*', 'envelope', ARGV[1])
            else
              redis.call('LPUSH', KEYS[1], ARGV[1])
            end
            return 1
          end
          return 0",
    )
}

fn schedule_script() -> Script {
    Script::new(
        r"if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then
            redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
            return 1
          end
          return 0",
    )
}

/// Pushes `env` to its namespace's ready structure unless this (job, attempt) was pushed
/// before; returns whether it was pushed now.
///
/// # Errors
/// Redis errors.
pub async fn push_ready(
    conn: &mut Conn,
    ns: &Namespace,
    env: &JobEnvelope,
    bytes: &str,
) -> redis::RedisResult<bool> {
    let key = ready_key(ns);
    let kind = match transport(ns) {
        Transport::List => "list",
        Transport::Stream => "stream",
    };
    let pushed: i64 = push_script()
        .key(&key)
        .key(dedup_key(&key, env))
        .arg(bytes)
        .arg(DEDUP_TTL_SECS)
        .arg(kind)
        .invoke_async(conn)
        .await?;
    Ok(pushed == 1)
}

/// Adds `env` to `jobs:<ns>:scheduled`, due at `due_ms`, unless scheduled before.
///
/// # Errors
/// Redis errors.
pub async fn schedule(
    conn: &mut Conn,
    ns: &Namespace,
    env: &JobEnvelope,
    bytes: &str,
    due_ms: i64,
) -> redis::RedisResult<bool> {
    let key = ns.scheduled_key();
    let added: i64 = schedule_script()
        .key(&key)
        .key(dedup_key(&key, env))
        .arg(bytes)
        .arg(due_ms)
        .arg(DEDUP_TTL_SECS)
        .invoke_async(conn)
        .await?;
    Ok(added == 1)
}

/// Creates the stream's consumer group (from the start of the stream) if missing.
///
/// # Errors
/// Redis errors other than "group exists".
pub async fn ensure_group(conn: &mut Conn, ns: &Namespace) -> redis::RedisResult<()> {
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(ns.stream_key())
        .arg(ns.group_name())
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match r {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Where the dispatcher puts envelopes: the Redis contract, or the in-process queue of the
/// embedded default ([`crate::local::LocalQueue`]).
pub trait JobQueue: Send + Sync + 'static {
    /// Whether the queue outlives the process. A volatile one is refilled from the log at
    /// start, so the dispatcher keeps its checkpoint in memory.
    fn durable(&self) -> bool;
    /// Makes `env` ready, at most once per (job, attempt); whether it was pushed now.
    fn push_ready(
        &mut self,
        ns: &Namespace,
        env: &JobEnvelope,
        bytes: &str,
    ) -> impl Future<Output = redis::RedisResult<bool>> + Send;
    /// Makes `env` ready at `due_ms` (milliseconds since the epoch), at most once.
    fn schedule(
        &mut self,
        ns: &Namespace,
        env: &JobEnvelope,
        bytes: &str,
        due_ms: i64,
    ) -> impl Future<Output = redis::RedisResult<()>> + Send;
    /// Takes back a queued or scheduled envelope (its job was canceled).
    fn withdraw(
        &mut self,
        ns: &Namespace,
        env: &JobEnvelope,
        bytes: &str,
    ) -> impl Future<Output = redis::RedisResult<()>> + Send;
    /// Takes the due envelopes of `ns` out of `scheduled` (the dispatcher's backlog gets
    /// them); of two dispatchers, each envelope goes to one.
    fn take_due(
        &mut self,
        ns: &Namespace,
    ) -> impl Future<Output = redis::RedisResult<Vec<JobEnvelope>>> + Send;
    /// These attempts ended: nothing of them will be pushed again, so their at-most-once
    /// records go (in Redis, the markers of each namespace of `namespaces`).
    fn forget(
        &mut self,
        namespaces: &[Namespace],
        ended: &[Ended],
    ) -> impl Future<Output = redis::RedisResult<()>> + Send;
    /// The (job, attempt)s that the structures of `namespaces` hold now (scheduled, ready,
    /// handed to a worker and not acknowledged), or `None` for a queue that cannot lose an
    /// entry while the process lives.
    fn held(
        &mut self,
        namespaces: &[Namespace],
    ) -> impl Future<Output = redis::RedisResult<Option<Held>>> + Send;
    /// Puts `env` back though it was pushed before (the queue lost it): ready, or scheduled
    /// at `due_ms` when that is in the future.
    fn repush(
        &mut self,
        ns: &Namespace,
        env: &JobEnvelope,
        bytes: &str,
        due_ms: Option<i64>,
    ) -> impl Future<Output = redis::RedisResult<()>> + Send;
    /// Ready and scheduled envelopes of `ns`.
    fn depth(
        &mut self,
        ns: &Namespace,
    ) -> impl Future<Output = redis::RedisResult<(i64, i64)>> + Send;
    /// Envelopes of `ns` ready and not yet handed to a worker.
    fn waiting(&mut self, ns: &Namespace)
    -> impl Future<Output = redis::RedisResult<usize>> + Send;
    /// A slot for `job` of `user`, unless the user holds `limit` (`None`: unlimited) or its
    /// `group` holds the group's limit. Atomic, and idempotent per job.
    fn claim(
        &mut self,
        user: UserId,
        job: JobId,
        limit: Option<u32>,
        group: Option<&ConcurrencyGroup>,
    ) -> impl Future<Output = redis::RedisResult<Claim>> + Send;
    /// Gives these slots back (idempotent).
    fn release(&mut self, slots: &[Slot]) -> impl Future<Output = redis::RedisResult<()>> + Send;
    /// The jobs holding a slot of `user`.
    fn slots(
        &mut self,
        user: UserId,
    ) -> impl Future<Output = redis::RedisResult<Vec<JobId>>> + Send;
}

/// The Redis contract `jobs:<namespace>:<type>`.
#[derive(Clone)]
pub struct RedisQueue {
    /// The connection.
    pub conn: Conn,
}

fn repush_script() -> Script {
    Script::new(
        r"redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
          if ARGV[3] == 'stream' then
            redis.call('XADD', KEYS[1], '*', 'envelope', ARGV[1])
          elseif ARGV[3] == 'list' then
            redis.call('LPUSH', KEYS[1], ARGV[1])
          else
            redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
          end
          return 1",
    )
}

/// `s` with Redis glob's special characters escaped (a correlation id may hold them).
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Removes from list `KEYS[1]` every entry that starts with `ARGV[1]`.
fn withdraw_script() -> Script {
    Script::new(
        r"local n = 0
          for _, v in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
            if string.sub(v, 1, #ARGV[1]) == ARGV[1] then
              n = n + redis.call('LREM', KEYS[1], 0, v)
            end
          end
          return n",
    )
}

/// Adds the (job, attempt) of each envelope in `raw` to `held`.
fn hold_all(held: &mut Held, raw: impl IntoIterator<Item = String>) {
    for bytes in raw {
        if let Ok(env) = serde_json::from_str::<JobEnvelope>(&bytes) {
            held.insert((env.job_id, env.attempt.get()));
        }
    }
}

impl RedisQueue {
    /// Every processing list of `ns` (of live and dead workers alike).
    async fn processing_lists(&mut self, ns: &Namespace) -> redis::RedisResult<Vec<String>> {
        let workers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(workers_key(ns))
            .query_async(&mut self.conn)
            .await?;
        Ok(workers.iter().map(|w| processing_key(ns, w)).collect())
    }
}

impl JobQueue for RedisQueue {
    fn durable(&self) -> bool {
        true
    }

    async fn push_ready(
        &mut self,
        ns: &Namespace,
        env: &JobEnvelope,
        bytes: &str,
    ) -> redis::RedisResult<bool> {
        if transport(ns) == Transport::Stream {
            ensure_group(&mut self.conn, ns).await?;
        }
        push_ready(&mut self.conn, ns, env, bytes).await
    }

    async fn schedule(
        &mut self,
        ns: &Namespace,
        env: &JobEnvelope,
        bytes: &str,
        due_ms: i64,
    ) -> redis::RedisResult<()> {
        schedule(&mut self.conn, ns, env, bytes, due_ms).await?;
        Ok(())
    }

    async fn withdraw(
        &mut self,
        ns: &Namespace,
        _env: &JobEnvelope,
        bytes: &str,
    ) -> redis::RedisResult<()> {
        // Matched by the envelope's leading fields (job, attempt, correlation id, task
        // type), not its whole bytes: a pushed envelope may also carry `meta.traceparent`.
        let prefix = bytes.find(r#""meta":"#).map_or(bytes, |i| &bytes[..i]);
        if transport(ns) == Transport::List {
            // The list holds at most the dispatch window, so the scan is short.
            let _: i64 = withdraw_script()
                .key(ns.queue_key())
                .arg(prefix)
                .invoke_async(&mut self.conn)
                .await?;
        }
        // Likewise in `scheduled`: ZSCAN is incremental, so a large set blocks no one.
        let key = ns.scheduled_key();
        let pattern = format!("{}*", glob_escape(prefix));
        let mut cursor: u64 = 0;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("ZSCAN")
                .arg(&key)
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1_000)
                .query_async(&mut self.conn)
                .await?;
            // Members and scores alternate.
            for member in found.iter().step_by(2) {
                let _: i64 = redis::cmd("ZREM")
                    .arg(&key)
                    .arg(member)
                    .query_async(&mut self.conn)
                    .await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    async fn take_due(&mut self, ns: &Namespace) -> redis::RedisResult<Vec<JobEnvelope>> {
        let now = chrono::Utc::now().timestamp_millis();
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(ns.scheduled_key())
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(200)
            .query_async(&mut self.conn)
            .await?;
        let mut taken = Vec::new();
        for bytes in due {
            // ZREM's 1 says this dispatcher owns the entry. A crash before it is pushed
            // leaves the job to the reconciler, which pushes it again after the grace.
            let removed: i64 = redis::cmd("ZREM")
                .arg(ns.scheduled_key())
                .arg(&bytes)
                .query_async(&mut self.conn)
                .await?;
            if removed == 1
                && let Ok(env) = serde_json::from_str::<JobEnvelope>(&bytes)
            {
                taken.push(env);
            }
        }
        Ok(taken)
    }

    async fn forget(
        &mut self,
        namespaces: &[Namespace],
        ended: &[Ended],
    ) -> redis::RedisResult<()> {
        if ended.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = namespaces
            .iter()
            .flat_map(|ns| [ready_key(ns), ns.scheduled_key()])
            .flat_map(|base| ended.iter().map(move |e| marker(&base, e.job, e.attempt)))
            .collect();
        // The keys live in different slots on a cluster: one command each, sent together.
        let cmds = keys
            .iter()
            .map(|k| redis::cmd("UNLINK").arg(k).clone())
            .collect();
        run_each(&mut self.conn, cmds).await
    }

    async fn held(&mut self, namespaces: &[Namespace]) -> redis::RedisResult<Option<Held>> {
        let mut held = Held::new();
        // In the order envelopes move (scheduled → ready → processing), so one that moves
        // while we read is seen in its later place.
        for ns in namespaces {
            let scheduled: Vec<String> = redis::cmd("ZRANGE")
                .arg(ns.scheduled_key())
                .arg(0)
                .arg(-1)
                .query_async(&mut self.conn)
                .await?;
            hold_all(&mut held, scheduled);
            match transport(ns) {
                Transport::List => {
                    let ready: Vec<String> = redis::cmd("LRANGE")
                        .arg(ns.queue_key())
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut self.conn)
                        .await?;
                    hold_all(&mut held, ready);
                    for key in self.processing_lists(ns).await? {
                        let taken: Vec<String> = redis::cmd("LRANGE")
                            .arg(&key)
                            .arg(0)
                            .arg(-1)
                            .query_async(&mut self.conn)
                            .await?;
                        hold_all(&mut held, taken);
                    }
                }
                Transport::Stream => {
                    // Entries stay in the stream until acknowledged (then deleted), so the
                    // stream holds both the new and the pending ones.
                    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                        .arg(ns.stream_key())
                        .arg("-")
                        .arg("+")
                        .query_async(&mut self.conn)
                        .await?;
                    hold_all(
                        &mut held,
                        reply
                            .ids
                            .into_iter()
                            .filter_map(|e| e.get::<String>("envelope")),
                    );
                }
            }
        }
        Ok(Some(held))
    }

    async fn repush(
        &mut self,
        ns: &Namespace,
        env: &JobEnvelope,
        bytes: &str,
        due_ms: Option<i64>,
    ) -> redis::RedisResult<()> {
        let (key, kind) = match (due_ms, transport(ns)) {
            (Some(_), _) => (ns.scheduled_key(), "zset"),
            (None, Transport::List) => (ns.queue_key(), "list"),
            (None, Transport::Stream) => {
                ensure_group(&mut self.conn, ns).await?;
                (ns.stream_key(), "stream")
            }
        };
        let _: i64 = repush_script()
            .key(&key)
            .key(dedup_key(&key, env))
            .arg(bytes)
            .arg(DEDUP_TTL_SECS)
            .arg(kind)
            .arg(due_ms.unwrap_or(0))
            .invoke_async(&mut self.conn)
            .await?;
        Ok(())
    }

    async fn depth(&mut self, ns: &Namespace) -> redis::RedisResult<(i64, i64)> {
        let ready_cmd = match transport(ns) {
            Transport::List => "LLEN",
            Transport::Stream => "XLEN",
        };
        let ready: i64 = redis::cmd(ready_cmd)
            .arg(ready_key(ns))
            .query_async(&mut self.conn)
            .await?;
        let scheduled: i64 = redis::cmd("ZCARD")
            .arg(ns.scheduled_key())
            .query_async(&mut self.conn)
            .await?;
        Ok((ready, scheduled))
    }
    async fn waiting(&mut self, ns: &Namespace) -> redis::RedisResult<usize> {
        let n: i64 = match transport(ns) {
            Transport::List => {
                redis::cmd("LLEN")
                    .arg(ns.queue_key())
                    .query_async(&mut self.conn)
                    .await?
            }
            Transport::Stream => {
                undelivered_script()
                    .key(ns.stream_key())
                    .arg(ns.group_name())
                    .invoke_async(&mut self.conn)
                    .await?
            }
        };
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn claim(
        &mut self,
        user: UserId,
        job: JobId,
        limit: Option<u32>,
        group: Option<&ConcurrencyGroup>,
    ) -> redis::RedisResult<Claim> {
        let script = claim_script();
        let mut call = script.key(slots_key(user));
        if let Some(g) = group {
            call.key(group_key(user, &g.key));
        }
        let got: i64 = call
            .arg(job.to_string())
            .arg(limit.unwrap_or(0))
            .arg(group.map_or(0, |g| g.limit))
            .invoke_async(&mut self.conn)
            .await?;
        Ok(match got {
            1 => Claim::Held,
            0 => Claim::UserFull,
            _ => Claim::GroupFull,
        })
    }

    async fn release(&mut self, slots: &[Slot]) -> redis::RedisResult<()> {
        let mut cmds = Vec::new();
        for s in slots {
            let job = s.job.to_string();
            cmds.push(redis::cmd("SREM").arg(slots_key(s.user)).arg(&job).clone());
            if let Some(key) = &s.group {
                cmds.push(
                    redis::cmd("SREM")
                        .arg(group_key(s.user, key))
                        .arg(&job)
                        .clone(),
                );
            }
        }
        run_each(&mut self.conn, cmds).await
    }

    async fn slots(&mut self, user: UserId) -> redis::RedisResult<Vec<JobId>> {
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(slots_key(user))
            .query_async(&mut self.conn)
            .await?;
        Ok(ids.iter().filter_map(|i| JobId::parse(i).ok()).collect())
    }
}
