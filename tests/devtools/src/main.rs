//! `sophia-dev`: helpers for the local stack.
//!
//! `sophia-dev bootstrap-key --tenant dev --out .local/dev-api-key` creates an API
//! key with every scope in the local auth table (through the same code api-admin
//! uses) and writes its plaintext to `--out` (mode 0600). The AWS endpoint and
//! the table come from the environment, as for the functions.
//!
//! `sophia-dev ship-emf --log .local/watch.log` follows the functions' output
//! and puts every EMF line into the local CloudWatch, as CloudWatch does with a
//! Lambda's log lines in AWS, so job-slo-check sees the local requests.
//!
//! `sophia-dev smoke --base http://127.0.0.1:9000 --api-key-file .local/dev-api-key`
//! walks the smoke journey (`sophia_shared::ops::smoke`) against any stack; the key
//! can also come from `SMOKE_API_KEY` (a deployed stack's key stays out of
//! the process list and the shell history).
//!
//! `sophia-dev traces --port 4318 --log .local/traces.log` receives the
//! functions' OpenTelemetry spans over OTLP/HTTP and shows them as trees at
//! `http://127.0.0.1:4318/` (`devtools::traces`).
//!
//! `sophia-dev event-source --queue-url URL --function worker-inference --invoke
//! http://127.0.0.1:9000` stands in for Lambda's SQS event source mapping (moto
//! cannot run one without Docker): it long-polls the queue, invokes the function
//! through `cargo lambda watch` with the batch, and deletes every record the
//! answer does not list in `batchItemFailures` — the failed ones reappear after
//! their visibility timeout, and SQS dead-letters them after `maxReceiveCount`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sophia_shared::auth::ALL_SCOPES;
use sophia_shared::auth::store::AuthStore;
use sophia_shared::aws::{AwsSettings, load_sdk_config};
use sophia_shared::config::{Env, ProcessEnv};
use sophia_shared::ops::smoke::{self, Journey};
use sophia_shared::outbound::{OutboundClient, OutboundSettings};
use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an API key for a tenant (every scope unless `--scopes`) and save it.
    BootstrapKey {
        #[arg(long, default_value = "dev")]
        tenant: String,
        #[arg(long)]
        out: PathBuf,
        /// Comma-separated scopes; every scope when absent.
        #[arg(long)]
        scopes: Option<String>,
    },
    /// Feed a queue to a function like Lambda's SQS event source (runs until stopped).
    EventSource {
        #[arg(long)]
        queue_url: String,
        #[arg(long, default_value = "worker-inference")]
        function: String,
        /// Where `cargo lambda watch` listens.
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        invoke: String,
        #[arg(long, default_value_t = 10)]
        batch_size: i32,
    },
    /// Walk the smoke journey against a running stack; non-zero exit on the first failure.
    Smoke {
        /// The API base URL (without /v1).
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        base: String,
        /// A file holding the API key; without it, `SMOKE_API_KEY`.
        #[arg(long)]
        api_key_file: Option<PathBuf>,
        #[arg(long, default_value = "sophia-small")]
        chat_model: String,
        #[arg(long, default_value = "sophia-embed")]
        embedding_model: String,
        /// The whole journey's time limit.
        #[arg(long, default_value_t = 120)]
        budget_secs: u64,
        /// How long a revoked access token may still be accepted.
        #[arg(long, default_value_t = 15)]
        revocation_within_secs: u64,
    },
    /// Follow a log file and put its EMF lines into the local CloudWatch (runs until stopped).
    ShipEmf {
        #[arg(long)]
        log: PathBuf,
    },
    /// Receive OTLP/HTTP traces on 127.0.0.1 and show them at `/` (runs until stopped).
    Traces {
        #[arg(long, default_value_t = 4318)]
        port: u16,
        /// Also append one line per span here.
        #[arg(long)]
        log: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let Args { command } = Args::parse();
    let env = Env::new(&ProcessEnv);
    let outcome = match command {
        Command::BootstrapKey {
            tenant,
            out,
            scopes,
        } => bootstrap_key(&env, &tenant, &out, scopes.as_deref()).await,
        Command::EventSource {
            queue_url,
            function,
            invoke,
            batch_size,
        } => event_source(&env, &queue_url, &function, &invoke, batch_size).await,
        Command::ShipEmf { log } => ship_emf(&env, &log).await,
        Command::Traces { port, log } => traces(port, log).await,
        Command::Smoke {
            base,
            api_key_file,
            chat_model,
            embedding_model,
            budget_secs,
            revocation_within_secs,
        } => {
            let journey = api_key(&env, api_key_file.as_ref()).map(|api_key| Journey {
                base,
                api_key,
                chat_model,
                embedding_model,
                budget: Duration::from_secs(budget_secs),
                revocation_within: Duration::from_secs(revocation_within_secs),
            });
            match journey {
                Ok(journey) => smoke(&env, &journey).await,
                Err(message) => Err(message),
            }
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sophia-dev: {message}");
            ExitCode::FAILURE
        }
    }
}

