//! Real upstream MCP servers on loopback for the gateway's federation tests:
//! `@modelcontextprotocol/server-everything` from npm (2025-era, sessions,
//! SSE answers; `make setup` installs it into `tools/node`) and a header-echo
//! server built with the official Python SDK (2026-07-28, stateless). Each is
//! a child process killed when its handle is dropped.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{python, workspace_root};

pub struct Upstream {
    pub port: u16,
    child: Option<Child>,
}

impl Upstream {
    /// `server-everything` in its Streamable HTTP mode.
    pub fn everything() -> Self {
        let script = workspace_root()
            .join("tools/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
        assert!(
            script.exists(),
            "{} is missing: run `make setup` (npm ci into tools/node)",
            script.display()
        );
        let port = free_port();
        let mut command = Command::new("node");
        command
            .arg(script)
            .arg("streamableHttp")
            .env("PORT", port.to_string());
        Self::spawn(command, port, "server-everything")
    }

    /// The header-echo server (`tests/integration/mcp_header_echo.py`).
    pub fn header_echo() -> Self {
        let port = free_port();
        let mut command = Command::new(python());
        command
            .arg(workspace_root().join("tests/integration/mcp_header_echo.py"))
            .arg(port.to_string());
        Self::spawn(command, port, "mcp_header_echo.py")
    }

    fn spawn(mut command: Command, port: u16, what: &str) -> Self {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("starting {what}: {error}"));
        let upstream = Self {
            port,
            child: Some(child),
        };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{what} did not listen on 127.0.0.1:{port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        upstream
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// Kills the server now (the outage the tests inject).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// Serves api-mcp over real HTTP on a free loopback port, the way API Gateway
/// would pass requests on, so real MCP clients (the Python SDK) can call it.
/// The server stops when the returned handle is aborted or dropped with the
/// runtime.
pub async fn serve_mcp_over_http(
    deps: std::sync::Arc<api_mcp::handler::Deps>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let deps = deps.clone();
        async move {
            let lambda_request = crate::lambda_request_from(request).await;
            let response = api_mcp::handler::handle(&deps, lambda_request).await;
            let (parts, body) = response.into_parts();
            let bytes = match body {
                lambda_http::Body::Empty => Vec::new(),
                lambda_http::Body::Text(text) => text.into_bytes(),
                lambda_http::Body::Binary(bytes) => bytes,
                _ => Vec::new(),
            };
            axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}
