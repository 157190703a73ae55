//! `sophia-dev`: helpers for the local stack.
//!
//! `sophia-dev bootstrap-key --tenant dev --out .local/dev-api-key` creates an API
//! key with every scope in the local auth table (through the same code api-admin
//! uses) and writes its plaintext to `--out` (mode 0600). The AWS endpoint and
//! the table come from the environment, as for the functions.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sophia_shared::auth::ALL_SCOPES;
use sophia_shared::auth::store::AuthStore;
use sophia_shared::aws::{AwsSettings, load_sdk_config};
use sophia_shared::config::{Env, ProcessEnv};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an API key with every scope for a tenant and save it.
    BootstrapKey {
        #[arg(long, default_value = "dev")]
        tenant: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let Args { command } = Args::parse();
    let env = Env::new(&ProcessEnv);
    let outcome = match command {
        Command::BootstrapKey { tenant, out } => bootstrap_key(&env, &tenant, &out).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sophia-dev: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn bootstrap_key(env: &Env<'_>, tenant: &str, out: &PathBuf) -> Result<(), String> {
    let table = env.required("AUTH_TABLE").map_err(|e| e.to_string())?;
    let sdk = load_sdk_config(AwsSettings::from_env(env).map_err(|e| e.to_string())?).await;
    let store = AuthStore::new(aws_sdk_dynamodb::Client::new(&sdk), table);
    let scopes: Vec<String> = ALL_SCOPES.iter().map(|s| (*s).to_owned()).collect();
    let (record, key) = store
        .create_api_key(tenant, &scopes, "make dev bootstrap key")
        .await
        .map_err(|e| e.to_string())?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    writeln!(file, "{key}").map_err(|e| format!("{}: {e}", out.display()))?;
    println!(
        "  created API key {} for tenant {tenant} with scopes {}",
        record.id,
        scopes.join(" ")
    );
    Ok(())
}