fn api_key(env: &Env<'_>, file: Option<&PathBuf>) -> Result<String, String> {
    let key = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("reading the API key from {}: {e}", path.display()))?,
        None => env
            .optional("SMOKE_API_KEY")
            .ok_or("no API key: pass --api-key-file or set SMOKE_API_KEY")?,
    };
    Ok(key.trim().to_owned())
}

async fn smoke(env: &Env<'_>, journey: &Journey) -> Result<(), String> {
    let http = OutboundClient::new(OutboundSettings::from_env(env).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    println!(
        "==> smoke journey against {} (at most {} s)",
        journey.base,
        journey.budget.as_secs()
    );
    let started = std::time::Instant::now();
    let mut number = 0;
    let outcome = smoke::run(&http, journey, |passed| {
        number += 1;
        println!(
            "  [{number:>2}/{}] {:<18} ok {:>7.0} ms  {}",
            smoke::STEPS.len(),
            passed.step,
            passed.took.as_secs_f64() * 1000.0,
            passed.detail
        );
    })
    .await;
    match outcome {
        Ok(passed) => {
            println!(
                "==> smoke journey passed: {} steps in {:.1} s",
                passed.len(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Err(failed) => Err(failed.to_string()),
    }
}

async fn bootstrap_key(
    env: &Env<'_>,
    tenant: &str,
    out: &PathBuf,
    scopes: Option<&str>,
) -> Result<(), String> {
    let table = env.required("AUTH_TABLE").map_err(|e| e.to_string())?;
    let sdk = load_sdk_config(AwsSettings::from_env(env).map_err(|e| e.to_string())?).await;
    let store = AuthStore::new(aws_sdk_dynamodb::Client::new(&sdk), table);
    let scopes: Vec<String> = match scopes {
        None => ALL_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        Some(list) => list.split(',').map(|s| s.trim().to_owned()).collect(),
    };
    if let Some(unknown) = scopes.iter().find(|s| !ALL_SCOPES.contains(&s.as_str())) {
        return Err(format!(
            "unknown scope {unknown:?}; known: {}",
            ALL_SCOPES.join(", ")
        ));
    }
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

async fn event_source(
    env: &Env<'_>,
    queue_url: &str,
    function: &str,
    invoke: &str,
    batch_size: i32,
) -> Result<(), String> {
    let sdk = load_sdk_config(AwsSettings::from_env(env).map_err(|e| e.to_string())?).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let http = OutboundClient::new(OutboundSettings::from_env(env).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let url = format!("{invoke}/2015-03-31/functions/{function}/invocations");
    println!("  event source: {queue_url} -> {function} (batches of up to {batch_size})");
    loop {
        let received = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(batch_size)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await;
        let messages = match received {
            Ok(output) => output.messages().to_vec(),
            Err(error) => {
                eprintln!(
                    "  event source: receiving failed: {}",
                    DisplayErrorContext(error)
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        if messages.is_empty() {
            // moto may answer at once instead of long-polling.
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let records: Vec<Value> = messages
            .iter()
            .map(|message| {
                let attributes: serde_json::Map<String, Value> = message
                    .attributes()
                    .map(|all| {
                        all.iter()
                            .map(|(k, v)| (k.as_str().to_owned(), Value::String(v.clone())))
                            .collect()
                    })
                    .unwrap_or_default();
                // As Lambda passes them: the sender's trace context travels here.
                let message_attributes: serde_json::Map<String, Value> = message
                    .message_attributes()
                    .map(|all| {
                        all.iter()
                            .map(|(k, v)| {
                                (
                                    k.clone(),
                                    json!({
                                        "stringValue": v.string_value(),
                                        "dataType": v.data_type(),
                                        "stringListValues": [],
                                        "binaryListValues": [],
                                    }),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                json!({
                    "messageId": message.message_id(),
                    "receiptHandle": message.receipt_handle(),
                    "body": message.body(),
                    "attributes": attributes,
                    "messageAttributes": message_attributes,
                    "eventSource": "aws:sqs",
                    "eventSourceARN": format!("arn:aws:sqs:local:000000000000:{}", queue_url.rsplit('/').next().unwrap_or_default()),
                    "awsRegion": "us-east-1",
                })
            })
            .collect();
        let answer = http
            .send_json(
                http::Method::POST,
                &url,
                &json!({ "Records": records }),
                None,
                Duration::from_secs(900),
            )
            .await;
        let failed: Vec<String> = match answer {
            Ok((_, body)) => serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["batchItemFailures"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned))
                .collect(),
            Err(error) => {
                // The whole batch failed (as when a function errors): nothing is deleted.
                eprintln!("  event source: invoking {function} failed: {error}");
                continue;
            }
        };
        let mut deleted = 0;
        for message in &messages {
            if failed
                .iter()
                .any(|id| Some(id.as_str()) == message.message_id())
            {
                continue;
            }
            let receipt = message.receipt_handle().unwrap_or_default();
            match sqs
                .delete_message()
                .queue_url(queue_url)
                .receipt_handle(receipt)
                .send()
                .await
            {
                Ok(_) => deleted += 1,
                Err(error) => eprintln!(
                    "  event source: deleting failed: {}",
                    DisplayErrorContext(error)
                ),
            }
        }
        println!(
            "  event source: batch of {}: {deleted} done, {} to retry after their visibility timeout",
            messages.len(),
            failed.len()
        );
    }
}

async fn traces(port: u16, log: Option<PathBuf>) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("listening on 127.0.0.1:{port}: {e}"))?;
    println!(
        "  traces: OTLP/HTTP on http://127.0.0.1:{port}/v1/traces, trees at http://127.0.0.1:{port}/"
    );
    devtools::traces::serve(listener, devtools::traces::Collected::default(), log)
        .await
        .map_err(|e| e.to_string())
}

async fn ship_emf(env: &Env<'_>, log: &PathBuf) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let sdk = load_sdk_config(AwsSettings::from_env(env).map_err(|e| e.to_string())?).await;
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&sdk);
    println!(
        "  shipping EMF lines of {} to the local CloudWatch",
        log.display()
    );
    let mut offset = 0u64;
    let mut partial = String::new();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Ok(mut file) = std::fs::File::open(log) else {
            continue;
        };
        let length = file.metadata().map(|m| m.len()).unwrap_or(0);
        if length < offset {
            // The log was truncated (a restart): read it from the start.
            offset = 0;
            partial.clear();
        }
        if file.seek(SeekFrom::Start(offset)).is_err() {
            continue;
        }
        let mut chunk = String::new();
        let Ok(read) = file.read_to_string(&mut chunk) else {
            continue;
        };
        offset += read as u64;
        partial.push_str(&chunk);
        let Some(end) = partial.rfind('\n') else {
            continue;
        };
        let complete: String = partial.drain(..=end).collect();
        let documents: Vec<Value> = complete
            .lines()
            .filter(|line| line.contains("\"_aws\""))
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        if documents.is_empty() {
            continue;
        }
        match devtools::put_emf(&cloudwatch, &documents).await {
            Ok(count) => println!(
                "  shipped {count} metric values from {} EMF lines",
                documents.len()
            ),
            Err(error) => eprintln!("  shipping EMF failed: {error}"),
        }
    }
}
