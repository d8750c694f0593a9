//! `clerk-sync check`: asks a daemon's `/readyz`, for orchestrators (Docker `HEALTHCHECK`,
//! Kubernetes exec probes). Needs no secret and no database settings.

use std::time::Duration;

/// The daemon's answer, or why there was none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// `/readyz` answered 200.
    Ready,
    /// `/readyz` answered something else; the reason it gave.
    NotReady(String),
    /// Nothing answered.
    Unreachable(String),
}

/// The URL of `/readyz` for a bind address: a wildcard host is asked on loopback.
pub fn readyz_url(bind: &str) -> String {
    let bind = bind.trim();
    if bind.starts_with("http://") || bind.starts_with("https://") {
        return format!("{}/readyz", bind.trim_end_matches('/'));
    }
    let address = match bind.rsplit_once(':') {
        Some(("0.0.0.0" | "" | "[::]" | "::", port)) => format!("127.0.0.1:{port}"),
        _ => bind.to_owned(),
    };
    format!("http://{address}/readyz")
}

/// Asks `url` once, within `timeout`.
pub async fn check(url: &str, timeout: Duration) -> Readiness {
    let client = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(c) => c,
        Err(e) => return Readiness::Unreachable(e.to_string()),
    };
    match client.get(url).send().await {
        Ok(response) if response.status().is_success() => Readiness::Ready,
        Ok(response) => {
            let status = response.status();
            let json: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
            let reason = json
                .get("reason")
                .and_then(|r| r.as_str())
                .unwrap_or("no reason given");
            Readiness::NotReady(format!("{status}: {reason}"))
        }
        Err(e) => Readiness::Unreachable(format!(
            "{url}: {}",
            if e.is_timeout() {
                "timed out".to_owned()
            } else {
                e.to_string()
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::readyz_url;

    #[test]
    fn wildcard_binds_are_probed_on_loopback() {
        assert_eq!(readyz_url("0.0.0.0:8080"), "http://127.0.0.1:8080/readyz");
        assert_eq!(readyz_url("127.0.0.1:9"), "http://127.0.0.1:9/readyz");
        assert_eq!(readyz_url("http://svc:8080/"), "http://svc:8080/readyz");
    }
}
