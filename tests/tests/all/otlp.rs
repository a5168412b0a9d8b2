//! The OpenTelemetry export: a control plane configured with `otlp_endpoint` pushes the fleet's
//! metrics as OTLP/HTTP JSON to a collector (here a minimal HTTP receiver that keeps what it
//! gets), carrying the requests real agents served.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tern_e2e::{FLEET_TIMEOUT, Fleet, wait_for};

/// Requests received: (path, JSON body).
type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// Accepts POSTs on a loopback port, answers 200, and records each; returns the address.
fn collector() -> anyhow::Result<(String, Received)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let received: Received = Arc::default();
    let keep = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let (mut path, mut length) = (String::new(), 0usize);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                let header = line.trim_end().to_owned();
                line.clear();
                if header.is_empty() {
                    break;
                }
                if let Some(rest) = header.strip_prefix("POST ") {
                    path = rest.split(' ').next().unwrap_or_default().to_owned();
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            if let Ok(json) = serde_json::from_slice(&body) {
                keep.lock().expect("lock").push((path, json));
            }
            let mut stream = reader.into_inner();
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            );
        }
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
        all.into_iter().rev().find_map(|(path, body)| {
            let requests = metric(&body, "tern_pipeline_requests_total")?;
            let served = point(requests, "sum", "pipeline", "scores")?;
            (path == "/v1/metrics" && served["asDouble"] == 5.0).then_some(body)
        })
    })?;
    let resource = &body["resourceMetrics"][0]["resource"]["attributes"][0];
    assert_eq!(resource["value"]["stringValue"], "tern-control-plane");
    let requests = metric(&body, "tern_pipeline_requests_total").expect("requests");
    assert_eq!(requests["sum"]["isMonotonic"], true);
    let latency = metric(&body, "tern_pipeline_latency_seconds").expect("latency");
    let histogram = point(latency, "histogram", "pipeline", "scores").expect("histogram");
    assert_eq!(histogram["count"], "5");
    let up = metric(&body, "tern_agent_up").expect("agent gauge");
    assert_eq!(
        point(up, "gauge", "agent", "edge-1").expect("edge-1")["asDouble"],
        1.0
    );
    Ok(())
}
