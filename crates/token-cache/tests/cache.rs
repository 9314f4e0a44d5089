//! The cache in process against real Redis: single flight under 100 concurrent identical
//! requests, TTL expiry in both layers, corrupted values treated as misses and overwritten, and
//! Redis unreachable or stopped mid-test (requests still succeed, errors are counted, recovery is
//! automatic). The stop/start test runs its own throwaway redis-server on a free port.

use std::sync::Arc;
use std::time::Duration;

use tollgate_token_cache::TokenCacheConfig;
use tollgate_token_cache::codec::{self, SegmentTokens};
use tollgate_token_cache::keys::{
    Part, content_hash, lookup_hash, segment_key, segment_lookup_key,
};
use tollgate_token_cache::service::{
    Context, ContextRequest, DocumentInput, LayerOutcome, PutRequest, TokenCacheService,
};
use tollgate_token_cache::tokenizer::TokenizerRegistry;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn redis_url() -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    tollgate_test_support::redis::redis_url()
}

fn unique_prefix(name: &str) -> String {
    format!("tollgate-test:{}:{name}:", std::process::id())
}

/// Outcome tests give Redis a generous budget so that a loaded machine cannot turn a miss into
/// an error; the tests of Redis down use the default 20 ms.
fn config(prefix: &str) -> TokenCacheConfig {
    TokenCacheConfig {
        key_prefix: prefix.to_owned(),
        redis_timeout_ms: 2000,
        ..TokenCacheConfig::default()
    }
}

fn default_budget(prefix: &str) -> TokenCacheConfig {
    TokenCacheConfig {
        key_prefix: prefix.to_owned(),
        ..TokenCacheConfig::default()
    }
}

fn request(collection: &str, texts: &[&str]) -> ContextRequest {
    ContextRequest {
        collection: collection.into(),
        documents: texts
            .iter()
            .enumerate()
            .map(|(i, text)| DocumentInput::Inline {
                id: format!("d{i}"),
                text: (*text).to_owned(),
            })
            .collect(),
        tokenizer: "cl100k_base".into(),
        max_tokens: None,
        separator: "\n\n".into(),
    }
}

fn l2(context: &Context) -> Vec<LayerOutcome> {
    context.spans.iter().map(|span| span.l2).collect()
}

fn fresh(text: &str) -> Vec<u32> {
    TokenizerRegistry::builtin()
        .resolve("cl100k_base")
        .ok()
        .and_then(|tokenizer| tokenizer.encode(text).ok())
        .unwrap_or_default()
}

fn long_text(seed: usize) -> String {
    (0..400)
        .map(|i| format!("Paragraph {seed}-{i}: the gateway tokenizes context documents once and reuses them."))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_concurrent_identical_misses_tokenize_once() -> TestResult {
    let url = redis_url()?;
    let prefix = unique_prefix("single-flight");
    let service = Arc::new(TokenCacheService::new(config(&prefix), Some(&url))?);
    let text = long_text(1);
    let expected = fresh(&text);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let service = service.clone();
        let request = request("kb", &[&text]);
        tasks.push(tokio::spawn(
            async move { service.get_context(request).await },
        ));
    }
    for task in tasks {
        assert_eq!(task.await??.token_ids, expected);
    }
    let stats = service.stats().await;
    assert_eq!(
        stats.tokens_tokenized,
        expected.len() as u64,
        "tokenized once"
    );
    assert_eq!(stats.l2.misses, 1, "Redis asked once");
    assert_eq!(stats.l1.hits + stats.l1.misses, 100);
    tollgate_test_support::redis::delete_prefix(&url, &prefix).await
}

#[tokio::test]
async fn entries_expire_after_the_collection_ttl_in_both_layers() -> TestResult {
    let url = redis_url()?;
    let prefix = unique_prefix("ttl");
    let mut short = config(&prefix);
    short.collection_ttl_secs.insert("news".into(), 1);
    let service = TokenCacheService::new(short.clone(), Some(&url))?;
    let texts = ["Breaking: tokens expire.", "More news follows."];
    let first = service.get_context(request("news", &texts)).await?;
    assert_eq!(l2(&first), vec![LayerOutcome::Miss; 2]);
    let second = service.get_context(request("news", &texts)).await?;
    assert!(second.spans.iter().all(|span| span.l1 == LayerOutcome::Hit));
    // A collection without an override keeps the default TTL (300 s).
    service
        .get_context(request("archive", &["Kept for long."]))
        .await?;

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let after = service.get_context(request("news", &texts)).await?;
    assert!(
        after.spans.iter().all(|span| span.l1 == LayerOutcome::Miss),
        "{after:?}"
    );
    assert_eq!(
        l2(&after),
        vec![LayerOutcome::Miss; 2],
        "expired in Redis too"
    );
    assert_eq!(after.token_ids, first.token_ids);
    let kept = service
        .get_context(request("archive", &["Kept for long."]))
        .await?;
    assert_eq!(kept.spans[0].l1, LayerOutcome::Hit);
    tollgate_test_support::redis::delete_prefix(&url, &prefix).await
}

