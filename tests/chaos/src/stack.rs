//! The dev stack under test: its API, its local AWS, its parts as processes
//! (stopped, killed and restarted here), and the scheduled functions invoked
//! through `cargo lambda watch` as EventBridge Scheduler would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use sophia_shared::auth::store::AuthStore;
use sophia_shared::config::Env;
use sophia_shared::outbound::{Answer, Exchange, OutboundClient, OutboundSettings};

/// Everything the run needs to reach the stack.
pub struct Stack {
    pub base: String,
    pub state_dir: PathBuf,
    pub http: OutboundClient,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    /// The functions' environment (`dev.env`): table names, queue URLs, secrets.
    pub vars: HashMap<String, String>,
    /// Fleet endpoints by name (`primary` → its base URL).
    pub fleet: Vec<(String, String)>,
}

/// A tenant's API key, traded for access tokens.
pub struct Tenant {
    pub name: &'static str,
    pub api_key: String,
}

impl Stack {
    pub async fn open(env: &Env<'_>, state_dir: &Path) -> Result<Self, String> {
        let read = |name: &str| {
            std::fs::read_to_string(state_dir.join(name))
                .map_err(|e| format!("{}: {e}", state_dir.join(name).display()))
        };
        let stack: Value =
            serde_json::from_str(&read("stack.json")?).map_err(|e| format!("stack.json: {e}"))?;
        let vars: HashMap<String, String> = read("dev.env")?
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        let fleet = vars
            .get("FLEET_ENDPOINTS")
            .ok_or("dev.env has no FLEET_ENDPOINTS")?
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(name, url)| (name.to_owned(), url.to_owned()))
            .collect();
        let settings = sophia_shared::aws::AwsSettings::from_env(env).map_err(|e| e.to_string())?;
        let sdk = sophia_shared::aws::load_sdk_config(settings).await;
        Ok(Self {
            base: stack["base"]
                .as_str()
                .ok_or("stack.json has no base")?
                .to_owned(),
            state_dir: state_dir.to_owned(),
            http: OutboundClient::new(OutboundSettings::from_env(env).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?,
            dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
            sqs: aws_sdk_sqs::Client::new(&sdk),
            secrets: aws_sdk_secretsmanager::Client::new(&sdk),
            cloudwatch: aws_sdk_cloudwatch::Client::new(&sdk),
            vars,
            fleet,
        })
    }

