//! The HTTP client the agent uses to ask other members' REST APIs (the leader race, the
//! checks of `POST /failover` and `/switchover`).

use std::time::Duration;

use crate::config::Config;

/// [`peer_client`] with a deadline of the caller's choice (the HA loop's race probes, the
/// duplicate-name check).
pub fn member_client(cfg: &Config, timeout: Duration) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .danger_accept_invalid_certs(true);
    let pair = match (&cfg.ctl.certfile, &cfg.ctl.keyfile) {
        (Some(c), k) => Some((c.clone(), k.clone().unwrap_or_else(|| c.clone()))),
        (None, _) => cfg.restapi.certfile.as_ref().map(|c| {
            (
                c.clone(),
                cfg.restapi.keyfile.clone().unwrap_or_else(|| c.clone()),
            )
        }),
    };
    if let Some((cert, key)) = pair {
        match (std::fs::read(&cert), std::fs::read(&key)) {
            (Ok(mut pem), Ok(k)) => {
                pem.push(b'\n');
                pem.extend_from_slice(&k);
                match reqwest::Identity::from_pem(&pem) {
                    Ok(id) => b = b.identity(id),
                    Err(e) => tracing::warn!(
                        "client certificate {} for member requests is unusable: {e}",
                        cert.display()
                    ),
                }
            }
            _ => tracing::warn!(
                "cannot read the client certificate {} / key {} for member requests",
                cert.display(),
                key.display()
            ),
        }
    }
    b.build().unwrap_or_else(|e| {
        tracing::warn!("REST API peer client: {e}; using defaults");
        reqwest::Client::new()
    })
}
