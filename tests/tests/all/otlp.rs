//! The OpenTelemetry export: a control plane configured with `otlp_endpoint` and `otlp_headers`
//! pushes the fleet's metrics as OTLP/HTTP JSON, with the headers, to a collector (here a
//! small axum router that keeps what it gets), carrying the requests real agents served.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use serde_json::Value;
use tern_e2e::{FLEET_TIMEOUT, Fleet, wait_for};

/// Requests received: (path, the `x-tenant` header, JSON body).
type Received = Arc<Mutex<Vec<(String, Option<String>, Value)>>>;

/// Keeps an OTLP/HTTP JSON export request; what is not JSON is refused (400).
async fn record(
    State(received): State<Received>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<&'static str, axum::http::StatusCode> {
    let json = serde_json::from_slice(&body).map_err(|_| axum::http::StatusCode::BAD_REQUEST)?;
    let tenant = headers
        .get("x-tenant")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    received
        .lock()
        .map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?
        .push((uri.path().to_owned(), tenant, json));
    Ok("{}")
}

/// A collector on a loopback port: an axum router that answers `POST /v1/metrics` (the OTLP
/// metrics path) with 200 and keeps each request; returns its address.
fn collector() -> anyhow::Result<(String, Received)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?.to_string();
    let received: Received = Arc::default();
    let router = Router::new()
        .route("/v1/metrics", post(record))
        .with_state(received.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                let _ = axum::serve(listener, router).await;
            }
        })
    });
    Ok((addr, received))
}

/// The metric `name` of an export request.
fn metric<'a>(body: &'a Value, name: &str) -> Option<&'a Value> {
    body["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
}

/// The data point of `metric` whose attribute `key` is `value`.
fn point<'a>(metric: &'a Value, kind: &str, key: &str, value: &str) -> Option<&'a Value> {
    metric[kind]["dataPoints"].as_array()?.iter().find(|p| {
        p["attributes"].as_array().is_some_and(|attributes| {
            attributes
                .iter()
                .any(|a| a["key"] == key && a["value"]["stringValue"] == value)
        })
    })
}

#[test]
fn the_control_plane_pushes_fleet_metrics_to_an_otlp_collector() -> anyhow::Result<()> {
    let (addr, received) = collector()?;
    let fleet = Fleet::start_tuned(1, &["--telemetry-interval", "1s"], |config| {
        config.otlp_endpoint = Some(format!("http://{addr}"));
        config.otlp_interval = Duration::from_secs(1);
        config.otlp_headers = [("x-tenant".to_owned(), "fleet 7".to_owned())].into();
    })?;
    let topk = fleet.topk("otlp", 0)?;
    fleet.push(&topk, 1)?;
    fleet.apply("topk:1", 2)?;
    fleet.wait_serving("edge-1", 1)?;
    for _ in 0..5 {
        anyhow::ensure!(fleet.infer(0)? == 200, "request failed");
    }

    let body = wait_for(FLEET_TIMEOUT, "an export carrying the 5 requests", || {
        let all = received.lock().ok()?.clone();
        all.into_iter().rev().find_map(|(path, tenant, body)| {
            let requests = metric(&body, "tern_fleet_pipeline_requests_total")?;
            let served = point(requests, "sum", "pipeline", "scores")?;
            let ours = tenant.as_deref() == Some("fleet 7");
            (path == "/v1/metrics" && ours && served["asDouble"] == 5.0).then_some(body)
        })
    })?;
    let resource = &body["resourceMetrics"][0]["resource"]["attributes"][0];
    assert_eq!(resource["value"]["stringValue"], "tern-control-plane");
    let requests = metric(&body, "tern_fleet_pipeline_requests_total").expect("requests");
    assert_eq!(requests["sum"]["isMonotonic"], true);
    let latency = metric(&body, "tern_fleet_pipeline_latency_seconds").expect("latency");
    let histogram = point(latency, "histogram", "pipeline", "scores").expect("histogram");
    assert_eq!(histogram["count"], "5");
    let up = metric(&body, "tern_agent_up").expect("agent gauge");
    assert_eq!(
        point(up, "gauge", "agent", "edge-1").expect("edge-1")["asDouble"],
        1.0
    );
    Ok(())
}
