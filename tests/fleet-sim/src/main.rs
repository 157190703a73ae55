//! `fleet-sim`: one simulated GH200 inference server on 127.0.0.1.
//! Run several on different ports to act as a fleet. Controls: see the crate docs
//! (`/_sim/*` routes) and tests/fleet-sim/README.md.

use std::net::{IpAddr, SocketAddr};

use clap::Parser;
use fleet_sim::{Behaviour, start};

#[derive(Debug, Parser)]
#[command(about = "OpenAI-compatible inference server simulator with fault injection")]
struct Args {
    /// Address to listen on. Loopback by default: the simulator has no auth on its controls.
    #[arg(long, default_value = "127.0.0.1", env = "FLEET_SIM_HOST")]
    host: IpAddr,
    /// Port to listen on (0 picks a free one and prints it).
    #[arg(long, default_value_t = 8101, env = "FLEET_SIM_PORT")]
    port: u16,
    /// Name shown in the start-up line.
    #[arg(long, default_value = "fleet-sim")]
    name: String,
    /// Bearer token the inference routes require (repeatable; none: no auth).
    #[arg(long = "token", env = "FLEET_SIM_TOKEN")]
    tokens: Vec<String>,
    /// Latency added to every inference answer, in ms.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Time to first token of streams, in ms.
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,
    /// Streamed tokens per second (0: unpaced).
    #[arg(long, default_value_t = 0)]
    tokens_per_sec: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let server = start(SocketAddr::new(args.host, args.port)).await?;
    server
        .sim
        .set_behaviour(Behaviour {
            latency_ms: args.latency_ms,
            ttft_ms: args.ttft_ms,
            tokens_per_sec: args.tokens_per_sec,
            ..Behaviour::default()
        })
        .await;
    server.sim.set_tokens(args.tokens).await;
    println!(
        "{} listening on {} (controls: {}/_sim/state)",
        args.name,
        server.base_url(),
        server.base_url()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    server.stop().await;
    Ok(())
}
