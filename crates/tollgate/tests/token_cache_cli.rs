//! `tollgate tokenize` (no server: the tokenizers are in the binary) and `tollgate cache stats`
//! against a token-cache started in this process on 127.0.0.1:0.

use std::io::Write;
use std::process::{Command, Stdio};

use tollgate::cli::Target;
use tollgate::config::Config;
use tollgate_kit::shutdown::Shutdown;
use tollgate_proto::v1::token_cache_client::TokenCacheClient;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn tollgate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

#[test]
fn tokenize_prints_ids_from_stdin_and_json_from_a_file() -> TestResult {
    let mut child = tollgate()
        .args(["tokenize", "--tokenizer", "cl100k_base", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(b"hello world")?;
    let output = child.wait_with_output()?;
    assert!(output.status.success(), "{output:?}");
    // cl100k_base: "hello" = 15339, " world" = 1917.
    assert_eq!(String::from_utf8(output.stdout)?.trim(), "15339 1917");

    let dir = std::env::temp_dir().join(format!("tollgate-tokenize-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("doc.txt");
    std::fs::write(&file, "hello world")?;
    let output = tollgate()
        .args(["tokenize", "--tokenizer", "gpt-4", "--json"])
        .arg(&file)
        .output()?;
    assert!(output.status.success(), "{output:?}");
    let value: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(value["tokenizer"], "cl100k_base");
    assert_eq!(value["count"], 2);
    assert_eq!(value["tokens"], serde_json::json!([15339, 1917]));
    std::fs::remove_dir_all(&dir)?;

    let output = tollgate()
        .args(["tokenize", "--tokenizer", "no-such-tokenizer", "-"])
        .stdin(Stdio::null())
        .output()?;
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8(output.stderr)?.contains("no-such-tokenizer"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_stats_reads_a_running_token_cache() -> TestResult {
    let shutdown = Shutdown::new();
    let gateway = tollgate::serve::start(
        Config::default().with_ephemeral_ports(),
        Target::TokenCache,
        shutdown.clone(),
    )
    .await?;
    let addr = format!(
        "http://{}",
        gateway
            .service(Target::TokenCache)
            .ok_or("not started")?
            .grpc
    );
    let channel = tollgate_kit::grpc::connect_lazy(&addr, std::time::Duration::from_secs(5))?;
    TokenCacheClient::new(channel)
        .tokenize(tollgate_proto::v1::TokenizeRequest {
            tokenizer: "cl100k_base".into(),
            text: "hello world".into(),
        })
        .await?;

    let run =
        |args: Vec<String>| tokio::task::spawn_blocking(move || tollgate().args(args).output());
    let output = run(vec![
        "cache".into(),
        "stats".into(),
        "--json".into(),
        "--addr".into(),
        addr.clone(),
    ])
    .await??;
    assert!(output.status.success(), "{output:?}");
    let value: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(value["l1"]["misses"], 1);
    assert_eq!(value["tokens_tokenized"], 2);
    assert_eq!(value["l2"]["available"], false);

    let output = run(vec![
        "cache".into(),
        "stats".into(),
        "--addr".into(),
        addr.clone(),
    ])
    .await??;
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8(output.stdout)?;
    assert!(
        table.contains("hit rate") && table.lines().any(|line| line.starts_with("l1")),
        "{table}"
    );

    shutdown.trigger();
    gateway.wait().await?;
    Ok(())
}
