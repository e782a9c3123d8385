//! Opens N PostgreSQL sessions to one address, runs `SELECT 1` on each (so every one is a real,
//! authenticated session), prints `ready N`, then holds them idle until stdin closes. Used by
//! `scripts/router-idle-bench.sh` to measure the router's memory per idle connection.
//!
//!   cargo run --release -p patrol-tests --example hold_connections -- \
//!       "host=127.0.0.1 port=5000 user=postgres password=postgres" 10000
use std::io::Read;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Semaphore;

const CONCURRENT_CONNECTS: usize = 64;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let conninfo = args.next().context("usage: hold_connections CONNINFO N")?;
    let n: usize = args
        .next()
        .context("usage: hold_connections CONNINFO N")?
        .parse()
        .context("N must be a number")?;
    let gate = Arc::new(Semaphore::new(CONCURRENT_CONNECTS));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (gate, conninfo) = (gate.clone(), conninfo.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire().await?;
            let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .context("connect")?;
            tokio::spawn(connection);
            // Simple protocol: a transaction-mode pooler keeps no prepared statements.
            let rows = client.simple_query("SELECT 1").await?;
            let one = rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            });
            anyhow::ensure!(one.as_deref() == Some("1"), "SELECT 1 returned {one:?}");
            anyhow::Ok(client)
        });
    }
    let mut clients = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        clients.push(r??);
    }
    println!("ready {}", clients.len());
    // Hold every session idle until the caller closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await?;
    let closed = clients.iter().filter(|c| c.is_closed()).count();
    println!("closed while idle {closed}");
    Ok(())
}
