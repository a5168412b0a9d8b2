//! Deployments end to end: a control plane and agents on loopback, signed releases pushed,
//! a pipeline applied, agents fetching, verifying, loading and serving it.

use std::time::Duration;

use anyhow::Context as _;
use tern_e2e::{Agent, ControlPlane, Publisher, component, fast_config, http};
use tern_proto::api::AgentStatus;

const TIMEOUT: Duration = Duration::from_secs(60);

const TOPK: &str = r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: { name: scores }
spec:
  steps:
    - name: post
      plugin: topk:1
      config: { k: 2 }
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: { name: scores-everywhere }
spec:
  pipeline: scores
  rollout: { healthWindowSeconds: 0 }
"#;

#[test]
fn agents_fetch_verify_and_serve_a_pushed_pipeline() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let publisher = Publisher::generate(&cp, tmp.path())?;
    publisher.trust_init(&cp)?;
    let plugin = tmp.path().join("topk.wasm");
    std::fs::copy(component("topk"), &plugin)?;
    publisher.sign_and_push(&cp, &plugin, "plugin", "topk", 1)?;

    let mut agents = Vec::new();
    for name in ["edge-1", "edge-2"] {
        let token = cp.token("site=a", "10m")?;
        agents.push(Agent::join(&cp, tmp.path(), name, &token, "")?);
        cp.wait_status(name, AgentStatus::Ready, TIMEOUT)?;
    }
    let manifest = tmp.path().join("scores.yaml");
    cp.apply_manifest(&manifest, TOPK)?;

    let done = tern_e2e::wait_for(TIMEOUT, "the rollout to complete", || {
        cp.deployment("scores-everywhere")
            .ok()
            .filter(|d| d.rollout.as_ref().is_some_and(|r| r.phase == "Complete"))
    });
    let done = match done {
        Ok(d) => d,
        Err(e) => {
            let logs: Vec<String> = agents.iter().map(|a| a.process.log_text()).collect();
            anyhow::bail!("{e}\n{}\n{}", cp.log_text(), logs.join("\n"));
        }
    };
    let rollout = done.rollout.expect("rollout");
    assert!(
        !rollout.agents.is_empty() && rollout.agents.iter().all(|a| a.serving == Some(1)),
        "{rollout:?}"
    );
    // Each agent verified and stored the artifact under its digest.
    // Completion commits the revision: one more generation, which the agent applies.
    let view = cp.wait_applied("edge-1", TIMEOUT)?;
    assert_eq!(view.pipelines[0].serving, Some(1), "{view:?}");
    let stored = std::fs::read_dir(agents[0].dir.join("artifacts"))?.count();
    assert_eq!(stored, 2, "the artifact and the partial/ directory");

    // Local applications use it: the Open Inference Protocol and the raw endpoint.
    let api = agents[1].api_addr()?;
    let request = serde_json::json!({
        "id": "r1",
        "inputs": [{"name": "logits", "shape": [4], "datatype": "FP32", "data": [0.1, 3.0, 0.2, 2.0]}]
    });
    let (status, body) = http(
        api,
        "POST",
        "/v2/models/scores/infer",
        "application/json",
        request.to_string().as_bytes(),
    )?;
    let answer: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model_version"], "1");
    assert_eq!(answer["id"], "r1");
    // The plugin's JSON answer is a blob: the BYTES output `output`, with its media type.
    let output = &answer["outputs"][0];
    assert_eq!(output["datatype"], "BYTES", "{answer}");
    assert_eq!(output["parameters"]["content_type"], "application/json");
    let blob: serde_json::Value =
        serde_json::from_str(output["data"][0].as_str().unwrap_or_default())?;
    let top: Vec<u64> = blob["predictions"][0]
        .as_array()
        .map(|p| p.iter().filter_map(|x| x["index"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(top, [1, 3], "{answer}");
    // A blob where the plugin wants tensors: a 400 that names the step.
    let (status, body) = http(
        api,
        "POST",
        "/v1/pipelines/scores/infer",
        "text/plain",
        b"hi",
    )?;
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("step post"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _) = http(
        api,
        "POST",
        "/v1/pipelines/nothing/infer",
        "text/plain",
        b"hi",
    )?;
    assert_eq!(status, 404);
    let (status, _) = http(api, "GET", "/v2/health/ready", "text/plain", b"")?;
    assert_eq!(status, 200);
    let (status, body) = http(api, "GET", "/v2/models/scores", "text/plain", b"")?;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("\"post\""));
    Ok(())
}

/// Canary waves of 50 % with no health window: revision 1 rolls out at once.
const CANARY: &str = r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: { name: scores }
spec:
  steps:
    - name: post
      plugin: topk:1
      config: { k: 2 }
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: { name: scores-canary }
spec:
  pipeline: scores
  selector: { site: a }
  rollout:
    strategy: canary
    waves: [50, 100]
    healthWindowSeconds: 0
    maxErrorRate: 0.05
"#;

/// Revision 2 of [`CANARY`]: a plugin that panics on every request, under a health window far
/// longer than the test, so that wave 1 can only end by failing: the errors always arrive
/// before its window could pass.
fn trapping_canary() -> String {
    let manifest = CANARY
        .replace(
            "plugin: topk:1\n      config: { k: 2 }",
            "plugin: hostile:1\n      config: { mode: panic }",
        )
        .replace("healthWindowSeconds: 0", "healthWindowSeconds: 600");
    assert!(
        manifest.contains("hostile:1") && manifest.contains("healthWindowSeconds: 600"),
        "{manifest}"
    );
    manifest
}

fn logits_request() -> Vec<u8> {
    serde_json::json!({
        "inputs": [{"name": "logits", "shape": [3], "datatype": "FP32", "data": [0.5, 2.0, 1.0]}]
    })
    .to_string()
    .into_bytes()
}

#[test]
fn a_plugin_that_traps_in_canary_wave_one_is_rolled_back_and_wave_two_never_starts()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let publisher = Publisher::generate(&cp, tmp.path())?;
    publisher.trust_init(&cp)?;
    for (name, file) in [("topk", "topk"), ("hostile", "hostile-fixture")] {
        let path = tmp.path().join(format!("{name}.wasm"));
        std::fs::copy(component(file), &path)?;
        publisher.sign_and_push(&cp, &path, "plugin", name, 1)?;
    }
    let mut agents = Vec::new();
    for name in ["edge-1", "edge-2"] {
        let token = cp.token("site=a", "10m")?;
        agents.push(Agent::join(&cp, tmp.path(), name, &token, "")?);
        cp.wait_status(name, AgentStatus::Ready, TIMEOUT)?;
    }
    let manifest = tmp.path().join("canary.yaml");
    cp.apply_manifest(&manifest, CANARY)?;
    tern_e2e::wait_for(TIMEOUT, "revision 1 everywhere", || {
        cp.deployment("scores-canary")
            .ok()
            .filter(|d| d.rollout.as_ref().is_some_and(|r| r.phase == "Complete"))
    })?;

    // Revision 2 swaps in a plugin that panics on every request.
    cp.apply_manifest(&manifest, trapping_canary())?;
    let canary = tern_e2e::wait_for(TIMEOUT, "wave 1 to serve revision 2", || {
        let r = cp.deployment("scores-canary").ok()?.rollout?;
        let serving = r.agents.iter().find(|a| a.serving == Some(2))?;
        (r.target_revision == 2).then(|| serving.name.clone())
    })?;
    assert_eq!(
        canary, "edge-1",
        "the first wave is the first agent by name"
    );
    // No error has been reported yet, and the window holds wave 1: the rollout cannot move on.
    let waiting = cp.deployment("scores-canary")?.rollout.context("rollout")?;
    let edge_2 = waiting.agents.iter().find(|a| a.name == "edge-2");
    assert!(
        waiting.phase == "Progressing"
            && waiting.wave == 1
            && edge_2.is_some_and(|a| a.desired == Some(1) && a.serving == Some(1)),
        "{waiting:?}"
    );
    // One request, one error: whenever the health report carries it, it is 1 of 1.
    let api = agents[0].api_addr()?;
    let infer = || {
        http(
            api,
            "POST",
            "/v2/models/scores/infer",
            "application/json",
            &logits_request(),
        )
    };
    let (status, body) = infer()?;
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&body));

    let rolled = tern_e2e::wait_for(TIMEOUT, "the automatic rollback", || {
        cp.deployment("scores-canary").ok().filter(|d| {
            d.rollout
                .as_ref()
                .is_some_and(|r| r.target_revision == 2 && r.phase == "RolledBack")
        })
    })?;
    let rollout = rolled.rollout.context("rollout")?;
    let reason = rollout.reason.clone().unwrap_or_default();
    assert_eq!(
        reason,
        "agent edge-1 failed 1 of 1 requests on revision 2 (100% > 5%)"
    );
    // Rolled back in wave 1, for that reason; wave 2 never started.
    assert_eq!((rollout.wave, rollout.waves), (1, 2), "{rollout:?}");
    let history: Vec<String> = rollout
        .history
        .iter()
        .map(|(_, what)| what.clone())
        .collect();
    assert_eq!(
        history,
        [
            "wave 1 started: edge-1".to_owned(),
            format!("rolled back: {reason}")
        ]
    );
    // edge-1 goes back to revision 1 and answers again; edge-2 never left it.
    tern_e2e::wait_for(TIMEOUT, "edge-1 back on revision 1", || {
        let d = cp.deployment("scores-canary").ok()?;
        let agents = d.rollout?.agents;
        (!agents.is_empty() && agents.iter().all(|a| a.serving == Some(1))).then_some(())
    })?;
    let (status, body) = infer()?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // A rolled-back rollout is not committed: `rollout status` says why and exits 1.
    let out = cp.ternctl(&["rollout", "status", "scores-canary"]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    let why = format!("deployment \"scores-canary\" rolled back: {reason}");
    assert!(said.contains(&why), "{said}");
    let out = cp.ternctl(&["rollout", "status", "scores-canary", "--watch=false"]);
    let status_text = String::from_utf8_lossy(&out.stdout);
    assert!(status_text.contains("RolledBack"), "{status_text}");
    Ok(())
}

