// The fleet dashboard. Every number comes from the admin API with the admin token as a bearer
// credential; the token arrives once in the link's fragment (#token=..., never sent to a server)
// or the sign-in form, and lives in this tab's sessionStorage. Text from agents is only ever
// set with textContent.
"use strict";

const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";

function token() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem("tern-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem("tern-token");
}

class Unauthorized extends Error {}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok) throw new Error(path + ": " + response.status);
  return response.json();
}

// Optional data (a pipeline without monitoring has no drift): null instead of an error.
async function maybe(path) {
  try { return await api(path); } catch (e) { if (e instanceof Unauthorized) throw e; return null; }
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const bytes = (n) => {
  if (!n) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
};
const ms = (v) => (v >= 100 ? v.toFixed(0) : v.toFixed(2)) + " ms";
const rate = (v) => (v >= 10 ? v.toFixed(0) : v.toFixed(2));
const ago = (ms) => {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 120 ? s + "s ago" : s < 7200 ? Math.round(s / 60) + "m ago" : Math.round(s / 3600) + "h ago";
};

// A line chart of `values` over `times`, with its maximum and the time span as labels.
function lineChart(label, times, values, format) {
  const width = 400, height = 120, pad = 18;
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, "data-chart": label });
  const max = Math.max(...values, 0) || 1;
  const t0 = times[0] || 0, t1 = times[times.length - 1] || 1;
  const x = (t) => pad + ((t - t0) / Math.max(t1 - t0, 1)) * (width - 2 * pad);
  const y = (v) => height - pad - (v / max) * (height - 2 * pad);
  const points = values.map((v, i) => `${x(times[i]).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  chart.append(svg("line", { x1: pad, y1: height - pad, x2: width - pad, y2: height - pad, stroke: "#d9dde5" }));
  chart.append(svg("polyline", { points: values.length === 1 ? `${pad},${y(values[0])} ${width - pad},${y(values[0])}` : points }));
  chart.append(svg("text", { x: pad, y: 12 }, `${label} (max ${format(max)})`));
  if (times.length) {
    chart.append(svg("text", { x: pad, y: height - 4 }, new Date(t0).toLocaleTimeString()));
    chart.append(svg("text", { x: width - pad, y: height - 4, "text-anchor": "end" }, new Date(t1).toLocaleTimeString()));
  }
  return chart;
}

// Horizontal bars of PSI per feature, with the alert threshold as a dashed line.
function psiBars(features, threshold) {
  const rows = features.filter((f) => f.psi !== null && f.psi !== undefined);
  const width = 420, row = 14, left = 150, height = Math.max(rows.length * row + 20, 40);
  const chart = svg("svg", { class: "chart bars", viewBox: `0 0 ${width} ${height}`, "data-chart": "psi" });
  // The style policy allows no inline styles: the height goes through the CSSOM.
  chart.style.height = height + "px";
  const max = Math.max(threshold * 1.5, ...rows.map((f) => f.psi));
  const scale = (v) => (v / max) * (width - left - 40);
  rows.forEach((f, i) => {
    const y = 6 + i * row;
    chart.append(svg("text", { x: left - 6, y: y + 10, "text-anchor": "end" }, f.feature));
    chart.append(svg("rect", { class: f.psi > threshold ? "bar over" : "bar", x: left, y, width: Math.max(scale(f.psi), 1), height: row - 3 }));
    chart.append(svg("text", { x: left + scale(f.psi) + 4, y: y + 10 }, f.psi.toFixed(3)));
  });
  const tx = left + scale(threshold);
  chart.append(svg("line", { class: "threshold", x1: tx, y1: 0, x2: tx, y2: height }));
  if (!rows.length) chart.append(svg("text", { x: 8, y: 20 }, "no feature has enough values in the window yet"));
  return chart;
}

function renderSummary(agents, deployments, alerts) {
  const ready = agents.filter((a) => a.status === "Ready").length;
  const firing = alerts.filter((a) => a.state === "firing").length;
  const summary = document.getElementById("summary");
  summary.replaceChildren(
    el("span", {}, `${ready}/${agents.length} agents ready`),
    el("span", {}, `${deployments.length} deployments`),
    el("span", { class: firing ? "bad" : "ok" }, `${firing} alerts firing`),
  );
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

function renderAgents(agents, top) {
  const byName = new Map(top.map((t) => [t.name, t]));
  const body = document.querySelector("#agents tbody");
  body.replaceChildren(...agents.map((a) => {
    const t = byName.get(a.name) || {};
    const labels = el("td", {});
    for (const [k, v] of Object.entries(a.labels || {})) labels.append(el("span", { class: "label" }, `${k}=${v}`));
    const gpus = (t.gpus || a.gpus || []).map((g, i) => {
      const busy = (t.gpu_busy_percent || [])[i];
      return busy === null || busy === undefined ? g : `${g} (${busy.toFixed(0)}%)`;
    }).join(", ") || "-";
    const memory = t.memory_total_bytes ? `${bytes(t.memory_used_bytes)} / ${bytes(t.memory_total_bytes)}` : bytes(a.capacity.memory_bytes);
    return el("tr", { "data-agent": a.name },
      el("td", {}, a.name),
      el("td", { class: a.status === "Ready" ? "ok" : "bad" }, a.status),
      labels,
      el("td", {}, a.version),
      el("td", {}, t.reported_ms ? t.cpu_percent.toFixed(0) + "%" : "-"),
      el("td", {}, memory),
      el("td", {}, bytes(t.disk_free_bytes || a.capacity.disk_free_bytes)),
      el("td", {}, bytes(t.cache_bytes)),
      el("td", {}, gpus),
      el("td", {}, t.rps !== undefined ? rate(t.rps) : "-"),
      el("td", {}, t.p99_ms ? ms(t.p99_ms) : "-"),
      el("td", {}, t.buffered_bytes ? bytes(t.buffered_bytes) : "-"),
    );
  }));
}

function renderDeployments(deployments) {
  const box = document.getElementById("deployments");
  if (!deployments.length) return box.replaceChildren(el("p", { class: "muted" }, "No deployments."));
  box.replaceChildren(el("div", { class: "grid" }, ...deployments.map((d) => {
    const r = d.rollout;
    const card = el("div", { class: "card", "data-deployment": d.name },
      el("h3", {}, `${d.name} → ${d.pipeline}`),
      el("div", { class: "muted" }, `${d.strategy}` + (r ? `, revision ${r.target_revision}: ${r.phase}` : "")));
    if (r) {
      const waves = el("div", { class: "waves" });
      for (let i = 1; i <= r.waves; i++) {
        const failed = r.phase === "RolledBack" || r.phase === "Failed";
        const cls = i < r.wave || r.phase === "Complete" ? "done" : i === r.wave ? (failed ? "failed" : "current") : "";
        waves.append(el("div", { class: `wave ${cls}`, title: `wave ${i}` }));
      }
      card.append(waves, el("div", { class: "muted" }, `wave ${r.wave}/${r.waves}, ${r.agents.length} agents`));
      if (r.reason) card.append(el("div", { class: "bad" }, r.reason));
    }
    return card;
  })));
}

async function renderPipelines(pipelines) {
  const box = document.getElementById("pipelines");
  if (!pipelines.length) return box.replaceChildren(el("p", { class: "muted" }, "No pipelines."));
  const cards = await Promise.all(pipelines.map(async (p) => {
    const series = await maybe(`/v1/series/pipelines/${encodeURIComponent(p.name)}?window=3600&step=10`);
    const points = (series && series.points) || [];
    const times = points.map((x) => x.t_ms);
    const card = el("div", { class: "card", "data-pipeline": p.name },
      el("h3", {}, `${p.name} (revision ${p.revision})`));
    if (!points.length) {
      card.append(el("p", { class: "muted" }, "No traffic in the last hour."));
    } else {
      card.append(
        lineChart("requests/s", times, points.map((x) => x.rps), rate),
        lineChart("p99 latency", times, points.map((x) => x.p99_ms), ms),
      );
    }
    return card;
  }));
  box.replaceChildren(el("div", { class: "grid" }, ...cards));
}

async function renderDrift(pipelines) {
  const box = document.getElementById("drift");
  const found = (await Promise.all(pipelines.map((p) => maybe(`/v1/drift/${encodeURIComponent(p.name)}`)))).filter(Boolean);
  if (!found.length) return box.replaceChildren(el("p", { class: "muted" }, "No pipeline has `monitoring`."));
  box.replaceChildren(el("div", { class: "grid" }, ...found.map((d) => el("div", { class: "card", "data-drift": d.pipeline },
    el("h3", {}, `${d.pipeline}: PSI per feature, fleet-wide`),
    el("div", { class: "muted" }, `baseline ${d.baseline || "none"}, alert above ${d.alert_psi}, last ${d.window_seconds}s`),
    psiBars(d.features, d.alert_psi),
  ))));
}

function renderAlerts(alerts) {
  const box = document.getElementById("alerts");
  if (!alerts.length) return box.replaceChildren(el("p", { class: "muted" }, "No alerts."));
  const head = el("tr", {}, ...["State", "Pipeline", "Scope", "Feature", "PSI", "Threshold", "Since"].map((h) => el("th", {}, h)));
  const rows = alerts.map((a) => el("tr", { "data-alert": `${a.pipeline}/${a.scope}/${a.feature}` },
    el("td", { class: a.state === "firing" ? "bad" : "muted" }, a.state),
    el("td", {}, `${a.pipeline} (rev ${a.revision})`),
    el("td", {}, a.scope),
    el("td", {}, a.feature),
    el("td", {}, a.psi.toFixed(3)),
    el("td", {}, a.threshold.toFixed(2)),
    el("td", {}, ago(a.since_ms)),
  ));
  box.replaceChildren(el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
}

function showLogin(message) {
  document.getElementById("main").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
}

async function refresh() {
  try {
    const [agents, top, deployments, pipelines, alerts] = await Promise.all([
      api("/v1/agents"), api("/v1/top/agents"), api("/v1/deployments"), api("/v1/pipelines"), api("/v1/alerts"),
    ]);
    document.getElementById("login").hidden = true;
    document.getElementById("main").hidden = false;
    renderSummary(agents, deployments, alerts);
    renderAgents(agents, top);
    renderDeployments(deployments);
    renderAlerts(alerts);
    await Promise.all([renderPipelines(pipelines), renderDrift(pipelines)]);
    document.body.dataset.loaded = "true";
  } catch (e) {
    if (e instanceof Unauthorized) {
      const had = token() !== null;
      sessionStorage.removeItem("tern-token");
      showLogin(had ? "That token was refused." : "");
    } else {
      document.getElementById("updated").textContent = "update failed: " + e.message;
    }
  }
}

document.getElementById("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("tern-token", document.getElementById("login-token").value.trim());
  refresh();
});

if (token()) refresh(); else showLogin();
setInterval(() => { if (token()) refresh(); }, REFRESH_MS);