#[tokio::test]
async fn a_corrupted_value_is_a_miss_and_is_overwritten() -> TestResult {
    let url = redis_url()?;
    let prefix = unique_prefix("corrupt");
    let text = "A document whose cached tokens get corrupted in Redis.";
    let expected = fresh(text);
    let writer = TokenCacheService::new(config(&prefix), Some(&url))?;
    writer.get_context(request("kb", &[text])).await?;

    let tokenizer = TokenizerRegistry::builtin().resolve("cl100k_base")?;
    let lookup = lookup_hash(text);
    let key = segment_lookup_key(tokenizer.id(), "\n\n", &[Part::Document(&lookup)]);
    let redis = writer.redis().ok_or("redis is on")?;
    for garbage in [
        &b"[15339, 1917]"[..],
        b"TC\x01\0\0\0\0\x02\x01\0\x05\x06",
        b"",
    ] {
        redis.put_raw_segment(&key, garbage).await?;
        let reader = TokenCacheService::new(config(&prefix), Some(&url))?;
        let context = reader.get_context(request("kb", &[text])).await?;
        assert_eq!(
            context.token_ids, expected,
            "never returns a corrupted value"
        );
        assert_eq!(
            l2(&context),
            vec![LayerOutcome::Miss],
            "a miss, not an error"
        );
        let third = TokenCacheService::new(config(&prefix), Some(&url))?;
        let context = third.get_context(request("kb", &[text])).await?;
        assert_eq!(
            l2(&context),
            vec![LayerOutcome::Hit],
            "overwritten with a good value"
        );
        assert_eq!(context.token_ids, expected);
    }
    tollgate_test_support::redis::delete_prefix(&url, &prefix).await
}

/// What two contents with one lookup key would do to each other in Redis: the value under a
/// document's lookup key is another document's, intact, with that document's content key. It is a
/// miss, never returned, and it stays (the first content under a lookup key keeps it, so crafted
/// collisions cannot evict anything).
#[tokio::test]
async fn a_value_of_other_content_under_the_lookup_key_is_a_miss() -> TestResult {
    let url = redis_url()?;
    let prefix = unique_prefix("collision");
    let text = "The document a reader asks for.";
    let other = "Another document, whose value sits under the first one's lookup key.";
    let writer = TokenCacheService::new(config(&prefix), Some(&url))?;
    writer.get_context(request("kb", &[text])).await?;

    let tokenizer = TokenizerRegistry::builtin().resolve("cl100k_base")?;
    let lookup = segment_lookup_key(
        tokenizer.id(),
        "\n\n",
        &[Part::Document(&lookup_hash(text))],
    );
    let other_key = segment_key(
        tokenizer.id(),
        "\n\n",
        &[Part::Document(&content_hash(other))],
    );
    let other_value = codec::encode(
        &other_key,
        &SegmentTokens {
            ids: fresh(other),
            doc_starts: vec![0],
        },
    );
    let redis = writer.redis().ok_or("redis is on")?;
    redis.put_raw_segment(&lookup, &other_value).await?;

    for _ in 0..2 {
        let reader = TokenCacheService::new(config(&prefix), Some(&url))?;
        let context = reader.get_context(request("kb", &[text])).await?;
        assert_eq!(
            context.token_ids,
            fresh(text),
            "never the other content's tokens"
        );
        assert_eq!(l2(&context), vec![LayerOutcome::Miss]);
    }
    assert_eq!(
        redis.get_segments(&[lookup]).await?,
        vec![Some(other_value)],
        "the first content keeps the key"
    );
    tollgate_test_support::redis::delete_prefix(&url, &prefix).await
}

