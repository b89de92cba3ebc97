//! A tiny HTTP/1.0 GET against the monitoring port, so the harness needs no HTTP
//! client (and no NATS client).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{HarnessError, HarnessErrorKind};

/// Status code and body of `GET path` on `127.0.0.1:port`.
pub(crate) async fn get(port: u16, path: &str) -> Result<(u16, String), HarnessError> {
    let fut = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|e| HarnessError::with_source(HarnessErrorKind::Monitoring, path, e))?
        .map_err(|e| HarnessError::with_source(HarnessErrorKind::Monitoring, path, e))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| {
            HarnessError::new(
                HarnessErrorKind::Monitoring,
                format!("malformed HTTP response to {path}"),
            )
        })?;
    Ok((status, body.to_string()))
}

/// GET `path` and parse the body as JSON (requires status 200).
pub(crate) async fn get_json(port: u16, path: &str) -> Result<serde_json::Value, HarnessError> {
    let (status, body) = get(port, path).await?;
    if status != 200 {
        return Err(HarnessError::new(
            HarnessErrorKind::Monitoring,
            format!("{path} answered {status}: {body}"),
        ));
    }
    serde_json::from_str(&body)
        .map_err(|e| HarnessError::with_source(HarnessErrorKind::Monitoring, path, e))
}