#[test]
fn a_warmup_sample_stops_a_broken_revision_before_it_takes_traffic() -> anyhow::Result<()> {
    let fleet = tern_e2e::Fleet::start(1)?;
    fleet.push(&fleet.topk("one", 0)?, 1)?;
    let hostile = fleet.tmp.path().join("hostile.wasm");
    std::fs::copy(component("hostile-fixture"), &hostile)?;
    fleet
        .publisher
        .sign_and_push(&fleet.cp, &hostile, "plugin", "hostile", 1)?;
    let manifest = |plugin: &str, config: &str| {
        format!(
            r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: {{ name: scores }}
spec:
  warmup:
    inputs: [{{ name: logits, shape: [3], datatype: FP32, data: [0.5, 2.0, 1.0] }}]
  steps:
    - name: post
      plugin: {plugin}
      config: {config}
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: {{ name: scores }}
spec:
  pipeline: scores
  rollout: {{ healthWindowSeconds: 0 }}
"#
        )
    };
    let file = fleet.tmp.path().join("warm.yaml");
    fleet
        .cp
        .apply_manifest(&file, manifest("topk:1", "{ k: 2 }"))?;
    fleet.wait_phase(1, "Complete")?;

    fleet
        .cp
        .apply_manifest(&file, manifest("hostile:1", "{ mode: panic }"))?;
    let reason = fleet.failure("edge-1", 2)?;
    assert!(reason.contains("warm-up failed: step post"), "{reason}");
    let rolled = fleet.wait_phase(2, "RolledBack")?;
    let rollout = rolled.rollout.expect("rollout");
    assert!(
        rollout
            .reason
            .unwrap_or_default()
            .contains("could not run revision 2")
    );
    assert_eq!(fleet.infer(0)?, 200, "revision 1 never stopped serving");
    Ok(())
}

