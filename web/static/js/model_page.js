// Model page: polls /api/jobs/<id>/metrics?since=N and grows the charts in place (no reloads).
(function () {
  "use strict";
  const box = document.getElementById("charts");
  if (!box) return;
  const url = box.dataset.metricsUrl;
  const interval = Math.max(0.5, parseFloat(box.dataset.poll) || 2) * 1000;
  const charts = new Map();
  let since = 0, itersPerEpoch = null, stopped = false;
  const FINISHED = ["done", "error", "aborted", "interrupted"];

  // Charts group outputs by name: train/loss and val/loss share the "loss" chart.
  function chartFor(name) {
    const key = name === "lr" ? "learning rate" : name.split("/").slice(1).join("/") || name;
    if (!charts.has(key)) {
      const empty = document.getElementById("charts-empty");
      if (empty) empty.remove();
      const chart = new LineChart(box, key, { xLabel: "epoch" });
      chart.root.dataset.chart = key;
      charts.set(key, chart);
    }
    return charts.get(key);
  }

  function toEpoch(it) { return itersPerEpoch ? it / itersPerEpoch : it; }

  function update(m) {
    if (m.iters_per_epoch) itersPerEpoch = m.iters_per_epoch;
    let last = since;
    Object.keys(m.series || {}).forEach(name => {
      const pts = m.series[name];
      if (!pts.length) return;
      const chart = chartFor(name);
      chart.add(name, pts.map(p => [toEpoch(p[0]), p[1]]));
      pts.forEach(p => { if (p[0] + 1 > last) last = p[0] + 1; });
    });
    since = Math.max(since, last);
    charts.forEach(c => c.render());
    box.dataset.points = [...charts.values()].reduce((n, c) => n + c.pointCount(), 0);
    if (m.progress !== undefined && m.progress !== null) {
      const pct = (m.progress * 100).toFixed(1) + "%";
      document.getElementById("progress-bar").style.width = pct;
      document.getElementById("progress-text").textContent = pct;
    }
    const eta = document.getElementById("eta-text");
    if (eta) eta.textContent = m.eta ? "ETA " + formatDuration(m.eta) : "";
    if (m.status) {
      const badge = document.querySelector("#job-status .badge");
      if (badge && badge.textContent !== m.status) {
        badge.textContent = m.status;
        const cls = { done: "ok", running: "run", error: "err", aborted: "warn", interrupted: "warn" }[String(m.status).toLowerCase()] || "wait";
        badge.className = "badge badge-" + cls;
      }
      box.dataset.status = m.status;
      if (FINISHED.includes(String(m.status).toLowerCase())) stopped = true;
    }
  }

  function formatDuration(s) {
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return h ? h + "h " + String(m).padStart(2, "0") + "m" : m ? m + "m " + String(sec).padStart(2, "0") + "s" : sec + "s";
  }

  async function poll() {
    try {
      const m = await apiFetch(url + "?since=" + since);
      update(m);
    } catch (e) {
      /* a missed poll is retried at the next tick */
    }
    if (!stopped) setTimeout(poll, interval);
    else if (document.getElementById("abort-btn")) setTimeout(() => location.reload(), 500);
  }
  poll();
})();
