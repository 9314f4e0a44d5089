//! Hugging Face `tokenizer.json` tokenizers named in configuration (`[[token_cache.tokenizers]]`)
//! and reached through the model map: exact IDs, spans, caching, listing, and start-up errors
//! that name the key. The tokenizer file is written by the test (a small word-level model), so no
//! model is downloaded.

use std::collections::BTreeMap;

use tollgate_token_cache::TokenCacheConfig;
use tollgate_token_cache::service::{
    ContextRequest, DocumentInput, LayerOutcome, TokenCacheService,
};
use tollgate_token_cache::tokenizer::TokenizerFile;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const TOKENIZER_JSON: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [],
  "normalizer": {"type": "Lowercase"},
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null,
  "decoder": null,
  "model": {
    "type": "WordLevel",
    "vocab": {"[UNK]": 0, "hello": 1, "world": 2, "tollgate": 3, ".": 4, "!": 5},
    "unk_token": "[UNK]"
  }
}"#;

fn write_tokenizer(name: &str, contents: &str) -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("tollgate-hf-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, contents)?;
    Ok(path)
}

#[tokio::test]
async fn a_configured_tokenizer_json_serves_exact_ids_through_the_model_map() -> TestResult {
    let path = write_tokenizer("ok", TOKENIZER_JSON)?;
    let config = TokenCacheConfig {
        tokenizers: vec![TokenizerFile {
            name: "tiny-wordlevel".into(),
            path: path.clone(),
        }],
        models: BTreeMap::from([("tiny-model".to_owned(), "tiny-wordlevel".to_owned())]),
        ..TokenCacheConfig::default()
    };
    let service = TokenCacheService::new(config, None)?;
    let request = ContextRequest {
        collection: "kb".into(),
        documents: vec![
            DocumentInput::Inline {
                id: "a".into(),
                text: "Hello world.".into(),
            },
            DocumentInput::Inline {
                id: "b".into(),
                text: "Tollgate! Unknown".into(),
            },
        ],
        tokenizer: "tiny-model".into(),
        max_tokens: None,
        separator: "\n\n".into(),
    };
    let context = service.get_context(request.clone()).await?;
    assert_eq!(context.token_ids, vec![1, 2, 4, 3, 5, 0]);
    assert!(
        context.tokenizer_id.starts_with("tiny-wordlevel:"),
        "{}",
        context.tokenizer_id
    );
    let spans: Vec<(u64, u64)> = context.spans.iter().map(|s| (s.start, s.end)).collect();
    assert_eq!(spans, vec![(0, 3), (3, 6)]);
    let again = service.get_context(request).await?;
    assert_eq!(again.token_ids, context.token_ids);
    assert!(again.spans.iter().all(|span| span.l1 == LayerOutcome::Hit));

    let listed = service.list_tokenizers().await?;
    let entry = listed
        .iter()
        .find(|t| t.name == "tiny-wordlevel")
        .ok_or("tiny-wordlevel is listed")?;
    assert_eq!(entry.kind, "huggingface");
    assert_eq!(entry.models, vec!["tiny-model".to_owned()]);
    assert_eq!(entry.tokenizer_id, context.tokenizer_id);
    std::fs::remove_dir_all(path.parent().ok_or("dir")?)?;
    Ok(())
}

#[test]
fn a_bad_tokenizer_file_stops_start_up_naming_the_key() -> TestResult {
    let missing = TokenCacheConfig {
        tokenizers: vec![TokenizerFile {
            name: "gone".into(),
            path: "/nonexistent/tokenizer.json".into(),
        }],
        ..TokenCacheConfig::default()
    };
    let error = TokenCacheService::new(missing, None)
        .err()
        .ok_or("accepted a missing file")?;
    assert!(error.to_string().contains("tokenizers[0].path"), "{error}");

    let path = write_tokenizer("bad", "{\"not\": \"a tokenizer\"}")?;
    let garbage = TokenCacheConfig {
        tokenizers: vec![TokenizerFile {
            name: "bad".into(),
            path: path.clone(),
        }],
        ..TokenCacheConfig::default()
    };
    let error = TokenCacheService::new(garbage, None)
        .err()
        .ok_or("accepted garbage")?;
    assert!(
        error.to_string().contains("not a tokenizer.json"),
        "{error}"
    );

    let unknown_model = TokenCacheConfig {
        models: BTreeMap::from([("m".to_owned(), "no-such".to_owned())]),
        ..TokenCacheConfig::default()
    };
    let error = TokenCacheService::new(unknown_model, None)
        .err()
        .ok_or("accepted a bad map")?;
    assert!(error.to_string().contains("models.m"), "{error}");
    std::fs::remove_dir_all(path.parent().ok_or("dir")?)?;
    Ok(())
}
