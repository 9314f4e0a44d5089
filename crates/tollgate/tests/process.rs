//! The real `tollgate` binary as an operator runs it: it starts from environment configuration,
//! refuses bad configuration with exit code 64 and a message naming the key, and on SIGTERM
//! turns health NOT_SERVING, drains within the grace period and exits 0.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const SERVICES: [&str; 5] = [
    "ROUTER",
    "TOKEN_CACHE",
    "CASEBANK",
    "COST_TRACKER",
    "PROVIDER_ADAPTER",
];

fn tollgate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// `tollgate serve` with every listener on an ephemeral port.
fn serve_on_ephemeral_ports(grace_period_secs: u64) -> Command {
    let mut command = tollgate();
    command.args(["serve", "--target", "all"]);
    for service in SERVICES {
        command.env(format!("TOLLGATE_{service}__LISTEN__GRPC"), "127.0.0.1:0");
        command.env(
            format!("TOLLGATE_{service}__LISTEN__METRICS"),
            "127.0.0.1:0",
        );
    }
    command.env(
        "TOLLGATE_SERVER__GRACE_PERIOD_SECS",
        grace_period_secs.to_string(),
    );
    command.env("TOLLGATE_TELEMETRY__LOG_FORMAT", "json");
    // Each process its own SQLite files: processes of parallel tests must not share them.
    static DATA_DIRS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let data_dir = std::env::temp_dir().join(format!(
        "tollgate-process-test-{}-{}",
        std::process::id(),
        DATA_DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    command.env("TOLLGATE_STORAGE__DATA_DIR", data_dir);
    command
}

/// The router's addresses, as its "service ready" log line reports them.
struct RouterAddrs {
    grpc: String,
    metrics: String,
}

/// Reads the JSON log until every service reported ready.
async fn wait_until_ready(child: &mut Child) -> TestResult<RouterAddrs> {
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut ready = 0;
    let mut router_opt = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready < SERVICES.len() {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await??
            .ok_or("tollgate exited early")?;
        let event: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| format!("not JSON ({e}): {line}"))?;
        if event["message"] == "service ready" {
            ready += 1;
            if event["target_service"] == "router" {
                router_opt =
                    event["grpc"]
                        .as_str()
                        .zip(event["metrics"].as_str())
                        .map(|(grpc, metrics)| RouterAddrs {
                            grpc: grpc.to_owned(),
                            metrics: metrics.to_owned(),
                        });
            }
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    router_opt.ok_or_else(|| "router never reported its address".into())
}

/// The status of `GET /healthz`, over a plain HTTP/1.1 connection.
async fn healthz_status(addr: &str) -> TestResult<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or("no status line")?)
}

async fn send_sigterm(child: &Child) -> TestResult {
    let pid = child.id().ok_or("child already exited")?;
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    assert!(status.success());
    Ok(())
}

#[tokio::test]
async fn sigterm_turns_health_not_serving_and_exits_zero_within_the_grace_period() -> TestResult {
    let grace = Duration::from_secs(2);
    let mut child = serve_on_ephemeral_ports(grace.as_secs()).spawn()?;
    let router = wait_until_ready(&mut child).await?;

    // A long-lived stream that is still open at shutdown: it must see NOT_SERVING, and must not
    // keep the process alive past the grace period.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", router.grpc))?
        .connect()
        .await?;
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: "tollgate.v1.Router".into(),
        })
        .await?
        .into_inner();
    let first = watch.next().await.ok_or("watch ended")??;
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let signalled = Instant::now();
    send_sigterm(&child).await?;
    let mut saw_not_serving = false;
    while let Ok(Some(Ok(update))) = tokio::time::timeout(grace * 2, watch.next()).await {
        if update.status == ServingStatus::NotServing as i32 {
            saw_not_serving = true;
            break;
        }
    }
    assert!(saw_not_serving, "health never turned NOT_SERVING");
    // While the open stream holds the drain, /healthz answers 503 rather than refusing connections.
    assert_eq!(healthz_status(&router.metrics).await?, 503);

    let status = tokio::time::timeout(grace + Duration::from_secs(5), child.wait()).await??;
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(
        signalled.elapsed() < grace + Duration::from_secs(3),
        "took {:?}",
        signalled.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_with_nothing_in_flight_exits_at_once() -> TestResult {
    let mut child = serve_on_ephemeral_ports(20).spawn()?;
    wait_until_ready(&mut child).await?;
    let signalled = Instant::now();
    send_sigterm(&child).await?;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "an idle server drains at once, took {:?}",
        signalled.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn a_bad_environment_value_exits_64_naming_the_key_and_variable() -> TestResult {
    let output = tollgate()
        .args(["serve"])
        .env("TOLLGATE_SERVER__CONCURRENCY_LIMIT", "lots")
        .output()
        .await?;
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8(output.stderr)?;
    assert!(stderr.contains("server.concurrency_limit"), "{stderr}");
    assert!(
        stderr.contains("TOLLGATE_SERVER__CONCURRENCY_LIMIT"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unknown_key_in_the_file_exits_64_naming_it() -> TestResult {
    let dir = std::env::temp_dir().join(format!("tollgate-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("tollgate.toml");
    std::fs::write(
        &file,
        "[router.listen]\ngrpc = \"127.0.0.1:0\"\ngrcp_port = 1\n",
    )?;
    let output = tollgate()
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .await?;
    std::fs::remove_dir_all(&dir)?;
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8(output.stderr)?;
    assert!(
        stderr.contains("grcp_port") && stderr.contains("router.listen"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_config_file_exits_64() -> TestResult {
    let output = tollgate()
        .args(["serve", "--config", "/nonexistent/tollgate.toml"])
        .output()
        .await?;
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8(output.stderr)?.contains("/nonexistent/tollgate.toml"));
    Ok(())
}

#[tokio::test]
async fn a_port_in_use_is_a_clear_start_up_error() -> TestResult {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let output = tollgate()
        .args(["serve", "--target", "router"])
        .env("TOLLGATE_ROUTER__LISTEN__GRPC", format!("127.0.0.1:{port}"))
        .env("TOLLGATE_ROUTER__LISTEN__METRICS", "127.0.0.1:0")
        .output()
        .await?;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr)?;
    assert!(
        stderr.contains("router") && stderr.contains(&port.to_string()),
        "{stderr}"
    );
    Ok(())
}
