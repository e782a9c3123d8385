//! The thin IO layer of `patrolctl`: REST calls to members' `api_url` (Basic auth, TLS
//! options) and click-style prompts on the terminal.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use patrol_dcs::Member;
use serde_json::Value;

/// How to talk to members' REST APIs (`ctl` section, falling back to `restapi`).
#[derive(Clone, Default)]
pub struct RestSettings {
    pub username: Option<String>,
    pub password: Option<String>,
    pub insecure: bool,
    pub cacert: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
}

impl std::fmt::Debug for RestSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestSettings")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("insecure", &self.insecure)
            .field("cacert", &self.cacert)
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .finish()
    }
}

/// A REST client for members' APIs.
pub struct RestClient {
    http: reqwest::Client,
    settings: RestSettings,
}

/// A member's answer: status code and body text.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl RestClient {
    pub fn new(settings: RestSettings) -> anyhow::Result<RestClient> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(format!("Patroni/{} patrolctl", patrol_dcs::PATRONI_VERSION));
        if settings.insecure {
            b = b.danger_accept_invalid_certs(true);
        }
        if let Some(ca) = &settings.cacert {
            let pem =
                std::fs::read(ca).map_err(|e| anyhow::anyhow!("reading {}: {e}", ca.display()))?;
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        if let Some(cert) = &settings.certfile {
            let mut pem = std::fs::read(cert)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", cert.display()))?;
            if let Some(key) = &settings.keyfile {
                pem.extend(
                    std::fs::read(key)
                        .map_err(|e| anyhow::anyhow!("reading {}: {e}", key.display()))?,
                );
            }
            b = b.identity(reqwest::Identity::from_pem(&pem)?);
        }
        Ok(RestClient {
            http: b.build()?,
            settings,
        })
    }

    /// Patroni's `PatroniRequest._get_url`: the member's api_url with its path replaced by
    /// `endpoint` (or the api_url itself without one).
    pub fn url(api_url: &str, endpoint: Option<&str>) -> String {
        let Some(ep) = endpoint else {
            return api_url.to_string();
        };
        match api_url.split_once("://") {
            Some((scheme, rest)) => {
                let netloc = rest.split(['/', '?', '#']).next().unwrap_or(rest);
                format!("{scheme}://{netloc}/{}", ep.trim_start_matches('/'))
            }
            None => format!("{}/{}", api_url.trim_end_matches('/'), ep),
        }
    }

    /// One request to a member: `method` on `endpoint` (None: the api_url itself) with an
    /// optional JSON body. Transport errors are `Err`; any HTTP status is `Ok`.
    pub async fn request(
        &self,
        member: &Member,
        method: &str,
        endpoint: Option<&str>,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Response, reqwest::Error> {
        self.request_url(&member.data.api_url, method, endpoint, body, timeout)
            .await
    }

    pub async fn request_url(
        &self,
        api_url: &str,
        method: &str,
        endpoint: Option<&str>,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Response, reqwest::Error> {
        let url = Self::url(api_url, endpoint);
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .unwrap_or(reqwest::Method::GET);
        let mut req = self.http.request(method, &url);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some(u) = &self.settings.username {
            req = req.basic_auth(u, self.settings.password.as_ref());
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(super::pyfmt::json_dumps(b));
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.text().await?;
        Ok(Response { status, body })
    }
}

/// An error with its chain of causes (`reqwest` keeps the interesting part, e.g. "Connection
/// refused", in the sources).
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The user aborted a prompt (end of input): click prints `Aborted!` and exits 1.
#[derive(Debug, thiserror::Error)]
#[error("Aborted!")]
pub struct Aborted;

fn read_line() -> Result<String, Aborted> {
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => Err(Aborted),
        Ok(_) => Ok(line.trim_end_matches(['\n', '\r']).to_string()),
    }
}

fn show(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// `click.prompt(text, default=...)`: `text [default]: `; an empty answer takes the default,
/// without a default the question is repeated.
pub fn prompt(text: &str, default: Option<&str>) -> Result<String, Aborted> {
    loop {
        match default {
            Some(d) => show(&format!("{text} [{d}]: ")),
            None => show(&format!("{text}: ")),
        }
        let answer = read_line()?;
        if !answer.is_empty() {
            return Ok(answer);
        }
        if let Some(d) = default {
            return Ok(d.to_string());
        }
    }
}

/// `click.confirm(text)`: `text [y/N]: `; y/yes or n/no, empty is no.
pub fn confirm(text: &str) -> Result<bool, Aborted> {
    loop {
        show(&format!("{text} [y/N]: "));
        let answer = read_line()?.trim().to_lowercase();
        match answer.as_str() {
            "y" | "yes" => return Ok(true),
            "n" | "no" | "" => return Ok(false),
            _ => show("Error: invalid input\n"),
        }
    }
}

/// `click.prompt(text, hide_input=True)`: the answer is not echoed on a terminal.
pub fn prompt_password(text: &str) -> Result<String, Aborted> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    show(&format!("{text}: "));
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
    }
    let answer = read_line();
    if let Some(t) = &saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, t);
        show("\n");
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_like_patroni_request() {
        assert_eq!(
            RestClient::url("http://10.0.0.1:8008/patroni", Some("switchover")),
            "http://10.0.0.1:8008/switchover"
        );
        assert_eq!(
            RestClient::url("https://[::1]:8008/patroni", Some("config")),
            "https://[::1]:8008/config"
        );
        assert_eq!(
            RestClient::url("http://h:8008/patroni", None),
            "http://h:8008/patroni"
        );
    }
}
