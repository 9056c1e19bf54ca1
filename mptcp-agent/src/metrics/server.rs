//! The metrics endpoint: HTTP/1 on tokio, `GET /metrics` and nothing else. Each scrape gathers
//! its families on the blocking pool (a scrape reads whole tables), so the task that serves never
//! delays the others on its runtime.

use std::{error::Error, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch};

use super::{Families, ListenAddr, MetricsError, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};
use crate::{
    report::Chain,
    stop::{pause, stopped},
};

/// A client that sends no complete request head within this is disconnected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the endpoint; a start-up error (an address in use, one not on this host) names it.
pub async fn bind(addr: ListenAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr.0).await.map_err(|source| MetricsError::Bind { addr: addr.0, source })
}

/// What a scrape gathers; called on the blocking pool.
pub type Scrape = dyn Fn() -> Result<Families, MetricsError> + Send + Sync;
/// Where run-time failures go (a failed scrape, accept or connection): counted and logged by the
/// caller's policy, never fatal.
pub type Failure = dyn Fn(&str, &(dyn Error + 'static)) + Send + Sync;

/// Serves until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    scrape: Arc<Scrape>,
    failure: Arc<Failure>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // Out of descriptors, say: wait a little rather than spin.
                failure("accepting a metrics connection", &error);
                if !pause(&mut stop, Duration::from_millis(100)).await {
                    return;
                }
                continue;
            }
        };
        let scrape = scrape.clone();
        let failure = failure.clone();
        tokio::spawn(async move {
            let service = service_fn(|request| respond(request, scrape.clone(), failure.clone()));
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                failure("a metrics connection", &error);
            }
        });
    }
}

async fn respond(
    request: Request<Incoming>,
    scrape: Arc<Scrape>,
    failure: Arc<Failure>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    if request.uri().path() != "/metrics" {
        return Ok(plain(StatusCode::NOT_FOUND, "not found: the metrics are at /metrics\n".into()));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into()));
    }
    let openmetrics = wants_openmetrics(request.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let encoded = tokio::task::spawn_blocking(move || {
        let families = scrape()?;
        if openmetrics { families.openmetrics() } else { families.prometheus_text() }
    })
    .await
    .map_err(|error| -> Box<dyn Error> { Box::new(error) })
    .and_then(|encoded| encoded.map_err(|error| -> Box<dyn Error> { Box::new(error) }));
    let body = match encoded {
        Ok(body) => body,
        Err(error) => {
            failure("a metrics scrape", error.as_ref());
            return Ok(plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{}\n", Chain(error.as_ref()))));
        }
    };
    let content_type = if openmetrics { OPENMETRICS_CONTENT_TYPE } else { TEXT_CONTENT_TYPE };
    Ok(response(StatusCode::OK, content_type, body))
}

/// OpenMetrics unless the client asks for `text/plain` and not for OpenMetrics (promtool's
/// linter reads only the Prometheus text format).
fn wants_openmetrics(accept: Option<&str>) -> bool {
    match accept {
        Some(accept) => accept.contains("application/openmetrics-text") || !accept.contains("text/plain"),
        None => true,
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body)
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_gets_openmetrics_and_promtool_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(wants_openmetrics(None));
        assert!(wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain")));
    }
}
