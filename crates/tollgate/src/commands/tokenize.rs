//! `tollgate tokenize --tokenizer NAME [--json] FILE|-`: the token IDs of a file (or stdin) with
//! the same tokenizers the token-cache serves, in process: no server needed.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tollgate_token_cache::tokenizer::TokenizerRegistry;

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// A tokenizer name (cl100k_base, o200k_base, p50k_base, r50k_base, or one configured in
    /// `[[token_cache.tokenizers]]`) or a model id mapped to one.
    #[arg(long)]
    pub tokenizer: String,
    /// Print `{"tokenizer": ..., "count": N, "tokens": [...]}` instead of space-separated IDs.
    #[arg(long)]
    pub json: bool,
    /// The file to tokenize; `-` reads standard input.
    pub file: PathBuf,
}

pub fn run(args: TokenizeArgs, config: &crate::config::Config) -> ExitCode {
    match tokenize(&args, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            let _ = writeln!(std::io::stderr(), "tollgate tokenize: {message}");
            ExitCode::from(code)
        }
    }
}

fn tokenize(args: &TokenizeArgs, config: &crate::config::Config) -> Result<(), (u8, String)> {
    let registry =
        TokenizerRegistry::new(&config.token_cache.models, &config.token_cache.tokenizers)
            .map_err(|e| (64, format!("token_cache.{e}")))?;
    let tokenizer = registry
        .resolve(&args.tokenizer)
        .map_err(|e| (64, format!("--tokenizer: {e}")))?;
    let mut text = String::new();
    let read = if args.file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)
    } else {
        std::fs::File::open(&args.file).and_then(|mut file| file.read_to_string(&mut text))
    };
    read.map_err(|e| (1, format!("{}: {e}", args.file.display())))?;
    let ids = tokenizer.encode(&text).map_err(|e| (1, e.to_string()))?;
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        let value = serde_json::json!({
            "tokenizer": tokenizer.name(),
            "tokenizer_id": tokenizer.id(),
            "count": ids.len(),
            "tokens": ids,
        });
        writeln!(out, "{value}")
    } else {
        let line: Vec<String> = ids.iter().map(u32::to_string).collect();
        writeln!(out, "{}", line.join(" "))
    };
    written.map_err(|e| (1, format!("writing the output: {e}")))
}