#[test]
fn a_full_queue_answers_429_and_the_agent_keeps_serving() -> anyhow::Result<()> {
    // Each request spins until its 200 ms deadline: workers stay busy, and the queue fills.
    let fleet = hostile_fleet("{ timeoutMs: 200 }")?;
    let api = fleet.agents[0].api_addr()?;
    let requests: Vec<_> = (0..120)
        .map(|_| {
            std::thread::spawn(move || {
                http(
                    api,
                    "POST",
                    "/v1/pipelines/scores/infer",
                    "text/plain",
                    b"loop",
                )
                .map(|(status, _)| status)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for r in requests {
        statuses.push(r.join().map_err(|_| anyhow::anyhow!("client panicked"))??);
    }
    let busy = statuses.iter().filter(|&&s| s == 429).count();
    let timed_out = statuses.iter().filter(|&&s| s == 500).count();
    assert!(busy > 0, "{statuses:?}");
    assert!(timed_out > 0, "{statuses:?}");
    // Once the queue drains, a well-behaved request is answered.
    let (status, body) = http(
        api,
        "POST",
        "/v1/pipelines/scores/infer",
        "text/plain",
        b"echo",
    )?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"echo");
    Ok(())
}

/// A pipeline of the hostile fixture (mode from each request's text) with `limits`, serving.
fn hostile_fleet(limits: &str) -> anyhow::Result<tern_e2e::Fleet> {
    let fleet = tern_e2e::Fleet::start(1)?;
    let hostile = fleet.tmp.path().join("hostile.wasm");
    std::fs::copy(component("hostile-fixture"), &hostile)?;
    fleet
        .publisher
        .sign_and_push(&fleet.cp, &hostile, "plugin", "hostile", 1)?;
    let file = fleet.tmp.path().join("hostile.yaml");
    let step =
        format!("plugin: hostile:1\n      config: {{ mode: input }}\n      limits: {limits}");
    fleet.cp.apply_manifest(
        &file,
        tern_e2e::scores_manifest("mischief", &step, "{ healthWindowSeconds: 0 }"),
    )?;
    fleet.wait_serving("edge-1", 1)?;
    Ok(fleet)
}

#[test]
fn a_plugins_aliased_output_fails_its_step_and_the_agents_memory_stays_bounded()
-> anyhow::Result<()> {
    let fleet = hostile_fleet("{ timeoutMs: 5000, memoryMiB: 32 }")?;
    let api = fleet.agents[0].api_addr()?;
    let pid = fleet.agents[0].process.pid();
    let send = |text: &[u8]| {
        http(
            api,
            "POST",
            "/v1/pipelines/scores/infer",
            "text/plain",
            text,
        )
    };
    assert_eq!(send(b"echo")?.0, 200, "an instance is warm");
    let (resident, _) = tern_e2e::resident_memory(pid)?;
    // 4,096 lists aliasing one 1 MiB buffer: 4 GiB if the host copied it all.
    let (status, body) = send(b"alias")?;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("mischief") && body.contains("memory limit of 32 MiB exceeded by its output"),
        "{body}"
    );
    let (_, peak) = tern_e2e::resident_memory(pid)?;
    // The copy stops at the step's 32 MiB (wasmtime's default would let it reach 128 MiB).
    let margin = 48 << 20;
    assert!(
        peak < resident + (32 << 20) + margin,
        "peak {peak} bytes after the request, {resident} before"
    );
    let (status, body) = send(b"echo")?;
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"echo"[..]),
        "the next request is served"
    );
    Ok(())
}

