//! `tollgate tenant add|rotate|list` as an operator runs them: the real binary, configured only
//! through `TOLLGATE_STORAGE__DATA_DIR` (so the SQLite store under a fresh directory), then the
//! printed key checked against the store itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tollgate_router::tenants::{ApiKey, open_tenant_store};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn data_dir(label: &str) -> TestResult<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "tollgate-tenant-cli-{label}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos()
    ));
    Ok(dir)
}

fn tollgate(data_dir: &Path, args: &[&str]) -> TestResult<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TOLLGATE_STORAGE__DATA_DIR", data_dir)
        .args(args)
        .output()?)
}

/// The `tg_...` key on the line starting with `api key: `.
fn printed_key(stdout: &str) -> TestResult<ApiKey> {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("api key: "))
        .ok_or_else(|| format!("no key printed: {stdout}"))?;
    Ok(ApiKey::parse(line.trim()).ok_or_else(|| format!("not a tollgate key: {line}"))?)
}

async fn tenant_of(data_dir: &Path, key: &ApiKey) -> TestResult<Option<String>> {
    let storage = tollgate_kit::config::StorageConfig {
        data_dir: data_dir.to_owned(),
        ..Default::default()
    };
    let store = open_tenant_store(&storage).await?;
    Ok(store.find_by_key_hash(&key.sha256()).await?.map(|t| t.name))
}

#[tokio::test]
async fn add_prints_a_working_key_once_and_list_never_shows_it() -> TestResult {
    let dir = data_dir("add")?;
    let added = tollgate(
        &dir,
        &["tenant", "add", "acme", "--rps", "20", "--burst", "40"],
    )?;
    assert!(added.status.success(), "{added:?}");
    let stdout = String::from_utf8(added.stdout)?;
    let key = printed_key(&stdout)?;
    assert!(stdout.contains("cannot be shown again"), "{stdout}");
    assert!(dir.join("router/tenants.db").is_file());
    assert_eq!(tenant_of(&dir, &key).await?, Some("acme".to_owned()));

    let listed = tollgate(&dir, &["tenant", "list", "--json"])?;
    assert!(listed.status.success(), "{listed:?}");
    let text = String::from_utf8(listed.stdout)?;
    assert!(
        !text.contains(&key.expose()[3..]),
        "the key is never listed: {text}"
    );
    assert!(!text.contains("tg_"), "{text}");
    let value: serde_json::Value = serde_json::from_str(&text)?;
    let tenants = value["tenants"].as_array().ok_or("no tenants array")?;
    assert_eq!(tenants.len(), 1);
    assert_eq!(tenants[0]["name"], "acme");
    assert_eq!(tenants[0]["rate_limit_rps"], 20);
    assert_eq!(tenants[0]["burst"], 40);
    assert!(tenants[0]["created_at"].is_string());

    let table = tollgate(&dir, &["tenant", "list"])?;
    assert!(table.status.success(), "{table:?}");
    assert!(String::from_utf8(table.stdout)?.contains("acme"));

    let again = tollgate(&dir, &["tenant", "add", "acme"])?;
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8(again.stderr)?.contains("already exists"));
    let bad = tollgate(&dir, &["tenant", "add", "no spaces"])?;
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8(bad.stderr)?.contains("name: character ' '"));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn rotate_replaces_the_key() -> TestResult {
    let dir = data_dir("rotate")?;
    let added = tollgate(&dir, &["tenant", "add", "acme", "--json"])?;
    assert!(added.status.success(), "{added:?}");
    let value: serde_json::Value = serde_json::from_slice(&added.stdout)?;
    let old_key = ApiKey::parse(value["api_key"].as_str().ok_or("no api_key")?)
        .ok_or("not a tollgate key")?;
    assert_eq!(value["tenant"]["name"], "acme");

    let rotated = tollgate(&dir, &["tenant", "rotate", "acme"])?;
    assert!(rotated.status.success(), "{rotated:?}");
    let new_key = printed_key(&String::from_utf8(rotated.stdout)?)?;
    assert_ne!(new_key, old_key);
    assert_eq!(tenant_of(&dir, &old_key).await?, None);
    assert_eq!(tenant_of(&dir, &new_key).await?, Some("acme".to_owned()));

    let missing = tollgate(&dir, &["tenant", "rotate", "nobody"])?;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8(missing.stderr)?.contains("not found"));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