    pub fn var(&self, name: &str) -> Result<&str, String> {
        self.vars
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("dev.env has no {name}"))
    }

    /// A tenant of its own for one kind of traffic, with an API key holding `scopes`.
    pub async fn tenant(&self, name: &'static str, scopes: &[&str]) -> Result<Tenant, String> {
        let store = AuthStore::new(self.dynamodb.clone(), self.var("AUTH_TABLE")?.to_owned());
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        let (_, api_key) = store
            .create_api_key(name, &scopes, "chaos")
            .await
            .map_err(|e| format!("creating a key for {name}: {e}"))?;
        Ok(Tenant { name, api_key })
    }

    /// An access token for `tenant` (15 minutes).
    pub async fn token(&self, tenant: &Tenant) -> Result<String, String> {
        let answer = self
            .send(
                http::Method::POST,
                "/v1/auth/token",
                &[],
                Some(&json!({"api_key": tenant.api_key})),
                Duration::from_secs(10),
            )
            .await?;
        let body: Value = serde_json::from_slice(&answer.body).map_err(|e| e.to_string())?;
        body["access_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no token for {}: {} {body}", tenant.name, answer.status))
    }

    /// One request to the API.
    pub async fn send(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(String, String)],
        json: Option<&Value>,
        timeout: Duration,
    ) -> Result<Answer, String> {
        let url = format!("{}{path}", self.base);
        self.http
            .exchange(Exchange {
                method,
                url: &url,
                headers,
                json,
                timeout,
                max_answer_bytes: 4 * 1024 * 1024,
                ctx: None,
            })
            .await
            .map_err(|e| format!("{path}: {e}"))
    }

    /// `GET path` with `token` as the bearer: the status and the JSON body
    /// (null when the body is not JSON).
    pub async fn get_json(
        &self,
        path: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<(http::StatusCode, Value), String> {
        let headers = [("authorization".to_owned(), format!("Bearer {token}"))];
        let answer = self
            .send(http::Method::GET, path, &headers, None, timeout)
            .await?;
        let body = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        Ok((answer.status, body))
    }

    /// Invokes `function` with `event` through `cargo lambda watch` (Lambda's
    /// Invoke API), as its schedule or Secrets Manager would; the answer's body.
    pub async fn invoke(&self, function: &str, event: &Value) -> Result<Value, String> {
        let path = format!("/2015-03-31/functions/{function}/invocations");
        let answer = self
            .send(
                http::Method::POST,
                &path,
                &[],
                Some(event),
                Duration::from_secs(120),
            )
            .await?;
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        if !answer.status.is_success() || body.get("errorType").is_some() {
            return Err(format!("{function}: {} {body}", answer.status));
        }
        Ok(body)
    }

    /// Sets a fault on the fleet endpoint `name` (`/_sim/fault`; `{}` heals it).
    pub async fn fault(&self, name: &str, fault: &Value) -> Result<(), String> {
        let (_, url) = self
            .fleet
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| format!("no fleet endpoint {name}"))?;
        let headers: [(String, String); 0] = [];
        self.http
            .exchange(Exchange {
                method: http::Method::PUT,
                url: &format!("{url}/_sim/fault"),
                headers: &headers,
                json: Some(fault),
                timeout: Duration::from_secs(5),
                max_answer_bytes: 64 * 1024,
                ctx: None,
            })
            .await
            .map(|_| ())
            .map_err(|e| format!("fault on {name}: {e}"))
    }

    /// The pid `make dev` started part `name` with (`fleet-sim:primary`, `local-aws`, …).
    pub fn part(&self, name: &str) -> Result<u32, String> {
        let parts = std::fs::read_to_string(self.state_dir.join("parts"))
            .map_err(|e| format!("the stack's parts file: {e}"))?;
        parts
            .lines()
            .filter_map(|line| line.split_once(' '))
            .filter(|(part, _)| *part == name)
            .filter_map(|(_, pid)| pid.trim().parse().ok())
            .next_back()
            .ok_or_else(|| format!("no part {name} in the parts file"))
    }
}

/// Sends `signal` to the process group of `pid` (each part runs in its own).
pub fn signal(pid: u32, signal: &str) -> Result<(), String> {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), "--".to_owned(), format!("-{pid}")])
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{signal} -{pid} failed"))
    }
}

/// How a part was started, read before it is killed, to start it again.
#[derive(Debug)]
pub struct Launch {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
}

impl Launch {
    pub fn of(pid: u32) -> Result<Self, String> {
        let read = |what: &str| {
            std::fs::read(format!("/proc/{pid}/{what}"))
                .map_err(|e| format!("pid {pid} {what}: {e}"))
        };
        let split = |bytes: Vec<u8>| -> Vec<String> {
            bytes
                .split(|b| *b == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect()
        };
        let env = split(read("environ")?)
            .into_iter()
            .filter_map(|pair| {
                pair.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect();
        Ok(Self {
            argv: split(read("cmdline")?),
            env,
            cwd: std::fs::read_link(format!("/proc/{pid}/cwd")).map_err(|e| e.to_string())?,
        })
    }

    /// Starts the part again (in a process group of its own, as `make dev` does),
    /// with `overrides` in its environment; its output goes to `log`.
    pub fn start(
        &self,
        overrides: &[(&str, String)],
        log: &Path,
    ) -> Result<tokio::process::Child, String> {
        let out = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut command = tokio::process::Command::new("setsid");
        command
            .args(&self.argv)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(overrides.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(&self.cwd)
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        command
            .spawn()
            .map_err(|e| format!("restarting {:?}: {e}", self.argv))
    }
}

/// Whether something listens on `port` of 127.0.0.1.
pub fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}