#[test]
fn a_model_declaring_a_huge_tensor_is_refused_and_the_agent_keeps_serving() -> anyhow::Result<()> {
    let mut fleet = tern_e2e::Fleet::start(1)?;
    fleet.serve_topk()?;
    let model = fleet.tmp.path().join("huge.onnx");
    std::fs::write(&model, tern_e2e::assets::huge_tensor_model())?;
    fleet
        .publisher
        .sign_and_push(&fleet.cp, &model, "model", "huge", 1)?;
    let file = fleet.tmp.path().join("huge.yaml");
    fleet.cp.apply_manifest(
        &file,
        r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: { name: huge }
spec:
  steps:
    - name: classify
      model: huge:1
      device: cpu
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: { name: huge }
spec:
  pipeline: huge
  rollout: { healthWindowSeconds: 0 }
"#,
    )?;
    let reason = tern_e2e::wait_for(tern_e2e::FLEET_TIMEOUT, "the refusal of huge", || {
        let view = fleet.agent_view("edge-1").ok()?;
        view.pipelines
            .into_iter()
            .find(|p| p.name == "huge" && p.phase.as_deref() == Some("Failed"))
            .map(|p| p.message)
    })?;
    assert!(
        reason.contains("over the limit") && reason.contains("max_tensor_bytes"),
        "{reason}"
    );
    assert!(!fleet.agents[0].process.exited(), "the agent is alive");
    assert_eq!(fleet.infer(0)?, 200, "and still serves what it ran");
    Ok(())
}

