//! The OpenTelemetry export: a control plane configured with an `https://` `otlp_endpoint`,
//! the collector's CA (`otlp_certificate`) and `otlp_headers` pushes the fleet's metrics as
//! OTLP/HTTP JSON over TLS, with the headers, to a collector (here a small axum router behind
//! TLS that keeps what it gets), carrying the requests real agents served. What arrives is
//! decoded with OpenTelemetry's own types (`opentelemetry-proto`), as a collector would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, NumberDataPoint, metric, number_data_point,
};
use serde_json::Value;
use tern_e2e::{FLEET_TIMEOUT, Fleet, path_str, wait_for};
use tern_transport::pki::CertificateAuthority;
use tern_transport::tls::Identity;

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

/// A collector on a loopback port behind TLS (a certificate for `localhost` from its own
/// CA): an axum router that answers `POST /v1/metrics` (the OTLP metrics path) with 200 and
/// keeps each request; returns its port, its CA (PEM) and what it received.
fn collector() -> anyhow::Result<(u16, String, Received)> {
    let ca = CertificateAuthority::generate("test collector CA")?;
    let issued = ca.issue_server(&[])?;
    let tls =
        tern_transport::tls::https_server(Identity::from_pem(&issued.cert_pem, &issued.key_pem)?)?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
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
                tern_transport::https::serve(listener, tls, router, std::future::pending()).await;
            }
        })
    });
    Ok((port, ca.cert_pem().to_owned(), received))
}

/// The metric `name` of an export request, as OpenTelemetry's types read it.
fn metric<'a>(request: &'a ExportMetricsServiceRequest, name: &str) -> Option<&'a Metric> {
    request
        .resource_metrics
        .first()?
        .scope_metrics
        .first()?
        .metrics
        .iter()
        .find(|m| m.name == name)
}

/// Whether a point's attribute `key` is the string `value`.
fn labelled(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
    value: &str,
) -> bool {
    attributes.iter().any(|a| {
        a.key == key
            && a.value.as_ref().and_then(|v| v.value.as_ref())
                == Some(&any_value::Value::StringValue(value.to_owned()))
    })
}

/// The number point of a sum or gauge whose attribute `key` is `value`.
fn number<'a>(metric: &'a Metric, key: &str, value: &str) -> Option<&'a NumberDataPoint> {
    let points = match metric.data.as_ref()? {
        metric::Data::Sum(sum) => &sum.data_points,
        metric::Data::Gauge(gauge) => &gauge.data_points,
        _ => return None,
    };
    points.iter().find(|p| labelled(&p.attributes, key, value))
}

fn as_double(point: &NumberDataPoint) -> Option<f64> {
    match point.value? {
        number_data_point::Value::AsDouble(v) => Some(v),
        number_data_point::Value::AsInt(v) => Some(v as f64),
    }
}

#[test]
fn the_control_plane_pushes_fleet_metrics_to_an_otlp_collector_over_tls() -> anyhow::Result<()> {
    let (port, ca_pem, received) = collector()?;
    let ca_file = tempfile::NamedTempFile::new()?;
    std::fs::write(ca_file.path(), ca_pem)?;
    let ca_path = std::path::PathBuf::from(path_str(ca_file.path())?);
    let fleet = Fleet::start_tuned(1, &["--telemetry-interval", "1s"], move |config| {
        config.otlp_endpoint = Some(format!("https://localhost:{port}"));
        config.otlp_certificate = Some(ca_path);
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

    let request = wait_for(FLEET_TIMEOUT, "an export carrying the 5 requests", || {
        let all = received.lock().ok()?.clone();
        all.into_iter().rev().find_map(|(path, tenant, body)| {
            let request: ExportMetricsServiceRequest = serde_json::from_value(body).ok()?;
            let requests = metric(&request, "tern_fleet_pipeline_requests_total")?;
            let served = number(requests, "pipeline", "scores").and_then(as_double)?;
            let ours = tenant.as_deref() == Some("fleet 7");
            (path == "/v1/metrics" && ours && served == 5.0).then_some(request)
        })
    })?;
    let resource = request.resource_metrics[0]
        .resource
        .as_ref()
        .expect("a resource");
    assert!(labelled(
        &resource.attributes,
        "service.name",
        "tern-control-plane"
    ));
    let requests = metric(&request, "tern_fleet_pipeline_requests_total").expect("requests");
    let Some(metric::Data::Sum(sum)) = &requests.data else {
        panic!("requests are a sum: {requests:?}")
    };
    assert!(sum.is_monotonic);
    assert_eq!(
        sum.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    let point = number(requests, "pipeline", "scores").expect("a point");
    assert!(point.start_time_unix_nano > 0 && point.time_unix_nano >= point.start_time_unix_nano);

    let latency = metric(&request, "tern_fleet_pipeline_latency_seconds").expect("latency");
    let Some(metric::Data::Histogram(histogram)) = &latency.data else {
        panic!("latency is a histogram: {latency:?}")
    };
    let point = histogram
        .data_points
        .iter()
        .find(|p| labelled(&p.attributes, "pipeline", "scores"))
        .expect("the pipeline's histogram");
    assert_eq!(point.count, 5);
    assert_eq!(point.bucket_counts.len(), point.explicit_bounds.len() + 1);
    assert_eq!(point.bucket_counts.iter().sum::<u64>(), 5);
    assert!(point.explicit_bounds.windows(2).all(|w| w[0] < w[1]));

    let up = metric(&request, "tern_agent_up").expect("agent gauge");
    assert!(matches!(up.data, Some(metric::Data::Gauge(_))));
    assert_eq!(number(up, "agent", "edge-1").and_then(as_double), Some(1.0));
    Ok(())
}
