//! The dashboard in a real browser: headless Chromium opens the link `ternctl dashboard`
//! prints, against a real control plane with agents serving traffic, waits for the agent rows
//! and the charts, and saves a screenshot. Skipped when no Chromium is installed, unless
//! `TERN_REQUIRE_BROWSER=1` (CI installs Debian's `chromium` and sets it).

use std::path::{Path, PathBuf};
use std::process::Command;

use tern_e2e::{FLEET_TIMEOUT, Fleet, wait_for};

/// Chromium: `TERN_CHROMIUM`, or the first of the usual names on `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TERN_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Runs headless Chromium on `url` with `args` (a fresh profile under `profile`), letting the
/// page's scripts run for 20 s of virtual time; returns stdout.
fn headless(browser: &Path, profile: &Path, url: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--ignore-certificate-errors",
            "--virtual-time-budget=20000",
            "--window-size=1400,1300",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .env("XDG_RUNTIME_DIR", profile)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn the_dashboard_shows_the_fleet_and_charts_in_a_browser() -> anyhow::Result<()> {
    let Some(browser) = chromium() else {
        tern_skips::skip_unless_required("TERN_REQUIRE_BROWSER", "no chromium was found");
        return Ok(());
    };
    let fleet = Fleet::start_with(2, &["--telemetry-interval", "1s"])?;
    let topk = fleet.topk("dashboard", 0)?;
    fleet.push(&topk, 1)?;
    fleet.apply("topk:1", 2)?;
    fleet.wait_deployment("scores", 1, "Complete")?;
    for i in 0..40 {
        anyhow::ensure!(fleet.infer(i % 2)? == 200, "request failed");
    }
    // The charts draw what the control plane stored.
    wait_for(FLEET_TIMEOUT, "the requests in the time series", || {
        let text = fleet
            .cp
            .admin_get("/v1/series/pipelines/scores?window=600&step=10")
            .ok()?;
        let series: tern_proto::api::PipelineSeries = serde_json::from_str(&text).ok()?;
        (series.points.iter().map(|p| p.requests).sum::<u64>() == 40).then_some(())
    })?;

    // The page itself holds no data and needs no credential; the API still does.
    let page = fleet.cp.ternctl_ok(&["dashboard"])?;
    let url = page.trim().to_owned();
    assert!(
        url.starts_with("https://") && url.contains("/#token="),
        "{url}"
    );
    let without_token = url.split('#').next().unwrap_or_default().to_owned();

    let profile = tempfile::tempdir()?;
    let dom = headless(&browser, profile.path(), &url, &["--dump-dom"])?;
    for needle in [
        r#"data-loaded="true""#,
        r#"data-agent="edge-1""#,
        r#"data-agent="edge-2""#,
        r#"data-deployment="scores""#,
        r#"data-chart="requests/s""#,
        r#"data-chart="p99 latency""#,
    ] {
        assert!(
            dom.contains(needle),
            "{needle} missing from the page:\n{dom}"
        );
    }
    assert!(dom.contains("2/2 agents ready"), "{dom}");

    // Without the token the page asks for it and shows no fleet.
    let anonymous = tempfile::tempdir()?;
    let dom = headless(&browser, anonymous.path(), &without_token, &["--dump-dom"])?;
    assert!(!dom.contains(r#"data-agent="edge-1""#), "{dom}");
    assert!(dom.contains("Paste the admin token"), "{dom}");

    // Kept under the target directory for people to look at.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let again = tempfile::tempdir()?;
    headless(
        &browser,
        again.path(),
        &url,
        &[&format!("--screenshot={}", shot.display())],
    )?;
    let png = std::fs::read(&shot)?;
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    eprintln!("dashboard screenshot: {}", shot.display());
    Ok(())
}