#[tokio::test]
async fn unreachable_redis_still_answers_and_counts_errors() -> TestResult {
    let port = free_port()?;
    let service = TokenCacheService::new(
        default_budget("unreachable:"),
        Some(&format!("redis://127.0.0.1:{port}")),
    )?;
    let text = "Redis is down, the answer is not.";
    let context = service.get_context(request("kb", &[text])).await?;
    assert_eq!(context.token_ids, fresh(text));
    assert_eq!(l2(&context), vec![LayerOutcome::Error]);
    // L1 still serves.
    let again = service.get_context(request("kb", &[text])).await?;
    assert_eq!(again.spans[0].l1, LayerOutcome::Hit);
    let stats = service.stats().await;
    assert!(stats.l2.errors >= 1);
    assert!(!stats.l2.available);
    Ok(())
}

/// A throwaway redis-server on a free port, killed on drop.
struct OwnRedis {
    child: std::process::Child,
    port: u16,
}

impl OwnRedis {
    fn start(port: u16) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Self::start_with(port, &[])
    }

    fn start_with(
        port: u16,
        extra_args: &[&str],
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra_args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server must be installed for this test: {e}"))?;
        Ok(Self { child, port })
    }

    async fn wait_ready(&self) -> TestResult {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("redis-server did not start".into())
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn redis_stopped_mid_test_then_back_recovers_on_its_own() -> TestResult {
    let port = free_port()?;
    let mut redis = OwnRedis::start(port)?;
    redis.wait_ready().await?;
    let url = format!("redis://127.0.0.1:{port}");
    let service = TokenCacheService::new(config("own:"), Some(&url))?;

    let before = service
        .get_context(request("kb", &["Before the outage."]))
        .await?;
    assert_eq!(l2(&before), vec![LayerOutcome::Miss]);

    redis.stop();
    let during = service
        .get_context(request("kb", &["During the outage."]))
        .await?;
    assert_eq!(during.token_ids, fresh("During the outage."));
    assert_eq!(l2(&during), vec![LayerOutcome::Error]);
    assert!(!service.stats().await.l2.available);
    let errors_during = service.stats().await.l2.errors;
    assert!(errors_during >= 1);

    let mut redis = OwnRedis::start(port)?;
    redis.wait_ready().await?;
    // Both kinds of connection reconnect by themselves, each attempt bounded by the time budget:
    // the reads' pool opens a new connection, and a write that finds the connection manager's
    // connection dead is sent again on the new one.
    let mut recovered = false;
    for attempt in 0..100 {
        let context = service
            .get_context(request(
                "kb",
                &[&format!("After the outage, attempt {attempt}.")],
            ))
            .await?;
        if l2(&context) == vec![LayerOutcome::Miss] {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "L2 came back without a restart");
    assert!(
        service.stats().await.l2.available,
        "the first request that reached Redis again also stored its segment"
    );
    redis.stop();
    Ok(())
}

fn put_request(collection: &str, id: &str, text: &str) -> PutRequest {
    PutRequest {
        collection: collection.into(),
        documents: vec![(id.into(), text.into())],
        tokenizers: Vec::new(),
        ttl: None,
    }
}

/// Redis closes every client connection (as a restart, a failover or an idle timeout does)
/// while the service has a pooled read connection and a connection manager: the next read, the
/// next segment write and the next document write all succeed, and no error is counted.
#[tokio::test]
async fn connections_closed_by_redis_are_replaced_without_a_failed_call() -> TestResult {
    let port = free_port()?;
    let redis = OwnRedis::start(port)?;
    redis.wait_ready().await?;
    let url = format!("redis://127.0.0.1:{port}");
    let service = TokenCacheService::new(config("killed:"), Some(&url))?;
    let writer = TokenCacheService::new(config("killed:"), Some(&url))?;
    writer
        .get_context(request("kb", &["Written before the kill."]))
        .await?;
    service
        .put_documents(put_request("kb", "a", "alpha"))
        .await?;
    let first = service
        .get_context(request("kb", &["Read before the kill."]))
        .await?;
    assert_eq!(l2(&first), vec![LayerOutcome::Miss]);

    let mut admin = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
        .query_async(&mut admin)
        .await?;
    assert!(
        killed >= 2,
        "the service's read and write connections ({killed})"
    );

    // A pooled read connection, now closed: retried on a new one.
    let hit = service
        .get_context(request("kb", &["Written before the kill."]))
        .await?;
    assert_eq!(l2(&hit), vec![LayerOutcome::Hit]);
    // A miss writes its segment through the connection manager, whose connection was closed.
    let miss = service
        .get_context(request("kb", &["Written after the kill."]))
        .await?;
    assert_eq!(l2(&miss), vec![LayerOutcome::Miss]);
    service
        .put_documents(put_request("kb", "b", "beta"))
        .await?;
    let stats = service.stats().await;
    assert_eq!(stats.l2.errors, 0);
    assert!(stats.l2.available);
    Ok(())
}

fn free_port() -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// One instance misses `text` and writes it to the Redis of `url`; a second instance then hits it
/// there (its L1 is cold) with the right tokens, and neither counts a Redis error: the writes'
/// connection and the reads' connections meet in the same database as the same user.
async fn written_by_one_instance_read_by_another(
    url: &str,
    prefix: &str,
    text: &str,
) -> TestResult {
    let writer = TokenCacheService::new(config(prefix), Some(url))?;
    assert_eq!(
        l2(&writer.get_context(request("kb", &[text])).await?),
        vec![LayerOutcome::Miss]
    );
    let reader = TokenCacheService::new(config(prefix), Some(url))?;
    let context = reader.get_context(request("kb", &[text])).await?;
    assert_eq!(l2(&context), vec![LayerOutcome::Hit]);
    assert_eq!(context.token_ids, fresh(text));
    assert_eq!(writer.stats().await.l2.errors, 0);
    assert_eq!(reader.stats().await.l2.errors, 0);
    Ok(())
}

/// The password and database number of the URL reach both kinds of connection: the one that
/// writes (redis-rs) and the ones that read on the request path (`DirectMget`). A second
/// instance reading what the first wrote proves they meet in the same database.
#[tokio::test]
async fn password_and_database_of_the_url_apply_to_reads_and_writes() -> TestResult {
    let port = free_port()?;
    let redis = OwnRedis::start_with(port, &["--requirepass", "s3cret"])?;
    redis.wait_ready().await?;
    let url = format!("redis://:s3cret@127.0.0.1:{port}/3");
    let text = "Behind a password, in database three.";
    written_by_one_instance_read_by_another(&url, "auth:", text).await?;

    // The same keys in database 0 are not there.
    let other_database = format!("redis://:s3cret@127.0.0.1:{port}/0");
    let elsewhere = TokenCacheService::new(config("auth:"), Some(&other_database))?;
    assert_eq!(
        l2(&elsewhere.get_context(request("kb", &[text])).await?),
        vec![LayerOutcome::Miss]
    );

    // A wrong password: the request still succeeds, without L2, and the error is counted.
    let wrong = TokenCacheService::new(
        config("auth:"),
        Some(&format!("redis://:wrong@127.0.0.1:{port}/3")),
    )?;
    let context = wrong.get_context(request("kb", &[text])).await?;
    assert_eq!(context.token_ids, fresh(text));
    assert_eq!(l2(&context), vec![LayerOutcome::Error]);
    assert!(wrong.stats().await.l2.errors >= 1);
    Ok(())
}

/// A username (Redis ACL) in the URL: AUTH with both, on both kinds of connection.
#[tokio::test]
async fn an_acl_user_of_the_url_applies_to_reads_and_writes() -> TestResult {
    let port = free_port()?;
    let redis = OwnRedis::start_with(
        port,
        &["--user", "cache", "on", ">acl-secret", "~*", "&*", "+@all"],
    )?;
    redis.wait_ready().await?;
    let url = format!("redis://cache:acl-secret@127.0.0.1:{port}/1");
    written_by_one_instance_read_by_another(&url, "acl:", "Read and written as an ACL user.").await
}

#[tokio::test]
async fn a_redis_that_never_answers_costs_one_budget_and_the_request_succeeds() -> TestResult {
    // Accepts connections and never replies: the worst kind of slow.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let service = TokenCacheService::new(
        default_budget("silent:"),
        Some(&format!("redis://127.0.0.1:{port}")),
    )?;
    for text in ["Slow Redis, first request.", "Slow Redis, second request."] {
        let context = service.get_context(request("kb", &[text])).await?;
        assert_eq!(context.token_ids, fresh(text));
        assert_eq!(l2(&context), vec![LayerOutcome::Error]);
    }
    let stats = service.stats().await;
    assert_eq!(
        stats.l2.errors, 2,
        "one failed GET per request; no SET after a failed GET"
    );
    assert!(!stats.l2.available);
    silent.abort();
    Ok(())
}