/// The `scores` pipeline running `step`, in canary waves of 50 % with a health window long
/// enough that wave 1 holds for the whole test.
fn slow_canary(step: &str) -> String {
    tern_e2e::scores_manifest(
        "post",
        step,
        "{ strategy: canary, waves: [50, 100], healthWindowSeconds: 600, autoRollback: true }",
    )
}

#[test]
fn a_broken_revision_applied_during_the_canary_of_the_first_rolls_back_to_it() -> anyhow::Result<()>
{
    let fleet = tern_e2e::Fleet::start(2)?;
    fleet.push(&fleet.topk("one", 0)?, 1)?;
    let hostile = fleet.tmp.path().join("hostile.wasm");
    std::fs::copy(component("hostile-fixture"), &hostile)?;
    fleet
        .publisher
        .sign_and_push(&fleet.cp, &hostile, "plugin", "hostile", 1)?;
    let file = fleet.tmp.path().join("canary.yaml");
    // Revision 1, a new pipeline: its canary (edge-1) serves it, edge-2 waits for wave 2.
    fleet
        .cp
        .apply_manifest(&file, slow_canary("plugin: topk:1\n      config: { k: 2 }"))?;
    fleet.wait_serving("edge-1", 1)?;
    assert_eq!((fleet.infer(0)?, fleet.infer(1)?), (200, 404));
    // Revision 2 cannot even be configured, and is applied while revision 1 is in its window.
    fleet.cp.apply_manifest(
        &file,
        slow_canary("plugin: hostile:1\n      config: { mode: configure-fail }"),
    )?;
    fleet.wait_phase(2, "RolledBack")?;
    // The rollback returns edge-1 to what it served before revision 2: revision 1.
    fleet.wait_serving("edge-1", 1)?;
    assert_eq!(fleet.infer(0)?, 200, "the canary still serves revision 1");
    let view = fleet.agent_view("edge-1")?;
    let scores = view.pipelines.iter().find(|p| p.name == "scores");
    assert_eq!(scores.and_then(|p| p.desired), Some(1), "{view:?}");
    Ok(())
}

#[test]
fn a_request_naming_a_foreign_host_is_refused() -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let fleet = tern_e2e::Fleet::start(1)?;
    let api = fleet.agents[0].api_addr()?;
    let status = |host: &str| -> anyhow::Result<String> {
        let mut stream = std::net::TcpStream::connect(api)?;
        write!(
            stream,
            "GET /v2/health/live HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer.lines().next().unwrap_or_default().to_owned())
    };
    // What a browser sends after DNS rebinding: the attacker's name, our address.
    assert!(status("evil.example")?.contains("403"));
    assert!(status(&format!("evil.example:{}", api.port()))?.contains("403"));
    assert!(status(&format!("localhost:{}", api.port()))?.contains("200"));
    assert!(status(&api.to_string())?.contains("200"));
    Ok(())
}

#[test]
fn a_thousand_idle_connections_do_not_keep_a_real_request_out() -> anyhow::Result<()> {
    let fleet = tern_e2e::Fleet::start(1)?;
    fleet.serve_topk()?;
    let api = fleet.agents[0].api_addr()?;
    // Connections that say nothing, and one that sends half its headers.
    let idle: Vec<std::net::TcpStream> = (0..1000)
        .map(|_| std::net::TcpStream::connect(api))
        .collect::<Result<_, _>>()?;
    let mut slow = std::net::TcpStream::connect(api)?;
    std::io::Write::write_all(
        &mut slow,
        b"POST /v1/pipelines/scores/infer HTTP/1.1\r\nHost: localhost\r\n",
    )?;
    assert_eq!(fleet.infer(0)?, 200, "a real request is served");
    drop(idle);
    Ok(())
}
